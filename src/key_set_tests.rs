use super::*;
use crate::remote::Endpoint;
use crate::scope::Scope;
use serde_json::json;
use std::collections::HashMap;

/// Envoy's shared data: every write gives the entry a new version; a write with a
/// version fails if the entry has moved on; a write to an absent entry always succeeds.
#[derive(Default)]
struct Store {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    writes: usize,
}

impl SharedStore for Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if let (Some(want), Some((_, have))) = (cas, self.entries.get(key)) {
            if want != 0 && want != *have {
                return false;
            }
        }
        self.next_cas += 1;
        self.writes += 1;
        self.entries
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        true
    }
}

fn shared(refresh_seconds: u32) -> SharedSet {
    SharedSet::new(&KeySetConfig {
        endpoint: Endpoint {
            cluster: "keyservice".into(),
            authority: "keyservice".into(),
            timeout_ms: 2000,
        },
        path: "/v1/keyset".into(),
        refresh_seconds,
    })
}

fn index() -> ScopeIndex {
    let mut index = ScopeIndex::default();
    index.add(&Scope::parse("browse").unwrap()).unwrap();
    index
}

fn doc(version: &str, keys: &[(&str, &str)]) -> Vec<u8> {
    let keys: Vec<_> = keys
        .iter()
        .map(|(id, key)| {
            json!({"id": id, "hash": KeyHash::of_key(key).to_hex(), "owner": "o",
                   "scopes": ["browse"]})
        })
        .collect();
    json!({"version": version, "keys": keys})
        .to_string()
        .into_bytes()
}

fn id_of(set: &SharedSet, store: &Store, key: &str) -> Option<String> {
    let serving = set.read_meta(store).serving()?;
    set.lookup(store, serving, &KeyHash::of_key(key), &index())
        .map(|r| r.id.as_str().to_string())
}

fn load(set: &SharedSet, store: &mut Store, holder: u64, now: u64, body: &[u8]) -> Fetched {
    set.complete(
        store,
        holder,
        now,
        7,
        now + 100,
        FetchAnswer::Set {
            etag: Some("\"e\""),
            body,
        },
    )
}

#[test]
fn nothing_is_loaded_until_a_first_set() {
    let set = shared(30);
    let store = Store::default();
    assert_eq!(set.read_meta(&store), Meta::default());
    assert_eq!(id_of(&set, &store, "ka"), None);
}

#[test]
fn one_worker_fetches_at_a_time_and_keeps_the_lease() {
    let set = shared(30);
    let mut store = Store::default();
    let (a, b) = (set.new_holder(&mut store), set.new_holder(&mut store));
    assert_ne!(a, b);
    assert_eq!(set.claim(&mut store, a, 10_000), Some(None));
    assert_eq!(set.claim(&mut store, b, 10_000), None, "a holds the lease");
    let loaded = load(&set, &mut store, a, 10_100, &doc("1", &[("a", "ka")]));
    assert_eq!(
        loaded,
        Fetched::Loaded {
            keys: 1,
            version: Some("1".into())
        }
    );
    let meta = set.read_meta(&store);
    assert!((37_100..=40_100).contains(&meta.next_due_ms), "{meta:?}");
    // Not due yet, for anyone.
    assert_eq!(set.claim(&mut store, a, 20_000), None);
    // Due: the holder fetches again, with the ETag; the other worker waits its turn.
    let due = meta.next_due_ms;
    assert_eq!(set.claim(&mut store, b, due), None);
    assert_eq!(set.claim(&mut store, a, due), Some(Some("\"e\"".into())));
}

#[test]
fn another_worker_takes_over_when_the_holder_is_gone() {
    let set = shared(30);
    let mut store = Store::default();
    let (a, b) = (set.new_holder(&mut store), set.new_holder(&mut store));
    assert!(set.claim(&mut store, a, 10_000).is_some());
    // a never answers: its lease runs out after the timeout and the grace.
    assert_eq!(
        set.claim(&mut store, b, 10_000 + 2_000 + LEASE_GRACE_MS - 1),
        None
    );
    assert!(set
        .claim(&mut store, b, 10_000 + 2_000 + LEASE_GRACE_MS)
        .is_some());
}

#[test]
fn a_lost_race_for_the_lease_is_not_a_claim() {
    let set = shared(30);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    // Someone else writes the lease between our read and our write.
    let lease = set.name("lease");
    store.set(&lease, b"99:0", None);
    let (_, cas) = store.get(&lease);
    store.set(&lease, b"98:0", None);
    assert!(!store.set(&lease, b"x", cas));
    // Claims read the entry afresh, so a stale version never wins.
    assert!(set.claim(&mut store, a, 1).is_some());
}

