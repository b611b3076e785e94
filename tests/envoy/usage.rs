//! `usage` through a real Envoy (README "Usage (last used)"): every worker counts the
//! requests allowed per key and reports them on its timer; `keygate serve --keys` keeps them
//! and `keygate list` shows them; `keygate serve --db` (over mTLS) keeps them in the
//! database and the admin API shows them. A key service that is down or failing changes
//! nothing for requests: the report is dropped and counted.

use keygate_testkit as support;
use keygate_testkit::cli as cli_support;

use cli_support::{keygate, new_key, Issued, Scratch, Served};
use keygate_core::timestamp::Timestamp;
use keygate_testkit::keysvc::TlsDb;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use support::usage_sink::UsageSink;
use support::{
    bootstrap_with_key_service, eventually, free_port, hash_of, Envoy, EnvoyOptions, Request,
    Upstream,
};

const ALICE: &str = "kg_usage_alice_key";
const BOB: &str = "kg_usage_bob_key";

fn rules() -> Value {
    json!([{"path_prefix": "/data", "scopes": ["browse"]}])
}

fn inline_config() -> Value {
    json!({
        "keys": [
            {"id": "alice", "hash": hash_of(ALICE), "owner": "alice", "scopes": ["browse"]},
            {"id": "bob", "hash": hash_of(BOB), "owner": "bob"}
        ],
        "rules": rules(),
        "usage": {"cluster": "keyservice", "report_seconds": 1}
    })
}

fn start(config: &Value, upstream: &Upstream, key_service: SocketAddr) -> Envoy {
    Envoy::start_bootstrap(
        &bootstrap_with_key_service(config, upstream.addr, key_service),
        EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
    )
}

