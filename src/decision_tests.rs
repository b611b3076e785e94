use super::*;
use crate::record::KeyHash;
use crate::stats::Outcome;
use base64::Engine;
use serde_json::{json, Value};
use std::cell::Cell;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A request as Envoy lists it: pseudo-headers first.
type Headers = Vec<(String, Vec<u8>)>;

const ALICE: &str = "kg_alice_browse_download";
const UPLOADER: &str = "kg_uploader_upload_browse";
const ADMIN: &str = "kg_admin_everything";
const NOSCOPE: &str = "kg_noscope";
const EXPIRED: &str = "kg_expired_2020";
const FUTURE: &str = "kg_expires_2030";
const DISABLED: &str = "kg_disabled";
const DISABLED_EXPIRED: &str = "kg_disabled_and_expired";
const READONLY: &str = "kg_read_only";
const NANOS: &str = "kg_immport_nanos";
const OFFSET: &str = "kg_offset_plus_two";
const UNKNOWN: &str = "kg_not_in_the_key_set";

fn hash(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

fn keys() -> Value {
    json!([
        {"id": "id-alice", "hash": hash(ALICE), "owner": "alice",
         "scopes": ["browse", "download"]},
        {"id": "id-uploader", "hash": hash(UPLOADER), "owner": "ulrich",
         "scopes": ["upload", "browse"]},
        {"id": "id-admin", "hash": hash(ADMIN), "owner": "root",
         "scopes": ["admin", "browse", "download", "upload"]},
        {"id": "id-noscope", "hash": hash(NOSCOPE), "owner": "nobody"},
        {"id": "id-expired", "hash": hash(EXPIRED), "owner": "eve",
         "scopes": ["browse"], "expires_at": "2020-01-01T00:00:00Z"},
        {"id": "id-future", "hash": hash(FUTURE), "owner": "fred",
         "scopes": ["browse"], "expires_at": "2030-01-01T00:00:00Z"},
        {"id": "id-disabled", "hash": hash(DISABLED), "owner": "dave",
         "scopes": ["browse"], "status": "disabled"},
        {"id": "id-disabled-expired", "hash": hash(DISABLED_EXPIRED), "owner": "dora",
         "scopes": ["browse"], "status": "disabled", "expires_at": "2020-01-01T00:00:00Z"},
        {"id": "id-ro", "hash": hash(READONLY), "owner": "reader",
         "scopes": ["browse", "download", "upload"], "read_only": true},
        {"id": "id-nanos", "hash": hash(NANOS), "owner": "immport",
         "scopes": ["browse"], "expires_at": "2026-05-21T20:55:24.654328038Z"},
        {"id": "id-offset", "hash": hash(OFFSET), "owner": "vspc",
         "scopes": ["browse"], "expires_at": "2026-06-01T02:00:00+02:00"}
    ])
}

fn all_sources() -> Value {
    json!([
        {"authorization": {"schemes": ["Bearer", "ApiKey", "Basic"], "basic_username": "apikey"}},
        {"header": "x-api-key"},
        {"query": "api_key"}
    ])
}

/// Sources: Authorization (bit 0), `x-api-key` (bit 1), `api_key` query (bit 2).
fn base_doc() -> Value {
    json!({
        "sources": all_sources(),
        "keys": keys(),
        "rules": crate::rules::spec_example_rules(),
        "unmatched": "deny"
    })
}

fn config_from(doc: &Value) -> Config {
    match Config::parse(doc.to_string().as_bytes()) {
        Ok(c) => c,
        Err(errors) => panic!("test config refused: {errors:?}"),
    }
}

fn config() -> Config {
    config_from(&base_doc())
}

fn config_with(field: &str, value: Value) -> Config {
    let mut doc = base_doc();
    doc[field] = value;
    config_from(&doc)
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Headers {
    let mut h = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":scheme".to_string(), b"http".to_vec()),
        (":authority".to_string(), b"api.example.org".to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        ("user-agent".to_string(), b"curl/8.5.0".to_vec()),
    ];
    for (n, v) in extra {
        h.push((n.to_string(), v.as_bytes().to_vec()));
    }
    h
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

/// "Now" for most tests: between EXPIRED's expiry and FUTURE's.
fn now() -> Timestamp {
    at("2026-01-15T12:00:00Z")
}

fn no_clock() -> Timestamp {
    panic!("the clock must not be read for this request")
}

fn run<'c>(config: &'c Config, headers: &[(String, Vec<u8>)]) -> Verdict<'c> {
    decide(config, headers, now)
}

fn allowed<'c>(v: Verdict<'c>) -> Allowed<'c> {
    match v {
        Verdict::Allow(a) => a,
        Verdict::Deny(d) => panic!("expected Allow, got Deny({d:?})"),
    }
}

fn denied<'c>(v: Verdict<'c>) -> Denial<'c> {
    match v {
        Verdict::Deny(d) => d,
        Verdict::Allow(a) => panic!("expected Deny, got Allow({a:?})"),
    }
}

fn key_id(a: &Allowed<'_>) -> Option<String> {
    a.key.map(|k| k.id.as_str().to_string())
}

fn assert_allowed_as<'c>(v: Verdict<'c>, id: &str) -> Allowed<'c> {
    let a = allowed(v);
    assert_eq!(key_id(&a).as_deref(), Some(id), "{a:?}");
    a
}

fn assert_bad_request(v: Verdict<'_>) -> &'static str {
    match denied(v) {
        Denial::BadRequest(why) => why,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Edit {
    Set(String, String),
    Remove(String),
}

fn set(name: &str, value: &str) -> Edit {
    Edit::Set(name.to_string(), value.to_string())
}

fn rm(name: &str) -> Edit {
    Edit::Remove(name.to_string())
}

#[derive(Default)]
struct Recorder(Vec<Edit>);

impl HeaderEditor for Recorder {
    fn set(&mut self, name: &str, value: &str) {
        self.0.push(set(name, value));
    }
    fn remove(&mut self, name: &str) {
        self.0.push(rm(name));
    }
}

fn edits(a: &Allowed<'_>, config: &Config) -> Vec<Edit> {
    let mut r = Recorder::default();
    a.apply(config, &mut r);
    r.0
}

/// Carries the edits out on the request the way Envoy would, and returns what the upstream
/// receives (name, value as text), in order.
fn upstream(
    a: &Allowed<'_>,
    config: &Config,
    headers: &[(String, Vec<u8>)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    for e in edits(a, config) {
        match e {
            Edit::Remove(name) => out.retain(|(n, _)| *n != name),
            Edit::Set(name, value) => {
                if let Some(pos) = out.iter().position(|(n, _)| *n == name) {
                    out.retain(|(n, _)| *n != name);
                    out.insert(pos, (name, value));
                } else {
                    out.push((name, value));
                }
            }
        }
    }
    out
}

fn header_values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------
// §1 Credentials: every form reaches an allow
// ---------------------------------------------------------------------------------------

#[test]
fn bearer_key_is_allowed_with_identity() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(ALICE))]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    let k = a.key.unwrap();
    assert_eq!(k.owner.as_str(), "alice");
    assert_eq!(&*k.scopes_header, "browse download");
    assert_eq!(a.hide_sources, 0b001);
    assert_eq!(a.spoofed, 0);
    assert_eq!(a.new_path, None);
}

#[test]
fn apikey_scheme_is_allowed() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &format!("ApiKey {ALICE}"))],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b001);
}

#[test]
fn basic_with_apikey_username_is_allowed() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &basic(&format!("apikey:{ALICE}")))],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b001);
}

