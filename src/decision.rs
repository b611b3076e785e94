//! The decision (README "Configuration reference", "Responses", "What the upstream sees"): from the request headers and the configuration to a verdict,
//! and from an allowing verdict to the header edits the upstream request needs.

use crate::config::{Config, KeySource};
use crate::credential::{self, Presented, Source};
use crate::header_map::Header;
use crate::jwt::{Claims, VerifiedToken};
use crate::key_format::Shape;
use crate::path::{self, PathError};
use crate::query;
use crate::record::{KeyHash, KeyRecord, KeyState};
use crate::rules::{Access, Route, Unmatched};
use crate::scope::ScopeMask;
use crate::stats::Outcome;
use crate::timestamp::Timestamp;
use std::borrow::Cow;

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial<'c> {
    /// 400: an unreadable credential, two different credentials, or a bad path.
    BadRequest(&'static str),
    /// 401: a protected route and no key.
    Missing,
    /// 401: a key the key set does not hold.
    UnknownKey,
    /// 401: a key with a prefix of `key_format` and not its shape or checksum: refused
    /// before it is hashed or looked up.
    MalformedKey,
    Expired(&'c KeyRecord),
    Disabled(&'c KeyRecord),
    /// 401: a Bearer token with a JWT's shape and no payload `jwt_authn` verified, or a
    /// verified payload keygate cannot use (no subject, an unreadable scope claim).
    InvalidToken(&'static str),
    /// 403: the rule needs scopes the key (or the verified token, `key` then `None`) lacks.
    MissingScope {
        key: Option<&'c KeyRecord>,
        needed: &'c str,
    },
    /// 403: a read-only key used a method other than GET, HEAD or OPTIONS.
    ReadOnly(&'c KeyRecord),
    /// 403: a read-only key asked to upgrade the connection (WebSocket, HTTP/2 `:protocol`),
    /// a channel that could write.
    ReadOnlyUpgrade(&'c KeyRecord),
    /// 403: no rule matches and `unmatched` is `deny`.
    NoRule,
    /// 403: rules cover the path, but none lists the method.
    MethodNotListed,
    /// 503: no key set to decide with (yet); the client may retry after this many seconds.
    Unavailable {
        retry_after_seconds: u32,
    },
}

impl Denial<'_> {
    pub fn outcome(&self) -> Outcome {
        match self {
            Denial::BadRequest(_) => Outcome::Malformed,
            Denial::Missing => Outcome::Missing,
            Denial::UnknownKey => Outcome::Invalid,
            Denial::MalformedKey => Outcome::MalformedKey,
            Denial::InvalidToken(_) => Outcome::InvalidToken,
            Denial::Expired(_) => Outcome::Expired,
            Denial::Disabled(_) => Outcome::Disabled,
            Denial::MissingScope { .. }
            | Denial::ReadOnly(_)
            | Denial::ReadOnlyUpgrade(_)
            | Denial::NoRule
            | Denial::MethodNotListed => Outcome::Forbidden,
            Denial::Unavailable { .. } => Outcome::Unavailable,
        }
    }

    /// The key the denial is about, for the log line (its id, never the key).
    pub fn key(&self) -> Option<&KeyRecord> {
        match self {
            Denial::Expired(key)
            | Denial::Disabled(key)
            | Denial::ReadOnly(key)
            | Denial::ReadOnlyUpgrade(key)
            | Denial::MissingScope { key: Some(key), .. } => Some(key),
            _ => None,
        }
    }
}

/// What to change in a request that may go upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed<'c> {
    /// The caller, when a valid key was presented (always, except on public routes and
    /// for a verified token).
    pub key: Option<&'c KeyRecord>,
    /// The caller, when `jwt_authn` verified a token (`key` is then `None`).
    pub token: Option<VerifiedToken>,
    /// Bit `i`: the credential in source `i` is removed before forwarding.
    pub hide_sources: u32,
    /// Bit `i`: the client sent forward header `i` itself.
    pub spoofed: u8,
    /// Headers the client sent that read as a forward header once `_` is taken for `-`
    /// (`x_api_key_id`): CGI-style servers merge the two. Empty, without allocating, in
    /// every honest request.
    pub spoofed_lookalikes: Vec<String>,
    /// The `:path` to forward, when it differs from the one received.
    pub new_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'c> {
    Allow(Allowed<'c>),
    Deny(Denial<'c>),
}

impl Verdict<'_> {
    pub fn outcome(&self) -> Outcome {
        match self {
            Verdict::Allow(Allowed { key: Some(_), .. }) => Outcome::Allowed,
            Verdict::Allow(Allowed {
                key: None,
                token: Some(_),
                ..
            }) => Outcome::AllowedToken,
            Verdict::Allow(Allowed { key: None, .. }) => Outcome::Public,
            Verdict::Deny(denial) => denial.outcome(),
        }
    }

    /// For a refusal, the request's `:path` without a query-parameter key
    /// ([`redacted_target`]): Envoy's access log records the path as it stands, so the
    /// shells set it before answering. `None` for an allowed request, whose path
    /// [`Allowed::apply`] sets.
    pub fn redacted_path(&self, config: &Config, headers: &[impl Header]) -> Option<Vec<u8>> {
        match self {
            Verdict::Deny(_) => redacted_target(config, headers),
            Verdict::Allow(_) => None,
        }
    }
}

/// The host side of header edits: implemented by the proxy-wasm shell, and by a recorder
/// in tests.
pub trait HeaderEditor {
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &str, value: &str);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &str);
    /// Sets `name`, which the request is known not to hold (it was removed, or never
    /// sent): a host may skip looking for values to replace.
    fn add(&mut self, name: &str, value: &str) {
        self.set(name, value);
    }
}

impl Allowed<'_> {
    /// Strips identity headers the client sent, adds the caller's identity, hides the
    /// credential and forwards the normalized path.
    pub fn apply(&self, config: &Config, editor: &mut impl HeaderEditor) {
        for (i, name) in config.forward.names().into_iter().enumerate() {
            if self.spoofed & (1 << i) != 0 {
                editor.remove(name.as_str());
            }
        }
        for name in &self.spoofed_lookalikes {
            editor.remove(name);
        }
        // Every identity header the client sent is gone now (`spoofed` names each one
        // present): the identity is added, not replaced.
        if let Some(key) = self.key {
            editor.add(config.forward.id.as_str(), key.id.as_str());
            editor.add(config.forward.owner.as_str(), key.owner.as_str());
            editor.add(config.forward.scopes.as_str(), &key.scopes_header);
            editor.add(config.forward.kind.as_str(), KIND_API_KEY);
        } else if let Some(token) = &self.token {
            editor.add(config.forward.owner.as_str(), &token.subject);
            editor.add(config.forward.scopes.as_str(), &token.scopes_header);
            editor.add(config.forward.kind.as_str(), KIND_JWT);
        }
        for (i, source) in config.sources.iter().enumerate() {
            if self.hide_sources & (1 << i) == 0 {
                continue;
            }
            match source {
                Source::Authorization { .. } => editor.remove("authorization"),
                Source::Header(name) => editor.remove(name.as_str()),
                Source::Query(_) => {} // part of `new_path`
            }
        }
        if let Some(path) = &self.new_path {
            editor.set(":path", path);
        }
    }
}

/// The kind header's values: what authenticated the caller.
pub const KIND_API_KEY: &str = "api_key";
pub const KIND_JWT: &str = "jwt";

const READ_ONLY_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// The first part of a decision: either the verdict itself, or the key to look up.
#[derive(Debug)]
pub enum Step<'c> {
    Done(Verdict<'c>),
    /// A key was presented: its record decides. The check owns what it needs, so a request
    /// can wait for a key service with it.
    Key(KeyCheck),
}

/// What a request asked, kept while its key's record is found: at once in an inline set,
/// or after a call to the key service.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyCheck {
    /// `sha256` of the presented key (after `strip_prefixes`).
    pub hash: KeyHash,
    /// What decides the request.
    route: Route,
    /// The method is not one a read-only key may use.
    writes: bool,
    /// The request asks to upgrade the connection (`upgrade`, or HTTP/2's `:protocol`).
    upgrades: bool,
    hide_sources: u32,
    spoofed: u8,
    spoofed_lookalikes: Vec<String>,
    new_path: Option<String>,
}

