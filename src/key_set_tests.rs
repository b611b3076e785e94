use super::*;
use crate::remote::Endpoint;
use crate::scope::Scope;
use serde_json::json;
use std::collections::HashMap;

/// Envoy's shared data: every write gives the entry a new version; a write with a
/// version fails if the entry has moved on; a write to an absent entry always succeeds.
/// Like Envoy, it never forgets a name.
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

impl Store {
    /// Bytes held in values, and names, as Envoy would hold them.
    fn held(&self) -> (usize, usize) {
        (
            self.entries.values().map(|(v, _)| v.len()).sum(),
            self.entries.len(),
        )
    }
}

fn turn(holder: u64, now_ms: u64, jitter: u64) -> Turn {
    Turn {
        holder,
        now_ms,
        jitter,
    }
}

fn config(refresh_seconds: u32, watch_seconds: u32) -> KeySetConfig {
    KeySetConfig {
        endpoint: Endpoint {
            cluster: "keyservice".into(),
            authority: "keyservice".into(),
            timeout_ms: 2000,
        },
        path: "/v1/keyset".into(),
        refresh_seconds,
        watch_seconds,
    }
}

fn shared(refresh_seconds: u32) -> SharedSet {
    SharedSet::new(&config(refresh_seconds, 25))
}

fn index() -> ScopeIndex {
    let mut index = ScopeIndex::default();
    index.add(&Scope::parse("browse").unwrap()).unwrap();
    index
}

fn record(id: &str, key: &str) -> serde_json::Value {
    json!({"id": id, "hash": KeyHash::of_key(key).to_hex(), "owner": "o", "scopes": ["browse"]})
}

fn records(keys: &[(&str, &str)]) -> Vec<serde_json::Value> {
    keys.iter().map(|(id, key)| record(id, key)).collect()
}

/// A plain key-set document, as a file server has it.
fn doc(version: &str, keys: &[(&str, &str)]) -> Vec<u8> {
    json!({"version": version, "keys": records(keys)})
        .to_string()
        .into_bytes()
}

/// The incremental sync's full document.
fn full(version: u64, epoch: &str, keys: &[(&str, &str)]) -> Vec<u8> {
    json!({"version": version.to_string(), "epoch": epoch, "keys": records(keys)})
        .to_string()
        .into_bytes()
}

fn delta(
    since: u64,
    version: u64,
    epoch: &str,
    upsert: &[(&str, &str)],
    delete: &[&str],
) -> Vec<u8> {
    let delete: Vec<String> = delete.iter().map(|k| KeyHash::of_key(k).to_hex()).collect();
    json!({"version": version.to_string(), "epoch": epoch, "since": since.to_string(),
           "upsert": records(upsert), "delete": delete})
    .to_string()
    .into_bytes()
}

fn many(n: usize, tag: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{tag}id{i}"), format!("{tag}k{i}")))
        .collect()
}

