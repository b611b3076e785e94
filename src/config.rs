//! The plugin configuration (README "Configuration reference"), parsed once into types that cannot hold an
//! invalid state. A configuration with any problem is refused whole, every problem named
//! by its field path.

use crate::credential::{Scheme, Source};
use crate::error::{parse_json, ConfigError};
use crate::header::HeaderName;
use crate::record::{InlineKeys, KeyRecordDoc};
use crate::remote::{FetchDoc, KeySetConfig, LookupConfig, LookupDoc};
use crate::rules::{RuleDoc, RuleSet, Unmatched};
use crate::scope::ScopeIndex;
use crate::usage::{UsageConfig, UsageDoc};
use serde::Deserialize;

/// The names of the headers that carry the caller's identity upstream. They are removed
/// from every request before anything else, so a client cannot send them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub id: HeaderName,
    pub owner: HeaderName,
    pub scopes: HeaderName,
}

impl Forward {
    pub fn names(&self) -> [&HeaderName; 3] {
        [&self.id, &self.owner, &self.scopes]
    }
}

/// Where key records come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `"keys"`: carried in the configuration itself.
    Inline(InlineKeys),
    /// `"key_set"`: fetched from a key service and refreshed on a timer.
    KeySet(KeySetConfig),
    /// `"lookup"`: each key asked of a key service, and cached.
    Lookup(LookupConfig),
}

/// A configuration that has passed every check. Shared, read-only, by all requests.
#[derive(Clone, Debug)]
pub struct Config {
    pub realm: Box<str>,
    pub sources: Vec<Source>,
    pub strip_prefixes: Vec<Box<str>>,
    pub keys: KeySource,
    pub rules: RuleSet,
    pub forward: Forward,
    pub hide_credentials: bool,
    /// The scopes rules mention, numbered; key records are read against it.
    pub scopes: ScopeIndex,
    /// `"usage"`: report uses per key to a key service (any key source).
    pub usage: Option<UsageConfig>,
}