#[test]
fn basic_with_custom_username_is_allowed_and_default_username_is_not_a_key() {
    let c = config_with(
        "sources",
        json!([{"authorization": {"schemes": ["Basic"], "basic_username": "svc"}}]),
    );
    let ok = request(
        "GET",
        "/data/query",
        &[("authorization", &basic(&format!("svc:{ALICE}")))],
    );
    assert_allowed_as(run(&c, &ok), "id-alice");
    let other = request(
        "GET",
        "/data/query",
        &[("authorization", &basic(&format!("apikey:{ALICE}")))],
    );
    assert_eq!(denied(run(&c, &other)), Denial::Missing);
}

#[test]
fn scheme_names_are_case_insensitive() {
    let c = config();
    for value in [
        format!("bearer {ALICE}"),
        format!("BEARER {ALICE}"),
        format!("bEaReR {ALICE}"),
        format!("apikey {ALICE}"),
        format!("APIKEY {ALICE}"),
        basic(&format!("apikey:{ALICE}")).replacen("Basic", "basic", 1),
        basic(&format!("apikey:{ALICE}")).replacen("Basic", "BASIC", 1),
    ] {
        let h = request("GET", "/data/query", &[("authorization", &value)]);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{value}");
    }
}

#[test]
fn whitespace_around_the_key_is_ignored() {
    let c = config();
    for (name, value) in [
        ("authorization", format!("  Bearer \t {ALICE}  ")),
        ("x-api-key", format!("  {ALICE}\t")),
    ] {
        let h = request("GET", "/data/query", &[(name, &value)]);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{name}: {value:?}");
    }
}

#[test]
fn named_header_key_is_allowed() {
    let c = config();
    let h = request("GET", "/data/query", &[("x-api-key", ALICE)]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b010);
    assert_eq!(a.new_path, None);
}

#[test]
fn named_header_configured_in_mixed_case_matches_lowercase_header() {
    let c = config_with("sources", json!([{"header": "ApiKey"}]));
    let h = request("GET", "/data/query", &[("apikey", ALICE)]);
    assert_allowed_as(run(&c, &h), "id-alice");
}

#[test]
fn query_parameter_key_is_allowed() {
    let c = config();
    let h = request("GET", &format!("/data/query?api_key={ALICE}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b100);
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn percent_encoded_query_parameter_key_is_allowed() {
    let c = config();
    // `%5F` is `_` in the name, `%6B` is `k` in the value.
    let encoded_key = ALICE.replacen('k', "%6B", 1);
    let h = request("GET", &format!("/data/query?api%5Fkey={encoded_key}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn only_configured_sources_are_read() {
    let c = config_with("sources", json!([{"header": "x-api-key"}]));
    let h = request(
        "GET",
        &format!("/data/query?api_key={ALICE}"),
        &[("authorization", &bearer(ALICE))],
    );
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
}

#[test]
fn default_sources_read_only_the_authorization_header() {
    let mut doc = base_doc();
    doc.as_object_mut().unwrap().remove("sources");
    let c = config_from(&doc);
    let bearer_h = request("GET", "/data/query", &[("authorization", &bearer(ALICE))]);
    assert_allowed_as(run(&c, &bearer_h), "id-alice");
    let header = request("GET", "/data/query", &[("x-api-key", ALICE)]);
    assert_eq!(denied(run(&c, &header)), Denial::Missing);
    let query = request("GET", &format!("/data/query?api_key={ALICE}"), &[]);
    assert_eq!(denied(run(&c, &query)), Denial::Missing);
}

#[test]
fn legacy_apikey_prefix_is_stripped_from_every_source() {
    let c = config();
    let legacy = format!("apikey|{ALICE}");
    let cases = [
        request("GET", "/data/query", &[("authorization", &bearer(&legacy))]),
        request(
            "GET",
            "/data/query",
            &[("authorization", &basic(&format!("apikey:{legacy}")))],
        ),
        request("GET", "/data/query", &[("x-api-key", &legacy)]),
        request("GET", &format!("/data/query?api_key=apikey%7C{ALICE}"), &[]),
    ];
    for h in cases {
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{h:?}");
    }
}

#[test]
fn custom_strip_prefixes_replace_the_default() {
    let c = config_with("strip_prefixes", json!(["legacy:"]));
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(&format!("legacy:{ALICE}")))],
    );
    assert_allowed_as(run(&c, &h), "id-alice");
    let old = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(&format!("apikey|{ALICE}")))],
    );
    assert_eq!(denied(run(&c, &old)), Denial::UnknownKey);
}

#[test]
fn same_key_on_two_sources_is_allowed_and_marks_both() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ALICE)],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b011);
}

#[test]
fn same_key_on_all_three_sources_with_and_without_legacy_prefix_is_allowed() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data/query?api_key={ALICE}"),
        &[
            ("authorization", &bearer(ALICE)),
            ("x-api-key", &format!("apikey|{ALICE}")),
        ],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b111);
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn two_different_keys_are_a_bad_request() {
    let c = config();
    let cases = [
        // Two valid keys.
        request(
            "GET",
            "/data/query",
            &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
        ),
        // A valid key and an unknown one.
        request(
            "GET",
            "/data/query",
            &[("authorization", &bearer(ALICE)), ("x-api-key", UNKNOWN)],
        ),
        // The same header twice.
        request(
            "GET",
            "/data/query",
            &[
                ("authorization", &bearer(ALICE)),
                ("authorization", &bearer(ADMIN)),
            ],
        ),
        // Header and query.
        request(
            "GET",
            &format!("/data/query?api_key={ADMIN}"),
            &[("x-api-key", ALICE)],
        ),
        // The query parameter twice.
        request(
            "GET",
            &format!("/data/query?api_key={ALICE}&api_key={ADMIN}"),
            &[],
        ),
    ];
    for h in cases {
        let why = assert_bad_request(run(&c, &h));
        assert!(why.contains("conflicting"), "{h:?}: {why}");
    }
}

#[test]
fn conflicting_keys_are_refused_even_on_a_public_route() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
    );
    assert!(assert_bad_request(run(&c, &h)).contains("conflicting"));
}

#[test]
fn malformed_credentials_are_a_bad_request() {
    let c = config();
    let cases: Vec<Headers> = vec![
        request("GET", "/data/query", &[("authorization", "Bearer")]),
        request("GET", "/data/query", &[("authorization", "Bearer   ")]),
        request(
            "GET",
            "/data/query",
            &[("authorization", "ApiKey two words")],
        ),
        request(
            "GET",
            "/data/query",
            &[("authorization", "Basic !!!notbase64")],
        ),
        request(
            "GET",
            "/data/query",
            &[("authorization", &basic("apikey-without-colon"))],
        ),
        request(
            "GET",
            "/data/query",
            &[("authorization", &basic("apikey:"))],
        ),
        request("GET", "/data/query", &[("authorization", "Bearer apikey|")]),
        request("GET", "/data/query", &[("x-api-key", "")]),
        request("GET", "/data/query?api_key=", &[]),
        request("GET", "/data/query?api_key=%zz", &[]),
    ];
    for h in cases {
        assert_bad_request(run(&c, &h));
    }
    // A malformed credential is refused on a public route too.
    let public = request("GET", "/healthz", &[("authorization", "Bearer")]);
    assert_bad_request(run(&c, &public));
}

#[test]
fn basic_for_another_user_is_no_credential_so_missing() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &basic("alice@example.org:hunter2"))],
    );
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
}

#[test]
fn unconfigured_or_foreign_schemes_are_no_credential() {
    let c = config_with(
        "sources",
        json!([{"authorization": {"schemes": ["Bearer"]}}]),
    );
    for value in [
        format!("ApiKey {ALICE}"),
        basic(&format!("apikey:{ALICE}")),
        "Digest username=alice".to_string(),
        format!("Token {ALICE}"),
    ] {
        let h = request("GET", "/data/query", &[("authorization", &value)]);
        assert_eq!(denied(run(&c, &h)), Denial::Missing, "{value}");
    }
}

