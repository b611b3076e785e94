//! `lookup` mode's memory (README "Key sets over HTTP"): answers of the key service, kept for their lifetime,
//! and the requests waiting on a call already made for the same key. Per VM; the shell
//! makes the calls and wakes the waiters.

use crate::record::{KeyHash, KeyRecord, KeyRecordDoc};
use crate::scope::ScopeIndex;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::rc::Rc;

/// What the key service said about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Found(Rc<KeyRecord>),
    /// 404: the key service does not hold this key.
    Unknown,
}

impl Answer {
    /// The record to decide with; `None` for a key the service does not hold.
    pub fn record(&self) -> Option<&KeyRecord> {
        match self {
            Answer::Found(record) => Some(record),
            Answer::Unknown => None,
        }
    }
}

/// What a request should do about its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Decide now with this answer.
    Hit(Answer),
    /// A call for this key is on its way; wait for it.
    Wait,
    /// Make the call; later requests for the key wait for it.
    Ask,
}

#[derive(Debug)]
enum Entry {
    Known {
        answer: Answer,
        until_ms: u64,
    },
    Pending {
        since_ms: u64,
        waiters: Vec<u32>,
        /// The key changed (or everything was dropped) while its call was on its way: the
        /// answer may predate the change, so it decides the waiting requests but is not kept.
        stale: bool,
    },
}

#[derive(Debug)]
pub struct LookupCache {
    /// Keyed by hashes of keys clients chose: a seeded hasher, so that keys ground to
    /// share bucket bits cannot turn lookups into scans (the key set's digest hasher
    /// assumes members come from configuration).
    entries: HashMap<KeyHash, Entry, RandomState>,
    found_ms: u64,
    unknown_ms: u64,
    capacity: usize,
    /// When a full cache was last swept of expired answers.
    swept_ms: Option<u64>,
}

/// A full cache is swept of expired answers at most this often: a sweep visits every
/// entry, and a flood of new keys must not pay for one each.
const SWEEP_EVERY_MS: u64 = 1_000;

/// Answers one VM keeps at most; past that, answers are used once and not kept.
pub const DEFAULT_CAPACITY: usize = 100_000;

impl LookupCache {
    pub fn new(cache_seconds: u32, negative_cache_seconds: u32, capacity: usize) -> Self {
        LookupCache {
            entries: HashMap::default(),
            found_ms: u64::from(cache_seconds) * 1000,
            unknown_ms: u64::from(negative_cache_seconds) * 1000,
            capacity,
            swept_ms: None,
        }
    }

    /// Looks `hash` up for request `context_id`. `Wait` and `Ask` register the request as
    /// waiting: it is in the list [`LookupCache::resolve`] returns.
    pub fn probe(&mut self, hash: &KeyHash, context_id: u32, now_ms: u64) -> Probe {
        match self.entries.get_mut(hash) {
            Some(Entry::Known { answer, until_ms }) if now_ms < *until_ms => {
                return Probe::Hit(answer.clone());
            }
            Some(Entry::Pending { waiters, .. }) => {
                waiters.push(context_id);
                return Probe::Wait;
            }
            _ => {}
        }
        self.entries.insert(
            *hash,
            Entry::Pending {
                since_ms: now_ms,
                waiters: vec![context_id],
                stale: false,
            },
        );
        Probe::Ask
    }

    /// Records the key service's answer (`None`: no answer, the service failed) and
    /// returns the requests that were waiting for it.
    pub fn resolve(&mut self, hash: &KeyHash, answer: Option<Answer>, now_ms: u64) -> Vec<u32> {
        let (waiters, stale) = match self.entries.remove(hash) {
            Some(Entry::Pending { waiters, stale, .. }) => (waiters, stale),
            _ => (Vec::new(), false),
        };
        let lifetime = match &answer {
            _ if stale => 0,
            Some(Answer::Found(_)) => self.found_ms,
            Some(Answer::Unknown) => self.unknown_ms,
            None => 0,
        };
        if let (Some(answer), true) = (answer, lifetime > 0) {
            let sweep_due = self
                .swept_ms
                .is_none_or(|at| now_ms >= at.saturating_add(SWEEP_EVERY_MS));
            if self.entries.len() >= self.capacity && sweep_due {
                self.entries.retain(|_, e| match e {
                    Entry::Known { until_ms, .. } => now_ms < *until_ms,
                    Entry::Pending { .. } => true,
                });
                self.swept_ms = Some(now_ms);
            }
            if self.entries.len() < self.capacity {
                self.entries.insert(
                    *hash,
                    Entry::Known {
                        answer,
                        until_ms: now_ms.saturating_add(lifetime),
                    },
                );
            }
        }
        waiters
    }

