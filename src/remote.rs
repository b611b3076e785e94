//! Key sources that live behind an Envoy cluster (README "Key sets over HTTP"): a key set fetched on a timer
//! (`key_set`), or one record looked up per key (`lookup`). Parsed and checked here; the
//! calls themselves are made by the shell.

use crate::error::ConfigError;
use crate::json::{Fields, FromJson, Json};
use crate::record::KeyHash;

/// Where to call: an Envoy cluster, the `:authority` to send, and how long to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub cluster: Box<str>,
    pub authority: Box<str>,
    pub timeout_ms: u32,
}

/// `"key_set"`: the whole set, fetched every `refresh_seconds` with `If-None-Match`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySetConfig {
    pub endpoint: Endpoint,
    pub path: Box<str>,
    /// How often a plain file server is polled (and a watched one, should the watch fail).
    pub refresh_seconds: u32,
    /// How long each long-poll of the incremental sync waits for a change; 0: poll
    /// every `refresh_seconds` (README "Key sets over HTTP").
    pub watch_seconds: u32,
}

/// `"lookup"`: one record per key, by hash, cached for `cache_seconds` (found) or
/// `negative_cache_seconds` (not found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupConfig {
    pub endpoint: Endpoint,
    /// The path around its `{hash}`.
    path_before: Box<str>,
    path_after: Box<str>,
    pub cache_seconds: u32,
    pub negative_cache_seconds: u32,
    /// Where and how long to long-poll for changed keys (`watch_seconds` > 0), so that a
    /// cached answer for a changed key is dropped at once; `None` (`watch_seconds: 0`):
    /// answers live out their lifetime.
    pub watch: Option<WatchConfig>,
}

/// `"lookup"`'s `watch_seconds` and `changes_path` (README "Watching for changes").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    pub changes_path: Box<str>,
    pub wait_seconds: u32,
}

impl LookupConfig {
    /// The path to ask for one key: the hash, never the key, leaves the proxy.
    pub fn path_for(&self, hash: &KeyHash) -> String {
        let mut path = String::with_capacity(self.path_before.len() + 64 + self.path_after.len());
        path.push_str(&self.path_before);
        path.push_str(&hash.to_hex());
        path.push_str(&self.path_after);
        path
    }
}

pub const DEFAULT_REFRESH_SECONDS: u32 = 30;
pub const DEFAULT_FETCH_TIMEOUT_MS: u32 = 2000;
pub const DEFAULT_LOOKUP_TIMEOUT_MS: u32 = 1000;
pub const DEFAULT_CACHE_SECONDS: u32 = 60;
pub const DEFAULT_NEGATIVE_CACHE_SECONDS: u32 = 10;
pub const DEFAULT_WATCH_SECONDS: u32 = 25;
/// The longest long-poll a key service is asked for.
pub const MAX_WATCH_SECONDS: u32 = 60;
pub const DEFAULT_CHANGES_PATH: &str = "/v1/changes";
const HASH_PLACEHOLDER: &str = "{hash}";

pub(crate) struct FetchDoc {
    cluster: String,
    path: String,
    authority: Option<String>,
    refresh_seconds: Option<u32>,
    timeout_ms: Option<u32>,
    watch_seconds: Option<u32>,
}

pub(crate) struct LookupDoc {
    cluster: String,
    path: String,
    authority: Option<String>,
    cache_seconds: Option<u32>,
    negative_cache_seconds: Option<u32>,
    timeout_ms: Option<u32>,
    watch_seconds: Option<u32>,
    changes_path: Option<String>,
}

impl FromJson for FetchDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a key set: an object with cluster and path",
            &[
                "cluster",
                "path",
                "authority",
                "refresh_seconds",
                "timeout_ms",
                "watch_seconds",
            ],
            errors,
        )?;
        let cluster = f.required("cluster");
        let path = f.required("path");
        let authority = f.nullable::<String>("authority");
        let refresh_seconds = f.nullable::<u32>("refresh_seconds");
        let timeout_ms = f.nullable::<u32>("timeout_ms");
        let watch_seconds = f.nullable::<u32>("watch_seconds");
        f.done()?;
        Some(FetchDoc {
            cluster: cluster?,
            path: path?,
            authority,
            refresh_seconds,
            timeout_ms,
            watch_seconds,
        })
    }
}

