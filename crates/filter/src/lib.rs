//! The proxy-wasm shell. It reads the request headers once, asks [`begin`] and, when a key
//! was presented, finds the key's record where the configuration keeps it (inline, the
//! shared fetched set, or the key service). Then it carries out the verdict: header edits
//! and `Continue`, or a local response. No decision is made here.

// Envoy loads the wasm32 build; natively the crate is empty (the core is tested natively).
#![cfg(target_arch = "wasm32")]

mod abi;
mod headers;
mod host;
mod key_set;
mod lookup;
mod usage;
mod watch;

use headers::RequestHeaders;
use host::{carry_out, Metrics};
use key_set::{KeySetState, NotLoaded};
use keygate_core::config::{Config, KeySource};
use keygate_core::decision::{
    begin_with_token, redacted_target, Denial, Step, Verdict, UNAVAILABLE,
};
use keygate_core::jwt::Claims;
use keygate_core::lookup::{Lookups, Next};
use keygate_core::lookup_cache::Answer;
use keygate_core::record::KeyRecord;
use keygate_core::response;
use keygate_core::stats::Outcome;
use keygate_core::watch::Watch;
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;
use usage::Usage;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, ..Root::default() })
    });
}}

/// What every request of this VM shares, read-only but for the remote key state. Where
/// keys are found is the configuration's [`KeySource`]; the mode that fetches a set keeps
/// its view of shared data here, the mode that looks keys up its calls and cache (made
/// for that mode in `on_configure`, absent otherwise).
#[derive(Clone)]
struct Shared {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    key_set: Option<Rc<KeySetState>>,
    lookups: Option<Rc<Lookups>>,
    /// Usage reporting, when the configuration asks for it.
    usage: Option<Rc<Usage>>,
}

impl Shared {
    /// Hands a call's answer to what made the call: usage reporting, or the key mode.
    fn answered(&self, token: u32, body_size: usize) {
        if let Some(usage) = &self.usage {
            if usage.answered(&self.metrics, token) {
                return;
            }
        }
        match (&self.config.keys, &self.key_set, &self.lookups) {
            (KeySource::KeySet(_), Some(state), _) => state.answered(&self.metrics, body_size),
            (KeySource::Lookup(lookup), _, Some(lookups)) => lookup::answered(
                lookups,
                &self.config,
                lookup,
                &self.metrics,
                self.usage.as_deref(),
                token,
                body_size,
            ),
            _ => {}
        }
    }

