//! A fetched key set held once per Envoy process, in proxy-wasm shared data, for every
//! worker's VM (README "Key sets over HTTP").
//!
//! Envoy runs one VM per worker. Fetching and holding the set per VM would multiply the
//! calls to the key service and the memory by the worker count, so:
//! - one VM at a time (a worker's, or the one on Envoy's main thread) holds a lease (a
//!   compare-and-swap on a shared entry) and fetches; the holder keeps it while it lives,
//!   so one VM, not all, pays for parsing;
//! - each record is a shared entry of its own, keyed by hash, written once: a request
//!   reads exactly one entry, and no VM holds a copy of the set;
//! - entries live in two slots. A new set is written into the slot not in use, then one
//!   write to the meta entry switches to it, so a request sees the old set or the new
//!   one, never a mixture. Workers re-read which slot is active every tick, and a slot is
//!   not rewritten until every worker has had time to move off it;
//! - each publication has a random generation, written into its records and the meta
//!   entry; a record of another generation reads as no record. What a publication cut
//!   short (a VM torn down mid-way) or a concurrent one left behind in a slot is never
//!   served, even once its key has left the set.
//!
//! All of it is written against [`SharedStore`], so the protocol is tested natively; the
//! shell implements the store with proxy-wasm's shared-data calls.

use crate::record::{KeyHash, KeyRecord, KeySetDoc};
use crate::record_codec;
use crate::remote::KeySetConfig;
use crate::scope::ScopeIndex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Proxy-wasm shared data: a map of byte values with a version (`cas`) per entry.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes unless `cas` is given and the entry has changed since; false if it had.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// How long a fetcher's lease outlives the time it was due, before another worker may take
/// over: covers a fetcher that is slow to tick.
pub const LEASE_GRACE_MS: u64 = 5_000;
/// After a switch of slots, how long the slot just left stays untouched: every worker
/// re-reads the active slot every half second, so two ticks. No longer: the next fetch
/// waits for it, and with `refresh_seconds: 1` a longer settling time (it was 3 s) put off
/// the first refresh after each new set, and a revocation with it. A worker whose tick
/// comes later still does not refuse a good key: a record it cannot find sends it to the
/// set in force ([`SharedSet::lookup_current`]).
pub const SLOT_SETTLE_MS: u64 = 1_000;
/// The first retry after a failed fetch; doubled per failure up to the refresh interval.
pub const FIRST_RETRY_MS: u64 = 1_000;

/// What every worker reads each tick: which slot serves, and when to fetch next.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The slot of the set in force; `None` until a first set has loaded.
    pub active: Option<u8>,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub keys: usize,
    /// When the key service last answered with a good set (200 or 304).
    pub last_ok_ms: Option<u64>,
    pub switched_ms: u64,
    pub next_due_ms: u64,
    /// Failures since the last good answer.
    pub failures: u32,
    pub last_error: Option<String>,
    /// The publication the active slot's records belong to.
    #[serde(default)]
    pub generation: u64,
}

/// The set requests read: its slot, and the publication that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    pub slot: u8,
    pub generation: u64,
}

impl Meta {
    /// `None` until a first set has loaded.
    pub fn serving(&self) -> Option<Serving> {
        self.active.map(|slot| Serving {
            slot,
            generation: self.generation,
        })
    }
}

/// A key service's answer to a fetch, as the shell received it.
#[derive(Debug)]
pub enum FetchAnswer<'a> {
    /// 200 with a body.
    Set {
        etag: Option<&'a str>,
        body: &'a [u8],
    },
    /// 304: the set in force is current.
    NotModified,
    /// Anything else: an error status, a timeout, a reset.
    Failed(String),
}

/// What came of a fetch, for the stats and the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Loaded {
        keys: usize,
        version: Option<String>,
    },
    NotModified,
    Failed {
        reason: String,
        retry_in_ms: u64,
    },
}

/// The names of one key set's entries. Sets from different sources (cluster, authority,
/// path) never share entries, and plugins fetching the same source share them.
#[derive(Clone, Debug)]
pub struct SharedSet {
    prefix: String,
    refresh_ms: u64,
    timeout_ms: u64,
}

