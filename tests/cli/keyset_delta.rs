//! `keygate serve`'s key set incremental sync (README "`keygate serve`"), run for
//! real in both modes: `GET /v1/keyset?since=V&epoch=E&wait=S` answers a held long-poll
//! with the delta a change made (through the admin API, or a rewrite of keys.json); 304
//! after the wait; a full document with the epoch for a first call, another epoch or a
//! version it does not hold; and without the query, the key set as a plain server serves
//! it (ETag, If-None-Match).

use keygate_testkit::cli as cli_support;

use cli_support::{get, http, keygate, replace, HttpResponse};
use keygate_core::key_set_scan::{Scan, Scanned, Step};
use keygate_core::record::{KeyHash, KeySetDoc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn h(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

/// The records of a key set, by hash.
type Set = BTreeMap<String, Value>;

fn set_of(keys: &Value) -> Set {
    keys.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["hash"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// An answer read as the filter reads it: what it is, and how many records and hashes.
fn scanned(body: &[u8]) -> (Scanned, usize) {
    let mut scan = Scan::new(body.to_vec());
    loop {
        let mut budget = 1_000;
        if let Step::Done(scanned) = scan.step(&mut budget).unwrap() {
            return (scanned, scan.staged().len());
        }
    }
}

/// A delta checked as the filter will read it, and applied to `set`.
fn apply(set: &Set, answer: &HttpResponse) -> Set {
    let (Scanned::Delta { version, .. }, _) = scanned(&answer.body) else {
        panic!("not a delta: {}", answer.text());
    };
    let delta = answer.json();
    assert_eq!(delta["version"], version.to_string());
    let mut set = set.clone();
    for record in delta["upsert"].as_array().unwrap() {
        set.insert(record["hash"].as_str().unwrap().to_string(), record.clone());
    }
    for hash in delta["delete"].as_array().unwrap() {
        set.remove(hash.as_str().unwrap());
    }
    set
}

/// A full document of the incremental sync: `{"version","epoch","keys"}`, as the core
/// reads it.
fn full(answer: &HttpResponse) -> (String, String, Set) {
    assert_eq!(answer.status, 200, "{answer:?}");
    let (
        Scanned::Full {
            version: Some(version),
            epoch: Some(_),
        },
        records,
    ) = scanned(&answer.body)
    else {
        panic!("not a full document of the sync: {}", answer.text());
    };
    let doc = answer.json();
    assert_eq!(doc["version"], version);
    assert_eq!(records, doc["keys"].as_array().unwrap().len());
    let epoch = doc["epoch"].as_str().unwrap().to_string();
    (
        doc["version"].as_str().unwrap().to_string(),
        epoch,
        set_of(&doc["keys"]),
    )
}

/// A long-poll started now; its answer and when it came.
fn poll(addr: std::net::SocketAddr, target: String) -> JoinHandle<(HttpResponse, Instant)> {
    let handle = std::thread::spawn(move || {
        let answer = get(addr, &target);
        (answer, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    handle
}

/// `upsert` holds exactly the bytes `/v1/keys/{hash}` answers.
fn upserts_are_lookups(addr: std::net::SocketAddr, answer: &HttpResponse) {
    let text = answer.text();
    for record in answer.json()["upsert"].as_array().unwrap() {
        let looked_up = get(
            addr,
            &format!("/v1/keys/{}", record["hash"].as_str().unwrap()),
        );
        assert_eq!(looked_up.status, 200);
        assert!(
            text.contains(&looked_up.text()),
            "{text} / {}",
            looked_up.text()
        );
    }
}

/// Holds a long-poll on `target`, makes `change` (acknowledged when it returns), and gives
/// the answer the held poll got: a 200 within 500 ms of the change.
fn answer_to(
    addr: std::net::SocketAddr,
    target: String,
    change_name: &str,
    change: impl FnOnce(),
) -> HttpResponse {
    let held = poll(addr, target);
    change();
    let changed = Instant::now();
    let (answer, answered) = held.join().unwrap();
    let delay = answered.saturating_duration_since(changed);
    eprintln!("{change_name}: the key set long-poll answered {delay:?} after it");
    assert!(delay < Duration::from_millis(500), "{delay:?}");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer
}

/// At the current version `since`, nothing new: 304 after the wait. At a version the
/// server never had (`never`), the full document, equal to `now`.
fn quiet_then_full(addr: std::net::SocketAddr, epoch: &str, since: u64, never: u64, now: &Set) {
    let started = Instant::now();
    let quiet = get(
        addr,
        &format!("/v1/keyset?since={since}&epoch={epoch}&wait=1"),
    );
    assert_eq!(quiet.status, 304);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let answer = get(addr, &format!("/v1/keyset?since={never}&epoch={epoch}"));
    assert_eq!(&full(&answer).2, now);
}

fn plain_key_set_is_unchanged(addr: std::net::SocketAddr) -> HttpResponse {
    let plain = get(addr, "/v1/keyset");
    assert_eq!(plain.status, 200);
    assert!(plain.json().get("epoch").is_none(), "{}", plain.text());
    KeySetDoc::parse(&plain.body).unwrap();
    let etag = plain.header("etag").unwrap().to_string();
    let again = http(addr, "GET", "/v1/keyset", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    plain
}

#[test]
fn db_mode_answers_held_long_polls_with_deltas() {
    use keygate_testkit::keysvc::{scratch_db, Server};
    let (_dir, db, admin) = scratch_db("keyset-delta-db");
    let (mut server, api) = Server::start_db(&db, &admin);
    let addr = api.addr;
    let (alice_id, alice) = api.create_browse_key("alice");
    let (bob_id, bob) = api.create_browse_key("bob");
    plain_key_set_is_unchanged(addr);

    // A first call: the full document, its version (the key set's) and epoch, at once.
    let (version, epoch, at_2) = full(&get(addr, "/v1/keyset?wait=20"));
    assert_eq!(version, "2");
    assert_eq!(at_2, set_of(&get(addr, "/v1/keyset").json()["keys"]));
    assert_eq!(
        get(addr, &format!("/v1/keyset?since=2&epoch={epoch}&wait=0")).status,
        304
    );

    // A revoke through the admin API: the held long-poll answers with a delete.
    let target = format!("/v1/keyset?since=2&epoch={epoch}&wait=20");
    let answer = answer_to(addr, target, "db mode: the revoke", || {
        assert_eq!(
            api.delete(&format!("/v1/admin/keys/{alice_id}")).status,
            200
        );
    });
    assert_eq!(
        answer.json(),
        json!({"version": "3", "epoch": epoch, "since": "2", "upsert": [], "delete": [h(&alice)]})
    );
    let at_3 = apply(&at_2, &answer);

    // A patch, then a creation: upserts, exactly as a lookup answers them.
    let held = poll(addr, format!("/v1/keyset?since=3&epoch={epoch}&wait=20"));
    let patched = api.json(
        "PATCH",
        &format!("/v1/admin/keys/{bob_id}"),
        &json!({"status": "disabled", "label": "paused"}),
    );
    assert_eq!(patched.status, 200, "{patched:?}");
    let (answer, _) = held.join().unwrap();
    assert_eq!(answer.json()["version"], "4");
    assert_eq!(answer.json()["upsert"][0]["status"], "disabled");
    assert_eq!(answer.json()["delete"], json!([]));
    upserts_are_lookups(addr, &answer);
    let at_4 = apply(&at_3, &answer);
    let (_, carol) = api.create_browse_key("carol");
    let behind = get(addr, &format!("/v1/keyset?since=4&epoch={epoch}&wait=20"));
    assert_eq!(behind.json()["upsert"][0]["hash"], h(&carol).as_str());
    let at_5 = apply(&at_4, &behind);

    // The delta brings a set at `since` to the version it names: from 2, all three.
    let (version, _, now) = full(&get(addr, "/v1/keyset?epoch=other&since=2"));
    assert_eq!(version, "5");
    assert_eq!(at_5, now);
    let from_2 = get(addr, &format!("/v1/keyset?since=2&epoch={epoch}"));
    assert_eq!(from_2.json()["version"], "5");
    assert_eq!(apply(&at_2, &from_2), now);
    upserts_are_lookups(addr, &from_2);
    assert!(!now.contains_key(&h(&alice)) && now.contains_key(&h(&bob)));

    // Nothing new: 304 after the wait. A version it never had: the full document.
    quiet_then_full(addr, &epoch, 5, 9, &now);
    assert_eq!(get(addr, "/v1/keyset?since=x").status, 400);
    plain_key_set_is_unchanged(addr);

    // A stop answers the held long-polls at once, with 304.
    let held = poll(addr, format!("/v1/keyset?since=5&epoch={epoch}&wait=20"));
    let started = Instant::now();
    assert!(server.terminate().success());
    assert_eq!(held.join().unwrap().0.status, 304);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_incremental_sync_needs_the_client_certificate_too() {
    use keygate_testkit::keysvc::{Client, TlsDb};
    let tls = TlsDb::new("keyset-delta-mtls");
    let (server, _api) = tls.serve_mtls();
    let without = Client::tls(server.addr, &tls.pki, false);
    assert_eq!(without.get("/v1/keyset?wait=1").status, 403);
    let with = Client::tls(server.addr, &tls.pki, true);
    let answer = with.get("/v1/keyset?wait=1");
    assert_eq!(answer.status, 200);
    assert!(answer.json()["epoch"].is_string());
}

#[test]
fn file_mode_answers_held_long_polls_with_the_delta_of_a_rewrite() {
    let (_dir, keys, alice, bob, server) = cli_support::alice_and_bob_served("keyset-delta-file");
    let addr = server.addr;
    let plain = plain_key_set_is_unchanged(addr);
    assert_eq!(
        plain.body,
        std::fs::read(&keys).unwrap(),
        "the file, as before"
    );

    // The full document: the feed's version (not the file's), the epoch, the file's keys.
    let (version, epoch, at_1) = full(&get(addr, "/v1/keyset?since=1&epoch=old&wait=20"));
    assert_eq!(version, "1");
    assert_eq!(at_1, set_of(&plain.json()["keys"]));

    // `keygate disable` rewrites the file: the held long-poll gets bob's new record.
    let target = format!("/v1/keyset?since=1&epoch={epoch}&wait=20");
    let answer = answer_to(addr, target, "file mode: the rewrite", || {
        keygate(&["disable", &bob.id, "--keys", p(&keys)]).ok();
    });
    assert_eq!(answer.json()["version"], "2");
    assert_eq!(answer.json()["since"], "1");
    assert_eq!(answer.json()["upsert"][0]["hash"], h(&bob.api_key).as_str());
    assert_eq!(answer.json()["upsert"][0]["status"], "disabled");
    assert_eq!(answer.json()["delete"], json!([]));
    upserts_are_lookups(addr, &answer);
    let at_2 = apply(&at_1, &answer);

    // A record removed from the file: a delete.
    let held = poll(addr, format!("/v1/keyset?since=2&epoch={epoch}&wait=20"));
    let mut doc = cli_support::read_json(&keys);
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["id"] != alice.id.as_str());
    replace(&keys, doc.to_string().as_bytes());
    let (answer, _) = held.join().unwrap();
    assert_eq!(answer.json()["version"], "3");
    assert_eq!(answer.json()["delete"], json!([h(&alice.api_key)]));
    // The rewrite re-encoded bob's record: a record whose text changed is upserted.
    assert!(answer.json()["upsert"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["hash"] == h(&bob.api_key).as_str()));
    upserts_are_lookups(addr, &answer);
    let at_3 = apply(&at_2, &answer);
    let (_, _, now) = full(&get(addr, "/v1/keyset?wait=0"));
    assert_eq!(at_3, now);
    let from_1 = get(addr, &format!("/v1/keyset?since=1&epoch={epoch}&wait=20"));
    assert_eq!(from_1.json()["version"], "3");
    assert_eq!(apply(&at_1, &from_1), now);

    // A rewrite that changes no record: no version, 304 after the wait.
    replace(&keys, &std::fs::read(&keys).unwrap());
    quiet_then_full(addr, &epoch, 3, 7, &now);
    let plain = plain_key_set_is_unchanged(addr);
    assert_eq!(plain.body, std::fs::read(&keys).unwrap());
}
