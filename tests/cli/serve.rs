//! `keygate serve` (README "`keygate serve`"), run for real on a free port: the key set with its ETag, one
//! record by hash, changes picked up without a restart, a bad file never served.

use keygate_testkit::cli as cli_support;

use cli_support::{
    get, http, key_file, keygate, new_key, new_scoped_key, replace, serve_refused, HttpResponse,
    Issued, Scratch, Served,
};
use keygate_core::record::KeyHash;
use serde_json::json;
use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn sha256_etag(bytes: &[u8]) -> String {
    // The hash of a key and of a document are the same SHA-256; KeyHash takes text.
    format!(
        "\"{}\"",
        KeyHash::of_key(std::str::from_utf8(bytes).unwrap()).to_hex()
    )
}

/// Where `keygate serve` answers with the record of this key.
fn record_path(issued: &Issued) -> String {
    format!("/v1/keys/{}", KeyHash::of_key(&issued.api_key).to_hex())
}

fn etag(r: &HttpResponse) -> String {
    r.header("etag").unwrap().to_string()
}

#[test]
fn serves_the_key_set_with_an_etag() {
    let (_dir, keys) = key_file("serve-keyset");
    new_scoped_key(&keys, "alice", "browse", "30d", &[]);
    new_key(&keys, &["--owner", "bob", "--expires-in", "never"]);
    let server = Served::start(&keys);
    assert!(server
        .log()
        .contains(&format!("({}: 2 keys, version 2)", keys.display())));

    let file = std::fs::read(&keys).unwrap();
    let r = get(server.addr, "/v1/keyset");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, file, "the document as the file holds it");
    let etag = etag(&r);
    assert_eq!(etag, sha256_etag(&file));
    // The same content, the same tag.
    assert_eq!(
        get(server.addr, "/v1/keyset").header("etag"),
        Some(etag.as_str())
    );
    // A query string does not change the resource.
    assert_eq!(get(server.addr, "/v1/keyset?x=1").body, file);

    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for matching in [etag.as_str(), "*", weak.as_str(), listed.as_str()] {
        let r = http(
            server.addr,
            "GET",
            "/v1/keyset",
            &[("If-None-Match", matching)],
        );
        assert_eq!(r.status, 304, "{matching}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    let r = http(
        server.addr,
        "GET",
        "/v1/keyset",
        &[("If-None-Match", "\"stale\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, file);

    let head = http(server.addr, "HEAD", "/v1/keyset", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(file.len().to_string().as_str())
    );
}

#[test]
fn serves_one_record_by_hash() {
    let (_dir, keys) = key_file("serve-record");
    let alice = new_scoped_key(&keys, "alice", "browse", "7d", &[]);
    new_key(&keys, &["--owner", "bob", "--expires-in", "never"]);
    let server = Served::start(&keys);

    let hash = KeyHash::of_key(&alice.api_key).to_hex();
    let r = get(server.addr, &format!("/v1/keys/{hash}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), cli_support::record(&keys, &alice.id).unwrap());

    let unknown = KeyHash::of_key("nobody's key").to_hex();
    let r = get(server.addr, &format!("/v1/keys/{unknown}"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    for malformed in [
        hash.to_uppercase(),
        hash[..63].to_string(),
        "x".into(),
        String::new(),
    ] {
        let r = get(server.addr, &format!("/v1/keys/{malformed}"));
        assert_eq!(r.status, 400, "{malformed:?}");
        assert_eq!(r.json()["error"], "invalid_request");
    }
    for path in ["/", "/v1", "/v1/keyset/", "/v1/keys", "/v2/keyset"] {
        let r = get(server.addr, path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = http(
            server.addr,
            method,
            "/v1/keyset",
            &[("Content-Length", "0")],
        );
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    // The raw key is no path to anything.
    assert_eq!(
        get(server.addr, &format!("/v1/keys/{}", alice.api_key)).status,
        400
    );
}

#[test]
fn picks_up_changes_without_a_restart() {
    let (_dir, keys) = key_file("serve-reload");
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "7d"]);
    let server = Served::start(&keys);
    let first_etag = etag(&get(server.addr, "/v1/keyset"));

    let bob = new_key(&keys, &["--owner", "bob", "--expires-in", "7d"]);
    let second = get(server.addr, "/v1/keyset");
    assert_eq!(second.body, std::fs::read(&keys).unwrap());
    let second_etag = etag(&second);
    assert_ne!(second_etag, first_etag);
    // A client holding the old tag gets the new set.
    let r = http(
        server.addr,
        "GET",
        "/v1/keyset",
        &[("If-None-Match", &first_etag)],
    );
    assert_eq!(r.status, 200);
    let bob_path = record_path(&bob);
    assert_eq!(get(server.addr, &bob_path).status, 200);
    server.wait_for_log("reloaded: 2 keys, version 2");

    keygate(&["disable", &bob.id, "--keys", p(&keys)]).ok();
    assert_eq!(get(server.addr, &bob_path).json()["status"], "disabled");
    keygate(&["revoke", &bob.id, "--keys", p(&keys)]).ok();
    assert_eq!(get(server.addr, &bob_path).status, 404);
    let alice_path = record_path(&alice);
    assert_eq!(get(server.addr, &alice_path).status, 200);
    let last = get(server.addr, "/v1/keyset");
    assert_eq!(last.json()["version"], "4");
}

#[test]
fn keeps_the_last_good_set_when_the_file_turns_bad() {
    let (_dir, keys) = key_file("serve-bad");
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "7d"]);
    let server = Served::start(&keys);
    let good = get(server.addr, "/v1/keyset");
    let good_etag = etag(&good);
    let alice_path = record_path(&alice);

    let bad = json!({"keys": [{"id": "x", "owner": "o", "hash": "not-a-hash"}]});
    replace(&keys, bad.to_string().as_bytes());
    let r = get(server.addr, "/v1/keyset");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, good.body);
    assert_eq!(r.header("etag"), Some(good_etag.as_str()));
    assert_eq!(get(server.addr, &alice_path).status, 200);
    let line = server.wait_for_log("keys[0].hash");
    assert!(
        line.starts_with(&format!(
            "keygate serve: {}: keys[0].hash: ",
            keys.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("still serving the last good key set (1 key, version 1)"),
        "{line}"
    );
    // Reported once, not on every request.
    get(server.addr, "/v1/keyset");
    assert_eq!(
        server.log().matches("keys[0].hash").count(),
        1,
        "{}",
        server.log()
    );

    // Gone: the same.
    std::fs::remove_file(&keys).unwrap();
    assert_eq!(get(server.addr, "/v1/keyset").body, good.body);
    server.wait_for_log("cannot read");

    // Good again: served.
    let fixed = json!({"version": "9", "keys": []}).to_string();
    replace(&keys, fixed.as_bytes());
    let r = get(server.addr, "/v1/keyset");
    assert_eq!(r.body, fixed.as_bytes());
    assert_eq!(get(server.addr, &alice_path).status, 404);
}

#[test]
fn refuses_to_start_without_a_good_key_file() {
    let dir = Scratch::new("serve-refused");
    let missing = dir.join("missing.json");
    let run = serve_refused(&missing).failed();
    assert!(
        run.stderr
            .starts_with(&format!("keygate: {}: cannot read: ", missing.display())),
        "{run:?}"
    );

    let invalid = dir.join("invalid.json");
    std::fs::write(&invalid, r#"{"keys": [{"id": "a", "owner": "o"}]}"#).unwrap();
    let run = serve_refused(&invalid).failed();
    assert!(run.stderr.contains("missing field `hash`"), "{run:?}");
    assert!(
        run.stderr
            .starts_with(&format!("keygate: {}: keys[0]", invalid.display())),
        "{run:?}"
    );

    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"keys": []}"#).unwrap();
    let run = keygate(&["serve", "--keys", p(&good), "--listen", "not-an-address"]).failed();
    assert!(
        run.stderr
            .contains("--listen not-an-address: cannot listen"),
        "{run:?}"
    );
}
