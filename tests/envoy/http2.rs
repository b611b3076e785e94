//! What HTTP/2 lets a client send that HTTP/1.1 does not: a `:path` that is not UTF-8, and
//! request trailers. Neither may carry a key into Envoy's access log, nor an identity or
//! a credential to the upstream (README "What the upstream sees").

use keygate_testkit as support;

use keygate_testkit::h2 as h2client;

use serde_json::{json, Value};
use std::time::Duration;
use support::h2_upstream::{send_with_trailers, H2Upstream};
use support::key_service::KeyService;
use support::{hash_of, Envoy, EnvoyOptions, Upstream};

const KEY: &str = "kg_http2_browse_key_0123456789";

fn plugin_config() -> Value {
    support::immport_every_source(
        "api",
        json!([{"id": "id-h2", "hash": hash_of(KEY), "owner": "hana",
                "scopes": ["browse", "download"]}]),
    )
}

/// A refused request's `:path` is logged by Envoy as it stands: a query-parameter key in
/// a path that is not UTF-8 must be gone from it too.
#[test]
fn a_query_key_in_a_path_that_is_not_utf8_stays_out_of_the_access_log() {
    let upstream = Upstream::start();
    let mut bootstrap = support::bootstrap(&plugin_config(), upstream.addr, 0);
    let dir = support::TempDir::new("h2-access-log");
    let log = dir.path().join("access.log");
    support::with_access_log(&mut bootstrap, &log, "%REQ(:PATH)% %RESPONSE_CODE%\n");
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());

    let mut path = b"/data/query?q=caf\xe9&api_key=".to_vec();
    path.extend_from_slice(KEY.as_bytes());
    let fields: [(&[u8], &[u8]); 4] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"keygate.test"),
        (b":path", &path),
    ];
    let answer = h2client::send_raw(envoy.listener, &fields, b"");
    assert_eq!(answer.describe(), "400", "{answer:?}");
    let logged = support::logged(&log);
    let text = String::from_utf8_lossy(&logged);
    assert!(
        !text.contains(KEY),
        "the key reached the access log: {text}"
    );
    assert!(text.starts_with("/data/query?q=caf"), "{text}");
    assert!(text.trim_end().ends_with(" 400"), "{text}");
    assert!(upstream.take().is_empty());
}

/// Identity headers and credentials sent as request trailers never reach an HTTP/2
/// upstream, on a protected route (with a valid key) and on a public one (without); other
/// trailers pass.
#[test]
fn identity_and_credential_trailers_never_reach_the_upstream() {
    let upstream = H2Upstream::start();
    let mut bootstrap = support::bootstrap(&plugin_config(), upstream.addr, 0);
    bootstrap["static_resources"]["clusters"][0] = upstream.cluster();
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());

    let hostile = [
        ("x-api-key-id", "id-admin"),
        ("x-api-key-scopes", "admin"),
        ("x_api_key_owner", "mallory"),
        ("x-api-key-owner", "mallory"),
        ("authorization", "Bearer kg_someone_else"),
        ("x-api-key", "kg_someone_else"),
        ("x_api_key", "kg_someone_else"),
        ("x-checksum", "abc"),
    ];
    let auth = format!("Bearer {KEY}");
    for (target, headers) in [
        (
            "/data/download/file",
            vec![("authorization", auth.as_str())],
        ),
        ("/healthz", vec![]),
    ] {
        let status = send_with_trailers(
            envoy.listener,
            "POST",
            target,
            &headers,
            b"payload",
            &hostile,
        );
        assert_eq!(status, 200, "{target}");
        let seen = upstream.take();
        assert_eq!(seen.len(), 1, "{target}: {seen:?}");
        let seen = &seen[0];
        assert_eq!(seen.body, b"payload");
        assert_eq!(
            seen.trailer_names(),
            ["x-checksum"],
            "{target}: the upstream got trailers {:?}",
            seen.trailers
        );
        // The identity in the headers is keygate's, for the key that was checked.
        let id: Vec<_> = seen
            .headers
            .iter()
            .filter(|(n, _)| n == "x-api-key-id")
            .map(|(_, v)| v.as_slice())
            .collect();
        if target == "/healthz" {
            assert!(id.is_empty(), "{seen:?}");
        } else {
            assert_eq!(id, [b"id-h2".as_slice()], "{seen:?}");
        }
    }
}

/// In `lookup` mode the trailers may arrive while the request waits for the key service:
/// they are stripped then, before the request is held (once it goes on, they are not
/// shown to the filter again).
#[test]
fn trailers_that_arrive_while_the_key_is_looked_up_are_stripped_too() {
    if support::native_pending() {
        return;
    }
    let upstream = H2Upstream::start();
    let records = json!({"version": "1", "keys": [{"id": "id-h2", "hash": hash_of(KEY),
                         "owner": "hana", "scopes": ["download"]}]});
    let service = KeyService::start_on("127.0.0.1:0", records);
    service.delay_lookups(Duration::from_millis(500));
    let config = json!({
        "lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}", "timeout_ms": 2000},
        "rules": [{"path_prefix": "/data/download", "scopes": ["download"]}]
    });
    let mut bootstrap = support::bootstrap_with_key_service(&config, upstream.addr, service.addr);
    bootstrap["static_resources"]["clusters"][0] = upstream.cluster();
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());

    let auth = format!("Bearer {KEY}");
    let status = send_with_trailers(
        envoy.listener,
        "POST",
        "/data/download/file",
        &[("authorization", &auth)],
        b"payload",
        &[
            ("x-api-key-id", "id-admin"),
            ("x_api_key_scopes", "admin"),
            ("authorization", "Bearer kg_someone_else"),
            ("x-checksum", "abc"),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(service.calls().lookups.len(), 1);
    let seen = upstream.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].trailer_names(),
        ["x-checksum"],
        "{:?}",
        seen[0].trailers
    );
    assert!(seen[0]
        .headers
        .iter()
        .any(|(n, v)| n == "x-api-key-id" && v == b"id-h2"));
}
