//! Bearer JWTs verified by Envoy's `jwt_authn` (README "JWTs beside API keys"): keygate
//! never parses or verifies a token. `jwt_authn` runs first, verifies signature, issuer,
//! audience and expiry, and leaves the verified payload in dynamic metadata
//! (`payload_in_metadata`); the shell reads two claims of it (subject and scopes) through
//! the host's property API, and this module turns them into a [`VerifiedToken`] the
//! decision uses in place of a key record.

use crate::config::check_text;
use crate::error::ConfigError;
use crate::header_map;
use crate::json::{Fields, FromJson, Json};
use crate::scope::{Scope, ScopeIndex, ScopeMask};

pub const DEFAULT_METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
pub const DEFAULT_PAYLOAD_KEY: &str = "jwt_payload";
pub const DEFAULT_SCOPE_CLAIM: &str = "scope";
pub const DEFAULT_SUBJECT_CLAIM: &str = "sub";

/// `"jwt"`: where `jwt_authn` leaves a verified payload, and which claims keygate reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// The dynamic-metadata namespace (`jwt_authn`'s filter name).
    pub metadata_namespace: Box<str>,
    /// The provider's `payload_in_metadata`.
    pub payload_key: Box<str>,
    /// The claim holding the scopes: a space-separated string (`scope`) or a list of
    /// strings (`scp`).
    pub scope_claim: Box<str>,
    /// The claim naming the caller; a payload without it is not accepted.
    pub subject_claim: Box<str>,
}

impl JwtConfig {
    /// The property path of one claim of the verified payload.
    pub fn claim_path<'a>(&'a self, claim: &'a str) -> [&'a str; 5] {
        [
            "metadata",
            "filter_metadata",
            &self.metadata_namespace,
            &self.payload_key,
            claim,
        ]
    }
}

#[derive(Default)]
pub(crate) struct JwtDoc {
    metadata_namespace: Option<String>,
    payload_key: Option<String>,
    scope_claim: Option<String>,
    subject_claim: Option<String>,
}

impl FromJson for JwtDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "jwt: an object",
            &[
                "metadata_namespace",
                "payload_key",
                "scope_claim",
                "subject_claim",
            ],
            errors,
        )?;
        let metadata_namespace = f.nullable::<String>("metadata_namespace");
        let payload_key = f.nullable::<String>("payload_key");
        let scope_claim = f.nullable::<String>("scope_claim");
        let subject_claim = f.nullable::<String>("subject_claim");
        f.done()?;
        Some(JwtDoc {
            metadata_namespace,
            payload_key,
            scope_claim,
            subject_claim,
        })
    }
}

impl JwtDoc {
    pub(crate) fn check(self, errors: &mut Vec<ConfigError>) -> JwtConfig {
        let mut field = |value: Option<String>, default: &str, name: &str| -> Box<str> {
            let value = value.unwrap_or_else(|| default.to_string());
            check_text(&format!("jwt.{name}"), &value, errors);
            value.into()
        };
        JwtConfig {
            metadata_namespace: field(
                self.metadata_namespace,
                DEFAULT_METADATA_NAMESPACE,
                "metadata_namespace",
            ),
            payload_key: field(self.payload_key, DEFAULT_PAYLOAD_KEY, "payload_key"),
            scope_claim: field(self.scope_claim, DEFAULT_SCOPE_CLAIM, "scope_claim"),
            subject_claim: field(self.subject_claim, DEFAULT_SUBJECT_CLAIM, "subject_claim"),
        }
    }
}

/// The two claims of a verified payload, as the host's property API returns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The subject claim: a string claim comes as its raw bytes.
    pub subject: &'a [u8],
    /// The scope claim, if the payload has it: a string's raw bytes, or a list of strings
    /// serialized by Envoy as a pairs map (count, sizes, then each string and an empty
    /// value, NUL-terminated).
    pub scope: Option<&'a [u8]>,
}

/// The caller of a request authenticated by a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The subject, printable ASCII or UTF-8 without control characters (it goes into a
    /// header).
    pub subject: Box<str>,
    /// The token's scopes joined by single spaces, as the scopes header carries them.
    pub scopes_header: Box<str>,
    /// The token's scopes that rules mention.
    pub scope_mask: ScopeMask,
}

