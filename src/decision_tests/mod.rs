//! The decision's tests, one module per area; the fixtures (keys, configurations,
//! requests, and a model of the upstream) are here.

mod credentials;
mod jwt;
mod key_format;
mod key_states;
mod outcomes;
mod paths;
mod pseudo_headers;
mod public_with_key;
mod read_only;
mod scopes;
mod unmatched;
mod upstream;

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

/// `GET /data/query` (a route needing `browse`) with one header.
fn get_query_with(name: &str, value: &str) -> Headers {
    request("GET", "/data/query", &[(name, value)])
}

/// A request presenting `key` as a Bearer token, and nothing else.
fn with_bearer(method: &str, path: &str, key: &str) -> Headers {
    request(method, path, &[("authorization", &bearer(key))])
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

/// The scopes a MissingScope denial names; any other verdict fails the test.
fn needed_scope<'c>(v: Verdict<'c>) -> &'c str {
    match denied(v) {
        Denial::MissingScope { needed, .. } => needed,
        other => panic!("expected MissingScope, got {other:?}"),
    }
}

/// Asserts that `d` names the key `id` and counts as `outcome` in the stats.
fn assert_key_denial(d: &Denial<'_>, id: &str, outcome: Outcome) {
    assert_eq!(d.key().map(|k| k.id.as_str()), Some(id), "{d:?}");
    assert_eq!(d.outcome(), outcome, "{d:?}");
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

/// The edits for a request ALICE's key is allowed on: `before` (spoofed identities
/// removed), her identity set, then `after` (credentials hidden, the path).
fn alice_edits(before: Vec<Edit>, after: Vec<Edit>) -> Vec<Edit> {
    let identity = vec![
        set("x-api-key-id", "id-alice"),
        set("x-api-key-owner", "alice"),
        set("x-api-key-scopes", "browse download"),
        set("x-api-key-kind", "api_key"),
    ];
    [before, identity, after].concat()
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

fn inline_record<'c>(c: &'c Config, key: &str) -> &'c KeyRecord {
    match &c.keys {
        crate::config::KeySource::Inline(set) => set.get(&KeyHash::of_key(key)).unwrap(),
        _ => panic!("the test configurations carry their keys inline"),
    }
}