impl FromJson for LookupDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a lookup: an object with cluster and path",
            &[
                "cluster",
                "path",
                "authority",
                "cache_seconds",
                "negative_cache_seconds",
                "timeout_ms",
                "watch_seconds",
                "changes_path",
            ],
            errors,
        )?;
        let cluster = f.required("cluster");
        let path = f.required("path");
        let authority = f.nullable::<String>("authority");
        let cache_seconds = f.nullable::<u32>("cache_seconds");
        let negative_cache_seconds = f.nullable::<u32>("negative_cache_seconds");
        let timeout_ms = f.nullable::<u32>("timeout_ms");
        let watch_seconds = f.nullable::<u32>("watch_seconds");
        let changes_path = f.nullable::<String>("changes_path");
        f.done()?;
        Some(LookupDoc {
            cluster: cluster?,
            path: path?,
            authority,
            cache_seconds,
            negative_cache_seconds,
            timeout_ms,
            watch_seconds,
            changes_path,
        })
    }
}

impl FetchDoc {
    pub(crate) fn check(self, errors: &mut Vec<ConfigError>) -> Option<KeySetConfig> {
        let before = errors.len();
        let endpoint = check_endpoint(
            "key_set",
            self.cluster,
            self.authority,
            self.timeout_ms.unwrap_or(DEFAULT_FETCH_TIMEOUT_MS),
            errors,
        );
        check_path("key_set.path", &self.path, errors);
        let refresh_seconds = self.refresh_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS);
        check_range(
            "key_set.refresh_seconds",
            refresh_seconds,
            1,
            86_400,
            errors,
        );
        let watch_seconds = self.watch_seconds.unwrap_or(DEFAULT_WATCH_SECONDS);
        check_range(
            "key_set.watch_seconds",
            watch_seconds,
            0,
            MAX_WATCH_SECONDS,
            errors,
        );
        (errors.len() == before).then(|| KeySetConfig {
            endpoint,
            path: self.path.into(),
            refresh_seconds,
            watch_seconds,
        })
    }
}

impl LookupDoc {
    pub(crate) fn check(self, errors: &mut Vec<ConfigError>) -> Option<LookupConfig> {
        let before = errors.len();
        let endpoint = check_endpoint(
            "lookup",
            self.cluster,
            self.authority,
            self.timeout_ms.unwrap_or(DEFAULT_LOOKUP_TIMEOUT_MS),
            errors,
        );
        check_path("lookup.path", &self.path, errors);
        let split = self.path.split_once(HASH_PLACEHOLDER);
        if self.path.matches(HASH_PLACEHOLDER).count() != 1 {
            errors.push(ConfigError::new(
                "lookup.path",
                format!(
                    "{:?} must contain {HASH_PLACEHOLDER} exactly once",
                    self.path
                ),
            ));
        }
        let cache_seconds = self.cache_seconds.unwrap_or(DEFAULT_CACHE_SECONDS);
        check_range("lookup.cache_seconds", cache_seconds, 0, 86_400, errors);
        let negative_cache_seconds = self
            .negative_cache_seconds
            .unwrap_or(DEFAULT_NEGATIVE_CACHE_SECONDS);
        check_range(
            "lookup.negative_cache_seconds",
            negative_cache_seconds,
            0,
            86_400,
            errors,
        );
        let wait_seconds = self.watch_seconds.unwrap_or(DEFAULT_WATCH_SECONDS);
        check_range(
            "lookup.watch_seconds",
            wait_seconds,
            0,
            MAX_WATCH_SECONDS,
            errors,
        );
        let changes_path = self
            .changes_path
            .unwrap_or_else(|| DEFAULT_CHANGES_PATH.to_string());
        check_path("lookup.changes_path", &changes_path, errors);
        let (before_hash, after_hash) = split?;
        (errors.len() == before).then(|| LookupConfig {
            endpoint,
            path_before: before_hash.into(),
            path_after: after_hash.into(),
            cache_seconds,
            negative_cache_seconds,
            watch: (wait_seconds > 0).then(|| WatchConfig {
                changes_path: changes_path.into(),
                wait_seconds,
            }),
        })
    }
}

pub(crate) fn check_endpoint(
    field: &str,
    cluster: String,
    authority: Option<String>,
    timeout_ms: u32,
    errors: &mut Vec<ConfigError>,
) -> Endpoint {
    // Names travel in a header (`:authority`) and in Envoy's cluster lookup: no spaces,
    // no control bytes.
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !plain(&cluster) {
        errors.push(ConfigError::new(
            format!("{field}.cluster"),
            format!(
                "{cluster:?} must be a non-empty Envoy cluster name (printable ASCII, no spaces)"
            ),
        ));
    }
    let authority = authority.unwrap_or_else(|| cluster.clone());
    let host_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
    };
    if authority.is_empty() || !host_chars(&authority) {
        errors.push(ConfigError::new(
            format!("{field}.authority"),
            format!("{authority:?} must be a host name, optionally with :port"),
        ));
    }
    check_range(
        &format!("{field}.timeout_ms"),
        timeout_ms,
        1,
        60_000,
        errors,
    );
    Endpoint {
        cluster: cluster.into(),
        authority: authority.into(),
        timeout_ms,
    }
}

