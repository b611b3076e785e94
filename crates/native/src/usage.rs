//! `usage` in the native build (README "Usage (last used)"): an allowed request adds its
//! key's hash to the config's tally (one per process, not per worker); the main thread's
//! tick hands the core's [`Reporter`] a host that POSTs reports to the key service through
//! config-level callouts, fire and forget. Nothing here can hold up or fail a request.

use crate::abi::{log, CallAnswer, ConfigHost, LogLevel};
use crate::clock::now_ms;
use crate::metrics::Metrics;
use keygate_core::record::KeyHash;
use keygate_core::usage::{Recorded, ReportHost, Reporter, UsageConfig};
use std::sync::{Mutex, PoisonError};

pub struct Usage {
    config: UsageConfig,
    reporter: Mutex<Reporter>,
}

struct Host<'a> {
    config: &'a UsageConfig,
    metrics: &'a Metrics,
    envoy: ConfigHost,
}

impl ReportHost for Host<'_> {
    fn dispatch(&mut self, body: &[u8]) -> Result<u32, String> {
        let endpoint = &self.config.endpoint;
        let headers = [
            (":method", "POST"),
            (":path", &*self.config.path),
            (":authority", &*endpoint.authority),
            ("content-type", "application/json"),
        ];
        let id = self.envoy.call(
            &endpoint.cluster,
            &headers,
            body,
            u64::from(endpoint.timeout_ms),
        )?;
        // Envoy numbers a config's calls from 1: far below u32::MAX in a process's life.
        u32::try_from(id).map_err(|_| "Envoy's call id is out of range".to_string())
    }

    fn sent(&mut self) {
        Metrics::add(self.envoy, self.metrics.usage_reports_sent, 1);
    }

    fn failed(&mut self, reason: &str) {
        Metrics::add(self.envoy, self.metrics.usage_reports_failed, 1);
        // The reason names the cluster and counts, never a key or a hash.
        log(
            LogLevel::Warn,
            &format!(
                "keygate: {reason} (cluster {})",
                &*self.config.endpoint.cluster
            ),
        );
    }
}

impl Usage {
    pub fn new(config: &UsageConfig) -> Self {
        Usage {
            config: config.clone(),
            reporter: Mutex::new(Reporter::new(config)),
        }
    }

    /// An allowed request with key `hash` (on a worker). False when the tally is full and
    /// the use is dropped: the worker counts that itself.
    pub fn record(&self, hash: &KeyHash) -> bool {
        let mut reporter = self.reporter.lock().unwrap_or_else(PoisonError::into_inner);
        reporter.record(hash, now_ms()) != Recorded::Dropped
    }

    /// The main thread's tick.
    pub fn tick(&self, envoy: ConfigHost, metrics: &Metrics) {
        let mut host = Host {
            config: &self.config,
            metrics,
            envoy,
        };
        // Under the lock, but a call only starts a request (its answer comes later): a
        // worker recording meanwhile waits that long at most.
        let mut reporter = self.reporter.lock().unwrap_or_else(PoisonError::into_inner);
        reporter.tick(&mut host, now_ms());
    }

    /// The answer to a config call, if it is a report; false otherwise.
    pub fn answered(
        &self,
        envoy: ConfigHost,
        metrics: &Metrics,
        id: u64,
        answer: &CallAnswer<'_>,
    ) -> bool {
        let Ok(token) = u32::try_from(id) else {
            return false;
        };
        let mut reporter = self.reporter.lock().unwrap_or_else(PoisonError::into_inner);
        if !reporter.is_report(token) {
            return false;
        }
        let mut host = Host {
            config: &self.config,
            metrics,
            envoy,
        };
        let status = answer.status();
        reporter.answered(&mut host, token, status)
    }
}
