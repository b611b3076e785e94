//! API keys beside OAuth2 Bearer JWTs (README "JWTs beside API keys"): Envoy's own
//! `jwt_authn` verifies tokens (signature, issuer, audience, expiry) against a JWKS made at
//! test time (an RS256 and an ES256 key, never committed), with a requirement that lets a
//! request without a token through; keygate reads the verified payload from dynamic
//! metadata and applies its rules to the token's scopes. A JWT nobody verified is 401,
//! never an API key; an API key and a token at once are 400.

use keygate_testkit as support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use p256::ecdsa::SigningKey as EcKey;
use rsa::pkcs1v15::SigningKey as RsaKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{hash_of, Envoy, EnvoyOptions, Request, Response, Upstream};

const ISSUER: &str = "https://idp.keygate.test";
const AUDIENCE: &str = "keygate-api";
const KEY: &str = "kg_jwt_reader_5e4d3c2b1a09f8e7d6c5";

/// The identity provider of the tests: its keys, made now, and the tokens it signs.
struct Idp {
    rsa: RsaKey<Sha256>,
    rsa_public: rsa::RsaPublicKey,
    ec: EcKey,
}

impl Idp {
    fn new() -> Idp {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let rsa_public = private.to_public_key();
        Idp {
            rsa: RsaKey::<Sha256>::new(private),
            rsa_public,
            ec: EcKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
        }
    }

    /// The JWKS `jwt_authn` verifies with: public keys only.
    fn jwks(&self) -> String {
        let point = self.ec.verifying_key().to_encoded_point(false);
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
             "n": B64URL.encode(self.rsa_public.n().to_bytes_be()),
             "e": B64URL.encode(self.rsa_public.e().to_bytes_be())},
            {"kty": "EC", "kid": "ec-1", "alg": "ES256", "use": "sig", "crv": "P-256",
             "x": B64URL.encode(point.x().unwrap()),
             "y": B64URL.encode(point.y().unwrap())}
        ]})
        .to_string()
    }

    /// A token signed with `alg` (RS256, ES256, or none) over `claims`.
    fn sign(&self, alg: &str, claims: &Value) -> String {
        let kid = if alg == "ES256" { "ec-1" } else { "rsa-1" };
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = match alg {
            "RS256" => self.rsa.sign(input.as_bytes()).to_vec(),
            "ES256" => {
                let signature: p256::ecdsa::Signature = self.ec.sign(input.as_bytes());
                signature.to_bytes().to_vec()
            }
            _ => Vec::new(),
        };
        format!("{input}.{}", B64URL.encode(signature))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A valid payload: this issuer and audience, ten minutes to live.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
           "iat": now(), "exp": now() + 600})
}

/// Envoy's `jwt_authn`, as README "JWTs beside API keys" configures it: one provider,
/// every route, a missing token allowed (API-key requests pass), the verified payload
/// left in dynamic metadata under `jwt_payload`. `forward: true` keeps the token in the
/// request so that keygate's `hide_credentials` is what removes it. `missing` names the
/// second requirement: `allow_missing` (the README's), or `allow_missing_or_failed`, which
/// leaves every token that fails to keygate.
fn jwt_authn_with(jwks: &str, missing: &str) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "jwt_payload",
                "forward": true
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp"},
                {missing: {}}
            ]}}}]
        }
    })
}

fn jwt_authn(jwks: &str) -> Value {
    jwt_authn_with(jwks, "allow_missing")
}

fn rules() -> Value {
    json!([
        {"path_prefix": "/healthz", "public": true},
        {"path_prefix": "/data", "scopes": ["data.read"]},
        {"path_prefix": "/admin", "scopes": ["admin"]}
    ])
}

fn inline_config() -> Value {
    json!({
        "keys": [{"id": "k-reader", "hash": hash_of(KEY), "owner": "reader-app",
                  "scopes": ["data.read"]}],
        "rules": rules(),
        "jwt": {}
    })
}

/// jwt_authn then keygate then the router.
fn start(
    idp: &Idp,
    plugin_config: &Value,
    upstream: &Upstream,
    key_service: Option<SocketAddr>,
) -> Envoy {
    start_with(idp, plugin_config, upstream, key_service, "allow_missing")
}

