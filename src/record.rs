//! Key records and the set they form: looked up by the SHA-256 of the presented key, so
//! the filter holds and compares hashes, never keys.

use crate::error::ConfigError;
use crate::header::HeaderText;
use crate::json::{self, Fields, FromJson, Json};
use crate::scope::{Scope, ScopeIndex, ScopeMask};
use crate::timestamp::Timestamp;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// `sha256(key)`. Written in key records as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of_key(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn parse_hex(text: &str) -> Result<Self, String> {
        let lower_hex = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 32];
        if !lower_hex || hex::decode_to_slice(text, &mut bytes).is_err() {
            // The value is not repeated: a key pasted where its hash belongs must not end
            // up in Envoy's log.
            let not_hex = text
                .bytes()
                .filter(|b| !(b.is_ascii_digit() || (b'a'..=b'f').contains(b)))
                .count();
            return Err(format!(
                "not a SHA-256 hash: 64 lowercase hex characters expected, got {} characters, \
                 {not_hex} of them not lowercase hex (the value is not shown, in case it is a \
                 key: a record holds the key's hash, from `keygate hash`)",
                text.chars().count()
            ));
        }
        Ok(KeyHash(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        KeyHash(bytes)
    }

    pub const fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

// The bytes are already a uniform SHA-256 digest, so eight of them are a perfect hash for
// the map; set members come from configuration, not from clients, so there is no flooding.
impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a KeyHash is hashed: FNV-1a keeps it correct.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        KeyHash::parse_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyStatus {
    #[default]
    Enabled,
    Disabled,
}

/// A key record as written in configuration or a key-set document (README "Configuration reference").
#[derive(Clone, Debug)]
pub struct KeyRecordDoc {
    pub id: HeaderText,
    pub hash: KeyHash,
    pub owner: HeaderText,
    pub label: Option<String>,
    pub scopes: Vec<Scope>,
    pub created_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub status: KeyStatus,
    pub read_only: bool,
}

impl FromJson for KeyStatus {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        json::variant(
            value,
            at,
            errors,
            &[
                ("enabled", KeyStatus::Enabled),
                ("disabled", KeyStatus::Disabled),
            ],
        )
    }
}

const RECORD_FIELDS: [&str; 11] = [
    "id",
    "hash",
    "owner",
    "label",
    "scopes",
    "created_at",
    "expires_at",
    "status",
    "read_only",
    "last_used_at",
    "uses",
];

impl FromJson for KeyRecordDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a key record: an object with id, hash and owner",
            &RECORD_FIELDS,
            errors,
        )?;
        let id = f.required("id");
        let hash = f.required("hash");
        let owner = f.required("owner");
        let label = f.nullable("label");
        let scopes = f.optional("scopes");
        let created_at = f.nullable("created_at");
        let expires_at = f.nullable("expires_at");
        let status = f.optional("status");
        let read_only = f.optional("read_only");
        // What `keygate list --json` adds from the usage reports (README "Usage (last
        // used)"), so that its output stays a configuration's `"keys"`: checked, not kept.
        f.nullable::<Timestamp>("last_used_at");
        f.optional::<u64>("uses");
        f.done()?;
        Some(KeyRecordDoc {
            id: id?,
            hash: hash?,
            owner: owner?,
            label,
            scopes: scopes.unwrap_or_default(),
            created_at,
            expires_at,
            status: status.unwrap_or_default(),
            read_only: read_only.unwrap_or_default(),
        })
    }
}

impl KeyRecordDoc {
    /// Reads one record on its own (a key service's answer, an element of a key set);
    /// `at` names it in the problem, as `keys[3]`.
    pub fn parse(json: &[u8], at: &str) -> Result<KeyRecordDoc, String> {
        json::read_one(json, at)
    }
}

/// A key record ready for the request path: the scopes header is joined and the scope
/// mask computed once, at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: HeaderText,
    pub owner: HeaderText,
    pub label: Option<Box<str>>,
    pub scopes: Box<[Scope]>,
    /// The scopes as forwarded upstream: space-separated.
    pub scopes_header: Box<str>,
    pub scope_mask: ScopeMask,
    pub created_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub status: KeyStatus,
    pub read_only: bool,
}

/// Whether a key may be used at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Disabled,
    Expired,
}

impl KeyRecord {
    pub fn from_doc(doc: KeyRecordDoc, index: &ScopeIndex) -> (KeyHash, KeyRecord) {
        let scopes_header = crate::scope::joined(&doc.scopes);
        let record = KeyRecord {
            scope_mask: index.mask(&doc.scopes),
            scopes_header: scopes_header.into(),
            id: doc.id,
            owner: doc.owner,
            label: doc.label.map(String::into_boxed_str),
            scopes: doc.scopes.into_boxed_slice(),
            created_at: doc.created_at,
            expires_at: doc.expires_at,
            status: doc.status,
            read_only: doc.read_only,
        };
        (doc.hash, record)
    }