// ---------------------------------------------------------------------------------------
// §3 Missing credential, public routes, unmatched routes
// ---------------------------------------------------------------------------------------

#[test]
fn missing_credential_on_protected_route_is_missing() {
    let c = config();
    for (method, path) in [
        ("GET", "/data/query"),
        ("GET", "/data/download/x"),
        ("POST", "/data/upload"),
        ("GET", "/admin/keys"),
    ] {
        let h = request(method, path, &[]);
        let d = denied(decide(&c, &h, no_clock));
        assert_eq!(d, Denial::Missing, "{method} {path}");
        assert_eq!(d.outcome(), Outcome::Missing);
    }
}

#[test]
fn missing_credential_on_public_route_is_allowed_without_key() {
    let c = config();
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/healthz/live"),
        ("GET", "/healthz/"),
    ] {
        let h = request(method, path, &[]);
        let v = decide(&c, &h, no_clock);
        assert_eq!(v.outcome(), Outcome::Public, "{method} {path}");
        let a = allowed(v);
        assert_eq!(a.key, None);
        assert_eq!(a.hide_sources, 0);
        assert_eq!(a.new_path, None);
    }
}

#[test]
fn unmatched_deny_without_key_is_no_rule() {
    let c = config();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/other"),
        ("POST", "/data/query"),
        ("DELETE", "/data/upload/x"),
        ("GET", "/admin/keys/1"),
    ] {
        let h = request(method, path, &[]);
        let d = denied(decide(&c, &h, no_clock));
        assert_eq!(d, Denial::NoRule, "{method} {path}");
        assert_eq!(d.outcome(), Outcome::Forbidden);
    }
}

#[test]
fn unmatched_deny_with_valid_key_is_no_rule() {
    let c = config();
    for key in [ALICE, ADMIN, NOSCOPE] {
        let h = request("GET", "/other", &[("authorization", &bearer(key))]);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{key}");
    }
}

#[test]
fn unmatched_is_deny_by_default() {
    let mut doc = base_doc();
    doc.as_object_mut().unwrap().remove("unmatched");
    let c = config_from(&doc);
    let h = request("GET", "/other", &[("authorization", &bearer(ADMIN))]);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn unmatched_deny_with_unknown_key_is_still_an_invalid_key() {
    // An invalid key is rejected as anywhere else (401), before the route is considered.
    let c = config();
    let h = request("GET", "/other", &[("authorization", &bearer(UNKNOWN))]);
    assert_eq!(denied(run(&c, &h)), Denial::UnknownKey);
}

#[test]
fn unmatched_authenticate_lets_any_valid_key_pass() {
    let c = config_with("unmatched", json!("authenticate"));
    for (key, id) in [
        (ALICE, "id-alice"),
        (NOSCOPE, "id-noscope"),
        (ADMIN, "id-admin"),
    ] {
        let h = request("DELETE", "/other/thing", &[("authorization", &bearer(key))]);
        let v = run(&c, &h);
        assert_eq!(v.outcome(), Outcome::Allowed);
        assert_allowed_as(v, id);
    }
}

#[test]
fn unmatched_authenticate_without_key_is_missing() {
    let c = config_with("unmatched", json!("authenticate"));
    let h = request("GET", "/other", &[]);
    assert_eq!(denied(decide(&c, &h, no_clock)), Denial::Missing);
}

#[test]
fn unmatched_authenticate_still_refuses_invalid_keys_and_rules_still_apply() {
    let c = config_with("unmatched", json!("authenticate"));
    let unknown = request("GET", "/other", &[("authorization", &bearer(UNKNOWN))]);
    assert_eq!(denied(run(&c, &unknown)), Denial::UnknownKey);
    let expired = request("GET", "/other", &[("authorization", &bearer(EXPIRED))]);
    assert!(matches!(denied(run(&c, &expired)), Denial::Expired(_)));
    let disabled = request("GET", "/other", &[("authorization", &bearer(DISABLED))]);
    assert!(matches!(denied(run(&c, &disabled)), Denial::Disabled(_)));
    // A matched rule still needs its scopes.
    let scoped = request("GET", "/admin/keys", &[("authorization", &bearer(NOSCOPE))]);
    assert!(matches!(
        denied(run(&c, &scoped)),
        Denial::MissingScope {
            needed: "admin",
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------
// §3 Public routes with a key presented
// ---------------------------------------------------------------------------------------

#[test]
fn public_route_with_unknown_key_is_unknown_key() {
    let c = config();
    for extra in [
        ("authorization", bearer(UNKNOWN)),
        ("x-api-key", UNKNOWN.to_string()),
    ] {
        let h = request("GET", "/healthz", &[(extra.0, &extra.1)]);
        let d = denied(run(&c, &h));
        assert_eq!(d, Denial::UnknownKey);
        assert_eq!(d.outcome(), Outcome::Invalid);
    }
    let q = request("GET", &format!("/healthz?api_key={UNKNOWN}"), &[]);
    assert_eq!(denied(run(&c, &q)), Denial::UnknownKey);
}

#[test]
fn public_route_with_valid_key_forwards_identity() {
    let c = config();
    // NOSCOPE holds no scopes at all: a public route needs none.
    let h = request("GET", "/healthz", &[("authorization", &bearer(NOSCOPE))]);
    let v = run(&c, &h);
    assert_eq!(v.outcome(), Outcome::Allowed);
    let a = assert_allowed_as(v, "id-noscope");
    assert_eq!(
        edits(&a, &c),
        vec![
            set("x-api-key-id", "id-noscope"),
            set("x-api-key-owner", "nobody"),
            set("x-api-key-scopes", ""),
            rm("authorization"),
        ]
    );
}

#[test]
fn public_route_with_expired_key_is_expired() {
    let c = config();
    let h = request("GET", "/healthz", &[("authorization", &bearer(EXPIRED))]);
    let d = denied(run(&c, &h));
    assert!(
        matches!(&d, Denial::Expired(k) if k.id.as_str() == "id-expired"),
        "{d:?}"
    );
    assert_eq!(d.outcome(), Outcome::Expired);
}

#[test]
fn public_route_with_disabled_key_is_disabled() {
    let c = config();
    let h = request("GET", "/healthz", &[("x-api-key", DISABLED)]);
    let d = denied(run(&c, &h));
    assert!(
        matches!(&d, Denial::Disabled(k) if k.id.as_str() == "id-disabled"),
        "{d:?}"
    );
}

// ---------------------------------------------------------------------------------------
// §2 Key states: unknown, expired, disabled; the clock
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_key_is_refused() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(UNKNOWN))]);
    let d = denied(decide(&c, &h, no_clock));
    assert_eq!(d, Denial::UnknownKey);
    assert_eq!(d.key(), None);
}

#[test]
fn key_hash_lookup_is_exact_and_case_sensitive() {
    let c = config();
    for near in [
        ALICE.to_uppercase(),
        format!("{ALICE}x"),
        ALICE[..ALICE.len() - 1].to_string(),
        hash(ALICE), // presenting the stored hash is not presenting the key
    ] {
        let h = request("GET", "/data/query", &[("authorization", &bearer(&near))]);
        assert_eq!(denied(run(&c, &h)), Denial::UnknownKey, "{near}");
    }
}

#[test]
fn key_expired_before_now_is_expired() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(EXPIRED))]);
    let d = denied(run(&c, &h));
    assert!(
        matches!(&d, Denial::Expired(k) if k.id.as_str() == "id-expired"),
        "{d:?}"
    );
    assert_eq!(d.key().map(|k| k.id.as_str()), Some("id-expired"));
}