#[test]
fn a_new_set_replaces_the_old_one_whole() {
    let set = shared(30);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    load(
        &set,
        &mut store,
        a,
        0,
        &doc("1", &[("a", "ka"), ("b", "kb")]),
    );
    assert_eq!(set.read_meta(&store).active, Some(0));
    assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    let first = set.read_meta(&store).serving().unwrap();

    load(
        &set,
        &mut store,
        a,
        40_000,
        &doc("2", &[("b", "kb"), ("c", "kc")]),
    );
    let meta = set.read_meta(&store);
    assert_eq!((meta.active, meta.keys), (Some(1), 2));
    assert_eq!(id_of(&set, &store, "ka"), None, "a revoked");
    assert_eq!(id_of(&set, &store, "kc").as_deref(), Some("c"));
    // The slot just left still holds the old set whole, for workers that have not
    // switched yet.
    assert!(set
        .lookup(&store, first, &KeyHash::of_key("ka"), &index())
        .is_some());

    // The third set goes back to slot 0, and clears what slot 0 held that it lacks.
    load(&set, &mut store, a, 80_000, &doc("3", &[("c", "kc")]));
    assert_eq!(set.read_meta(&store).active, Some(0));
    for gone in ["ka", "kb"] {
        assert_eq!(id_of(&set, &store, gone), None, "{gone}");
        // Cleared, not only outdated: not even the first set's generation finds it.
        assert!(set
            .lookup(&store, first, &KeyHash::of_key(gone), &index())
            .is_none());
    }
    assert_eq!(id_of(&set, &store, "kc").as_deref(), Some("c"));
}

#[test]
fn a_slot_is_not_rewritten_before_every_worker_has_left_it() {
    let set = shared(1);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    load(&set, &mut store, a, 0, &doc("1", &[("a", "ka")]));
    load(&set, &mut store, a, 1_000, &doc("2", &[("a", "ka")]));
    // Due after one second (less up to 10 %), but the switch at 1 000 must settle first.
    assert_eq!(set.claim(&mut store, a, 1_000 + SLOT_SETTLE_MS - 1), None);
    assert!(set.claim(&mut store, a, 1_000 + SLOT_SETTLE_MS).is_some());
}

/// With `refresh_seconds: 1`, the fetch after a new set comes at the refresh interval, at
/// the holder's first tick (every 500 ms) once it is due: not held back by the slot just
/// left (it once waited 3 s, and a revocation with it).
#[test]
fn the_first_refresh_after_a_new_set_is_not_late() {
    let set = shared(1);
    for jitter in [0, 7, 50, 100, 12_345] {
        let mut store = Store::default();
        let a = set.new_holder(&mut store);
        // Fetched at a tick (10 000), answered 20 ms later.
        set.complete(
            &mut store,
            a,
            10_020,
            jitter,
            1,
            FetchAnswer::Set {
                etag: None,
                body: &doc("1", &[("a", "ka")]),
            },
        );
        let first = (1..10)
            .map(|n| 10_000 + n * 500)
            .find(|&tick| set.claim(&mut store, a, tick).is_some());
        assert!(
            first.is_some_and(|tick| tick <= 10_020 + 1_000 + 500),
            "jitter {jitter}: first refresh at {first:?}"
        );
    }
}

/// A worker whose tick is late still reads a slot the holder has since rewritten: a key
/// it cannot find there is looked up in the set in force, not refused.
#[test]
fn a_worker_behind_on_the_slot_finds_keys_in_the_set_in_force() {
    let set = shared(1);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    load(&set, &mut store, a, 0, &doc("1", &[("a", "ka")]));
    let stale = set.read_meta(&store).serving().unwrap();
    load(
        &set,
        &mut store,
        a,
        1_000,
        &doc("2", &[("a", "ka"), ("b", "kb")]),
    );
    // Slot 0 is written again, with a new generation: the stale worker's view is gone.
    load(
        &set,
        &mut store,
        a,
        2_000,
        &doc("3", &[("b", "kb"), ("c", "kc")]),
    );
    let current = set.read_meta(&store).serving().unwrap();
    assert_eq!(current.slot, stale.slot);
    let hash = |k| KeyHash::of_key(k);
    assert!(set.lookup(&store, stale, &hash("kc"), &index()).is_none());
    let (record, now) = set.lookup_current(&store, stale, &hash("kc"), &index());
    assert_eq!(
        record.map(|r| r.id.as_str().to_string()).as_deref(),
        Some("c")
    );
    assert_eq!(now, current);
    // A key the set in force lacks stays refused; a found key keeps the worker's view.
    assert_eq!(
        set.lookup_current(&store, stale, &hash("ka"), &index()).0,
        None
    );
    let (record, kept) = set.lookup_current(&store, current, &hash("kb"), &index());
    assert!(record.is_some());
    assert_eq!(kept, current);
}

