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
