//! `lookup` mode through a real Envoy (README "Key sets over HTTP"): a key is asked of the key service by its
//! hash, never sent itself; answers are cached (found and not found), concurrent requests
//! for one key share one call, and with the service down and nothing cached the answer is
//! 503.

use keygate_testkit as support;

use serde_json::{json, Value};
use std::time::Duration;
use support::key_service::KeyService;
use support::{
    bootstrap_with_key_service, eventually, hash_of, Envoy, EnvoyOptions, Request, Upstream,
};

const ALICE: &str = "kg_lookup_alice_key";
const BOB: &str = "kg_lookup_bob_key";
const STRANGER: &str = "kg_lookup_unknown_key";

fn record(id: &str, key: &str, scopes: &[&str]) -> Value {
    json!({"id": id, "hash": hash_of(key), "owner": id, "scopes": scopes})
}

fn doc(records: Vec<Value>) -> Value {
    json!({"version": "1", "keys": records})
}

/// A key service on a free port that knows alice's key (scope `browse`).
fn alice_service() -> KeyService {
    KeyService::start_on(
        "127.0.0.1:0",
        doc(vec![record("alice", ALICE, &["browse"])]),
    )
}

/// An upstream, alice's key service answering lookups after `delay_ms`, and Envoy
/// caching answers for 60 s.
fn slow_lookups(delay_ms: u64) -> (Upstream, KeyService, Envoy) {
    let upstream = Upstream::start();
    let service = alice_service();
    service.delay_lookups(Duration::from_millis(delay_ms));
    let envoy = start(&service, &upstream, 60);
    (upstream, service, envoy)
}

fn plugin_config(cache_seconds: u32) -> Value {
    json!({
        "lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}",
                   "cache_seconds": cache_seconds, "negative_cache_seconds": 60,
                   "timeout_ms": 1000},
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data", "scopes": ["browse"]}
        ]
    })
}

fn start(service: &KeyService, upstream: &Upstream, cache_seconds: u32) -> Envoy {
    Envoy::start_bootstrap(
        &bootstrap_with_key_service(&plugin_config(cache_seconds), upstream.addr, service.addr),
        EnvoyOptions::default(),
    )
}

fn status(envoy: &Envoy, key: &str) -> u16 {
    envoy.send(&Request::get("/data").bearer(key)).status
}

#[test]
fn keys_are_asked_by_hash_and_cache_hits_make_no_call() {
    if support::native_pending() {
        return;
    }
    let upstream = Upstream::start();
    let service = KeyService::start_on(
        "127.0.0.1:0",
        doc(vec![
            record("alice", ALICE, &["browse"]),
            record("bob", BOB, &[]),
        ]),
    );
    let envoy = start(&service, &upstream, 60);

    assert_eq!(status(&envoy, ALICE), 200);
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-id"), Some("alice"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        service.calls().lookups,
        [format!("/v1/keys/{}", hash_of(ALICE))],
        "one call, by hash"
    );
    for _ in 0..10 {
        assert_eq!(status(&envoy, ALICE), 200);
    }
    assert_eq!(service.calls().lookups.len(), 1, "cache hits made calls");

    // A key the service does not hold: 401, and the 404 is cached too.
    let unknown = envoy.send(&Request::get("/data").bearer(STRANGER));
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json()["error"], "invalid_token");
    for _ in 0..5 {
        assert_eq!(status(&envoy, STRANGER), 401);
    }
    // A held key without the scope: 403.
    assert_eq!(status(&envoy, BOB), 403);
    assert_eq!(service.calls().lookups.len(), 3);
    // No key, or a public route: no call at all.
    assert_eq!(envoy.send(&Request::get("/data")).status, 401);
    assert_eq!(envoy.send(&Request::get("/healthz")).status, 200);
    assert_eq!(service.calls().lookups.len(), 3);

    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("lookup.calls"), 3);
    assert_eq!(envoy.keygate_stat("lookup.cache_hits"), 15);
    assert_eq!(envoy.keygate_stat("allowed"), 11);
    // The raw key never left the proxy.
    let calls = service.calls().lookups.join("\n");
    for key in [ALICE, BOB, STRANGER] {
        assert!(!calls.contains(key));
    }
}