/// The most sources a configuration may list (they are tracked as bits of a `u32`).
pub const MAX_SOURCES: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDoc {
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    sources: Option<Vec<SourceDoc>>,
    #[serde(default)]
    strip_prefixes: Option<Vec<String>>,
    #[serde(default)]
    keys: Option<Vec<KeyRecordDoc>>,
    #[serde(default)]
    key_set: Option<FetchDoc>,
    #[serde(default)]
    lookup: Option<LookupDoc>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    forward: ForwardDoc,
    #[serde(default)]
    hide_credentials: Option<bool>,
    #[serde(default)]
    usage: Option<UsageDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum SourceDoc {
    Authorization(AuthorizationDoc),
    Header(HeaderName),
    Query(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationDoc {
    #[serde(default)]
    schemes: Option<Vec<Scheme>>,
    #[serde(default)]
    basic_username: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForwardDoc {
    #[serde(default)]
    id: Option<HeaderName>,
    #[serde(default)]
    owner: Option<HeaderName>,
    #[serde(default)]
    scopes: Option<HeaderName>,
}

pub const DEFAULT_REALM: &str = "api";
pub const DEFAULT_BASIC_USERNAME: &str = "apikey";
pub const DEFAULT_STRIP_PREFIX: &str = "apikey|";

impl Config {
    /// Parses and checks a plugin configuration (JSON).
    pub fn parse(json: &[u8]) -> Result<Config, Vec<ConfigError>> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![ConfigError::new(
                "",
                "configuration is empty: keygate needs at least a key source (\"keys\")",
            )]);
        }
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(vec![ConfigError::new(
                "",
                "configuration must be a JSON object ({\"keys\": [...], \"rules\": [...]})",
            )]);
        }
        let doc: ConfigDoc = match parse_json(json, "configuration object") {
            Ok(doc) => doc,
            Err(first) => {
                // The parser stops at the first problem: look at each field on its own so
                // that every structural problem is named at once.
                let all = structural_problems(json);
                return Err(if all.is_empty() { first } else { all });
            }
        };
        Config::from_doc(doc)
    }

    fn from_doc(doc: ConfigDoc) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let realm = check_realm(doc.realm, &mut errors);
        let sources = check_sources(doc.sources, &mut errors);
        let strip_prefixes = check_strip_prefixes(doc.strip_prefixes, &mut errors);
        let forward = check_forward(doc.forward, &sources, &mut errors);

        let mut scopes = ScopeIndex::default();
        let rules = RuleSet::build(doc.rules, doc.unmatched, &mut scopes)
            .map_err(|mut e| errors.append(&mut e))
            .ok();

        let chosen = [
            ("keys", doc.keys.is_some()),
            ("key_set", doc.key_set.is_some()),
            ("lookup", doc.lookup.is_some()),
        ];
        let named: Vec<&str> = chosen.iter().filter(|c| c.1).map(|c| c.0).collect();
        let keys = match (named.len(), doc.keys, doc.key_set, doc.lookup) {
            (0, ..) => {
                errors.push(ConfigError::new(
                    "",
                    "no key source: give \"keys\" (inline records), \"key_set\" or \"lookup\"",
                ));
                None
            }
            (1, Some(records), ..) => InlineKeys::build(records, &scopes, "keys")
                .map_err(|mut e| errors.append(&mut e))
                .ok()
                .map(KeySource::Inline),
            (1, _, Some(fetch), _) => fetch.check(&mut errors).map(KeySource::KeySet),
            (1, _, _, Some(lookup)) => lookup.check(&mut errors).map(KeySource::Lookup),
            _ => {
                errors.push(ConfigError::new(
                    "",
                    format!("give exactly one key source, not {}", named.join(" and ")),
                ));
                None
            }
        };

        let usage = doc.usage.and_then(|usage| usage.check(&mut errors));

        match (keys, rules) {
            (Some(keys), Some(rules)) if errors.is_empty() => Ok(Config {
                realm,
                sources,
                strip_prefixes,
                keys,
                rules,
                forward,
                hide_credentials: doc.hide_credentials.unwrap_or(true),
                scopes,
                usage,
            }),
            _ => Err(errors),
        }
    }

    /// How many key records the configuration itself carries (none, for a key service).
    pub fn keys_loaded(&self) -> usize {
        match &self.keys {
            KeySource::Inline(set) => set.len(),
            KeySource::KeySet(_) | KeySource::Lookup(_) => 0,
        }
    }
}

/// The top-level fields of a configuration, as [`ConfigDoc`] reads them.
const FIELDS: [&str; 11] = [
    "realm",
    "sources",
    "strip_prefixes",
    "keys",
    "key_set",
    "lookup",
    "rules",
    "unmatched",
    "forward",
    "hide_credentials",
    "usage",
];

/// Every structural problem of a configuration that is a JSON object: each field, and each
/// element of its lists, read on its own. Empty when the text is not an object (the
/// parser's own message then says what is wrong) or when nothing is found this way.
fn structural_problems(json: &[u8]) -> Vec<ConfigError> {
    use serde_json::Value;
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<Value>(json) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (name, value) in &fields {
        let at = name.as_str();
        match at {
            "realm" => read::<Option<String>>(at, value, &mut errors),
            "sources" => each::<SourceDoc>(at, value, &mut errors),
            "strip_prefixes" => read::<Option<Vec<String>>>(at, value, &mut errors),
            "keys" => each::<KeyRecordDoc>(at, value, &mut errors),
            "key_set" => read::<Option<FetchDoc>>(at, value, &mut errors),
            "lookup" => read::<Option<LookupDoc>>(at, value, &mut errors),
            "rules" => each::<RuleDoc>(at, value, &mut errors),
            "unmatched" => read::<Unmatched>(at, value, &mut errors),
            "forward" => read::<ForwardDoc>(at, value, &mut errors),
            "hide_credentials" => read::<Option<bool>>(at, value, &mut errors),
            "usage" => read::<Option<UsageDoc>>(at, value, &mut errors),
            _ => errors.push(ConfigError::new(
                at,
                format!(
                    "unknown field `{at}`, expected one of {}",
                    FIELDS.map(|f| format!("`{f}`")).join(", ")
                ),
            )),
        }
    }
    errors
}

