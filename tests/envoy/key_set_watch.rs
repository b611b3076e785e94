//! `key_set` mode's incremental sync through a real Envoy with 2 workers and the real
//! `keygate serve` (README "Key sets over HTTP"): with `refresh_seconds` 30, a revoked key
//! is refused by every worker within about a second, because the worker holding the lease
//! long-polls `/v1/keyset?since=V&epoch=E&wait=S` and writes each delta into the shared
//! buckets at once; a long-poll that times out (304) is made again at once; a key service
//! that goes away leaves the last good set in force, and one that comes back with a new
//! epoch is resynced from its full document. A plain file server (which ignores the query)
//! is covered by every test of `key_set.rs`, whose test service is one.

use crate::lookup_watch::{
    alice_and_bob, issue, long_polls_loop_then_revoke, status, time_until_refused,
    DbWithAliceAndBob, Serve,
};
use keygate_testkit as support;
use keygate_testkit::cli as cli_support;

use cli_support::{keygate, Scratch};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{bootstrap_with_key_service, eventually, free_port, Envoy, EnvoyOptions, Upstream};

/// Polling alone would take up to 30 s to see a change: what is faster is the watch.
fn plugin_config(watch_seconds: u32) -> Value {
    json!({
        "key_set": {"cluster": "keyservice", "path": "/v1/keyset",
                    "refresh_seconds": 30, "watch_seconds": watch_seconds},
        "rules": [{"path_prefix": "/data", "scopes": ["browse"]}]
    })
}

