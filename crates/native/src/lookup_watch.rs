//! `lookup` mode's change feed in the native build (README "Watching for changes"): Envoy's
//! main thread long-polls the key service's feed (one call per config, not one per
//! worker) through config-level callouts, on the config's tick. What a change makes stale
//! goes into a log every worker reads before it next uses its cache, so no worker serves
//! an answer the feed has reported changed. When to call and what to forget is decided in
//! the core ([`Watch`]).

use crate::abi::{log, CallAnswer, ConfigHost, LogLevel};
use crate::clock::{jitter, now_ms};
use crate::metrics::Metrics;
use keygate_core::lookup::Lookups;
use keygate_core::remote::{Endpoint, WatchConfig};
use keygate_core::watch::{FeedStat, Forget, Level, Step, Watch, MAX_BODY_BYTES};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Past this many entries the log is folded into one "forget everything": a worker that
/// has not read it for that long drops its whole cache, which is always safe.
const MAX_LOG: usize = 256;

pub struct Feed {
    watch: Mutex<Watch>,
    endpoint: Endpoint,
    /// What to forget, numbered; the newest number is also in `newest`.
    log: Mutex<Vec<(u64, Forget)>>,
    newest: AtomicU64,
}

impl Feed {
    pub fn new(config: &WatchConfig, endpoint: &Endpoint) -> Feed {
        Feed {
            watch: Mutex::new(Watch::new(config)),
            endpoint: endpoint.clone(),
            log: Mutex::new(Vec::new()),
            newest: AtomicU64::new(0),
        }
    }

    /// On a worker, before it uses its cache: forgets what the feed reported since
    /// `seen` (what this worker last read); returns the new `seen`.
    pub fn catch_up(&self, lookups: &Lookups, seen: u64) -> u64 {
        let newest = self.newest.load(Ordering::Acquire);
        if newest == seen {
            return seen;
        }
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = log.first().map_or(newest, |(n, _)| *n);
        if seen + 1 < oldest {
            // Folded away: what was forgotten meanwhile is unknown.
            lookups.forget(&Forget::All);
        } else {
            for (_, forget) in log.iter().filter(|(n, _)| *n > seen) {
                lookups.forget(forget);
            }
        }
        log.last().map_or(newest, |(n, _)| *n)
    }

    /// The main thread's tick: gives up a lost call, makes the next one when it is due.
    pub fn poll(&self, host: ConfigHost, metrics: &Metrics) {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        if let Some(step) = watch.overdue(now, jitter(0)) {
            self.settle(host, metrics, &watch, step, 0);
        }
        let Some(call) = watch.due(now) else {
            return;
        };
        let headers = [
            (":method", "GET"),
            (":path", call.path.as_str()),
            (":authority", &*self.endpoint.authority),
            ("accept", "application/json"),
        ];
        let sent = host
            .call(&self.endpoint.cluster, &headers, &[], call.timeout_ms)
            .and_then(|id| u32::try_from(id).map_err(|_| "call id out of range".to_string()));
        match sent {
            Ok(token) => watch.sent(token, &call, now),
            Err(reason) => {
                let step = watch.not_sent(reason, now, jitter(0));
                self.settle(host, metrics, &watch, step, 0);
            }
        }
    }

    /// The answer to a config call; false when it is not the feed's.
    pub fn answered(
        &self,
        host: ConfigHost,
        metrics: &Metrics,
        id: u64,
        answer: &CallAnswer<'_>,
    ) -> bool {
        let Ok(token) = u32::try_from(id) else {
            return false;
        };
        {
            let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
            if !watch.is_call(token) {
                return false;
            }
            let status = answer.status();
            let body = match status {
                Some("200") => Some(answer.body()).filter(|b| b.len() <= MAX_BODY_BYTES),
                _ => Some(Vec::new()),
            };
            let failures = watch.failures();
            if let Some(step) = watch.answered(token, status, body.as_deref(), now_ms(), jitter(0))
            {
                self.settle(host, metrics, &watch, step, failures);
            }
        }
        // The next long-poll at once (unless backing off).
        self.poll(host, metrics);
        true
    }

    fn settle(
        &self,
        host: ConfigHost,
        metrics: &Metrics,
        watch: &Watch,
        step: Step,
        failures_before: u32,
    ) {
        if step.forget != Forget::Nothing {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let number = self.newest.load(Ordering::Acquire) + 1;
            if log.len() >= MAX_LOG {
                log.clear();
                log.push((number, Forget::All));
            } else {
                log.push((number, step.forget));
            }
            self.newest.store(number, Ordering::Release);
        }
        let report = watch.report(&step.outcome, &self.endpoint.cluster, failures_before);
        match report.stat {
            Some(FeedStat::Changes) => Metrics::add(host, metrics.lookup_watch_changes, 1),
            Some(FeedStat::Failed) => Metrics::add(host, metrics.lookup_watch_failed, 1),
            None => {}
        }
        for (level, line) in report.lines {
            // The native build logs from info up, as it did.
            match level {
                Level::Debug => {}
                Level::Info => log(LogLevel::Info, &line),
                Level::Warn => log(LogLevel::Warn, &line),
            }
        }
    }
}
