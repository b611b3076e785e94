use super::*;
use crate::duration::Lifetime;
use keygate_core::record::KeySetDoc;

fn key(owner: &str, n: u32) -> (String, NewKey) {
    let raw = crate::secret::new_key("kg_").unwrap();
    let new = NewKey {
        id: crate::secret::new_id().unwrap(),
        hash: crate::secret::hash(&raw).to_hex(),
        owner: owner.to_string(),
        label: Some(format!("label {n}")),
        scopes: vec!["browse".into()],
        created_at: 1_800_000_000,
        expires_at: Some(1_900_000_000),
        read_only: n.is_multiple_of(2),
    };
    (raw, new)
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("keys.db")).unwrap()
}

#[test]
fn wal_with_full_sync_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for conn in [&s.writer, &s.reader, &s.key_set_reader] {
        let conn = lock(conn);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }
}

#[test]
fn keys_are_served_until_revoked_and_the_set_parses() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let empty = s.key_set().unwrap();
    assert_eq!(empty.version, "0");
    let (raw, a) = key("alice", 1);
    let row = s.create_key("cli:test", a.clone()).unwrap();
    assert_eq!(row.status, Status::Enabled);
    let set = s.key_set().unwrap();
    assert_ne!(set.etag, empty.etag);
    assert_eq!(set.version, "1");
    let doc = KeySetDoc::parse(&set.body).unwrap();
    assert_eq!(doc.keys.len(), 1);
    assert_eq!(doc.keys[0].hash, crate::secret::hash(&raw));
    // The raw key is nowhere in the database file.
    drop(s);
    let bytes = std::fs::read(dir.path().join("keys.db")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&raw));
    let s = store(&dir);
    assert!(s.record(&crate::secret::hash(&raw)).unwrap().is_some());
    s.revoke_key("cli:test", &a.id).unwrap();
    assert!(s.record(&crate::secret::hash(&raw)).unwrap().is_none());
    assert_eq!(
        KeySetDoc::parse(&s.key_set().unwrap().body)
            .unwrap()
            .keys
            .len(),
        0
    );
    assert!(matches!(
        s.revoke_key("cli:test", &a.id),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(s.get_key("nope"), Err(StoreError::NotFound)));
    assert_eq!(s.get_key(&a.id).unwrap().status, Status::Revoked);
    let audit = s.audit(None, 100).unwrap();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["create", "revoke"]);
}

