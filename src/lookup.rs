//! `lookup` mode's coordination (README "Key sets over HTTP"): a request whose key is not
//! cached pauses while one call asks the key service for the key's hash; requests for the
//! same key meanwhile wait on that call, and all are decided when it answers.
//!
//! Proxy-wasm routes a call's answer to the context that made it. Should that request end
//! while others wait on its call, the answer is lost with it: the root asks again for them
//! at its next tick ([`Lookups::sweep`]), and a call overdue anyway fails them.
//!
//! Written against [`LookupHost`], so that it is tested natively; the shell implements
//! the host with proxy-wasm's calls. Every borrow of the state ends before the host is
//! called, so the host may call back in (a resumed request's body callback, say).

use crate::config::Config;
use crate::decision::{KeyCheck, Verdict};
use crate::lookup_cache::{self, Answer, LookupCache, Probe, DEFAULT_CAPACITY};
use crate::record::KeyHash;
use crate::remote::LookupConfig;
use crate::timestamp::Timestamp;
use std::cell::RefCell;
use std::collections::HashMap;

/// What the coordination needs of its host.
pub trait LookupHost {
    /// The VM's clock, in milliseconds (it may trail the host's by a tick).
    fn now_ms(&self) -> u64;
    /// The instant a key's `expires_at` is checked against (read only for a key that has
    /// an expiry).
    fn request_time(&self) -> Timestamp;
    /// Calls the key service at `path` for the effective context; the call's token, or
    /// why the call could not be made.
    fn dispatch(&mut self, path: &str) -> Result<u32, String>;
    /// Something went wrong with a call (for the log and the failure counter).
    fn failed(&mut self, reason: &str);
    /// A request was decided from the cache.
    fn cache_hit(&mut self);
    /// Replaces the `:path` of the request being decided (the effective context).
    fn set_path(&mut self, path: &[u8]);
    /// Makes the paused request `context_id` effective and carries out `verdict` on it
    /// (header edits and resuming, or the local answer); for a refusal, its `:path`
    /// without a query-parameter key is `redacted_path`. `hash` is its key's (for usage).
    fn resume(
        &mut self,
        context_id: u32,
        hash: &KeyHash,
        verdict: Verdict<'_>,
        redacted_path: Option<&[u8]>,
    );
}

