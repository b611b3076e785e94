//! What the module does with a configuration and a request, host calls behind [`Host`]:
//! the wasm shell's `on_configure` and `on_http_request_headers`. No decision is made here.

use crate::abi::Request;
use crate::abi::{log, CallAnswer, ConfigHost, LogLevel, StreamEvent};
use crate::clock::request_time;
use crate::key_set::{KeySet, NotLoaded};
use crate::lookup::{self, LookupMode, Started};
use crate::metrics::Metrics;
use crate::ticker::{self, Ticker};
use crate::usage::Usage;
use keygate_core::config::{Config, KeySource, DEFAULT_REALM};
use keygate_core::decision::{
    begin_with_token, redacted_target, Denial, HeaderEditor, Step, Verdict, UNAVAILABLE,
};
use keygate_core::record::{KeyHash, KeyRecord};
use keygate_core::response::{self, LocalResponse};
use keygate_core::stats::Outcome;
use std::sync::Arc;

/// The request as Envoy holds it during a hook.
pub trait Host {
    /// The request headers (pseudo-headers included), borrowed from Envoy.
    fn headers(&self) -> Result<Vec<(&str, &[u8])>, &'static str>;
    /// The request trailers' names; `None` when they cannot be read.
    fn trailer_names(&self) -> Option<Vec<&str>>;
    /// Replaces every value of request header `name`; false when Envoy refused.
    fn set(&mut self, name: &str, value: &[u8]) -> bool;
    /// Adds a value of request header `name`, which the request does not hold (Envoy then
    /// looks for none to replace); false when Envoy refused.
    fn add(&mut self, name: &str, value: &[u8]) -> bool;
    /// Removes request header `name`; false when Envoy refused.
    fn remove(&mut self, name: &str) -> bool;
    fn remove_trailer(&mut self, name: &str) -> bool;
    /// Sends the local answer; the request goes no further.
    fn respond(&mut self, answer: &LocalResponse);
    /// Adds one to the counter Envoy defined as `id` for this filter config.
    fn count(&mut self, id: usize);
}

/// One filter config: the parsed configuration, its stats, and its key source's state.
pub struct Filter {
    pub config: Config,
    metrics: Metrics,
    // Dropped in this order: the tick stops before what it ticks.
    _ticker: Option<Ticker>,
    key_set: Option<KeySet>,
    lookup: Option<LookupMode>,
    usage: Option<Usage>,
}

impl Filter {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn count(&self, host: &mut impl Host, outcome: Outcome) {
        if let Some(id) = self.metrics.outcome(outcome) {
            host.count(id);
        }
    }
}

/// Parses the filter's configuration, once per filter config, defines its stats and starts
/// what its key source needs. `None` (logged) refuses it.
pub fn new_config(name: &[u8], json: &[u8], host: ConfigHost) -> Option<Filter> {
    let name = String::from_utf8_lossy(name);
    let config = match Config::parse(json) {
        Ok(config) => config,
        Err(problems) => {
            for problem in &problems {
                log(
                    LogLevel::Error,
                    &format!("keygate: invalid configuration: {problem}"),
                );
            }
            log(
                LogLevel::Error,
                &format!(
                    "keygate: configuration refused ({} problem(s)); the filter will not run",
                    problems.len()
                ),
            );
            return None;
        }
    };
    // The 1.40 ABI reads top-level dynamic-metadata values only; jwt_authn's payload is a
    // nested struct (README "Native build (Envoy dynamic module)").
    let unsupported = config.jwt.as_ref().map(|_| "jwt");
    if let Some(what) = unsupported {
        log(
            LogLevel::Error,
            &format!(
                "keygate: configuration refused: {what} is not supported by the native build \
                 yet; use the wasm filter (keygate.wasm)"
            ),
        );
        return None;
    }
    for warning in config.rules.warnings() {
        log(
            LogLevel::Warn,
            &format!("keygate: configuration warning: {warning}"),
        );
    }
    let metrics = Metrics::define(host);
    // The main thread's turn, every `ticker::TICK`, for what fetches or reports.
    let scheduler = match (&config.keys, &config.usage) {
        (KeySource::Inline(_), None) => None,
        _ => match host.scheduler() {
            Some(scheduler) => Some(Arc::new(scheduler)),
            None => {
                log(
                    LogLevel::Error,
                    "keygate: configuration refused: Envoy gave no scheduler to fetch or report with",
                );
                return None;
            }
        },
    };
    let (mut key_set, mut lookup) = (None, None);
    log(
        LogLevel::Info,
        &format!(
            "keygate: configuration accepted (native, filter {name}): {}",
            config.summary()
        ),
    );
    match &config.keys {
        KeySource::Inline(set) => metrics.keys_loaded(host, set.len()),
        KeySource::KeySet(fetch) => key_set = Some(KeySet::start(fetch, scheduler.clone()?)?),
        KeySource::Lookup(fetch) => lookup = Some(LookupMode::new(fetch)),
    }
    let usage = config.usage.as_ref().map(|usage| {
        log(
            LogLevel::Info,
            &format!(
                "keygate: usage reported to cluster {} path {} every {} s",
                usage.endpoint.cluster, usage.path, usage.report_seconds
            ),
        );
        Usage::new(usage)
    });
    let ticker = match scheduler.map(Ticker::start).transpose() {
        Ok(ticker) => ticker,
        Err(why) => {
            log(
                LogLevel::Error,
                &format!("keygate: configuration refused: {why}"),
            );
            return None;
        }
    };
    Some(Filter {
        config,
        metrics,
        _ticker: ticker,
        key_set,
        lookup,
        usage,
    })
}