pub(crate) fn check_path(field: &str, path: &str, errors: &mut Vec<ConfigError>) {
    let ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'#');
    if !ok {
        errors.push(ConfigError::new(
            field,
            format!("{path:?} must start with '/' and hold printable ASCII without spaces or '#'"),
        ));
    }
}

pub(crate) fn check_range(
    field: &str,
    value: u32,
    min: u32,
    max: u32,
    errors: &mut Vec<ConfigError>,
) {
    if !(min..=max).contains(&value) {
        errors.push(ConfigError::new(
            field,
            format!("{value} is out of range ({min} to {max})"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetch(value: serde_json::Value) -> Result<KeySetConfig, Vec<String>> {
        let doc: FetchDoc = crate::json::from_value(value).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        doc.check(&mut errors)
            .ok_or_else(|| errors.iter().map(ToString::to_string).collect())
    }

    fn lookup(value: serde_json::Value) -> Result<LookupConfig, Vec<String>> {
        let doc: LookupDoc = crate::json::from_value(value).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        doc.check(&mut errors)
            .ok_or_else(|| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn fetch_defaults_and_spec_example() {
        let c = fetch(json!({"cluster": "keyservice", "path": "/v1/keyset"})).unwrap();
        assert_eq!(&*c.endpoint.authority, "keyservice");
        assert_eq!(c.refresh_seconds, 30);
        assert_eq!(c.endpoint.timeout_ms, 2000);
        let c = fetch(json!({"cluster": "keyservice", "path": "/v1/keyset",
            "authority": "keys.internal:8081", "refresh_seconds": 5, "timeout_ms": 300}))
        .unwrap();
        assert_eq!(&*c.endpoint.authority, "keys.internal:8081");
        assert_eq!((c.refresh_seconds, c.endpoint.timeout_ms), (5, 300));
    }

    #[test]
    fn fetch_problems_are_all_named() {
        let errors = fetch(json!({"cluster": "key service", "path": "v1/keyset",
            "authority": "a b", "refresh_seconds": 0, "timeout_ms": 0}))
        .unwrap_err();
        let fields = crate::error::fields_at_fault(&errors);
        assert_eq!(
            fields,
            [
                "key_set.cluster",
                "key_set.authority",
                "key_set.timeout_ms",
                "key_set.path",
                "key_set.refresh_seconds"
            ]
        );
        let unknown = fetch(json!({"cluster": "k", "path": "/", "refresh": 3})).unwrap_err();
        assert!(
            unknown[0].contains("unknown field `refresh`"),
            "{unknown:?}"
        );
    }

    #[test]
    fn lookup_path_holds_the_hash_once() {
        let c = lookup(json!({"cluster": "keyservice", "path": "/v1/keys/{hash}?full=1"})).unwrap();
        let hash = KeyHash::of_key("abc");
        assert_eq!(
            c.path_for(&hash),
            format!("/v1/keys/{}?full=1", hash.to_hex())
        );
        assert_eq!((c.cache_seconds, c.negative_cache_seconds), (60, 10));
        assert_eq!(c.endpoint.timeout_ms, 1000);
        for bad in ["/v1/keys", "/v1/{hash}/{hash}"] {
            let errors = lookup(json!({"cluster": "k", "path": bad})).unwrap_err();
            assert!(errors[0].starts_with("lookup.path: "), "{errors:?}");
        }
        let errors = lookup(json!({"cluster": "k", "path": "/{hash}",
            "cache_seconds": 100000}))
        .unwrap_err();
        assert!(errors[0].starts_with("lookup.cache_seconds: 100000 is out of range"));
    }

    #[test]
    fn lookup_watches_for_changes_unless_told_not_to() {
        let c = lookup(json!({"cluster": "k", "path": "/v1/keys/{hash}"})).unwrap();
        assert_eq!(
            c.watch,
            Some(WatchConfig {
                changes_path: "/v1/changes".into(),
                wait_seconds: 25
            })
        );
        let c = lookup(json!({"cluster": "k", "path": "/{hash}", "watch_seconds": 0})).unwrap();
        assert_eq!(c.watch, None);
        let c = lookup(
            json!({"cluster": "k", "path": "/{hash}", "watch_seconds": 60,
            "changes_path": "/keys/changes?tenant=a"}),
        )
        .unwrap();
        assert_eq!(
            c.watch.map(|w| (w.changes_path, w.wait_seconds)),
            Some(("/keys/changes?tenant=a".into(), 60))
        );
        let errors = lookup(
            json!({"cluster": "k", "path": "/{hash}", "watch_seconds": 61,
            "changes_path": "changes"}),
        )
        .unwrap_err();
        assert!(errors[0].starts_with("lookup.watch_seconds: 61 is out of range"));
        assert!(errors[1].starts_with("lookup.changes_path: "), "{errors:?}");
    }
}
