//! An inline key set updated without a restart (README "Changing keys without a restart"): Envoy watches its listener file
//! (LDS from a path); rewriting it adds a key, revokes one and disables another, while
//! requests with a key valid throughout keep succeeding. A bad update is refused and the
//! running configuration stays.

use keygate_testkit as support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::held_back::HeldBack;
use support::{hash_of, Background, Envoy, EnvoyOptions, Request, TempDir, Upstream};

const STAYS: &str = "kg_reload_valid_throughout";
const REVOKED: &str = "kg_reload_revoked_in_update";
const DISABLED: &str = "kg_reload_disabled_in_update";
const ADDED: &str = "kg_reload_added_in_update";

/// A configuration whose keys are given as (id, key, status), every one holding `browse`.
fn plugin_config(keys: &[(&str, &str, &str)]) -> Value {
    let records: Vec<Value> = keys
        .iter()
        .map(|(id, key, status)| {
            json!({"id": id, "hash": hash_of(key), "owner": "reload", "scopes": ["browse"],
                   "status": status})
        })
        .collect();
    json!({"keys": records, "rules": [{"path_prefix": "/", "scopes": ["browse"]}]})
}

/// Replaces the listener file in one step, as Envoy's file watch expects.
fn write_listener(file: &Path, plugin_config: &Value, port: u16) {
    let mut listener = support::listener(plugin_config, port);
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let doc = json!({"resources": [listener]});
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A bootstrap whose listeners come from the file `lds` (Envoy watches it), with `clusters`.
fn lds_bootstrap(lds: &Path, clusters: Vec<Value>) -> Value {
    json!({
        "node": {"id": "keygate-reload-test", "cluster": "keygate"},
        "admin": support::admin(),
        "dynamic_resources": {"lds_config": {
            "path_config_source": {"path": lds},
            "resource_api_version": "V3"
        }},
        "static_resources": {"clusters": clusters}
    })
}

fn status(envoy: &Envoy, key: &str) -> u16 {
    envoy.send(&Request::get("/data").bearer(key)).status
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .admin_get(&format!("/stats?filter=^{name}$"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rewriting_the_inline_key_set_takes_effect_without_restart() {
    let dir = TempDir::new("lds");
    let lds = dir.join("listeners.json");
    let port = support::free_port();
    let before = [
        ("stays", STAYS, "enabled"),
        ("revoked", REVOKED, "enabled"),
        ("disabled", DISABLED, "enabled"),
    ];
    write_listener(&lds, &plugin_config(&before), port);
    let upstream = Upstream::start();
    let bootstrap = lds_bootstrap(&lds, vec![support::upstream_cluster(upstream.addr)]);
    let envoy = Envoy::start_bootstrap(
        &bootstrap,
        EnvoyOptions {
            // The refused update's log line is read below: written out within 100 ms, not
            // Envoy's default 10 s.
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    );
    assert_eq!(status(&envoy, STAYS), 200);
    assert_eq!(status(&envoy, REVOKED), 200);
    assert_eq!(status(&envoy, DISABLED), 200);
    assert_eq!(status(&envoy, ADDED), 401);
    let updates_before = stat(&envoy, "listener_manager.lds.update_success");

    // A client using a key valid before and after sees no failure during the switch.
    let listener = envoy.listener;
    let steady = Background::start(move |stop| {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) && answers.len() < 5000 {
            let response = support::request(listener, &Request::get("/data").bearer(STAYS));
            answers.push(response.status);
        }
        answers
    });

    let after = [
        ("stays", STAYS, "enabled"),
        ("disabled", DISABLED, "disabled"),
        ("added", ADDED, "enabled"),
    ];
    write_listener(&lds, &plugin_config(&after), port);
    wait_for("the added key", || status(&envoy, ADDED) == 200);
    assert_eq!(status(&envoy, REVOKED), 401);
    let response = envoy.send(&Request::get("/data").bearer(DISABLED));
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error_description"], "API key disabled");

    let answers = steady.stop();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|s| *s == 200),
        "a request with a valid key failed during the update: {answers:?}"
    );
    assert!(stat(&envoy, "listener_manager.lds.update_success") > updates_before);

    // A broken update is refused whole; the configuration in force stays.
    let rejected_before = stat(&envoy, "listener_manager.lds.update_rejected");
    let mut broken = plugin_config(&[("stays", STAYS, "enabled")]);
    broken["keys"][0]["hash"] = json!("not-a-hash");
    write_listener(&lds, &broken, port);
    wait_for("the rejected update", || {
        stat(&envoy, "listener_manager.lds.update_rejected") > rejected_before
    });
    assert_eq!(status(&envoy, ADDED), 200);
    assert_eq!(status(&envoy, REVOKED), 401);
    // The log line may reach Envoy's log file a little after the counter moved.
    assert!(
        support::eventually(Duration::from_secs(10), || envoy
            .log()
            .contains("keys[0].hash")),
        "{}",
        envoy.log()
    );
    drop(envoy);
    assert!(upstream.take().len() > 3);
}

/// A configuration replaced while its key set is still arriving: Envoy drops the old
/// configuration's fetch (the native build ends its stream first, so that Envoy never calls
/// into a configuration that is gone), serves the new one at once, and stays up.
#[test]
fn replacing_a_key_set_configuration_while_its_set_arrives_keeps_envoy_serving() {
    let records: Vec<Value> = (0..200)
        .map(|i| {
            json!({"id": format!("k{i}"), "hash": hash_of(&format!("kg_trickled_{i}")),
                   "owner": "reload", "scopes": ["browse"]})
        })
        .collect();
    let doc = serde_json::to_vec(&json!({"version": "1", "keys": records})).unwrap();
    let service = HeldBack::start(doc, Duration::from_secs(3));

    let dir = TempDir::new("lds");
    let lds = dir.join("listeners.json");
    let port = support::free_port();
    let fetched = json!({
        "key_set": {"cluster": "trickle", "path": "/v1/keyset", "watch_seconds": 0,
                    "refresh_seconds": 30, "timeout_ms": 20000},
        "rules": [{"path_prefix": "/", "scopes": ["browse"]}]
    });
    write_listener(&lds, &fetched, port);
    let upstream = Upstream::start();
    let bootstrap = lds_bootstrap(
        &lds,
        vec![
            support::upstream_cluster(upstream.addr),
            support::key_service_cluster("trickle", service.addr),
        ],
    );
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());
    wait_for("the first half of the set", || service.begun() >= 1);
    // Still arriving: nothing in force.
    assert_eq!(status(&envoy, "kg_trickled_1"), 503);

    write_listener(&lds, &plugin_config(&[("added", ADDED, "enabled")]), port);
    wait_for("the new configuration", || status(&envoy, ADDED) == 200);
    assert_eq!(status(&envoy, "kg_trickled_1"), 401);
    // The old configuration's fetch, ended or not, reaches nothing: Envoy keeps serving
    // after the rest of the set would have come.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(status(&envoy, ADDED), 200);
    assert!(
        envoy.admin_get("/ready").contains("LIVE"),
        "{}",
        envoy.log()
    );
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}