#[test]
fn concurrent_requests_for_one_key_share_one_call() {
    if support::native_pending() {
        return;
    }
    let (upstream, service, envoy) = slow_lookups(400);

    let listener = envoy.listener;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let path = format!("/data/{i}");
                support::request(listener, &Request::get(&path).bearer(ALICE))
            })
        })
        .collect();
    for client in clients {
        let response = client.join().unwrap();
        assert_eq!(
            response.status,
            200,
            "{}\nupstream saw {:?}\nlookups {:?}\n{}",
            response.text(),
            upstream
                .take()
                .iter()
                .map(|s| s.target.clone())
                .collect::<Vec<_>>(),
            service.calls().lookups,
            envoy.log()
        );
    }
    assert_eq!(
        service.calls().lookups.len(),
        1,
        "{:?}",
        service.calls().lookups
    );
    let seen = upstream.take();
    assert_eq!(seen.len(), 8);
    assert!(seen
        .iter()
        .all(|s| s.header("x-api-key-id") == Some("alice")));
    assert!(seen.iter().all(|s| s.header("authorization").is_none()));
}

#[test]
fn service_down_and_nothing_cached_is_503_and_cached_answers_still_serve() {
    if support::native_pending() {
        return;
    }
    let upstream = Upstream::start();
    let mut service = KeyService::start_on(
        "127.0.0.1:0",
        doc(vec![
            record("alice", ALICE, &["browse"]),
            record("bob", BOB, &["browse"]),
        ]),
    );
    let envoy = start(&service, &upstream, 60);
    assert_eq!(status(&envoy, ALICE), 200);

    service.stop();
    let refused = envoy.send(&Request::get("/data").bearer(BOB));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    assert_eq!(status(&envoy, ALICE), 200, "cached");
    // A public route passes with a key that cannot be checked, without an identity.
    assert_eq!(
        envoy.send(&Request::get("/healthz").bearer(BOB)).status,
        200
    );
    let seen = upstream.take();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].header("x-api-key-id"), None);
    envoy.await_stats_flush();
    assert!(envoy.keygate_stat("lookup.failed") >= 1);
    assert!(envoy.keygate_stat("denied.unavailable") >= 1);

    // The failure was not cached: once the service is back, bob gets in.
    service.restart();
    assert_eq!(status(&envoy, BOB), 200);
}

#[test]
fn a_revoked_key_is_refused_once_its_answer_expires() {
    if support::native_pending() {
        return;
    }
    let upstream = Upstream::start();
    let service = alice_service();
    let envoy = start(&service, &upstream, 1);
    let asked = std::time::Instant::now();
    assert_eq!(status(&envoy, ALICE), 200);
    service.set_doc(doc(vec![]));
    assert_eq!(status(&envoy, ALICE), 200, "still cached");
    // The answer lives 1 s from its arrival; the VM's clock is read on its 500 ms
    // tick, so the refusal comes between 1 and about 1.5 s later (later when loaded).
    assert!(
        eventually(Duration::from_secs(5), || status(&envoy, ALICE) == 401),
        "still 200 five seconds after the answer expired"
    );
    let took = asked.elapsed();
    assert!(took >= Duration::from_secs(1), "refused after {took:?}");
}