/// Decides one request from its headers (pseudo-headers included, as Envoy lists them),
/// with an inline key set. `now` is read only if the key has an expiry.
pub fn decide<'c>(
    config: &'c Config,
    headers: &[impl Header],
    now: impl FnOnce() -> Timestamp,
) -> Verdict<'c> {
    match begin(config, headers) {
        Step::Done(verdict) => verdict,
        Step::Key(check) => match &config.keys {
            KeySource::Inline(set) => {
                let record = set.get(&check.hash);
                check.finish(config, record, now)
            }
            // No set to read here: the shell looks the key up and calls `finish` itself.
            KeySource::KeySet(_) | KeySource::Lookup(_) => check.unavailable(config),
        },
    }
}

/// `Retry-After` when keygate cannot check a key, in seconds.
pub const UNAVAILABLE_RETRY_SECONDS: u32 = 5;

/// The 503 of a request keygate cannot decide safely (no key set, key service down, an
/// edit Envoy refused), with its `Retry-After`.
pub const UNAVAILABLE: Denial<'static> = Denial::Unavailable {
    retry_after_seconds: UNAVAILABLE_RETRY_SECONDS,
};

/// Everything a request can be decided on without its key's record.
pub fn begin<'c>(config: &'c Config, headers: &[impl Header]) -> Step<'c> {
    begin_with_token(config, headers, None)
}

