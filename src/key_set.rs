//! A fetched key set held once per Envoy process, in proxy-wasm shared data, for every
//! worker's VM (README "Key sets over HTTP").
//!
//! Envoy runs one VM per worker. Fetching and holding the set per VM would multiply the
//! calls to the key service and the memory by the worker count, so:
//! - one VM at a time (a worker's, or the one on Envoy's main thread) holds a lease (a
//!   compare-and-swap on a shared entry) and fetches; the holder keeps it while it lives;
//! - records live in buckets named by the leading bits of their hash
//!   ([`crate::key_set_bucket`]): a request reads one bucket, no VM holds a copy of the
//!   set, and Envoy's memory follows the set in force, not every hash ever published;
//! - against a key service that speaks the incremental sync, the holder long-polls
//!   `?since=V&epoch=E&wait=S` and applies each delta to the buckets it touches, so a
//!   revocation is in force on every worker as soon as its bucket is written; against a
//!   plain file server it polls every `refresh_seconds`;
//! - a full document is read and written a slice at a time ([`Job`]), the shell calling
//!   [`SharedSet::resume`] until it is done, so no worker is held up for long. Each key
//!   moves to the new set as its bucket is written; a set grown or shrunk fourfold is
//!   written whole under a new layout, then each bucket of the old layout is replaced by a
//!   two-byte marker naming the new one, so a worker still reading the old layout (it
//!   re-reads the layout twice a second) is sent to the new set bucket by bucket, as in an
//!   in-place load, and never serves a key the new set dropped.
//!
//! All of it is written against [`SharedStore`], so the protocol is tested natively; the
//! shell implements the store with proxy-wasm's shared-data calls.

use crate::key_set_bucket::{self as bucket, bits_for, relayout};
pub use crate::key_set_scan::Scan;
use crate::key_set_scan::{Scanned, Staged, Step};
use crate::record::{count_keys, KeyHash, KeyRecord};
use crate::record_codec;
use crate::remote::KeySetConfig;
use crate::scope::ScopeIndex;
use sha2::{Digest, Sha256};

/// Proxy-wasm shared data: a map of byte values with a version (`cas`) per entry.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// `f` of the value of `key`, borrowed where the store can lend it (the request path
    /// reads a bucket this way); a copy otherwise.
    fn read<R>(&self, key: &str, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(self.get(key).0.as_deref())
    }
    /// Writes unless `cas` is given and the entry has changed since; false if it had.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// How long a fetcher's lease outlives the time it was due, before another worker may take
/// over: covers a fetcher that is slow to tick.
pub const LEASE_GRACE_MS: u64 = 5_000;
/// The first retry after a failed fetch; doubled per failure up to the refresh interval.
pub const FIRST_RETRY_MS: u64 = 1_000;

/// What every worker reads each tick: the layout in force, and when to fetch next.
/// Held in shared data as JSON ([`crate::meta_codec`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The layout of the set in force (how many hash bits name a bucket); `None` until a
    /// first set has loaded.
    pub bits: Option<u8>,
    pub etag: Option<String>,
    pub version: Option<String>,
    /// The key service's epoch: present once it has shown it speaks the incremental sync.
    pub epoch: Option<String>,
    pub keys: usize,
    /// When the key service last answered with a good set (200 or 304).
    pub last_ok_ms: Option<u64>,
    pub next_due_ms: u64,
    /// Failures since the last good answer.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// The first byte of a bucket of a layout left behind: `[RETIRED, bits of the new layout]`.
/// A bucket of records is never two bytes long (each entry is at least 36).
const RETIRED: u8 = 0xff;

/// One call to make to the key service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub path: String,
    pub etag: Option<String>,
    pub timeout_ms: u64,
}

