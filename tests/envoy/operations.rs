//! Operating keygate in a real Envoy: a bad configuration is refused whole (README "Configuration reference"), the
//! counters appear on the admin endpoints (README "Stats"), and several workers agree.

use keygate_testkit as support;

use serde_json::{json, Value};
use support::{hash_of, Envoy, EnvoyOptions, Request, Upstream};

const KEY: &str = "kg_operations_test_key_4f1e2d3c";

fn good_config() -> Value {
    json!({
        "keys": [
            {"id": "ops-1", "hash": hash_of(KEY), "owner": "ops", "scopes": ["browse"]},
            {"id": "ops-old", "hash": hash_of("kg_old"), "owner": "ops", "scopes": ["browse"],
             "expires_at": "2020-01-01T00:00:00Z"},
            {"id": "ops-off", "hash": hash_of("kg_off"), "owner": "ops", "status": "disabled"}
        ],
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data", "scopes": ["browse"]},
            {"path_prefix": "/upload", "scopes": ["upload"]}
        ]
    })
}

/// Each configuration must stop Envoy, with a log line naming the field at fault.
#[test]
fn bad_configurations_are_refused_naming_the_field() {
    let upstream = Upstream::start();
    let good_hash = hash_of(KEY);
    let key = |extra: Value| {
        let mut record = json!({"id": "a", "hash": good_hash, "owner": "o"});
        for (k, v) in extra.as_object().unwrap() {
            record[k] = v.clone();
        }
        record
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({"keys": [key(json!({}))], "colour": "red"}), "colour"),
        (
            json!({"keys": [key(json!({"hash": "ABC"}))]}),
            "keys[0].hash",
        ),
        (
            json!({"keys": [key(json!({})), key(json!({"hash": hash_of("other")}))]}),
            "keys[1].id",
        ),
        (
            json!({"keys": [key(json!({})), key(json!({"id": "b"}))]}),
            "keys[1].hash",
        ),
        (
            json!({"keys": [key(json!({"expires_at": "next tuesday"}))]}),
            "keys[0].expires_at",
        ),
        (
            json!({"keys": [key(json!({"status": "paused"}))]}),
            "keys[0].status",
        ),
        (json!({"rules": []}), "keys"),
        (
            json!({"keys": [], "rules": [{"path_prefix": "/data"}]}),
            "rules[0]",
        ),
        (
            json!({"keys": [], "rules": [{"path": "/a/../b", "scopes": ["x"]}]}),
            "rules[0].path",
        ),
        (
            json!({"keys": [], "sources": [{"header": "bad header"}]}),
            "sources[0].header",
        ),
    ];
    for (config, field) in cases {
        let refused = Envoy::refuse(&config, &upstream);
        assert_ne!(refused.exit_code, Some(0), "{config}");
        let line = refused
            .log
            .lines()
            .find(|l| l.contains("keygate: invalid configuration"))
            .unwrap_or_else(|| panic!("no keygate error for {config}:\n{}", refused.log));
        assert!(
            line.contains(field),
            "{config}: expected the field {field} in {line}"
        );
        assert!(
            refused
                .log
                .contains(support::Build::current().refused_at_load()),
            "{}",
            refused.log
        );
    }
    assert!(upstream.take().is_empty());
}

/// Once the document's shape is right, every remaining problem is named, not just the first.
#[test]
fn every_problem_of_a_config_is_logged() {
    let upstream = Upstream::start();
    let config = json!({
        "realm": "",
        "keys": [{"id": "a", "hash": hash_of("k1"), "owner": "o"},
                 {"id": "a", "hash": hash_of("k2"), "owner": "o"}],
        "rules": [{"path_prefix": "/x"}]
    });
    let refused = Envoy::refuse(&config, &upstream);
    let errors: Vec<&str> = refused
        .log
        .lines()
        .filter(|l| l.contains("keygate: invalid configuration"))
        .collect();
    for field in ["realm", "keys[1].id", "rules[0]"] {
        assert!(
            errors.iter().any(|l| l.contains(field)),
            "{field} not named in {errors:#?}"
        );
    }
}

#[test]
fn counters_per_outcome_on_stats_and_prometheus() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&good_config(), &upstream);
    let sends: [(Request, u16, usize); 7] = [
        (Request::get("/data/x").bearer(KEY), 200, 3),
        (Request::get("/healthz"), 200, 2),
        (Request::get("/data/x"), 401, 4),
        (
            Request::get("/data/x").header("Authorization", "Basic !"),
            400,
            1,
        ),
        (Request::get("/data/x").bearer("kg_nope"), 401, 2),
        (Request::get("/data/x").bearer("kg_old"), 401, 1),
        (Request::get("/upload").bearer(KEY), 403, 2),
    ];
    for (request, status, times) in &sends {
        for _ in 0..*times {
            assert_eq!(envoy.send(request).status, *status, "{request:?}");
        }
    }
    assert_eq!(
        envoy.send(&Request::get("/data").bearer("kg_off")).status,
        401
    );
    assert_eq!(
        envoy.send(&Request::get("/nowhere").bearer(KEY)).status,
        403
    );

    envoy.await_stats_flush();
    let stats = envoy.keygate_stats();
    let expect = [
        ("allowed", 3),
        ("public", 2),
        ("denied.missing", 4),
        ("denied.malformed", 1),
        ("denied.invalid", 2),
        ("denied.expired", 1),
        ("denied.disabled", 1),
        ("denied.forbidden", 3),
        ("denied.unavailable", 0),
        ("keys_loaded", 3),
    ];
    for (name, value) in expect {
        // Under `wasmcustom.` or `dynamicmodulescustom.`, as the build defines them.
        let shown = stats.get(&support::keygate_stat_name(name));
        assert_eq!(shown, Some(&value), "{name}: {stats:?}");
    }

    let prometheus = envoy.admin_get("/stats/prometheus");
    for name in [
        "keygate_allowed",
        "keygate_denied_missing",
        "keygate_keys_loaded",
    ] {
        assert!(
            prometheus
                .lines()
                .any(|l| l.contains(name) && !l.starts_with('#')),
            "{name} not in /stats/prometheus"
        );
    }
}

/// Two workers, two VMs: each holds the configuration and their counts add up.
#[test]
fn two_workers_decide_alike() {
    let upstream = Upstream::start();
    let envoy = Envoy::start_with(
        &good_config(),
        &upstream,
        EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
    );
    let listener = envoy.listener;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let ok = support::request(listener, &Request::get("/data/a").bearer(KEY));
                    assert_eq!(ok.status, 200);
                    let denied = support::request(listener, &Request::get("/data/a"));
                    assert_eq!(denied.status, 401);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = upstream.take();
    assert_eq!(seen.len(), 60);
    assert!(seen
        .iter()
        .all(|s| s.header("x-api-key-id") == Some("ops-1")));
    envoy.await_stats_flush();
    let stats = envoy.keygate_stats();
    assert_eq!(
        stats.get(&support::keygate_stat_name("allowed")),
        Some(&60),
        "{stats:?}"
    );
    assert_eq!(
        stats.get(&support::keygate_stat_name("denied.missing")),
        Some(&60),
        "{stats:?}"
    );
    // Each worker's VM loaded the configuration; none was restarted.
    envoy.assert_no_vm_reload();
}