    /// A disabled key stays disabled whatever its expiry; an expiry is reached at the
    /// instant it names.
    pub fn state_at(&self, now: impl FnOnce() -> Timestamp) -> KeyState {
        if self.status == KeyStatus::Disabled {
            return KeyState::Disabled;
        }
        match self.expires_at {
            Some(expires_at) if now() >= expires_at => KeyState::Expired,
            _ => KeyState::Active,
        }
    }
}

pub type DigestMap<V> = HashMap<KeyHash, V, BuildHasherDefault<DigestHasher>>;

/// Records indexed by key hash: lookup costs the same for ten keys or a million.
#[derive(Clone, Debug, Default)]
pub struct InlineKeys {
    by_hash: DigestMap<KeyRecord>,
}

impl InlineKeys {
    /// Builds the set, refusing duplicate ids and duplicate hashes. `field` names the list
    /// in error paths (`keys`).
    pub fn build(
        docs: Vec<KeyRecordDoc>,
        index: &ScopeIndex,
        field: &str,
    ) -> Result<InlineKeys, Vec<ConfigError>> {
        check_unique(&docs, field)?;
        let mut by_hash: DigestMap<KeyRecord> = DigestMap::default();
        by_hash.reserve(docs.len());
        for doc in docs {
            let (hash, record) = KeyRecord::from_doc(doc, index);
            by_hash.insert(hash, record);
        }
        Ok(InlineKeys { by_hash })
    }

    pub fn get(&self, hash: &KeyHash) -> Option<&KeyRecord> {
        self.by_hash.get(hash)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// "1 key", "2 keys": how the logs and the CLI count records.
pub fn count_keys(n: usize) -> String {
    if n == 1 {
        "1 key".to_string()
    } else {
        format!("{n} keys")
    }
}

/// A key-set document (README "Configuration reference"): `{"version": "<opaque>", "keys": [records...]}`, as served
/// on `/v1/keyset` and kept in `keys.json`.
#[derive(Debug)]
pub struct KeySetDoc {
    pub version: Option<String>,
    pub keys: Vec<KeyRecordDoc>,
}

impl FromJson for KeySetDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a key-set document: an object, {\"keys\": [...]}",
            &["version", "keys"],
            errors,
        )?;
        let version = f.nullable::<String>("version");
        let keys = f.required("keys");
        f.done()?;
        Some(KeySetDoc {
            version,
            keys: keys?,
        })
    }
}

impl KeySetDoc {
    /// Parses a document and checks that its records can form a set (no duplicate id or
    /// hash). Errors name the field, as `keys[3].expires_at`.
    pub fn parse(json: &[u8]) -> Result<KeySetDoc, Vec<ConfigError>> {
        let doc = json::read_document(json, "key-set document", |v, e| KeySetDoc::read(v, "", e))?;
        check_unique(&doc.keys, "keys")?;
        Ok(doc)
    }
}

