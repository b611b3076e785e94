//! Key records and plugin configurations the tests and the tools share.

use keygate_core::record::KeyHash;
use serde_json::{json, Value};

/// `hex(sha256(key))`, as a key record's `hash`.
pub fn hash_of(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

/// The raw key of benchmark record `i`.
pub fn bench_key(i: usize) -> String {
    format!("kg_bench_{i}")
}

/// `n` key records with scope `browse` as a JSON array, written directly (a million in
/// a few seconds): record `i` is `bench_key(i)`'s, with id `bench-{i}`.
pub fn bench_records_json(n: usize, expires_at: Option<&str>) -> String {
    bench_records_json_with(n, expires_at, |i| format!("bench-{i}"))
}

/// [`bench_records_json`] with the ids `id` makes.
pub fn bench_records_json_with(
    n: usize,
    expires_at: Option<&str>,
    id: impl Fn(usize) -> String,
) -> String {
    bench_records_json_range(0..n, expires_at, id)
}

/// The records `range` of the bench set (record `i` is `bench_key(i)`'s), ids made by `id`.
pub fn bench_records_json_range(
    range: std::ops::Range<usize>,
    expires_at: Option<&str>,
    id: impl Fn(usize) -> String,
) -> String {
    let expiry = expires_at.map_or(String::new(), |at| format!(",\"expires_at\":\"{at}\""));
    let mut out = String::with_capacity(range.len() * (130 + expiry.len()) + 2);
    out.push('[');
    for i in range.clone() {
        if i > range.start {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":\"{}\",\"hash\":\"{}\",\"owner\":\"owner-{}\",\"scopes\":[\"browse\"]{expiry}}}",
            id(i),
            hash_of(&bench_key(i)),
            i % 1000
        ));
    }
    out.push(']');
    out
}

/// A plugin configuration with every kind of key source (Bearer / ApiKey / Basic,
/// `x-api-key`, `api_key`), the ImmPort-like rules, unmatched routes denied, and `keys`.
pub fn immport_every_source(realm: &str, keys: Value) -> Value {
    json!({
        "realm": realm,
        "sources": [
            {"authorization": {"schemes": ["Bearer", "ApiKey", "Basic"]}},
            {"header": "x-api-key"},
            {"query": "api_key"}
        ],
        "keys": keys,
        "rules": immport_rules(),
        "unmatched": "deny"
    })
}

/// The README's example rules, shaped after ImmPort's scopes (browse, download, upload).
pub fn immport_rules() -> Value {
    json!([
        {"path_prefix": "/healthz", "public": true},
        {"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]},
        {"path_prefix": "/data/download", "scopes": ["download"]},
        {"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]},
        {"path": "/admin/keys", "scopes": ["admin"]}
    ])
}
