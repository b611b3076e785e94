//! The operator's whole path with a key service, through the shipped configs
//! `envoy/keygate-key-set.yaml` and `envoy/keygate-lookup.yaml`: `keygate new` writes
//! keys.json, `keygate serve` serves it, Envoy fetches (or looks up) through keygate, and
//! `keygate revoke` / `disable` take effect without restarting anything.

use keygate_testkit as support;
use keygate_testkit::cli as cli_support;

use cli_support::{key_file, keygate, new_scoped_key, Served};
use std::time::Duration;
use support::{eventually, free_port, Bootstrap, Envoy, EnvoyOptions, Request, Upstream};

/// A config under `envoy/` with its fixed ports and paths made to fit this test.
fn shipped_config(name: &str, port: u16, upstream: u16, key_service: u16) -> String {
    let path = support::repo_root().join("envoy").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let replaced = support::shipped_for_build(&text)
        .replace("port_value: 10000", &format!("port_value: {port}"))
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8082", &format!("port_value: {upstream}"))
        .replace("port_value: 8081", &format!("port_value: {key_service}"))
        .replace("\"refresh_seconds\": 30", "\"refresh_seconds\": 1")
        .replace("\"cache_seconds\": 60", "\"cache_seconds\": 1");
    for fixed in ["port_value: 10000", "port_value: 8081", "port_value: 8082"] {
        assert!(text.contains(fixed), "{name} no longer has {fixed:?}");
    }
    replaced
}

fn run(config: &str) {
    let (_dir, keys) = key_file("key-service");
    let browse = new_scoped_key(&keys, "alice", "browse", "30d", &[]);
    let upload = new_scoped_key(&keys, "ci", "browse,upload", "never", &[]);
    let served = Served::start(&keys);
    let upstream = Upstream::start();
    let text = shipped_config(
        config,
        free_port(),
        upstream.addr.port(),
        served.addr.port(),
    );
    let envoy = Envoy::start_from(
        Bootstrap::Yaml(&text),
        EnvoyOptions {
            concurrency: 2,
            port: 0,
            ..EnvoyOptions::default()
        },
    );
    let status = |key: &str, path: &str| envoy.send(&Request::get(path).bearer(key)).status;
    assert!(
        eventually(Duration::from_secs(10), || status(
            &browse.api_key,
            "/data/query/x"
        ) == 200),
        "{config}: never allowed:\n{}\n{}",
        envoy.log(),
        served.log()
    );
    let seen = upstream.take();
    assert_eq!(
        seen.last().unwrap().header("x-api-key-owner"),
        Some("alice")
    );
    assert_eq!(status(&browse.api_key, "/data/download/x"), 403);
    assert_eq!(status(&upload.api_key, "/data/query/x"), 200);

    let keys_arg = keys.to_str().unwrap();
    keygate(&["revoke", &browse.id, "--keys", keys_arg]).ok();
    keygate(&["disable", &upload.id, "--keys", keys_arg]).ok();
    // refresh (or cache) 1 s, then one more for every worker to see it.
    assert!(
        eventually(Duration::from_secs(4), || {
            (0..10).all(|_| status(&browse.api_key, "/data/query/x") == 401)
        }),
        "{config}: revoked key still allowed"
    );
    assert!(eventually(Duration::from_secs(4), || {
        let answer = envoy.send(&Request::get("/data/query/x").bearer(&upload.api_key));
        answer.status == 401 && answer.json()["error_description"] == "API key disabled"
    }));
    keygate(&["enable", &upload.id, "--keys", keys_arg]).ok();
    assert!(eventually(Duration::from_secs(4), || status(
        &upload.api_key,
        "/data/query/x"
    ) == 200));
}

#[test]
fn fetched_key_set_from_keygate_serve() {
    run("keygate-key-set.yaml");
}

#[test]
fn per_key_lookup_on_keygate_serve() {
    run("keygate-lookup.yaml");
}
