//! `key_set` mode in the shell (README "Key sets over HTTP"): every worker's root context
//! ticks every 500 ms (`TICK` in lib.rs) and reads the layout in force; the worker holding
//! the lease long-polls the key service (or polls a plain server) and writes what it
//! answers into shared data, a slice at a time on a fast tick (`BUSY_TICK`) while a full
//! document is being loaded. Requests read their key's bucket from shared data, unless
//! this VM holds the key's record already ([`Cache`]).

use crate::host::{self, Metrics, SharedData};
use keygate_core::config::Config;
use keygate_core::key_set::{FetchAnswer, FetchStat, Job, Progress, SharedSet, Turn};
use keygate_core::record::{DigestMap, KeyHash, KeyRecord};
use keygate_core::remote::KeySetConfig;
use log::{info, warn};
use std::cell::Cell;
use std::rc::Rc;

/// A slice of work aims at this long, so that requests on the same worker wait at most
/// about that long behind it.
const SLICE_MS: u64 = 10;
/// Records (or buckets) per slice to start with; adjusted to [`SLICE_MS`] as it goes.
const FIRST_BUDGET: usize = 4_000;
/// The most a slice may take on, whatever the last slices took: a unit of one phase (a
/// repeat check) costs a twentieth of another's (a record parsed, a bucket written), so a
/// budget grown in a cheap phase must not carry over whole into a dear one. 10,000 records
/// parse in about 20 ms.
const MAX_BUDGET: usize = 10_000;

/// Records this VM has read, at most this many: a worker's busy keys. Full, it starts
/// over (the records come back on the next read of each).
const CACHED: usize = 4096;

/// Records this VM decoded from the set in force, by key hash: a request for a key read
/// before reads the set's generation (an empty entry's version) in place of its bucket,
/// and decodes nothing. Dropped whole when the generation has moved (a bucket was written:
/// a delta, a load), so a revoked or changed key is refused as soon as its bucket is
/// written, as without the cache. Keys the set does not hold are not kept: made-up keys cannot push
/// out the real ones, and an added key is found at once.
#[derive(Default)]
struct Cache {
    records: DigestMap<Rc<KeyRecord>>,
    generation: Option<u32>,
}

/// One VM's view of the shared set.
pub struct KeySetState {
    set: SharedSet,
    fetch: KeySetConfig,
    holder: u64,
    /// The layout in force, as last read; `None` until a first set has loaded.
    bits: Cell<Option<u8>>,
    /// While this worker's own fetch is on its way: when it was asked, and until when to
    /// wait for it.
    in_flight: Cell<Option<(u64, u64)>>,
    /// A full document being loaded by this worker.
    /// A `Cell`, not a `RefCell`: taken out and put back whole, so no borrow can panic.
    job: Cell<Option<Box<Job>>>,
    /// Records or buckets per slice.
    budget: Cell<usize>,
    /// Taken out and put back whole, like `job`.
    cache: Cell<Cache>,
}

impl KeySetState {
    pub fn new(fetch: &KeySetConfig) -> Self {
        let set = SharedSet::new(fetch);
        let holder = set.new_holder(&mut SharedData);
        let state = KeySetState {
            set,
            fetch: fetch.clone(),
            holder,
            bits: Cell::new(None),
            in_flight: Cell::new(None),
            job: Cell::new(None),
            budget: Cell::new(FIRST_BUDGET),
            cache: Cell::default(),
        };
        state.bits.set(state.set.read_meta(&SharedData).bits);
        state
    }

    /// Drops the cached records if the set's generation has moved since they were read.
    fn renew_cache(&self) {
        let generation = self.set.generation(&SharedData);
        let mut cache = self.cache.take();
        if cache.generation != generation {
            cache = Cache {
                records: DigestMap::default(),
                generation,
            };
        }
        self.cache.set(cache);
    }

    /// The record of `hash` in the set in force: `Ok(None)` for a key the set does not
    /// hold, `Err(NotLoaded)` before a first set has loaded.
    pub fn record(
        &self,
        config: &Config,
        hash: &KeyHash,
    ) -> Result<Option<Rc<KeyRecord>>, NotLoaded> {
        // Before a first load, look again on every request, so the first set serves at
        // once rather than at the next tick.
        let bits = self.bits.get().or_else(|| {
            let bits = self.set.read_meta(&SharedData).bits;
            self.bits.set(bits);
            bits
        });
        let bits = bits.ok_or(NotLoaded)?;
        self.renew_cache();
        let mut cache = self.cache.take();
        let cached = cache.records.get(hash).cloned();
        if cached.is_some() {
            self.cache.set(cache);
            return Ok(cached);
        }
        let (record, found_under) = self.set.lookup(&SharedData, bits, hash, &config.scopes);
        if found_under != bits {
            // Moved to a new layout before this worker's tick said so.
            self.bits.set(Some(found_under));
        }
        let record = record.map(Rc::new);
        if let Some(record) = &record {
            if cache.records.len() >= CACHED {
                cache.records.clear();
            }
            cache.records.insert(*hash, Rc::clone(record));
        }
        self.cache.set(cache);
        Ok(record)
    }

