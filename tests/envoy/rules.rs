//! Rules and methods through a real Envoy (README "Configuration reference"): a rule's
//! `methods` narrow its path, they never hand the other methods to `unmatched`; a read-only
//! key cannot open a channel that writes (an `Upgrade` such as WebSocket).

use keygate_testkit as support;

use serde_json::{json, Value};
use std::time::Duration;
use support::{hash_of, Envoy, EnvoyOptions, Request, Response, Upstream};

const BROWSE: &str = "kg_rules_browse_8a7b6c5d4e3f2a1b0c9d";
const ADMIN: &str = "kg_rules_admin_1f2e3d4c5b6a79880a1b";
const READ_ONLY: &str = "kg_rules_readonly_0a9b8c7d6e5f4a3b2c1d";

fn keys() -> Value {
    json!([
        {"id": "k-browse", "hash": hash_of(BROWSE), "owner": "alice", "scopes": ["browse"]},
        {"id": "k-admin", "hash": hash_of(ADMIN), "owner": "root",
         "scopes": ["admin", "browse", "upload"]},
        {"id": "k-readonly", "hash": hash_of(READ_ONLY), "owner": "reader",
         "scopes": ["admin", "browse", "upload"], "read_only": true}
    ])
}

/// The issue's configuration: method-limited rules, everything else to any valid key.
fn authenticate_config(unmatched: &str) -> Value {
    json!({
        "keys": keys(),
        "rules": [
            {"path_prefix": "/admin", "methods": ["GET", "HEAD"], "scopes": ["admin"]},
            {"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]}
        ],
        "unmatched": unmatched
    })
}

fn assert_forbidden(upstream: &Upstream, response: &Response, description: &str) {
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"error": "insufficient_scope", "error_description": description})
    );
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            r#"Bearer realm="api", error="insufficient_scope", ApiKey realm="api", Basic realm="api""#
        )
    );
    let seen = upstream.take();
    assert!(
        seen.is_empty(),
        "a refused request reached upstream: {seen:?}"
    );
}

#[test]
fn methods_a_rule_does_not_list_are_not_handed_to_authenticate() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&authenticate_config("authenticate"), &upstream);
    for (method, path) in [
        ("POST", "/admin/users"),
        ("DELETE", "/admin/users/1"),
        ("PATCH", "/data/upload/f"),
        ("GET", "/data/upload/f"),
    ] {
        for key in [BROWSE, ADMIN] {
            let response = envoy.send(&Request::new(method, path).bearer(key).body("{}"));
            assert_forbidden(
                &upstream,
                &response,
                "no rule allows this method on this path",
            );
        }
    }
    // What the rules list still needs its scopes, and passes with them.
    let response = envoy.send(&Request::get("/admin/users").bearer(BROWSE));
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(upstream.take().is_empty());
    let response = envoy.send(&Request::get("/admin/users").bearer(ADMIN));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.take_one().header("x-api-key-id"), Some("k-admin"));
    let response = envoy.send(
        &Request::new("PUT", "/data/upload/f")
            .bearer(ADMIN)
            .body("x"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    upstream.take_one();
    // A path no rule covers is still `authenticate`'s: any valid key, any method.
    let response = envoy.send(&Request::new("DELETE", "/other/1").bearer(BROWSE));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.take_one().header("x-api-key-id"), Some("k-browse"));
    // Without a key, the uncovered method is refused like a closed route.
    let response = envoy.send(&Request::new("POST", "/admin/users").body("{}"));
    assert_forbidden(
        &upstream,
        &response,
        "no rule allows this method on this path",
    );
}

#[test]
fn methods_a_rule_does_not_list_stay_refused_under_deny() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&authenticate_config("deny"), &upstream);
    let response = envoy.send(
        &Request::new("POST", "/admin/users")
            .bearer(ADMIN)
            .body("{}"),
    );
    assert_forbidden(
        &upstream,
        &response,
        "no rule allows this method on this path",
    );
    let response = envoy.send(&Request::get("/other").bearer(ADMIN));
    assert_forbidden(&upstream, &response, "no rule allows this route");
}

/// A listener whose connection manager accepts WebSocket upgrades.
fn websocket_gateway() -> (Upstream, Envoy) {
    let upstream = Upstream::start();
    let config = json!({
        "keys": keys(),
        "rules": [{"path_prefix": "/ws", "scopes": ["browse"]}],
        "unmatched": "deny"
    });
    let mut bootstrap = support::bootstrap(&config, upstream.addr, 0);
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());
    (upstream, envoy)
}

fn websocket(key: &str) -> Request {
    Request::get("/ws/feed")
        .bearer(key)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
}