/// A key service's answer to a fetch, as the shell received it.
#[derive(Debug)]
pub enum FetchAnswer {
    /// 200 with a body.
    Set { etag: Option<String>, body: Vec<u8> },
    /// 200 with a body read as it came ([`Scan::streaming`], fed all of it, then
    /// [`Scan::end`]): nobody held the whole document.
    Streamed {
        etag: Option<String>,
        scan: Box<Scan>,
    },
    /// 304: the set in force is current.
    NotModified,
    /// Anything else: an error status, a timeout, a reset.
    Failed(String),
}

/// What came of a fetch, for the stats and the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// A full document written.
    Loaded {
        keys: usize,
        version: Option<String>,
    },
    /// A delta applied.
    Updated {
        changed: usize,
        keys: usize,
        version: String,
    },
    NotModified,
    Failed {
        reason: String,
        retry_in_ms: u64,
    },
}

impl Fetched {
    /// How the shells report it: the stat it counts in, the keys in force when it brought
    /// a set, and the log line (a warning for a failure; none for a 304). `loaded`: a set
    /// is in force (a failure keeps it).
    pub fn report(&self, cluster: &str, loaded: bool) -> Report {
        match self {
            Fetched::Loaded { keys, version } => Report {
                stat: FetchStat::Ok,
                keys: Some(*keys),
                line: Some((
                    false,
                    format!(
                        "keygate: key set loaded from cluster {cluster}: {}, version {}",
                        count_keys(*keys),
                        version.as_deref().unwrap_or("-")
                    ),
                )),
            },
            Fetched::Updated {
                changed,
                keys,
                version,
            } => Report {
                stat: FetchStat::Ok,
                keys: Some(*keys),
                line: Some((
                    false,
                    format!(
                        "keygate: key set updated from cluster {cluster}: {} changed, {} in \
                         force, version {version}",
                        count_keys(*changed),
                        count_keys(*keys)
                    ),
                )),
            },
            Fetched::NotModified => Report {
                stat: FetchStat::NotModified,
                keys: None,
                line: None,
            },
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                let kept = if loaded {
                    "keeping the last good set"
                } else {
                    "no key set loaded yet (protected routes answer 503)"
                };
                Report {
                    stat: FetchStat::Failed,
                    keys: None,
                    line: Some((
                        true,
                        format!(
                            "keygate: key set fetch from cluster {cluster} failed, {kept}, \
                             retrying in {retry_in_ms} ms: {reason}"
                        ),
                    )),
                }
            }
        }
    }
}

/// The fetch counter a [`Fetched`] counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchStat {
    Ok,
    NotModified,
    Failed,
}

/// What [`Fetched::report`] says.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub stat: FetchStat,
    /// The keys in force, when the fetch brought a set.
    pub keys: Option<usize>,
    /// The log line, and whether it is a warning.
    pub line: Option<(bool, String)>,
}

/// Who acts, and when: the lease holder, the time, and a number that differs between
/// calls (it spreads the next fetch).
#[derive(Clone, Copy, Debug)]
pub struct Turn {
    pub holder: u64,
    pub now_ms: u64,
    pub jitter: u64,
}

/// A full document being read or written by the VM that fetched it.
pub struct Job {
    etag: Option<String>,
    phase: Phase,
}

enum Phase {
    Read(Scan),
    Write(Writing),
}

struct Writing {
    staged: Staged,
    version: Option<String>,
    epoch: Option<String>,
    bits: u8,
    /// The layout being left, when writing a new one.
    leaving: Option<u8>,
    /// The next bucket to write (of the new layout, then to mark, of the one left).
    next: u32,
    marked: u32,
}

/// What [`SharedSet::complete`] and [`SharedSet::resume`] came to.
pub enum Progress {
    /// More to do: call [`SharedSet::resume`] again soon.
    Working(Box<Job>),
    /// The answer is dealt with.
    Done(Fetched),
}

/// The names of one key set's entries. Sets from different sources (cluster, authority,
/// path) never share entries, and plugins fetching the same source share them.
#[derive(Clone, Debug)]
pub struct SharedSet {
    prefix: String,
    /// The name of the generation entry ([`SharedSet::generation`]), read per request.
    generation: String,
    path: String,
    refresh_ms: u64,
    timeout_ms: u64,
    watch_seconds: u32,
}

