//! A Bearer JWT verified by Envoy's `jwt_authn` beside API keys (README "JWTs beside API
//! keys"): the claims decide with the same rules; an unverified JWT is never a key.

use super::*;
use crate::jwt::Claims;

/// A token's shape; keygate never reads its content.
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

fn jwt_config() -> Config {
    config_with("jwt", json!({}))
}

fn claims<'a>(subject: &'a str, scope: &'a str) -> Option<Claims<'a>> {
    Some(Claims {
        subject: subject.as_bytes(),
        scope: Some(scope.as_bytes()),
    })
}

fn run_token<'c>(c: &'c Config, h: &Headers, token: Option<Claims<'_>>) -> Verdict<'c> {
    match begin_with_token(c, h, token) {
        Step::Done(verdict) => verdict,
        Step::Key(check) => match &c.keys {
            KeySource::Inline(set) => {
                let record = set.get(&check.hash);
                check.finish(c, record, now)
            }
            _ => check.unavailable(c),
        },
    }
}

#[test]
fn a_verified_token_with_the_scope_is_allowed_with_its_identity() {
    let c = jwt_config();
    let h = request(
        "GET",
        "/data/query",
        &[
            ("authorization", &format!("Bearer {JWT}")),
            ("x-api-key-kind", "api_key"),
            ("x-api-key-id", "spoof"),
        ],
    );
    let v = run_token(&c, &h, claims("user-7", "openid browse"));
    assert_eq!(v.outcome(), Outcome::AllowedToken);
    let a = allowed(v);
    assert_eq!(a.key, None);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-id"),
            rm("x-api-key-kind"),
            set("x-api-key-owner", "user-7"),
            set("x-api-key-scopes", "browse openid"),
            set("x-api-key-kind", "jwt"),
            rm("authorization"),
        ]
    );
}

#[test]
fn a_verified_token_without_the_scope_is_403() {
    let c = jwt_config();
    let h = request("GET", "/data/download/1", &[]);
    let d = denied(run_token(&c, &h, claims("user-7", "browse")));
    assert_eq!(
        d,
        Denial::MissingScope {
            key: None,
            needed: "download"
        }
    );
    assert_eq!(d.outcome(), Outcome::Forbidden);
    assert_eq!(d.key(), None);
    // No scope claim at all: only routes needing no scope.
    let none = Some(Claims {
        subject: b"user-7",
        scope: None,
    });
    assert!(matches!(
        denied(run_token(&c, &h, none)),
        Denial::MissingScope { key: None, .. }
    ));
    let public = request("GET", "/healthz", &[]);
    assert_eq!(
        run_token(&c, &public, none).outcome(),
        Outcome::AllowedToken
    );
    // Closed routes stay closed.
    let closed = request("GET", "/nowhere", &[]);
    assert_eq!(
        denied(run_token(&c, &closed, claims("root", "admin browse"))),
        Denial::NoRule
    );
}

#[test]
fn an_unverified_jwt_is_401_never_a_key() {
    let c = jwt_config();
    for route in ["/data/query", "/healthz"] {
        let h = with_bearer("GET", route, JWT);
        let d = denied(run_token(&c, &h, None));
        assert!(matches!(d, Denial::InvalidToken(_)), "{route}: {d:?}");
        assert_eq!(d.outcome(), Outcome::InvalidToken);
    }
    // Even beside a valid API key.
    let h = request(
        "GET",
        "/data/query",
        &[
            ("authorization", &format!("Bearer {JWT}")),
            ("x-api-key", ALICE),
        ],
    );
    assert!(matches!(
        denied(run_token(&c, &h, None)),
        Denial::InvalidToken(_)
    ));
    // Also where the sources take no Bearer keys (ApiKey only, or a header).
    for sources in [
        json!([{"authorization": {"schemes": ["ApiKey"]}}]),
        json!([{"header": "x-api-key"}]),
    ] {
        let mut doc = base_doc();
        doc["jwt"] = json!({});
        doc["sources"] = sources;
        let c = config_from(&doc);
        let h = with_bearer("GET", "/healthz", JWT);
        assert!(matches!(
            denied(run_token(&c, &h, None)),
            Denial::InvalidToken(_)
        ));
        // A Bearer value that is no JWT is no concern of `jwt`.
        let h = with_bearer("GET", "/healthz", "opaque-token");
        assert_eq!(run_token(&c, &h, None).outcome(), Outcome::Public);
    }
    // Without `jwt`, a JWT is read as a key, as before (and is unknown).
    let plain = config();
    let h = with_bearer("GET", "/data/query", JWT);
    assert_eq!(denied(run(&plain, &h)), Denial::UnknownKey);
}

#[test]
fn an_api_key_and_a_verified_token_conflict() {
    let c = jwt_config();
    for extra in [
        ("x-api-key", ALICE),
        ("authorization", "ApiKey kg_alice_browse_download"),
    ] {
        let h = request("GET", "/data/query", &[extra]);
        let why = assert_bad_request(run_token(&c, &h, claims("user-7", "browse")));
        assert!(why.contains("conflicting"), "{why}");
    }
}

#[test]
fn api_keys_work_as_before_when_jwt_is_configured() {
    let c = jwt_config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &format!("ApiKey {ALICE}"))],
    );
    let a = assert_allowed_as(run_token(&c, &h, None), "id-alice");
    assert_eq!(
        edits(&a, &c),
        alice_edits(vec![], vec![rm("authorization")])
    );
    let h = with_bearer("GET", "/data/query", ALICE);
    assert_allowed_as(run_token(&c, &h, None), "id-alice");
    let h = request("GET", "/data/query", &[]);
    assert_eq!(denied(run_token(&c, &h, None)), Denial::Missing);
}

#[test]
fn unusable_claims_are_401() {
    let c = jwt_config();
    let h = request("GET", "/data/query", &[]);
    for token in [
        claims("", "browse"),
        claims("a\r\nb", "browse"),
        claims("u", "bro\"wse"),
    ] {
        let d = denied(run_token(&c, &h, token));
        assert!(matches!(d, Denial::InvalidToken(_)), "{d:?}");
    }
}

#[test]
fn the_token_stays_upstream_with_hide_credentials_false() {
    let mut doc = base_doc();
    doc["jwt"] = json!({"scope_claim": "scp"});
    doc["hide_credentials"] = json!(false);
    let c = config_from(&doc);
    let h = with_bearer("GET", "/data/query", JWT);
    let a = allowed(run_token(&c, &h, claims("svc", "browse")));
    assert_eq!(a.hide_sources, 0);
    let up = upstream(&a, &c, &h);
    assert_eq!(
        header_values(&up, "authorization"),
        [format!("Bearer {JWT}").as_str()]
    );
    assert_eq!(header_values(&up, "x-api-key-kind"), ["jwt"]);
}