/// [`begin`], with the claims of the payload Envoy's `jwt_authn` verified for this request
/// (`None` when there is none, or when `jwt` is not configured). A verified token decides
/// the request by its scopes, without a key record.
pub fn begin_with_token<'c>(
    config: &'c Config,
    headers: &[impl Header],
    token: Option<Claims<'_>>,
) -> Step<'c> {
    let mut method: Option<&[u8]> = None;
    let mut target: Option<&[u8]> = None;
    let mut spoofed = 0u8;
    let mut spoofed_lookalikes = Vec::new();
    let mut upgrades = false;
    let forward = config.forward.names();
    for header in headers {
        let value = header.value();
        match header.name() {
            ":method" => method = method.or(Some(value)),
            ":path" => target = target.or(Some(value)),
            "upgrade" | ":protocol" => upgrades = true,
            other => {
                for (i, f) in forward.iter().enumerate() {
                    if f.as_str() == other {
                        spoofed |= 1 << i;
                    } else if reads_as(other, f.as_str()) {
                        spoofed_lookalikes.push(other.to_string());
                    }
                }
            }
        }
    }
    let deny = |denial| Step::Done(Verdict::Deny(denial));
    let Some(method) = method.and_then(|m| std::str::from_utf8(m).ok()) else {
        return deny(Denial::BadRequest("request has no method"));
    };
    let Some(target) = target else {
        return deny(Denial::BadRequest(PathError::Missing.description()));
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return deny(Denial::BadRequest(PathError::ForbiddenByte.description()));
    };
    let (raw_path, query) = path::split_query(target);
    let normalized = match path::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => return deny(Denial::BadRequest(e.description())),
    };
    let route = config
        .rules
        .route(method, &path::without_parameters(&normalized));

    let (presented, token_sources) = credential::extract_beside_tokens(
        &config.sources,
        &config.strip_prefixes,
        headers,
        query,
        config.jwt.is_some(),
    );
    if let Presented::Malformed(why) = presented {
        return deny(Denial::BadRequest(why));
    }
    if let Some(claims) = token {
        if let Presented::Key { .. } = presented {
            return deny(Denial::BadRequest(
                "conflicting credentials: an API key and a bearer token",
            ));
        }
        let token = match VerifiedToken::from_claims(claims, &config.scopes) {
            Ok(token) => token,
            Err(why) => return deny(Denial::InvalidToken(why)),
        };
        let hide_sources = if config.hide_credentials {
            token_sources
        } else {
            0
        };
        match need(config, route) {
            Need::Closed(denial) => return deny(denial),
            Need::Key { mask, needed } if !token.scope_mask.holds_all(mask) => {
                return deny(Denial::MissingScope { key: None, needed });
            }
            Need::Nothing | Need::Key { .. } => {}
        }
        return Step::Done(Verdict::Allow(Allowed {
            key: None,
            token: Some(token),
            hide_sources,
            spoofed,
            spoofed_lookalikes,
            new_path: forwarded_path(config, raw_path, normalized, query, hide_sources),
        }));
    }
    // Any Bearer JWT, whether or not the sources read Bearer keys: with `jwt`, a token is
    // only ever taken verified.
    let unverified = config.jwt.is_some()
        && headers
            .iter()
            .any(|h| h.name() == "authorization" && credential::is_bearer_jwt(h.value()));
    if unverified {
        return deny(Denial::InvalidToken("bearer token not verified"));
    }
    match presented {
        Presented::Malformed(why) => deny(Denial::BadRequest(why)),
        Presented::Nothing => match need(config, route) {
            Need::Nothing => Step::Done(Verdict::Allow(Allowed {
                key: None,
                token: None,
                hide_sources: 0,
                spoofed,
                spoofed_lookalikes,
                new_path: forwarded_path(config, raw_path, normalized, query, 0),
            })),
            Need::Key { .. } => deny(Denial::Missing),
            Need::Closed(denial) => deny(denial),
        },
        Presented::Key { key, sources } => {
            if let Some(format) = &config.key_format {
                if let Shape::Malformed(..) = format.shape(key.expose()) {
                    return deny(Denial::MalformedKey);
                }
            }
            let hide_sources = if config.hide_credentials { sources } else { 0 };
            Step::Key(KeyCheck {
                hash: KeyHash::of_key(key.expose()),
                route,
                writes: !READ_ONLY_METHODS
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(method)),
                upgrades,
                hide_sources,
                spoofed,
                spoofed_lookalikes,
                new_path: forwarded_path(config, raw_path, normalized, query, hide_sources),
            })
        }
    }
}