const PREFIX_LEN: usize = "keygate/".len() + 16 + 1;
/// `<prefix><bits: 2 digits>/<bucket: 5 hex digits>`.
const BUCKET_NAME_LEN: usize = PREFIX_LEN + 2 + 1 + 5;

impl SharedSet {
    pub fn new(fetch: &KeySetConfig) -> Self {
        let source = format!(
            "{}\n{}\n{}",
            fetch.endpoint.cluster, fetch.endpoint.authority, fetch.path
        );
        let digest = Sha256::digest(source.as_bytes());
        let prefix = format!("keygate/{}/", hex::encode(&digest[..8]));
        debug_assert_eq!(prefix.len(), PREFIX_LEN);
        SharedSet {
            generation: format!("{prefix}generation"),
            prefix,
            path: fetch.path.to_string(),
            refresh_ms: u64::from(fetch.refresh_seconds) * 1000,
            timeout_ms: u64::from(fetch.endpoint.timeout_ms),
            watch_seconds: fetch.watch_seconds,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub fn read_meta(&self, store: &impl SharedStore) -> Meta {
        store
            .get(&self.name("meta"))
            .0
            .and_then(|bytes| Meta::from_json(&bytes))
            .unwrap_or_default()
    }

    fn write_meta(&self, store: &mut impl SharedStore, meta: &Meta) {
        store.set(&self.name("meta"), meta.to_json().as_bytes(), None);
    }

    /// A token that changes whenever a bucket has: `None` before any was written. The
    /// store versions every write (proxy-wasm's `cas`), so the token is the entry's
    /// version. A VM that keeps records it read (the wasm shell's cache) reads the token
    /// with each request and drops them when it has moved: a key is refused as soon as
    /// its bucket is, whichever worker asks.
    pub fn generation(&self, store: &impl SharedStore) -> Option<u32> {
        store.get(&self.generation).1
    }

    /// Writes bucket `key`, then moves [`SharedSet::generation`]: after the write, never
    /// before, so that a record read before the new token is seen is dropped when it is.
    /// The entry is empty: only its version is read, and proxy-wasm copies an empty value
    /// into the VM without allocating there.
    fn write_bucket(&self, store: &mut impl SharedStore, key: &str, value: &[u8]) {
        store.set(key, value, None);
        store.set(&self.generation, b"", None);
    }

    /// A number no other VM sharing this store holds: names a lease holder.
    pub fn new_holder(&self, store: &mut impl SharedStore) -> u64 {
        let key = self.name("holders");
        for _ in 0..64 {
            let (value, cas) = store.get(&key);
            let last = value
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let next = last.saturating_add(1);
            // An absent entry has no version to compare: the first writer may race, which
            // costs at most one duplicate fetch.
            if store.set(&key, next.to_string().as_bytes(), cas.or(Some(0))) {
                return next;
            }
        }
        // Contended beyond reason: VMs sharing this number may both fetch at times, which
        // costs a call, never correctness (both write the same set).
        u64::MAX
    }

    /// Whether this key service is long-polled: it has shown it speaks the incremental
    /// sync, and the configuration asks for it.
    fn watching(&self, meta: &Meta) -> bool {
        self.watch_seconds > 0 && meta.epoch.is_some() && meta.bits.is_some()
    }

    /// Called every tick: takes the lease and returns the call to make when this worker
    /// should fetch now; `None` otherwise.
    pub fn claim(&self, store: &mut impl SharedStore, holder: u64, now_ms: u64) -> Option<Fetch> {
        let meta = self.read_meta(store);
        if now_ms < meta.next_due_ms {
            return None;
        }
        let fetch = self.fetch_for(&meta);
        self.take_lease(store, holder, now_ms, fetch.timeout_ms)
            .then_some(fetch)
    }

    fn fetch_for(&self, meta: &Meta) -> Fetch {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        match (&meta.version, &meta.epoch) {
            (Some(version), Some(epoch)) if self.watching(meta) => Fetch {
                path: format!(
                    "{}{sep}since={version}&epoch={epoch}&wait={}",
                    self.path, self.watch_seconds
                ),
                etag: None,
                timeout_ms: u64::from(self.watch_seconds) * 1000 + self.timeout_ms,
            },
            // Asking for the sync shows the service we speak it; a plain server ignores
            // the query, and its answer (no epoch) says to poll it.
            _ if self.watch_seconds > 0 => Fetch {
                path: format!("{}{sep}wait={}", self.path, self.watch_seconds),
                etag: meta.etag.clone(),
                timeout_ms: self.timeout_ms,
            },
            _ => Fetch {
                path: self.path.clone(),
                etag: meta.etag.clone(),
                timeout_ms: self.timeout_ms,
            },
        }
    }

    /// Takes or renews the lease for `busy_ms` and a grace period after.
    fn take_lease(
        &self,
        store: &mut impl SharedStore,
        holder: u64,
        now_ms: u64,
        busy_ms: u64,
    ) -> bool {
        let key = self.name("lease");
        let (value, cas) = store.get(&key);
        if let Some((owner, until)) = value.as_deref().and_then(parse_lease) {
            if owner != holder && now_ms < until {
                return false;
            }
        }
        let until = now_ms
            .saturating_add(busy_ms)
            .saturating_add(LEASE_GRACE_MS);
        store.set(
            &key,
            format!("{holder}:{until}").as_bytes(),
            cas.or(Some(0)),
        )
    }

    /// Gives the lease up, if `holder` holds it: a filter config that is replaced (a
    /// reload) hands the set to its successor now, not once the lease runs out.
    pub fn release(&self, store: &mut impl SharedStore, holder: u64) {
        let key = self.name("lease");
        let (value, cas) = store.get(&key);
        if value
            .as_deref()
            .and_then(parse_lease)
            .map(|(owner, _)| owner)
            == Some(holder)
        {
            store.set(&key, b"0:0", cas);
        }
    }

    /// Whether `holder` holds the lease now.
    pub fn holds_lease(&self, store: &impl SharedStore, holder: u64, now_ms: u64) -> bool {
        let (value, _) = store.get(&self.name("lease"));
        value
            .as_deref()
            .and_then(parse_lease)
            .is_some_and(|(owner, until)| owner == holder && now_ms < until)
    }

    /// Deals with the answer to this holder's fetch, made at `asked_ms`: a delta is
    /// applied at once (its size bounds the work); a full document becomes a [`Job`];
    /// anything else keeps the set in force and schedules the next fetch.
    pub fn complete(
        &self,
        store: &mut impl SharedStore,
        turn: Turn,
        asked_ms: u64,
        answer: FetchAnswer,
        budget: usize,
    ) -> Progress {
        let Turn { now_ms, jitter, .. } = turn;
        match answer {
            FetchAnswer::Set { etag, body } => {
                self.read(store, turn, etag, Scan::new(body), budget)
            }
            FetchAnswer::Streamed { etag, scan } => self.read(store, turn, etag, *scan, budget),
            FetchAnswer::NotModified => {
                let mut meta = self.read_meta(store);
                // A long-poll that times out answers 304 after its wait; one that answers
                // 304 at once is a plain server's: poll it, do not loop on it.
                let held =
                    now_ms.saturating_sub(asked_ms) >= u64::from(self.watch_seconds) * 1000 / 2;
                let again_now = self.watching(&meta) && held;
                self.settle(store, turn, &mut meta, Fetched::NotModified, again_now)
            }
            FetchAnswer::Failed(reason) => {
                let mut meta = self.read_meta(store);
                let failed = self.failed(&meta, reason, jitter);
                self.settle(store, turn, &mut meta, failed, false)
            }
        }
    }

    /// Starts the job of reading a full document (or a delta) and works on it.
    fn read(
        &self,
        store: &mut impl SharedStore,
        turn: Turn,
        etag: Option<String>,
        scan: Scan,
        budget: usize,
    ) -> Progress {
        let job = Box::new(Job {
            etag,
            phase: Phase::Read(scan),
        });
        self.resume(store, turn, job, budget)
    }

    /// Works on `job` for about `budget` records or buckets.
    pub fn resume(
        &self,
        store: &mut impl SharedStore,
        turn: Turn,
        mut job: Box<Job>,
        budget: usize,
    ) -> Progress {
        let Turn {
            holder,
            now_ms,
            jitter,
        } = turn;
        let mut budget = budget.max(1);
        self.take_lease(store, holder, now_ms, self.timeout_ms);
        loop {
            match job.phase {
                Phase::Read(mut scan) => match scan.step(&mut budget) {
                    Ok(Step::More) => {
                        job.phase = Phase::Read(scan);
                        return Progress::Working(job);
                    }
                    // Only a stream the shell did not end waits for input: it never will.
                    Ok(Step::Hungry) => {
                        let mut meta = self.read_meta(store);
                        let reason = "the key set's answer ended early".to_string();
                        let failed = self.failed(&meta, reason, jitter);
                        return self.settle(store, turn, &mut meta, failed, false);
                    }
                    Ok(Step::Done(scanned)) => {
                        let mut meta = self.read_meta(store);
                        match scanned {
                            Scanned::Delta {
                                version,
                                epoch,
                                since,
                            } => {
                                let outcome = self.apply_delta(
                                    store,
                                    &mut meta,
                                    scan.staged(),
                                    since,
                                    version,
                                    epoch.as_str(),
                                );
                                let fetched = outcome
                                    .unwrap_or_else(|reason| self.failed(&meta, reason, jitter));
                                let watching = self.watching(&meta);
                                return self.settle(store, turn, &mut meta, fetched, watching);
                            }
                            Scanned::Full { version, epoch } => {
                                let staged = scan.into_staged();
                                let (bits, leaving) = match meta.bits {
                                    Some(bits) => match relayout(bits, staged.len()) {
                                        Some(new) => (new, Some(bits)),
                                        None => (bits, None),
                                    },
                                    None => (bits_for(staged.len()), None),
                                };
                                job.phase = Phase::Write(Writing {
                                    staged,
                                    version,
                                    epoch: epoch.map(|e| e.as_str().to_string()),
                                    bits,
                                    leaving,
                                    next: 0,
                                    marked: 0,
                                });
                            }
                        }
                    }
                    Err(reason) => {
                        let mut meta = self.read_meta(store);
                        let failed = self.failed(&meta, reason, jitter);
                        return self.settle(store, turn, &mut meta, failed, false);
                    }
                },
                Phase::Write(mut writing) => {
                    if !self.write_buckets(store, &mut writing, &mut budget)
                        || !self.mark_left(store, &mut writing, &mut budget)
                    {
                        job.phase = Phase::Write(writing);
                        return Progress::Working(job);
                    }
                    let mut meta = self.read_meta(store);
                    let keys = writing.staged.len();
                    meta.bits = Some(writing.bits);
                    meta.keys = keys;
                    meta.version = writing.version.clone();
                    meta.epoch = writing.epoch;
                    meta.etag = job.etag.take();
                    let watching = self.watching(&meta);
                    let fetched = Fetched::Loaded {
                        keys,
                        version: writing.version,
                    };
                    return self.settle(store, turn, &mut meta, fetched, watching);
                }
            }
        }
    }

    /// Writes buckets from `writing.next` on within the budget; true once all are written.
    fn write_buckets(
        &self,
        store: &mut impl SharedStore,
        writing: &mut Writing,
        budget: &mut usize,
    ) -> bool {
        let buckets = 1u32 << writing.bits;
        let mut name = [0u8; BUCKET_NAME_LEN];
        while writing.next < buckets {
            if *budget == 0 {
                return false;
            }
            let (items, cost) = writing.staged.bucket(writing.bits, writing.next);
            *budget = budget.saturating_sub(cost);
            let mut value = Vec::with_capacity(items.len() * 96);
            for item in &items {
                if let Some(record) = writing.staged.record(item) {
                    bucket::push(&mut value, &item.hash, record);
                }
            }
            let key = self.bucket_name(&mut name, writing.bits, writing.next);
            // An empty bucket is written only over one that held keys: names never used
            // stay unused.
            if !value.is_empty() || store.get(key).0.is_some_and(|v| !v.is_empty()) {
                self.write_bucket(store, key, &value);
            }
            writing.next += 1;
        }
        true
    }

    /// Once the new layout is written, replaces each bucket of the layout left with a
    /// marker naming the new one, within the budget; true once all are marked (or there
    /// is no layout left).
    fn mark_left(
        &self,
        store: &mut impl SharedStore,
        writing: &mut Writing,
        budget: &mut usize,
    ) -> bool {
        let Some(left) = writing.leaving else {
            return true;
        };
        let marker = [RETIRED, writing.bits];
        let mut name = [0u8; BUCKET_NAME_LEN];
        while writing.marked < 1u32 << left {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            let key = self.bucket_name(&mut name, left, writing.marked);
            self.write_bucket(store, key, &marker);
            writing.marked += 1;
        }
        true
    }

    fn apply_delta(
        &self,
        store: &mut impl SharedStore,
        meta: &mut Meta,
        staged: &Staged,
        since: u64,
        version: u64,
        epoch: &str,
    ) -> Result<Fetched, String> {
        let in_force = (meta.version.as_deref(), meta.epoch.as_deref());
        let Some(bits) = meta
            .bits
            .filter(|_| in_force == (Some(&since.to_string()), Some(epoch)))
        else {
            let found = format!(
                "a delta from version {since} of epoch {epoch}, but the set in force is \
                 version {} of epoch {}: starting over with a full document",
                in_force.0.unwrap_or("-"),
                in_force.1.unwrap_or("-")
            );
            meta.epoch = None;
            return Err(found);
        };
        let items = staged.sorted();
        let mut name = [0u8; BUCKET_NAME_LEN];
        let mut keys = i64::try_from(meta.keys).unwrap_or(i64::MAX);
        for group in items
            .chunk_by(|a, b| bucket::bucket_of(&a.hash, bits) == bucket::bucket_of(&b.hash, bits))
        {
            let Some(first) = group.first() else {
                continue;
            };
            let upsert: Vec<(&[u8; 32], &[u8])> = group
                .iter()
                .filter_map(|item| Some((&item.hash, staged.record(item)?)))
                .collect();
            let delete: Vec<[u8; 32]> = group
                .iter()
                .filter(|item| item.is_delete())
                .map(|item| item.hash)
                .collect();
            let key = self.bucket_name(&mut name, bits, bucket::bucket_of(&first.hash, bits));
            let old = store.get(key).0.unwrap_or_default();
            let (new, added) = bucket::apply(&old, &upsert, &delete);
            if new != old {
                self.write_bucket(store, key, &new);
            }
            keys += added;
        }
        meta.keys = usize::try_from(keys.max(0)).unwrap_or(0);
        meta.version = Some(version.to_string());
        Ok(Fetched::Updated {
            changed: items.len(),
            keys: meta.keys,
            version: version.to_string(),
        })
    }

    /// Records the outcome in the meta entry and the lease, and schedules the next fetch:
    /// at once (`again_now`, a long-poll to renew), after the refresh interval, or after a
    /// backoff.
    fn settle(
        &self,
        store: &mut impl SharedStore,
        turn: Turn,
        meta: &mut Meta,
        fetched: Fetched,
        again_now: bool,
    ) -> Progress {
        match &fetched {
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                meta.failures = meta.failures.saturating_add(1);
                meta.last_error = Some(reason.clone());
                meta.next_due_ms = turn.now_ms + retry_in_ms;
            }
            _ => {
                meta.last_ok_ms = Some(turn.now_ms);
                meta.failures = 0;
                meta.last_error = None;
                meta.next_due_ms = if again_now {
                    turn.now_ms
                } else {
                    turn.now_ms + spread(self.refresh_ms, turn.jitter, 10)
                };
            }
        }
        self.write_meta(store, meta);
        // The turn.holder keeps the lease until shortly after its next fetch is due.
        let until = meta
            .next_due_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LEASE_GRACE_MS);
        store.set(
            &self.name("lease"),
            format!("{}:{until}", turn.holder).as_bytes(),
            None,
        );
        Progress::Done(fetched)
    }

