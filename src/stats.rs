//! What each request came to, as the counters Envoy shows on `/stats` (README "Stats").

/// The outcome of one request, counted once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A valid key, allowed on its route.
    Allowed,
    /// A token `jwt_authn` verified, allowed on its route.
    AllowedToken,
    /// A public route, no key presented.
    Public,
    Missing,
    Malformed,
    /// A key that is not in the key set.
    Invalid,
    /// A key with a `key_format` prefix, not of the format: refused before any lookup.
    MalformedKey,
    /// A Bearer JWT `jwt_authn` did not verify, or a verified payload keygate cannot use.
    InvalidToken,
    Expired,
    Disabled,
    /// A valid key without the scope, a read-only key writing, or a route no rule allows.
    Forbidden,
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Allowed,
        Outcome::AllowedToken,
        Outcome::Public,
        Outcome::Missing,
        Outcome::Malformed,
        Outcome::Invalid,
        Outcome::MalformedKey,
        Outcome::InvalidToken,
        Outcome::Expired,
        Outcome::Disabled,
        Outcome::Forbidden,
        Outcome::Unavailable,
    ];

    /// The counter's name. Envoy shows proxy-wasm metrics under a `wasmcustom.` prefix.
    pub fn metric_name(self) -> &'static str {
        match self {
            Outcome::Allowed => "keygate.allowed",
            Outcome::AllowedToken => "keygate.allowed_jwt",
            Outcome::Public => "keygate.public",
            Outcome::Missing => "keygate.denied.missing",
            Outcome::Malformed => "keygate.denied.malformed",
            Outcome::Invalid => "keygate.denied.invalid",
            Outcome::MalformedKey => "keygate.denied.malformed_key",
            Outcome::InvalidToken => "keygate.denied.invalid_token",
            Outcome::Expired => "keygate.denied.expired",
            Outcome::Disabled => "keygate.denied.disabled",
            Outcome::Forbidden => "keygate.denied.forbidden",
            Outcome::Unavailable => "keygate.denied.unavailable",
        }
    }

    /// Position in [`Outcome::ALL`], to index per-outcome tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The gauge of how many key records the filter holds.
pub const KEYS_LOADED: &str = "keygate.keys_loaded";

/// `key_set` fetches, by what the key service answered (counted once per fetch, by the
/// worker that made it).
pub const FETCH_OK: &str = "keygate.fetch.ok";
pub const FETCH_NOT_MODIFIED: &str = "keygate.fetch.not_modified";
pub const FETCH_FAILED: &str = "keygate.fetch.failed";
/// Seconds since the key service last answered with a good set (200 or 304).
pub const FETCH_AGE_SECONDS: &str = "keygate.fetch.age_seconds";

/// `lookup` calls made, keys answered from the cache, and calls that failed.
pub const LOOKUP_CALLS: &str = "keygate.lookup.calls";
pub const LOOKUP_CACHE_HITS: &str = "keygate.lookup.cache_hits";
pub const LOOKUP_FAILED: &str = "keygate.lookup.failed";
/// `lookup` change-feed answers that reported a new version, and feed calls that failed.
pub const LOOKUP_WATCH_CHANGES: &str = "keygate.lookup.watch_changes";
pub const LOOKUP_WATCH_FAILED: &str = "keygate.lookup.watch_failed";

/// `usage` reports the key service accepted, reports dropped (not sent, no answer, or not
/// accepted), and uses not counted because the VM's tally was full.
pub const USAGE_REPORTS_SENT: &str = "keygate.usage.reports_sent";
pub const USAGE_REPORTS_FAILED: &str = "keygate.usage.reports_failed";
pub const USAGE_DROPPED: &str = "keygate.usage.dropped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_prefixed_and_indexed() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert!(o.metric_name().starts_with("keygate."));
            for other in &Outcome::ALL[..i] {
                assert_ne!(o.metric_name(), other.metric_name());
            }
        }
    }
}
