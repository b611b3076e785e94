//! What the tools (crates/tools/src/bin/) share beyond the test kit.
// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Says that Ctrl-C stops `what`, and returns once it is pressed (the caller then stops it
/// all, by dropping it).
pub fn run_until_ctrl_c(what: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .expect("cannot catch Ctrl-C");
    }
    println!("Ctrl-C stops {what}.");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping");
}

/// `1234567` as `1,234,567`, for the tables the tools print.
pub fn thousands(n: impl Into<u64>) -> String {
    let digits = n.into().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Envoy's heap from its admin `/memory` (tcmalloc's figures, strings of bytes): bytes in
/// use (`allocated`), and bytes freed but kept (`pageheap_free` and the thread caches).
/// Envoy's binary exports tcmalloc's `malloc`, so the native module's allocations are on
/// this heap too; the wasm VMs' linear memory is not. `None` when the admin does not answer.
pub fn envoy_heap(envoy: &keygate_testkit::Envoy) -> Option<(u64, u64)> {
    let answer =
        keygate_testkit::try_request(envoy.admin, &keygate_testkit::Request::get("/memory"))
            .ok()?;
    let doc: serde_json::Value = serde_json::from_str(&answer.text()).ok()?;
    let field = |name: &str| doc[name].as_str().and_then(|v| v.parse::<u64>().ok());
    Some((
        field("allocated")?,
        field("pageheap_free")? + field("total_thread_cache")?,
    ))
}

/// The processes a tool starts (Envoys, `keygate serve`s), stopped on a panic or Ctrl-C:
/// the release profile aborts on panic, so their `Drop` would not run.
pub mod cleanup {
    use std::process::Command;
    use std::sync::{Mutex, MutexGuard};

    static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    fn children() -> MutexGuard<'static, Vec<u32>> {
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A process, its pid known to the panic hook and Ctrl-C while it lives.
    pub struct Tracked<T> {
        inner: T,
        pid: u32,
    }

    impl<T> Tracked<T> {
        pub fn new(inner: T, pid: u32) -> Tracked<T> {
            children().push(pid);
            Tracked { inner, pid }
        }

        pub fn pid(&self) -> u32 {
            self.pid
        }
    }

    impl<T> std::ops::Deref for Tracked<T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.inner
        }
    }

    impl<T> Drop for Tracked<T> {
        fn drop(&mut self) {
            // `inner` is dropped (and the process stopped) right after.
            children().retain(|&pid| pid != self.pid);
        }
    }

    /// Kills the processes still tracked and removes this run's temp dirs (the test kit's
    /// `TempDir` names them keygate-LABEL-PID-N).
    fn kill_and_clean_up() {
        for pid in std::mem::take(&mut *children()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let ours = format!("-{}-", std::process::id());
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("keygate-") && name.contains(&ours) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// On a panic or Ctrl-C, stops what is tracked; `tool` names it in the message.
    pub fn install(tool: &'static str) {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            kill_and_clean_up();
        }));
        ctrlc::set_handler(move || {
            eprintln!("\n{tool}: interrupted; stopping the processes it started");
            kill_and_clean_up();
            std::process::exit(130);
        })
        .expect("cannot catch Ctrl-C");
    }
}