    fn failed(&self, meta: &Meta, reason: String, jitter: u64) -> Fetched {
        let doublings = meta.failures.min(16);
        let backoff = FIRST_RETRY_MS
            .saturating_mul(1 << doublings)
            .min(self.refresh_ms.max(FIRST_RETRY_MS));
        Fetched::Failed {
            reason,
            retry_in_ms: spread(backoff, jitter, 50).max(FIRST_RETRY_MS / 2),
        }
    }

    /// The record of `hash` in the set in force, read under layout `bits` ([`Meta::bits`]
    /// as a worker last read it), and the layout it was found under: a bucket of a layout
    /// left behind names the new one, which is read instead (the worker then keeps it).
    pub fn lookup(
        &self,
        store: &impl SharedStore,
        bits: u8,
        hash: &KeyHash,
        index: &ScopeIndex,
    ) -> (Option<KeyRecord>, u8) {
        let mut name = [0u8; BUCKET_NAME_LEN];
        let mut bits = bits;
        // At most one move: a layout written is complete before the one left is marked.
        for _ in 0..2 {
            let key = self.bucket_name(&mut name, bits, bucket::bucket_of(hash.bytes(), bits));
            let found = store.read(key, |bytes| match bytes {
                None => Ok(None),
                Some([RETIRED, new]) => Err(*new),
                Some(bytes) => {
                    Ok(bucket::find(bytes, hash).and_then(|r| record_codec::decode(r, index)))
                }
            });
            match found {
                Ok(record) => return (record, bits),
                Err(new) => bits = new,
            }
        }
        (None, bits)
    }