#[test]
fn update_rotate_revoke_owner_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, k) = key(if n < 3 { "alice" } else { "bob" }, n);
        ids.push(k.id.clone());
        s.create_key("admin:x", k).unwrap();
    }
    let changed = s
        .update_key(
            "admin:x",
            &ids[0],
            KeyChange {
                status: Some(Status::Disabled),
                scopes: Some(vec!["a".into(), "b".into()]),
                expires_at: Some(None),
                ..KeyChange::default()
            },
        )
        .unwrap();
    assert_eq!(changed.status, Status::Disabled);
    assert_eq!(changed.expires_at, None);
    assert_eq!(s.get_key(&ids[0]).unwrap(), changed);

    let (_, new) = key("ignored", 9);
    let rotated = s
        .rotate_key("admin:x", &ids[1], new, 1_850_000_000)
        .unwrap();
    assert_eq!(rotated.owner, "alice");
    assert_eq!(rotated.label.as_deref(), Some("label 1"));
    assert_eq!(s.get_key(&ids[1]).unwrap().expires_at, Some(1_850_000_000));

    let page1 = s
        .list_keys(&ListQuery {
            owner: Some("alice".into()),
            limit: 2,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(page1.keys.len(), 2);
    let page2 = s
        .list_keys(&ListQuery {
            owner: Some("alice".into()),
            limit: 2,
            after: page1.next,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(page2.keys.len(), 2);
    assert_eq!(page2.next, None);

    assert_eq!(s.revoke_owner("admin:x", "alice").unwrap(), 4);
    assert_eq!(s.revoke_owner("admin:x", "alice").unwrap(), 0);
    let revoked = s
        .list_keys(&ListQuery {
            status: Some(Status::Revoked),
            limit: 100,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(revoked.keys.len(), 4);
    assert!(matches!(
        s.update_key("admin:x", &ids[0], KeyChange::default()),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        KeySetDoc::parse(&s.key_set().unwrap().body)
            .unwrap()
            .keys
            .len(),
        2
    );
}

fn changed(s: &SqliteStore, since: u64) -> (u64, Vec<String>) {
    match s.changes_since(since).unwrap() {
        Since::Changed(version, hashes) => {
            let mut hashes: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
            hashes.sort();
            (version, hashes)
        }
        other => panic!("since {since}: {other:?}"),
    }
}

fn sorted(hashes: &[&str]) -> Vec<String> {
    let mut hashes: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
    hashes.sort();
    hashes
}

#[test]
fn every_change_is_in_the_feed_under_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut versions = s.subscribe();
    assert_eq!(s.feed_version().unwrap(), 0);
    assert_eq!(s.changes_since(0).unwrap(), Since::Current);
    assert_eq!(s.changes_since(1).unwrap(), Since::Gone);
    let (_, a) = key("alice", 1);
    let (_, b) = key("alice", 2);
    let (_, c) = key("bob", 3);
    for k in [&a, &b, &c] {
        s.create_key("t", k.clone()).unwrap();
    }
    assert_eq!(*versions.borrow_and_update(), 3);
    assert_eq!(changed(&s, 0), (3, sorted(&[&a.hash, &b.hash, &c.hash])));
    assert_eq!(changed(&s, 2), (3, sorted(&[&c.hash])));
    s.update_key(
        "t",
        &c.id,
        KeyChange {
            status: Some(Status::Disabled),
            ..KeyChange::default()
        },
    )
    .unwrap();
    assert_eq!(changed(&s, 3), (4, sorted(&[&c.hash])));
    s.revoke_key("t", &c.id).unwrap();
    assert_eq!(changed(&s, 4), (5, sorted(&[&c.hash])));
    let (_, new) = key("x", 4);
    let rotated = s.rotate_key("t", &a.id, new, 1_850_000_000).unwrap();
    assert_eq!(changed(&s, 5), (6, sorted(&[&a.hash, &rotated.hash])));
    assert_eq!(s.revoke_owner("t", "alice").unwrap(), 3);
    assert_eq!(
        changed(&s, 6),
        (7, sorted(&[&a.hash, &b.hash, &rotated.hash]))
    );
    let (_, d) = key("dave", 5);
    s.import_keys("t", &[(d.clone(), Status::Enabled)]).unwrap();
    assert_eq!(changed(&s, 7), (8, sorted(&[&d.hash])));
    assert!(versions.has_changed().unwrap());
    assert_eq!(*versions.borrow_and_update(), 8);
    // Usage, policy and admin keys are not changes of what gateways get.
    s.record_usage(&[Usage {
        hash: d.hash.clone(),
        count: 1,
        last_used_at: 1,
    }])
    .unwrap();
    s.set_policy("t", &Policy::default()).unwrap();
    assert_eq!(s.changes_since(8).unwrap(), Since::Current);
    assert!(!versions.has_changed().unwrap());
    // The epoch is the database's: the same when opened again.
    let epoch = s.feed_epoch().clone();
    drop(s);
    let s = store(&dir);
    assert_eq!(s.feed_epoch(), &epoch);
    assert_eq!(changed(&s, 7), (8, sorted(&[&d.hash])));
    let other = tempfile::tempdir().unwrap();
    assert_ne!(store(&other).feed_epoch(), &epoch);
}

#[test]
fn the_changes_table_is_bounded_and_other_writers_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.log_bound = 3;
    let keys: Vec<NewKey> = (0..4).map(|n| key("alice", n).1).collect();
    s.import_keys(
        "t",
        &[
            (keys[0].clone(), Status::Enabled),
            (keys[1].clone(), Status::Enabled),
        ],
    )
    .unwrap(); // 1
    s.create_key("t", keys[2].clone()).unwrap(); // 2
    s.create_key("t", keys[3].clone()).unwrap(); // 3: version 1 goes
    assert_eq!(s.changes_since(0).unwrap(), Since::Gone);
    assert_eq!(changed(&s, 1), (3, sorted(&[&keys[2].hash, &keys[3].hash])));
    assert_eq!(s.revoke_owner("t", "alice").unwrap(), 4); // 4: alone over the bound
    assert_eq!(s.changes_since(3).unwrap(), Since::Gone);
    assert_eq!(s.changes_since(4).unwrap(), Since::Current);
    let rows: i64 = lock(&s.reader)
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);

    // Another process changes the database: found by refresh.
    let mut versions = s.subscribe();
    versions.borrow_and_update();
    let other = store(&dir);
    let (_, e) = key("erin", 9);
    other.create_key("cli:other", e.clone()).unwrap();
    assert!(!versions.has_changed().unwrap());
    s.refresh();
    assert_eq!(*versions.borrow_and_update(), 5);
    assert_eq!(changed(&s, 4), (5, sorted(&[&e.hash])));
}

#[test]
fn policy_admin_keys_usage() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    assert_eq!(s.policy().unwrap(), Policy::default());
    let policy = Policy {
        scopes: Some(vec!["browse".into()]),
        default_expiry: Lifetime::parse("30d", false).unwrap(),
        max_expiry: Lifetime::parse("1y", false).unwrap(),
    };
    s.set_policy("cli:me", &policy).unwrap();
    assert_eq!(store(&dir).policy().unwrap(), policy);
    s.add_admin_key("cli:me", "adm1", &"ab".repeat(32), None)
        .unwrap();
    assert_eq!(
        s.admin_key(&"ab".repeat(32)).unwrap().as_deref(),
        Some("adm1")
    );
    assert_eq!(s.admin_key(&"cd".repeat(32)).unwrap(), None);
    let (_, k) = key("alice", 1);
    s.create_key("cli:me", k.clone()).unwrap();
    let before = s.key_set().unwrap();
    for at in [100, 300, 200] {
        s.record_usage(&[Usage {
            hash: k.hash.clone(),
            count: 2,
            last_used_at: at,
        }])
        .unwrap();
    }
    let row = s.get_key(&k.id).unwrap();
    assert_eq!((row.uses, row.last_used_at), (6, Some(300)));
    // Usage is not a change of the key set.
    assert_eq!(s.key_set().unwrap().etag, before.etag);
}

/// `cargo test -p keygate-keyservice --release -- --ignored --nocapture million`: what a
/// revocation and the next key set cost at 1 000 000 keys.
mod scale {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn a_million_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        {
            let mut conn = lock(&store.writer);
            let tx = conn.transaction().unwrap();
            for n in 0..1_000_000u32 {
                let key = NewKey {
                    id: crate::secret::new_id().unwrap(),
                    hash: crate::secret::hash(&n.to_string()).to_hex(),
                    owner: format!("owner{}", n % 1000),
                    label: None,
                    scopes: vec!["browse".into()],
                    created_at: 1_800_000_000,
                    expires_at: None,
                    read_only: false,
                };
                insert_key(&tx, &key).unwrap();
            }
            bump(&tx, &[], MAX_LOG_HASHES).unwrap();
            tx.commit().unwrap();
        }
        let t = Instant::now();
        let set = store.key_set().unwrap();
        println!("first key set: {:?}, {} bytes", t.elapsed(), set.body.len());
        let id: String = lock(&store.reader)
            .query_row("SELECT id FROM keys WHERE seq = 500000", [], |r| r.get(0))
            .unwrap();
        let t = Instant::now();
        store.revoke_key("test", &id).unwrap();
        println!("revoke (committed): {:?}", t.elapsed());
        let t = Instant::now();
        let set = store.key_set().unwrap();
        println!("key set after it: {:?} ({} keys)", t.elapsed(), set.keys);
        let t = Instant::now();
        let n = store.revoke_owner("test", "owner7").unwrap();
        println!("revoke all of an owner ({n} keys): {:?}", t.elapsed());
        let t = Instant::now();
        store.record(&crate::secret::hash("123")).unwrap().unwrap();
        println!("lookup: {:?}", t.elapsed());
    }
}

#[test]
fn key_set_deltas_are_the_records_of_the_version_they_give() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let (raw_a, a) = key("alice", 1);
    let (raw_b, b) = key("bob", 2);
    let a_id = s.create_key("cli:test", a).unwrap().id;
    let b_id = s.create_key("cli:test", b).unwrap().id;
    let (version, set) = s.key_set_at().unwrap();
    assert_eq!(version, 2);
    // The keys array is where the set says.
    let keys: serde_json::Value = serde_json::from_slice(&set.body[set.keys_at.clone()]).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(s.key_set_since(2).unwrap(), KeySetSince::Current);
    s.revoke_key("cli:test", &a_id).unwrap();
    let change = KeyChange {
        label: Some(Some("renamed".into())),
        ..KeyChange::default()
    };
    s.update_key("cli:test", &b_id, change).unwrap();
    let (hash_a, hash_b) = (crate::secret::hash(&raw_a), crate::secret::hash(&raw_b));
    let (version, upsert, delete) = s.key_set_since(2).unwrap().into_delta();
    assert_eq!(version, 4);
    assert_eq!(delete, vec![hash_a]);
    assert_eq!(upsert, vec![s.record(&hash_b).unwrap().unwrap()]);
    assert!(matches!(
        s.key_set_since(3).unwrap(),
        KeySetSince::Delta { version: 4, ref delete, .. } if delete.is_empty()
    ));
    assert_eq!(s.key_set_since(9).unwrap(), KeySetSince::Gone);
}
