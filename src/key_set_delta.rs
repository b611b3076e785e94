//! `key_set` mode's incremental sync (README "`keygate serve`"): the answers of
//! `GET /v1/keyset?since=V&epoch=E&wait=S`, read as hostile input.
//!
//! - 304: nothing newer than `V` during the wait.
//! - 200 with a delta, [`KeySetDelta`]: `{"version","epoch","since","upsert","delete"}`.
//! - 200 with a full document (`{"version","epoch","keys"}`): another epoch, or `V` older
//!   than the change log kept; read with [`crate::record::KeySetDoc`].
//!
//! ## What a delta means
//!
//! The set at `version` is the set at `since` with every record of `upsert` put in place
//! (added, or replacing the record with the same hash) and every hash of `delete` taken
//! out. `upsert` holds, for each key changed after `since` and still served at `version`,
//! its record exactly as `GET /v1/keys/{hash}` answers it at `version`; `delete` each key
//! changed after `since` and not served at `version` (revoked, removed). The service reads
//! the change log, the version and the records in one consistent view, so no change is
//! left out: a key not listed did not change between `since` and `version` (the change log
//! records every key each version touched, in the same transaction as the version).

use crate::record::{check_unique, DigestMap, KeyHash, KeyRecordDoc, KeySetDoc};
use crate::watch::Epoch;
use serde::Deserialize;

/// At most this many keys (upserted and deleted) in one delta: the key service's change
/// log keeps no more; it answers a full document instead.
pub const MAX_DELTA_KEYS: usize = 100_000;
/// A delta's body is read only up to this size.
pub const MAX_DELTA_BYTES: usize = 64 * 1024 * 1024;

/// A delta answer, checked.
#[derive(Debug)]
pub struct KeySetDelta {
    /// The version the delta brings the set to.
    pub version: u64,
    pub epoch: Epoch,
    /// The version the delta applies to.
    pub since: u64,
    pub upsert: Vec<KeyRecordDoc>,
    pub delete: Vec<KeyHash>,
}

/// A 200 answer of `/v1/keyset?since=V&epoch=E`, read in one pass: a delta, or a full
/// document with its epoch.
#[derive(Debug)]
pub enum KeySetAnswer {
    Delta(KeySetDelta),
    Full {
        version: u64,
        epoch: Epoch,
        /// Checked as any key-set document (no duplicate id or hash).
        doc: KeySetDoc,
    },
}

/// Either shape: which one it is comes from the fields present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerDoc<'a> {
    #[serde(borrow)]
    version: &'a str,
    #[serde(borrow)]
    epoch: &'a str,
    #[serde(borrow, default)]
    since: Option<&'a str>,
    #[serde(default)]
    upsert: Option<Vec<KeyRecordDoc>>,
    #[serde(default)]
    delete: Option<Vec<KeyHash>>,
    #[serde(default)]
    keys: Option<Vec<KeyRecordDoc>>,
}

impl KeySetAnswer {
    /// Reads an answer of the incremental sync: a delta as [`KeySetDelta::parse`] does; a
    /// full document (`{"version","epoch","keys"}`) as [`KeySetDoc::parse`] does, with a
    /// decimal version and a valid epoch. A mix of both shapes is refused.
    pub fn parse(body: &[u8]) -> Result<KeySetAnswer, String> {
        let text = bounded_text(body)?;
        let doc: AnswerDoc<'_> =
            serde_json::from_str(text).map_err(|e| format!("invalid key set answer: {e}"))?;
        match doc {
            AnswerDoc {
                version,
                epoch,
                since: None,
                upsert: None,
                delete: None,
                keys: Some(keys),
            } => {
                check_unique(&keys, "keys").map_err(|errors| joined(&errors))?;
                Ok(KeySetAnswer::Full {
                    version: parse_version("version", version)?,
                    epoch: Epoch::parse(epoch)?,
                    doc: KeySetDoc {
                        version: Some(version.to_string()),
                        keys,
                    },
                })
            }
            AnswerDoc {
                version,
                epoch,
                since: Some(since),
                upsert: Some(upsert),
                delete: Some(delete),
                keys: None,
            } => KeySetDelta::checked(DeltaDoc {
                version,
                epoch,
                since,
                upsert,
                delete,
            })
            .map(KeySetAnswer::Delta),
            _ => Err(
                "a key set answer is a delta (version, epoch, since, upsert, delete) or a                  full document (version, epoch, keys), not a mix"
                    .into(),
            ),
        }
    }
}

