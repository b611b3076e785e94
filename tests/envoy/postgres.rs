//! README "Replicas on PostgreSQL": several `keygate serve --db postgres://...` replicas
//! on one real, throwaway PostgreSQL (crates/testkit/src/postgres.rs; `make test` installs
//! postgresql-15), and a real Envoy watching one of them in `key_set` mode. A change made
//! through any replica reaches the gateway within a second (NOTIFY wakes every replica's
//! long-polls); PostgreSQL restarted under load: the replicas answer 503 on /readyz
//! meanwhile, the gateway keeps its last good set, and both recover.

use crate::lookup_watch::{status, time_until_refused};
use keygate_testkit as support;
use keygate_testkit::keysvc::{admin_key, Client, Server};
use keygate_testkit::postgres::Postgres;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{bootstrap_with_key_service, eventually, Envoy, EnvoyOptions, Upstream};

/// Polling alone would take 30 s to see a change: what is faster is the watch.
fn plugin_config() -> Value {
    json!({
        "key_set": {"cluster": "keyservice", "path": "/v1/keyset",
                    "refresh_seconds": 30, "watch_seconds": 25},
        "rules": [{"path_prefix": "/data", "scopes": ["browse"]}]
    })
}

fn start_envoy(upstream: &Upstream, key_service: SocketAddr) -> Envoy {
    Envoy::start_bootstrap(
        &bootstrap_with_key_service(&plugin_config(), upstream.addr, key_service),
        EnvoyOptions {
            concurrency: 2,
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    )
}

/// Waits until every worker answers `key` with `expected`; how long it took.
fn answers(envoy: &Envoy, key: &str, expected: u16) -> Duration {
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || (0..10)
            .all(|_| status(envoy, key) == expected)),
        "{key} never answered {expected}:\n{}",
        envoy.log()
    );
    started.elapsed()
}

/// `n` replicas on one new database, and a client of each one's admin API.
fn replicas(pg: &mut Postgres, n: usize) -> (Vec<Server>, Vec<Client>) {
    let dsn = pg.new_database();
    let admin = admin_key(Path::new(&dsn));
    let servers: Vec<Server> = (0..n).map(|_| Server::start(&["--db", &dsn])).collect();
    let apis = servers
        .iter()
        .map(|s| Client::plain(s.addr).with_bearer(&admin))
        .collect();
    (servers, apis)
}

#[test]
fn a_change_through_one_replica_reaches_a_gateway_watching_another_within_a_second() {
    let mut pg = Postgres::start();
    let (servers, apis) = replicas(&mut pg, 3);
    let (alice_id, alice_key) = apis[0].create_browse_key("alice");
    let (_, bob_key) = apis[2].create_browse_key("bob");
    let upstream = Upstream::start();
    // The gateway watches replica 1; changes go through replicas 2 and 0.
    let envoy = start_envoy(&upstream, servers[1].addr);
    answers(&envoy, &alice_key, 200);
    answers(&envoy, &bob_key, 200);
    // Let the first long-poll go out after the full document.
    std::thread::sleep(Duration::from_millis(500));

    let revoke = apis[2].delete(&format!("/v1/admin/keys/{alice_id}"));
    let revoked = Instant::now();
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let delay = time_until_refused(&envoy, &alice_key, revoked, Duration::from_secs(5));
    println!("postgres, 3 replicas: a revocation through replica 2 enforced by a gateway watching replica 1 after {delay:?}");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    assert_eq!(status(&envoy, &bob_key), 200);

    let (_, carol_key) = apis[0].create_browse_key("carol");
    let served = answers(&envoy, &carol_key, 200);
    println!("postgres, 3 replicas: a key made through replica 0 served after {served:?}");
    assert!(served <= Duration::from_secs(1), "{served:?}");
    for server in &servers {
        assert!(!server.log().contains(&alice_key));
    }
}

#[test]
fn postgres_restarted_under_load_replicas_recover_and_the_gateway_keeps_its_last_good_set() {
    let mut pg = Postgres::start();
    let (servers, apis) = replicas(&mut pg, 2);
    let (alice_id, alice_key) = apis[0].create_browse_key("alice");
    let (_, bob_key) = apis[1].create_browse_key("bob");
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, servers[0].addr);
    answers(&envoy, &alice_key, 200);
    answers(&envoy, &bob_key, 200);
    std::thread::sleep(Duration::from_millis(500));
    let ready = |c: &Client| c.get("/readyz").status;
    let stop = AtomicBool::new(false);

    let (gateway, lookups) = std::thread::scope(|s| {
        // Load: requests through the gateway, and lookups on both replicas.
        let gateway = s.spawn(|| {
            let mut seen = std::collections::BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                *seen.entry(status(&envoy, &alice_key)).or_insert(0u32) += 1;
            }
            seen
        });
        let lookups = s.spawn(|| {
            let hash = support::hash_of(&bob_key);
            let mut seen = std::collections::BTreeMap::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = apis[i % 2].get(&format!("/v1/keys/{hash}"));
                slowest = slowest.max(started.elapsed());
                *seen.entry(r.status).or_insert(0u32) += 1;
                i += 1;
            }
            (seen, slowest)
        });
        std::thread::sleep(Duration::from_millis(500));

        pg.stop();
        let stopped = Instant::now();
        for api in &apis {
            assert!(
                eventually(Duration::from_secs(5), || ready(api) == 503),
                "/readyz still answers while PostgreSQL is down"
            );
        }
        // Down for a while, under load.
        std::thread::sleep(Duration::from_millis(2000).saturating_sub(stopped.elapsed()));
        pg.start_again();
        let restarted = Instant::now();
        for api in &apis {
            assert!(
                eventually(Duration::from_secs(10), || ready(api) == 200),
                "a replica did not recover: {}",
                servers[0].log()
            );
        }
        println!(
            "postgres restarted: replicas ready again {:?} after",
            restarted.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (gateway.join().unwrap(), lookups.join().unwrap())
    });
    println!("postgres restarted under load: gateway answers {gateway:?}, lookups {lookups:?}");
    // The gateway never lost its set: alice was allowed throughout.
    assert_eq!(
        gateway.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{gateway:?}"
    );
    // A lookup waits for a connection up to 3 s (so a short restart is ridden through)
    // and is answered 503 past that; either way it is answered.
    let (lookups, slowest) = lookups;
    assert!(
        lookups.keys().all(|s| [200, 503].contains(s)),
        "{lookups:?}"
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");

    // Writes work again through either replica and reach the gateway.
    let revoke = apis[1].delete(&format!("/v1/admin/keys/{alice_id}"));
    let revoked = Instant::now();
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let delay = time_until_refused(&envoy, &alice_key, revoked, Duration::from_secs(10));
    println!("postgres restarted: a revocation through replica 1 enforced after {delay:?}");
    assert_eq!(status(&envoy, &bob_key), 200);
    let log = servers[0].log();
    assert!(
        log.contains("cannot reach PostgreSQL"),
        "the outage was not logged: {log}"
    );
}
