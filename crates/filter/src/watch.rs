//! `lookup` mode's watch in the shell (README "Watching for changes"): each worker's root
//! context long-polls the key service's change feed, one call at a time, and hands what
//! changed to the cache. When to call and what to forget is decided in the core
//! ([`Watch`]).

use crate::host::{self, Metrics};
use keygate_core::lookup::Lookups;
use keygate_core::remote::LookupConfig;
use keygate_core::watch::{FeedStat, Level, Step, Watch, MAX_BODY_BYTES};
use log::{debug, info, warn};

/// What a watch works with.
pub struct Feed<'a> {
    pub lookups: &'a Lookups,
    pub lookup: &'a LookupConfig,
    pub metrics: &'a Metrics,
    /// Spreads the retries of the workers.
    pub salt: u64,
}

impl Feed<'_> {
    /// On every tick, and after each answer: gives up a lost call, makes the next one
    /// when it is due.
    pub fn poll(&self, watch: &mut Watch) {
        let now = host::now_ms();
        if let Some(step) = watch.overdue(now, host::jitter(self.salt)) {
            self.settle(watch, step, 0);
        }
        let Some(call) = watch.due(now) else {
            return;
        };
        let endpoint = &self.lookup.endpoint;
        let accept = [("accept", "application/json")];
        match host::call(endpoint, "GET", &call.path, &accept, None, call.timeout_ms) {
            Ok(token) => watch.sent(token, &call, now),
            Err(reason) => {
                let step = watch.not_sent(reason, now, host::jitter(self.salt));
                self.settle(watch, step, 0);
            }
        }
    }

    /// The answer to call `token`; false when it is not the watch's.
    pub fn answered(&self, watch: &mut Watch, token: u32, body_size: usize) -> bool {
        if !watch.is_call(token) {
            return false;
        }
        let status = host::call_response().status;
        let body = match status.as_deref() {
            Some("200") if body_size <= MAX_BODY_BYTES => Some(host::call_body(body_size)),
            Some("200") => None,
            _ => Some(Vec::new()),
        };
        let failures = watch.failures();
        let now = host::now_ms();
        let jitter = host::jitter(self.salt);
        if let Some(step) = watch.answered(token, status.as_deref(), body.as_deref(), now, jitter) {
            self.settle(watch, step, failures);
        }
        // The next long-poll at once (unless backing off).
        self.poll(watch);
        true
    }

    fn settle(&self, watch: &Watch, step: Step, failures_before: u32) {
        self.lookups.forget(&step.forget);
        let report = watch.report(
            &step.outcome,
            &self.lookup.endpoint.cluster,
            failures_before,
        );
        match report.stat {
            Some(FeedStat::Changes) => self.metrics.lookup_watch_changes.add(),
            Some(FeedStat::Failed) => self.metrics.lookup_watch_failed.add(),
            None => {}
        }
        for (level, line) in report.lines {
            match level {
                Level::Debug => debug!("{line}"),
                Level::Info => info!("{line}"),
                Level::Warn => warn!("{line}"),
            }
        }
    }
}
