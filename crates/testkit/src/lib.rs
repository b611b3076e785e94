//! What the integration tests and the tools (`make run`, `make soak`, the benches) need
//! around a real Envoy: key records and configurations ([`fixtures`]), temp dirs
//! ([`temp`]), an echo upstream that records what reached it ([`upstream`]), Envoy started
//! from `.venv` with a generated bootstrap on free ports ([`envoy`], [`bootstrap`]), a raw
//! HTTP/1.1 client that sends exactly the bytes asked for ([`http1`]) and an h2 one
//! ([`h2`]), the real `keygate` binary ([`cli`]) and `keygate serve` ([`serve`]), and key
//! services the tests control ([`key_service`], and [`held_back`], which keeps an answer
//! in flight).
// A harness: a failed step should stop the test (or the tool) loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

pub mod artifacts;
pub mod bootstrap;
pub mod build;
pub mod cli;
pub mod envoy;
pub mod fixtures;
pub mod h2;
pub mod h2_upstream;
pub mod held_back;
pub mod http1;
pub mod key_service;
pub mod keysvc;
pub mod postgres;
pub mod process;
pub mod serve;
pub mod temp;
pub mod upstream;
pub mod usage_sink;

pub use artifacts::{
    envoy_binary, keygate_binary, native_module, native_module_dir, repo_root, wasm_module,
};
pub use bootstrap::{
    admin, bootstrap, bootstrap_for, bootstrap_with_key_service, filter_for, free_port,
    http_listener, key_service_cluster, keygate_filter, listener, listener_for, native_filter,
    shipped_for_build, upstream_cluster, wasm_filter, wasm_to_native, with_access_log,
    NATIVE_MODULE,
};
pub use build::{native_only, native_pending, wasm_only, Build, NATIVE_PENDING};
pub use envoy::{keygate_stat_in, keygate_stat_name, Bootstrap, Envoy, EnvoyOptions, Refused};
pub use fixtures::{
    bench_key, bench_records_json, bench_records_json_range, bench_records_json_with, hash_of,
    immport_every_source, immport_rules,
};
pub use http1::{request, try_request, Request, Response};
pub use keygate_core::record::KeyHash;
pub use serve::{Serve, Served};
pub use temp::TempDir;
pub use upstream::{Seen, Upstream};

/// A thread that runs until told to stop: `work` is handed the stop flag to watch.
pub struct Background<T> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<T>,
}

impl<T: Send + 'static> Background<T> {
    pub fn start(work: impl FnOnce(&std::sync::atomic::AtomicBool) -> T + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || work(&flag));
        Background { stop, thread }
    }

    /// Sets the stop flag and waits for what the thread returns.
    pub fn stop(self) -> T {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Polls `check` every 50 ms until it holds or `within` has passed; true if it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The contents of `path` once it is not empty (Envoy writes its access log a little
/// after the request ends); panics after 10 s of an empty or missing file.
pub fn logged(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            bytes = std::fs::read(path).unwrap_or_default();
            !bytes.is_empty()
        }),
        "nothing was written to {}",
        path.display()
    );
    bytes
}
