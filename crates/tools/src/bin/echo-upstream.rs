//! `make upstream` (or `cargo run -p keygate-tools --bin echo-upstream -- [ADDR]`): the
//! upstream of the README's walkthroughs. It answers every request with a JSON echo of the
//! method, target and headers it received, so you see what keygate forwarded (identity
//! headers added, credential removed). Listens on 127.0.0.1:8082 unless told otherwise;
//! Ctrl-C stops it.

use keygate_testkit::Upstream;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_ADDR: &str = "127.0.0.1:8082";

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let text = arg.as_deref().unwrap_or(DEFAULT_ADDR);
    let addr: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!("echo-upstream: {text:?} is not HOST:PORT (for example {DEFAULT_ADDR})");
            return ExitCode::from(2);
        }
    };
    let upstream = match Upstream::try_start_on(&addr.to_string()) {
        Ok(upstream) => upstream,
        Err(error) => {
            eprintln!("echo-upstream: cannot listen on {addr}: {error} (give another HOST:PORT)");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        if let Err(error) = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)) {
            eprintln!("echo-upstream: cannot catch Ctrl-C: {error}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("echo-upstream: echoing requests on http://{addr}; Ctrl-C stops it");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        // What it saw is only for tests; here, forget it so memory stays flat.
        drop(upstream.take());
    }
    ExitCode::SUCCESS
}