/// A request paused for its key: what it needs to be decided later.
#[derive(Debug)]
struct Waiting {
    check: KeyCheck,
    redacted_path: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Call {
    hash: KeyHash,
    /// The context whose call it is: the request's, or the root's when it asked again.
    by: u32,
}

/// What the request should do now.
#[derive(Debug)]
pub enum Next {
    /// Decide with this answer (a cache hit).
    Decide(KeyCheck, Answer),
    /// The request is paused; it is decided when the key service answers.
    Paused,
    /// The key service cannot be asked: decide without it.
    Unavailable(KeyCheck),
}

/// One VM's cache, calls on their way and paused requests.
#[derive(Debug)]
pub struct Lookups {
    lookup: LookupConfig,
    cache: RefCell<LookupCache>,
    /// Call token → the key it asks about, and who asked.
    calls: RefCell<HashMap<u32, Call>>,
    waiting: RefCell<HashMap<u32, Waiting>>,
}

/// How long past its timeout a call is given before the sweep treats it as lost.
const OVERDUE_GRACE_MS: u64 = 1_000;

impl Lookups {
    pub fn new(lookup: &LookupConfig) -> Self {
        Lookups {
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

    /// Decides from the cache, or asks the key service (or waits on the call already made)
    /// and pauses request `context_id`. A paused request's `:path` loses its
    /// query-parameter key at once when `hide_now` (the credential is hidden anyway):
    /// should it end while it waits, Envoy's access log records the path as it stands.
    pub fn start(
        &self,
        host: &mut impl LookupHost,
        context_id: u32,
        check: KeyCheck,
        redacted_path: impl FnOnce() -> Option<Vec<u8>>,
        hide_now: bool,
    ) -> Next {
        let now = host.now_ms();
        let probe = self.cache.borrow_mut().probe(&check.hash, context_id, now);
        match probe {
            Probe::Hit(answer) => {
                host.cache_hit();
                return Next::Decide(check, answer);
            }
            Probe::Wait => {}
            Probe::Ask => {
                if !self.ask(host, &check.hash, context_id) {
                    self.cache.borrow_mut().resolve(&check.hash, None, now);
                    return Next::Unavailable(check);
                }
            }
        }
        let redacted_path = redacted_path();
        if let (Some(path), true) = (&redacted_path, hide_now) {
            host.set_path(path);
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
    fn ask(&self, host: &mut impl LookupHost, hash: &KeyHash, by: u32) -> bool {
        match host.dispatch(&self.lookup.path_for(hash)) {
            Ok(token) => {
                self.calls
                    .borrow_mut()
                    .insert(token, Call { hash: *hash, by });
                true
            }
            Err(reason) => {
                host.failed(&reason);
                false
            }
        }
    }

    /// Whether `token` is a call made here and not yet answered.
    pub fn is_call(&self, token: u32) -> bool {
        self.calls.borrow().contains_key(&token)
    }

    /// The key service answered call `token` (`status` `None`: no answer) with `body`:
    /// decides every request that waited for it, each made effective in turn.
    pub fn answered(
        &self,
        host: &mut impl LookupHost,
        config: &Config,
        token: u32,
        status: Option<&str>,
        body: &[u8],
    ) {
        let Some(Call { hash, .. }) = self.calls.borrow_mut().remove(&token) else {
            return;
        };
        let answer = match lookup_cache::read_answer(status, body, &hash, &config.scopes) {
            Ok(answer) => Some(answer),
            Err(reason) => {
                host.failed(&format!("key lookup failed: {reason}"));
                None
            }
        };
        let waiters = self
            .cache
            .borrow_mut()
            .resolve(&hash, answer.clone(), host.now_ms());
        self.wake(host, config, &waiters, answer.as_ref());
    }

    /// Runs on the root's tick (the root is context `root_id`). A call whose request went
    /// away (its answer, routed to that request, is lost with it) is made again by the
    /// root for the requests still waiting; a call that is overdue anyway fails them.
    pub fn sweep(&self, host: &mut impl LookupHost, config: &Config, root_id: u32) {
        let timeout = u64::from(self.lookup.endpoint.timeout_ms);
        let now = host.now_ms();
        let overdue = self
            .cache
            .borrow()
            .overdue(now.saturating_sub(timeout + OVERDUE_GRACE_MS));
        for hash in overdue {
            let root_call_overdue = self
                .calls
                .borrow()
                .values()
                .any(|call| call.hash == hash && call.by == root_id);
            self.calls.borrow_mut().retain(|_, call| call.hash != hash);
            let waiting = self.cache.borrow_mut().renew(&hash, now);
            if !root_call_overdue && waiting > 0 && self.ask(host, &hash, root_id) {
                continue;
            }
            let waiters = self.cache.borrow_mut().resolve(&hash, None, now);
            self.wake(host, config, &waiters, None);
        }
    }

    fn wake(
        &self,
        host: &mut impl LookupHost,
        config: &Config,
        waiters: &[u32],
        answer: Option<&Answer>,
    ) {
        for &context_id in waiters {
            let Some(waiting) = self.waiting.borrow_mut().remove(&context_id) else {
                continue;
            };
            let hash = waiting.check.hash;
            let verdict = match answer {
                Some(answer) => waiting
                    .check
                    .finish(config, answer.record(), || host.request_time()),
                None => waiting.check.unavailable(config),
            };
            host.resume(context_id, &hash, verdict, waiting.redacted_path.as_deref());
        }
    }

    /// The key service's change feed reported changes (README "Watching for changes"):
    /// the cache forgets what they make stale.
    pub fn forget(&self, forget: &crate::watch::Forget) {
        let mut cache = self.cache.borrow_mut();
        match forget {
            crate::watch::Forget::Nothing => {}
            crate::watch::Forget::Hashes(hashes) => cache.forget(hashes),
            crate::watch::Forget::All => cache.forget_all(),
        }
    }

    /// Call `token` will not be answered: the request it went out through is gone (a host
    /// that sends the root's calls through requests, as the native build does). The next
    /// sweep asks again for whoever waits on it.
    pub fn lost(&self, token: u32) {
        let Some(call) = self.calls.borrow_mut().remove(&token) else {
            return;
        };
        self.cache.borrow_mut().orphan(&call.hash);
    }

    /// Whether request `context_id` is paused for its key.
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiting.borrow().contains_key(&context_id)
    }

    /// A request ends (answered, or its client went away): it waits no more. Should it
    /// have made the call others wait on, that call's answer goes with it: the next sweep
    /// asks again for them.
    pub fn done(&self, context_id: u32) {
        let Some(waiting) = self.waiting.borrow_mut().remove(&context_id) else {
            return;
        };
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

#[cfg(test)]
#[path = "lookup_tests.rs"]
mod tests;