#[test]
fn key_expires_at_the_instant_it_names() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(FUTURE))]);
    let d = denied(decide(&c, &h, || at("2030-01-01T00:00:00Z")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
    let a = allowed(decide(&c, &h, || at("2029-12-31T23:59:59.999999999Z")));
    assert_eq!(key_id(&a).as_deref(), Some("id-future"));
    let d = denied(decide(&c, &h, || at("2030-01-01T00:00:00.000000001Z")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
}

#[test]
fn nanosecond_expiry_is_compared_to_the_nanosecond() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(NANOS))]);
    let a = allowed(decide(&c, &h, || at("2026-05-21T20:55:24.654328037Z")));
    assert_eq!(key_id(&a).as_deref(), Some("id-nanos"));
    let d = denied(decide(&c, &h, || at("2026-05-21T20:55:24.654328038Z")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
    // A `now` with coarser precision, same instant.
    let d = denied(decide(&c, &h, || at("2026-05-21T20:55:25Z")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
}

#[test]
fn expiry_with_offset_is_the_instant_in_utc() {
    // expires_at "2026-06-01T02:00:00+02:00" is 2026-06-01T00:00:00Z.
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(OFFSET))]);
    let a = allowed(decide(&c, &h, || at("2026-05-31T23:59:59.999999999Z")));
    assert_eq!(key_id(&a).as_deref(), Some("id-offset"));
    let d = denied(decide(&c, &h, || at("2026-06-01T00:00:00Z")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
    // 01:30 at +02:00 is still before the expiry; 03:00 at +02:00 is after.
    let a = allowed(decide(&c, &h, || at("2026-06-01T01:30:00+02:00")));
    assert!(a.key.is_some());
    let d = denied(decide(&c, &h, || at("2026-06-01T03:00:00+02:00")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
    // A negative offset: 2026-05-31T20:00:00-04:00 is exactly the expiry.
    let d = denied(decide(&c, &h, || at("2026-05-31T20:00:00-04:00")));
    assert!(matches!(d, Denial::Expired(_)), "{d:?}");
}

#[test]
fn disabled_key_is_disabled() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(DISABLED))],
    );
    let d = denied(decide(&c, &h, no_clock));
    assert!(
        matches!(&d, Denial::Disabled(k) if k.id.as_str() == "id-disabled"),
        "{d:?}"
    );
    assert_eq!(d.outcome(), Outcome::Disabled);
    assert_eq!(d.key().map(|k| k.id.as_str()), Some("id-disabled"));
}

#[test]
fn disabled_wins_over_expired() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(DISABLED_EXPIRED))],
    );
    // Long after the expiry, and before it: always Disabled.
    for when in ["2026-01-15T12:00:00Z", "2010-01-01T00:00:00Z"] {
        let d = denied(decide(&c, &h, || at(when)));
        assert!(matches!(d, Denial::Disabled(_)), "{when}: {d:?}");
    }
}

#[test]
fn key_state_is_checked_before_scopes_and_read_only() {
    let c = config();
    // The expired key lacks `admin` too; the answer is about the expiry.
    let h = request("GET", "/admin/keys", &[("authorization", &bearer(EXPIRED))]);
    assert!(matches!(denied(run(&c, &h)), Denial::Expired(_)));
    let h = request(
        "POST",
        "/data/query",
        &[("authorization", &bearer(DISABLED))],
    );
    assert!(matches!(denied(run(&c, &h)), Denial::Disabled(_)));
}

#[test]
fn clock_is_not_read_for_keys_without_expiry() {
    let c = config();
    let cases = [
        request("GET", "/data/query", &[("authorization", &bearer(ALICE))]),
        request("GET", "/healthz", &[("authorization", &bearer(ALICE))]),
        request("POST", "/data/upload", &[("authorization", &bearer(ALICE))]),
        request(
            "POST",
            "/data/download",
            &[("authorization", &bearer(READONLY))],
        ),
        request("GET", "/other", &[("authorization", &bearer(ADMIN))]),
        request("GET", "/data/query", &[("authorization", &bearer(UNKNOWN))]),
        request(
            "GET",
            "/data/query",
            &[("authorization", &bearer(DISABLED))],
        ),
        request("GET", "/data/query", &[]),
        request("GET", "/healthz", &[]),
        request("GET", "/data/%2F", &[]),
    ];
    for h in cases {
        // Any verdict will do; reading the clock panics.
        let _ = decide(&c, &h, no_clock);
    }
}

#[test]
fn clock_is_read_once_for_a_key_with_expiry() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(FUTURE))]);
    let calls = Cell::new(0);
    let a = allowed(decide(&c, &h, || {
        calls.set(calls.get() + 1);
        now()
    }));
    assert_eq!(key_id(&a).as_deref(), Some("id-future"));
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------
// §3 Scopes and methods
// ---------------------------------------------------------------------------------------

#[test]
fn key_holding_the_needed_scope_is_allowed() {
    let c = config();
    for (method, path, key, id) in [
        ("GET", "/data/query", ALICE, "id-alice"),
        ("HEAD", "/data/query/study/1", ALICE, "id-alice"),
        ("GET", "/data/download/file.csv", ALICE, "id-alice"),
        ("DELETE", "/data/download/file.csv", ALICE, "id-alice"),
        ("POST", "/data/upload", UPLOADER, "id-uploader"),
        ("PUT", "/data/upload/x", UPLOADER, "id-uploader"),
        ("GET", "/admin/keys", ADMIN, "id-admin"),
    ] {
        let h = request(method, path, &[("authorization", &bearer(key))]);
        let v = run(&c, &h);
        assert_eq!(v.outcome(), Outcome::Allowed, "{method} {path}");
        let a = allowed(v);
        assert_eq!(key_id(&a).as_deref(), Some(id), "{method} {path}");
    }
}

#[test]
fn key_missing_a_scope_is_missing_scope_with_needed_text() {
    let c = config();
    for (method, path, key, want_id, want_needed) in [
        ("POST", "/data/upload", ALICE, "id-alice", "upload"),
        (
            "GET",
            "/data/download/x",
            UPLOADER,
            "id-uploader",
            "download",
        ),
        ("GET", "/admin/keys", ALICE, "id-alice", "admin"),
        ("GET", "/data/query", NOSCOPE, "id-noscope", "browse"),
    ] {
        let h = request(method, path, &[("authorization", &bearer(key))]);
        let d = denied(run(&c, &h));
        match &d {
            Denial::MissingScope { key, needed } => {
                assert_eq!(key.id.as_str(), want_id);
                assert_eq!(*needed, want_needed);
            }
            other => panic!("{method} {path}: {other:?}"),
        }
        assert_eq!(d.outcome(), Outcome::Forbidden);
        assert_eq!(d.key().map(|k| k.id.as_str()), Some(want_id));
    }
}

#[test]
fn rule_with_several_scopes_needs_every_one() {
    let c = config_with(
        "rules",
        json!([{"path_prefix": "/reports", "scopes": ["browse", "download"]}]),
    );
    let ok = request("GET", "/reports/1", &[("authorization", &bearer(ALICE))]);
    assert_allowed_as(run(&c, &ok), "id-alice");
    // UPLOADER holds browse but not download; ADMIN holds both and more.
    let partial = request("GET", "/reports/1", &[("authorization", &bearer(UPLOADER))]);
    assert_eq!(
        denied(run(&c, &partial)),
        Denial::MissingScope {
            key: allowed(run(&c, &ok))
                .key
                .map(|_| ())
                .map_or_else(|| unreachable!(), |()| inline_record(&c, UPLOADER)),
            needed: "browse download",
        }
    );
    let more = request("GET", "/reports/1", &[("authorization", &bearer(ADMIN))]);
    assert_allowed_as(run(&c, &more), "id-admin");
}