    /// What the lookup mode's change feed works with, in that mode.
    fn feed(&self, salt: u32) -> Option<watch::Feed<'_>> {
        match (&self.config.keys, &self.lookups) {
            (KeySource::Lookup(lookup), Some(lookups)) => Some(watch::Feed {
                lookups,
                lookup,
                metrics: &self.metrics,
                salt: u64::from(salt),
            }),
            _ => None,
        }
    }

    /// The lookup mode's state and host, in that mode.
    fn lookups(&self) -> Option<(&Lookups, lookup::Host<'_>)> {
        match (&self.config.keys, &self.lookups) {
            (KeySource::Lookup(lookup), Some(lookups)) => Some((
                lookups,
                lookup::Host {
                    config: &self.config,
                    lookup,
                    metrics: &self.metrics,
                    usage: self.usage.as_deref(),
                },
            )),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Root {
    context_id: u32,
    shared: Option<Shared>,
    metrics: Option<Rc<Metrics>>,
    /// `lookup` mode's change feed, when `watch_seconds` > 0 (README "Watching for changes").
    watch: Option<Watch>,
    /// The tick period set, and when the last 500 ms tick's work ran.
    period: Duration,
    last_tick_ms: u64,
}

// Often enough that a switched set reaches every worker well within a second, and that
// Envoy's stats (and the lookup cache's clock) trail by at most half a second.
const TICK: Duration = Duration::from_millis(500);
// While a key set loads a slice at a time: slices of about 10 ms, a few ms apart, leave
// the worker free for its requests in between.
const BUSY_TICK: Duration = Duration::from_millis(5);

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            if let (Some(watch), Some(feed)) = (&mut self.watch, shared.feed(self.context_id)) {
                if feed.answered(watch, token, body_size) {
                    return;
                }
            }
            shared.answered(token, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(metrics) = &self.metrics {
            metrics.flush();
        }
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Follow Envoy's log level so that debug lines cost nothing when they are off.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&json) {
            Ok(config) => config,
            Err(problems) => {
                for problem in &problems {
                    error!("keygate: invalid configuration: {problem}");
                }
                error!(
                    "keygate: configuration refused ({} problem(s)); the filter will not run",
                    problems.len()
                );
                return false;
            }
        };
        for warning in config.rules.warnings() {
            warn!("keygate: configuration warning: {warning}");
        }
        let metrics = self
            .metrics
            .get_or_insert_with(|| Rc::new(Metrics::define()))
            .clone();
        host::refresh_clock();
        let _ = hostcalls::set_tick_period(TICK);
        self.period = TICK;
        let (mut key_set, mut lookups) = (None, None);
        self.watch = None;
        info!("keygate: configuration accepted: {}", config.summary());
        match &config.keys {
            KeySource::Inline(set) => metrics.keys_loaded(set.len()),
            KeySource::KeySet(fetch) => key_set = Some(Rc::new(KeySetState::new(fetch))),
            KeySource::Lookup(lookup) => {
                lookups = Some(Rc::new(Lookups::new(lookup)));
                self.watch = lookup.watch.as_ref().map(Watch::new);
            }
        }
        let usage = config.usage.as_ref().map(|usage| {
            info!(
                "keygate: usage reported to cluster {} path {} every {} s",
                usage.endpoint.cluster, usage.path, usage.report_seconds
            );
            Rc::new(Usage::new(usage))
        });
        self.shared = Some(Shared {
            config: Rc::new(config),
            metrics,
            key_set,
            lookups,
            usage,
        });
        true
    }

    fn on_tick(&mut self) {
        host::refresh_clock();
        let Some(shared) = &self.shared else {
            if let Some(metrics) = &self.metrics {
                metrics.flush();
            }
            return;
        };
        if let Some(state) = &shared.key_set {
            state.tick(&shared.metrics);
            // While a key set loads in slices, tick fast; the rest keeps its pace.
            let period = if state.busy() { BUSY_TICK } else { TICK };
            if period != self.period {
                let _ = hostcalls::set_tick_period(period);
                self.period = period;
            }
            let now = host::clock_ms();
            if now
                < self
                    .last_tick_ms
                    .saturating_add(TICK.as_millis() as u64 - 50)
            {
                return;
            }
            self.last_tick_ms = now;
        }
        shared.metrics.flush();
        if let Some((lookups, mut host)) = shared.lookups() {
            lookups.sweep(&mut host, &shared.config, self.context_id);
        }
        if let Some(usage) = &shared.usage {
            usage.tick(&shared.metrics);
        }
        if let (Some(watch), Some(feed)) = (&mut self.watch, shared.feed(self.context_id)) {
            feed.poll(watch);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    context_id: u32,
    shared: Option<Shared>,
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            shared.answered(token, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(lookups) = self.shared.as_ref().and_then(|s| s.lookups.as_deref()) {
            lookups.done(self.context_id);
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // Envoy does not create request contexts for a refused configuration; should
            // one appear anyway, nothing passes unchecked.
            host::respond(&response::render(
                keygate_core::config::DEFAULT_REALM,
                &[],
                &UNAVAILABLE,
            ));
            return Action::Pause;
        };
        let (config, metrics) = (&shared.config, &shared.metrics);
        let read = RequestHeaders::read();
        let pairs = read
            .as_ref()
            .ok_or("no request headers")
            .and_then(|read| read.pairs().map_err(|e| e.description()));
        let headers = match pairs {
            Ok(headers) => headers,
            Err(why) => {
                let verdict = Verdict::Deny(Denial::BadRequest(why));
                return action(carry_out(config, metrics, verdict, None, false));
            }
        };
        // The claims of a token `jwt_authn` verified, read only when `jwt` is configured:
        // one host call (the subject) per request, a second when a token is there.
        let claims = match &config.jwt {
            None => None,
            Some(jwt) => match host::token_claims(jwt) {
                Ok(claims) => claims,
                Err(why) => {
                    let verdict = Verdict::Deny(Denial::InvalidToken(why));
                    return action(carry_out(config, metrics, verdict, None, false));
                }
            },
        };
        let claims = claims.as_ref().map(|(subject, scope)| Claims {
            subject,
            scope: scope.as_deref(),
        });
        // The host's clock, read only for a key that has an expiry: one cheap host call
        // keeps `expires_at` exact.
        let now = host::request_time;
        let check = match begin_with_token(config, &headers, claims) {
            Step::Done(verdict) => {
                let redacted = verdict.redacted_path(config, &headers);
                return action(carry_out(
                    config,
                    metrics,
                    verdict,
                    redacted.as_deref(),
                    false,
                ));
            }
            Step::Key(check) => check,
        };
        let hash = check.hash;
        // Records decoded for this request live here, so the verdict may borrow them.
        let fetched: Option<Rc<KeyRecord>>;
        let answer: Answer;
        let verdict = match (&config.keys, &shared.key_set, shared.lookups()) {
            (KeySource::Inline(set), _, _) => {
                let record = set.get(&check.hash);
                check.finish(config, record, now)
            }
            (KeySource::KeySet(_), Some(state), _) => match state.record(config, &check.hash) {
                Ok(record) => {
                    fetched = record;
                    check.finish(config, fetched.as_deref(), now)
                }
                Err(NotLoaded) => check.unavailable(config),
            },
            (KeySource::Lookup(_), _, Some((lookups, mut host))) => {
                let redacted = || redacted_target(config, &headers);
                let hide_now = config.hide_credentials;
                match lookups.start(&mut host, self.context_id, check, redacted, hide_now) {
                    Next::Decide(check, found) => {
                        answer = found;
                        check.finish(config, answer.record(), now)
                    }
                    Next::Unavailable(check) => check.unavailable(config),
                    Next::Paused => return Action::Pause,
                }
            }
            // A mode without its state (not made in `on_configure`): fail closed.
            _ => check.unavailable(config),
        };
        let redacted = verdict.redacted_path(config, &headers);
        let used = verdict.outcome() == Outcome::Allowed;
        let proceed = carry_out(config, metrics, verdict, redacted.as_deref(), false);
        if let (true, true, Some(usage)) = (used, proceed, &shared.usage) {
            usage.record(metrics, &hash);
        }
        action(proceed)
    }

    // A body or trailers arriving while the request waits for its key must not move it on:
    // only the key service's answer does.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_waiting()
    }

    /// Trailers are stripped of identities and credentials first, whatever the request
    /// waits for: once it goes on, they are not shown again. Should that fail, the request
    /// is refused (or reset), never sent on with them.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(shared) = &self.shared {
            if !headers::strip_trailers(&shared.config) {
                warn!("keygate: Envoy refused to remove a request trailer; the request is refused");
                host::respond(&response::render(
                    &shared.config.realm,
                    &shared.config.sources,
                    &UNAVAILABLE,
                ));
                return Action::Pause;
            }
        }
        self.hold_while_waiting()
    }
}

impl Request {
    fn hold_while_waiting(&self) -> Action {
        match self.shared.as_ref().and_then(|s| s.lookups.as_deref()) {
            Some(lookups) if lookups.is_waiting(self.context_id) => Action::Pause,
            _ => Action::Continue,
        }
    }
}

fn action(proceed: bool) -> Action {
    if proceed {
        Action::Continue
    } else {
        Action::Pause
    }
}