    fn has_job(&self) -> bool {
        let job = self.job.take();
        let has = job.is_some();
        self.job.set(job);
        has
    }

    /// Whether this worker has work to do in slices: the shell then ticks fast.
    pub fn busy(&self) -> bool {
        self.has_job()
    }

    /// Every tick, on every worker: 500 ms, or `BUSY_TICK` while [`KeySetState::busy`].
    pub fn tick(&self, metrics: &Metrics) {
        let now = host::now_ms();
        let meta = self.set.read_meta(&SharedData);
        self.bits.set(meta.bits);
        metrics.keys_loaded(meta.keys);
        if let Some(ok) = meta.last_ok_ms {
            metrics.fetch_age(now.saturating_sub(ok) / 1000);
        }
        if let Some(job) = self.job.take() {
            let started = host::now_ms();
            let progress =
                self.set
                    .resume(&mut SharedData, self.turn(started), job, self.budget.get());
            self.timed(started);
            self.progressed(metrics, progress);
            if !self.has_job() {
                // Loaded: the next long-poll goes out now, not at the next tick.
                self.poll(metrics);
            }
            return;
        }
        self.poll(metrics);
    }

    /// Fetches now if it is this worker's turn.
    fn poll(&self, metrics: &Metrics) {
        let now = host::now_ms();
        if self.in_flight.get().is_some_and(|(_, until)| now < until) || self.has_job() {
            return;
        }
        self.in_flight.set(None);
        let Some(fetch) = self.set.claim(&mut SharedData, self.holder, now) else {
            return;
        };
        let mut headers = vec![("accept", "application/json")];
        if let Some(etag) = fetch.etag.as_deref() {
            headers.push(("if-none-match", etag));
        }
        match host::call(
            &self.fetch.endpoint,
            "GET",
            &fetch.path,
            &headers,
            None,
            fetch.timeout_ms,
        ) {
            Ok(_) => self
                .in_flight
                .set(Some((now, now + fetch.timeout_ms + 1000))),
            Err(reason) => {
                let progress = self.set.complete(
                    &mut SharedData,
                    self.turn(now),
                    now,
                    FetchAnswer::Failed(reason),
                    1,
                );
                self.progressed(metrics, progress);
            }
        }
    }

    /// The answer to this worker's fetch.
    pub fn answered(&self, metrics: &Metrics, body_size: usize) {
        let asked = self.in_flight.take().map_or(0, |(asked, _)| asked);
        let host::CallResponse { status, etag } = host::call_response();
        let answer = match status.as_deref() {
            Some("200") => FetchAnswer::Set {
                etag,
                body: host::call_body(body_size),
            },
            Some("304") => FetchAnswer::NotModified,
            Some(other) => FetchAnswer::Failed(format!("key service answered {other}")),
            // Envoy resets a call whose answer outgrows its buffer limit, and says so only in
            // its own log, now and then: name that cause here, it is the likely one for a
            // large set.
            None => FetchAnswer::Failed(
                "the call was reset: an answer larger than Envoy's \
                 http.async_response_buffer_limit (32 MiB by default), or a lost connection"
                    .into(),
            ),
        };
        let started = host::now_ms();
        let progress = self.set.complete(
            &mut SharedData,
            self.turn(started),
            asked,
            answer,
            self.budget.get(),
        );
        self.timed(started);
        let done = matches!(progress, Progress::Done(..));
        self.progressed(metrics, progress);
        if done {
            // The next long-poll goes out now, not at the next tick.
            self.poll(metrics);
        }
    }

    fn turn(&self, now_ms: u64) -> Turn {
        Turn {
            holder: self.holder,
            now_ms,
            jitter: host::jitter(self.holder),
        }
    }

    /// Adjusts the slice budget to what the last slice took.
    fn timed(&self, started_ms: u64) {
        let took = host::now_ms().saturating_sub(started_ms);
        let budget = self.budget.get();
        let next = if took > SLICE_MS * 3 / 2 {
            budget * 2 / 3
        } else if took < SLICE_MS / 2 {
            budget.saturating_mul(3) / 2
        } else {
            budget
        };
        self.budget.set(next.clamp(500, MAX_BUDGET));
    }

    fn progressed(&self, metrics: &Metrics, progress: Progress) {
        let fetched = match progress {
            Progress::Working(job) => {
                self.job.set(Some(job));
                return;
            }
            Progress::Done(fetched) => fetched,
        };
        let meta = self.set.read_meta(&SharedData);
        self.bits.set(meta.bits);
        let report = fetched.report(&self.fetch.endpoint.cluster, meta.bits.is_some());
        match report.stat {
            FetchStat::Ok => metrics.fetch_ok.add(),
            FetchStat::NotModified => metrics.fetch_not_modified.add(),
            FetchStat::Failed => metrics.fetch_failed.add(),
        }
        if report.stat != FetchStat::Failed {
            metrics.fetch_age(0);
        }
        if let Some(keys) = report.keys {
            metrics.keys_loaded(keys);
        }
        match report.line {
            Some((true, line)) => warn!("{line}"),
            Some((false, line)) => info!("{line}"),
            None => {}
        }
    }
}

/// No key set has loaded yet.
pub struct NotLoaded;
