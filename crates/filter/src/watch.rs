//! `lookup` mode's watch in the shell (README "Watching for changes"): each worker's root
//! context long-polls the key service's change feed, one call at a time, and hands what
//! changed to the cache. When to call and what to forget is decided in the core
//! ([`Watch`]).

use crate::host::{self, Metrics};
use keygate_core::lookup::Lookups;
use keygate_core::remote::LookupConfig;
use keygate_core::watch::{Outcome, Step, Watch, MAX_BODY_BYTES};
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
        let cluster = &*self.lookup.endpoint.cluster;
        if failures_before > 0 && watch.failures() == 0 {
            info!("keygate: change feed of cluster {cluster} answers again");
        }
        match step.outcome {
            Outcome::Changed {
                version,
                keys,
                baseline,
            } => {
                self.metrics.lookup_watch_changes.add();
                if baseline {
                    let epoch = watch.position().map_or("-", |(_, epoch)| epoch);
                    info!(
                        "keygate: following the change feed of cluster {cluster} from version \
                         {version} (epoch {epoch}); cached answers dropped"
                    );
                } else {
                    debug!("keygate: change feed: version {version}, {keys} key(s) changed");
                }
            }
            Outcome::NotModified => {}
            Outcome::Gone => info!(
                "keygate: the change feed of cluster {cluster} no longer holds our version \
                 (410); cached answers dropped"
            ),
            Outcome::Failed {
                reason,
                retry_in_ms,
            } => {
                self.metrics.lookup_watch_failed.add();
                // The first failure of a streak is worth a warning; the rest repeat it.
                if watch.failures() == 1 {
                    warn!(
                        "keygate: change feed of cluster {cluster} failed, retrying in \
                         {retry_in_ms} ms (cached answers expire as usual meanwhile): {reason}"
                    );
                } else {
                    debug!(
                        "keygate: change feed failed again, retrying in {retry_in_ms} ms: {reason}"
                    );
                }
            }
        }
    }
}