/// Refuses duplicate ids and duplicate hashes, naming each repeat and its first place.
pub fn check_unique(docs: &[KeyRecordDoc], field: &str) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(docs.len());
    let mut hash_at: DigestMap<usize> = DigestMap::default();
    hash_at.reserve(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        if let Some(first) = ids.insert(doc.id.as_str(), i) {
            errors.push(ConfigError::new(
                format!("{field}[{i}].id"),
                format!("duplicate id {:?} (also {field}[{first}])", doc.id.as_str()),
            ));
        }
        if let Some(first) = hash_at.insert(doc.hash, i) {
            errors.push(ConfigError::new(
                format!("{field}[{i}].hash"),
                format!("duplicate hash (also {field}[{first}]): two records for one key"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn doc(value: serde_json::Value) -> Result<KeyRecordDoc, String> {
        crate::json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn hashes_keys_with_sha256() {
        assert_eq!(KeyHash::of_key("abc").to_hex(), ABC_SHA256);
        assert_eq!(
            KeyHash::parse_hex(ABC_SHA256).unwrap(),
            KeyHash::of_key("abc")
        );
    }

    #[test]
    fn refuses_hashes_that_are_not_64_lowercase_hex() {
        let upper = ABC_SHA256.to_uppercase();
        for bad in [
            "",
            "abc",
            &ABC_SHA256[..63],
            &upper,
            &format!("{ABC_SHA256}0"),
        ] {
            assert!(KeyHash::parse_hex(bad).is_err(), "{bad}");
        }
        let not_hex = format!("g{}", &ABC_SHA256[1..]);
        assert!(KeyHash::parse_hex(&not_hex).is_err());
    }

    #[test]
    fn a_key_pasted_as_a_hash_is_not_repeated_in_the_error() {
        let key = "kg_live_SuperSecretKeyValue123";
        let error = KeyHash::parse_hex(key).unwrap_err();
        assert!(!error.contains("Secret"), "{error}");
        assert!(
            error.contains("got 30 characters, 19 of them not lowercase hex"),
            "{error}"
        );
    }

    #[test]
    fn record_defaults() {
        let d = doc(json!({"id": "k1", "hash": ABC_SHA256, "owner": "alice"})).unwrap();
        assert!(d.scopes.is_empty());
        assert_eq!(d.status, KeyStatus::Enabled);
        assert!(!d.read_only);
        assert!(d.expires_at.is_none());
        let (_, r) = KeyRecord::from_doc(d, &ScopeIndex::default());
        assert_eq!(
            r.state_at(|| Timestamp::from_unix_nanos(i128::MAX)),
            KeyState::Active
        );
        assert_eq!(&*r.scopes_header, "");
    }

    #[test]
    fn record_requires_id_hash_owner_and_refuses_unknown_fields() {
        let missing_owner = doc(json!({"id": "k1", "hash": ABC_SHA256})).unwrap_err();
        assert!(missing_owner.contains("owner"), "{missing_owner}");
        let missing_hash = doc(json!({"id": "k1", "owner": "a"})).unwrap_err();
        assert!(missing_hash.contains("hash"), "{missing_hash}");
        let unknown =
            doc(json!({"id": "k1", "hash": ABC_SHA256, "owner": "a", "key": "raw"})).unwrap_err();
        assert!(unknown.contains("unknown field"), "{unknown}");
        let bad_status =
            doc(json!({"id": "k1", "hash": ABC_SHA256, "owner": "a", "status": "revoked"}))
                .unwrap_err();
        assert!(bad_status.contains("revoked"), "{bad_status}");
    }

    #[test]
    fn usage_fields_from_list_json_are_checked_and_dropped() {
        let listed = json!({"id": "k1", "hash": ABC_SHA256, "owner": "a",
            "last_used_at": "2026-11-30T10:00:00.500Z", "uses": 12});
        assert!(doc(listed).is_ok());
        let never = json!({"id": "k1", "hash": ABC_SHA256, "owner": "a",
            "last_used_at": null, "uses": 0});
        assert!(doc(never).is_ok());
        let bad_time = json!({"id": "k1", "hash": ABC_SHA256, "owner": "a",
            "last_used_at": "yesterday"});
        assert!(doc(bad_time).unwrap_err().contains("RFC 3339"));
        let bad_uses = json!({"id": "k1", "hash": ABC_SHA256, "owner": "a", "uses": -1});
        assert!(doc(bad_uses).is_err());
    }

    #[test]
    fn expiry_and_status() {
        let d = doc(json!({
            "id": "k1", "hash": ABC_SHA256, "owner": "alice",
            "scopes": ["browse", "download"],
            "expires_at": "2027-05-21T20:55:24.654328038Z"
        }))
        .unwrap();
        let (_, r) = KeyRecord::from_doc(d, &ScopeIndex::default());
        assert_eq!(&*r.scopes_header, "browse download");
        let at = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
        assert_eq!(
            r.state_at(|| at("2027-05-21T20:55:24.654328037Z")),
            KeyState::Active
        );
        assert_eq!(
            r.state_at(|| at("2027-05-21T20:55:24.654328038Z")),
            KeyState::Expired
        );
        assert_eq!(r.state_at(|| at("2030-01-01T00:00:00Z")), KeyState::Expired);

        let disabled = doc(json!({
            "id": "k2", "hash": ABC_SHA256, "owner": "bob", "status": "disabled",
            "expires_at": "2020-01-01T00:00:00Z"
        }))
        .unwrap();
        let (_, r) = KeyRecord::from_doc(disabled, &ScopeIndex::default());
        assert_eq!(
            r.state_at(|| at("2019-01-01T00:00:00Z")),
            KeyState::Disabled
        );
    }

    #[test]
    fn never_reads_the_clock_for_keys_without_expiry() {
        let d = doc(json!({"id": "k1", "hash": ABC_SHA256, "owner": "alice"})).unwrap();
        let (_, r) = KeyRecord::from_doc(d, &ScopeIndex::default());
        assert_eq!(r.state_at(|| unreachable!("clock read")), KeyState::Active);
    }

    #[test]
    fn set_lookup_and_duplicates() {
        let h = |k: &str| KeyHash::of_key(k).to_hex();
        let docs = vec![
            doc(json!({"id": "a", "hash": h("ka"), "owner": "alice"})).unwrap(),
            doc(json!({"id": "b", "hash": h("kb"), "owner": "bob"})).unwrap(),
        ];
        let set = InlineKeys::build(docs, &ScopeIndex::default(), "keys").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(&KeyHash::of_key("kb")).unwrap().id.as_str(), "b");
        assert!(set.get(&KeyHash::of_key("kc")).is_none());

        let docs = vec![
            doc(json!({"id": "a", "hash": h("ka"), "owner": "alice"})).unwrap(),
            doc(json!({"id": "a", "hash": h("kb"), "owner": "bob"})).unwrap(),
            doc(json!({"id": "c", "hash": h("ka"), "owner": "carol"})).unwrap(),
        ];
        let errors = InlineKeys::build(docs, &ScopeIndex::default(), "keys").unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("keys[1].id: duplicate id \"a\" (also keys[0])"));
        assert!(shown[1].starts_with("keys[2].hash: duplicate hash (also keys[0])"));
    }

    #[test]
    fn key_set_documents() {
        let h = |k: &str| KeyHash::of_key(k).to_hex();
        let text = json!({"version": "v7", "keys": [
            {"id": "a", "hash": h("ka"), "owner": "alice", "scopes": ["browse"]},
            {"id": "b", "hash": h("kb"), "owner": "bob"}
        ]})
        .to_string();
        let doc = KeySetDoc::parse(text.as_bytes()).unwrap();
        assert_eq!(doc.version.as_deref(), Some("v7"));
        let set = InlineKeys::build(doc.keys, &ScopeIndex::default(), "keys").unwrap();
        assert_eq!(
            set.get(&KeyHash::of_key("ka")).unwrap().owner.as_str(),
            "alice"
        );

        let shown = |text: &str| -> Vec<String> {
            KeySetDoc::parse(text.as_bytes())
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let bad_expiry = json!({"keys": [
            {"id": "a", "hash": h("ka"), "owner": "alice", "expires_at": "soon"}
        ]})
        .to_string();
        assert!(shown(&bad_expiry)[0].starts_with("keys[0].expires_at: "));
        let dup = json!({"keys": [
            {"id": "a", "hash": h("ka"), "owner": "alice"},
            {"id": "a", "hash": h("ka"), "owner": "alice"}
        ]})
        .to_string();
        assert_eq!(shown(&dup).len(), 2);
        assert!(shown("{\"keys\": []} x")[0].contains("unexpected text"));
        assert!(shown("{\"version\": \"1\"}")[0].contains("missing field `keys`"));
        // No internal type name: what was expected, in the terms of the README.
        assert!(shown("3")[0].contains("expected a key-set document: an object, {\"keys\": [...]}"));
        assert!(!shown("[]")[0].contains("struct"));
        // A syntax error has no field to name: its line and column say where.
        for (text, path) in [("not json", ""), ("{,", ""), ("{\"keys\": [{]}", "keys[0]")] {
            let syntax = KeySetDoc::parse(text.as_bytes()).unwrap_err();
            assert_eq!(syntax[0].path, path, "{text}: {syntax:?}");
            assert!(syntax[0].message.contains("line 1"), "{syntax:?}");
        }
    }

    #[test]
    fn many_keys_all_found() {
        let docs: Vec<KeyRecordDoc> = (0..10_000)
            .map(|i| KeyRecordDoc {
                id: HeaderText::parse(&format!("id{i}")).unwrap(),
                hash: KeyHash::of_key(&format!("key{i}")),
                owner: HeaderText::parse("o").unwrap(),
                label: None,
                scopes: vec![],
                created_at: None,
                expires_at: None,
                status: KeyStatus::Enabled,
                read_only: false,
            })
            .collect();
        let set = InlineKeys::build(docs, &ScopeIndex::default(), "keys").unwrap();
        for i in (0..10_000).step_by(97) {
            let r = set.get(&KeyHash::of_key(&format!("key{i}"))).unwrap();
            assert_eq!(r.id.as_str(), format!("id{i}"));
        }
        assert!(set.get(&KeyHash::of_key("key10000")).is_none());
    }

    #[test]
    fn keys_are_counted_in_words() {
        assert_eq!(count_keys(0), "0 keys");
        assert_eq!(count_keys(1), "1 key");
        assert_eq!(count_keys(2), "2 keys");
    }
}
