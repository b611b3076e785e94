use super::*;
use crate::config::Config;
use crate::decision::{decide, Verdict};
use crate::record::{KeyHash, KeyRecord, KeyRecordDoc};
use crate::scope::ScopeIndex;
use crate::timestamp::Timestamp;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const SECRET: &str = "kg_sEcReT_raw_key_0123456789abcdef";

/// Keys read from `Authorization: Bearer` alone: one challenge, RFC 6750's.
fn bearer_only() -> Vec<Source> {
    vec![Source::Authorization {
        schemes: vec![Scheme::Bearer],
        basic_username: "apikey".into(),
    }]
}

fn record() -> KeyRecord {
    let doc: KeyRecordDoc = crate::json::from_value(json!({
        "id": "8c3e4394-10a9-46ef-8af9-b6401ba1400d",
        "hash": KeyHash::of_key(SECRET).to_hex(),
        "owner": "alice",
        "label": "ci-runner",
        "scopes": ["browse", "download"],
        "expires_at": "2027-05-21T20:55:24Z"
    }))
    .unwrap();
    KeyRecord::from_doc(doc, &ScopeIndex::default()).1
}

/// A 403 for want of `needed`.
fn missing_scope<'k>(key: &'k KeyRecord, needed: &'k str) -> Denial<'k> {
    Denial::MissingScope {
        key: Some(key),
        needed,
    }
}

fn header<'r>(r: &'r LocalResponse, name: &str) -> Option<&'r str> {
    let mut values = r
        .headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    assert!(values.next().is_none(), "{name} appears twice: {r:?}");
    first
}

fn names(r: &LocalResponse) -> Vec<&'static str> {
    r.headers.iter().map(|(n, _)| *n).collect()
}

fn body(r: &LocalResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {r:?}"))
}