fn pairs(keys: &[(String, String)]) -> Vec<(&str, &str)> {
    keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn id_of(set: &SharedSet, store: &Store, key: &str) -> Option<String> {
    let bits = set.read_meta(store).bits?;
    id_under(set, store, bits, key).0
}

/// A key's record id as a worker that last read layout `bits` finds it, and the layout
/// it found it under.
fn id_under(set: &SharedSet, store: &Store, bits: u8, key: &str) -> (Option<String>, u8) {
    let (record, found_under) = set.lookup(store, bits, &KeyHash::of_key(key), &index());
    (record.map(|r| r.id.as_str().to_string()), found_under)
}

/// Hands `body` to the holder as the answer to a fetch made 100 ms earlier, and works on
/// it to the end, `budget` at a time; returns the outcome and the number of slices.
fn answer_in_slices(
    set: &SharedSet,
    store: &mut Store,
    holder: u64,
    now: u64,
    answer: FetchAnswer,
    budget: usize,
) -> (Fetched, usize) {
    let mut progress = set.complete(
        store,
        turn(holder, now, 7),
        now.saturating_sub(100),
        answer,
        budget,
    );
    let mut slices = 1;
    loop {
        match progress {
            Progress::Done(fetched) => return (fetched, slices),
            Progress::Working(job) => {
                slices += 1;
                progress = set.resume(store, turn(holder, now, 7), job, budget);
            }
        }
    }
}

fn answer(set: &SharedSet, store: &mut Store, holder: u64, now: u64, body: &[u8]) -> Fetched {
    let set_answer = FetchAnswer::Set {
        etag: Some("\"e\"".into()),
        body: body.to_vec(),
    };
    answer_in_slices(set, store, holder, now, set_answer, usize::MAX).0
}

fn not_modified(set: &SharedSet, store: &mut Store, holder: u64, now: u64, asked: u64) -> Fetched {
    match set.complete(
        store,
        turn(holder, now, 7),
        asked,
        FetchAnswer::NotModified,
        100,
    ) {
        Progress::Done(fetched) => fetched,
        Progress::Working(_) => panic!("a 304 is no work"),
    }
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
    let set = SharedSet::new(&config(30, 0));
    let mut store = Store::default();
    let (a, b) = (set.new_holder(&mut store), set.new_holder(&mut store));
    assert_ne!(a, b);
    let first = set.claim(&mut store, a, 10_000).unwrap();
    assert_eq!(first.path, "/v1/keyset");
    assert_eq!(first.etag, None);
    assert_eq!(set.claim(&mut store, b, 10_000), None, "a holds the lease");
    assert_eq!(
        answer(&set, &mut store, a, 10_100, &doc("1", &[("a", "ka")])),
        Fetched::Loaded {
            keys: 1,
            version: Some("1".into())
        }
    );
    let meta = set.read_meta(&store);
    assert!((37_100..=40_100).contains(&meta.next_due_ms), "{meta:?}");
    assert_eq!(set.claim(&mut store, a, 20_000), None, "not due yet");
    let due = meta.next_due_ms;
    assert_eq!(set.claim(&mut store, b, due), None);
    let again = set.claim(&mut store, a, due).unwrap();
    assert_eq!(again.etag.as_deref(), Some("\"e\""));
}

#[test]
fn a_released_lease_passes_at_once_and_only_its_holder_can_release_it() {
    let set = shared(30);
    let mut store = Store::default();
    let (a, b) = (set.new_holder(&mut store), set.new_holder(&mut store));
    assert!(set.claim(&mut store, a, 10_000).is_some());
    set.release(&mut store, b);
    assert!(
        set.holds_lease(&store, a, 10_001),
        "b cannot release a's lease"
    );
    assert_eq!(set.claim(&mut store, b, 10_001), None);
    set.release(&mut store, a);
    assert!(!set.holds_lease(&store, a, 10_001));
    assert!(
        set.claim(&mut store, b, 10_001).is_some(),
        "b takes over at once"
    );
}

#[test]
fn another_worker_takes_over_when_the_holder_is_gone() {
    let set = shared(30);
    let mut store = Store::default();
    let (a, b) = (set.new_holder(&mut store), set.new_holder(&mut store));
    assert!(set.claim(&mut store, a, 10_000).is_some());
    assert!(set.holds_lease(&store, a, 10_001));
    // a never answers: its lease runs out after the timeout and the grace.
    assert_eq!(
        set.claim(&mut store, b, 10_000 + 2_000 + LEASE_GRACE_MS - 1),
        None
    );
    assert!(set
        .claim(&mut store, b, 10_000 + 2_000 + LEASE_GRACE_MS)
        .is_some());
    assert!(!set.holds_lease(&store, a, 10_000 + 2_000 + LEASE_GRACE_MS));
}

#[test]
fn a_lost_race_for_the_lease_is_not_a_claim() {
    let set = shared(30);
    let mut store = Store::default();
    let a = set.new_holder(&mut store);
    let lease = set.name("lease");
    store.set(&lease, b"99:0", None);
    let (_, cas) = store.get(&lease);
    store.set(&lease, b"98:0", None);
    assert!(!store.set(&lease, b"x", cas));
    // Claims read the entry afresh, so a stale version never wins.
    assert!(set.claim(&mut store, a, 1).is_some());
}

#[test]
fn a_new_full_document_replaces_the_set_whole() {
    let set = shared(30);
    let mut store = Store::default();
    answer(
        &set,
        &mut store,
        1,
        0,
        &doc("1", &[("a", "ka"), ("b", "kb")]),
    );
    assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    answer(
        &set,
        &mut store,
        1,
        40_000,
        &doc("2", &[("b2", "kb"), ("c", "kc")]),
    );
    assert_eq!(id_of(&set, &store, "ka"), None, "removed");
    assert_eq!(id_of(&set, &store, "kb").as_deref(), Some("b2"), "replaced");
    assert_eq!(id_of(&set, &store, "kc").as_deref(), Some("c"), "added");
    assert_eq!(set.read_meta(&store).keys, 2);
}

#[test]
fn a_large_document_is_read_and_written_in_slices() {
    let set = shared(30);
    let mut store = Store::default();
    let keys = many(5_000, "");
    let body = doc("1", &pairs(&keys));
    let set_answer = FetchAnswer::Set {
        etag: None,
        body: body.clone(),
    };
    let mut progress = set.complete(&mut store, turn(1, 0, 7), 0, set_answer, 500);
    let mut slices = 1;
    while let Progress::Working(job) = progress {
        // Until the last slice, the first load is not in force: requests answer 503.
        assert_eq!(set.read_meta(&store).bits, None);
        slices += 1;
        progress = set.resume(&mut store, turn(1, slices, 7), job, 500);
    }
    assert!(slices > 20, "{slices} slices");
    assert_eq!(id_of(&set, &store, "k4999").as_deref(), Some("id4999"));
    // The same document in one go and in slices writes the same entries.
    let mut whole = Store::default();
    answer(&set, &mut whole, 1, 0, &body);
    let buckets = |s: &Store| {
        let mut e: Vec<_> = s
            .entries
            .iter()
            .filter(|(k, _)| !k.ends_with("meta") && !k.ends_with("lease"))
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        e.sort();
        e
    };
    assert_eq!(buckets(&store), buckets(&whole));
}

#[test]
fn the_generation_moves_with_every_bucket_written_and_only_then() {
    let set = shared(30);
    let mut store = Store::default();
    assert_eq!(set.generation(&store), None);
    set.claim(&mut store, 1, 0).unwrap();
    let keys: Vec<(String, String)> = (0..50)
        .map(|i| (format!("id{i}"), format!("k{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(i, k)| (i.as_str(), k.as_str())).collect();
    // A full document written a few buckets per slice: each bucket is in force as it is
    // written, so each slice moves the token.
    let body = full(7, "e1", &pairs);
    let mut progress = set.complete(
        &mut store,
        turn(1, 100, 7),
        0,
        FetchAnswer::Set { etag: None, body },
        3,
    );
    let mut seen = vec![set.generation(&store)];
    while let Progress::Working(job) = progress {
        progress = set.resume(&mut store, turn(1, 100, 7), job, 3);
        seen.push(set.generation(&store));
    }
    let written: Vec<_> = seen.windows(2).filter(|w| w[0] != w[1]).collect();
    assert!(written.len() > 1, "{seen:?}");
    let loaded = set.generation(&store);
    assert!(loaded.is_some());

    // A 304 writes no bucket: the token stays.
    set.claim(&mut store, 1, 100).unwrap();
    not_modified(&set, &mut store, 1, 30_000, 100);
    assert_eq!(set.generation(&store), loaded);

    // A delta that revokes a key moves it.
    answer(&set, &mut store, 1, 200, &delta(7, 9, "e1", &[], &["k3"]));
    assert_eq!(id_of(&set, &store, "k3"), None);
    assert_ne!(set.generation(&store), loaded);
}

#[test]
fn a_watched_service_is_long_polled_and_its_deltas_applied() {
    let set = shared(30);
    let mut store = Store::default();
    let first = set.claim(&mut store, 1, 0).unwrap();
    assert_eq!(first.path, "/v1/keyset?wait=25");
    answer(
        &set,
        &mut store,
        1,
        100,
        &full(7, "e1", &[("a", "ka"), ("b", "kb")]),
    );
    let meta = set.read_meta(&store);
    assert_eq!(meta.next_due_ms, 100, "the long-poll follows at once");
    let poll = set.claim(&mut store, 1, 100).unwrap();
    assert_eq!(poll.path, "/v1/keyset?since=7&epoch=e1&wait=25");
    assert_eq!(poll.timeout_ms, 25_000 + 2_000);

    let writes = store.writes;
    let updated = answer(
        &set,
        &mut store,
        1,
        200,
        &delta(7, 9, "e1", &[("c", "kc")], &["ka"]),
    );
    assert_eq!(
        updated,
        Fetched::Updated {
            changed: 2,
            keys: 2,
            version: "9".into()
        }
    );
    // Two buckets at most and the generation after each, the meta and the lease: the work
    // follows the delta.
    assert!(
        store.writes - writes <= 7,
        "{} writes",
        store.writes - writes
    );
    assert_eq!(id_of(&set, &store, "ka"), None);
    assert_eq!(id_of(&set, &store, "kb").as_deref(), Some("b"));
    assert_eq!(id_of(&set, &store, "kc").as_deref(), Some("c"));
    let poll = set.claim(&mut store, 1, 200).unwrap();
    assert_eq!(poll.path, "/v1/keyset?since=9&epoch=e1&wait=25");

    // A long-poll that ran out answers 304 after its wait: poll again at once.
    assert_eq!(
        not_modified(&set, &mut store, 1, 25_300, 200),
        Fetched::NotModified
    );
    assert_eq!(set.read_meta(&store).next_due_ms, 25_300);
}

#[test]
fn a_delta_that_does_not_follow_the_set_in_force_starts_over() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &full(7, "e1", &[("a", "ka")]));
    for body in [
        delta(6, 9, "e1", &[("c", "kc")], &[]),
        delta(7, 9, "e2", &[("c", "kc")], &[]),
    ] {
        let Fetched::Failed { reason, .. } = answer(&set, &mut store, 1, 100, &body) else {
            panic!("applied a delta that does not follow")
        };
        assert!(reason.contains("starting over"), "{reason}");
        assert_eq!(id_of(&set, &store, "kc"), None);
        assert_eq!(
            id_of(&set, &store, "ka").as_deref(),
            Some("a"),
            "last good set kept"
        );
        // The next fetch asks for a full document.
        let meta = set.read_meta(&store);
        let next = set.claim(&mut store, 1, meta.next_due_ms).unwrap();
        assert_eq!(next.path, "/v1/keyset?wait=25");
        answer(
            &set,
            &mut store,
            1,
            meta.next_due_ms,
            &full(7, "e1", &[("a", "ka")]),
        );
    }
    // A restarted service (a new epoch) answers the full document: the set is resynced.
    answer(&set, &mut store, 1, 5_000, &full(1, "e3", &[("z", "kz")]));
    assert_eq!(id_of(&set, &store, "ka"), None);
    assert_eq!(id_of(&set, &store, "kz").as_deref(), Some("z"));
    let next = set.claim(&mut store, 1, 5_000).unwrap();
    assert_eq!(next.path, "/v1/keyset?since=1&epoch=e3&wait=25");
}

#[test]
fn a_plain_file_server_is_polled_with_its_etag() {
    let set = shared(30);
    let mut store = Store::default();
    set.claim(&mut store, 1, 0).unwrap();
    // It ignores the query and answers its file: no epoch.
    answer(&set, &mut store, 1, 100, &doc("v1", &[("a", "ka")]));
    let meta = set.read_meta(&store);
    assert!((27_100..=30_100).contains(&meta.next_due_ms), "{meta:?}");
    let next = set.claim(&mut store, 1, meta.next_due_ms).unwrap();
    assert_eq!(next.path, "/v1/keyset?wait=25");
    assert_eq!(next.etag.as_deref(), Some("\"e\""));
    assert_eq!(next.timeout_ms, 2_000);
    // A 304 at once is a plain server's: no loop.
    let now = meta.next_due_ms + 5;
    assert_eq!(
        not_modified(&set, &mut store, 1, now, now - 5),
        Fetched::NotModified
    );
    assert!(set.read_meta(&store).next_due_ms >= now + 27_000);
}

#[test]
fn a_service_answering_304_at_once_is_not_looped_on() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &full(7, "e1", &[("a", "ka")]));
    assert_eq!(
        not_modified(&set, &mut store, 1, 50, 0),
        Fetched::NotModified
    );
    assert!(set.read_meta(&store).next_due_ms >= 27_000);
}

