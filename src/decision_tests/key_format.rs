//! `key_format`: a key with a configured prefix is refused (401, malformed) before its
//! hash is looked up when it is not of the issued shape and checksum; other keys are
//! decided as before.

use super::*;
use crate::key_format::{issue, Prefix};

fn issued() -> String {
    issue(&Prefix::parse("kg").unwrap(), [42u8; 32])
}

fn with_format(format: Value) -> Config {
    let mut doc = base_doc();
    let mut keys = keys();
    keys.as_array_mut()
        .unwrap()
        .push(json!({"id": "id-new", "hash": hash(&issued()),
        "owner": "nina", "scopes": ["browse"]}));
    doc["keys"] = keys;
    doc["key_format"] = format;
    config_from(&doc)
}

/// One character of the key's checksum changed.
fn mistyped() -> String {
    let mut key = issued().into_bytes();
    let last = key.len() - 1;
    key[last] = if key[last] == b'x' { b'y' } else { b'x' };
    String::from_utf8(key).unwrap()
}

#[test]
fn a_well_formed_key_is_decided_by_its_record() {
    let c = with_format(json!({"prefixes": ["kg"]}));
    assert_allowed_as(
        run(&c, &with_bearer("GET", "/data/query", &issued())),
        "id-new",
    );
}

#[test]
fn a_mistyped_or_made_up_key_is_refused_before_any_lookup() {
    let c = with_format(json!({"prefixes": ["kg"]}));
    for key in [mistyped(), UNKNOWN.to_string(), "kg_".to_string()] {
        // On a protected route, and on a public one (a key presented is always checked).
        for path in ["/data/query", "/healthz"] {
            let d = denied(run(&c, &with_bearer("GET", path, &key)));
            assert_eq!(d, Denial::MalformedKey, "{key} on {path}");
            assert_eq!(d.outcome(), Outcome::MalformedKey);
        }
    }
    // The refusal comes from `begin`, before any key source is asked: in key_set and
    // lookup mode the key is never looked up, nor the key service called.
    let lookup = config_with("key_format", json!({"prefixes": ["kg"]}));
    assert!(matches!(
        begin(&lookup, &with_bearer("GET", "/data/query", &mistyped())),
        Step::Done(Verdict::Deny(Denial::MalformedKey))
    ));
}

#[test]
fn keys_without_a_configured_prefix_are_unaffected() {
    // The fixtures' keys are legacy `kg_...` keys: with another prefix configured they
    // are decided by their records, as without key_format.
    let c = with_format(json!({"prefixes": ["ghp", "kgx"]}));
    assert_allowed_as(
        run(&c, &with_bearer("GET", "/data/query", ALICE)),
        "id-alice",
    );
    assert_eq!(
        denied(run(&c, &with_bearer("GET", "/data/query", UNKNOWN))),
        Denial::UnknownKey
    );
    // Checksums off: only the shape is checked.
    let c = with_format(json!({"prefixes": ["kg"], "checksum": false}));
    assert_allowed_as(
        run(&c, &with_bearer("GET", "/data/query", &issued())),
        "id-new",
    );
    assert_eq!(
        denied(run(&c, &with_bearer("GET", "/data/query", &mistyped()))),
        Denial::UnknownKey
    );
}

#[test]
fn the_option_is_checked_at_load() {
    for (format, says) in [
        (json!({"prefixes": []}), "at least one prefix"),
        (json!({"prefixes": ["kg_"]}), "lowercase letters or digits"),
        (json!({"prefixes": ["kg"], "crc": true}), "unknown field"),
        (json!({}), "missing field `prefixes`"),
    ] {
        let mut doc = base_doc();
        doc["key_format"] = format.clone();
        let errors = Config::parse(doc.to_string().as_bytes()).unwrap_err();
        let text = format!("{errors:?}");
        assert!(text.contains(says), "{format}: {text}");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().starts_with("key_format")),
            "{text}"
        );
    }
}