fn start_with(
    idp: &Idp,
    plugin_config: &Value,
    upstream: &Upstream,
    key_service: Option<SocketAddr>,
    missing: &str,
) -> Envoy {
    let mut bootstrap = match key_service {
        Some(addr) => support::bootstrap_with_key_service(plugin_config, upstream.addr, addr),
        None => support::bootstrap(plugin_config, upstream.addr, 0),
    };
    let filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
        .unwrap();
    filters.insert(0, jwt_authn_with(&idp.jwks(), missing));
    Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default())
}

fn assert_refused(upstream: &Upstream, response: &Response, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    let seen = upstream.take();
    assert!(seen.is_empty(), "{what} reached upstream: {seen:?}");
}

#[test]
fn a_verified_token_with_the_scope_reaches_upstream_with_its_identity() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = start(&idp, &inline_config(), &upstream, None);
    for alg in ["RS256", "ES256"] {
        let token = idp.sign(alg, &claims("user-42", "openid data.read"));
        let response = envoy.send(
            &Request::get("/data/query")
                .bearer(&token)
                .header("x-api-key-kind", "api_key")
                .header("x-api-key-id", "k-admin"),
        );
        assert_eq!(response.status, 200, "{alg}: {}", response.text());
        let seen = upstream.take_one();
        assert_eq!(seen.header("x-api-key-owner"), Some("user-42"), "{alg}");
        assert_eq!(seen.header("x-api-key-scopes"), Some("data.read openid"));
        assert_eq!(seen.values("x-api-key-kind"), ["jwt"]);
        assert!(seen.values("x-api-key-id").is_empty(), "{seen:?}");
        assert!(seen.values("authorization").is_empty(), "{seen:?}");
    }
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("allowed_jwt"), 2);
}

#[test]
fn a_verified_token_without_the_scope_is_403() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = start(&idp, &inline_config(), &upstream, None);
    let token = idp.sign("RS256", &claims("user-42", "openid data.read"));
    let response = envoy.send(&Request::get("/admin/users").bearer(&token));
    assert_refused(&upstream, &response, 403, "a token without admin");
    assert_eq!(
        response.json(),
        json!({"error": "insufficient_scope", "error_description": "requires scope admin"})
    );
    // A list claim (`scp`) is read as well as a space-separated one.
    let list = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-1", "scp": ["admin", "data.read"],
                      "exp": now() + 600});
    let mut config = inline_config();
    config["jwt"] = json!({"scope_claim": "scp"});
    let upstream2 = Upstream::start();
    let envoy2 = start(&idp, &config, &upstream2, None);
    let response = envoy2.send(&Request::get("/admin/users").bearer(&idp.sign("ES256", &list)));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream2.take_one();
    assert_eq!(seen.header("x-api-key-scopes"), Some("admin data.read"));
    assert_eq!(seen.header("x-api-key-owner"), Some("svc-1"));
}

/// Tokens that fail: expired, from another issuer, for another audience, with a bad
/// signature, signed by a key not in the JWKS, or not signed at all (`alg: none`).
fn bad_tokens(idp: &Idp) -> Vec<(&'static str, String)> {
    let scope = "openid data.read";
    let mut expired = claims("user-42", scope);
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 7200);
    let mut issuer = claims("user-42", scope);
    issuer["iss"] = json!("https://evil.example");
    let mut audience = claims("user-42", scope);
    audience["aud"] = json!("someone-else");
    let good = idp.sign("RS256", &claims("user-42", scope));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig = B64URL.decode(sig).unwrap();
    sig[10] ^= 0x55;
    let bad_signature = format!("{head}.{}", B64URL.encode(sig));
    let other_idp = Idp::new();
    vec![
        ("expired", idp.sign("RS256", &expired)),
        ("wrong issuer", idp.sign("ES256", &issuer)),
        ("wrong audience", idp.sign("RS256", &audience)),
        ("bad signature", bad_signature),
        (
            "another key",
            other_idp.sign("ES256", &claims("user-42", scope)),
        ),
        ("alg none", idp.sign("none", &claims("user-42", scope))),
    ]
}

/// With `allow_missing`, jwt_authn itself refuses a token that fails: 401, but 403 for a
/// token of another audience (Envoy's own answer, `Audiences in Jwt are not allowed`).
#[test]
fn tokens_that_do_not_verify_are_refused_and_never_reach_upstream() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = start(&idp, &inline_config(), &upstream, None);
    for (what, token) in bad_tokens(&idp) {
        let status = if what == "wrong audience" { 403 } else { 401 };
        for path in ["/data/query", "/healthz"] {
            let response = envoy.send(&Request::get(path).bearer(&token));
            assert_refused(&upstream, &response, status, &format!("{what} on {path}"));
        }
    }
}