#[test]
fn watch_seconds_0_polls_without_the_query() {
    let set = SharedSet::new(&config(5, 0));
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &full(7, "e1", &[("a", "ka")]));
    let meta = set.read_meta(&store);
    assert!(meta.next_due_ms >= 4_500);
    assert_eq!(
        set.claim(&mut store, 1, meta.next_due_ms).unwrap().path,
        "/v1/keyset"
    );
}

#[test]
fn failures_keep_the_last_good_set_and_back_off() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    let mut now = 100_000;
    let mut retries = Vec::new();
    for body in [
        &b"not json"[..],
        br#"{"keys": [{"id": "x"}]}"#,
        b"{}",
        br#"{"keys": []} trailing"#,
    ] {
        match answer(&set, &mut store, 1, now, body) {
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                retries.push(retry_in_ms);
                now += retry_in_ms;
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    }
    let failed = set.complete(
        &mut store,
        turn(1, now, 3),
        now,
        FetchAnswer::Failed("status 500".into()),
        10,
    );
    assert!(matches!(failed, Progress::Done(Fetched::Failed { .. })));
    let meta = set.read_meta(&store);
    assert_eq!(meta.failures, 5);
    assert_eq!(meta.last_error.as_deref(), Some("status 500"));
    assert_eq!(meta.last_ok_ms, Some(0));
    assert_eq!(meta.version.as_deref(), Some("1"));
    // 1 s, 2 s, 4 s, each less up to half as jitter.
    assert!((500..=1_000).contains(&retries[0]), "{retries:?}");
    assert!((1_000..=2_000).contains(&retries[1]), "{retries:?}");
    assert!((2_000..=4_000).contains(&retries[2]), "{retries:?}");

    assert_eq!(
        not_modified(&set, &mut store, 1, now + 10_000, now),
        Fetched::NotModified
    );
    let meta = set.read_meta(&store);
    assert_eq!((meta.failures, meta.last_ok_ms), (0, Some(now + 10_000)));
    assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
}

