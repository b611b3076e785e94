//! Both builds side by side in one run (README "Native build (Envoy dynamic module)"):
//! the same requests to the wasm filter and the native module, answers compared byte for
//! byte. Every other Envoy test runs against one build, the one `KEYGATE_BUILD` names
//! (`make test` runs them once for each); this one compares them directly, whichever pass
//! it is in. Also the shipped native config, which only the native build loads.

use keygate_testkit as support;

use serde_json::{json, Value};
use support::{bootstrap_for, Build, Envoy, EnvoyOptions, Request, Upstream};

use crate::requests::{immport_config as config, BROWSE, EXPIRED, UPLOAD};

fn gateway(build: Build, config: &Value) -> (Upstream, Envoy) {
    let upstream = Upstream::start();
    let doc = bootstrap_for(build, config, upstream.addr, 0);
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
fn native_refuses_an_invalid_or_unsupported_config_at_load() {
    let upstream = Upstream::start();
    let refused = |config: &Value| match Envoy::try_start(
        &bootstrap_for(Build::Native, config, upstream.addr, 0),
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
