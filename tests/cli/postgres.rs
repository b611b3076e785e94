//! README "Replicas on PostgreSQL": `keygate` with `--db postgres://...` against a real,
//! throwaway PostgreSQL (crates/testkit/src/postgres.rs; `make test` installs
//! postgresql-15). The key commands and `keygate admin new` work on a DSN as on a file,
//! its password is never shown; a replica killed with SIGKILL in the middle of writes loses
//! no change it acknowledged.

use keygate_testkit::cli::{keygate, Issued, Scratch};
use keygate_testkit::keysvc::{admin_key, Client, Server};
use keygate_testkit::postgres::Postgres;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn key_commands_admin_keys_policy_and_export_work_on_a_postgres_dsn() {
    let mut pg = Postgres::start();
    let dsn = pg.new_database();
    let db = dsn.as_str();
    let admin: Value = serde_json::from_str(
        &keygate(&["admin", "new", "--db", db, "--label", "bootstrap"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(admin["admin_key"].as_str().unwrap().starts_with("kga"));
    let policy = keygate(&["policy", "--db", db, "--scopes", "browse,read"]).ok();
    assert!(policy.stdout.contains("\"browse\""), "{policy:?}");
    let alice = Issued::parse(
        &keygate(&[
            "new",
            "--db",
            db,
            "--owner",
            "alice",
            "--scopes",
            "browse",
            "--expires-in",
            "30d",
        ])
        .ok()
        .stdout,
    );
    let refused = keygate(&[
        "new",
        "--db",
        db,
        "--owner",
        "bob",
        "--scopes",
        "write",
        "--expires-in",
        "30d",
    ])
    .failed();
    assert!(refused.stderr.contains("scope catalog"), "{refused:?}");
    let listed = keygate(&["list", "--db", db, "--json"]).ok();
    assert!(listed.stdout.contains(&alice.id), "{listed:?}");
    keygate(&["revoke", &alice.id, "--db", db]).ok();
    let audit = keygate(&["audit", "--db", db, "--json"]).ok();
    for action in ["admin_key_create", "policy", "create", "revoke"] {
        assert!(
            audit.stdout.contains(&format!("\"{action}\"")),
            "{action}: {audit:?}"
        );
    }
    let missing = keygate(&["revoke", "0000", "--db", db]).failed();
    assert!(missing.stderr.contains("no key with id"), "{missing:?}");
    let dir = Scratch::new("pg-export");
    let out = dir.join("keys.json");
    let exported = keygate(&["export", "--db", db, "--keys", out.to_str().unwrap()]).ok();
    assert!(exported.stdout.contains("exported 0 keys"), "{exported:?}");
    // From a key file, all or none; named without a password.
    let file = dir.join("file.json");
    let bob = Issued::parse(
        &keygate(&[
            "new",
            "--keys",
            file.to_str().unwrap(),
            "--owner",
            "bob",
            "--scopes",
            "browse",
            "--expires-in",
            "30d",
        ])
        .ok()
        .stdout,
    );
    let secret_dsn = dsn.replace("keygate@", "keygate:s3cret@");
    let imported = keygate(&[
        "import",
        "--keys",
        file.to_str().unwrap(),
        "--db",
        &secret_dsn,
    ])
    .ok();
    assert!(
        imported
            .stdout
            .contains("imported 1 key into postgres://keygate@"),
        "{imported:?}"
    );
    assert!(!imported.stdout.contains("s3cret"), "{imported:?}");
    let again = keygate(&["import", "--keys", file.to_str().unwrap(), "--db", db]).failed();
    assert!(again.stderr.contains("nothing imported"), "{again:?}");
    let exported = keygate(&["export", "--db", db, "--keys", out.to_str().unwrap()]).ok();
    assert!(exported.stdout.contains("exported 1 key"), "{exported:?}");
    assert!(std::fs::read_to_string(&out).unwrap().contains(&bob.id));

    // The password is never repeated, whatever fails.
    let port = keygate_testkit::free_port();
    let nowhere = format!("postgres://keygate:s3cret@127.0.0.1:{port}/keys");
    let unreachable = keygate(&["list", "--db", &nowhere]).failed();
    assert!(
        unreachable.stderr.contains("cannot reach PostgreSQL at"),
        "{unreachable:?}"
    );
    assert!(!unreachable.stderr.contains("s3cret"), "{unreachable:?}");
    let tls = format!(
        "postgres://keygate:s3cret@127.0.0.1:{}/x?sslmode=require",
        pg.port
    );
    let refused = keygate(&["admin", "new", "--db", &tls]).failed();
    // The server offers no TLS: refused, never plaintext.
    assert!(refused.stderr.contains("TLS"), "{refused:?}");
    assert!(!refused.stderr.contains("s3cret"), "{refused:?}");
    let serve = keygate_testkit::Serve::new(["--db", nowhere.as_str()]).refused();
    assert!(
        serve.stderr.contains("cannot reach PostgreSQL"),
        "{serve:?}"
    );
    assert!(!serve.stderr.contains("s3cret"), "{serve:?}");
    drop(pg.new_database());
}

/// Creates keys through `api` from 4 threads until told to stop or refused; the ids the
/// service acknowledged (201).
fn write_until_stopped(api: &Client, stop: &Arc<Mutex<bool>>) -> Vec<String> {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (api, stop, acknowledged) = (api.clone(), stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !*stop.lock().unwrap() {
                    n += 1;
                    let body = json!({"owner": format!("writer{t}"), "label": format!("n{n}"),
                                      "scopes": ["browse"], "expires_in": "7d"});
                    match api.try_send(
                        "POST",
                        "/v1/admin/keys",
                        &[],
                        Some(body.to_string().as_bytes()),
                    ) {
                        Ok(r) if r.status == 201 => {
                            let id = r.json()["id"].as_str().unwrap().to_string();
                            acknowledged.lock().unwrap().push(id);
                        }
                        // The replica is gone: whatever was in flight was never acknowledged.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ids = acknowledged.lock().unwrap().clone();
    ids
}

#[test]
fn a_replica_killed_mid_write_loses_no_acknowledged_change() {
    let mut pg = Postgres::start();
    let dsn = pg.new_database();
    let admin = admin_key(Path::new(&dsn));
    let mut doomed = Server::start(&["--db", &dsn]);
    let survivor = Server::start(&["--db", &dsn]);
    let api = Client::plain(doomed.addr).with_bearer(&admin);
    let stop = Arc::new(Mutex::new(false));
    let writers = {
        let (api, stop) = (api.clone(), stop.clone());
        std::thread::spawn(move || write_until_stopped(&api, &stop))
    };
    std::thread::sleep(Duration::from_millis(1500));
    doomed.kill9();
    let killed = Instant::now();
    *stop.lock().unwrap() = true;
    let acknowledged = writers.join().unwrap();
    assert!(acknowledged.len() > 10, "{} writes", acknowledged.len());

    // Every acknowledged key is there, through the other replica, with its audit entry.
    let other = Client::plain(survivor.addr).with_bearer(&admin);
    for id in &acknowledged {
        let r = other.get(&format!("/v1/admin/keys/{id}"));
        assert_eq!(r.status, 200, "{id} was acknowledged and lost: {r:?}");
    }
    let audit = other.get("/v1/admin/audit?limit=10000").json();
    let created: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "create")
        .map(|e| e["key_id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(created.contains(&id.as_str()), "{id}: no audit entry");
    }
    // The feed is whole: one version a key (a write in flight may have committed too).
    let set = other.get("/v1/keyset").json();
    let keys = set["keys"].as_array().unwrap().len();
    assert!(keys >= acknowledged.len());
    assert_eq!(set["version"], keys.to_string());
    println!(
        "kill -9 mid-write: {} acknowledged, {keys} in the store, checked {:?} after the kill",
        acknowledged.len(),
        killed.elapsed()
    );
    // The killed replica comes back on the same database, at the same version.
    doomed.restart();
    let back = Client::plain(doomed.addr).get("/v1/keyset").json();
    assert_eq!(back["version"], set["version"]);
    drop(pg.new_database());
}