/// Reads a list element by element, so that each bad element is named.
fn each<T: serde::de::DeserializeOwned>(
    at: &str,
    value: &serde_json::Value,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                read::<T>(&format!("{at}[{i}]"), item, errors);
            }
        }
        other => read::<Vec<T>>(at, other, errors),
    }
}

fn read<T: serde::de::DeserializeOwned>(
    at: &str,
    value: &serde_json::Value,
    errors: &mut Vec<ConfigError>,
) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(value) {
        let inner = e.path().to_string();
        let path = match inner.as_str() {
            "." | "?" => at.to_string(),
            p => {
                let p = p.strip_suffix(".?").unwrap_or(p);
                if p.starts_with('[') {
                    format!("{at}{p}")
                } else {
                    format!("{at}.{p}")
                }
            }
        };
        errors.push(ConfigError::new(path, e.into_inner().to_string()));
    }
}

/// The realm is quoted in `WWW-Authenticate`, so it may not break out of its quotes.
fn check_realm(realm: Option<String>, errors: &mut Vec<ConfigError>) -> Box<str> {
    let realm = realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
    let printable = realm.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if realm.is_empty() || !printable || realm.contains(['"', '\\']) {
        errors.push(ConfigError::new(
            "realm",
            format!("{realm:?} must be non-empty printable ASCII without '\"' or '\\'"),
        ));
    }
    realm.into()
}

fn default_sources() -> Vec<Source> {
    vec![Source::Authorization {
        schemes: Scheme::ALL.to_vec(),
        basic_username: DEFAULT_BASIC_USERNAME.into(),
    }]
}

fn check_sources(docs: Option<Vec<SourceDoc>>, errors: &mut Vec<ConfigError>) -> Vec<Source> {
    let Some(docs) = docs else {
        return default_sources();
    };
    if docs.is_empty() {
        errors.push(ConfigError::new(
            "sources",
            "is empty: list at least one place to read a key from",
        ));
    }
    if docs.len() > MAX_SOURCES {
        errors.push(ConfigError::new(
            "sources",
            format!("lists {} sources; at most {MAX_SOURCES}", docs.len()),
        ));
    }
    let mut sources: Vec<Source> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("sources[{i}]");
        let source = match doc {
            SourceDoc::Authorization(auth) => {
                let schemes = auth.schemes.unwrap_or_else(|| Scheme::ALL.to_vec());
                if schemes.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.authorization.schemes"),
                        "is empty: list Bearer, ApiKey and/or Basic",
                    ));
                }
                let user = auth
                    .basic_username
                    .unwrap_or_else(|| DEFAULT_BASIC_USERNAME.to_string());
                if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                    errors.push(ConfigError::new(
                        format!("{at}.authorization.basic_username"),
                        format!("{user:?} must be non-empty, without ':' or control characters"),
                    ));
                }
                Source::Authorization {
                    schemes,
                    basic_username: user.into(),
                }
            }
            SourceDoc::Header(name) => {
                if name.as_str() == "authorization" {
                    errors.push(ConfigError::new(
                        format!("{at}.header"),
                        "use the \"authorization\" source to read the Authorization header",
                    ));
                }
                Source::Header(name)
            }
            SourceDoc::Query(param) => {
                if param.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.query"),
                        "the parameter name is empty",
                    ));
                } else if !param
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"&=#?+%".contains(&b))
                {
                    errors.push(ConfigError::new(
                        format!("{at}.query"),
                        format!("{param:?} cannot be a query parameter name: printable ASCII without & = # ? + %"),
                    ));
                }
                Source::Query(param.into())
            }
        };
        let same_place = |a: &Source, b: &Source| match (a, b) {
            (Source::Authorization { .. }, Source::Authorization { .. }) => true,
            (Source::Header(x), Source::Header(y)) => x == y,
            (Source::Query(x), Source::Query(y)) => x == y,
            _ => false,
        };
        if let Some(first) = sources.iter().position(|s| same_place(s, &source)) {
            errors.push(ConfigError::new(
                at,
                format!("reads the same place as sources[{first}]"),
            ));
        }
        sources.push(source);
    }
    sources
}

