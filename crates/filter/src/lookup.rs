//! `lookup` mode in the shell: a request whose key is not cached pauses while one call
//! asks the key service for the key's hash; requests for the same key meanwhile wait on
//! that call, and all are decided when it answers.

use crate::abi;
use crate::headers::HostEditor;
use crate::host::{self, carry_out, Metrics};
use keygate_core::config::Config;
use keygate_core::decision::{HeaderEditor, KeyCheck, UNAVAILABLE_RETRY_SECONDS};
use keygate_core::lookup_cache::{self, Answer, LookupCache, Probe, DEFAULT_CAPACITY};
use keygate_core::record::KeyHash;
use keygate_core::remote::LookupConfig;
use log::warn;
use proxy_wasm::hostcalls;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// A request paused for its key: what it needs to be decided later.
struct Waiting {
    check: KeyCheck,
    redacted_path: Option<String>,
}

struct Call {
    hash: KeyHash,
    by: u32,
}

/// One VM's cache, calls on their way and paused requests.
pub struct LookupState {
    lookup: LookupConfig,
    cache: RefCell<LookupCache>,
    /// Call token → the key it asks about, and the context whose call it is (the root's
    /// when it re-asks for requests whose call went away with its request).
    calls: RefCell<HashMap<u32, Call>>,
    waiting: RefCell<HashMap<u32, Waiting>>,
}

/// What the request should do now.
pub enum Next {
    /// Decide with this answer (a cache hit).
    Decide(KeyCheck, Answer),
    /// The request is paused; it is decided when the key service answers.
    Paused,
    /// The key service cannot be asked: decide without it.
    Unavailable(KeyCheck),
}

impl LookupState {
    pub fn new(lookup: &LookupConfig) -> Self {
        LookupState {
            lookup: lookup.clone(),
            cache: RefCell::new(LookupCache::new(
                lookup.cache_seconds,
                lookup.negative_cache_seconds,
                DEFAULT_CAPACITY,
            )),
            calls: RefCell::new(HashMap::new()),
            waiting: RefCell::new(HashMap::new()),
        }
    }

    /// Decides from the cache, or asks the key service and pauses the request. A paused
    /// request's `:path` loses its query-parameter key at once when `hide_now` (the
    /// credential is hidden anyway): should it end while it waits, Envoy's access log
    /// records the path as it stands.
    pub fn start(
        &self,
        metrics: &Metrics,
        context_id: u32,
        check: KeyCheck,
        redacted_path: impl FnOnce() -> Option<String>,
        hide_now: bool,
    ) -> Next {
        let probe = self
            .cache
            .borrow_mut()
            .probe(&check.hash, context_id, host::clock_ms());
        match probe {
            Probe::Hit(answer) => {
                metrics.lookup_cache_hits.add();
                return Next::Decide(check, answer);
            }
            Probe::Wait => {}
            Probe::Ask => {
                if !self.ask(metrics, &check.hash, context_id) {
                    self.cache
                        .borrow_mut()
                        .resolve(&check.hash, None, host::clock_ms());
                    return Next::Unavailable(check);
                }
            }
        }
        let redacted_path = redacted_path();
        if let (Some(path), true) = (&redacted_path, hide_now) {
            HostEditor::default().set(":path", path);
        }
        self.waiting.borrow_mut().insert(
            context_id,
            Waiting {
                check,
                redacted_path,
            },
        );
        Next::Paused
    }