fn start_envoy(upstream: &Upstream, key_service: SocketAddr, watch_seconds: u32) -> Envoy {
    Envoy::start_bootstrap(
        &bootstrap_with_key_service(&plugin_config(watch_seconds), upstream.addr, key_service),
        EnvoyOptions {
            concurrency: 2,
            // The log is read by the tests: written out at once.
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    )
}

/// Waits until every worker answers `key` with `expected`.
fn answers(envoy: &Envoy, key: &str, expected: u16) {
    assert!(
        eventually(Duration::from_secs(10), || (0..10)
            .all(|_| status(envoy, key) == expected)),
        "{key} never answered {expected}:\n{}",
        envoy.log()
    );
}

#[test]
fn a_revoked_key_is_refused_by_every_worker_well_within_the_poll_interval() {
    if support::native_pending() {
        return;
    }
    let (dir, keys, alice, bob) = alice_and_bob("key-set-watch-revoke");
    let served = Serve::start(&keys, free_port(), &dir.join("serve.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, 25);
    answers(&envoy, &alice.api_key, 200);
    // Let the first long-poll go out after the full document.
    std::thread::sleep(Duration::from_millis(500));

    keygate(&["revoke", &alice.id, "--keys", keys.to_str().unwrap()]).ok();
    let revoked = Instant::now();
    let delay = time_until_refused(&envoy, &alice.api_key, revoked, Duration::from_secs(5));
    println!("key_set watch: revocation enforced by every worker after {delay:?} (refresh 30 s)");
    assert!(delay <= Duration::from_secs(3), "{delay:?}");
    for _ in 0..10 {
        assert_eq!(status(&envoy, &bob.api_key), 200);
    }
    // The change came as a delta: one full document, then updates.
    assert!(
        eventually(Duration::from_secs(5), || envoy.log().contains(
            "keygate: key set updated from cluster keyservice: 1 key changed, 1 key in force"
        )),
        "{}",
        envoy.log()
    );
    assert_eq!(envoy.log().matches("keygate: key set loaded").count(), 1);
}

/// Through `keygate serve --db`: a key revoked through the admin API, with the store's
/// acknowledgement as the start.
#[test]
fn a_key_revoked_through_the_admin_api_is_refused_within_a_second() {
    if support::native_pending() {
        return;
    }
    let db = DbWithAliceAndBob::start("key-set-watch-db");
    let (served, api, alice_id) = (&db.served, &db.api, &db.alice_id);
    let (alice_key, bob_key) = (db.alice_key.as_str(), db.bob_key.as_str());
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, 25);
    answers(&envoy, alice_key, 200);
    std::thread::sleep(Duration::from_millis(500));

    let revoke = api.delete(&format!("/v1/admin/keys/{alice_id}"));
    let revoked = Instant::now();
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let delay = time_until_refused(&envoy, alice_key, revoked, Duration::from_secs(5));
    println!("key_set watch, db mode: revocation enforced by every worker after {delay:?}");
    assert!(delay <= Duration::from_secs(2), "{delay:?}");
    assert_eq!(status(&envoy, bob_key), 200);
    // A key issued now serves as soon as the store has it.
    let (_, carol_key) = api.create_browse_key("carol");
    let issued = Instant::now();
    answers(&envoy, &carol_key, 200);
    println!(
        "key_set watch, db mode: a new key served after {:?}",
        issued.elapsed()
    );
    assert!(!served.log().contains(alice_key));
}

#[test]
fn a_long_poll_that_times_out_is_made_again_without_a_gap() {
    if support::native_pending() {
        return;
    }
    let dir = Scratch::new("key-set-watch-304");
    let keys = dir.join("keys.json");
    let alice = issue(&keys, "alice");
    let served = Serve::start(&keys, free_port(), &dir.join("serve.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, 1);
    answers(&envoy, &alice.api_key, 200);

    // Long-polls of 1 s over 4 s, by the one worker holding the lease: each answered 304
    // and made again at once.
    let delay = long_polls_loop_then_revoke(&envoy, 1, &keys, &alice);
    println!("key_set watch: after 304 loops, refused by every worker after {delay:?}");
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("fetch.failed"), 0);
}

/// The key service goes away mid-watch: the last good set stays in force (no request is
/// refused that was allowed, none allowed that was refused). It comes back as a new
/// process, a new epoch, with changes made meanwhile: the filter loads its full document.
#[test]
fn a_key_service_down_keeps_the_last_good_set_and_a_new_epoch_is_resynced() {
    if support::native_pending() {
        return;
    }
    let (dir, keys, alice, bob) = alice_and_bob("key-set-watch-restart");
    let port = free_port();
    let served = Serve::start(&keys, port, &dir.join("serve-1.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, 25);
    answers(&envoy, &alice.api_key, 200);
    answers(&envoy, &bob.api_key, 200);

    drop(served);
    let failed = envoy.keygate_stat("fetch.failed");
    // Changed while no one could tell: only the new epoch's full document says so.
    keygate(&["revoke", &alice.id, "--keys", keys.to_str().unwrap()]).ok();
    let carol = issue(&keys, "carol");
    assert!(
        eventually(Duration::from_secs(10), || {
            assert_eq!(
                status(&envoy, &alice.api_key),
                200,
                "the last good set was lost"
            );
            assert_eq!(status(&envoy, &carol.api_key), 401);
            envoy.keygate_stat("fetch.failed") >= failed + 2
        }),
        "no failed fetch counted: {:?}",
        envoy.keygate_stats()
    );
    assert!(
        envoy.log().contains("keeping the last good set"),
        "{}",
        envoy.log()
    );

    let served = Serve::start(&keys, port, &dir.join("serve-2.log"));
    let restarted = Instant::now();
    let delay = time_until_refused(&envoy, &alice.api_key, restarted, Duration::from_secs(10));
    println!(
        "key_set watch: after a restart (new epoch), resynced by every worker after {delay:?}"
    );
    answers(&envoy, &carol.api_key, 200);
    for _ in 0..10 {
        assert_eq!(
            status(&envoy, &bob.api_key),
            200,
            "bob was never to be refused"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || envoy
            .log()
            .matches("keygate: key set loaded from cluster keyservice")
            .count()
            >= 2),
        "{}",
        envoy.log()
    );
    drop(served);
}
