//! `keygate serve --db` behind Envoy 1.40 in key_set mode over mTLS: the `keyservice`
//! cluster has an UpstreamTlsContext with a client certificate (all certificates made at
//! test time). A key created through the admin API is allowed after the next sync; a
//! revoked one gets 401; revoking all of an owner's keys gets 401 for each.

use keygate_testkit as support;

use keygate_testkit::keysvc::tls::Pki;
use keygate_testkit::keysvc::{arg, TlsDb};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::{bootstrap_with_key_service, eventually, Envoy, EnvoyOptions, Request, Upstream};

fn plugin_config() -> Value {
    json!({
        "key_set": {"cluster": "keyservice", "path": "/v1/keyset", "authority": "keyservice",
                    "refresh_seconds": 1, "timeout_ms": 1000},
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data", "scopes": ["browse"]}
        ]
    })
}

/// Envoy (2 workers) with `config`, routing to `upstream`, whose `keyservice` cluster
/// reaches `key_service` over mTLS with `pki`'s client certificate.
pub(crate) fn start_envoy_over_mtls(
    config: &Value,
    upstream: SocketAddr,
    key_service: SocketAddr,
    pki: &Pki,
) -> Envoy {
    let mut bootstrap = bootstrap_with_key_service(config, upstream, key_service);
    for cluster in bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        if cluster["name"] == "keyservice" {
            cluster["transport_socket"] = mtls(pki);
        }
    }
    Envoy::start_bootstrap(
        &bootstrap,
        EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
    )
}

/// The `keyservice` cluster's transport socket: TLS with `pki`'s client certificate.
fn mtls(pki: &Pki) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "keyservice",
        "common_tls_context": {
            "tls_certificates": [{
                "certificate_chain": {"filename": arg(&pki.client_cert)},
                "private_key": {"filename": arg(&pki.client_key)}
            }],
            "validation_context": {
                "trusted_ca": {"filename": arg(&pki.ca)},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "keyservice"}}
                ]
            }
        }
    }})
}

#[test]
fn keys_made_through_the_admin_api_reach_envoy_over_mtls() {
    if support::native_pending() {
        return;
    }
    let scratch = TlsDb::new("keysvc-envoy");
    let (server, api) = scratch.serve_mtls();
    let upstream = Upstream::start();
    let envoy = start_envoy_over_mtls(&plugin_config(), upstream.addr, server.addr, &scratch.pki);
    let status = |key: &str| envoy.send(&Request::get("/data/x").bearer(key)).status;
    let all = |key: &str, want: u16| (0..10).all(|_| status(key) == want);

    // The first (empty) set loads over mTLS: an unknown key is 401, not 503.
    assert!(
        eventually(Duration::from_secs(10), || status("kg_nobody") == 401),
        "no key set over mTLS:\n{}\n{}",
        envoy.log(),
        server.log()
    );

    let create = |owner: &str| api.create_browse_key(owner);
    let (alice_id, alice) = create("alice");
    let bobs = [create("bob"), create("bob")];
    assert!(
        eventually(Duration::from_secs(5), || all(&alice, 200)),
        "created key not allowed:\n{}",
        envoy.log()
    );
    assert_eq!(
        upstream.take().last().unwrap().header("x-api-key-owner"),
        Some("alice")
    );
    for (_, key) in &bobs {
        assert!(eventually(Duration::from_secs(5), || all(key, 200)));
    }

    let r = api.send("DELETE", &format!("/v1/admin/keys/{alice_id}"), &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        eventually(Duration::from_secs(4), || all(&alice, 401)),
        "revoked key still allowed"
    );
    for (_, key) in &bobs {
        assert_eq!(status(key), 200);
    }

    let r = api.send("DELETE", "/v1/admin/keys?owner=bob", &[], None);
    assert_eq!(r.json()["revoked"], 2);
    for (_, key) in &bobs {
        assert!(
            eventually(Duration::from_secs(4), || all(key, 401)),
            "a key of a revoked owner still allowed"
        );
    }
}