    /// Calls the key service about `hash` on behalf of context `by` (the effective one).
    fn ask(&self, metrics: &Metrics, hash: &KeyHash, by: u32) -> bool {
        let path = self.lookup.path_for(hash);
        let endpoint = &self.lookup.endpoint;
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", &*endpoint.authority),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(u64::from(endpoint.timeout_ms));
        metrics.lookup_calls.add();
        match hostcalls::dispatch_http_call(&endpoint.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.calls
                    .borrow_mut()
                    .insert(token, Call { hash: *hash, by });
                true
            }
            Err(status) => {
                metrics.lookup_failed.add();
                warn!(
                    "keygate: cannot call cluster {:?} ({status:?}): is it defined in Envoy's \
                     config?",
                    &*endpoint.cluster
                );
                false
            }
        }
    }

    /// The key service answered call `token` (or failed to): decides every request that
    /// waited for it. Each is made the effective context in turn.
    pub fn answered(&self, config: &Config, metrics: &Metrics, token: u32, body_size: usize) {
        let Some(Call { hash, .. }) = self.calls.borrow_mut().remove(&token) else {
            return;
        };
        let status = host::call_response().status;
        let body = if status.as_deref() == Some("200") {
            host::call_body(body_size)
        } else {
            Vec::new()
        };
        let answer =
            match lookup_cache::read_answer(status.as_deref(), &body, &hash, &config.scopes) {
                Ok(answer) => Some(answer),
                Err(reason) => {
                    metrics.lookup_failed.add();
                    warn!("keygate: key lookup failed: {reason}");
                    None
                }
            };
        // A fresh reading, so that an answer is never kept for less than its
        // lifetime (the VM's clock may be half a second old); one per call, not per request.
        host::refresh_clock();
        let waiters = self
            .cache
            .borrow_mut()
            .resolve(&hash, answer.clone(), host::clock_ms());
        self.wake(config, metrics, &waiters, answer.as_ref());
    }

    /// Runs on the root's tick. A call whose request went away (its answer, routed to that
    /// request, is lost with it) is made again by the root for the requests still
    /// waiting; a call that is overdue anyway fails them.
    pub fn sweep(&self, config: &Config, metrics: &Metrics, root_id: u32) {
        let timeout = u64::from(self.lookup.endpoint.timeout_ms);
        let now = host::clock_ms();
        let overdue = self
            .cache
            .borrow()
            .overdue(now.saturating_sub(timeout + 1000));
        for hash in overdue {
            let root_call_overdue = self
                .calls
                .borrow()
                .values()
                .any(|call| call.hash == hash && call.by == root_id);
            self.calls.borrow_mut().retain(|_, call| call.hash != hash);
            let waiting = self.cache.borrow_mut().renew(&hash, now);
            if !root_call_overdue && waiting > 0 && self.ask(metrics, &hash, root_id) {
                continue;
            }
            let waiters = self.cache.borrow_mut().resolve(&hash, None, now);
            self.wake(config, metrics, &waiters, None);
        }
    }

    fn wake(&self, config: &Config, metrics: &Metrics, waiters: &[u32], answer: Option<&Answer>) {
        for &context_id in waiters {
            let Some(waiting) = self.waiting.borrow_mut().remove(&context_id) else {
                continue;
            };
            if abi::set_effective_context(context_id).is_err() {
                continue;
            }
            let redacted = waiting.redacted_path.as_deref();
            match answer {
                Some(answer) => {
                    let record = match answer {
                        Answer::Found(record) => Some(&**record),
                        Answer::Unknown => None,
                    };
                    let verdict = waiting.check.finish(config, record, host::request_time);
                    carry_out(config, metrics, verdict, redacted, true);
                }
                None => {
                    let verdict = waiting.check.unavailable(config, UNAVAILABLE_RETRY_SECONDS);
                    carry_out(config, metrics, verdict, redacted, true);
                }
            }
        }
    }

    /// Whether request `context_id` is paused for its key.
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiting.borrow().contains_key(&context_id)
    }

    /// A request ends (answered, or its client went away): it waits no more. Should it
    /// have made the call others wait on, that call's answer goes with it (the SDK routes
    /// an answer to the context that asked): the next sweep asks again for them.
    pub fn done(&self, context_id: u32) {
        if let Some(waiting) = self.waiting.borrow_mut().remove(&context_id) {
            let hash = waiting.check.hash;
            let mut cache = self.cache.borrow_mut();
            cache.leave(&hash, context_id);
            if self
                .calls
                .borrow()
                .values()
                .any(|call| call.by == context_id)
            {
                cache.orphan(&hash);
            }
        }
    }
}