impl KeyCheck {
    /// Decides with the key's record, `None` when the key set does not hold the key.
    pub fn finish<'k>(
        self,
        config: &'k Config,
        record: Option<&'k KeyRecord>,
        now: impl FnOnce() -> Timestamp,
    ) -> Verdict<'k> {
        match authorize(config, &self, record, now) {
            Ok(record) => Verdict::Allow(self.allow(Some(record))),
            Err(denial) => Verdict::Deny(denial),
        }
    }

    /// Decides when the key cannot be checked (no key set loaded yet, key service down):
    /// a protected route answers 503; a public route passes, without an identity.
    pub fn unavailable(self, config: &Config) -> Verdict<'_> {
        match need(config, self.route) {
            Need::Nothing => Verdict::Allow(self.allow(None)),
            Need::Closed(denial) => Verdict::Deny(denial),
            Need::Key { .. } => Verdict::Deny(UNAVAILABLE),
        }
    }

    fn allow(self, key: Option<&KeyRecord>) -> Allowed<'_> {
        Allowed {
            key,
            token: None,
            hide_sources: self.hide_sources,
            spoofed: self.spoofed,
            spoofed_lookalikes: self.spoofed_lookalikes,
            new_path: self.new_path,
        }
    }
}

/// Whether header `name` reads as `forward` where `_` and `-` are one (CGI's `HTTP_X_API_KEY_ID`).
/// Both are lowercase, as Envoy and [`crate::header::HeaderName`] keep them.
pub(crate) fn reads_as(name: &str, forward: &str) -> bool {
    name.len() == forward.len()
        && name
            .bytes()
            .zip(forward.bytes())
            .all(|(n, f)| n == f || (n == b'_' && f == b'-') || (n == b'-' && f == b'_'))
}