#[test]
fn a_waiting_request_is_served_when_the_request_that_asked_goes_away() {
    if support::native_pending() {
        return;
    }
    use std::io::Write;
    let (_upstream, service, envoy) = slow_lookups(800);

    // The first request makes the call, then its client leaves.
    let mut first = std::net::TcpStream::connect(envoy.listener).unwrap();
    first
        .write_all(&Request::get("/data").bearer(ALICE).to_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let second = std::thread::spawn({
        let listener = envoy.listener;
        move || support::request(listener, &Request::get("/data").bearer(ALICE))
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(first);
    let answer = second.join().unwrap();
    let took = started.elapsed();
    eprintln!("the waiting request got {} after {took:?}", answer.status);
    // The root context asks again for it at its next tick (500 ms): the first call's
    // answer went away with its request. Waiting for that call to be overdue instead
    // (timeout 1 s + 1 s) would take about 3 s.
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(service.calls().lookups.len(), 2);
}

#[test]
fn a_request_body_does_not_move_a_waiting_request_on() {
    if support::native_pending() {
        return;
    }
    let (upstream, service, envoy) = slow_lookups(500);

    let listener = envoy.listener;
    let send = move |key: &'static str| {
        std::thread::spawn(move || {
            let body = "x".repeat(100_000);
            support::request(
                listener,
                &Request::new("POST", "/data/upload").bearer(key).body(&body),
            )
        })
    };
    // Unknown keys, each waiting for the key service while its body streams in.
    let strangers: Vec<_> = (0..3).map(|_| send(STRANGER)).collect();
    for client in strangers {
        let answer = client.join().unwrap();
        assert_eq!(answer.status, 401, "{}", answer.text());
    }
    assert!(
        upstream.take().is_empty(),
        "a refused request reached the upstream"
    );
    assert_eq!(service.calls().lookups.len(), 1);

    let allowed = send(ALICE).join().unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-id"), Some("alice"));
    assert_eq!(seen.header("content-length"), Some("100000"));
}

/// A request that ends while it waits for its key (the client leaves) is logged by Envoy
/// with its `:path` as it stands: a key in the query must be gone from it already.
#[test]
fn a_query_key_is_gone_from_the_logged_path_while_the_request_waits() {
    if support::native_pending() {
        return;
    }
    use std::io::Write;
    let upstream = Upstream::start();
    let service = alice_service();
    service.delay_lookups(Duration::from_millis(1500));
    let mut config = plugin_config(60);
    config["sources"] = json!([{"query": "api_key"}]);
    let mut bootstrap = bootstrap_with_key_service(&config, upstream.addr, service.addr);
    let dir = support::TempDir::new("lookup-access-log");
    let log = dir.path().join("access.log");
    support::with_access_log(
        &mut bootstrap,
        &log,
        "%REQ(:PATH)% %RESPONSE_CODE_DETAILS%\n",
    );
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());

    let mut client = std::net::TcpStream::connect(envoy.listener).unwrap();
    let target = format!("/data?x=1&api_key={ALICE}");
    client.write_all(&Request::get(&target).to_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(5), || !service
        .calls()
        .lookups
        .is_empty()));
    drop(client);
    let logged = String::from_utf8_lossy(&support::logged(&log)).into_owned();
    assert!(
        !logged.contains(ALICE),
        "the key reached the access log: {logged}"
    );
    assert!(logged.starts_with("/data?x=1 "), "{logged}");
    assert!(upstream.take().is_empty());
}

/// `key_format`: made-up keys with the configured prefix are refused (401, malformed)
/// without a call to the key service; issued keys and legacy keys are looked up as before.
#[test]
fn made_up_keys_of_the_key_format_make_no_call() {
    if support::native_pending() {
        return;
    }
    use keygate_core::key_format::{issue, Prefix};
    let kg = Prefix::parse("kg").unwrap();
    let issued = issue(&kg, [9u8; 32]);
    let upstream = Upstream::start();
    let service = KeyService::start_on(
        "127.0.0.1:0",
        doc(vec![
            record("alice", ALICE, &["browse"]),
            record("nina", &issued, &["browse"]),
        ]),
    );
    let mut config = plugin_config(60);
    config["key_format"] = json!({"prefixes": ["kg"]});
    let envoy = Envoy::start_bootstrap(
        &bootstrap_with_key_service(&config, upstream.addr, service.addr),
        EnvoyOptions::default(),
    );
    assert_eq!(status(&envoy, &issued), 200);
    assert_eq!(service.calls().lookups.len(), 1);
    for i in 0..200u32 {
        // A made-up key of the right shape: only its checksum gives it away.
        let mut random = [0u8; 32];
        random[..4].copy_from_slice(&i.to_be_bytes());
        let made_up = issue(&kg, random);
        let made_up = format!(
            "{}{}",
            &made_up[..made_up.len() - 1],
            if made_up.ends_with('A') { 'B' } else { 'A' }
        );
        let refused = envoy.send(&Request::get("/data").bearer(&made_up));
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(
            refused.json(),
            json!({"error": "invalid_token", "error_description": "malformed API key"})
        );
    }
    // A cut key too.
    assert_eq!(status(&envoy, &issued[..20]), 401);
    assert_eq!(
        service.calls().lookups.len(),
        1,
        "a made-up key made a call"
    );
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("denied.malformed_key"), 201);
    assert_eq!(envoy.keygate_stat("lookup.calls"), 1);
    assert_eq!(upstream.take().len(), 1);
}