impl VerifiedToken {
    /// Reads the claims of a payload `jwt_authn` verified. A token whose subject is empty
    /// or holds control characters, or whose scope claim is neither a string nor a list
    /// of strings of valid scope tokens, is refused (401): it cannot be forwarded safely.
    pub fn from_claims(claims: Claims<'_>, index: &ScopeIndex) -> Result<Self, &'static str> {
        let subject = std::str::from_utf8(claims.subject)
            .ok()
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
            .ok_or("verified token has an empty or unprintable subject")?;
        let scopes = match claims.scope {
            None => Vec::new(),
            Some(raw) => scope_claim(raw).ok_or("verified token has an unreadable scope claim")?,
        };
        Ok(VerifiedToken {
            subject: subject.into(),
            scopes_header: crate::scope::joined(&scopes).into(),
            scope_mask: index.mask(&scopes),
        })
    }
}

/// A scope claim: a space-separated string, or a list of strings (a pairs map, which has
/// NUL bytes; scope tokens never do). Empty entries are skipped.
fn scope_claim(raw: &[u8]) -> Option<Vec<Scope>> {
    let mut scopes = Vec::new();
    if raw.iter().any(u8::is_ascii_control) {
        let pairs = header_map::parse(raw).ok()?;
        for (item, value) in pairs {
            if !value.is_empty() {
                return None;
            }
            for word in item.split(' ').filter(|w| !w.is_empty()) {
                scopes.push(Scope::parse(word).ok()?);
            }
        }
    } else {
        let text = std::str::from_utf8(raw).ok()?;
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            scopes.push(Scope::parse(word).ok()?);
        }
    }
    scopes.sort_unstable();
    scopes.dedup();
    Some(scopes)
}

/// Whether a bearer token has a JWT's shape: three base64url segments separated by dots,
/// the first a JSON object's encoding (`eyJ`, `{"`). Such a token is never read as an API
/// key when `jwt` is configured.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    if !token.starts_with(b"eyJ") {
        return false;
    }
    let b64url = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let mut segments = 0;
    for segment in token.split(|b| *b == b'.') {
        segments += 1;
        // The signature segment of an unsigned token (`alg: none`) is empty.
        if segments < 3 && segment.is_empty() || !segment.iter().all(b64url) {
            return false;
        }
    }
    segments == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::scope::test_index as index;

    /// A list as Envoy serializes it: a pairs map of the items with empty values.
    fn pairs(items: &[&str]) -> Vec<u8> {
        let mut out = (items.len() as u32).to_le_bytes().to_vec();
        for item in items {
            out.extend((item.len() as u32).to_le_bytes());
            out.extend(0u32.to_le_bytes());
        }
        for item in items {
            out.extend(item.as_bytes());
            out.extend([0, 0]);
        }
        out
    }

    #[test]
    fn jwt_shape() {
        for yes in [
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
            "eyJ-_.a.b",
        ] {
            assert!(looks_like_jwt(yes.as_bytes()), "{yes}");
        }
        for no in [
            "kg_abc",
            "eyJ",
            "eyJa.b",
            "eyJa.b.c.d",
            "eyJa..c",
            "abc.def.ghi",
            "eyJa.b+/.c",
            "eyJa.b.c=",
        ] {
            assert!(!looks_like_jwt(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn string_and_list_scope_claims() {
        let idx = index(&["read", "write"]);
        fn claims(scope: Option<&[u8]>) -> Claims<'_> {
            Claims {
                subject: b"alice",
                scope,
            }
        }
        let t = VerifiedToken::from_claims(claims(Some(b"write read extra")), &idx).unwrap();
        assert_eq!(&*t.subject, "alice");
        assert_eq!(&*t.scopes_header, "extra read write");
        assert!(t
            .scope_mask
            .holds_all(idx.mask(&[Scope::parse("read").unwrap()])));
        let list = pairs(&["read", "other"]);
        let t = VerifiedToken::from_claims(claims(Some(&list)), &idx).unwrap();
        assert_eq!(&*t.scopes_header, "other read");
        let empty = pairs(&[]);
        let t = VerifiedToken::from_claims(claims(Some(&empty)), &idx).unwrap();
        assert_eq!(&*t.scopes_header, "");
        let t = VerifiedToken::from_claims(claims(None), &idx).unwrap();
        assert_eq!(t.scope_mask, ScopeMask::EMPTY);
        for bad in [&b"quo\"te"[..], b"caf\xc3\xa9", b"a\r\nx-evil: 1"] {
            assert!(
                VerifiedToken::from_claims(claims(Some(bad)), &idx).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subject_must_be_printable() {
        let idx = index(&[]);
        for bad in [&b""[..], b"a\nb", b"\xff"] {
            let c = Claims {
                subject: bad,
                scope: None,
            };
            assert!(VerifiedToken::from_claims(c, &idx).is_err(), "{bad:?}");
        }
        let c = Claims {
            subject: "usér 1".as_bytes(),
            scope: None,
        };
        assert_eq!(
            &*VerifiedToken::from_claims(c, &idx).unwrap().subject,
            "usér 1"
        );
    }
}
