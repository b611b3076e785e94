//! Usage in file mode (README "Usage (last used)"): `keygate serve --keys` takes `POST
//! /v1/usage`, keeps uses and the last use beside keys.json (never rewriting it), and
//! `keygate list` shows them.

use keygate_testkit::cli as cli_support;

use cli_support::{http, keygate, new_key, Scratch, Served};
use keygate_core::record::KeyHash;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `POST target` with a JSON body; the status and the body of the answer.
fn post(addr: SocketAddr, target: &str, body: &str) -> (u16, String) {
    post_saying(addr, target, body.len(), body)
}

/// `POST target` whose `Content-Length` says `length` (the body sent is `body`).
fn post_saying(addr: SocketAddr, target: &str, length: usize, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: keyservice\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        length
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn report(entries: &[(&str, u64, &str)]) -> String {
    let reports: Vec<Value> = entries
        .iter()
        .map(|(key, count, at)| {
            json!({"hash": KeyHash::of_key(key).to_hex(), "count": count, "last_used_at": at})
        })
        .collect();
    json!({ "reports": reports }).to_string()
}

#[test]
fn reports_are_kept_beside_the_key_file_and_listed() {
    let dir = Scratch::new("serve-usage");
    let keys = dir.join("keys.json");
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "30d"]);
    let bob = new_key(&keys, &["--owner", "bob", "--expires-in", "never"]);
    let before = std::fs::read(&keys).unwrap();
    let server = Served::start(&keys);

    let first = report(&[
        (&alice.api_key, 3, "2026-11-30T10:00:00.250Z"),
        ("not-a-key-of-this-file", 9, "2026-11-30T10:00:00Z"),
    ]);
    assert_eq!(post(server.addr, "/v1/usage", &first), (204, String::new()));
    let second = report(&[
        (&alice.api_key, 2, "2026-11-30T09:00:00Z"),
        (&alice.api_key, 1, "2026-11-30T10:05:00+01:00"),
    ]);
    assert_eq!(post(server.addr, "/v1/usage", &second).0, 204);

    assert_eq!(std::fs::read(&keys).unwrap(), before, "keys.json untouched");
    let usage_file = dir.join("keys.usage.json");
    let text = std::fs::read_to_string(&usage_file).unwrap();
    assert!(!text.contains(&alice.api_key) && !text.contains(&bob.api_key));
    assert!(!text.contains(&KeyHash::of_key("not-a-key-of-this-file").to_hex()));
    let kept: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        kept,
        json!({"usage": {KeyHash::of_key(&alice.api_key).to_hex():
            {"uses": 6, "last_used_at": "2026-11-30T10:00:00.250Z"}}})
    );

    let listed: Value =
        serde_json::from_str(&keygate(&["list", "--json", "--keys", p(&keys)]).ok().stdout)
            .unwrap();
    let by_owner = |owner: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["owner"] == owner)
            .unwrap()
            .clone()
    };
    assert_eq!(by_owner("alice")["uses"], 6);
    assert_eq!(
        by_owner("alice")["last_used_at"],
        "2026-11-30T10:00:00.250Z"
    );
    assert_eq!(by_owner("bob")["uses"], 0);
    assert_eq!(by_owner("bob")["last_used_at"], Value::Null);

    let table = keygate(&["list", "--keys", p(&keys)]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].ends_with("LAST USED             USES"), "{table}");
    let alice_line = lines.iter().find(|l| l.contains("alice")).unwrap();
    assert!(
        alice_line.ends_with("2026-11-30T10:00:00Z  6"),
        "{alice_line}"
    );
    let bob_line = lines.iter().find(|l| l.contains("bob")).unwrap();
    assert!(bob_line.ends_with("never                 0"), "{bob_line}");

    // A restarted service goes on from the file.
    drop(server);
    let server = Served::start(&keys);
    let third = report(&[(&bob.api_key, 1, "2026-11-30T11:00:00Z")]);
    assert_eq!(post(server.addr, "/v1/usage", &third).0, 204);
    let kept: Value = serde_json::from_slice(&std::fs::read(&usage_file).unwrap()).unwrap();
    assert_eq!(kept["usage"].as_object().unwrap().len(), 2);
    assert_eq!(
        kept["usage"][KeyHash::of_key(&alice.api_key).to_hex()]["uses"],
        6
    );
}

#[test]
fn bad_reports_are_refused_with_the_field() {
    let dir = Scratch::new("serve-usage-bad");
    let keys = dir.join("keys.json");
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "30d"]);
    let server = Served::start(&keys);
    let (status, body) = post(
        server.addr,
        "/v1/usage",
        &json!({"reports": [{"hash": KeyHash::of_key(&alice.api_key).to_hex(),
            "count": 0, "last_used_at": "2026-11-30T10:00:00Z"}]})
        .to_string(),
    );
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(
        body["error_description"],
        "reports[0].count: must be at least 1"
    );
    // A key where its hash belongs is refused without being repeated.
    let (status, body) = post(
        server.addr,
        "/v1/usage",
        &json!({"reports": [{"hash": alice.api_key, "count": 1,
            "last_used_at": "2026-11-30T10:00:00Z"}]})
        .to_string(),
    );
    assert_eq!(status, 400);
    assert!(!body.contains(&alice.api_key), "{body}");
    let (status, _) = post(server.addr, "/v1/usage", "not json");
    assert_eq!(status, 400);
    // Refused for what it says it holds, before it is read.
    let (status, _) = post_saying(server.addr, "/v1/usage", 3 * 1024 * 1024, "{");
    assert_eq!(status, 413);
    let get = http(server.addr, "GET", "/v1/usage", &[]);
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    // Other endpoints still take no POST.
    assert_eq!(post(server.addr, "/v1/keyset", "{}").0, 405);
    assert!(!dir.join("keys.usage.json").exists(), "nothing kept");
}

#[test]
fn an_unreadable_usage_file_hides_no_key() {
    let dir = Scratch::new("usage-unreadable");
    let keys = dir.join("keys.json");
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "30d"]);
    let usage_file = dir.join("keys.usage.json");
    std::fs::write(&usage_file, "{\"usage\": ").unwrap();

    let run = keygate(&["list", "--keys", p(&keys)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("alice"), "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "keygate: {}: not a usage file: ",
            usage_file.display()
        )) && run.stderr.trim_end().ends_with("; usage not shown"),
        "{run:?}"
    );

    // The service starts anyway, says so, and replaces the file at the first report.
    let server = Served::start(&keys);
    let line = server.wait_for_log("usage starts again from nothing");
    assert!(line.contains("keys.usage.json: not a usage file"), "{line}");
    let first = report(&[(&alice.api_key, 2, "2026-11-30T10:00:00Z")]);
    assert_eq!(post(server.addr, "/v1/usage", &first).0, 204);
    let listed = keygate(&["list", "--json", "--keys", p(&keys)]).ok().stdout;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["uses"], 2);
}
