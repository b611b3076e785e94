//! keygate's native build (`libkeygate_native.so`, an Envoy dynamic module; crates/native)
//! through a real Envoy 1.40: the same cases against the wasm filter and the native module,
//! answers compared byte for byte where they must agree (README "Native build (Envoy
//! dynamic module)").

use keygate_testkit as support;

use serde_json::{json, Value};
use support::{bootstrap, bootstrap_native, Envoy, EnvoyOptions, Request, Upstream};

use crate::requests::{immport_config as config, BROWSE, EXPIRED, UPLOAD};

#[derive(Clone, Copy, Debug)]
enum Build {
    Wasm,
    Native,
}

fn gateway(build: Build, config: &Value) -> (Upstream, Envoy) {
    let upstream = Upstream::start();
    let doc = match build {
        Build::Wasm => bootstrap(config, upstream.addr, 0),
        Build::Native => bootstrap_native(config, upstream.addr, 0),
    };
    let envoy = Envoy::start_bootstrap(&doc, EnvoyOptions::default());
    (upstream, envoy)
}

/// What a client sees of an answer: status, keygate's headers and the body.
fn seen_by_client(response: &support::Response) -> (u16, Vec<Option<String>>, String) {
    let headers = [
        "www-authenticate",
        "content-type",
        "cache-control",
        "retry-after",
    ]
    .iter()
    .map(|name| response.header(name).map(str::to_string))
    .collect();
    (response.status, headers, response.text())
}

/// The requests every build must answer alike.
fn requests() -> Vec<Request> {
    vec![
        Request::get("/data/query"),
        Request::get("/data/query").bearer("kg_not_a_key_at_all_0000"),
        Request::get("/data/query").bearer(EXPIRED),
        Request::get("/data/download/x.csv").bearer(BROWSE),
        Request::new("DELETE", "/data/query").bearer(BROWSE),
        Request::get("/nowhere").bearer(BROWSE),
        Request::get("/data/query")
            .bearer(BROWSE)
            .header("x-api-key", UPLOAD),
        Request::get(&format!("/data/download?api_key={BROWSE}")),
        Request::get("/data/query/../../admin/keys").bearer(BROWSE),
    ]
}

#[test]
fn native_answers_every_refusal_as_the_wasm_build_does() {
    let (wasm_upstream, wasm) = gateway(Build::Wasm, &config());
    let (native_upstream, native) = gateway(Build::Native, &config());
    for request in requests() {
        let expected = seen_by_client(&wasm.send(&request));
        let got = seen_by_client(&native.send(&request));
        assert_eq!(
            got,
            expected,
            "{} {:?}",
            request.method,
            String::from_utf8_lossy(&request.target)
        );
        assert!(expected.0 >= 400, "{expected:?}");
    }
    assert!(wasm_upstream.take().is_empty());
    assert!(native_upstream.take().is_empty());
}

#[test]
fn native_unknown_key_is_401_with_the_challenge() {
    let (upstream, envoy) = gateway(Build::Native, &config());
    let response = envoy.send(&Request::get("/data/query").bearer("kg_not_a_key_at_all_0000"));
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"error": "invalid_token", "error_description": "unknown API key"})
    );
    let challenge = response.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="immport", error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(upstream.take().is_empty());
}

#[test]
fn native_missing_scope_is_403() {
    let (upstream, envoy) = gateway(Build::Native, &config());
    let response = envoy.send(&Request::get("/data/download/x.csv").bearer(BROWSE));
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.json()["error"], json!("insufficient_scope"));
    assert!(upstream.take().is_empty());
}

#[test]
fn native_valid_key_reaches_upstream_with_identity_and_without_credential() {
    for build in [Build::Wasm, Build::Native] {
        let (upstream, envoy) = gateway(build, &config());
        let response = envoy.send(&Request::get("/data/query/studies?limit=10").bearer(BROWSE));
        assert_eq!(response.status, 200, "{build:?}: {}", response.text());
        let seen = upstream.take_one();
        assert_eq!(seen.target, "/data/query/studies?limit=10", "{build:?}");
        assert_eq!(seen.header("x-api-key-id"), Some("k-browse"), "{build:?}");
        assert_eq!(seen.header("x-api-key-owner"), Some("alice"), "{build:?}");
        assert_eq!(seen.header("x-api-key-scopes"), Some("browse"), "{build:?}");
        assert_eq!(seen.header("authorization"), None, "{build:?}");

        // A header key, and a query-parameter key taken out of the forwarded :path.
        let response = envoy.send(
            &Request::new("POST", &format!("/data/upload/b?a=1&api_key={UPLOAD}&b=2"))
                .header("x-api-key", UPLOAD)
                .body("{}"),
        );
        assert_eq!(response.status, 200, "{build:?}: {}", response.text());
        let seen = upstream.take_one();
        assert_eq!(seen.target, "/data/upload/b?a=1&b=2", "{build:?}");
        assert_eq!(seen.header("x-api-key"), None, "{build:?}");
        assert_eq!(seen.header("x-api-key-id"), Some("k-upload"), "{build:?}");
    }
}

