//! `lookup` mode's watch through a real Envoy with 2 workers and the real `keygate serve`
//! (README "Watching for changes"): a revoked key is refused by every worker within about
//! a second although its answer is cached for 60 s; a restarted key service (a new epoch)
//! drops every cached answer; a long-poll that times out is made again at once; a key
//! service without the change feed still serves lookups as before; with `keygate serve
//! --db`, a key revoked through the admin API is refused within a second.

use keygate_testkit as support;
use keygate_testkit::cli as cli_support;

use cli_support::{keygate, new_key, Scratch};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::key_service::KeyService;
use support::{
    bootstrap_with_key_service, eventually, free_port, hash_of, Envoy, EnvoyOptions, Request,
    Upstream,
};

fn plugin_config(cache_seconds: u32, watch_seconds: u32) -> Value {
    json!({
        "lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}",
                   "cache_seconds": cache_seconds, "negative_cache_seconds": 60,
                   "timeout_ms": 1000, "watch_seconds": watch_seconds},
        "rules": [{"path_prefix": "/data", "scopes": ["browse"]}]
    })
}

fn start_envoy(upstream: &Upstream, key_service: SocketAddr, config: &Value) -> Envoy {
    Envoy::start_bootstrap(
        &bootstrap_with_key_service(config, upstream.addr, key_service),
        EnvoyOptions {
            concurrency: 2,
            // The log is read by the tests: written out at once.
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    )
}

/// How many of the key service's answers were 304 (Envoy counts them per cluster).
pub(crate) fn not_modified(envoy: &Envoy) -> u64 {
    envoy
        .stats("cluster.keyservice.upstream_rq_304")
        .get("cluster.keyservice.upstream_rq_304")
        .copied()
        .unwrap_or(0)
}

pub(crate) fn status(envoy: &Envoy, key: &str) -> u16 {
    envoy.send(&Request::get("/data").bearer(key)).status
}

/// `keygate serve` on a given port, so that it can be restarted on the same one.
pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Serve {
    pub(crate) fn start(keys: &Path, port: u16, log: &Path) -> Serve {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(support::keygate_binary())
            .args(["serve", "--keys", keys.to_str().unwrap(), "--listen"])
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let started = eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("listening on")
        });
        assert!(
            started,
            "keygate serve did not start: {:?}",
            std::fs::read_to_string(log)
        );
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy runs a VM per worker and one on its main thread, and each follows the feed.
const VMS: u64 = 3;

/// Waits until every VM follows the feed (each counts its first answer).
fn await_watching(envoy: &Envoy, workers: u64) {
    assert!(
        eventually(Duration::from_secs(10), || envoy
            .keygate_stat("lookup.watch_changes")
            >= workers),
        "the workers do not follow the change feed: {:?}",
        envoy.keygate_stats()
    );
}

/// Sends `key` until both workers have asked for it (`calls` lookups in all): each then
/// holds its answer.
fn cache_on_every_worker(envoy: &Envoy, keys: &[&str], expected: u16, calls: u64) {
    let cached = eventually(Duration::from_secs(15), || {
        for _ in 0..6 {
            for key in keys {
                assert_eq!(status(envoy, key), expected);
            }
        }
        envoy.await_stats_flush();
        envoy.keygate_stat("lookup.calls") >= calls
    });
    assert!(
        cached,
        "not every worker asked: {:?}",
        envoy.keygate_stats()
    );
}

/// From now, how long until `key` is refused by every worker: 20 refusals in a row (each
/// request is a new connection, which either worker may take). The time of the first of
/// them.
pub(crate) fn time_until_refused(
    envoy: &Envoy,
    key: &str,
    since: Instant,
    within: Duration,
) -> Duration {
    let mut streak: Option<Duration> = None;
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(
            since.elapsed() < within,
            "{key} still allowed after {within:?}: {:?}",
            envoy.keygate_stats()
        );
        if status(envoy, key) == 200 {
            streak = None;
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(10));
        } else {
            streak.get_or_insert_with(|| since.elapsed());
            in_a_row += 1;
        }
    }
    streak.unwrap()
}

