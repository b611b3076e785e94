//! `lookup` mode in the native build (README "Native build (Envoy dynamic module)"): the
//! core's coordination ([`Lookups`]: one cache per worker, one call per key however many
//! requests wait for it) carried out with per-request callouts.
//!
//! A request's callout answers to that request. Requests waiting on a call another made
//! are resumed from that answer, on the same worker: each worker keeps its own
//! [`Lookups`] and its paused requests in thread-local state, never shared, so a resumed
//! request that calls back into the module (its body, its trailers) finds nothing held.
//! Should the request that made a call end first, its call goes with it: the others ask
//! again at once, through one of them ([`Lookups::sweep`]).

use crate::abi::{log, CallAnswer, LogLevel, Request};
use crate::clock::{now_ms, request_time};
use crate::filter::{self, Filter, Host as _};
use crate::lookup_watch::Feed;
use keygate_core::decision::Verdict;
use keygate_core::lookup::{LookupHost, Lookups};
use keygate_core::record::KeyHash;
use keygate_core::remote::LookupConfig;
use keygate_core::stats::Outcome;
use keygate_core::timestamp::Timestamp;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The context id the core's sweep asks "as the root" with: no request has it.
const ROOT: u32 = 0;
/// How often, at most, a worker looks for calls overdue (on its requests' hooks).
const SWEEP_MS: u64 = 500;

/// A lookup config's process-wide part: which config the workers' state belongs to, and
/// its change feed.
pub struct LookupMode {
    pub lookup: LookupConfig,
    serial: u64,
    pub feed: Option<Feed>,
}

static SERIALS: AtomicU64 = AtomicU64::new(1);
static STREAM_IDS: AtomicU32 = AtomicU32::new(1);

impl LookupMode {
    pub fn new(lookup: &LookupConfig) -> LookupMode {
        LookupMode {
            lookup: lookup.clone(),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            feed: lookup
                .watch
                .as_ref()
                .map(|watch| Feed::new(watch, &lookup.endpoint)),
        }
    }
}

/// One worker's lookups for one config.
struct Worker {
    lookups: Lookups,
    /// Paused requests, by stream id: their Envoy filter (valid until their destroy hook,
    /// which removes them first).
    paused: RefCell<HashMap<u32, Request>>,
    /// (stream id, Envoy's callout id) → the token the core knows the call by.
    calls: RefCell<HashMap<(u32, u64), u32>>,
    next_token: Cell<u32>,
    last_sweep_ms: Cell<u64>,
    /// The last entry of the change feed's log this worker applied.
    seen: Cell<u64>,
}

thread_local! {
    // Per config (by serial): a config replaced leaves its entry behind on each worker, a
    // few hundred bytes, until Envoy ends.
    static WORKERS: RefCell<HashMap<u64, Rc<Worker>>> = RefCell::new(HashMap::new());
}

/// This worker's state for `mode`, with what the change feed reported since it last looked
/// forgotten.
fn worker(mode: &LookupMode) -> Rc<Worker> {
    let worker = WORKERS.with(|workers| {
        Rc::clone(workers.borrow_mut().entry(mode.serial).or_insert_with(|| {
            Rc::new(Worker {
                lookups: Lookups::new(&mode.lookup),
                paused: RefCell::new(HashMap::new()),
                calls: RefCell::new(HashMap::new()),
                next_token: Cell::new(1),
                last_sweep_ms: Cell::new(0),
                seen: Cell::new(0),
            })
        }))
    });
    if let Some(feed) = &mode.feed {
        worker
            .seen
            .set(feed.catch_up(&worker.lookups, worker.seen.get()));
    }
    worker
}

/// A number for a new request in lookup mode (never [`ROOT`]).
pub fn stream_id() -> u32 {
    STREAM_IDS.fetch_add(1, Ordering::Relaxed).max(1)
}

/// The core's host during one hook on a worker.
struct Host<'a> {
    filter: &'a Filter,
    mode: &'a LookupMode,
    worker: &'a Worker,
    /// The request whose hook runs, by stream id (it makes the calls, unless it is the
    /// root's sweep).
    current: Option<(u32, Request)>,
}

impl Host<'_> {
    /// The request a call is made through: the current one, or for the root's sweep any
    /// paused one (the call's answer comes to it, and wakes every request waiting).
    fn carrier(&self) -> Option<(u32, Request)> {
        if let Some(current) = self.current {
            return Some(current);
        }
        let paused = self.worker.paused.borrow();
        paused.iter().next().map(|(id, request)| (*id, *request))
    }

    fn count(&mut self, id: Option<usize>) {
        let Some(id) = id else { return };
        if let Some((_, mut request)) = self.carrier() {
            request.count(id);
        }
    }
}