/// Checks everything README "Responses" fixes for one response.
fn check(r: &LocalResponse, status: u32, challenge: Option<&str>, error: &str, description: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(header(r, "content-type"), Some("application/json"), "{r:?}");
    assert_eq!(header(r, "cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(header(r, "www-authenticate"), challenge, "{r:?}");
    assert_eq!(
        body(r),
        json!({"error": error, "error_description": description}),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// One test per row of the README "Responses" table (and per description)
// ---------------------------------------------------------------------------------------

#[test]
fn bad_request_is_400_invalid_request_with_the_reason() {
    let r = render(
        "api",
        &bearer_only(),
        &Denial::BadRequest("conflicting credentials: more than one API key"),
    );
    check(
        &r,
        400,
        Some(r#"Bearer realm="api", error="invalid_request""#),
        "invalid_request",
        "conflicting credentials: more than one API key",
    );
    assert_eq!(
        names(&r),
        ["content-type", "cache-control", "www-authenticate"]
    );
    assert_eq!(header(&r, "retry-after"), None);
}

#[test]
fn bad_request_description_with_quotes_and_backslash_is_valid_json() {
    let why = crate::path::PathError::EncodedBackslash.description();
    assert!(why.contains('\\') && why.contains('\''));
    let r = render("api", &bearer_only(), &Denial::BadRequest(why));
    check(
        &r,
        400,
        Some(r#"Bearer realm="api", error="invalid_request""#),
        "invalid_request",
        why,
    );
    let r = render(
        "api",
        &bearer_only(),
        &Denial::BadRequest("a \"quoted\"\nline"),
    );
    assert_eq!(body(&r)["error_description"], "a \"quoted\"\nline");
}

#[test]
fn missing_is_401_unauthorized_without_error_attribute() {
    let r = render("api", &bearer_only(), &Denial::Missing);
    check(
        &r,
        401,
        Some(r#"Bearer realm="api""#),
        "unauthorized",
        "API key required; accepted: Authorization: Bearer",
    );
    let challenge = header(&r, "www-authenticate").unwrap();
    assert!(!challenge.contains("error"), "RFC 6750 §3.1: {challenge}");
    assert!(!challenge.contains("scope"), "{challenge}");
}

/// The 401 rows of the table: unknown, expired and disabled keys (a former test each).
#[test]
fn invalid_keys_are_401_invalid_token_with_the_reason() {
    let k = record();
    for (denial, description) in [
        (Denial::UnknownKey, "unknown API key"),
        (Denial::MalformedKey, "malformed API key"),
        (Denial::Expired(&k), "API key expired"),
        (Denial::Disabled(&k), "API key disabled"),
    ] {
        let r = render("api", &bearer_only(), &denial);
        assert_eq!(r.status, 401, "{denial:?}");
        let challenge = r#"Bearer realm="api", error="invalid_token""#;
        check(&r, 401, Some(challenge), "invalid_token", description);
    }
}

/// The 403 rows of the table: missing scopes, named (together, in the plural, when there
/// are several); read-only keys and routes no rule allows, where no scope would help, so
/// none is named (RFC 6750: `scope` is optional). A former test each.
#[test]
fn refusals_are_403_insufficient_scope_naming_any_scope_needed() {
    let k = record();
    let three = "browse download read:users";
    for (denial, scope_attribute, description) in [
        (
            missing_scope(&k, "upload"),
            r#", scope="upload""#,
            "requires scope upload",
        ),
        (
            missing_scope(&k, "a b"),
            r#", scope="a b""#,
            "requires scopes a b",
        ),
        (
            missing_scope(&k, three),
            r#", scope="browse download read:users""#,
            "requires scopes browse download read:users",
        ),
        (
            Denial::ReadOnly(&k),
            "",
            "read-only API key may only use GET, HEAD and OPTIONS",
        ),
        (Denial::NoRule, "", "no rule allows this route"),
    ] {
        let r = render("api", &bearer_only(), &denial);
        assert_eq!(r.status, 403, "{denial:?}");
        let challenge =
            format!(r#"Bearer realm="api", error="insufficient_scope"{scope_attribute}"#);
        check(&r, 403, Some(&challenge), "insufficient_scope", description);
    }
}

#[test]
fn unavailable_is_503_with_retry_after_and_no_challenge() {
    let r = render(
        "api",
        &bearer_only(),
        &Denial::Unavailable {
            retry_after_seconds: 5,
        },
    );
    check(
        &r,
        503,
        None,
        "temporarily_unavailable",
        "API keys are not available yet; retry later",
    );
    assert_eq!(header(&r, "retry-after"), Some("5"));
    assert_eq!(names(&r), ["content-type", "cache-control", "retry-after"]);
}

#[test]
fn retry_after_is_the_given_number_of_seconds() {
    for (secs, text) in [(0, "0"), (1, "1"), (30, "30"), (u32::MAX, "4294967295")] {
        let r = render(
            "api",
            &bearer_only(),
            &Denial::Unavailable {
                retry_after_seconds: secs,
            },
        );
        assert_eq!(header(&r, "retry-after"), Some(text));
    }
}

#[test]
fn only_unavailable_has_retry_after_and_it_alone_lacks_a_challenge() {
    let k = record();
    for d in all_denials(&k) {
        let r = render("api", &bearer_only(), &d);
        let is_503 = matches!(d, Denial::Unavailable { .. });
        assert_eq!(header(&r, "retry-after").is_some(), is_503, "{d:?}");
        assert_eq!(header(&r, "www-authenticate").is_none(), is_503, "{d:?}");
        assert_eq!(r.headers.len(), 3, "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Table-wide properties
// ---------------------------------------------------------------------------------------

fn all_denials(k: &KeyRecord) -> Vec<Denial<'_>> {
    vec![
        Denial::BadRequest("empty API key"),
        Denial::Missing,
        Denial::UnknownKey,
        Denial::MalformedKey,
        Denial::Expired(k),
        Denial::Disabled(k),
        missing_scope(k, "upload"),
        Denial::ReadOnly(k),
        Denial::NoRule,
        Denial::ReadOnlyUpgrade(k),
        Denial::MethodNotListed,
        Denial::Unavailable {
            retry_after_seconds: 5,
        },
    ]
}

#[test]
fn status_and_error_for_every_denial_follow_the_spec_table() {
    let k = record();
    let want = [
        (400, "invalid_request", Some("invalid_request")),
        (401, "unauthorized", None),
        (401, "invalid_token", Some("invalid_token")),
        (401, "invalid_token", Some("invalid_token")),
        (401, "invalid_token", Some("invalid_token")),
        (401, "invalid_token", Some("invalid_token")),
        (403, "insufficient_scope", Some("insufficient_scope")),
        (403, "insufficient_scope", Some("insufficient_scope")),
        (403, "insufficient_scope", Some("insufficient_scope")),
        (403, "insufficient_scope", Some("insufficient_scope")),
        (403, "insufficient_scope", Some("insufficient_scope")),
        (503, "temporarily_unavailable", None),
    ];
    for (d, (status, error, challenge_error)) in all_denials(&k).iter().zip(want) {
        let r = render("api", &bearer_only(), d);
        assert_eq!(r.status, status, "{d:?}");
        assert_eq!(body(&r)["error"], error, "{d:?}");
        if let Some(challenge) = header(&r, "www-authenticate") {
            assert!(
                challenge.starts_with(r#"Bearer realm="api""#),
                "{challenge}"
            );
            let attr = challenge_error.map(|e| format!(r#", error="{e}""#));
            match attr {
                Some(attr) => assert!(challenge.contains(&attr), "{challenge}"),
                None => assert!(!challenge.contains("error="), "{challenge}"),
            }
        }
    }
}

#[test]
fn bodies_have_exactly_error_and_description() {
    let k = record();
    for d in all_denials(&k) {
        let r = render("api", &bearer_only(), &d);
        let v = body(&r);
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["error", "error_description"], "{d:?}");
        assert!(obj["error"].is_string() && obj["error_description"].is_string());
        assert!(
            !obj["error_description"].as_str().unwrap().is_empty(),
            "{d:?}"
        );
    }
}

#[test]
fn responses_are_deterministic() {
    let k = record();
    for d in all_denials(&k) {
        assert_eq!(
            render("api", &bearer_only(), &d),
            render("api", &bearer_only(), &d)
        );
    }
}

#[test]
fn custom_realm_appears_in_every_challenge() {
    let k = record();
    let want = [
        r#"Bearer realm="immport", error="invalid_request""#,
        r#"Bearer realm="immport""#,
        r#"Bearer realm="immport", error="invalid_token""#,
        r#"Bearer realm="immport", error="invalid_token""#,
        r#"Bearer realm="immport", error="invalid_token""#,
        r#"Bearer realm="immport", error="invalid_token""#,
        r#"Bearer realm="immport", error="insufficient_scope", scope="upload""#,
        r#"Bearer realm="immport", error="insufficient_scope""#,
        r#"Bearer realm="immport", error="insufficient_scope""#,
        r#"Bearer realm="immport", error="insufficient_scope""#,
        r#"Bearer realm="immport", error="insufficient_scope""#,
    ];
    let denials = all_denials(&k);
    assert_eq!(denials.len(), want.len() + 1);
    for (d, challenge) in denials.iter().zip(want) {
        let r = render("immport", &bearer_only(), d);
        assert_eq!(header(&r, "www-authenticate"), Some(challenge), "{d:?}");
    }
}

#[test]
fn realm_with_spaces_and_punctuation_is_quoted_verbatim() {
    let r = render(
        "LabKey Server (prod) / api",
        &bearer_only(),
        &Denial::Missing,
    );
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(r#"Bearer realm="LabKey Server (prod) / api""#)
    );
}

#[test]
fn configured_realm_reaches_the_response() {
    let c = Config::parse(br#"{"realm": "vspc", "keys": []}"#).unwrap();
    let r = render(&c.realm, &c.sources, &Denial::Missing);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(r#"Bearer realm="vspc", ApiKey realm="vspc", Basic realm="vspc""#)
    );
    let default = Config::parse(br#"{"keys": []}"#).unwrap();
    let r = render(&default.realm, &bearer_only(), &Denial::Missing);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(r#"Bearer realm="api""#)
    );
}

#[test]
fn denial_descriptions_never_name_the_key_record() {
    // Neither id, owner, label nor hash is disclosed to the client.
    let k = record();
    let hash = KeyHash::of_key(SECRET).to_hex();
    for d in all_denials(&k) {
        let r = render("api", &bearer_only(), &d);
        let all = format!("{} {:?}", r.body, r.headers);
        for secretish in [k.id.as_str(), "alice", "ci-runner", hash.as_str()] {
            assert!(!all.contains(secretish), "{secretish} in {all}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// End to end with decide(): no response ever contains the raw key
// ---------------------------------------------------------------------------------------

fn e2e_config() -> Config {
    let h = |k: &str| KeyHash::of_key(k).to_hex();
    let doc = json!({
        "realm": "api",
        "sources": [
            {"authorization": {}},
            {"header": "x-api-key"},
            {"query": "api_key"}
        ],
        "keys": [
            {"id": "k-ok", "hash": h(SECRET), "owner": "alice", "scopes": ["browse"]},
            {"id": "k-exp", "hash": h(&format!("{SECRET}_exp")), "owner": "bob",
             "scopes": ["browse"], "expires_at": "2020-01-01T00:00:00Z"},
            {"id": "k-off", "hash": h(&format!("{SECRET}_off")), "owner": "carol",
             "scopes": ["browse"], "status": "disabled"},
            {"id": "k-ro", "hash": h(&format!("{SECRET}_ro")), "owner": "dan",
             "scopes": ["browse", "upload"], "read_only": true}
        ],
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data/query", "scopes": ["browse"]},
            {"path_prefix": "/data/upload", "scopes": ["upload"]}
        ]
    });
    Config::parse(doc.to_string().as_bytes()).unwrap()
}

fn req(method: &str, path: &str, extra: &[(&str, String)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (":authority".to_string(), b"api".to_vec()),
    ];
    for (n, v) in extra {
        h.push((n.to_string(), v.clone().into_bytes()));
    }
    h
}

#[test]
fn no_response_contains_the_raw_key() {
    let c = e2e_config();
    let basic = |user_pass: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    let exp = format!("{SECRET}_exp");
    let off = format!("{SECRET}_off");
    let ro = format!("{SECRET}_ro");
    let cases = [
        // 400: conflicting, malformed (keys containing the secret), bad path with a key.
        req(
            "GET",
            "/data/query",
            &[
                ("authorization", format!("Bearer {SECRET}")),
                ("x-api-key", format!("{SECRET}X")),
            ],
        ),
        req(
            "GET",
            "/data/query",
            &[("authorization", format!("Bearer {SECRET} x"))],
        ),
        req("GET", "/data/query", &[("authorization", basic(SECRET))]),
        req("GET", &format!("/data/query?api_key={SECRET}%zz"), &[]),
        req(
            "GET",
            &format!("/data%2F{SECRET}"),
            &[("x-api-key", SECRET.into())],
        ),
        // 401: unknown, expired, disabled.
        req(
            "GET",
            "/data/query",
            &[("authorization", format!("Bearer {SECRET}nope"))],
        ),
        req("GET", &format!("/healthz?api_key={SECRET}nope"), &[]),
        req("GET", "/data/query", &[("x-api-key", exp.clone())]),
        req("GET", "/data/query", &[("x-api-key", off.clone())]),
        // 403: missing scope, read-only, no rule.
        req(
            "POST",
            "/data/upload",
            &[("authorization", format!("ApiKey {SECRET}"))],
        ),
        req(
            "POST",
            "/data/upload",
            &[("authorization", format!("Bearer {ro}"))],
        ),
        req(
            "GET",
            &format!("/{SECRET}"),
            &[("x-api-key", SECRET.into())],
        ),
    ];
    let mut statuses = Vec::new();
    for h in cases {
        let denial = match decide(&c, &h, || {
            Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
        }) {
            Verdict::Deny(d) => d,
            Verdict::Allow(a) => panic!("expected a denial for {h:?}, got {a:?}"),
        };
        let r = render(&c.realm, &c.sources, &denial);
        statuses.push(r.status);
        for (name, value) in &r.headers {
            assert!(!value.contains(SECRET), "{name}: {value}");
        }
        assert!(!r.body.contains(SECRET), "{}", r.body);
        assert!(!format!("{denial:?}").contains(SECRET), "{denial:?}");
    }
    assert_eq!(
        statuses,
        [400, 400, 400, 400, 400, 401, 401, 401, 401, 403, 403, 403]
    );
}

#[test]
fn decided_denials_render_the_spec_descriptions() {
    let c = e2e_config();
    let now = || Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let render_for = |h: Vec<(String, Vec<u8>)>| match decide(&c, &h, now) {
        Verdict::Deny(d) => render(&c.realm, &c.sources, &d),
        Verdict::Allow(a) => panic!("expected a denial for {h:?}, got {a:?}"),
    };
    let r = render_for(req("GET", "/data/query", &[]));
    check(
        &r,
        401,
        Some(
            r#"Bearer realm="api", ApiKey realm="api", Basic realm="api", ApiKey realm="api", header="x-api-key", ApiKey realm="api", query="api_key""#,
        ),
        "unauthorized",
        "API key required; accepted: Authorization: Bearer, Authorization: ApiKey, \
         Authorization: Basic (user apikey), header x-api-key or query parameter api_key",
    );
    let r = render_for(req(
        "GET",
        "/data/query",
        &[("x-api-key", format!("{SECRET}_exp"))],
    ));
    assert_eq!(body(&r)["error_description"], "API key expired");
    let r = render_for(req(
        "GET",
        "/data/query",
        &[("x-api-key", format!("{SECRET}_off"))],
    ));
    assert_eq!(body(&r)["error_description"], "API key disabled");
    let r = render_for(req(
        "PUT",
        "/data/upload/f",
        &[("x-api-key", SECRET.into())],
    ));
    check(
        &r,
        403,
        Some(
            r#"Bearer realm="api", error="insufficient_scope", scope="upload", ApiKey realm="api", Basic realm="api", ApiKey realm="api", header="x-api-key", ApiKey realm="api", query="api_key""#,
        ),
        "insufficient_scope",
        "requires scope upload",
    );
}

// ---------------------------------------------------------------------------------------
// One challenge per configured way to send a key, in the order of `sources`
// ---------------------------------------------------------------------------------------

fn sources(doc: Value) -> Vec<Source> {
    let mut config = json!({"keys": [], "realm": "r"});
    config["sources"] = doc;
    match Config::parse(config.to_string().as_bytes()) {
        Ok(c) => c.sources,
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn an_apikey_only_route_challenges_with_apikey_and_says_so() {
    let s = sources(json!([{"authorization": {"schemes": ["ApiKey"]}}]));
    let r = render("immune", &s, &Denial::Missing);
    check(
        &r,
        401,
        Some(r#"ApiKey realm="immune""#),
        "unauthorized",
        "API key required; accepted: Authorization: ApiKey",
    );
    let k = record();
    let r = render("immune", &s, &missing_scope(&k, "sensors:read"));
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(r#"ApiKey realm="immune""#)
    );
    let r = render("immune", &s, &Denial::UnknownKey);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(r#"ApiKey realm="immune""#)
    );
}

#[test]
fn labkey_basic_and_header_challenge_in_source_order() {
    let s = sources(json!([
        {"authorization": {"schemes": ["Basic"], "basic_username": "apikey"}},
        {"header": "apikey"}
    ]));
    let r = render("labkey", &s, &Denial::Missing);
    check(
        &r,
        401,
        Some(r#"Basic realm="labkey", ApiKey realm="labkey", header="apikey""#),
        "unauthorized",
        "API key required; accepted: Authorization: Basic (user apikey) or header apikey",
    );
}

#[test]
fn bearer_keeps_its_error_attributes_among_other_challenges() {
    let s = sources(json!([
        {"header": "x-api-key"},
        {"authorization": {"schemes": ["ApiKey", "Bearer"]}}
    ]));
    let k = record();
    let r = render("api", &s, &missing_scope(&k, "upload"));
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(
            r#"ApiKey realm="api", header="x-api-key", ApiKey realm="api", Bearer realm="api", error="insufficient_scope", scope="upload""#
        )
    );
    let r = render("api", &s, &Denial::BadRequest("empty API key"));
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(
            r#"ApiKey realm="api", header="x-api-key", ApiKey realm="api", Bearer realm="api", error="invalid_request""#
        )
    );
}

#[test]
fn header_and_query_sources_alone_still_challenge() {
    let s = sources(json!([{"query": "k\"e\\y"}, {"header": "x-api-key"}]));
    let r = render("api", &s, &Denial::Missing);
    check(
        &r,
        401,
        Some(r#"ApiKey realm="api", query="k\"e\\y", ApiKey realm="api", header="x-api-key""#),
        "unauthorized",
        "API key required; accepted: query parameter k\"e\\y or header x-api-key",
    );
}

#[test]
fn a_bearer_key_where_only_apikey_is_accepted_is_told_the_scheme_without_the_key() {
    let doc = json!({
        "sources": [{"authorization": {"schemes": ["ApiKey"]}}],
        "keys": [{"id": "k", "hash": KeyHash::of_key(SECRET).to_hex(), "owner": "o",
                  "scopes": ["s"]}],
        "rules": [{"path_prefix": "/", "scopes": ["s"]}]
    });
    let c = Config::parse(doc.to_string().as_bytes()).unwrap();
    let h = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), b"/x".to_vec()),
        (
            "authorization".to_string(),
            format!("Bearer {SECRET}").into_bytes(),
        ),
    ];
    let Verdict::Deny(d) = decide(&c, &h, || {
        Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    }) else {
        panic!("a Bearer key passed where only ApiKey is accepted");
    };
    let r = render(&c.realm, &c.sources, &d);
    check(
        &r,
        401,
        Some(r#"ApiKey realm="api""#),
        "unauthorized",
        "API key required; accepted: Authorization: ApiKey",
    );
    assert!(!format!("{r:?}").contains(SECRET));
}

#[test]
fn the_new_refusals_read_as_the_readme_says() {
    let k = record();
    let r = render("api", &bearer_only(), &Denial::ReadOnlyUpgrade(&k));
    check(
        &r,
        403,
        Some(r#"Bearer realm="api", error="insufficient_scope""#),
        "insufficient_scope",
        "read-only API key may not upgrade the connection",
    );
    let r = render("api", &bearer_only(), &Denial::MethodNotListed);
    check(
        &r,
        403,
        Some(r#"Bearer realm="api", error="insufficient_scope""#),
        "insufficient_scope",
        "no rule allows this method on this path",
    );
}

#[test]
fn with_jwt_the_answer_names_bearer_tokens_too() {
    let mut doc = json!({
        "sources": [{"authorization": {"schemes": ["ApiKey"]}}],
        "keys": [],
        "jwt": {}
    });
    let c = Config::parse(doc.to_string().as_bytes()).unwrap();
    let r = render_for(&c, &Denial::InvalidToken("bearer token not verified"));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers
            .iter()
            .find(|(n, _)| *n == "www-authenticate")
            .map(|(_, v)| v.as_str()),
        Some(r#"Bearer realm="api", error="invalid_token", ApiKey realm="api""#)
    );
    assert!(r.body.contains("bearer token not verified"), "{}", r.body);
    let r = render_for(&c, &Denial::Missing);
    assert!(
        r.body
            .contains("accepted: Authorization: ApiKey or Authorization: Bearer (JWT)"),
        "{}",
        r.body
    );
    // Sources that take Bearer already name it; without `jwt`, nothing changes.
    doc["sources"] = json!([{"authorization": {"schemes": ["Bearer"]}}]);
    let c = Config::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(
        render_for(&c, &Denial::Missing),
        render(&c.realm, &c.sources, &Denial::Missing)
    );
    doc["sources"] = json!([{"authorization": {"schemes": ["ApiKey"]}}]);
    doc.as_object_mut().unwrap().remove("jwt");
    let c = Config::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(
        render_for(&c, &Denial::Missing),
        render(&c.realm, &c.sources, &Denial::Missing)
    );
}
