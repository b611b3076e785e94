//! keygate's stats in the native build: the wasm build's names (`keygate.*`, README
//! "Stats"), which Envoy lists under its `dynamicmodulescustom.` prefix. Defined once per
//! filter config; Envoy hands out the same stat for the same name, so configs add up.

use crate::abi::{ConfigHost, MetricKind};
use keygate_core::key_set::FetchStat;
use keygate_core::stats::{self, Outcome};

/// The ids of one config's stats (`None` where Envoy would not define one).
pub struct Metrics {
    outcomes: [Option<usize>; Outcome::ALL.len()],
    keys_loaded: Option<usize>,
    fetch_ok: Option<usize>,
    fetch_not_modified: Option<usize>,
    fetch_failed: Option<usize>,
    fetch_age: Option<usize>,
    pub lookup_calls: Option<usize>,
    pub lookup_cache_hits: Option<usize>,
    pub lookup_failed: Option<usize>,
    pub lookup_watch_changes: Option<usize>,
    pub lookup_watch_failed: Option<usize>,
    pub usage_reports_sent: Option<usize>,
    pub usage_reports_failed: Option<usize>,
    pub usage_dropped: Option<usize>,
}

impl Metrics {
    /// Defines every stat (only while the config is being made).
    pub fn define(host: ConfigHost) -> Metrics {
        let counter = |name| host.define(MetricKind::Counter, name);
        let gauge = |name| host.define(MetricKind::Gauge, name);
        Metrics {
            outcomes: Outcome::ALL.map(|outcome| counter(outcome.metric_name())),
            keys_loaded: gauge(stats::KEYS_LOADED),
            fetch_ok: counter(stats::FETCH_OK),
            fetch_not_modified: counter(stats::FETCH_NOT_MODIFIED),
            fetch_failed: counter(stats::FETCH_FAILED),
            fetch_age: gauge(stats::FETCH_AGE_SECONDS),
            lookup_calls: counter(stats::LOOKUP_CALLS),
            lookup_cache_hits: counter(stats::LOOKUP_CACHE_HITS),
            lookup_failed: counter(stats::LOOKUP_FAILED),
            lookup_watch_changes: counter(stats::LOOKUP_WATCH_CHANGES),
            lookup_watch_failed: counter(stats::LOOKUP_WATCH_FAILED),
            usage_reports_sent: counter(stats::USAGE_REPORTS_SENT),
            usage_reports_failed: counter(stats::USAGE_REPORTS_FAILED),
            usage_dropped: counter(stats::USAGE_DROPPED),
        }
    }

    /// The counter of a request's outcome.
    pub fn outcome(&self, outcome: Outcome) -> Option<usize> {
        self.outcomes[outcome.index()]
    }

    pub fn add(host: ConfigHost, id: Option<usize>, n: u64) {
        if let Some(id) = id {
            host.add(id, n);
        }
    }

    pub fn keys_loaded(&self, host: ConfigHost, keys: usize) {
        if let Some(id) = self.keys_loaded {
            host.set(id, keys as u64);
        }
    }

    pub fn fetch_age(&self, host: ConfigHost, seconds: u64) {
        if let Some(id) = self.fetch_age {
            host.set(id, seconds);
        }
    }

    /// A key-set fetch, counted as [`FetchStat`] says.
    pub fn fetched(&self, host: ConfigHost, stat: FetchStat) {
        let id = match stat {
            FetchStat::Ok => self.fetch_ok,
            FetchStat::NotModified => self.fetch_not_modified,
            FetchStat::Failed => self.fetch_failed,
        };
        Metrics::add(host, id, 1);
    }
}