impl LookupHost for Host<'_> {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn request_time(&self) -> Timestamp {
        request_time()
    }

    fn dispatch(&mut self, path: &str) -> Result<u32, String> {
        let metrics = self.filter.metrics();
        self.count(metrics.lookup_calls);
        let (stream_id, request) = self
            .carrier()
            .ok_or("no request left to make the call through")?;
        let endpoint = &self.mode.lookup.endpoint;
        let headers = [
            (":method", "GET"),
            (":path", path),
            (":authority", &*endpoint.authority),
            ("accept", "application/json"),
        ];
        let callout = request.call(&endpoint.cluster, &headers, u64::from(endpoint.timeout_ms))?;
        let token = self.worker.next_token.get();
        self.worker.next_token.set(token.wrapping_add(1).max(1));
        self.worker
            .calls
            .borrow_mut()
            .insert((stream_id, callout), token);
        Ok(token)
    }

    fn failed(&mut self, reason: &str) {
        let metrics = self.filter.metrics();
        self.count(metrics.lookup_failed);
        log(LogLevel::Warn, &format!("keygate: {reason}"));
    }

    fn cache_hit(&mut self) {
        let metrics = self.filter.metrics();
        self.count(metrics.lookup_cache_hits);
    }

    fn set_path(&mut self, path: &[u8]) {
        if let Some((_, request)) = &mut self.current {
            // Should Envoy refuse it, the request is decided as usual: a refusal sets the
            // redacted path again.
            let _ = request.set(":path", path);
        }
    }

    fn resume(
        &mut self,
        context_id: u32,
        hash: &KeyHash,
        verdict: Verdict<'_>,
        redacted_path: Option<&[u8]>,
    ) {
        let Some(mut request) = self.worker.paused.borrow_mut().remove(&context_id) else {
            // The request ended meanwhile: nothing to do.
            return;
        };
        let used = verdict.outcome() == Outcome::Allowed;
        let proceed = filter::carry_out(self.filter, &mut request, verdict, redacted_path);
        if used && proceed {
            filter::record_use(self.filter, &mut request, hash);
        }
        if proceed {
            request.continue_decoding();
        }
    }
}

/// How a request in lookup mode goes on.
pub enum Started<'f> {
    /// Decided now.
    Decided(Verdict<'f>),
    /// Paused: stop the request's iteration.
    Paused,
}

/// Starts deciding request `stream` with key check `check`: from the cache, or paused until
/// the key service answers.
pub fn start<'f>(
    filter: &'f Filter,
    mode: &LookupMode,
    stream: u32,
    request: Request,
    check: keygate_core::decision::KeyCheck,
    redacted: impl FnOnce() -> Option<Vec<u8>>,
    answer_slot: &'f mut Option<keygate_core::lookup_cache::Answer>,
) -> Started<'f> {
    use keygate_core::lookup::Next;
    let worker = worker(mode);
    sweep_now_and_then(filter, mode, &worker);
    let config = &filter.config;
    let mut host = Host {
        filter,
        mode,
        worker: &worker,
        current: Some((stream, request)),
    };
    match worker
        .lookups
        .start(&mut host, stream, check, redacted, config.hide_credentials)
    {
        Next::Decide(check, found) => {
            let found = answer_slot.insert(found);
            Started::Decided(check.finish(config, found.record(), request_time))
        }
        Next::Unavailable(check) => Started::Decided(check.unavailable(config)),
        Next::Paused => {
            worker.paused.borrow_mut().insert(stream, request);
            Started::Paused
        }
    }
}

/// The answer to a callout request `stream` made.
pub fn answered(
    filter: &Filter,
    mode: &LookupMode,
    stream: u32,
    callout: u64,
    answer: &CallAnswer<'_>,
) {
    let worker = worker(mode);
    let Some(token) = worker.calls.borrow_mut().remove(&(stream, callout)) else {
        return;
    };
    let status = answer.status();
    let body = if status == Some("200") {
        answer.body()
    } else {
        Vec::new()
    };
    let mut host = Host {
        filter,
        mode,
        worker: &worker,
        current: None,
    };
    worker
        .lookups
        .answered(&mut host, &filter.config, token, status, &body);
}

/// Request `stream` ends: it waits no more, and what waited on its call asks again.
pub fn ended(filter: &Filter, mode: &LookupMode, stream: u32) {
    let worker = worker(mode);
    let waited = worker.paused.borrow_mut().remove(&stream).is_some();
    let mut lost = Vec::new();
    worker.calls.borrow_mut().retain(|&(id, _), &mut token| {
        if id == stream {
            lost.push(token);
        }
        id != stream
    });
    if !waited && lost.is_empty() {
        // Decided from the cache (most requests): nobody waits on it, it made no call.
        return;
    }
    worker.lookups.done(stream);
    // Its calls go with it (Envoy cancels a request's callouts), whoever they were for.
    for token in lost {
        worker.lookups.lost(token);
    }
    let mut host = Host {
        filter,
        mode,
        worker: &worker,
        current: None,
    };
    worker.lookups.sweep(&mut host, &filter.config, ROOT);
    worker.last_sweep_ms.set(now_ms());
}

/// Whether request `stream` is paused for its key: its body and trailers wait too.
pub fn waiting(mode: &LookupMode, stream: u32) -> bool {
    WORKERS.with(|workers| {
        workers
            .borrow()
            .get(&mode.serial)
            .is_some_and(|worker| worker.paused.borrow().contains_key(&stream))
    })
}

fn sweep_now_and_then(filter: &Filter, mode: &LookupMode, worker: &Worker) {
    let now = now_ms();
    if now < worker.last_sweep_ms.get() + SWEEP_MS {
        return;
    }
    worker.last_sweep_ms.set(now);
    let mut host = Host {
        filter,
        mode,
        worker,
        current: None,
    };
    worker.lookups.sweep(&mut host, &filter.config, ROOT);
}