/// Over 4 s of 1 s long-polls, by `pollers` VMs, each answered 304 and made again at
/// once; then `key` is revoked in `keys`: how long until every worker refuses it.
pub(crate) fn long_polls_loop_then_revoke(
    envoy: &Envoy,
    pollers: u64,
    keys: &Path,
    key: &cli_support::Issued,
) -> Duration {
    let before = not_modified(envoy);
    std::thread::sleep(Duration::from_secs(4));
    let timed_out = not_modified(envoy) - before;
    assert!(
        (3 * pollers..=5 * pollers).contains(&timed_out),
        "{timed_out} long-polls in 4 s by {pollers} pollers"
    );
    keygate(&["revoke", &key.id, "--keys", keys.to_str().unwrap()]).ok();
    time_until_refused(envoy, &key.api_key, Instant::now(), Duration::from_secs(3))
}

/// `keygate serve --db` holding alice's and bob's keys (scope browse), made through its
/// admin API.
pub(crate) struct DbWithAliceAndBob {
    _dir: Scratch,
    pub served: support::keysvc::Server,
    pub api: support::keysvc::Client,
    pub alice_id: String,
    pub alice_key: String,
    pub bob_key: String,
}

impl DbWithAliceAndBob {
    pub(crate) fn start(name: &str) -> DbWithAliceAndBob {
        let (dir, db, admin) = support::keysvc::scratch_db(name);
        let (served, api) = support::keysvc::Server::start_db(&db, &admin);
        let (alice_id, alice_key) = api.create_browse_key("alice");
        let (_, bob_key) = api.create_browse_key("bob");
        DbWithAliceAndBob {
            _dir: dir,
            served,
            api,
            alice_id,
            alice_key,
            bob_key,
        }
    }
}

/// A scratch directory whose keys.json holds alice's and bob's keys (from `issue`).
pub(crate) fn alice_and_bob(
    name: &str,
) -> (
    Scratch,
    std::path::PathBuf,
    cli_support::Issued,
    cli_support::Issued,
) {
    let dir = Scratch::new(name);
    let keys = dir.join("keys.json");
    let alice = issue(&keys, "alice");
    let bob = issue(&keys, "bob");
    (dir, keys, alice, bob)
}

pub(crate) fn issue(keys: &Path, owner: &str) -> cli_support::Issued {
    new_key(
        keys,
        &[
            "--owner",
            owner,
            "--scopes",
            "browse",
            "--expires-in",
            "never",
        ],
    )
}

