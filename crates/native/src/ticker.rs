//! A config's clock: Envoy's dynamic-module ABI has no timer, only a scheduler whose
//! events run on the main thread, so a thread per config commits one every [`TICK`]
//! (the wasm build's root tick) until the config goes.

use crate::abi::Scheduler;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the main thread takes its turn: stats, due fetches, usage reports.
pub const TICK: Duration = Duration::from_millis(500);
/// The scheduler event of that turn.
pub const EVENT: u64 = 1;

/// Stops its thread when dropped.
pub struct Ticker {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Ticks at once, then every [`TICK`].
    pub fn start(scheduler: Arc<Scheduler>) -> Result<Ticker, String> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keygate-tick".into())
            .spawn(move || loop {
                scheduler.commit(EVENT);
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|why| format!("cannot start keygate's tick thread: {why}"))?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