#[test]
fn key_scopes_no_rule_mentions_decide_nothing_but_are_forwarded() {
    let mut doc = base_doc();
    doc["keys"] = json!([{"id": "x", "hash": hash("kg_x"), "owner": "o",
                          "scopes": ["unrelated", "browse", "other:thing"]}]);
    let c = config_from(&doc);
    let h = request("GET", "/data/query", &[("authorization", &bearer("kg_x"))]);
    let a = assert_allowed_as(run(&c, &h), "x");
    assert!(edits(&a, &c).contains(&set("x-api-key-scopes", "unrelated browse other:thing")));
    let up = request(
        "POST",
        "/data/upload",
        &[("authorization", &bearer("kg_x"))],
    );
    assert!(matches!(
        denied(run(&c, &up)),
        Denial::MissingScope {
            needed: "upload",
            ..
        }
    ));
}

#[test]
fn method_filter_mismatch_falls_through_to_unmatched() {
    let c = config();
    // `/data/query` only allows GET and HEAD; POST matches no rule.
    let h = request("POST", "/data/query", &[("authorization", &bearer(ADMIN))]);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
    // `/data/upload` only POST and PUT.
    let h = request(
        "GET",
        "/data/upload/x",
        &[("authorization", &bearer(ADMIN))],
    );
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn method_filter_mismatch_falls_through_to_the_next_rule() {
    let c = config_with(
        "rules",
        json!([
            {"path_prefix": "/items", "methods": ["GET"], "scopes": ["browse"]},
            {"path_prefix": "/items", "scopes": ["upload"]}
        ]),
    );
    let get = request("GET", "/items/1", &[("authorization", &bearer(ALICE))]);
    assert_allowed_as(run(&c, &get), "id-alice");
    let post = request("POST", "/items/1", &[("authorization", &bearer(ALICE))]);
    assert!(matches!(
        denied(run(&c, &post)),
        Denial::MissingScope {
            needed: "upload",
            ..
        }
    ));
    let post_up = request("POST", "/items/1", &[("authorization", &bearer(UPLOADER))]);
    assert_allowed_as(run(&c, &post_up), "id-uploader");
}

#[test]
fn first_matching_rule_wins() {
    let c = config_with(
        "rules",
        json!([
            {"path_prefix": "/", "methods": ["OPTIONS"], "public": true},
            {"path_prefix": "/data", "scopes": ["admin"]},
            {"path_prefix": "/data/query", "scopes": ["browse"]},
            {"path_prefix": "/data/query", "public": true}
        ]),
    );
    // The broader `/data` rule comes first: browse is not enough.
    let h = request("GET", "/data/query", &[("authorization", &bearer(ALICE))]);
    assert!(matches!(
        denied(run(&c, &h)),
        Denial::MissingScope {
            needed: "admin",
            ..
        }
    ));
    // A later public rule does not open it either.
    let h = request("GET", "/data/query", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
    // OPTIONS hits the first rule, public, anywhere.
    let h = request("OPTIONS", "/data/query", &[]);
    assert_eq!(allowed(run(&c, &h)).key, None);
}

#[test]
fn methods_match_rules_in_any_case() {
    // HTTP/2 lets a client send `get`; frameworks that treat it as GET must not see a
    // looser rule applied to it.
    let c = config();
    let h = request("get", "/data/query", &[("authorization", &bearer(ALICE))]);
    assert_allowed_as(run(&c, &h), "id-alice");
    let h = request(
        "post",
        "/data/upload/x",
        &[("authorization", &bearer(ALICE))],
    );
    assert!(matches!(
        denied(run(&c, &h)),
        Denial::MissingScope {
            needed: "upload",
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------
// §3 read_only keys
// ---------------------------------------------------------------------------------------

#[test]
fn read_only_key_may_get_head_and_options() {
    let c = config();
    for method in ["GET", "HEAD", "OPTIONS"] {
        let h = request(
            method,
            "/data/download/x",
            &[("authorization", &bearer(READONLY))],
        );
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-ro"), "{method}");
    }
}

#[test]
fn read_only_key_may_not_write() {
    let c = config();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let h = request(
            method,
            "/data/download/x",
            &[("authorization", &bearer(READONLY))],
        );
        let d = denied(run(&c, &h));
        assert!(
            matches!(&d, Denial::ReadOnly(k) if k.id.as_str() == "id-ro"),
            "{method}: {d:?}"
        );
        assert_eq!(d.outcome(), Outcome::Forbidden);
        assert_eq!(d.key().map(|k| k.id.as_str()), Some("id-ro"));
    }
}

#[test]
fn read_only_key_holding_the_scope_still_may_not_upload() {
    let c = config();
    for method in ["POST", "PUT"] {
        let h = request(
            method,
            "/data/upload/f",
            &[("authorization", &bearer(READONLY))],
        );
        assert!(
            matches!(denied(run(&c, &h)), Denial::ReadOnly(_)),
            "{method}"
        );
    }
}

#[test]
fn read_only_key_writing_on_public_route_is_read_only() {
    let c = config();
    let h = request("POST", "/healthz", &[("authorization", &bearer(READONLY))]);
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)));
    let h = request("GET", "/healthz", &[("authorization", &bearer(READONLY))]);
    assert_allowed_as(run(&c, &h), "id-ro");
}

#[test]
fn read_only_key_writing_under_unmatched_authenticate_is_read_only() {
    let c = config_with("unmatched", json!("authenticate"));
    let h = request("DELETE", "/other", &[("authorization", &bearer(READONLY))]);
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)));
    let h = request("GET", "/other", &[("authorization", &bearer(READONLY))]);
    assert_allowed_as(run(&c, &h), "id-ro");
}

// ---------------------------------------------------------------------------------------
// §3 Path normalization, and the path forwarded upstream
// ---------------------------------------------------------------------------------------

#[test]
fn rules_match_the_normalized_path_and_it_is_forwarded() {
    let c = config();
    for (raw, normal) in [
        ("/data//query/../query/x", "/data/query/x"),
        ("//data///query", "/data/query"),
        ("/data/./query", "/data/query"),
        ("/data/upload/../query", "/data/query"),
        ("/data/%71uery", "/data/query"),
        ("/%64ata/query/%7Ex", "/data/query/~x"),
    ] {
        let h = request("GET", raw, &[("authorization", &bearer(ALICE))]);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{raw}");
        assert_eq!(a.new_path.as_deref(), Some(normal), "{raw}");
    }
}

#[test]
fn dot_segments_cannot_reach_a_protected_route_through_a_public_one() {
    let c = config();
    for raw in [
        "/healthz/../admin/keys",
        "/healthz/%2e%2e/admin/keys",
        "/healthz/./../admin//keys",
    ] {
        let h = request("GET", raw, &[]);
        assert_eq!(denied(run(&c, &h)), Denial::Missing, "{raw}");
        let h = request("GET", raw, &[("authorization", &bearer(ALICE))]);
        assert!(
            matches!(
                denied(run(&c, &h)),
                Denial::MissingScope {
                    needed: "admin",
                    ..
                }
            ),
            "{raw}"
        );
    }
}