/// With `allow_missing_or_failed`, jwt_authn lets every failed token through without a
/// payload: keygate refuses each (401 invalid_token), never reading it as a key.
#[test]
fn keygate_refuses_tokens_jwt_authn_let_through_unverified() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = start_with(
        &idp,
        &inline_config(),
        &upstream,
        None,
        "allow_missing_or_failed",
    );
    let tokens = bad_tokens(&idp);
    for (what, token) in &tokens {
        for path in ["/data/query", "/healthz"] {
            let response = envoy.send(&Request::get(path).bearer(token));
            assert_refused(&upstream, &response, 401, &format!("{what} on {path}"));
            assert_eq!(response.json()["error"], "invalid_token", "{what}");
        }
    }
    // A valid token still passes, with its identity; so does an API key under Bearer,
    // which jwt_authn (failing to read it as a JWT) now lets through too.
    let token = idp.sign("ES256", &claims("user-42", "data.read"));
    let response = envoy.send(&Request::get("/data/query").bearer(&token));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.take_one().header("x-api-key-kind"), Some("jwt"));
    let response = envoy.send(&Request::get("/data/query").bearer(KEY));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.take_one().header("x-api-key-kind"),
        Some("api_key")
    );
    envoy.await_stats_flush();
    assert_eq!(
        envoy.keygate_stat("denied.invalid_token"),
        2 * tokens.len() as u64
    );
}

/// A JWT in the `Authorization` header of a route `jwt_authn` does not check (or any header
/// it does not read) carries no verified payload: keygate refuses it itself.
#[test]
fn a_jwt_jwt_authn_did_not_verify_is_refused_by_keygate() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let mut bootstrap = support::bootstrap(&inline_config(), upstream.addr, 0);
    let mut authn = jwt_authn(&idp.jwks());
    // Tokens only from `x-jwt`: a Bearer token passes jwt_authn as missing.
    authn["typed_config"]["providers"]["idp"]["from_headers"] = json!([{"name": "x-jwt"}]);
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap()
        .insert(0, authn);
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());
    let token = idp.sign("RS256", &claims("user-42", "data.read"));
    let response = envoy.send(&Request::get("/data/query").bearer(&token));
    assert_refused(&upstream, &response, 401, "an unverified Bearer JWT");
    assert_eq!(response.json()["error"], "invalid_token");
    // The same token where jwt_authn reads it passes.
    let response = envoy.send(&Request::get("/data/query").header("x-jwt", &token));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.take_one().header("x-api-key-kind"), Some("jwt"));
    envoy.await_stats_flush();
    assert_eq!(envoy.keygate_stat("denied.invalid_token"), 1);
}

#[test]
fn api_keys_pass_beside_tokens_and_both_at_once_are_400() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = start(&idp, &inline_config(), &upstream, None);
    let response =
        envoy.send(&Request::get("/data/query").header("authorization", format!("ApiKey {KEY}")));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-id"), Some("k-reader"));
    assert_eq!(seen.header("x-api-key-kind"), Some("api_key"));
    let response = envoy.send(&Request::get("/data/query").header("x-api-key", KEY));
    assert_refused(
        &upstream,
        &response,
        401,
        "a key in a header that is not a source",
    );
    // jwt_authn reads every `Authorization: Bearer` value as a JWT: with `allow_missing`
    // it refuses a key sent that way (401) before keygate sees it. Keys go as `ApiKey`
    // (or in a header); see keygate_refuses_tokens_jwt_authn_let_through_unverified.
    let response = envoy.send(&Request::get("/data/query").bearer(KEY));
    assert_refused(&upstream, &response, 401, "a key under Bearer");

    let token = idp.sign("RS256", &claims("user-42", "data.read"));
    let response = envoy.send(
        &Request::get("/data/query")
            .bearer(&token)
            .header("x-api-key", KEY),
    );
    // `x-api-key` is not a source here: the token alone decides.
    assert_eq!(response.status, 200, "{}", response.text());
    upstream.take_one();
    let mut config = inline_config();
    config["sources"] = json!([{"authorization": {}}, {"header": "x-api-key"}]);
    let upstream2 = Upstream::start();
    let envoy2 = start(&idp, &config, &upstream2, None);
    let response = envoy2.send(
        &Request::get("/data/query")
            .bearer(&token)
            .header("x-api-key", KEY),
    );
    assert_refused(&upstream2, &response, 400, "a key and a token");
    assert!(
        response.text().contains("conflicting"),
        "{}",
        response.text()
    );
}