/// What a route asks of a caller.
enum Need<'c> {
    /// Closed to everyone: no rule matches and `unmatched` is `deny`, or rules cover the
    /// path but none lists the method.
    Closed(Denial<'static>),
    /// A public route: no key needed.
    Nothing,
    /// A valid key holding these scopes (none, for an unmatched route under
    /// `authenticate`).
    Key { mask: ScopeMask, needed: &'c str },
}

fn need(config: &Config, route: Route) -> Need<'_> {
    let unmatched = || match config.rules.unmatched {
        Unmatched::Deny => Need::Closed(Denial::NoRule),
        Unmatched::Authenticate => Need::Key {
            mask: ScopeMask::EMPTY,
            needed: "",
        },
    };
    match route {
        Route::Rule(i) => match config.rules.rules.get(i).map(|r| &r.access) {
            Some(Access::Public) => Need::Nothing,
            Some(Access::Scopes { mask, needed }) => Need::Key {
                mask: *mask,
                needed,
            },
            // A position from this configuration's own rules; closed if it were not.
            None => Need::Closed(Denial::NoRule),
        },
        Route::MethodNotListed => Need::Closed(Denial::MethodNotListed),
        Route::Unmatched => unmatched(),
    }
}

fn authorize<'k>(
    config: &'k Config,
    check: &KeyCheck,
    record: Option<&'k KeyRecord>,
    now: impl FnOnce() -> Timestamp,
) -> Result<&'k KeyRecord, Denial<'k>> {
    let Some(record) = record else {
        return Err(Denial::UnknownKey);
    };
    match record.state_at(now) {
        KeyState::Active => {}
        KeyState::Disabled => return Err(Denial::Disabled(record)),
        KeyState::Expired => return Err(Denial::Expired(record)),
    }
    if record.read_only && check.upgrades {
        return Err(Denial::ReadOnlyUpgrade(record));
    }
    if record.read_only && check.writes {
        return Err(Denial::ReadOnly(record));
    }
    match need(config, check.route) {
        Need::Closed(denial) => Err(denial),
        Need::Nothing => Ok(record),
        Need::Key { mask, needed } => {
            if record.scope_mask.holds_all(mask) {
                Ok(record)
            } else {
                Err(Denial::MissingScope {
                    key: Some(record),
                    needed,
                })
            }
        }
    }
}

/// The `:path` to send upstream when it must change: the normalized path (what the rules
/// were matched against), and the query without a hidden key parameter.
fn forwarded_path(
    config: &Config,
    raw_path: &str,
    normalized: Cow<'_, str>,
    query: Option<&str>,
    hide_sources: u32,
) -> Option<String> {
    let new_query =
        query.and_then(|q| strip_query_sources(config, q, |i| hide_sources & (1 << i) != 0));
    let path_changed = matches!(normalized, Cow::Owned(_)) && normalized != raw_path;
    if !path_changed && new_query.is_none() {
        return None;
    }
    let mut out = normalized.into_owned();
    match (new_query.as_deref(), query) {
        (Some(""), _) => {}
        (Some(q), _) | (None, Some(q)) => {
            out.push('?');
            out.push_str(q);
        }
        (None, None) => {}
    }
    Some(out)
}

/// `query` without the parameters of the query sources `chosen` selects (by source index);
/// `None` when no query source is chosen.
fn strip_query_sources(
    config: &Config,
    query: &str,
    chosen: impl Fn(usize) -> bool,
) -> Option<String> {
    let mut out: Option<String> = None;
    for (i, source) in config.sources.iter().enumerate() {
        if let Source::Query(param) = source {
            if chosen(i) {
                let current = out.as_deref().unwrap_or(query);
                out = Some(query::without(current, param));
            }
        }
    }
    out
}

/// The `:path` of a refused request without any query-parameter credential, so that
/// Envoy's access log does not record a key. `None` when there is nothing to remove.
///
/// On bytes: a path Envoy accepted need not be UTF-8 (HTTP/2 carries any byte but a few),
/// and such a path is refused (400) with its key in it.
pub fn redacted_target(config: &Config, headers: &[impl Header]) -> Option<Vec<u8>> {
    let target = headers.iter().find(|h| h.name() == ":path")?.value();
    let at = target.iter().position(|&b| b == b'?')?;
    let (path, query) = (&target[..at], &target[at + 1..]);
    let mut kept: Option<Vec<u8>> = None;
    for source in &config.sources {
        if let Source::Query(param) = source {
            let current = kept.as_deref().unwrap_or(query);
            kept = Some(query::without_bytes(current, param));
        }
    }
    let kept = kept?;
    if kept == query {
        return None;
    }
    let mut out = path.to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&kept);
    }
    Some(out)
}

#[cfg(test)]
#[path = "decision_tests/mod.rs"]
mod tests;
