//! Host calls the contexts share: shared data as a [`SharedStore`], the metrics, the
//! clock, and carrying out a verdict on the effective request.

use crate::abi;
use crate::headers::{self, HostEditor};
use keygate_core::config::Config;
use keygate_core::decision::{Denial, Verdict, UNAVAILABLE};
use keygate_core::header_map;
use keygate_core::jwt::JwtConfig;
use keygate_core::key_set::SharedStore;
use keygate_core::remote::Endpoint;
use keygate_core::response;
use keygate_core::stats::{self, Outcome};
use keygate_core::timestamp::Timestamp;
use log::{debug, error, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Proxy-wasm shared data: one map per Envoy process, shared by every worker's VM.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        abi::set_shared_data(key, value, cas).is_ok()
    }
}

pub fn now() -> SystemTime {
    abi::current_time().unwrap_or(UNIX_EPOCH)
}

/// The instant a key's `expires_at` is checked against. Should Envoy not tell the time,
/// it is the end of time: a key with an expiry is then refused, never let through.
pub fn request_time() -> Timestamp {
    abi::current_time().map_or(
        Timestamp::from_unix_nanos(i128::MAX),
        Timestamp::from_system_time,
    )
}

thread_local! {
    // A VM runs on one thread; this is the VM's clock as of its last tick.
    static CLOCK: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// Reads the host's clock into the VM's clock, on every tick (every 500 ms) and at
/// configuration. The lookup cache counts its lifetimes (seconds) by it, so that a cache
/// hit makes no host call; a key's `expires_at` is checked against [`now`].
pub fn refresh_clock() {
    CLOCK.with(|clock| clock.set(Some(now())));
}

/// The VM's clock: at most one tick behind the host's.
pub fn clock() -> SystemTime {
    CLOCK.with(|clock| match clock.get() {
        Some(time) => time,
        None => {
            let time = now();
            clock.set(Some(time));
            time
        }
    })
}

pub fn clock_ms() -> u64 {
    clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// A counter whose increments are added up in the VM and handed to Envoy on the VM's
/// tick (and when the VM stops), which saves a host call on every request. Envoy's stats
/// thus trail the requests by at most 500 ms.
pub struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Self {
        Counter {
            id: abi::define_metric(MetricType::Counter, name).ok(),
            pending: Cell::new(0),
        }
    }

    pub fn add(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
    }

    fn flush(&self) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n > 0) {
            let _ = abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Metric ids, defined once per VM. Envoy hands out the same stat for the same name, so
/// counts from every worker add up.
pub struct Metrics {
    outcomes: [Counter; Outcome::ALL.len()],
    keys_loaded: Option<u32>,
    pub fetch_ok: Counter,
    pub fetch_not_modified: Counter,
    pub fetch_failed: Counter,
    fetch_age: Option<u32>,
    pub lookup_calls: Counter,
    pub lookup_cache_hits: Counter,
    pub lookup_failed: Counter,
    pub usage_reports_sent: Counter,
    pub usage_reports_failed: Counter,
    pub usage_dropped: Counter,
    pub lookup_watch_changes: Counter,
    pub lookup_watch_failed: Counter,
}

impl Metrics {
    pub fn define() -> Self {
        let gauge = |name| abi::define_metric(MetricType::Gauge, name).ok();
        Metrics {
            outcomes: Outcome::ALL.map(|o| Counter::define(o.metric_name())),
            keys_loaded: gauge(stats::KEYS_LOADED),
            fetch_ok: Counter::define(stats::FETCH_OK),
            fetch_not_modified: Counter::define(stats::FETCH_NOT_MODIFIED),
            fetch_failed: Counter::define(stats::FETCH_FAILED),
            fetch_age: gauge(stats::FETCH_AGE_SECONDS),
            lookup_calls: Counter::define(stats::LOOKUP_CALLS),
            lookup_cache_hits: Counter::define(stats::LOOKUP_CACHE_HITS),
            lookup_failed: Counter::define(stats::LOOKUP_FAILED),
            usage_reports_sent: Counter::define(stats::USAGE_REPORTS_SENT),
            usage_reports_failed: Counter::define(stats::USAGE_REPORTS_FAILED),
            usage_dropped: Counter::define(stats::USAGE_DROPPED),
            lookup_watch_changes: Counter::define(stats::LOOKUP_WATCH_CHANGES),
            lookup_watch_failed: Counter::define(stats::LOOKUP_WATCH_FAILED),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].add();
    }

    /// Hands the counts made since the last flush to Envoy.
    pub fn flush(&self) {
        for counter in self.outcomes.iter().chain([
            &self.fetch_ok,
            &self.fetch_not_modified,
            &self.fetch_failed,
            &self.lookup_calls,
            &self.lookup_cache_hits,
            &self.lookup_failed,
            &self.usage_reports_sent,
            &self.usage_reports_failed,
            &self.usage_dropped,
            &self.lookup_watch_changes,
            &self.lookup_watch_failed,
        ]) {
            counter.flush();
        }
    }

    pub fn keys_loaded(&self, n: usize) {
        if let Some(id) = self.keys_loaded {
            let _ = abi::record_metric(id, n as u64);
        }
    }

    pub fn fetch_age(&self, seconds: u64) {
        if let Some(id) = self.fetch_age {
            let _ = abi::record_metric(id, seconds);
        }
    }
}

/// Carries out a verdict on the effective request: header edits (and, for a request that
/// waited, resuming it), or the local answer. Returns true when the request may go on.
/// An edit Envoy refuses refuses the request: it must not reach the upstream with a
/// spoofed identity or its credential left in.
pub fn carry_out(
    config: &Config,
    metrics: &Metrics,
    verdict: Verdict<'_>,
    redacted_path: Option<&[u8]>,
    resume: bool,
) -> bool {
    let outcome = verdict.outcome();
    match verdict {
        Verdict::Allow(allowed) => {
            let mut editor = HostEditor::default();
            allowed.apply(config, &mut editor);
            if editor.failed {
                warn!("keygate: Envoy refused a header edit; the request is refused");
                return deny(config, metrics, UNAVAILABLE, None);
            }
            metrics.count(outcome);
            if resume && abi::continue_request().is_err() {
                // Envoy would not resume it (its stream may have ended meanwhile).
                debug!("keygate: the request ended before it could go on");
            }
            true
        }
        Verdict::Deny(denial) => deny(config, metrics, denial, redacted_path),
    }
}

fn deny(
    config: &Config,
    metrics: &Metrics,
    denial: Denial<'_>,
    redacted_path: Option<&[u8]>,
) -> bool {
    metrics.count(denial.outcome());
    debug!(
        "keygate: denied ({:?}) key id {}",
        denial.outcome(),
        denial.key().map_or("-", |k| k.id.as_str())
    );
    if let Some(path) = redacted_path {
        // Refused anyway: should Envoy refuse this edit too, the answer still goes out.
        let _ = headers::set_path(path);
    }
    respond(&response::render_for(config, &denial));
    false
}

/// Sends keygate's answer. Should Envoy refuse it, the request is reset: closed, not open.
pub fn respond(answer: &response::LocalResponse) {
    let headers: Vec<(&str, &str)> = answer
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    if let Err(status) = abi::send_local_response(answer.status, &headers, answer.body.as_bytes()) {
        // Without an answer the request must not drift on (a later body callback would
        // let it): it is reset.
        error!("keygate: Envoy refused the local answer (status {status}); the request is reset");
        let _ = abi::close_request();
    }
}

/// Calls the key service's cluster: `method path` with the endpoint's authority, then
/// `headers`, answered within `timeout_ms`. The token, or what went wrong, naming what to
/// check.
pub fn call(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, String> {
    let mut all = vec![
        (":method", method),
        (":path", path),
        (":authority", &*endpoint.authority),
    ];
    all.extend_from_slice(headers);
    let timeout = Duration::from_millis(timeout_ms);
    hostcalls::dispatch_http_call(&endpoint.cluster, all, body, vec![], timeout).map_err(|status| {
        format!(
            "cannot call cluster {:?} ({status:?}): is it defined in Envoy's config?",
            &*endpoint.cluster
        )
    })
}

/// What a call's response says in its headers (read as bytes: a value need not be text).
pub struct CallResponse {
    pub status: Option<String>,
    pub etag: Option<String>,
}

pub fn call_response() -> CallResponse {
    let buf = abi::map_pairs(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let headers = header_map::parse(&buf).unwrap_or_default();
    let text = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    CallResponse {
        status: text(":status"),
        etag: text("etag"),
    }
}

pub fn call_body(size: usize) -> Vec<u8> {
    abi::buffer(BufferType::HttpCallResponseBody, 0, size).unwrap_or_default()
}

/// The subject and scope claims of the payload `jwt_authn` verified for this request, as
/// the host serializes them; `None` when there is no payload with a subject. An error
/// reading either is refused by the caller (401): a token is there but cannot be used.
#[allow(clippy::type_complexity)]
pub fn token_claims(jwt: &JwtConfig) -> Result<Option<(Vec<u8>, Option<Vec<u8>>)>, &'static str> {
    let unreadable = |status| {
        warn!("keygate: cannot read the verified token's claims (status {status})");
        "the verified token's claims cannot be read"
    };
    let Some(subject) = abi::property(&jwt.claim_path(&jwt.subject_claim)).map_err(unreadable)?
    else {
        return Ok(None);
    };
    let scope = abi::property(&jwt.claim_path(&jwt.scope_claim)).map_err(unreadable)?;
    Ok(Some((subject, scope)))
}