    /// These keys changed at the key service (README "Watching for changes"): their
    /// answers are dropped, and an answer on its way for one of them is used for the
    /// requests waiting on it but not kept (it may have been given before the change).
    pub fn forget(&mut self, hashes: &[KeyHash]) {
        for hash in hashes {
            match self.entries.get_mut(hash) {
                Some(Entry::Known { .. }) => {
                    self.entries.remove(hash);
                }
                Some(Entry::Pending { stale, .. }) => *stale = true,
                None => {}
            }
        }
    }

    /// Anything may have changed: every answer is dropped, and none on its way is kept.
    pub fn forget_all(&mut self) {
        self.entries.retain(|_, entry| match entry {
            Entry::Known { .. } => false,
            Entry::Pending { stale, .. } => {
                *stale = true;
                true
            }
        });
    }

    /// A waiting request went away (the client left).
    pub fn leave(&mut self, hash: &KeyHash, context_id: u32) {
        if let Some(Entry::Pending { waiters, .. }) = self.entries.get_mut(hash) {
            waiters.retain(|&id| id != context_id);
        }
    }

    /// The call for `hash` will not answer (the request that made it is gone): the next
    /// [`LookupCache::overdue`] lists it whatever its age.
    pub fn orphan(&mut self, hash: &KeyHash) {
        if let Some(Entry::Pending { since_ms, .. }) = self.entries.get_mut(hash) {
            *since_ms = 0;
        }
    }

    /// A new call for `hash` is on its way: its age counts from `now_ms`. Returns how many
    /// requests wait for it.
    pub fn renew(&mut self, hash: &KeyHash, now_ms: u64) -> usize {
        match self.entries.get_mut(hash) {
            Some(Entry::Pending {
                since_ms,
                waiters,
                stale,
            }) => {
                *since_ms = now_ms;
                // Made now, the new call's answer is not older than any change seen.
                *stale = false;
                waiters.len()
            }
            _ => 0,
        }
    }

    /// Keys whose call has been on its way since before `cutoff_ms`: its answer will not
    /// come (the request that made it is gone, and its call with it).
    pub fn overdue(&self, cutoff_ms: u64) -> Vec<KeyHash> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Pending { since_ms, .. } if *since_ms < cutoff_ms))
            .map(|(hash, _)| *hash)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads the key service's answer for `hash`: 200 with the record, 404 for a key it does