fn joined(errors: &[crate::error::ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn bounded_text(body: &[u8]) -> Result<&str, String> {
    if body.len() > MAX_DELTA_BYTES {
        return Err(format!(
            "the answer is larger than {MAX_DELTA_BYTES} bytes: refused"
        ));
    }
    std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaDoc<'a> {
    #[serde(borrow)]
    version: &'a str,
    #[serde(borrow)]
    epoch: &'a str,
    #[serde(borrow)]
    since: &'a str,
    upsert: Vec<KeyRecordDoc>,
    delete: Vec<KeyHash>,
}

/// A version as the key service writes it: a decimal integer in a string, no sign, no
/// leading zero (but `"0"`), at most 19 digits.
pub fn parse_version(field: &str, text: &str) -> Result<u64, String> {
    let decimal = !text.is_empty()
        && text.len() <= 19
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    decimal
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| format!("{field} must be a decimal integer in a string"))
}

impl KeySetDelta {
    /// Reads a delta: bounded ([`MAX_DELTA_BYTES`], [`MAX_DELTA_KEYS`]), every record and
    /// hash checked as in a key-set document, no key twice (in `upsert`, in `delete`, or
    /// in both), `version` after `since`.
    pub fn parse(body: &[u8]) -> Result<KeySetDelta, String> {
        let text = bounded_text(body)?;
        let doc: DeltaDoc<'_> =
            serde_json::from_str(text).map_err(|e| format!("invalid delta: {e}"))?;
        KeySetDelta::checked(doc)
    }

    fn checked(doc: DeltaDoc<'_>) -> Result<KeySetDelta, String> {
        let keys = doc.upsert.len().saturating_add(doc.delete.len());
        if keys > MAX_DELTA_KEYS {
            return Err(format!(
                "the delta lists {keys} keys, more than {MAX_DELTA_KEYS}: refused"
            ));
        }
        let version = parse_version("version", doc.version)?;
        let since = parse_version("since", doc.since)?;
        if version <= since {
            return Err(format!(
                "the delta's version ({version}) must be after its since ({since})"
            ));
        }
        let epoch = Epoch::parse(doc.epoch)?;
        check_unique(&doc.upsert, "upsert").map_err(|errors| joined(&errors))?;
        let mut seen: DigestMap<&'static str> = DigestMap::default();
        seen.reserve(keys);
        for record in &doc.upsert {
            seen.insert(record.hash, "upsert");
        }
        for (i, hash) in doc.delete.iter().enumerate() {
            if let Some(first) = seen.insert(*hash, "delete") {
                return Err(format!(
                    "delete[{i}]: this hash is also in {first}: a key is either upserted \
                     or deleted, once"
                ));
            }
        }
        Ok(KeySetDelta {
            version,
            epoch,
            since,
            upsert: doc.upsert,
            delete: doc.delete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(key: &str) -> String {
        KeyHash::of_key(key).to_hex()
    }

    fn parse(value: serde_json::Value) -> Result<KeySetDelta, String> {
        KeySetDelta::parse(value.to_string().as_bytes())
    }

    fn good() -> serde_json::Value {
        json!({"version": "7", "epoch": "e1", "since": "5",
            "upsert": [{"id": "a", "hash": h("a"), "owner": "alice", "scopes": ["browse"]}],
            "delete": [h("b")]})
    }

    #[test]
    fn a_delta_is_read() {
        let delta = parse(good()).unwrap();
        assert_eq!(delta.version, 7);
        assert_eq!(delta.since, 5);
        assert_eq!(delta.epoch.as_str(), "e1");
        assert_eq!(delta.upsert.len(), 1);
        assert_eq!(delta.upsert[0].hash, KeyHash::of_key("a"));
        assert_eq!(delta.delete, vec![KeyHash::of_key("b")]);
        let empty = json!({"version": "1", "epoch": "e", "since": "0", "upsert": [], "delete": []});
        assert!(parse(empty).is_ok());
    }

    #[test]
    fn versions_are_decimal_strings_and_move_forward() {
        for (version, since) in [
            (json!(7), json!("5")),
            (json!("7"), json!(5)),
            (json!("07"), json!("5")),
            (json!("-7"), json!("5")),
            (json!("7.0"), json!("5")),
            (json!(""), json!("5")),
            (json!("99999999999999999999"), json!("5")),
            (json!("5"), json!("5")),
            (json!("4"), json!("5")),
        ] {
            let mut doc = good();
            doc["version"] = version.clone();
            doc["since"] = since.clone();
            assert!(parse(doc).is_err(), "{version} since {since}");
        }
        assert_eq!(parse_version("v", "0"), Ok(0));
        assert_eq!(
            parse_version("v", "18446744073709551615"),
            Err("v must be a decimal integer in a string".into())
        );
    }

    #[test]
    fn hashes_records_and_fields_are_checked() {
        let mut doc = good();
        doc["delete"] = json!(["kg_live_secret"]);
        let error = parse(doc).unwrap_err();
        assert!(error.contains("not a SHA-256 hash"), "{error}");
        assert!(
            !error.contains("secret"),
            "the value is not repeated: {error}"
        );
        let mut doc = good();
        doc["upsert"][0]["status"] = json!("revoked");
        assert!(parse(doc).is_err());
        let mut doc = good();
        doc["keys"] = json!([]);
        assert!(parse(doc).unwrap_err().contains("unknown field"));
        for missing in ["version", "epoch", "since", "upsert", "delete"] {
            let mut doc = good();
            doc.as_object_mut().unwrap().remove(missing);
            assert!(parse(doc).is_err(), "{missing}");
        }
        let mut doc = good();
        doc["epoch"] = json!("a b");
        assert!(parse(doc).is_err());
        assert!(KeySetDelta::parse(b"\xff").is_err());
        assert!(KeySetDelta::parse(b"{} x").is_err());
    }

    #[test]
    fn no_key_twice() {
        let mut both = good();
        both["delete"] = json!([h("a")]);
        assert!(parse(both).unwrap_err().contains("also in upsert"));
        let mut deleted_twice = good();
        deleted_twice["delete"] = json!([h("b"), h("b")]);
        assert!(parse(deleted_twice).unwrap_err().contains("also in delete"));
        let mut upserted_twice = good();
        upserted_twice["upsert"] = json!([
            {"id": "a", "hash": h("a"), "owner": "alice"},
            {"id": "a2", "hash": h("a"), "owner": "alice"}
        ]);
        assert!(parse(upserted_twice)
            .unwrap_err()
            .contains("duplicate hash"));
    }

    #[test]
    fn answers_are_deltas_or_full_documents_never_a_mix() {
        let bytes = |v: serde_json::Value| v.to_string().into_bytes();
        match KeySetAnswer::parse(&bytes(good())).unwrap() {
            KeySetAnswer::Delta(delta) => assert_eq!(delta.version, 7),
            other => panic!("{other:?}"),
        }
        let full = json!({"version": "7", "epoch": "e1",
            "keys": [{"id": "a", "hash": h("a"), "owner": "alice"}]});
        match KeySetAnswer::parse(&bytes(full.clone())).unwrap() {
            KeySetAnswer::Full {
                version,
                epoch,
                doc,
            } => {
                assert_eq!((version, epoch.as_str()), (7, "e1"));
                assert_eq!(doc.keys.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let mut mixed = full.clone();
        mixed["delete"] = json!([]);
        assert!(KeySetAnswer::parse(&bytes(mixed))
            .unwrap_err()
            .contains("not a mix"));
        let mut no_epoch = full.clone();
        no_epoch.as_object_mut().unwrap().remove("epoch");
        assert!(KeySetAnswer::parse(&bytes(no_epoch)).is_err());
        let mut opaque = full.clone();
        opaque["version"] = json!("v7");
        assert!(KeySetAnswer::parse(&bytes(opaque)).is_err());
        let mut dup = full;
        dup["keys"] = json!([{"id": "a", "hash": h("a"), "owner": "alice"},
            {"id": "b", "hash": h("a"), "owner": "bob"}]);
        assert!(KeySetAnswer::parse(&bytes(dup))
            .unwrap_err()
            .contains("duplicate hash"));
        let mut both = good();
        both["delete"] = json!([h("a")]);
        assert!(KeySetAnswer::parse(&bytes(both)).is_err());
    }

    #[test]
    fn deltas_are_bounded() {
        let hashes: Vec<String> = (0..=MAX_DELTA_KEYS).map(|i| h(&i.to_string())).collect();
        let mut doc = good();
        doc["upsert"] = json!([]);
        doc["delete"] = json!(hashes);
        assert!(parse(doc).unwrap_err().contains("more than"));
        let big = vec![b' '; MAX_DELTA_BYTES + 1];
        assert!(KeySetDelta::parse(&big).unwrap_err().contains("larger"));
    }
}
