//! `usage` in the shell (README "Usage (last used)"): an allowed request adds its key's hash
//! to the VM's tally on the VM's clock (no host call); the root's tick hands the core's
//! [`Reporter`] a host that POSTs reports to the key service, fire and forget. Nothing
//! here can hold up or fail a request.

use crate::host::{self, Metrics};
use keygate_core::record::KeyHash;
use keygate_core::usage::{Recorded, ReportHost, Reporter, UsageConfig};
use log::warn;
use std::cell::RefCell;

/// One VM's usage reporting.
pub struct Usage {
    config: UsageConfig,
    reporter: RefCell<Reporter>,
}

struct Host<'a> {
    config: &'a UsageConfig,
    metrics: &'a Metrics,
}

impl ReportHost for Host<'_> {
    fn dispatch(&mut self, body: &[u8]) -> Result<u32, String> {
        let endpoint = &self.config.endpoint;
        let json = [("content-type", "application/json")];
        let timeout_ms = u64::from(endpoint.timeout_ms);
        host::call(
            endpoint,
            "POST",
            &self.config.path,
            &json,
            Some(body),
            timeout_ms,
        )
    }

    fn sent(&mut self) {
        self.metrics.usage_reports_sent.add();
    }

    fn failed(&mut self, reason: &str) {
        self.metrics.usage_reports_failed.add();
        // The reason names the cluster and counts, never a key or a hash.
        warn!(
            "keygate: {reason} (cluster {})",
            &*self.config.endpoint.cluster
        );
    }
}

impl Usage {
    pub fn new(config: &UsageConfig) -> Self {
        Usage {
            config: config.clone(),
            reporter: RefCell::new(Reporter::new(config)),
        }
    }

    /// An allowed request with key `hash`: counted by the VM's clock (as of its last tick).
    pub fn record(&self, metrics: &Metrics, hash: &KeyHash) {
        let now = host::clock_ms();
        let recorded = match self.reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.record(hash, now),
            // Not reachable (nothing here calls back in); should it be, the use is dropped.
            Err(_) => Recorded::Dropped,
        };
        if recorded == Recorded::Dropped {
            metrics.usage_dropped.add();
        }
    }

    /// On the root's tick, after the clock was read.
    pub fn tick(&self, metrics: &Metrics) {
        let mut host = Host {
            config: &self.config,
            metrics,
        };
        if let Ok(mut reporter) = self.reporter.try_borrow_mut() {
            reporter.tick(&mut host, host::clock_ms());
        }
    }

    /// The answer to call `token`, if it is a report; false otherwise.
    pub fn answered(&self, metrics: &Metrics, token: u32) -> bool {
        let Ok(mut reporter) = self.reporter.try_borrow_mut() else {
            return false;
        };
        if !reporter.is_report(token) {
            return false;
        }
        let status = host::call_response().status;
        let mut host = Host {
            config: &self.config,
            metrics,
        };
        reporter.answered(&mut host, token, status.as_deref())
    }
}