#[test]
fn a_document_with_a_repeated_key_or_id_is_refused_whole() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    for (body, says) in [
        (
            doc("2", &[("b", "kb"), ("c", "kb")]),
            "keys[1].hash: duplicate hash (also keys[0])",
        ),
        (
            doc("2", &[("b", "kb"), ("b", "kc")]),
            "keys[1].id: duplicate id (also keys[0])",
        ),
    ] {
        let Fetched::Failed { reason, .. } = answer(&set, &mut store, 1, 100, &body) else {
            panic!("accepted")
        };
        assert!(reason.contains(says), "{reason}");
        assert_eq!(id_of(&set, &store, "kb"), None, "nothing of it written");
        assert_eq!(id_of(&set, &store, "ka").as_deref(), Some("a"));
    }
}

#[test]
fn backoff_never_exceeds_the_refresh_interval() {
    let set = shared(5);
    let mut store = Store::default();
    let mut last = 0;
    for i in 0..40 {
        if let Progress::Done(Fetched::Failed { retry_in_ms, .. }) = set.complete(
            &mut store,
            turn(1, i * 10_000, i),
            i * 10_000,
            FetchAnswer::Failed("down".into()),
            1,
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
    let mut other_config = config(30, 25);
    other_config.path = "/v2/keyset".into();
    let other = SharedSet::new(&other_config);
    assert_ne!(one.prefix, other.prefix);
    other_config.path = "/v1/keyset".into();
    assert_eq!(SharedSet::new(&other_config).prefix, one.prefix);
    let mut store = Store::default();
    answer(&one, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    assert_eq!(id_of(&other, &store, "ka"), None);
}

#[test]
fn a_garbled_entry_is_an_unknown_key() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &doc("1", &[("a", "ka")]));
    let bits = set.read_meta(&store).bits.unwrap();
    let mut name = [0u8; BUCKET_NAME_LEN];
    let hash = KeyHash::of_key("ka");
    let key = set
        .bucket_name(&mut name, bits, bucket::bucket_of(hash.bytes(), bits))
        .to_string();
    let mut garbled = store.get(&key).0.unwrap();
    let last = garbled.len() - 1;
    garbled[last] ^= 0xff;
    store.set(&key, &garbled, None);
    assert_eq!(id_of(&set, &store, "ka"), None);
    store.set(&key, b"\x01garbage", None);
    assert_eq!(id_of(&set, &store, "ka"), None);
    store.set(&set.name("meta"), b"not json", None);
    assert_eq!(set.read_meta(&store), Meta::default());
}

/// A set grown (or shrunk) fourfold is written under a new layout; each bucket of the old
/// one then names the new layout, so a worker that has not re-read the layout yet finds
/// every key of the new set, and none the new set dropped.
#[test]
fn a_resized_set_moves_to_a_new_layout_and_the_old_one_sends_readers_there() {
    let set = shared(30);
    let mut store = Store::default();
    answer(&set, &mut store, 1, 0, &full(1, "e1", &[("a", "ka")]));
    let small = set.read_meta(&store).bits.unwrap();
    let keys = many(10_000, "");
    let (fetched, _) = answer_in_slices(
        &set,
        &mut store,
        1,
        1_000,
        FetchAnswer::Set {
            etag: None,
            body: full(2, "e1", &pairs(&keys)),
        },
        1_000,
    );
    assert!(matches!(fetched, Fetched::Loaded { keys: 10_000, .. }));
    let large = bucket::bits_for(10_000);
    assert_eq!(set.read_meta(&store).bits, Some(large));
    // A worker still on the small layout is sent to the large one.
    assert_eq!(
        id_under(&set, &store, small, "k9999"),
        (Some("id9999".into()), large)
    );
    assert_eq!(id_under(&set, &store, small, "ka"), (None, large));
    let old_prefix = format!("{}{small:02}/", set.prefix);
    let old: Vec<_> = store
        .entries
        .iter()
        .filter(|(k, _)| k.starts_with(&old_prefix))
        .collect();
    assert_eq!(old.len(), 1 << small);
    assert!(old.iter().all(|(_, (v, _))| v == &vec![RETIRED, large]));

    // And back: the small set again, the large layout left and marked.
    answer(&set, &mut store, 1, 2_000, &full(3, "e1", &[("b", "kb")]));
    assert_eq!(set.read_meta(&store).bits, Some(small));
    assert_eq!(id_under(&set, &store, large, "k9999"), (None, small));
    assert_eq!(
        id_under(&set, &store, large, "kb"),
        (Some("b".into()), small)
    );
    assert_eq!(
        id_under(&set, &store, small, "kb"),
        (Some("b".into()), small)
    );
    assert_eq!(id_of(&set, &store, "ka"), None);
}

/// Envoy never frees a name: what a churning set costs must follow the set in force.
#[test]
fn churn_is_bounded_by_the_set_in_force() {
    let set = shared(30);
    let mut store = Store::default();
    let mut after_first = (0, 0);
    for round in 0..10 {
        let keys = many(2_000, &format!("r{round}"));
        answer(
            &set,
            &mut store,
            1,
            round * 1_000,
            &doc(&round.to_string(), &pairs(&keys)),
        );
        if round == 0 {
            after_first = store.held();
        }
        assert_eq!(
            id_of(&set, &store, &format!("r{round}k1999")).as_deref(),
            Some(&*format!("r{round}id1999"))
        );
    }
    let (bytes, names) = store.held();
    assert!(
        names <= after_first.1 + 16,
        "{names} names after churn, {} after one set",
        after_first.1
    );
    assert!(
        bytes <= after_first.0 * 11 / 10,
        "{bytes} bytes after churn, {} after one set",
        after_first.0
    );
    assert_eq!(id_of(&set, &store, "r0k1"), None);
}

#[test]
fn a_key_costs_few_bytes_of_shared_data() {
    let set = shared(30);
    let mut store = Store::default();
    let keys = many(20_000, "");
    answer(&set, &mut store, 1, 0, &doc("1", &pairs(&keys)));
    let (bytes, names) = store.held();
    // The record (about 60 bytes for these) and its hash; one name per 4-8 keys.
    assert!(bytes / 20_000 < 110, "{} bytes a key", bytes / 20_000);
    assert!(names <= 20_000 / 4, "{names} names");
}

#[test]
fn an_outcome_is_reported_with_its_stat_keys_and_line() {
    let loaded = Fetched::Loaded {
        keys: 2,
        version: Some("7".into()),
    };
    let report = loaded.report("ks", true);
    assert_eq!(report.stat, FetchStat::Ok);
    assert_eq!(report.keys, Some(2));
    assert_eq!(
        report.line,
        Some((
            false,
            "keygate: key set loaded from cluster ks: 2 keys, version 7".into()
        ))
    );
    assert_eq!(
        Fetched::NotModified.report("ks", true),
        Report {
            stat: FetchStat::NotModified,
            keys: None,
            line: None
        }
    );
    let failed = Fetched::Failed {
        reason: "key service answered 500".into(),
        retry_in_ms: 1000,
    };
    let (warning, line) = failed.report("ks", false).line.unwrap();
    assert!(warning);
    assert!(
        line.contains("no key set loaded yet (protected routes answer 503)"),
        "{line}"
    );
    assert!(failed
        .report("ks", true)
        .line
        .unwrap()
        .1
        .contains("keeping the last good set"));
}

#[test]
fn a_streamed_answer_loads_as_a_whole_one_does() {
    let set = shared(30);
    let mut store = Store::default();
    let holder = set.new_holder(&mut store);
    let _ = set.claim(&mut store, holder, 0);
    let body = doc("7", &[("a", "ka"), ("b", "kb")]);
    let mut scan = Scan::streaming();
    for chunk in body.chunks(5) {
        scan.feed(chunk).unwrap();
        let mut budget = usize::MAX;
        while !matches!(
            scan.step(&mut budget).unwrap(),
            crate::key_set_scan::Step::Hungry
        ) {}
    }
    scan.end();
    let streamed = FetchAnswer::Streamed {
        etag: Some("\"e\"".into()),
        scan: Box::new(scan),
    };
    let (fetched, _) = answer_in_slices(&set, &mut store, holder, 100, streamed, usize::MAX);
    assert_eq!(
        fetched,
        Fetched::Loaded {
            keys: 2,
            version: Some("7".into())
        }
    );
    assert_eq!(id_of(&set, &store, "kb").as_deref(), Some("b"));
    assert_eq!(set.read_meta(&store).etag.as_deref(), Some("\"e\""));

    // A stream the shell never ended is a failure, and the set in force stays.
    let _ = set.claim(&mut store, holder, 200_000);
    let mut cut = Scan::streaming();
    cut.feed(&doc("8", &[("c", "kc")])).unwrap();
    let cut = FetchAnswer::Streamed {
        etag: None,
        scan: Box::new(cut),
    };
    let (fetched, _) = answer_in_slices(&set, &mut store, holder, 200_100, cut, usize::MAX);
    let Fetched::Failed { reason, .. } = fetched else {
        panic!("{fetched:?}");
    };
    assert!(reason.contains("ended early"), "{reason}");
    assert_eq!(id_of(&set, &store, "kb").as_deref(), Some("b"));
    assert_eq!(id_of(&set, &store, "kc"), None);
}