#[test]
fn a_read_only_key_cannot_open_a_websocket() {
    let (upstream, envoy) = websocket_gateway();
    let response = envoy.send(&websocket(READ_ONLY));
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"error": "insufficient_scope",
               "error_description": "read-only API key may not upgrade the connection"})
    );
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            r#"Bearer realm="api", error="insufficient_scope", ApiKey realm="api", Basic realm="api""#
        )
    );
    let seen = upstream.take();
    assert!(seen.is_empty(), "the upgrade reached upstream: {seen:?}");

    // The same read-only key may still read without upgrading.
    let response = envoy.send(&Request::get("/ws/feed").bearer(READ_ONLY));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.take_one().header("x-api-key-id"),
        Some("k-readonly")
    );
    // curl --http2 over cleartext offers `Upgrade: h2c`; Envoy drops the offer before
    // keygate runs, so it reads as the plain GET it is.
    let response = envoy.send(
        &Request::get("/ws/feed")
            .bearer(READ_ONLY)
            .header("Connection", "Upgrade, HTTP2-Settings")
            .header("Upgrade", "h2c")
            .header("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.take_one().header("upgrade"), None);
}

#[test]
fn a_key_that_may_write_reaches_the_upstream_with_its_upgrade() {
    let (upstream, envoy) = websocket_gateway();
    // The echo upstream does not speak WebSocket: it answers the upgrade request with 200.
    let response = envoy.send(&websocket(BROWSE));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("x-api-key-id"), Some("k-browse"));
}

#[test]
fn an_apikey_only_route_challenges_with_apikey_and_names_the_scheme() {
    let upstream = Upstream::start();
    let config = json!({
        "realm": "immune",
        "sources": [{"authorization": {"schemes": ["ApiKey"]}}],
        "keys": keys(),
        "rules": [{"path_prefix": "/v1/sensors", "methods": ["GET"], "scopes": ["browse"]}]
    });
    let envoy = Envoy::start(&config, &upstream);
    for request in [
        Request::get("/v1/sensors"),
        Request::get("/v1/sensors").bearer(BROWSE),
    ] {
        let response = envoy.send(&request);
        assert_eq!(response.status, 401, "{}", response.text());
        assert_eq!(
            response.header("www-authenticate"),
            Some(r#"ApiKey realm="immune""#)
        );
        assert_eq!(
            response.json(),
            json!({"error": "unauthorized",
                   "error_description": "API key required; accepted: Authorization: ApiKey"})
        );
        assert!(!response.text().contains(BROWSE));
    }
    let response = envoy.send(&Request::get("/v1/sensors").bearer("kg_unknown_0123456789"));
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some(r#"ApiKey realm="immune""#)
    );
    assert!(upstream.take().is_empty());
    let response = envoy
        .send(&Request::get("/v1/sensors").header("Authorization", format!("ApiKey {BROWSE}")));
    assert_eq!(response.status, 200, "{}", response.text());
    upstream.take_one();
}

#[test]
fn a_key_without_scopes_reaches_the_upstream_with_an_empty_scopes_header() {
    let upstream = Upstream::start();
    let config = json!({
        "keys": [{"id": "k-none", "hash": hash_of(BROWSE), "owner": "nobody"}],
        "unmatched": "authenticate"
    });
    let envoy = Envoy::start(&config, &upstream);
    let response = envoy.send(
        &Request::get("/anything")
            .bearer(BROWSE)
            .header("x-api-key-scopes", "admin"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-id"), Some("k-none"));
    // Envoy 1.40's dynamic-module ABI removes a header set to an empty value (README "What
    // the upstream sees"): the native build sends none; the spoofed value is gone on both.
    let empty: &[&str] = match support::Build::current() {
        support::Build::Wasm => &[""],
        support::Build::Native => &[],
    };
    assert_eq!(seen.values("x-api-key-scopes"), empty);
}

#[test]
fn an_unreachable_rule_is_warned_about_in_the_load_log() {
    let upstream = Upstream::start();
    let config = json!({
        "keys": keys(),
        "rules": [
            {"path_prefix": "/admin", "scopes": ["admin"]},
            {"path": "/admin/users", "methods": ["GET"], "scopes": ["browse"]}
        ]
    });
    let envoy = Envoy::start(&config, &upstream);
    let warning = "keygate: configuration warning: rules[1]: is unreachable: rules[0] matches \
                   every request it matches (path \"/admin/users\", methods GET) first";
    // Envoy writes its log file in its own time.
    assert!(
        support::eventually(Duration::from_secs(10), || envoy.log().contains(warning)),
        "{}",
        envoy.log()
    );
    // A warning does not refuse the configuration.
    let response = envoy.send(&Request::get("/admin/users").bearer(ADMIN));
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn a_read_only_key_cannot_open_a_websocket_over_http2() {
    let upstream = Upstream::start();
    let config = json!({
        "keys": keys(),
        "rules": [{"path_prefix": "/ws", "scopes": ["browse"]}]
    });
    let mut bootstrap = support::bootstrap(&config, upstream.addr, 0);
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
    hcm["http2_protocol_options"] = json!({"allow_connect": true});
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());
    // RFC 8441: WebSocket over HTTP/2 is an extended CONNECT naming it in `:protocol`.
    let connect = |key: &str| {
        let authorization = format!("Bearer {key}");
        let fields = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", "/ws/feed"),
            (":authority", "keygate.test"),
            ("sec-websocket-version", "13"),
            ("authorization", authorization.as_str()),
        ];
        support::h2::send_raw(envoy.listener, &fields, b"")
    };
    match connect(READ_ONLY) {
        support::h2::Answer::Response { status, body } => {
            assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body["error_description"],
                "read-only API key may not upgrade the connection"
            );
        }
        other => panic!("expected 403, got {}", other.describe()),
    }
    let seen = upstream.take();
    assert!(seen.is_empty(), "the upgrade reached upstream: {seen:?}");
}
