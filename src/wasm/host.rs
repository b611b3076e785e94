//! Host calls the contexts share: shared data as a [`SharedStore`], the metrics, the
//! clock, and carrying out a verdict on the effective request.

use crate::config::Config;
use crate::decision::{HeaderEditor, Verdict};
use crate::response;
use crate::shared_set::SharedStore;
use crate::stats::{self, Outcome};
use log::debug;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::{SystemTime, UNIX_EPOCH};

/// Proxy-wasm shared data: one map per Envoy process, shared by every worker's VM.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

pub fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
}

pub fn now_ms() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A number that differs from call to call and from worker to worker, to spread retries.
pub fn jitter(salt: u64) -> u64 {
    let nanos = now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    (nanos ^ salt.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11
}

/// Metric ids, defined once per VM. Envoy hands out the same stat for the same name, so
/// counts from every worker add up.
pub struct Metrics {
    outcomes: [Option<u32>; Outcome::ALL.len()],
    keys_loaded: Option<u32>,
    pub fetch_ok: Option<u32>,
    pub fetch_not_modified: Option<u32>,
    pub fetch_failed: Option<u32>,
    fetch_age: Option<u32>,
    pub lookup_calls: Option<u32>,
    pub lookup_cache_hits: Option<u32>,
    pub lookup_failed: Option<u32>,
}

impl Metrics {
    pub fn define() -> Self {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        let gauge = |name| hostcalls::define_metric(MetricType::Gauge, name).ok();
        Metrics {
            outcomes: Outcome::ALL.map(|o| counter(o.metric_name())),
            keys_loaded: gauge(stats::KEYS_LOADED),
            fetch_ok: counter(stats::FETCH_OK),
            fetch_not_modified: counter(stats::FETCH_NOT_MODIFIED),
            fetch_failed: counter(stats::FETCH_FAILED),
            fetch_age: gauge(stats::FETCH_AGE_SECONDS),
            lookup_calls: counter(stats::LOOKUP_CALLS),
            lookup_cache_hits: counter(stats::LOOKUP_CACHE_HITS),
            lookup_failed: counter(stats::LOOKUP_FAILED),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        Self::bump(self.outcomes[outcome.index()]);
    }

    pub fn bump(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    pub fn keys_loaded(&self, n: usize) {
        if let Some(id) = self.keys_loaded {
            let _ = hostcalls::record_metric(id, n as u64);
        }
    }

    pub fn fetch_age(&self, seconds: u64) {
        if let Some(id) = self.fetch_age {
            let _ = hostcalls::record_metric(id, seconds);
        }
    }
}

/// Carries out a verdict on the effective request: header edits (and, for a request that
/// waited, resuming it), or the local answer. Returns true when the request may go on.
pub fn carry_out(
    config: &Config,
    metrics: &Metrics,
    verdict: Verdict<'_>,
    redacted_path: Option<&str>,
    resume: bool,
) -> bool {
    metrics.count(verdict.outcome());
    match verdict {
        Verdict::Allow(allowed) => {
            allowed.apply(config, &mut Editor);
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            true
        }
        Verdict::Deny(denial) => {
            debug!(
                "keygate: denied ({:?}) key id {}",
                denial.outcome(),
                denial.key().map_or("-", |k| k.id.as_str())
            );
            if let Some(path) = redacted_path {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path));
            }
            respond(&response::render(&config.realm, &denial));
            false
        }
    }
}

pub fn respond(answer: &response::LocalResponse) {
    let headers: Vec<(&str, &str)> = answer
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(answer.status, headers, Some(answer.body.as_bytes()));
}

struct Editor;

impl HeaderEditor for Editor {
    fn set(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
}

/// What a call's response says in its headers, read as bytes (the string variant of the
/// host call panics on a value that is not UTF-8).
pub struct CallResponse {
    pub status: Option<String>,
    pub etag: Option<String>,
}

pub fn call_response() -> CallResponse {
    let headers = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let text = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
    };
    CallResponse {
        status: text(":status"),
        etag: text("etag"),
    }
}

pub fn call_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}
