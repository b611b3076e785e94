//! The PostgreSQL store against a real server (crates/testkit/src/postgres.rs): the same
//! semantics as the SQLite store's tests, and what several replicas share.

use super::*;
use crate::duration::Lifetime;
use keygate_core::record::KeySetDoc;
use keygate_testkit::postgres::Postgres;

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

fn open(dsn: &str) -> PgStore {
    PgStore::open(&Dsn::parse(dsn).unwrap()).unwrap()
}

fn changed(s: &PgStore, since: u64) -> (u64, Vec<String>) {
    match s.changes_since(since).unwrap() {
        Since::Changed(v, hashes) => {
            let mut hashes: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
            hashes.sort();
            (v, hashes)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dsns_are_shown_without_their_password() {
    let dsn = Dsn::parse("postgres://kg:s3cret@db.example:5433/keys").unwrap();
    assert_eq!(dsn.shown(), "postgres://kg@db.example:5433/keys");
    assert!(!format!("{dsn:?}").contains("s3cret"));
    let e = Dsn::parse(
        "postgresql://kg:s3cret@db.example/keys?sslmode=require&sslrootcert=/no/such/ca.pem",
    )
    .unwrap_err();
    assert!(
        e.contains("sslrootcert /no/such/ca.pem: cannot read"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
    let e = Dsn::parse("postgres://kg:s3cret@db.example/keys?sslrootcert=%2Fca.pem").unwrap_err();
    assert!(e.contains("add sslmode=require"), "{e}");
    assert_eq!(
        take_param(
            "postgres://h/d?a=1&sslrootcert=%2Fx%20y.pem&b=2",
            "sslrootcert"
        ),
        (
            "postgres://h/d?a=1&b=2".to_string(),
            Some("/x y.pem".to_string())
        )
    );
    let e = Dsn::parse("postgres://kg:s3cret@db.example/keys?bogus=1").unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");
    for broken in [
        "postgres://kg:se/cr?et@db.example/keys?bogus=1",
        "postgres://kg:s3cret@db.example:port/keys",
    ] {
        let e = Dsn::parse(broken).unwrap_err();
        assert!(e.starts_with("postgres://***@db.example"), "{e}");
        assert!(
            !e.contains("se/cr") && !e.contains("s3cret") && !e.contains("kg"),
            "{e}"
        );
    }
    assert!(is_dsn("postgres://x") && is_dsn("postgresql://x") && !is_dsn("keys.db"));
}

#[test]
fn unreachable_postgres_is_a_clear_error() {
    let port = keygate_testkit::free_port();
    let dsn = Dsn::parse(&format!("postgres://kg:s3cret@127.0.0.1:{port}/keys")).unwrap();
    let e = PgStore::open(&dsn).err().unwrap();
    assert!(e.contains("cannot reach PostgreSQL at"), "{e}");
    assert!(e.contains(&format!("127.0.0.1:{port}/keys")), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

/// One server for the store's semantics (each part on its own database).
#[test]
fn the_store_on_postgres() {
    let mut pg = Postgres::start();
    keys_versions_and_the_feed(&pg.new_database());
    admin_side(&pg.new_database());
    replicas_starting_at_once_share_one_schema_and_epoch(&pg.new_database());
    a_change_through_one_replica_wakes_the_others(&pg.new_database());
    polling_covers_a_lost_listener_until_it_is_back(&pg.new_database());
    the_change_log_is_bounded(&pg.new_database());
    let dsn = pg.new_database();
    // A database not made yet: the error says how to make it.
    let (server, _) = dsn.rsplit_once('/').unwrap();
    let e = PgStore::open(&Dsn::parse(&format!("{server}/no_such_db")).unwrap())
        .err()
        .unwrap();
    assert!(
        e.contains("\"no_such_db\" does not exist (3D000): make the database first")
            && e.contains("createdb -O ROLE DATABASE"),
        "{e}"
    );
    dropped_inside_an_async_runtime(&dsn);
    a_lost_server_is_unavailable_then_recovers(&mut pg, &dsn);
    // TLS asked of a server that offers none: refused, never plaintext.
    let dir = keygate_testkit::TempDir::new("pg-no-tls");
    let pki = keygate_testkit::keysvc::tls::Pki::generate(dir.path());
    let tls = format!("{dsn}?sslmode=require&sslrootcert={}", pki.ca.display());
    let e = PgStore::open(&Dsn::parse(&tls).unwrap()).err().unwrap();
    println!("TLS asked of a server without: {e}");
    assert!(
        e.contains("cannot reach PostgreSQL") && e.contains("TLS"),
        "{e}"
    );
}

fn keys_versions_and_the_feed(dsn: &str) {
    let s = open(dsn);
    let empty = s.key_set().unwrap();
    assert_eq!(empty.version, "0");
    assert_eq!(s.feed_version().unwrap(), 0);
    let (raw, a) = key("alice", 1);
    let row = s.create_key("cli:test", a.clone()).unwrap();
    assert_eq!(row.status, Status::Enabled);
    assert!(!row.read_only);
    let set = s.key_set().unwrap();
    assert_eq!(set.version, "1");
    assert_ne!(set.etag, empty.etag);
    let doc = KeySetDoc::parse(&set.body).unwrap();
    assert_eq!(doc.keys.len(), 1);
    assert_eq!(doc.keys[0].hash, crate::secret::hash(&raw));
    assert!(s.record(&crate::secret::hash(&raw)).unwrap().is_some());
    // A duplicate is a conflict, and changes nothing.
    assert!(matches!(
        s.create_key("cli:test", a.clone()),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.feed_version().unwrap(), 1);

    let (_, b) = key("bob", 2);
    s.create_key("cli:test", b.clone()).unwrap();
    let (_, c) = key("bob", 3);
    s.create_key("cli:test", c.clone()).unwrap();
    assert_eq!(
        changed(&s, 1),
        (3, {
            let mut v = vec![b.hash.clone(), c.hash.clone()];
            v.sort();
            v
        })
    );
    assert_eq!(s.changes_since(3).unwrap(), Since::Current);
    assert_eq!(s.changes_since(9).unwrap(), Since::Gone);
    let updated = s
        .update_key(
            "cli:test",
            &b.id,
            KeyChange {
                status: Some(Status::Disabled),
                scopes: Some(vec!["read".into()]),
                ..KeyChange::default()
            },
        )
        .unwrap();
    assert_eq!(updated.status, Status::Disabled);
    assert_eq!(s.get_key(&b.id).unwrap().scopes, vec!["read".to_string()]);
    assert_eq!(s.revoke_owner("cli:test", "bob").unwrap(), 2);
    assert!(s
        .record(&KeyHash::parse_hex(&c.hash).unwrap())
        .unwrap()
        .is_none());
    let (v, upsert, delete) = s.key_set_since(3).unwrap().into_delta();
    assert_eq!(v, 5);
    assert!(upsert.is_empty());
    assert_eq!(delete.len(), 2);
    assert!(matches!(
        s.revoke_key("cli:test", &c.id),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.revoke_key("cli:test", "nope"),
        Err(StoreError::NotFound)
    ));

    let (_, new) = key("ignored", 4);
    let rotated = s
        .rotate_key("cli:test", &a.id, new.clone(), 1_850_000_000)
        .unwrap();
    assert_eq!(rotated.owner, "alice");
    assert_eq!(rotated.label.as_deref(), Some("label 1"));
    assert_eq!(s.get_key(&a.id).unwrap().expires_at, Some(1_850_000_000));
    let (v, upsert, delete) = s.key_set_since(5).unwrap().into_delta();
    assert_eq!((v, upsert.len(), delete.len()), (6, 2, 0));
    let (v, set) = s.key_set_at().unwrap();
    assert_eq!((v, set.keys), (6, 2));

    // Paging: 2 a page over the 4 keys.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list_keys(&ListQuery {
                limit: 2,
                after,
                ..ListQuery::default()
            })
            .unwrap();
        seen.extend(page.keys.into_iter().map(|k| k.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, vec![a.id.clone(), b.id, c.id, new.id]);
    let revoked = s
        .list_keys(&ListQuery {
            status: Some(Status::Revoked),
            owner: Some("bob".into()),
            limit: 10,
            after: None,
        })
        .unwrap();
    assert_eq!(revoked.keys.len(), 2);
    assert!(revoked.keys.iter().all(|k| k.revoked_at.is_some()));
    assert!(
        s.describe().contains("2 keys, version 6"),
        "{}",
        s.describe()
    );
    assert!(!s.describe().contains("password"));
}

fn admin_side(dsn: &str) {
    let s = open(dsn);
    assert_eq!(s.policy().unwrap(), Policy::default());
    let policy = Policy {
        scopes: Some(vec!["browse".into(), "read".into()]),
        default_expiry: Lifetime::Seconds(7 * 86_400),
        max_expiry: Lifetime::Seconds(30 * 86_400),
    };
    s.set_policy("admin:x", &policy).unwrap();
    assert_eq!(open(dsn).policy().unwrap(), policy);
    s.add_admin_key("cli:test", "adm1", "ab".repeat(32).as_str(), Some("ops"))
        .unwrap();
    assert_eq!(
        s.admin_key(&"ab".repeat(32)).unwrap().as_deref(),
        Some("adm1")
    );
    s.revoke_admin_key("cli:test", "adm1").unwrap();
    assert_eq!(s.admin_key(&"ab".repeat(32)).unwrap(), None);
    assert!(matches!(
        s.revoke_admin_key("cli:test", "adm1"),
        Err(StoreError::NotFound)
    ));

    let (_, a) = key("alice", 1);
    let (_, b) = key("bob", 2);
    let imported = s
        .import_keys(
            "cli:test",
            &[(a.clone(), Status::Enabled), (b.clone(), Status::Disabled)],
        )
        .unwrap();
    assert_eq!(imported, 2);
    assert_eq!(s.get_key(&b.id).unwrap().status, Status::Disabled);
    // All or none.
    let (_, c) = key("carol", 3);
    let e = s
        .import_keys(
            "cli:test",
            &[(c.clone(), Status::Enabled), (a.clone(), Status::Enabled)],
        )
        .unwrap_err();
    assert!(e.to_string().contains("keys[1]"), "{e}");
    assert!(matches!(s.get_key(&c.id), Err(StoreError::NotFound)));

    let version = s.feed_version().unwrap();
    s.record_usage(&[
        Usage {
            hash: a.hash.clone(),
            count: 3,
            last_used_at: 1_800_000_100,
        },
        Usage {
            hash: a.hash.clone(),
            count: 2,
            last_used_at: 1_800_000_050,
        },
    ])
    .unwrap();
    let row = s.get_key(&a.id).unwrap();
    assert_eq!((row.uses, row.last_used_at), (5, Some(1_800_000_100)));
    // Usage is not a change to the key set.
    assert_eq!(s.feed_version().unwrap(), version);

    let audit = s.audit(None, 100).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "policy",
            "admin_key_create",
            "admin_key_revoke",
            "import",
            "import"
        ]
    );
    let latest = s.audit_latest(None, 2).unwrap();
    assert_eq!(latest[0].action, "import");
    assert!(latest[0].seq > latest[1].seq);
    assert_eq!(s.audit_latest(Some(latest[1].seq), 10).unwrap().len(), 3);
}

fn replicas_starting_at_once_share_one_schema_and_epoch(dsn: &str) {
    let dsn = Arc::new(dsn.to_string());
    let opened: Vec<PgStore> = (0..6)
        .map(|_| {
            let dsn = dsn.clone();
            std::thread::spawn(move || open(&dsn))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let epoch = opened[0].feed_epoch().as_str().to_string();
    assert!(opened.iter().all(|s| s.feed_epoch().as_str() == epoch));
    // Writers on every replica at once: one version each, none lost.
    let opened = Arc::new(opened);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let opened = opened.clone();
            std::thread::spawn(move || {
                for n in 0..5 {
                    let (_, k) = key(&format!("owner{i}"), n);
                    opened[i].create_key("cli:test", k).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(opened[0].feed_version().unwrap(), 30);
    assert_eq!(changed(&opened[3], 0).1.len(), 30);
    assert_eq!(opened[5].key_set().unwrap().keys, 30);
}

fn a_change_through_one_replica_wakes_the_others(dsn: &str) {
    let watching = open(dsn);
    watching.listen().unwrap();
    let writing = open(dsn);
    let mut feed = watching.subscribe();
    // The listener is up once it has announced (or there is nothing to announce).
    std::thread::sleep(Duration::from_millis(300));
    let (_, a) = key("alice", 1);
    let started = std::time::Instant::now();
    writing.create_key("cli:test", a).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), feed.wait_for(|v| *v == 1))
            .await
            .expect("the other replica was not told within 2 s")
            .unwrap();
    });
    // Without `refresh` (the polling fallback): NOTIFY did it.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

fn the_change_log_is_bounded(dsn: &str) {
    let mut s = open(dsn);
    s.log_bound = 3;
    let keys: Vec<NewKey> = (0..4).map(|n| key("alice", n).1).collect();
    for k in &keys {
        s.create_key("cli:test", k.clone()).unwrap();
    }
    // 4 rows over a bound of 3: version 1 was dropped, so `since` 0 is too old.
    assert_eq!(s.changes_since(0).unwrap(), Since::Gone);
    assert_eq!(changed(&s, 1).1.len(), 3);
    let rows = open(dsn)
        .conn()
        .unwrap()
        .query_one("SELECT count(*) FROM changes", &[])
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 3);
}

fn a_lost_server_is_unavailable_then_recovers(pg: &mut Postgres, dsn: &str) {
    let s = open(dsn);
    s.listen().unwrap();
    let (_, a) = key("alice", 1);
    s.create_key("cli:test", a).unwrap();
    let set = s.key_set().unwrap();
    pg.stop();
    let e = s.ready().unwrap_err();
    assert!(e.to_string().contains("cannot reach PostgreSQL"), "{e}");
    assert!(matches!(s.key_set(), Err(StoreError::Unavailable(_))));
    pg.start_again();
    assert!(keygate_testkit::eventually(Duration::from_secs(10), || s
        .ready()
        .is_ok()));
    assert_eq!(s.key_set().unwrap().etag, set.etag);
    let (_, b) = key("bob", 2);
    s.create_key("cli:test", b).unwrap();
    assert_eq!(s.feed_version().unwrap(), 2);
}

/// `sslmode=require`: TLS, the server's certificate checked against `sslrootcert`.
#[test]
fn tls_to_postgres_with_the_certificate_checked() {
    let mut pg = Postgres::start_tls();
    let dsn = pg.new_database();
    let ca = pg.ca.clone().unwrap();
    let tls_dsn = format!("{dsn}?sslmode=require&sslrootcert={}", ca.display());
    let s = open(&tls_dsn);
    let encrypted: bool = s
        .conn()
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted);
    // Long-polls are woken over TLS too.
    a_change_through_one_replica_wakes_the_others(&tls_dsn);
    // By name as well as by address: the certificate names both.
    open(&tls_dsn.replace("127.0.0.1", "localhost"));
    // A certificate no trusted CA signed: refused, never plaintext.
    let other = keygate_testkit::TempDir::new("pg-other-ca");
    let stranger = keygate_testkit::keysvc::tls::Pki::generate(other.path());
    let untrusted = format!(
        "{dsn}?sslmode=require&sslrootcert={}",
        stranger.ca.display()
    );
    let e = PgStore::open(&Dsn::parse(&untrusted).unwrap())
        .err()
        .unwrap();
    println!("an untrusted certificate: {e}");
    assert!(
        e.contains("cannot reach PostgreSQL") && e.contains("certificate"),
        "{e}"
    );
    // Without sslmode=require, plaintext on a server that offers TLS.
    let plain = open(&dsn);
    let encrypted: bool = plain
        .conn()
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!encrypted);
}

fn polling_covers_a_lost_listener_until_it_is_back(dsn: &str) {
    let watching = open(dsn);
    watching.listen().unwrap();
    let writing = open(dsn);
    let feed = watching.subscribe();
    std::thread::sleep(Duration::from_millis(300));
    // Every other connection to the database cut: the listener's among them.
    writing
        .conn()
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    let (_, a) = key("alice", 1);
    writing.create_key("cli:test", a).unwrap();
    // What the long-polls' 100 ms refresh does while the listener is down.
    watching.refresh();
    assert_eq!(*feed.borrow(), 1);
    // The listener is back (after its backoff) and hears the next change by itself.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, b) = key("bob", 2);
    writing.create_key("cli:test", b).unwrap();
    assert!(
        keygate_testkit::eventually(Duration::from_secs(2), || *feed.borrow() == 2),
        "the listener did not come back"
    );
}

/// `keygate serve` drops its store inside its async runtime when it stops: the pool's
/// connections close without a panic there.
fn dropped_inside_an_async_runtime(dsn: &str) {
    let store = PgStore::open(&Dsn::parse(dsn).unwrap()).unwrap();
    store.feed_version().unwrap();
    // The pool's own threads (filling it to its idle minimum) are done by then.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async move { drop(store) });
}