#[test]
fn dot_segments_into_a_public_route_are_public_and_normalized() {
    let c = config();
    let h = request("GET", "/admin/../healthz", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(a.new_path.as_deref(), Some("/healthz"));
}

#[test]
fn encoded_slash_backslash_and_nul_are_bad_requests() {
    let c = config();
    for raw in [
        "/data%2Fquery",
        "/data%2fquery",
        "/data/query%5Cx",
        "/data/query%00",
        "/healthz%2F..%2Fadmin/keys",
    ] {
        let h = request("GET", raw, &[("authorization", &bearer(ADMIN))]);
        let why = assert_bad_request(decide(&c, &h, no_clock));
        assert!(why.starts_with("request path"), "{raw}: {why}");
    }
}

#[test]
fn dot_dot_above_root_is_a_bad_request() {
    let c = config();
    for raw in [
        "/..",
        "/../admin/keys",
        "/data/../../x",
        "/healthz/../../healthz",
    ] {
        let h = request("GET", raw, &[]);
        let why = assert_bad_request(run(&c, &h));
        assert!(why.contains(".."), "{raw}: {why}");
    }
}

#[test]
fn other_bad_paths_are_bad_requests_even_on_public_routes() {
    let c = config();
    for raw in [
        "healthz",
        "*",
        "",
        "/healthz\\x",
        "/healthz#frag",
        "/healthz/%zz",
        "/healthz/..;/admin",
        "/healthz/caf\u{e9}",
    ] {
        let h = request("GET", raw, &[]);
        assert_bad_request(run(&c, &h));
    }
}

#[test]
fn path_is_checked_before_the_credential() {
    let c = config();
    // Bad path and conflicting keys: the path is what the 400 names.
    let h = request(
        "GET",
        "/data%2Fquery",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
    );
    assert!(assert_bad_request(run(&c, &h)).contains("%2F"));
}

#[test]
fn prefix_rules_are_segment_aware() {
    let c = config();
    for raw in ["/data/queryx", "/data/query-x", "/healthzx", "/data"] {
        let h = request("GET", raw, &[("authorization", &bearer(ADMIN))]);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{raw}");
    }
    let h = request("GET", "/healthzx", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn exact_path_rule_matches_only_that_path() {
    let c = config();
    let ok = request("GET", "/admin/keys", &[("authorization", &bearer(ADMIN))]);
    assert_allowed_as(run(&c, &ok), "id-admin");
    for raw in ["/admin/keys/1", "/admin", "/admin/keysx"] {
        let h = request("GET", raw, &[("authorization", &bearer(ADMIN))]);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{raw}");
    }
    // A trailing slash names the same resource to many frameworks: the rule still applies.
    let h = request("GET", "/admin/keys/", &[("authorization", &bearer(ALICE))]);
    assert!(matches!(
        denied(run(&c, &h)),
        Denial::MissingScope {
            needed: "admin",
            ..
        }
    ));
    // But a path that normalizes to it matches.
    let h = request("GET", "/admin//keys", &[("authorization", &bearer(ADMIN))]);
    assert_eq!(
        allowed(run(&c, &h)).new_path.as_deref(),
        Some("/admin/keys")
    );
}

#[test]
fn query_string_is_not_part_of_the_matched_path() {
    let c = config();
    let h = request(
        "GET",
        "/admin/keys?x=/../healthz",
        &[("authorization", &bearer(ALICE))],
    );
    assert!(matches!(
        denied(run(&c, &h)),
        Denial::MissingScope {
            needed: "admin",
            ..
        }
    ));
    let h = request("GET", "/healthz?next=/admin/keys", &[]);
    assert_eq!(allowed(run(&c, &h)).key, None);
}

#[test]
fn new_path_is_none_when_the_path_is_unchanged() {
    let c = config();
    for raw in [
        "/data/query",
        "/data/query/",
        "/data/query?q=1&r=two",
        "/data/query/x;y=1",
        "/data/query/%C3%A9",
        "/data/query?",
    ] {
        let h = request("GET", raw, &[("authorization", &bearer(ALICE))]);
        let a = allowed(run(&c, &h));
        assert_eq!(a.new_path, None, "{raw}");
        assert!(!edits(&a, &c)
            .iter()
            .any(|e| matches!(e, Edit::Set(n, _) if n == ":path")));
    }
    let public = request("GET", "/healthz", &[]);
    assert_eq!(allowed(run(&c, &public)).new_path, None);
}

#[test]
fn normalized_path_keeps_the_query_string_as_sent() {
    let c = config();
    let h = request(
        "GET",
        "/data//query/./x?b=2&a=1&a=%2F&flag",
        &[("authorization", &bearer(ALICE))],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(
        a.new_path.as_deref(),
        Some("/data/query/x?b=2&a=1&a=%2F&flag")
    );
}

#[test]
fn query_credential_is_removed_from_new_path_other_params_kept_in_order() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data/query?z=26&api_key={ALICE}&a=1&m=%20x"),
        &[],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.new_path.as_deref(), Some("/data/query?z=26&a=1&m=%20x"));
}

#[test]
fn query_credential_alone_leaves_no_question_mark() {
    let c = config();
    let h = request("GET", &format!("/data/query?api_key={ALICE}"), &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn query_credential_sent_twice_or_encoded_is_removed_everywhere() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data/query?api_key={ALICE}&keep=1&api%5Fkey=apikey%7C{ALICE}"),
        &[],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.new_path.as_deref(), Some("/data/query?keep=1"));
}

#[test]
fn query_credential_removed_and_path_normalized_together() {
    let c = config();
    let h = request("GET", &format!("/data/./query//x?a=1&api_key={ALICE}"), &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.new_path.as_deref(), Some("/data/query/x?a=1"));
}

#[test]
fn query_credential_is_kept_when_hide_credentials_is_false() {
    let c = config_with("hide_credentials", json!(false));
    let h = request("GET", &format!("/data/query?a=1&api_key={ALICE}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0);
    assert_eq!(a.new_path, None);
    // Normalization still applies, and the query is kept whole.
    let h = request("GET", &format!("/data//query?a=1&api_key={ALICE}"), &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(
        a.new_path.as_deref(),
        Some(format!("/data/query?a=1&api_key={ALICE}").as_str())
    );
}

#[test]
fn query_parameters_are_untouched_when_the_key_came_from_a_header() {
    let c = config();
    let h = request(
        "GET",
        "/data/query?api_keys=1&xapi_key=2",
        &[("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.new_path, None);
}

#[test]
fn query_credential_on_public_route_is_removed() {
    let c = config();
    let h = request("GET", &format!("/healthz?api_key={ALICE}&v=1"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.new_path.as_deref(), Some("/healthz?v=1"));
}

// ---------------------------------------------------------------------------------------
// §5 What the upstream sees: anti-spoofing, identity, hidden credentials
// ---------------------------------------------------------------------------------------

#[test]
fn identity_is_set_and_credential_hidden_in_order() {
    let c = config();
    let h = request("GET", "/data/query", &[("authorization", &bearer(ALICE))]);
    let a = allowed(run(&c, &h));
    assert_eq!(
        edits(&a, &c),
        vec![
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
            rm("authorization"),
        ]
    );
}

#[test]
fn spoofed_identity_headers_are_removed_then_identity_set() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[
            ("x-api-key-id", "id-admin"),
            ("x-api-key-owner", "root"),
            ("x-api-key-scopes", "admin"),
            ("x-api-key-scopes", "upload"),
            ("authorization", &bearer(ALICE)),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b111);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-id"),
            rm("x-api-key-owner"),
            rm("x-api-key-scopes"),
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
            rm("authorization"),
        ]
    );
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, "x-api-key-id"), ["id-alice"]);
    assert_eq!(header_values(&up, "x-api-key-owner"), ["alice"]);
    assert_eq!(header_values(&up, "x-api-key-scopes"), ["browse download"]);
    assert!(header_values(&up, "authorization").is_empty());
}

#[test]
fn only_the_spoofed_headers_are_removed() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("x-api-key-owner", "root"), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b010);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-owner"),
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
            rm("x-api-key"),
        ]
    );
}

#[test]
fn spoofed_identity_headers_are_removed_on_public_routes_without_key() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[
            ("x-api-key-id", "id-admin"),
            ("x-api-key-owner", "root"),
            ("x-api-key-scopes", "admin"),
        ],
    );
    let v = run(&c, &h);
    assert_eq!(v.outcome(), Outcome::Public);
    let a = allowed(v);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-id"),
            rm("x-api-key-owner"),
            rm("x-api-key-scopes"),
        ]
    );
    let up = upstream(&a, &c, &h);
    assert!(
        up.iter().all(|(n, _)| !n.starts_with("x-api-key")),
        "{up:?}"
    );
}