    /// `keygate/<source>/<bits>/<bucket>`, written into `buf`: the request path builds it
    /// without allocating.
    fn bucket_name<'b>(
        &self,
        buf: &'b mut [u8; BUCKET_NAME_LEN],
        bits: u8,
        bucket: u32,
    ) -> &'b str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[..PREFIX_LEN].copy_from_slice(self.prefix.as_bytes());
        buf[PREFIX_LEN] = b'0' + (bits / 10) % 10;
        buf[PREFIX_LEN + 1] = b'0' + bits % 10;
        buf[PREFIX_LEN + 2] = b'/';
        for (i, byte) in buf[PREFIX_LEN + 3..].iter_mut().enumerate() {
            *byte = HEX[((bucket >> (4 * (4 - i))) & 0xf) as usize];
        }
        // Every byte written above is ASCII.
        std::str::from_utf8(&buf[..]).unwrap_or_default()
    }
}

fn parse_lease(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (holder, until) = text.split_once(':')?;
    Some((holder.parse().ok()?, until.parse().ok()?))
}

/// `base` less up to `percent` %, chosen by `jitter`: fetchers that failed together do not
/// retry together.
fn spread(base: u64, jitter: u64, percent: u64) -> u64 {
    let span = base.saturating_mul(percent) / 100;
    if span == 0 {
        return base;
    }
    base - (jitter % (span + 1))
}

#[cfg(test)]
#[path = "key_set_tests.rs"]
mod tests;
