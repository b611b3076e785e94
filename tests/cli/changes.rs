//! `keygate serve`'s change feed (README "`keygate serve`", "Watching for changes"), run
//! for real: a baseline, long-polls answered by a reload, 304 when nothing changes, 410
//! for a version it does not hold, and long-polls that do not hold up other requests; in
//! db mode, the changes of the admin API (and of another process) under their versions.

use keygate_testkit::cli as cli_support;

use cli_support::{get, keygate, new_key, replace};
use keygate_core::record::KeyHash;
use std::path::Path;
use std::time::{Duration, Instant};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_feed_reports_what_each_reload_changed() {
    let (_dir, keys, alice, bob, server) = cli_support::alice_and_bob_served("serve-changes");
    let addr = server.addr;

    // A first call: the current version, no hashes, at once.
    let first = get(addr, "/v1/changes");
    assert_eq!(first.status, 200);
    let doc = first.json();
    assert_eq!(doc["version"], "1");
    assert_eq!(doc["hashes"], serde_json::json!([]));
    let epoch = doc["epoch"].as_str().unwrap().to_string();
    assert_eq!(epoch.len(), 32);
    assert_eq!(
        get(addr, &format!("/v1/changes?since=1&epoch={epoch}&wait=0")).status,
        304
    );

    // A long-poll, answered as soon as a reload changes bob.
    let poll = {
        let target = format!("/v1/changes?since=1&epoch={epoch}&wait=20");
        std::thread::spawn(move || {
            let started = Instant::now();
            (get(addr, &target), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    keygate(&["disable", &bob.id, "--keys", p(&keys)]).ok();
    let (answer, took) = poll.join().unwrap();
    assert_eq!(answer.status, 200);
    let bob_hash = KeyHash::of_key(&bob.api_key).to_hex();
    assert_eq!(answer.json()["hashes"], serde_json::json!([bob_hash]));
    assert_eq!(answer.json()["version"], "2");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Behind: at once. Current: 304 after the wait. Unknown or too old: 410.
    let behind = get(addr, &format!("/v1/changes?since=1&epoch={epoch}&wait=20"));
    assert_eq!(behind.json()["hashes"], serde_json::json!([bob_hash]));
    let started = Instant::now();
    let quiet = get(addr, &format!("/v1/changes?since=2&epoch={epoch}&wait=1"));
    assert_eq!(quiet.status, 304);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        get(addr, &format!("/v1/changes?since=7&epoch={epoch}")).status,
        410
    );
    assert_eq!(get(addr, "/v1/changes?since=x").status, 400);
    // Another epoch (a filter that knew another process): the current version, at once.
    let other = get(addr, "/v1/changes?since=2&epoch=other&wait=20");
    assert_eq!(other.json()["version"], "2");
    assert_eq!(other.json()["hashes"], serde_json::json!([]));

    // A rewrite that changes no record makes no version.
    replace(&keys, &std::fs::read(&keys).unwrap());
    assert_eq!(
        get(addr, &format!("/v1/changes?since=2&epoch={epoch}&wait=1")).status,
        304
    );
    // The key set's incremental sync follows the same versions (keyset_delta.rs);
    // without the query, the key set is the file.
    let keyset = get(addr, &format!("/v1/keyset?since=1&epoch={epoch}&wait=20"));
    assert_eq!(keyset.status, 200);
    assert_eq!(keyset.json()["version"], "2");
    assert_eq!(keyset.json()["delete"], serde_json::json!([]));
    assert_eq!(get(addr, "/v1/keyset").body, std::fs::read(&keys).unwrap());

    // Long-polls do not hold the workers: more than --threads of them, and a lookup still
    // answers at once.
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let target = format!("/v1/changes?since=2&epoch={epoch}&wait=3");
            std::thread::spawn(move || get(addr, &target).status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let alice_path = format!("/v1/keys/{}", KeyHash::of_key(&alice.api_key).to_hex());
    assert_eq!(get(addr, &alice_path).status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    for poll in polls {
        assert_eq!(poll.join().unwrap(), 304);
    }
}

/// Db mode (`keygate serve --db`): every committed change of the admin API is in the feed
/// under the version it made, and reaches a held long-poll at once; a change made by
/// another process on the same database (`keygate import`) is found too; the epoch is
/// the database's (the same after a restart); a stop answers held long-polls.
#[test]
fn the_feed_of_a_database_reports_a_revoke_made_through_the_admin_api() {
    use keygate_testkit::keysvc::{arg, scratch_db, Client, Server};
    let (dir, db, admin) = scratch_db("serve-db-changes");
    let mut server = Server::start(&["--db", &arg(&db)]);
    let addr = server.addr;
    let gateway = Client::plain(addr);
    let api = gateway.clone().with_bearer(&admin);
    let created = api.json(
        "POST",
        "/v1/admin/keys",
        &serde_json::json!({"owner": "alice", "scopes": ["browse"]}),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let alice = created.json();
    let alice_hash = KeyHash::of_key(alice["api_key"].as_str().unwrap()).to_hex();

    // The baseline: the database's version (the key set's), its epoch.
    let first = gateway.get("/v1/changes?wait=0");
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["version"], "1");
    assert_eq!(first.json()["hashes"], serde_json::json!([]));
    let epoch = first.json()["epoch"].as_str().unwrap().to_string();
    assert_eq!(gateway.get("/v1/keyset").json()["version"], "1");
    assert_eq!(
        gateway
            .get(&format!("/v1/changes?since=1&epoch={epoch}&wait=0"))
            .status,
        304
    );
    // From version 0 (the empty database): the creation.
    let from_start = gateway.get(&format!("/v1/changes?since=0&epoch={epoch}&wait=0"));
    assert_eq!(from_start.json()["hashes"], serde_json::json!([alice_hash]));

    // A long-poll, answered as soon as the revoke commits.
    let poll = {
        let gateway = gateway.clone();
        let target = format!("/v1/changes?since=1&epoch={epoch}&wait=20");
        std::thread::spawn(move || {
            let answer = gateway.get(&target);
            (answer, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let revoke = api.delete(&format!("/v1/admin/keys/{}", alice["id"].as_str().unwrap()));
    let revoked_at = Instant::now();
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let (answer, answered_at) = poll.join().unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["version"], "2");
    assert_eq!(answer.json()["epoch"], epoch.as_str());
    assert_eq!(answer.json()["hashes"], serde_json::json!([alice_hash]));
    let delay = answered_at.saturating_duration_since(revoked_at);
    eprintln!("db mode: the long-poll answered {delay:?} after the revoke was acknowledged");
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    // What a filter then asks: the key is gone.
    assert_eq!(gateway.get(&format!("/v1/keys/{alice_hash}")).status, 404);
    assert_eq!(
        gateway
            .get(&format!("/v1/changes?since=9&epoch={epoch}"))
            .status,
        410
    );

    // Another process writes the database: found while a long-poll is held.
    let keys = dir.join("more.json");
    let bob = new_key(&keys, &["--owner", "bob", "--expires-in", "7d"]);
    let poll = {
        let gateway = gateway.clone();
        let target = format!("/v1/changes?since=2&epoch={epoch}&wait=20");
        std::thread::spawn(move || gateway.get(&target))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    keygate(&["import", "--keys", p(&keys), "--db", p(&db)]).ok();
    let answer = poll.join().unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["hashes"],
        serde_json::json!([KeyHash::of_key(&bob.api_key).to_hex()])
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A restart: the same epoch, the same version.
    server.kill9();
    server.restart();
    let gateway = Client::plain(server.addr);
    let again = gateway.get("/v1/changes");
    assert_eq!(again.json()["epoch"], epoch.as_str());
    assert_eq!(again.json()["version"], "3");

    // A stop answers the long-polls held at once, with 304.
    let poll = {
        let gateway = gateway.clone();
        let target = format!("/v1/changes?since=3&epoch={epoch}&wait=20");
        std::thread::spawn(move || gateway.get(&target).status)
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(server.terminate().success());
    assert_eq!(poll.join().unwrap(), 304);
    assert!(started.elapsed() < Duration::from_secs(5));
}