#[test]
fn spoofed_identity_with_empty_value_is_removed_too() {
    let c = config();
    let h = request("GET", "/healthz", &[("x-api-key-id", "")]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), vec![rm("x-api-key-id")]);
}

#[test]
fn public_route_without_key_or_spoofing_needs_no_edits() {
    let c = config();
    let h = request("GET", "/healthz", &[("accept", "application/json")]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), Vec::<Edit>::new());
}

#[test]
fn custom_forward_names_are_stripped_and_set() {
    let c = config_with(
        "forward",
        json!({"id": "X-Consumer-Id", "owner": "x-consumer-username", "scopes": "x-consumer-groups"}),
    );
    let h = request(
        "GET",
        "/data/query",
        &[
            ("x-consumer-id", "id-admin"),
            ("x-consumer-groups", "admin"),
            ("x-api-key-id", "client-sent"),
            ("authorization", &bearer(ALICE)),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b101);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-consumer-id"),
            rm("x-consumer-groups"),
            set("x-consumer-id", "id-alice"),
            set("x-consumer-username", "alice"),
            set("x-consumer-groups", "browse download"),
            rm("authorization"),
        ]
    );
    // Custom names replace the defaults: `x-api-key-id` is an ordinary header now.
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, "x-api-key-id"), ["client-sent"]);
}

#[test]
fn custom_forward_names_are_stripped_on_public_routes() {
    let c = config_with("forward", json!({"owner": "x-user"}));
    let h = request(
        "GET",
        "/healthz",
        &[("x-user", "root"), ("x-api-key-id", "id-admin")],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(edits(&a, &c), vec![rm("x-api-key-id"), rm("x-user")]);
}

#[test]
fn hide_credentials_removes_the_header_the_key_came_from() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("x-api-key", ALICE), ("authorization", "Digest username=a")],
    );
    let a = allowed(run(&c, &h));
    let e = edits(&a, &c);
    assert_eq!(e.last(), Some(&rm("x-api-key")));
    // The Authorization header did not carry the key: it stays.
    assert!(!e.contains(&rm("authorization")), "{e:?}");
    let up = upstream(&a, &c, &h);
    assert!(header_values(&up, "x-api-key").is_empty());
    assert_eq!(header_values(&up, "authorization"), ["Digest username=a"]);
}

#[test]
fn hide_credentials_removes_every_source_that_carried_the_key() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data//query?api_key={ALICE}&q=1"),
        &[
            ("x-api-key-id", "spoof"),
            ("authorization", &bearer(ALICE)),
            ("x-api-key", ALICE),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.hide_sources, 0b111);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-id"),
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
            rm("authorization"),
            rm("x-api-key"),
            set(":path", "/data/query?q=1"),
        ]
    );
    let up = upstream(&a, &c, &h);
    assert!(
        up.iter().all(|(_, v)| !v.contains(ALICE)),
        "the key reached the upstream: {up:?}"
    );
}

#[test]
fn hide_credentials_false_keeps_the_credential() {
    let c = config_with("hide_credentials", json!(false));
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.hide_sources, 0);
    assert_eq!(
        edits(&a, &c),
        vec![
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
        ]
    );
    let up = upstream(&a, &c, &h);
    assert_eq!(
        header_values(&up, "authorization"),
        [bearer(ALICE).as_str()]
    );
    assert_eq!(header_values(&up, "x-api-key"), [ALICE]);
}

#[test]
fn hide_credentials_false_still_strips_spoofed_identity() {
    let c = config_with("hide_credentials", json!(false));
    let h = request(
        "GET",
        "/healthz",
        &[("x-api-key-scopes", "admin"), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-scopes"),
            set("x-api-key-id", "id-alice"),
            set("x-api-key-owner", "alice"),
            set("x-api-key-scopes", "browse download"),
        ]
    );
}

#[test]
fn hide_credentials_on_public_route_with_valid_key() {
    let c = config();
    let h = request("GET", "/healthz", &[("x-api-key", ALICE)]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c).last(), Some(&rm("x-api-key")));
}

#[test]
fn a_basic_credential_for_another_user_is_not_hidden_on_a_public_route() {
    let c = config();
    let other = basic("alice@example.org:hunter2");
    let h = request("GET", "/healthz", &[("authorization", &other)]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(edits(&a, &c), Vec::<Edit>::new());
}

#[test]
fn normalized_path_is_set_last() {
    let c = config();
    let h = request("GET", "/data//query", &[("x-api-key", ALICE)]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c).last(), Some(&set(":path", "/data/query")));
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, ":path"), ["/data/query"]);
}

#[test]
fn normalized_path_is_forwarded_on_public_routes_without_key() {
    let c = config();
    let h = request("GET", "/healthz//live/.", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), vec![set(":path", "/healthz/live/")]);
}

#[test]
fn apply_follows_the_fields_it_is_given() {
    // Built by hand: every bit and field is honoured independently.
    let c = config();
    let a = Allowed {
        key: None,
        hide_sources: 0b110,
        spoofed: 0b100,
        spoofed_lookalikes: Vec::new(),
        new_path: Some("/p?q=1".to_string()),
    };
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-scopes"),
            rm("x-api-key"),
            set(":path", "/p?q=1")
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Pseudo-headers
// ---------------------------------------------------------------------------------------

fn without(headers: Headers, name: &str) -> Headers {
    headers.into_iter().filter(|(n, _)| n != name).collect()
}

fn replace(headers: Headers, name: &str, value: &[u8]) -> Headers {
    headers
        .into_iter()
        .map(|(n, v)| {
            if n == name {
                (n, value.to_vec())
            } else {
                (n, v)
            }
        })
        .collect()
}

#[test]
fn missing_method_is_a_bad_request() {
    let c = config();
    let h = without(
        request("GET", "/healthz", &[("authorization", &bearer(ALICE))]),
        ":method",
    );
    let d = denied(decide(&c, &h, no_clock));
    assert!(matches!(d, Denial::BadRequest(_)), "{d:?}");
    assert_eq!(d.outcome(), Outcome::Malformed);
}

#[test]
fn missing_path_is_a_bad_request() {
    let c = config();
    let h = without(request("GET", "/healthz", &[]), ":path");
    let why = assert_bad_request(decide(&c, &h, no_clock));
    assert!(why.contains("no path"), "{why}");
}

#[test]
fn no_headers_at_all_is_a_bad_request() {
    let c = config();
    assert_bad_request(decide(&c, &Headers::new(), no_clock));
}

#[test]
fn non_utf8_path_is_a_bad_request() {
    let c = config();
    for bytes in [&b"/healthz/\xff"[..], b"/data/query/\xc3", b"/\x80"] {
        let h = replace(request("GET", "/", &[]), ":path", bytes);
        assert_bad_request(decide(&c, &h, no_clock));
    }
}

#[test]
fn non_utf8_method_is_a_bad_request() {
    let c = config();
    let h = replace(request("GET", "/healthz", &[]), ":method", b"G\xffT");
    assert_bad_request(decide(&c, &h, no_clock));
}

#[test]
fn the_first_pseudo_header_counts() {
    let c = config();
    // A second :path or :method must not change what the rules saw.
    let mut h = request("GET", "/data/query", &[("x-api-key", ALICE)]);
    h.push((":path".to_string(), b"/admin/keys".to_vec()));
    assert_allowed_as(run(&c, &h), "id-alice");
    let mut h = request("GET", "/data/query", &[("x-api-key", ALICE)]);
    h.push((":method".to_string(), b"POST".to_vec()));
    assert_allowed_as(run(&c, &h), "id-alice");
    let mut h = request("POST", "/data/query", &[("x-api-key", ALICE)]);
    h.push((":method".to_string(), b"GET".to_vec()));
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn pseudo_headers_are_never_treated_as_identity_or_credentials() {
    let c = config();
    let h = request("GET", "/healthz", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0);
    assert_eq!(a.hide_sources, 0);
}

// ---------------------------------------------------------------------------------------
// Outcomes (stats mapping) and the key a denial names
// ---------------------------------------------------------------------------------------

fn a_record(c: &Config) -> &KeyRecord {
    inline_record(c, ALICE)
}

fn inline_record<'c>(c: &'c Config, key: &str) -> &'c KeyRecord {
    match &c.keys {
        crate::config::KeySource::Inline(set) => set.get(&KeyHash::of_key(key)).unwrap(),
        _ => panic!("the test configurations carry their keys inline"),
    }
}

