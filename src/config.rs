//! The plugin configuration (README "Configuration reference"), parsed once into types that cannot hold an
//! invalid state. A configuration with any problem is refused whole, every problem named
//! by its field path.

use crate::credential::{Scheme, Source};
use crate::error::ConfigError;
use crate::header::HeaderName;
use crate::json::{self, invalid_type, Fields, FromJson, Json};
use crate::jwt::{JwtConfig, JwtDoc};
use crate::key_format::{KeyFormat, Prefix};
use crate::record::{InlineKeys, KeyRecordDoc};
use crate::remote::{FetchDoc, KeySetConfig, LookupConfig, LookupDoc};
use crate::rules::{RuleDoc, RuleSet, Unmatched};
use crate::scope::ScopeIndex;
use crate::usage::{UsageConfig, UsageDoc};

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

struct ConfigDoc {
    realm: Option<String>,
    sources: Option<Vec<SourceDoc>>,
    strip_prefixes: Option<Vec<String>>,
    keys: Option<Vec<KeyRecordDoc>>,
    key_set: Option<FetchDoc>,
    lookup: Option<LookupDoc>,
    rules: Vec<RuleDoc>,
    unmatched: Unmatched,
    forward: ForwardDoc,
    hide_credentials: Option<bool>,
    usage: Option<UsageDoc>,
    key_format: Option<KeyFormatDoc>,
    jwt: Option<JwtDoc>,
}

/// The top-level fields of a configuration.
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

impl FromJson for ConfigDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(value, at, "a configuration object", &FIELDS, errors)?;
        let realm = f.nullable::<String>("realm");
        let sources = f.nullable::<Vec<SourceDoc>>("sources");
        let strip_prefixes = f.nullable::<Vec<String>>("strip_prefixes");
        let keys = f.nullable::<Vec<KeyRecordDoc>>("keys");
        let key_set = f.nullable::<FetchDoc>("key_set");
        let lookup = f.nullable::<LookupDoc>("lookup");
        let rules = f.optional("rules");
        let unmatched = f.optional("unmatched");
        let forward = f.optional("forward");
        let hide_credentials = f.nullable::<bool>("hide_credentials");
        let usage = f.nullable::<UsageDoc>("usage");
        let key_format = f.nullable::<KeyFormatDoc>("key_format");
        let jwt = f.nullable::<JwtDoc>("jwt");
        f.done()?;
        Some(ConfigDoc {
            realm,
            sources,
            strip_prefixes,
            keys,
            key_set,
            lookup,
            rules: rules.unwrap_or_default(),
            unmatched: unmatched.unwrap_or_default(),
            forward: forward.unwrap_or_default(),
            hide_credentials,
            usage,
            key_format,
            jwt,
        })
    }
}

struct KeyFormatDoc {
    prefixes: Vec<Prefix>,
    checksum: bool,
}

impl FromJson for KeyFormatDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "key_format: an object with prefixes",
            &["prefixes", "checksum"],
            errors,
        )?;
        let prefixes = f.required("prefixes");
        let checksum = f.optional("checksum");
        f.done()?;
        Some(KeyFormatDoc {
            prefixes: prefixes?,
            checksum: checksum.unwrap_or(true),
        })
    }
}

enum SourceDoc {
    Authorization(AuthorizationDoc),
    Header(HeaderName),
    Query(String),
}

/// Read as serde reads an externally tagged enum: an object of one field, the variant.
impl FromJson for SourceDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let pairs = match value {
            Json::Object(pairs) => pairs.as_slice(),
            other => {
                errors.push(ConfigError::new(
                    at,
                    invalid_type(
                        other,
                        "a source: an object of one field, authorization, header or query",
                    ),
                ));
                return None;
            }
        };
        let [(name, inner)] = pairs else {
            errors.push(ConfigError::new(
                at,
                "invalid value: map, expected map with a single key",
            ));
            return None;
        };
        let inner_at = json::field_path(at, name);
        match name.as_str() {
            "authorization" => {
                AuthorizationDoc::read(inner, &inner_at, errors).map(SourceDoc::Authorization)
            }
            "header" => HeaderName::read(inner, &inner_at, errors).map(SourceDoc::Header),
            "query" => String::read(inner, &inner_at, errors).map(SourceDoc::Query),
            other => {
                errors.push(ConfigError::new(
                    at,
                    format!(
                        "unknown variant `{other}`, expected one of `authorization`, `header`, \
                         `query`"
                    ),
                ));
                None
            }
        }
    }
}

struct AuthorizationDoc {
    schemes: Option<Vec<Scheme>>,
    basic_username: Option<String>,
}

impl FromJson for AuthorizationDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "an object",
            &["schemes", "basic_username"],
            errors,
        )?;
        let schemes = f.nullable::<Vec<Scheme>>("schemes");
        let basic_username = f.nullable::<String>("basic_username");
        f.done()?;
        Some(AuthorizationDoc {
            schemes,
            basic_username,
        })
    }
}

#[derive(Default)]
struct ForwardDoc {
    id: Option<HeaderName>,
    owner: Option<HeaderName>,
    scopes: Option<HeaderName>,
    kind: Option<HeaderName>,
}

impl FromJson for ForwardDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "forward: an object",
            &["id", "owner", "scopes", "kind"],
            errors,
        )?;
        let id = f.nullable::<HeaderName>("id");
        let owner = f.nullable::<HeaderName>("owner");
        let scopes = f.nullable::<HeaderName>("scopes");
        let kind = f.nullable::<HeaderName>("kind");
        f.done()?;
        Some(ForwardDoc {
            id,
            owner,
            scopes,
            kind,
        })
    }
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
        let doc = json::parse(json, "configuration object").map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let doc = ConfigDoc::read(&doc, "", &mut errors);
        let doc = match doc {
            Some(doc) if errors.is_empty() => doc,
            _ => {
                by_field(&mut errors);
                // One problem reads as a parser names it, with its place in the text; many
                // are named by their field paths alone, which keeps the list short.
                if errors.len() == 1 {
                    json::place_problems(json, &mut errors);
                }
                return Err(errors);
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

/// Orders structural problems by the top-level field that holds them, as the fields of a
/// JSON object are most easily found; problems of one field keep their order.
fn by_field(errors: &mut [ConfigError]) {
    let top = |e: &ConfigError| -> String {
        e.path
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_string()
    };
    for i in 1..errors.len() {
        let mut j = i;
        while j > 0 && top(&errors[j - 1]) > top(&errors[j]) {
            errors.swap(j - 1, j);
            j -= 1;
        }
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