fn check_strip_prefixes(
    prefixes: Option<Vec<String>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Box<str>> {
    let Some(prefixes) = prefixes else {
        return vec![DEFAULT_STRIP_PREFIX.into()];
    };
    for (i, p) in prefixes.iter().enumerate() {
        if p.is_empty() {
            errors.push(ConfigError::new(format!("strip_prefixes[{i}]"), "is empty"));
        }
    }
    prefixes.into_iter().map(String::into_boxed_str).collect()
}

/// Headers that frame, route or hop: identity written into them would change what the
/// request is, not say who sent it.
const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "cookie",
    "x-envoy-original-path",
];

fn check_forward(doc: ForwardDoc, sources: &[Source], errors: &mut Vec<ConfigError>) -> Forward {
    let forward = Forward {
        id: doc.id.unwrap_or_else(|| HeaderName::known("x-api-key-id")),
        owner: doc
            .owner
            .unwrap_or_else(|| HeaderName::known("x-api-key-owner")),
        scopes: doc
            .scopes
            .unwrap_or_else(|| HeaderName::known("x-api-key-scopes")),
    };
    let fields = ["id", "owner", "scopes"];
    for (i, name) in forward.names().into_iter().enumerate() {
        let at = format!("forward.{}", fields[i]);
        if forward.names()[..i].contains(&name) {
            errors.push(ConfigError::new(
                &at,
                format!("\"{name}\" is already used by another forward header"),
            ));
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            errors.push(ConfigError::new(
                &at,
                format!(
                    "\"{name}\" is a header Envoy or HTTP itself relies on; choose another name"
                ),
            ));
        }
        let carries_keys = name.as_str() == "authorization"
            || sources
                .iter()
                .any(|s| matches!(s, Source::Header(h) if h == name));
        if carries_keys {
            errors.push(ConfigError::new(
                &at,
                format!("\"{name}\" is where keys are read from; it cannot carry identity"),
            ));
        }
    }
    forward
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyHash;
    use serde_json::{json, Value};

    fn hash(key: &str) -> String {
        KeyHash::of_key(key).to_hex()
    }

    fn minimal() -> Value {
        json!({"keys": [{"id": "k1", "hash": hash("key-1"), "owner": "alice"}]})
    }

    fn parse(v: &Value) -> Result<Config, Vec<String>> {
        Config::parse(v.to_string().as_bytes())
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn parse_text(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(text.as_bytes())
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn with(mut base: Value, field: &str, value: Value) -> Value {
        base[field] = value;
        base
    }

    #[test]
    fn defaults() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(&*c.realm, "api");
        assert_eq!(c.sources, default_sources());
        assert_eq!(c.strip_prefixes, vec![Box::<str>::from("apikey|")]);
        assert!(c.hide_credentials);
        assert_eq!(c.rules.unmatched, Unmatched::Deny);
        assert!(c.rules.rules.is_empty());
        assert_eq!(c.forward.id.as_str(), "x-api-key-id");
        assert_eq!(c.forward.owner.as_str(), "x-api-key-owner");
        assert_eq!(c.forward.scopes.as_str(), "x-api-key-scopes");
        assert_eq!(c.keys_loaded(), 1);
    }

    #[test]
    fn full_configuration() {
        let c = parse(&json!({
            "realm": "immport",
            "sources": [
                {"authorization": {"schemes": ["bearer", "BASIC"], "basic_username": "apikey"}},
                {"header": "X-Api-Key"},
                {"query": "api_key"}
            ],
            "strip_prefixes": ["apikey|", "kg|"],
            "keys": [
                {"id": "8c3e4394-10a9-46ef-8af9-b6401ba1400d", "hash": hash("a"), "owner": "alice",
                 "label": "ci-runner", "scopes": ["browse", "download"],
                 "created_at": "2026-11-01T10:00:00Z", "expires_at": "2027-05-21T20:55:24.654328038Z",
                 "status": "enabled", "read_only": false},
                {"id": "12", "hash": hash("b"), "owner": "alpha_admin", "scopes": ["rest"],
                 "status": "disabled", "read_only": true,
                 "created_at": "2020-08-18T16:02:26.0136931+00:00"}
            ],
            "rules": [
                {"path_prefix": "/healthz", "public": true},
                {"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]}
            ],
            "unmatched": "authenticate",
            "forward": {"id": "X-Key-Id", "owner": "x-key-owner", "scopes": "x-key-scopes"},
            "hide_credentials": false
        }))
        .unwrap();
        assert_eq!(&*c.realm, "immport");
        assert_eq!(c.sources.len(), 3);
        assert!(
            matches!(&c.sources[0], Source::Authorization { schemes, .. }
            if schemes == &[Scheme::Bearer, Scheme::Basic])
        );
        assert!(matches!(&c.sources[1], Source::Header(h) if h.as_str() == "x-api-key"));
        assert_eq!(c.keys_loaded(), 2);
        assert_eq!(c.rules.unmatched, Unmatched::Authenticate);
        assert_eq!(c.forward.id.as_str(), "x-key-id");
        assert!(!c.hide_credentials);
    }

    #[test]
    fn structural_errors_name_the_field() {
        let h = hash("k");
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"keys": [], "bogus": 1}),
                "bogus: unknown field `bogus`",
            ),
            (
                json!({"keys": [{"id": "a", "hash": "ABC", "owner": "o"}]}),
                "keys[0].hash: not a SHA-256 hash: 64 lowercase hex characters expected, got 3 \
                 characters, 3 of them not lowercase hex",
            ),
            (
                json!({"keys": [{"id": "a", "hash": h, "owner": "o", "expires_at": "tomorrow"}]}),
                "keys[0].expires_at: invalid RFC 3339 timestamp \"tomorrow\"",
            ),
            (
                json!({"keys": [{"id": "a", "hash": h, "owner": "o", "created_at": "2026-11-01"}]}),
                "keys[0].created_at: invalid RFC 3339",
            ),
            (
                json!({"keys": [{"id": "a", "hash": h, "owner": "o", "scopes": ["has space"]}]}),
                "keys[0].scopes[0]: \"has space\" is not a valid scope",
            ),
            (
                json!({"keys": [{"id": "a", "hash": h}]}),
                "keys[0]: missing field `owner`",
            ),
            (
                json!({"keys": [{"id": "a\r\nx: y", "hash": h, "owner": "o"}]}),
                "keys[0].id: ",
            ),
            (
                json!({"keys": [{"id": "a", "hash": h, "owner": "o", "status": "revoked"}]}),
                "keys[0].status: unknown variant `revoked`",
            ),
            (
                json!({"keys": [], "sources": [{"cookie": "k"}]}),
                "sources[0]: unknown variant `cookie`",
            ),
            (
                json!({"keys": [], "sources": [{"authorization": {"schemes": ["Digest"]}}]}),
                "sources[0].authorization.schemes[0]: unknown scheme \"Digest\"",
            ),
            (
                json!({"keys": [], "sources": [{"header": "x api"}]}),
                "sources[0].header: ",
            ),
            (
                json!({"keys": [], "unmatched": "allow"}),
                "unmatched: unknown variant `allow`",
            ),
            (
                json!({"keys": [], "rules": [{"path": "/a", "scopes": ["x"], "extra": true}]}),
                "rules[0].extra: unknown field `extra`",
            ),
            (
                json!({"keys": [], "forward": {"user": "x"}}),
                "forward.user: unknown field `user`",
            ),
            (
                json!({"keys": [], "hide_credentials": "yes"}),
                "hide_credentials: invalid type",
            ),
            (json!([]), "configuration must be a JSON object"),
            (json!("keys"), "configuration must be a JSON object"),
        ];
        for (config, want) in cases {
            let errors = parse(&config).unwrap_err();
            assert_eq!(errors.len(), 1, "{config}: {errors:?}");
            assert!(
                errors[0].starts_with(want),
                "{config}: got {:?}, want {want:?}",
                errors[0]
            );
        }
    }

    #[test]
    fn every_structural_problem_is_named_at_once() {
        let h = hash("k");
        let errors = parse(&json!({
            "keys": [
                {"id": "a", "hash": "ABC", "owner": "o"},
                {"id": "b", "hash": h, "owner": "p"},
                {"id": "c", "hash": h}
            ],
            "rulez": [],
            "rules": [
                {"path": "/a", "scopes": ["x"], "extra": true},
                {"path": "/b", "scopes": "x"}
            ],
            "sources": [{"cookie": "k"}, {"header": "x-api-key"}],
            "unmatched": "allow",
            "hide_credentials": "yes"
        }))
        .unwrap_err();
        let expect = [
            "hide_credentials: invalid type",
            "keys[0].hash: not a SHA-256 hash",
            "keys[2]: missing field `owner`",
            "rules[0].extra: unknown field `extra`",
            "rules[1].scopes: invalid type",
            "rulez: unknown field `rulez`, expected one of `realm`",
            "sources[0]: unknown variant `cookie`",
            "unmatched: unknown variant `allow`",
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        // One problem alone reads as the parser says it.
        let one = parse(&json!({"keys": [], "bogus": 1})).unwrap_err();
        assert_eq!(one.len(), 1, "{one:?}");
        assert!(
            one[0].starts_with("bogus: unknown field `bogus`"),
            "{one:?}"
        );
    }

    #[test]
    fn not_json_and_empty() {
        let e = Config::parse(b"{\"keys\": [").unwrap_err();
        assert!(e[0].message.contains("EOF"), "{e:?}");
        let e = Config::parse(b"  \n").unwrap_err();
        assert!(e[0].message.contains("empty"), "{e:?}");
        let e = Config::parse(b"{}").unwrap_err();
        assert!(e[0].message.contains("no key source"), "{e:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let h = hash("k");
        let errors = parse(&json!({
            "realm": "a\"b",
            "sources": [
                {"authorization": {"schemes": [], "basic_username": "a:b"}},
                {"header": "Authorization"},
                {"query": ""},
                {"header": "x-api-key"},
                {"header": "X-API-KEY"}
            ],
            "strip_prefixes": [""],
            "keys": [
                {"id": "a", "hash": h, "owner": "o"},
                {"id": "a", "hash": h, "owner": "p"}
            ],
            "rules": [{"path_prefix": "/x"}],
            "forward": {"id": "x-api-key", "scopes": "x-api-key-owner"}
        }))
        .unwrap_err();
        let expect = [
            "realm: ",
            "sources[0].authorization.schemes: is empty",
            "sources[0].authorization.basic_username: \"a:b\"",
            "sources[1].header: use the \"authorization\" source",
            "sources[2].query: the parameter name is empty",
            "sources[4]: reads the same place as sources[3]",
            "strip_prefixes[0]: is empty",
            "forward.id: \"x-api-key\" is where keys are read from",
            "forward.scopes: \"x-api-key-owner\" is already used",
            "rules[0]: has no scopes and is not public",
            "keys[1].id: duplicate id \"a\" (also keys[0])",
            "keys[1].hash: duplicate hash (also keys[0])",
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn exactly_one_key_source() {
        let both = with(
            minimal(),
            "key_set",
            json!({"cluster": "keyservice", "path": "/v1/keyset"}),
        );
        let e = parse(&both).unwrap_err();
        assert!(
            e[0].contains("exactly one key source, not keys and key_set"),
            "{e:?}"
        );
        let fetched = json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset"}});
        assert!(matches!(
            parse(&fetched).unwrap().keys,
            KeySource::KeySet(_)
        ));
        let lookup = json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}"}});
        assert!(matches!(parse(&lookup).unwrap().keys, KeySource::Lookup(_)));
        let no_path = json!({"key_set": {"cluster": "keyservice"}});
        let e = parse(&no_path).unwrap_err();
        assert!(e[0].starts_with("key_set: missing field `path`"), "{e:?}");
        let bad = json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys"}});
        let e = parse(&bad).unwrap_err();
        assert!(e[0].starts_with("lookup.path: "), "{e:?}");
    }

    #[test]
    fn usage_goes_with_any_key_source() {
        assert!(parse(&minimal()).unwrap().usage.is_none());
        let usage = json!({"cluster": "keyservice", "report_seconds": 10});
        for base in [
            minimal(),
            json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset"}}),
            json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}"}}),
        ] {
            let c = parse(&with(base, "usage", usage.clone())).unwrap();
            let u = c.usage.unwrap();
            assert_eq!((&*u.path, u.report_seconds), ("/v1/usage", 10));
            assert_eq!(&*u.endpoint.authority, "keyservice");
        }
        let e = parse(&with(minimal(), "usage", json!({"path": "/v1/usage"}))).unwrap_err();
        assert!(e[0].starts_with("usage: missing field `cluster`"), "{e:?}");
        let e = parse(&with(
            minimal(),
            "usage",
            json!({"cluster": "k", "report_seconds": 0, "interval": 1}),
        ))
        .unwrap_err();
        assert!(e[0].starts_with("usage.interval: unknown field"), "{e:?}");
        let e = parse(&with(
            minimal(),
            "usage",
            json!({"cluster": "k", "report_seconds": 0}),
        ))
        .unwrap_err();
        assert_eq!(e, ["usage.report_seconds: 0 is out of range (1 to 3600)"]);
    }

    #[test]
    fn too_many_sources() {
        let sources: Vec<Value> = (0..33)
            .map(|i| json!({"header": format!("x-k{i}")}))
            .collect();
        let e = parse(&with(minimal(), "sources", Value::Array(sources))).unwrap_err();
        assert!(
            e[0].starts_with("sources: lists 33 sources; at most 32"),
            "{e:?}"
        );
        let empty = parse(&with(minimal(), "sources", json!([]))).unwrap_err();
        assert!(empty[0].starts_with("sources: is empty"), "{empty:?}");
    }

    #[test]
    fn default_authorization_source_body() {
        let c = parse(&with(minimal(), "sources", json!([{"authorization": {}}]))).unwrap();
        assert_eq!(c.sources, default_sources());
    }

    #[test]
    fn text_after_the_object_is_refused() {
        let base = minimal().to_string();
        for trailing in [" trailing", "{\"rules\": []}", "]"] {
            let errors = parse_text(&format!("{base}{trailing}")).unwrap_err();
            assert!(
                errors[0].contains("unexpected text after the configuration object"),
                "{errors:?}"
            );
        }
        assert!(parse_text(&format!("{base}\n  ")).is_ok());
    }

    #[test]
    fn forward_names_must_not_be_framing_or_routing_headers() {
        for name in ["host", "content-length", "transfer-encoding", "cookie"] {
            let doc = with(minimal(), "forward", json!({"id": name}));
            let errors = parse(&doc).unwrap_err();
            assert!(errors[0].starts_with("forward.id: "), "{errors:?}");
        }
    }

    #[test]
    fn query_parameter_names_must_be_plain() {
        for name in ["api key", "a&b", "k=v", "api%5Fkey"] {
            let doc = with(minimal(), "sources", json!([{"query": name}]));
            let errors = parse(&doc).unwrap_err();
            assert!(
                errors[0].starts_with("sources[0].query: "),
                "{name}: {errors:?}"
            );
        }
        let doc = with(minimal(), "sources", json!([{"query": "api_key"}]));
        assert!(parse(&doc).is_ok());
    }
}