#[test]
fn a_revoked_key_is_refused_by_every_worker_within_a_second_or_so() {
    if support::native_pending() {
        return;
    }
    let (dir, keys, alice, bob) = alice_and_bob("lookup-watch-revoke");
    let served = Serve::start(&keys, free_port(), &dir.join("serve.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, &plugin_config(60, 25));
    await_watching(&envoy, VMS);

    cache_on_every_worker(&envoy, &[&alice.api_key, &bob.api_key], 200, 4);
    let calls = envoy.keygate_stat("lookup.calls");
    keygate(&["revoke", &alice.id, "--keys", keys.to_str().unwrap()]).ok();
    let revoked = Instant::now();
    let delay = time_until_refused(&envoy, &alice.api_key, revoked, Duration::from_secs(3));
    println!("revocation enforced by every worker after {delay:?} (cache_seconds 60)");
    assert!(delay <= Duration::from_secs(3), "{delay:?}");

    // Bob did not change: still answered from the cache, by both workers.
    for _ in 0..10 {
        assert_eq!(status(&envoy, &bob.api_key), 200);
    }
    envoy.await_stats_flush();
    // Each worker asked again for alice (and only for her).
    assert_eq!(envoy.keygate_stat("lookup.calls"), calls + 2);
    assert!(envoy.keygate_stat("lookup.watch_changes") > VMS);
    assert_eq!(envoy.keygate_stat("lookup.watch_failed"), 0);
    // No key went to the key service, only hashes.
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(!log.contains(&alice.api_key));
}

#[test]
fn a_restarted_key_service_is_a_new_epoch_and_every_cached_answer_goes() {
    if support::native_pending() {
        return;
    }
    let (dir, keys, alice, bob) = alice_and_bob("lookup-watch-restart");
    let port = free_port();
    let served = Serve::start(&keys, port, &dir.join("serve-1.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, &plugin_config(60, 25));
    await_watching(&envoy, VMS);
    cache_on_every_worker(&envoy, &[&alice.api_key, &bob.api_key], 200, 4);

    // The key service goes away; cached answers still serve.
    drop(served);
    for _ in 0..10 {
        assert_eq!(status(&envoy, &alice.api_key), 200);
    }
    // Changed while no feed could tell: only the new epoch says so.
    keygate(&["revoke", &alice.id, "--keys", keys.to_str().unwrap()]).ok();
    let served = Serve::start(&keys, port, &dir.join("serve-2.log"));
    let restarted = Instant::now();
    let delay = time_until_refused(&envoy, &alice.api_key, restarted, Duration::from_secs(8));
    println!("after a restart (new epoch), refused by every worker after {delay:?}");
    for _ in 0..10 {
        assert_eq!(status(&envoy, &bob.api_key), 200);
    }
    envoy.await_stats_flush();
    assert!(
        envoy.keygate_stat("lookup.watch_failed") >= 2,
        "{:?}",
        envoy.keygate_stats()
    );
    drop(served);
}

#[test]
fn a_long_poll_that_times_out_is_made_again_without_a_gap() {
    if support::native_pending() {
        return;
    }
    let dir = Scratch::new("lookup-watch-304");
    let keys = dir.join("keys.json");
    let alice = issue(&keys, "alice");
    let served = Serve::start(&keys, free_port(), &dir.join("serve.log"));
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, &plugin_config(60, 1));
    await_watching(&envoy, VMS);
    cache_on_every_worker(&envoy, &[&alice.api_key], 200, 2);

    // Long-polls of 1 s, over 4 s: each VM's are answered 304 and made again.
    let delay = long_polls_loop_then_revoke(&envoy, VMS, &keys, &alice);
    println!("after 304 loops, refused by every worker after {delay:?}");
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("lookup.watch_failed"), 0);
}

#[test]
fn a_key_service_without_the_feed_still_serves_lookups() {
    if support::native_pending() {
        return;
    }
    const ALICE: &str = "kg_watch_alice_key";
    let doc = |keys: Vec<Value>| json!({"version": "1", "keys": keys});
    let alice = json!({"id": "alice", "hash": hash_of(ALICE), "owner": "alice",
                       "scopes": ["browse"]});
    // The test kit's service answers /v1/changes 404, as nginx serving files would.
    let service = KeyService::start_on("127.0.0.1:0", doc(vec![alice]));
    let upstream = Upstream::start();
    let started = Instant::now();
    let envoy = start_envoy(&upstream, service.addr, &plugin_config(1, 25));
    assert_eq!(status(&envoy, ALICE), 200);

    service.set_doc(doc(vec![]));
    assert!(
        eventually(Duration::from_secs(5), || status(&envoy, ALICE) == 401),
        "the cached answer did not expire"
    );
    // Failures are counted and backed off (1 s, 2 s, 4 s...), not repeated every tick.
    let waited = Duration::from_millis(4500).saturating_sub(started.elapsed());
    std::thread::sleep(waited);
    envoy.await_stats_flush();
    let failed = envoy.keygate_stat("lookup.watch_failed");
    assert!((VMS..=4 * VMS).contains(&failed), "{failed} failures");
    assert_eq!(envoy.keygate_stat("lookup.failed"), 0);
    assert_eq!(envoy.keygate_stat("lookup.watch_changes"), 0);
    let log = envoy.log();
    assert!(log.contains("no change feed (404)"), "{log}");
    // Warned once per VM, not once per failure.
    assert_eq!(
        log.matches("no change feed (404)").count() as u64,
        VMS,
        "{log}"
    );
}

/// The same through `keygate serve --db`: a key revoked through the admin API is refused
/// (401) by every worker within about a second, its answer cached for 60 s.
#[test]
fn a_key_revoked_through_the_admin_api_is_refused_by_every_worker_within_a_second() {
    if support::native_pending() {
        return;
    }
    let db = DbWithAliceAndBob::start("lookup-watch-db");
    let (served, api, alice_id) = (&db.served, &db.api, &db.alice_id);
    let (alice_key, bob_key) = (db.alice_key.as_str(), db.bob_key.as_str());
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream, served.addr, &plugin_config(60, 25));
    await_watching(&envoy, VMS);

    cache_on_every_worker(&envoy, &[alice_key, bob_key], 200, 4);
    let calls = envoy.keygate_stat("lookup.calls");
    let revoke = api.delete(&format!("/v1/admin/keys/{alice_id}"));
    let revoked = Instant::now();
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let delay = time_until_refused(&envoy, alice_key, revoked, Duration::from_secs(3));
    println!("db mode: revocation enforced by every worker after {delay:?} (cache_seconds 60)");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    assert_eq!(status(&envoy, alice_key), 401);

    for _ in 0..10 {
        assert_eq!(status(&envoy, bob_key), 200);
    }
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("lookup.calls"), calls + 2);
    assert_eq!(envoy.keygate_stat("lookup.watch_failed"), 0);
    assert!(!served.log().contains(alice_key));
}
