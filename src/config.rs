//! The plugin configuration (README "Configuration reference"), parsed once into types that cannot hold an
//! invalid state. A configuration with any problem is refused whole, every problem named
//! by its field path.

use crate::credential::{Scheme, Source};
use crate::error::{parse_json, ConfigError};
use crate::header::HeaderName;
use crate::jwt::{JwtConfig, JwtDoc};
use crate::key_format::{KeyFormat, Prefix};
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
    /// What authenticated the caller: `api_key` or `jwt`.
    pub kind: HeaderName,
}

impl Forward {
    pub fn names(&self) -> [&HeaderName; 4] {
        [&self.id, &self.owner, &self.scopes, &self.kind]
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
    /// `"key_format"`: keys with these prefixes must have the issued shape and checksum.
    pub key_format: Option<KeyFormat>,
    /// `"jwt"`: a Bearer JWT verified by Envoy's `jwt_authn` authenticates a request too.
    pub jwt: Option<JwtConfig>,
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
    #[serde(default)]
    key_format: Option<KeyFormatDoc>,
    #[serde(default)]
    jwt: Option<JwtDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFormatDoc {
    prefixes: Vec<Prefix>,
    #[serde(default = "yes")]
    checksum: bool,
}

fn yes() -> bool {
    true
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
    #[serde(default)]
    kind: Option<HeaderName>,
}

pub const DEFAULT_REALM: &str = "api";
pub const DEFAULT_BASIC_USERNAME: &str = "apikey";
pub const DEFAULT_STRIP_PREFIX: &str = "apikey|";

impl Config {
    /// What the configuration asks for, as both shells log it once accepted: the key
    /// source and the rules.
    pub fn summary(&self) -> String {
        let rules = self.rules.rules.len();
        match &self.keys {
            KeySource::Inline(set) => format!("{} keys, {rules} rules", set.len()),
            KeySource::KeySet(fetch) => {
                let watch = match fetch.watch_seconds {
                    0 => String::new(),
                    s => format!("watched in {s} s long-polls where the service syncs, else "),
                };
                format!(
                    "key set from cluster {} path {} ({watch}polled every {} s), {rules} rules",
                    fetch.endpoint.cluster, fetch.path, fetch.refresh_seconds,
                )
            }
            KeySource::Lookup(lookup) => {
                let watch = lookup.watch.as_ref().map_or_else(
                    || "no change feed (watch_seconds 0)".to_string(),
                    |w| {
                        format!(
                            "change feed {} ({} s long-polls)",
                            w.changes_path, w.wait_seconds
                        )
                    },
                );
                format!(
                    "keys looked up on cluster {}, {watch}, {rules} rules",
                    lookup.endpoint.cluster
                )
            }
        }
    }

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
        let jwt = doc.jwt.map(|jwt| jwt.check(&mut errors));
        let key_format = doc.key_format.and_then(|f| {
            if f.prefixes.is_empty() {
                errors.push(ConfigError::new(
                    "key_format.prefixes",
                    "list at least one prefix (as \"kg\"), or leave key_format out",
                ));
                return None;
            }
            Some(KeyFormat {
                prefixes: f.prefixes,
                checksum: f.checksum,
            })
        });

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
                key_format,
                jwt,
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
const FIELDS: [&str; 13] = [
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
    "key_format",
    "jwt",
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
            "key_format" => read::<Option<KeyFormatDoc>>(at, value, &mut errors),
            "jwt" => read::<Option<JwtDoc>>(at, value, &mut errors),
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

/// A name keygate passes to Envoy (a metadata namespace, a key, a claim): non-empty,
/// without control characters.
pub(crate) fn check_text(at: &str, value: &str, errors: &mut Vec<ConfigError>) {
    if value.is_empty() || value.chars().any(char::is_control) {
        errors.push(ConfigError::new(
            at,
            format!("{value:?} must be non-empty, without control characters"),
        ));
    }
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
        kind: doc
            .kind
            .unwrap_or_else(|| HeaderName::known("x-api-key-kind")),
    };
    let fields = ["id", "owner", "scopes", "kind"];
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
#[path = "config_tests.rs"]
mod tests;