#[test]
fn verdict_outcome_for_allows() {
    let c = config();
    let with_key = Verdict::Allow(Allowed {
        key: Some(a_record(&c)),
        hide_sources: 0,
        spoofed: 0,
        spoofed_lookalikes: Vec::new(),
        new_path: None,
    });
    assert_eq!(with_key.outcome(), Outcome::Allowed);
    let public = Verdict::Allow(Allowed {
        key: None,
        hide_sources: 0,
        spoofed: 0b111,
        spoofed_lookalikes: Vec::new(),
        new_path: Some("/x".into()),
    });
    assert_eq!(public.outcome(), Outcome::Public);
}

#[test]
fn denial_outcome_for_every_variant() {
    let c = config();
    let k = a_record(&c);
    let cases = [
        (Denial::BadRequest("x"), Outcome::Malformed, false),
        (Denial::Missing, Outcome::Missing, false),
        (Denial::UnknownKey, Outcome::Invalid, false),
        (Denial::Expired(k), Outcome::Expired, true),
        (Denial::Disabled(k), Outcome::Disabled, true),
        (
            Denial::MissingScope {
                key: k,
                needed: "upload",
            },
            Outcome::Forbidden,
            true,
        ),
        (Denial::ReadOnly(k), Outcome::Forbidden, true),
        (Denial::NoRule, Outcome::Forbidden, false),
        (
            Denial::Unavailable {
                retry_after_seconds: 5,
            },
            Outcome::Unavailable,
            false,
        ),
    ];
    for (denial, outcome, names_key) in cases {
        assert_eq!(denial.outcome(), outcome, "{denial:?}");
        assert_eq!(
            Verdict::Deny(denial.clone()).outcome(),
            outcome,
            "{denial:?}"
        );
        assert_eq!(
            denial.key().map(|r| r.id.as_str()),
            names_key.then_some("id-alice"),
            "{denial:?}"
        );
    }
}

#[test]
fn decided_verdicts_count_as_the_right_outcome() {
    let c = config();
    let cases: Vec<(Headers, Outcome)> = vec![
        (
            request("GET", "/data/query", &[("x-api-key", ALICE)]),
            Outcome::Allowed,
        ),
        (request("GET", "/healthz", &[]), Outcome::Public),
        (
            request("GET", "/healthz", &[("x-api-key", ALICE)]),
            Outcome::Allowed,
        ),
        (request("GET", "/data/query", &[]), Outcome::Missing),
        (
            request("GET", "/data/query", &[("x-api-key", "")]),
            Outcome::Malformed,
        ),
        (request("GET", "/data%2Fquery", &[]), Outcome::Malformed),
        (
            request("GET", "/data/query", &[("x-api-key", UNKNOWN)]),
            Outcome::Invalid,
        ),
        (
            request("GET", "/data/query", &[("x-api-key", EXPIRED)]),
            Outcome::Expired,
        ),
        (
            request("GET", "/data/query", &[("x-api-key", DISABLED)]),
            Outcome::Disabled,
        ),
        (
            request("POST", "/data/upload", &[("x-api-key", ALICE)]),
            Outcome::Forbidden,
        ),
        (
            request("PUT", "/data/download", &[("x-api-key", READONLY)]),
            Outcome::Forbidden,
        ),
        (request("GET", "/nowhere", &[]), Outcome::Forbidden),
    ];
    for (h, outcome) in cases {
        assert_eq!(run(&c, &h).outcome(), outcome, "{h:?}");
    }
}

#[test]
fn verdicts_never_show_the_raw_key_when_debug_printed() {
    let c = config();
    for h in [
        request("GET", "/data/query", &[("x-api-key", ALICE)]),
        request("POST", "/data/upload", &[("x-api-key", ALICE)]),
        request("GET", "/data/query", &[("x-api-key", UNKNOWN)]),
        request("GET", "/data/query", &[("x-api-key", EXPIRED)]),
        request("GET", "/nowhere", &[("x-api-key", ALICE)]),
        request(
            "GET",
            "/data/query",
            &[("x-api-key", ALICE), ("authorization", &bearer(ADMIN))],
        ),
    ] {
        let shown = format!("{:?}", run(&c, &h));
        for key in [ALICE, ADMIN, UNKNOWN, EXPIRED] {
            assert!(!shown.contains(key), "{shown}");
        }
    }
}

#[test]
fn path_parameters_do_not_slip_past_a_rule() {
    let config = config_with("unmatched", json!("authenticate"));
    for path in [
        "/admin/keys;x",
        "/admin;a=b/keys",
        "/admin/keys;jsessionid=1",
    ] {
        let headers = request("GET", path, &[("authorization", &bearer(ALICE))]);
        match denied(run(&config, &headers)) {
            Denial::MissingScope { needed, .. } => assert_eq!(needed, "admin", "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    // The parameters still reach the upstream: only matching ignores them.
    let headers = request(
        "GET",
        "/data/query;v=2/x",
        &[("authorization", &bearer(ALICE))],
    );
    let a = assert_allowed_as(run(&config, &headers), "id-alice");
    assert_eq!(a.new_path, None);
}

#[test]
fn parameter_only_segments_do_not_slip_past_a_rule() {
    let config = config_with("unmatched", json!("authenticate"));
    for path in ["/;x/admin/keys", "/admin/;/keys", "/admin/keys/;x"] {
        let headers = request("GET", path, &[("authorization", &bearer(ALICE))]);
        match denied(run(&config, &headers)) {
            Denial::MissingScope { needed, .. } => assert_eq!(needed, "admin", "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn identity_lookalikes_with_underscores_are_removed() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[
            ("x_api_key_id", "k-admin"),
            ("x-api_key-owner", "root"),
            ("x_api_key_idx", "keep"),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0);
    assert_eq!(
        a.spoofed_lookalikes,
        vec!["x_api_key_id", "x-api_key-owner"]
    );
    assert_eq!(
        edits(&a, &c),
        vec![rm("x_api_key_id"), rm("x-api_key-owner")]
    );
    // An honest request allocates nothing for them.
    let h = request("GET", "/healthz", &[]);
    assert_eq!(allowed(run(&c, &h)).spoofed_lookalikes.capacity(), 0);
}

#[test]
fn a_refused_request_has_its_query_key_redacted_for_the_access_log() {
    let c = config();
    let h = request("GET", "/data/query?a=1&api_key=kg_wrong&b=2", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::UnknownKey);
    assert_eq!(
        redacted_target(&c, &h).as_deref(),
        Some("/data/query?a=1&b=2")
    );
    let h = request("GET", "/data/query?api_key=kg_wrong", &[]);
    assert_eq!(redacted_target(&c, &h).as_deref(), Some("/data/query"));
    // Nothing to remove: nothing to change.
    let h = request("GET", "/data/query?a=1", &[]);
    assert_eq!(redacted_target(&c, &h), None);
    let h = request("GET", "/data/query", &[]);
    assert_eq!(redacted_target(&c, &h), None);
    let no_query_source = config_with("sources", json!([{"header": "x-api-key"}]));
    let h = request("GET", "/data/query?api_key=kg_wrong", &[]);
    assert_eq!(redacted_target(&no_query_source, &h), None);
}