#[test]
fn failures_keep_the_last_good_set_and_back_off() {
    let set = shared(30);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    load(&set, &mut store, a, 0, &doc("1", &[("a", "ka")]));
    let mut now = 100_000;
    let mut retries = Vec::new();
    for body in [&b"not json"[..], br#"{"keys": [{"id": "x"}]}"#, b"{}"] {
        match load(&set, &mut store, a, now, body) {
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                assert!(reason.starts_with("invalid key set"), "{reason}");
                retries.push(retry_in_ms);
                now += retry_in_ms;
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    }
    let failed = set.complete(
        &mut store,
        a,
        now,
        3,
        99,
        FetchAnswer::Failed("status 500".into()),
    );
    assert!(matches!(failed, Fetched::Failed { .. }));
    let meta = set.read_meta(&store);
    assert_eq!(meta.failures, 4);
    assert_eq!(meta.last_error.as_deref(), Some("status 500"));
    assert_eq!(meta.last_ok_ms, Some(0));
    assert_eq!(meta.version.as_deref(), Some("1"));
    // 1 s, 2 s, 4 s, each less up to half as jitter.
    assert!((500..=1_000).contains(&retries[0]), "{retries:?}");
    assert!((1_000..=2_000).contains(&retries[1]), "{retries:?}");
    assert!((2_000..=4_000).contains(&retries[2]), "{retries:?}");

    // A 304 is a good answer: failures reset, the set stays.
    assert_eq!(
        set.complete(&mut store, a, now + 10_000, 3, 99, FetchAnswer::NotModified),
        Fetched::NotModified
    );
    let meta = set.read_meta(&store);
    assert_eq!((meta.failures, meta.last_ok_ms), (0, Some(now + 10_000)));
    assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
}

#[test]
fn backoff_never_exceeds_the_refresh_interval() {
    let set = shared(5);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    let mut last = 0;
    for i in 0..40 {
        if let Fetched::Failed { retry_in_ms, .. } = set.complete(
            &mut store,
            a,
            i * 10_000,
            i,
            i,
            FetchAnswer::Failed("down".into()),
        ) {
            last = retry_in_ms;
            assert!(retry_in_ms <= 5_000, "{retry_in_ms}");
        }
    }
    assert!(last >= 2_500);
}

#[test]
fn sets_from_different_sources_do_not_share_entries() {
    let one = shared(30);
    let mut other_config = KeySetConfig {
        endpoint: Endpoint {
            cluster: "keyservice".into(),
            authority: "keyservice".into(),
            timeout_ms: 2000,
        },
        path: "/v2/keyset".into(),
        refresh_seconds: 30,
    };
    let other = SharedSet::new(&other_config);
    assert_ne!(one.prefix, other.prefix);
    other_config.path = "/v1/keyset".into();
    assert_eq!(SharedSet::new(&other_config).prefix, one.prefix);
    let mut store = Store::default();
    load(&one, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    assert_eq!(id_of(&other, &store, "ka"), None);
}

#[test]
fn a_garbled_entry_is_an_unknown_key() {
    let set = shared(30);
    let mut store = Store::default();
    load(&set, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    let mut name = [0u8; RECORD_NAME_LEN];
    let key = set
        .record_name(&mut name, 0, &KeyHash::of_key("ka"))
        .to_string();
    store.set(&key, b"\x01garbage", None);
    assert_eq!(id_of(&set, &store, "ka"), None);
    store.set(&set.name("meta"), b"not json", None);
    assert_eq!(set.read_meta(&store), Meta::default());
}

/// What a publication cut short, or a concurrent one into the same slot, leaves behind:
/// a record of another generation, under a key the set in force does not hold.
#[test]
fn a_record_left_by_another_publication_is_never_served() {
    let set = shared(30);
    let mut store = Store::default();
    load(&set, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    let serving = set.read_meta(&store).serving().unwrap();
    let revoked: crate::record::KeyRecordDoc = serde_json::from_value(json!({
        "id": "revoked", "hash": KeyHash::of_key("kr").to_hex(), "owner": "o",
        "scopes": ["browse"]}))
    .unwrap();
    let mut name = [0u8; RECORD_NAME_LEN];
    let stray = set
        .record_name(&mut name, serving.slot, &KeyHash::of_key("kr"))
        .to_string();
    store.set(
        &stray,
        &record_codec::encode(&revoked, serving.generation ^ 1),
        None,
    );
    assert_eq!(id_of(&set, &store, "kr"), None);
    assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    // The same record under the serving generation is found: the check is the generation.
    store.set(
        &stray,
        &record_codec::encode(&revoked, serving.generation),
        None,
    );
    assert_eq!(id_of(&set, &store, "kr").as_deref(), Some("revoked"));
}

#[test]
fn writes_grow_with_the_set_not_with_workers() {
    let set = shared(30);
    let mut store = Store::default();
    let keys: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("id{i}"), format!("k{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let before = store.writes;
    load(&set, &mut store, 1, 0, &doc("1", &pairs));
    // One entry per record, the index, the meta and the lease.
    assert_eq!(store.writes - before, 1000 + 3);
    assert_eq!(id_of(&set, &store, "k999").as_deref(), Some("id999"));
}