/// Whether the config's requests need a number of their own (lookup mode).
pub fn needs_stream(filter: &Filter) -> bool {
    filter.lookup.is_some()
}

/// Whether request `stream` waits for its key.
pub fn waiting(filter: &Filter, stream: u32) -> bool {
    match &filter.lookup {
        Some(mode) if stream != 0 => lookup::waiting(mode, stream),
        _ => false,
    }
}

/// Request `stream` ends.
pub fn request_ended(filter: &Filter, stream: u32) {
    if let Some(mode) = &filter.lookup {
        lookup::ended(filter, mode, stream);
    }
}

/// The answer to a call request `stream` made.
pub fn request_called(filter: &Filter, stream: u32, id: u64, answer: &CallAnswer<'_>) {
    if let Some(mode) = &filter.lookup {
        lookup::answered(filter, mode, stream, id, answer);
    }
}

/// An allowed request's key was used (usage mode).
pub fn record_use(filter: &Filter, host: &mut impl Host, hash: &KeyHash) {
    if let Some(usage) = &filter.usage {
        if !usage.record(hash) {
            if let Some(id) = filter.metrics.usage_dropped {
                host.count(id);
            }
        }
    }
}

/// An event committed on the config's scheduler, on the main thread.
pub fn scheduled(filter: &Filter, host: ConfigHost, event: u64) {
    if event != ticker::EVENT {
        return;
    }
    if let Some(key_set) = &filter.key_set {
        key_set.tick(host, &filter.metrics);
    }
    if let Some(feed) = filter.lookup.as_ref().and_then(|l| l.feed.as_ref()) {
        feed.poll(host, &filter.metrics);
    }
    if let Some(usage) = &filter.usage {
        usage.tick(host, &filter.metrics);
    }
}

/// What a stream the config opened brought (the key set's fetch), on the main thread.
pub fn streamed(filter: &Filter, host: ConfigHost, id: u64, event: StreamEvent<'_>) {
    if let Some(key_set) = &filter.key_set {
        key_set.streamed(host, id, event);
    }
}

/// The config is being destroyed: its open streams are ended while it can still hear of it.
pub fn ending(filter: &Filter, host: ConfigHost) {
    if let Some(key_set) = &filter.key_set {
        key_set.end_stream(host);
    }
}

/// The answer to a call the config made, on the main thread.
pub fn called(filter: &Filter, host: ConfigHost, id: u64, answer: &CallAnswer<'_>) {
    if let Some(feed) = filter.lookup.as_ref().and_then(|l| l.feed.as_ref()) {
        if feed.answered(host, &filter.metrics, id, answer) {
            return;
        }
    }
    if let Some(usage) = &filter.usage {
        usage.answered(host, &filter.metrics, id, answer);
    }
}