/// The token path needs no key store: with the key service down, a `lookup` or a
/// `key_set` filter still lets a verified token through, and answers a key with 503.
#[test]
fn tokens_need_no_key_service() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    for mode in [
        json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}", "timeout_ms": 500}}),
        json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset", "refresh_seconds": 1,
                           "timeout_ms": 500}}),
    ] {
        let mut config = mode.clone();
        config["rules"] = rules();
        config["jwt"] = json!({});
        let upstream = Upstream::start();
        let envoy = start(&idp, &config, &upstream, Some(down));
        let token = idp.sign("ES256", &claims("user-42", "data.read"));
        let response = envoy.send(&Request::get("/data/query").bearer(&token));
        assert_eq!(response.status, 200, "{mode}: {}", response.text());
        assert_eq!(
            upstream.take_one().header("x-api-key-owner"),
            Some("user-42")
        );
        let response = envoy
            .send(&Request::get("/data/query").header("authorization", format!("ApiKey {KEY}")));
        assert_refused(
            &upstream,
            &response,
            503,
            &format!("{mode}: a key, service down"),
        );
    }
}

/// README "IMMUNE with OAuth2": keys as `Authorization: ApiKey`, tokens as Bearer, one
/// rule for both. A Bearer JWT that jwt_authn does not read (here: it reads `x-jwt` only)
/// is refused by keygate with a Bearer challenge, though no source takes Bearer keys.
#[test]
fn the_readme_immune_example_takes_keys_and_tokens() {
    if support::native_pending() {
        return;
    }
    let idp = Idp::new();
    let upstream = Upstream::start();
    let config = json!({
        "sources": [{"authorization": {"schemes": ["ApiKey"]}}],
        "keys": [{"id": "immune-dev-1", "owner": "sensor-team", "hash": hash_of(KEY),
                  "scopes": ["sensors:read"]}],
        "rules": [{"path_prefix": "/v1/sensors", "methods": ["GET"], "scopes": ["sensors:read"]}],
        "jwt": {"metadata_namespace": "envoy.filters.http.jwt_authn", "payload_key": "jwt_payload",
                "scope_claim": "scope", "subject_claim": "sub"}
    });
    let envoy = start(&idp, &config, &upstream, None);
    let token = idp.sign("RS256", &claims("person-1", "openid sensors:read"));
    let response = envoy.send(&Request::get("/v1/sensors").bearer(&token));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-kind"), Some("jwt"));
    assert_eq!(seen.header("x-api-key-scopes"), Some("openid sensors:read"));
    let response =
        envoy.send(&Request::get("/v1/sensors").header("authorization", format!("ApiKey {KEY}")));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.take_one().header("x-api-key-id"),
        Some("immune-dev-1")
    );
    let openid_only = idp.sign("ES256", &claims("person-2", "openid"));
    let response = envoy.send(&Request::get("/v1/sensors").bearer(&openid_only));
    assert_refused(&upstream, &response, 403, "a token without sensors:read");
    let response = envoy.send(&Request::new("DELETE", "/v1/sensors").bearer(&token));
    assert_refused(&upstream, &response, 403, "a method no rule lists");

    // jwt_authn reading `x-jwt` only: a Bearer JWT is not verified, and keygate says so.
    let mut bootstrap = support::bootstrap(&config, upstream.addr, 0);
    let mut authn = jwt_authn(&idp.jwks());
    authn["typed_config"]["providers"]["idp"]["from_headers"] = json!([{"name": "x-jwt"}]);
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap()
        .insert(0, authn);
    let envoy = Envoy::start_bootstrap(&bootstrap, EnvoyOptions::default());
    let response = envoy.send(&Request::get("/v1/sensors").bearer(&token));
    assert_refused(&upstream, &response, 401, "an unverified Bearer JWT");
    assert_eq!(
        response.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_token", ApiKey realm="api""#)
    );
    assert_eq!(
        response.json(),
        json!({"error": "invalid_token", "error_description": "bearer token not verified"})
    );
}