const PREFIX_LEN: usize = "keygate/".len() + 16 + 1;

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
            prefix,
            refresh_ms: u64::from(fetch.refresh_seconds) * 1000,
            timeout_ms: u64::from(fetch.endpoint.timeout_ms),
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub fn read_meta(&self, store: &impl SharedStore) -> Meta {
        store
            .get(&self.name("meta"))
            .0
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_meta(&self, store: &mut impl SharedStore, meta: &Meta) {
        if let Ok(bytes) = serde_json::to_vec(meta) {
            store.set(&self.name("meta"), &bytes, None);
        }
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

    /// Called every tick: takes the lease and returns the ETag to send when this worker
    /// should fetch now; `None` otherwise.
    pub fn claim(
        &self,
        store: &mut impl SharedStore,
        holder: u64,
        now_ms: u64,
    ) -> Option<Option<String>> {
        let meta = self.read_meta(store);
        let settling =
            meta.active.is_some() && now_ms < meta.switched_ms.saturating_add(SLOT_SETTLE_MS);
        if now_ms < meta.next_due_ms || settling {
            return None;
        }
        let key = self.name("lease");
        let (value, cas) = store.get(&key);
        if let Some((owner, until)) = value.as_deref().and_then(parse_lease) {
            if owner != holder && now_ms < until {
                return None;
            }
        }
        let until = now_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LEASE_GRACE_MS);
        let claimed = store.set(
            &key,
            format!("{holder}:{until}").as_bytes(),
            cas.or(Some(0)),
        );
        claimed.then_some(meta.etag)
    }

    /// Records the answer to this holder's fetch: a good set is written to the spare slot
    /// and switched to; anything else keeps the set in force and schedules a retry.
    /// `jitter` is any number that differs between calls (it spreads the next fetch);
    /// `generation` a random number naming this publication.
    pub fn complete(
        &self,
        store: &mut impl SharedStore,
        holder: u64,
        now_ms: u64,
        jitter: u64,
        generation: u64,
        answer: FetchAnswer<'_>,
    ) -> Fetched {
        let mut meta = self.read_meta(store);
        let outcome = match answer {
            FetchAnswer::Set { etag, body } => match KeySetDoc::parse(body) {
                Ok(doc) => {
                    let version = doc.version.clone();
                    let keys = self.publish(store, &mut meta, doc, now_ms, generation);
                    meta.etag = etag.map(str::to_string);
                    meta.version = version.clone();
                    Fetched::Loaded { keys, version }
                }
                Err(problems) => {
                    let first = problems
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    self.failed(
                        &meta,
                        format!("invalid key set ({} problem(s)): {first}", problems.len()),
                        jitter,
                    )
                }
            },
            FetchAnswer::NotModified => Fetched::NotModified,
            FetchAnswer::Failed(reason) => self.failed(&meta, reason, jitter),
        };
        match &outcome {
            Fetched::Loaded { .. } | Fetched::NotModified => {
                meta.last_ok_ms = Some(now_ms);
                meta.failures = 0;
                meta.last_error = None;
                meta.next_due_ms = now_ms + spread(self.refresh_ms, jitter, 10);
            }
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                meta.failures = meta.failures.saturating_add(1);
                meta.last_error = Some(reason.clone());
                meta.next_due_ms = now_ms + retry_in_ms;
            }
        }
        self.write_meta(store, &meta);
        // The holder keeps the lease until shortly after its next fetch is due.
        let until = meta
            .next_due_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LEASE_GRACE_MS);
        store.set(
            &self.name("lease"),
            format!("{holder}:{until}").as_bytes(),
            None,
        );
        outcome
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

    /// Writes the set into the slot not in force, clears what that slot held that the new
    /// set lacks, and switches to it.
    fn publish(
        &self,
        store: &mut impl SharedStore,
        meta: &mut Meta,
        doc: KeySetDoc,
        now_ms: u64,
        generation: u64,
    ) -> usize {
        let slot = match meta.active {
            Some(0) => 1,
            _ => 0,
        };
        let index_key = self.name(&format!("index/{slot}"));
        let old = store.get(&index_key).0.unwrap_or_default();
        let mut index = Vec::with_capacity(doc.keys.len() * 32);
        let mut fresh: HashSet<[u8; 32]> = HashSet::with_capacity(doc.keys.len());
        let mut name = [0u8; RECORD_NAME_LEN];
        for record in &doc.keys {
            let bytes = record.hash.bytes();
            index.extend_from_slice(bytes);
            fresh.insert(*bytes);
            store.set(
                self.record_name(&mut name, slot, &record.hash),
                &record_codec::encode(record, generation),
                None,
            );
        }
        for old_hash in old.chunks_exact(32) {
            let Ok(raw) = <[u8; 32]>::try_from(old_hash) else {
                continue;
            };
            if !fresh.contains(&raw) {
                let gone = KeyHash::from_bytes(raw);
                store.set(self.record_name(&mut name, slot, &gone), b"", None);
            }
        }
        store.set(&index_key, &index, None);
        meta.active = Some(slot);
        meta.generation = generation;
        meta.keys = doc.keys.len();
        meta.switched_ms = now_ms;
        doc.keys.len()
    }

    /// The record of `hash` in the set in force ([`Meta::serving`]).
    pub fn lookup(
        &self,
        store: &impl SharedStore,
        serving: Serving,
        hash: &KeyHash,
        index: &ScopeIndex,
    ) -> Option<KeyRecord> {
        let mut name = [0u8; RECORD_NAME_LEN];
        let bytes = store
            .get(self.record_name(&mut name, serving.slot, hash))
            .0?;
        record_codec::decode(&bytes, serving.generation, index)
    }

    /// [`SharedSet::lookup`] in the set `serving` a worker last read; should it hold no
    /// record for `hash`, and the set in force have moved on since (a late tick: the slot
    /// may be being rewritten), the record in the set now in force. Also returns the set
    /// the answer comes from, for the worker to read next. Costs a read of the meta entry
    /// for a key the set does not hold.
    pub fn lookup_current(
        &self,
        store: &impl SharedStore,
        serving: Serving,
        hash: &KeyHash,
        index: &ScopeIndex,
    ) -> (Option<KeyRecord>, Serving) {
        if let Some(record) = self.lookup(store, serving, hash, index) {
            return (Some(record), serving);
        }
        match self.read_meta(store).serving() {
            Some(current) if current != serving => {
                (self.lookup(store, current, hash, index), current)
            }
            _ => (None, serving),
        }
    }

    /// `keygate/<source>/<slot>/<hash hex>`, written into `buf`: the request path builds
    /// it without allocating.
    fn record_name<'b>(
        &self,
        buf: &'b mut [u8; RECORD_NAME_LEN],
        slot: u8,
        hash: &KeyHash,
    ) -> &'b str {
        buf[..PREFIX_LEN].copy_from_slice(self.prefix.as_bytes());
        buf[PREFIX_LEN] = b'0' + (slot & 1);
        buf[PREFIX_LEN + 1] = b'/';
        let _ = hex::encode_to_slice(hash.bytes(), &mut buf[PREFIX_LEN + 2..]);
        // Every byte written above is ASCII.
        std::str::from_utf8(&buf[..]).unwrap_or_default()
    }
}

const RECORD_NAME_LEN: usize = PREFIX_LEN + 2 + 64;

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