/// Decides a request from its headers and carries the verdict out: header edits (true:
/// the request goes on) or a local answer (false).
pub fn request_headers(filter: &Filter, stream: u32, host: &mut Request) -> bool {
    let config = &filter.config;
    // A record from the key set or the lookup cache, which the verdict may borrow.
    let fetched: Option<KeyRecord>;
    let mut answer = None;
    let request = *host;
    let (verdict, redacted, used) = {
        let headers = match host.headers() {
            Ok(headers) => headers,
            Err(why) => {
                let verdict = Verdict::Deny(Denial::BadRequest(why));
                return carry_out(filter, host, verdict, None);
            }
        };
        let mut hash = None;
        let verdict = match begin_with_token(config, &headers, None) {
            Step::Done(verdict) => verdict,
            Step::Key(check) => match (hash.insert(check.hash), &config.keys, &filter.key_set) {
                (_, KeySource::Inline(set), _) => {
                    let record = set.get(&check.hash);
                    check.finish(config, record, request_time)
                }
                (_, KeySource::KeySet(_), Some(key_set)) => {
                    match key_set.record(config, &check.hash) {
                        Ok(record) => {
                            fetched = record;
                            check.finish(config, fetched.as_ref(), request_time)
                        }
                        Err(NotLoaded) => check.unavailable(config),
                    }
                }
                (_, KeySource::Lookup(_), _) => match &filter.lookup {
                    Some(mode) => {
                        let redacted = || redacted_target(config, &headers);
                        match lookup::start(
                            filter,
                            mode,
                            stream,
                            request,
                            check,
                            redacted,
                            &mut answer,
                        ) {
                            Started::Decided(verdict) => verdict,
                            Started::Paused => return false,
                        }
                    }
                    None => check.unavailable(config),
                },
                // A mode without its state: fail closed.
                _ => check.unavailable(config),
            },
        };
        let redacted = verdict.redacted_path(config, &headers);
        let used = hash.map(|hash| (hash, verdict.outcome()));
        (verdict, redacted, used)
    };
    let proceed = carry_out(filter, host, verdict, redacted.as_deref());
    if let (true, Some((hash, Outcome::Allowed))) = (proceed, used) {
        record_use(filter, host, &hash);
    }
    proceed
}

/// The wasm shell's `carry_out`: the allowed request's edits, or the denial's answer (with
/// a query-parameter key taken out of `:path`, for Envoy's access log).
pub fn carry_out(
    filter: &Filter,
    host: &mut impl Host,
    verdict: Verdict<'_>,
    redacted_path: Option<&[u8]>,
) -> bool {
    let config = &filter.config;
    let outcome = verdict.outcome();
    match verdict {
        Verdict::Allow(allowed) => {
            let mut editor = Editor {
                host,
                failed: false,
            };
            allowed.apply(config, &mut editor);
            if editor.failed {
                log(
                    LogLevel::Warn,
                    "keygate: Envoy refused a header edit; the request is refused",
                );
                filter.count(host, UNAVAILABLE.outcome());
                host.respond(&response::render_for(config, &UNAVAILABLE));
                return false;
            }
            filter.count(host, outcome);
            true
        }
        Verdict::Deny(denial) => {
            filter.count(host, outcome);
            if let Some(path) = redacted_path {
                // Refused anyway: should Envoy refuse this edit too, the answer still goes out.
                let _ = host.set(":path", path);
            }
            host.respond(&response::render_for(config, &denial));
            false
        }
    }
}

/// Answers 503: the request cannot be decided safely (no config, or handling it failed).
pub fn unavailable(filter: Option<&Filter>, host: &mut impl Host) {
    let answer = match filter {
        Some(filter) => {
            filter.count(host, UNAVAILABLE.outcome());
            response::render_for(&filter.config, &UNAVAILABLE)
        }
        None => response::render(DEFAULT_REALM, &[], &UNAVAILABLE),
    };
    host.respond(&answer);
}

/// Removes the request trailers that must not reach the upstream (README "What the
/// upstream sees"); false when one could not be read or removed.
pub fn strip_trailers(filter: &Filter, host: &mut impl Host) -> bool {
    let config = &filter.config;
    let Some(names) = host.trailer_names() else {
        return false;
    };
    let remove: Vec<String> = keygate_core::trailers::to_remove(config, names)
        .into_iter()
        .map(str::to_string)
        .collect();
    remove.iter().all(|name| host.remove_trailer(name))
}

struct Editor<'h, H: Host> {
    host: &'h mut H,
    failed: bool,
}

impl<H: Host> HeaderEditor for Editor<'_, H> {
    fn set(&mut self, name: &str, value: &str) {
        self.failed |= !self.host.set(name, value.as_bytes());
    }

    fn remove(&mut self, name: &str) {
        self.failed |= !self.host.remove(name);
    }

    fn add(&mut self, name: &str, value: &str) {
        // Envoy's ABI adds no empty value; set drops it (README "What the upstream sees").
        let added = if value.is_empty() {
            self.host.set(name, value.as_bytes())
        } else {
            self.host.add(name, value.as_bytes())
        };
        self.failed |= !added;
    }
}