#[test]
fn native_strips_spoofed_identity_headers() {
    let (upstream, envoy) = gateway(Build::Native, &config());
    // On a public route, without a key: no identity at all reaches the upstream.
    let response = envoy.send(
        &Request::get("/healthz")
            .header("x-api-key-id", "k-admin")
            .header("x-api-key-owner", "root")
            .header("x-api-key-scopes", "admin")
            .header("x_api_key_owner", "root"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    for name in [
        "x-api-key-id",
        "x-api-key-owner",
        "x-api-key-scopes",
        "x_api_key_owner",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    // With a key: the key's identity, not the client's.
    let response = envoy.send(
        &Request::get("/data/query")
            .bearer(BROWSE)
            .header("x-api-key-owner", "root")
            .header("x-api-key-scopes", "admin"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.values("x-api-key-owner"), vec!["alice"]);
    assert_eq!(seen.values("x-api-key-scopes"), vec!["browse"]);
}

#[test]
fn native_public_route_needs_no_key() {
    let (upstream, envoy) = gateway(Build::Native, &config());
    let response = envoy.send(&Request::get("/healthz"));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.target, "/healthz");
    assert_eq!(seen.header("x-api-key-id"), None);
}

#[test]
fn native_refuses_an_invalid_or_unsupported_config_at_load() {
    let upstream = Upstream::start();
    let refused = |config: &Value| match Envoy::try_start(
        &bootstrap_native(config, upstream.addr, 0),
        EnvoyOptions::default(),
    ) {
        Ok(envoy) => panic!("Envoy started with {config}:\n{}", envoy.log()),
        Err(refused) => refused.log,
    };
    let log = refused(&json!({"keys": [{"id": "k", "hash": "not-a-hash"}], "unknown_field": 1}));
    assert!(log.contains("keygate: invalid configuration"), "{log}");
    assert!(log.contains("keygate: configuration refused"), "{log}");

    let jwt = json!({"keys": [], "jwt": {}, "rules": support::immport_rules()});
    let log = refused(&jwt);
    assert!(
        log.contains("not supported by the native build yet"),
        "{log}"
    );
}

/// envoy/keygate-native.yaml loads (`envoy --mode validate`, the module loaded and its
/// configuration parsed), and Envoy finds the ABI version the module declares its own.
#[test]
fn native_example_config_validates_and_the_abi_matches() {
    let output = std::process::Command::new(support::envoy_binary())
        .args(["--mode", "validate", "--log-level", "info", "-c"])
        .arg(support::repo_root().join("envoy/keygate-native.yaml"))
        .env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            support::native_module_dir(),
        )
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched"),
        "{log}"
    );
    assert!(
        log.contains("keygate: configuration accepted (native"),
        "{log}"
    );
}

/// The module counts each request's outcome as the wasm build does, under Envoy's
/// dynamic-module stats namespace.
#[test]
fn native_counts_outcomes() {
    let (_upstream, envoy) = gateway(Build::Native, &config());
    assert_eq!(
        envoy
            .send(&Request::get("/data/query").bearer(BROWSE))
            .status,
        200
    );
    assert_eq!(
        envoy
            .send(&Request::get("/data/query").bearer(BROWSE))
            .status,
        200
    );
    assert_eq!(envoy.send(&Request::get("/data/query")).status, 401);
    assert_eq!(envoy.send(&Request::get("/healthz")).status, 200);
    // The wasm build's names, under `dynamicmodulescustom.` where wasm's are under
    // `wasmcustom.`.
    let stats = envoy.stats("keygate");
    let stat = |name: &str| stats.get(&format!("dynamicmodulescustom.keygate.{name}"));
    assert_eq!(stat("allowed"), Some(&2), "{stats:?}");
    assert_eq!(stat("denied.missing"), Some(&1), "{stats:?}");
    assert_eq!(stat("public"), Some(&1), "{stats:?}");
    assert_eq!(stat("denied.unavailable"), Some(&0), "{stats:?}");
}