fn status(envoy: &Envoy, key: &str) -> u16 {
    envoy.send(&Request::get("/data/x").bearer(key)).status
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// `keygate list --json`, as records by owner.
fn listed(keys: &Path) -> Vec<Value> {
    let out = keygate(&["list", "--json", "--keys", keys.to_str().unwrap()])
        .ok()
        .stdout;
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn by_owner(records: &[Value], owner: &str) -> Value {
    records
        .iter()
        .find(|r| r["owner"] == owner)
        .unwrap()
        .clone()
}

/// `keygate new` for alice, with the scope `browse`, living `expires_in`.
fn new_alice(keys: &Path, expires_in: &str) -> Issued {
    new_key(
        keys,
        &[
            "--owner",
            "alice",
            "--scopes",
            "browse",
            "--expires-in",
            expires_in,
        ],
    )
}

/// alice's `uses` as `keygate list --json` shows them.
fn alice_uses(keys: &Path) -> Value {
    by_owner(&listed(keys), "alice")["uses"].clone()
}

/// Asserts that `done` comes true within `seconds`, showing Envoy's log if not.
fn assert_eventually(envoy: &Envoy, seconds: u64, done: impl Fn(&Envoy) -> bool) {
    assert!(
        eventually(Duration::from_secs(seconds), || done(envoy)),
        "{}",
        envoy.log()
    );
}

/// Asserts that `record`'s `last_used_at` is within `slack_nanos` of the window
/// `start..=end`.
fn assert_used_within(record: &Value, start: Timestamp, end: Timestamp, slack_nanos: i128) {
    let last = Timestamp::parse_rfc3339(record["last_used_at"].as_str().unwrap()).unwrap();
    assert!(
        last.unix_nanos() >= start.unix_nanos() - slack_nanos
            && last.unix_nanos() <= end.unix_nanos() + slack_nanos,
        "last_used_at {record} outside the test's window"
    );
}

/// Requests with `key` until `n` were answered `expect`; each must be answered at once.
fn send_n(envoy: &Envoy, key: &str, n: usize, expect: u16) {
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(status(envoy, key), expect, "{}", envoy.log());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn allowed_requests_reach_keygate_serve_and_keygate_list() {
    if support::native_pending() {
        return;
    }
    let dir = Scratch::new("usage-serve");
    let keys = dir.join("keys.json");
    let alice = new_alice(&keys, "30d");
    let bob = new_key(&keys, &["--owner", "bob", "--expires-in", "never"]);
    let before = std::fs::read(&keys).unwrap();
    let served = Served::start(&keys);
    let upstream = Upstream::start();
    // Inline keys as `keygate list --json` prints them (usage fields included).
    let config = json!({
        "keys": listed(&keys),
        "rules": rules(),
        // keygate serve syncs the usage file before it answers: under a loaded disk
        // that may take longer than the default timeout.
        "usage": {"cluster": "keyservice", "path": "/v1/usage", "report_seconds": 1,
                  "timeout_ms": 10000}
    });
    let envoy = start(&config, &upstream, served.addr);

    let window_start = now();
    send_n(&envoy, &alice.api_key, 7, 200);
    send_n(&envoy, &bob.api_key, 2, 403);
    send_n(&envoy, "kg_not_a_key", 2, 401);
    let window_end = now();

    assert!(
        eventually(Duration::from_secs(10), || alice_uses(&keys) == 7),
        "uses never reached 7: {:?}\n{}\n{}",
        listed(&keys),
        envoy.log(),
        served.log()
    );
    let records = listed(&keys);
    let alice_record = by_owner(&records, "alice");
    // The VM's clock is read on its tick: at most half a second behind.
    assert_used_within(&alice_record, window_start, window_end, 1_000_000_000);
    let bob_record = by_owner(&records, "bob");
    assert_eq!(
        (
            bob_record["uses"].clone(),
            bob_record["last_used_at"].clone()
        ),
        (json!(0), Value::Null)
    );
    // No more than what was allowed, however many reports were made.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(by_owner(&listed(&keys), "alice")["uses"], 7);
    let table = keygate(&["list", "--keys", keys.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        table.lines().next().unwrap().contains("LAST USED"),
        "{table}"
    );

    assert_eq!(
        std::fs::read(&keys).unwrap(),
        before,
        "keys.json is not rewritten"
    );
    let kept = std::fs::read_to_string(dir.join("keys.usage.json")).unwrap();
    assert!(!kept.contains(&alice.api_key) && !kept.contains(&bob.api_key));
    assert!(envoy.keygate_stat("usage.reports_sent") >= 1);
    assert_eq!(envoy.keygate_stat("usage.reports_failed"), 0);
    assert_eq!(envoy.keygate_stat("usage.dropped"), 0);
    assert_eq!(envoy.keygate_stat("allowed"), 7);
}

#[test]
fn lookup_mode_counts_requests_that_waited_for_their_key() {
    if support::native_pending() {
        return;
    }
    let dir = Scratch::new("usage-lookup");
    let keys = dir.join("keys.json");
    let alice = new_alice(&keys, "never");
    let served = Served::start(&keys);
    let upstream = Upstream::start();
    let config = json!({
        "lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}", "cache_seconds": 60},
        "rules": rules(),
        "usage": {"cluster": "keyservice", "report_seconds": 1}
    });
    let envoy = start(&config, &upstream, served.addr);
    // The first request of each worker waits for the key service; the others are cache hits.
    send_n(&envoy, &alice.api_key, 5, 200);
    assert!(
        eventually(Duration::from_secs(10), || alice_uses(&keys) == 5),
        "{:?}\n{}",
        listed(&keys),
        envoy.log()
    );
    assert!(envoy.keygate_stat("lookup.calls") >= 1);
}

#[test]
fn a_failing_key_service_changes_nothing_for_requests() {
    if support::native_pending() {
        return;
    }
    let sink = UsageSink::start(500);
    let upstream = Upstream::start();
    let envoy = start(&inline_config(), &upstream, sink.addr);
    send_n(&envoy, ALICE, 4, 200);
    assert_eventually(&envoy, 10, |envoy| {
        envoy.keygate_stat("usage.reports_failed") >= 1
    });
    // Still answered at once while reports fail.
    send_n(&envoy, ALICE, 3, 200);
    assert_eq!(envoy.keygate_stat("usage.reports_sent"), 0);
    // Envoy writes its log file every few seconds.
    assert_eventually(&envoy, 15, |envoy| {
        envoy
            .log()
            .contains("usage report dropped: the key service answered 500")
    });
    let log = envoy.log();
    assert!(!log.contains(ALICE) && !log.contains(&hash_of(ALICE)));

    // What was sent: hashes, counts and times, POSTed as JSON to the path, nothing else.
    let received = sink.received();
    let first = &received[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/v1/usage")
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.authority.as_deref(), Some("keyservice"));
    let entry = &first.body["reports"][0];
    let mut fields: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["count", "hash", "last_used_at"], "{entry}");
    assert_eq!(entry["hash"], hash_of(ALICE));
    assert!(Timestamp::parse_rfc3339(entry["last_used_at"].as_str().unwrap()).is_ok());

    // A failed report is dropped, not sent again: every use reaches the service once,
    // whether its report failed or not.
    let failed_so_far = sink.count_of(&hash_of(ALICE));
    sink.answer(204);
    send_n(&envoy, ALICE, 2, 200);
    assert!(
        eventually(Duration::from_secs(10), || {
            sink.count_of(&hash_of(ALICE)) == 9 && envoy.keygate_stat("usage.reports_sent") >= 1
        }),
        "reported {} in all ({failed_so_far} while failing)\n{}",
        sink.count_of(&hash_of(ALICE)),
        envoy.log()
    );
    assert_eq!(sink.count_of(&hash_of(BOB)), 0);
}

#[test]
fn a_key_service_that_is_down_changes_nothing_for_requests() {
    if support::native_pending() {
        return;
    }
    let upstream = Upstream::start();
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let envoy = start(&inline_config(), &upstream, nobody);
    let started = Instant::now();
    // Over several report periods.
    while started.elapsed() < Duration::from_millis(2500) {
        send_n(&envoy, ALICE, 1, 200);
        send_n(&envoy, BOB, 1, 403);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eventually(&envoy, 10, |envoy| {
        envoy.keygate_stat("usage.reports_failed") >= 1
    });
    assert_eq!(envoy.keygate_stat("usage.reports_sent"), 0);
    assert_eq!(envoy.keygate_stat("denied.unavailable"), 0);
    // Envoy writes its log file every few seconds.
    assert_eventually(&envoy, 15, |envoy| {
        envoy.log().contains("usage report dropped")
    });
    let log = envoy.log();
    assert!(!log.contains(ALICE) && !log.contains(&hash_of(ALICE)));
}

#[test]
fn usage_reaches_the_admin_api_of_keygate_serve_db_over_mtls() {
    if support::native_pending() {
        return;
    }
    let scratch = TlsDb::new("usage-db");
    let (server, api) = scratch.serve_mtls();
    let create = |owner: &str| api.create_browse_key(owner);
    let (alice_id, alice) = create("alice");
    let (bob_id, _bob) = create("bob");

    let config = json!({
        "key_set": {"cluster": "keyservice", "path": "/v1/keyset", "authority": "keyservice",
                    "refresh_seconds": 1},
        "rules": rules(),
        // SQLite commits (synchronous=FULL) before it answers.
        "usage": {"cluster": "keyservice", "authority": "keyservice", "report_seconds": 1,
                  "timeout_ms": 10000}
    });
    let upstream = Upstream::start();
    let envoy = super::key_service_mtls::start_envoy_over_mtls(
        &config,
        upstream.addr,
        server.addr,
        &scratch.pki,
    );
    assert!(
        eventually(Duration::from_secs(10), || status(&envoy, &alice) == 200),
        "the key set never loaded over mTLS:\n{}\n{}",
        envoy.log(),
        server.log()
    );
    // What the first request counted is reported too: wait for it, then count from there.
    let record = |id: &str| api.get(&format!("/v1/admin/keys/{id}")).json();
    let await_uses = |n: u64| {
        assert!(
            eventually(Duration::from_secs(10), || record(&alice_id)["uses"] == n),
            "uses never reached {n}: {}\n{}\n{}",
            record(&alice_id),
            envoy.log(),
            server.log()
        )
    };
    await_uses(1);

    let window_start = now();
    send_n(&envoy, &alice, 6, 200);
    send_n(&envoy, "kg_not_a_key", 2, 401);
    let window_end = now();
    await_uses(7);
    let alice_record = record(&alice_id);
    // The service keeps whole seconds.
    assert_used_within(&alice_record, window_start, window_end, 2_000_000_000);
    let bob_record = record(&bob_id);
    assert_eq!(
        (
            bob_record["uses"].clone(),
            bob_record["last_used_at"].clone()
        ),
        (json!(0), Value::Null)
    );
    // The list shows the same, and usage is no change of the key set.
    let listed = api.get("/v1/admin/keys?owner=alice").json();
    assert_eq!(listed["keys"][0]["uses"], 7);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(record(&alice_id)["uses"], 7);
    assert!(envoy.keygate_stat("usage.reports_sent") >= 1);
    assert_eq!(envoy.keygate_stat("usage.reports_failed"), 0);
    assert_eq!(envoy.keygate_stat("allowed"), 7);
    assert!(!server.log().contains(&alice), "{}", server.log());
}