/// not hold. Anything else, or a record for another key, is a failure (`Err`, the reason).
pub fn read_answer(
    status: Option<&str>,
    body: &[u8],
    hash: &KeyHash,
    index: &ScopeIndex,
) -> Result<Answer, String> {
    match status {
        Some("200") => {
            let doc =
                KeyRecordDoc::parse(body, "").map_err(|e| format!("invalid key record: {e}"))?;
            if doc.hash != *hash {
                return Err("the key service answered with another key's record".into());
            }
            Ok(Answer::Found(Rc::new(KeyRecord::from_doc(doc, index).1)))
        }
        Some("404") => Ok(Answer::Unknown),
        Some(other) => Err(format!("key service answered {other}")),
        None => Err("no answer from the key service (timeout or connection failure)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str) -> Answer {
        let doc: KeyRecordDoc = crate::json::from_value(
            json!({"id": id, "hash": KeyHash::of_key(id).to_hex(), "owner": "o"}),
        )
        .unwrap();
        Answer::Found(Rc::new(KeyRecord::from_doc(doc, &ScopeIndex::default()).1))
    }

    #[test]
    fn concurrent_requests_for_one_key_share_one_call() {
        let mut cache = LookupCache::new(60, 10, 100);
        let h = KeyHash::of_key("k");
        assert_eq!(cache.probe(&h, 1, 0), Probe::Ask);
        assert_eq!(cache.probe(&h, 2, 5), Probe::Wait);
        assert_eq!(cache.probe(&h, 3, 6), Probe::Wait);
        cache.leave(&h, 2);
        assert_eq!(cache.resolve(&h, Some(record("k")), 10), vec![1, 3]);
        assert_eq!(cache.probe(&h, 4, 11), Probe::Hit(record("k")));
        // Another key is another call.
        assert_eq!(cache.probe(&KeyHash::of_key("j"), 5, 11), Probe::Ask);
    }

    #[test]
    fn answers_live_for_their_lifetime() {
        let mut cache = LookupCache::new(60, 10, 100);
        let (found, unknown) = (KeyHash::of_key("f"), KeyHash::of_key("u"));
        cache.probe(&found, 1, 0);
        cache.resolve(&found, Some(record("f")), 0);
        cache.probe(&unknown, 2, 0);
        cache.resolve(&unknown, Some(Answer::Unknown), 0);
        assert_eq!(cache.probe(&unknown, 3, 9_999), Probe::Hit(Answer::Unknown));
        assert_eq!(cache.probe(&unknown, 3, 10_000), Probe::Ask);
        assert_eq!(cache.probe(&found, 4, 59_999), Probe::Hit(record("f")));
        assert_eq!(cache.probe(&found, 4, 60_000), Probe::Ask);
    }

    #[test]
    fn failures_and_zero_lifetimes_are_not_kept() {
        let mut cache = LookupCache::new(0, 10, 100);
        let h = KeyHash::of_key("k");
        cache.probe(&h, 1, 0);
        assert_eq!(cache.resolve(&h, None, 0), vec![1]);
        assert_eq!(cache.probe(&h, 2, 1), Probe::Ask, "a failure is not cached");
        cache.resolve(&h, Some(record("k")), 1);
        assert_eq!(cache.probe(&h, 3, 2), Probe::Ask, "cache_seconds 0");
        assert_eq!(
            cache.resolve(&KeyHash::of_key("nobody"), None, 3),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn capacity_is_a_bound() {
        let mut cache = LookupCache::new(60, 60, 3);
        for i in 0..10 {
            let h = KeyHash::of_key(&i.to_string());
            cache.probe(&h, i, 0);
            cache.resolve(&h, Some(Answer::Unknown), 0);
        }
        assert_eq!(cache.len(), 3);
        // Once those expire, room is made for new answers.
        let h = KeyHash::of_key("late");
        cache.probe(&h, 1, 61_000);
        cache.resolve(&h, Some(Answer::Unknown), 61_000);
        assert_eq!(cache.probe(&h, 2, 61_001), Probe::Hit(Answer::Unknown));
    }

    #[test]
    fn a_full_cache_is_swept_at_most_once_a_second() {
        let mut cache = LookupCache::new(1, 1, 2);
        let answer = |cache: &mut LookupCache, key: &str, now: u64| {
            let h = KeyHash::of_key(key);
            cache.probe(&h, 1, now);
            cache.resolve(&h, Some(Answer::Unknown), now);
            cache.probe(&h, 2, now) == Probe::Hit(Answer::Unknown)
        };
        assert!(answer(&mut cache, "a", 0));
        assert!(answer(&mut cache, "b", 900));
        // Full. The first sweep (at 1 200) clears "a", expired at 1 000, and keeps "c".
        assert!(answer(&mut cache, "c", 1_200));
        // "b" has expired (1 900), but the next sweep is not due before 2 200: "d" is
        // used once and not kept.
        assert!(!answer(&mut cache, "d", 2_000));
        assert!(answer(&mut cache, "e", 2_250));
    }

    #[test]
    fn reads_the_key_services_answers() {
        let h = KeyHash::of_key("k");
        let body = json!({"id": "k1", "hash": h.to_hex(), "owner": "alice"}).to_string();
        let index = ScopeIndex::default();
        match read_answer(Some("200"), body.as_bytes(), &h, &index).unwrap() {
            Answer::Found(r) => assert_eq!(r.owner.as_str(), "alice"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_answer(Some("404"), b"", &h, &index),
            Ok(Answer::Unknown)
        );
        let other = read_answer(Some("200"), body.as_bytes(), &KeyHash::of_key("j"), &index);
        assert!(other.unwrap_err().contains("another key"));
        assert!(read_answer(Some("200"), b"{", &h, &index)
            .unwrap_err()
            .contains("invalid"));
        assert_eq!(
            read_answer(Some("500"), b"", &h, &index).unwrap_err(),
            "key service answered 500"
        );
        assert!(read_answer(None, b"", &h, &index)
            .unwrap_err()
            .contains("timeout"));
    }

    #[test]
    fn changed_keys_are_forgotten_even_when_their_answer_is_on_its_way() {
        let mut cache = LookupCache::new(60, 60, 100);
        let (a, b, c) = (
            KeyHash::of_key("a"),
            KeyHash::of_key("b"),
            KeyHash::of_key("c"),
        );
        for (i, h) in [a, b].iter().enumerate() {
            cache.probe(h, i as u32, 0);
            cache.resolve(h, Some(record("a")), 0);
        }
        // c's call is on its way when c changes.
        assert_eq!(cache.probe(&c, 7, 0), Probe::Ask);
        cache.forget(&[a, c, KeyHash::of_key("never seen")]);
        assert_eq!(cache.probe(&a, 1, 1), Probe::Ask, "a is asked again");
        assert_eq!(
            cache.probe(&b, 2, 1),
            Probe::Hit(record("a")),
            "b did not change"
        );
        assert_eq!(
            cache.probe(&c, 8, 1),
            Probe::Wait,
            "the call on its way still serves"
        );
        assert_eq!(cache.resolve(&c, Some(Answer::Unknown), 2), vec![7, 8]);
        assert_eq!(
            cache.probe(&c, 9, 3),
            Probe::Ask,
            "an answer from before the change is not kept"
        );
        // A call made after the change is kept as usual.
        cache.resolve(&c, Some(Answer::Unknown), 4);
        assert_eq!(cache.probe(&c, 9, 5), Probe::Hit(Answer::Unknown));
    }

    #[test]
    fn forgetting_everything_keeps_calls_on_their_way_but_not_their_answers() {
        let mut cache = LookupCache::new(60, 60, 100);
        let (a, b) = (KeyHash::of_key("a"), KeyHash::of_key("b"));
        cache.probe(&a, 1, 0);
        cache.resolve(&a, Some(Answer::Unknown), 0);
        assert_eq!(cache.probe(&b, 2, 0), Probe::Ask);
        cache.forget_all();
        assert_eq!(cache.len(), 1, "only b's call on its way");
        assert_eq!(cache.resolve(&b, Some(Answer::Unknown), 1), vec![2]);
        assert!(cache.is_empty());
        assert_eq!(cache.probe(&a, 3, 1), Probe::Ask);
    }

    #[test]
    fn overdue_calls_are_found() {
        let mut cache = LookupCache::new(60, 10, 100);
        let (old, new) = (KeyHash::of_key("old"), KeyHash::of_key("new"));
        cache.probe(&old, 1, 1_000);
        cache.probe(&new, 2, 5_000);
        assert_eq!(cache.overdue(2_000), vec![old]);
        assert!(cache.overdue(500).is_empty());
        cache.orphan(&new);
        assert_eq!(cache.overdue(500), vec![new]);
        assert_eq!(cache.renew(&new, 6_000), 1);
        assert_eq!(cache.overdue(5_500), vec![old]);
        assert_eq!(cache.renew(&KeyHash::of_key("none"), 6_000), 0);
    }
}
