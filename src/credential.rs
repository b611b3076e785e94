//! Where a key comes from (README "Credentials"): the `Authorization` header under the Bearer, ApiKey or
//! Basic scheme, a named header, or a query parameter.

use crate::header::HeaderName;
use crate::header_map::Header;
use crate::query;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    ApiKey,
    Basic,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::Bearer, Scheme::ApiKey, Scheme::Basic];

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
            Scheme::Basic => "Basic",
        }
    }

    /// Scheme names are case-insensitive (RFC 9110 §11.1).
    pub fn from_name(name: &[u8]) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.name().as_bytes().eq_ignore_ascii_case(name))
    }
}

impl Scheme {
    /// A scheme named in configuration, or why not.
    pub fn parse_name(text: &str) -> Result<Scheme, String> {
        Scheme::from_name(text.as_bytes())
            .ok_or_else(|| format!("unknown scheme {text:?} (expected Bearer, ApiKey or Basic)"))
    }
}

impl<'de> Deserialize<'de> for Scheme {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        Scheme::parse_name(&text).map_err(serde::de::Error::custom)
    }
}

/// One place a key may be read from. Built by [`crate::config`], which guarantees the
/// invariants: at least one scheme, a username without `:`, a header that is not
/// `authorization`, a non-empty parameter name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Authorization {
        schemes: Vec<Scheme>,
        basic_username: Box<str>,
    },
    Header(HeaderName),
    Query(Box<str>),
}

/// A key as presented by the client. Its `Debug` never shows it.
pub struct PresentedKey<'r>(Cow<'r, str>);

impl PresentedKey<'_> {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresentedKey(<redacted>)")
    }
}

/// What the configured sources found in a request.
#[derive(Debug)]
pub enum Presented<'r> {
    Nothing,
    /// `sources` has bit `i` set for every source `i` that carried this same key.
    Key {
        key: PresentedKey<'r>,
        sources: u32,
    },
    /// A credential was there but cannot be read, or two credentials differ: 400.
    Malformed(&'static str),
}

enum Found<'r> {
    NotAKey,
    /// A Bearer token with a JWT's shape, when JWTs are expected: never a key.
    Token,
    Key(Cow<'r, str>),
    Malformed(&'static str),
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A raw key: printable ASCII without whitespace, surrounding whitespace ignored.
fn key_text(bytes: &[u8]) -> Result<&str, &'static str> {
    let key = trim(bytes);
    if key.is_empty() {
        return Err("empty API key");
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("API key contains whitespace or characters outside printable ASCII");
    }
    std::str::from_utf8(key).map_err(|_| "API key is not ASCII")
}

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Whether an `Authorization` value is a Bearer token with a JWT's shape, whichever
/// schemes the sources read keys from.
pub fn is_bearer_jwt(value: &[u8]) -> bool {
    let value = trim(value);
    let Some(at) = value.iter().position(|b| *b == b' ' || *b == b'\t') else {
        return false;
    };
    Scheme::from_name(&value[..at]) == Some(Scheme::Bearer)
        && crate::jwt::looks_like_jwt(trim(&value[at..]))
}

fn from_authorization<'r>(
    value: &'r [u8],
    schemes: &[Scheme],
    basic_username: &str,
    tokens: bool,
) -> Found<'r> {
    let value = trim(value);
    let split = value.iter().position(|b| *b == b' ' || *b == b'\t');
    let (name, rest) = match split {
        Some(at) => (&value[..at], &value[at..]),
        None => (value, &value[value.len()..]),
    };
    let Some(scheme) = Scheme::from_name(name).filter(|s| schemes.contains(s)) else {
        return Found::NotAKey;
    };
    if tokens && scheme == Scheme::Bearer && crate::jwt::looks_like_jwt(trim(rest)) {
        return Found::Token;
    }
    match scheme {
        Scheme::Bearer | Scheme::ApiKey => match key_text(rest) {
            Ok(key) => Found::Key(Cow::Borrowed(key)),
            Err(why) => Found::Malformed(why),
        },
        Scheme::Basic => from_basic(trim(rest), basic_username),
    }
}

fn from_basic<'r>(token: &[u8], basic_username: &str) -> Found<'r> {
    if token.is_empty() {
        return Found::Malformed("empty Basic credentials");
    }
    let Ok(decoded) = BASE64.decode(token) else {
        return Found::Malformed("Basic credentials are not valid base64");
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return Found::Malformed("Basic credentials have no ':' between user and key");
    };
    if &decoded[..colon] != basic_username.as_bytes() {
        return Found::NotAKey;
    }
    match key_text(&decoded[colon + 1..]) {
        Ok(key) => Found::Key(Cow::Owned(key.to_string())),
        Err(why) => Found::Malformed(why),
    }
}

fn from_query_value(raw: &str) -> Found<'_> {
    let Some(decoded) = query::decode(raw) else {
        return Found::Malformed("API key query parameter has a malformed percent-encoding");
    };
    match decoded {
        Cow::Borrowed(text) => match key_text(text.as_bytes()) {
            Ok(key) => Found::Key(Cow::Borrowed(key)),
            Err(why) => Found::Malformed(why),
        },
        Cow::Owned(text) => match key_text(text.as_bytes()) {
            Ok(key) => Found::Key(Cow::Owned(key.to_string())),
            Err(why) => Found::Malformed(why),
        },
    }
}

fn strip_prefix<'r>(key: Cow<'r, str>, prefixes: &[Box<str>]) -> Cow<'r, str> {
    let Some(prefix) = prefixes.iter().find(|p| key.starts_with(&***p)) else {
        return key;
    };
    match key {
        Cow::Borrowed(k) => Cow::Borrowed(&k[prefix.len()..]),
        Cow::Owned(k) => Cow::Owned(k[prefix.len()..].to_string()),
    }
}

/// Reads every configured source, every occurrence (a header sent twice counts twice). The
/// first key found wins; any other, different key makes the request malformed, as does any
/// credential that cannot be read. Prefixes are stripped before keys are compared.
pub fn extract<'r>(
    sources: &[Source],
    strip_prefixes: &[Box<str>],
    headers: &'r [impl Header],
    query: Option<&'r str>,
) -> Presented<'r> {
    extract_beside_tokens(sources, strip_prefixes, headers, query, false).0
}

/// [`extract`], and with `tokens` (`jwt` configured) a Bearer token with a JWT's shape
/// is not read as a key: the second value has bit `i` set for every source `i` that
/// carried one (for `Authorization`, the only source read for them).
pub fn extract_beside_tokens<'r>(
    sources: &[Source],
    strip_prefixes: &[Box<str>],
    headers: &'r [impl Header],
    query: Option<&'r str>,
    tokens: bool,
) -> (Presented<'r>, u32) {
    let mut found: Option<(Cow<'r, str>, u32)> = None;
    let mut token_sources = 0u32;
    for (i, source) in sources.iter().enumerate() {
        let bit = 1u32 << i;
        let mut merge = |candidate: Found<'r>| -> Result<(), &'static str> {
            let key = match candidate {
                Found::NotAKey => return Ok(()),
                Found::Token => {
                    token_sources |= bit;
                    return Ok(());
                }
                Found::Malformed(why) => return Err(why),
                Found::Key(key) => strip_prefix(key, strip_prefixes),
            };
            if key.is_empty() {
                return Err("empty API key");
            }
            match &mut found {
                None => found = Some((key, bit)),
                Some((first, seen)) if *first == key => *seen |= bit,
                Some(_) => return Err("conflicting credentials: more than one API key"),
            }
            Ok(())
        };
        let outcome = match source {
            Source::Authorization {
                schemes,
                basic_username,
            } => headers
                .iter()
                .filter(|h| h.name() == "authorization")
                .try_for_each(|h| {
                    merge(from_authorization(
                        h.value(),
                        schemes,
                        basic_username,
                        tokens,
                    ))
                }),
            Source::Header(wanted) => headers
                .iter()
                .filter(|h| h.name() == wanted.as_str())
                .try_for_each(|h| {
                    merge(match key_text(h.value()) {
                        Ok(key) => Found::Key(Cow::Borrowed(key)),
                        Err(why) => Found::Malformed(why),
                    })
                }),
            Source::Query(param) => query
                .into_iter()
                .flat_map(query::pairs)
                .filter(|(name, _)| query::name_is(name, param))
                .try_for_each(|(_, value)| merge(from_query_value(value))),
        };
        if let Err(why) = outcome {
            return (Presented::Malformed(why), token_sources);
        }
    }
    let presented = match found {
        None => Presented::Nothing,
        Some((key, sources)) => Presented::Key {
            key: PresentedKey(key),
            sources,
        },
    };
    (presented, token_sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_auth() -> Source {
        Source::Authorization {
            schemes: Scheme::ALL.to_vec(),
            basic_username: "apikey".into(),
        }
    }

    fn standard_sources() -> Vec<Source> {
        vec![
            all_auth(),
            Source::Header(HeaderName::parse("x-api-key").unwrap()),
            Source::Query("api_key".into()),
        ]
    }

    fn headers(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    fn prefixes() -> Vec<Box<str>> {
        vec!["apikey|".into()]
    }

    /// Runs extraction and flattens the answer for comparison.
    fn run(
        sources: &[Source],
        h: &[(&str, &[u8])],
        query: Option<&str>,
    ) -> Result<Option<(String, u32)>, String> {
        let h = headers(h);
        match extract(sources, &prefixes(), &h, query) {
            Presented::Nothing => Ok(None),
            Presented::Key { key, sources } => Ok(Some((key.expose().to_string(), sources))),
            Presented::Malformed(why) => Err(why.to_string()),
        }
    }

    /// What `run` gives for a key found in the sources of the mask `sources`.
    fn found(key: &str, sources: u32) -> Result<Option<(String, u32)>, String> {
        Ok(Some((key.to_string(), sources)))
    }

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn bearer_and_apikey_any_case_any_whitespace() {
        let s = standard_sources();
        for value in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "  Bearer   k1  ",
            "Bearer\tk1",
            "ApiKey k1",
            "apikey k1",
            "APIKEY\t k1",
        ] {
            assert_eq!(
                run(&s, &[("authorization", value.as_bytes())], None),
                found("k1", 1),
                "{value:?}"
            );
        }
    }

    #[test]
    fn basic_with_the_configured_username() {
        let s = standard_sources();
        let ok = basic("apikey:k1");
        assert_eq!(run(&s, &[("authorization", &ok)], None), found("k1", 1));
        let unpadded = b"Basic YXBpa2V5OmsxMg".to_vec(); // apikey:k12 without '='
        assert_eq!(
            run(&s, &[("authorization", &unpadded)], None),
            found("k12", 1)
        );
        let labkey = basic("apikey:apikey|the_rest_of_the_long_api_key");
        assert_eq!(
            run(&s, &[("authorization", &labkey)], None),
            found("the_rest_of_the_long_api_key", 1)
        );
        let colon_in_key = basic("apikey:a:b");
        assert_eq!(
            run(&s, &[("authorization", &colon_in_key)], None),
            found("a:b", 1)
        );

        let custom = [Source::Authorization {
            schemes: vec![Scheme::Basic],
            basic_username: "svc".into(),
        }];
        let svc = basic("svc:k9");
        assert_eq!(
            run(&custom, &[("authorization", &svc)], None),
            found("k9", 1)
        );
        assert_eq!(run(&custom, &[("authorization", &ok)], None), Ok(None));
    }

    #[test]
    fn basic_for_another_user_is_not_a_key() {
        let s = standard_sources();
        let other = basic("alice@example.org:hunter2");
        assert_eq!(run(&s, &[("authorization", &other)], None), Ok(None));
        let upper = basic("APIKEY:k1");
        assert_eq!(run(&s, &[("authorization", &upper)], None), Ok(None));
    }

    #[test]
    fn basic_malformed() {
        let s = standard_sources();
        for value in [
            b"Basic".to_vec(),
            b"Basic    ".to_vec(),
            b"Basic !!!notbase64".to_vec(),
            basic("apikey-without-colon"),
            basic("apikey:"),
            basic("apikey:  "),
            basic("apikey:two words"),
            basic("apikey:caf\u{e9}"),
        ] {
            let got = run(&s, &[("authorization", &value)], None);
            assert!(
                got.is_err(),
                "{:?} gave {got:?}",
                String::from_utf8_lossy(&value)
            );
        }
    }

    #[test]
    fn other_schemes_and_schemes_not_configured_are_not_keys() {
        let s = standard_sources();
        for value in [
            "Digest username=x",
            "Negotiate abc",
            "k1",
            "",
            "Bearerk1",
            "Token k1",
        ] {
            assert_eq!(
                run(&s, &[("authorization", value.as_bytes())], None),
                Ok(None),
                "{value}"
            );
        }
        let bearer_only = [Source::Authorization {
            schemes: vec![Scheme::Bearer],
            basic_username: "apikey".into(),
        }];
        assert_eq!(
            run(&bearer_only, &[("authorization", b"ApiKey k1")], None),
            Ok(None)
        );
        let b = basic("apikey:k1");
        assert_eq!(run(&bearer_only, &[("authorization", &b)], None), Ok(None));
    }

    #[test]
    fn empty_or_odd_keys_are_malformed() {
        let s = standard_sources();
        for value in [
            &b"Bearer"[..],
            b"Bearer   ",
            b"ApiKey",
            b"Bearer a b",
            b"Bearer k\x01",
            b"Bearer \xc3\xa9",
            b"Bearer apikey|",
        ] {
            assert!(
                run(&s, &[("authorization", value)], None).is_err(),
                "{value:?}"
            );
        }
        assert!(run(&s, &[("x-api-key", b"")], None).is_err());
        assert!(run(&s, &[("x-api-key", b"  ")], None).is_err());
        assert!(run(&s, &[], Some("api_key=")).is_err());
        assert!(run(&s, &[], Some("api_key")).is_err());
    }

    #[test]
    fn named_header_and_query() {
        let s = standard_sources();
        assert_eq!(run(&s, &[("x-api-key", b" k2 ")], None), found("k2", 2));
        assert_eq!(run(&s, &[], Some("a=1&api_key=k3")), found("k3", 4));
        assert_eq!(run(&s, &[], Some("api%5Fkey=k%33")), found("k3", 4));
        assert_eq!(run(&s, &[], Some("api_keys=k3&xapi_key=k4")), Ok(None));
        assert!(run(&s, &[], Some("api_key=%zz")).is_err());
        assert!(run(&s, &[], Some("api_key=a+b")).is_err());
    }

    #[test]
    fn legacy_prefix_is_stripped_everywhere() {
        let s = standard_sources();
        assert_eq!(
            run(&s, &[("authorization", b"Bearer apikey|k1")], None),
            found("k1", 1)
        );
        assert_eq!(
            run(&s, &[("x-api-key", b"apikey|k1")], None),
            found("k1", 2)
        );
        assert_eq!(run(&s, &[], Some("api_key=apikey%7Ck1")), found("k1", 4));
        let h = headers(&[("x-api-key", b"apikey|k1")]);
        match extract(&s, &[], &h, None) {
            Presented::Key { key, .. } => assert_eq!(key.expose(), "apikey|k1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_key_twice_is_fine_and_marks_every_source() {
        let s = standard_sources();
        let got = run(
            &s,
            &[("authorization", b"Bearer k1"), ("x-api-key", b"apikey|k1")],
            Some("api_key=k1"),
        );
        assert_eq!(got, found("k1", 7));
        let twice = run(
            &s,
            &[
                ("authorization", b"Bearer k1"),
                ("authorization", b"ApiKey k1"),
            ],
            None,
        );
        assert_eq!(twice, found("k1", 1));
    }

    #[test]
    fn different_keys_conflict() {
        let s = standard_sources();
        for (h, q) in [
            (
                vec![("authorization", &b"Bearer k1"[..]), ("x-api-key", b"k2")],
                None,
            ),
            (
                vec![
                    ("authorization", b"Bearer k1"),
                    ("authorization", b"Bearer k2"),
                ],
                None,
            ),
            (vec![("x-api-key", b"k1"), ("x-api-key", b"k2")], None),
            (vec![], Some("api_key=k1&api_key=k2")),
            (vec![], Some("api_key=k1&api%5fkey=k2")),
            (vec![("x-api-key", b"k1")], Some("api_key=k2")),
        ] {
            let got = run(&s, &h, q);
            assert!(
                got.as_ref().is_err_and(|e| e.contains("conflicting")),
                "{h:?} {q:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_malformed_credential_anywhere_fails_the_request() {
        let s = standard_sources();
        let got = run(
            &s,
            &[("authorization", b"Bearer k1"), ("x-api-key", b"")],
            None,
        );
        assert!(got.is_err());
        let got = run(&s, &[("x-api-key", b"k1")], Some("api_key=%"));
        assert!(got.is_err());
    }

    #[test]
    fn only_configured_sources_are_read() {
        let header_only = [Source::Header(HeaderName::parse("apikey").unwrap())];
        assert_eq!(
            run(
                &header_only,
                &[("authorization", b"Bearer k1")],
                Some("api_key=k1")
            ),
            Ok(None)
        );
        assert_eq!(
            run(&header_only, &[("apikey", b"k1")], None),
            found("k1", 1)
        );
    }

    #[test]
    fn presented_key_debug_is_redacted() {
        let h = headers(&[("authorization", b"Bearer super-secret")]);
        let got = extract(&standard_sources(), &prefixes(), &h, None);
        let shown = format!("{got:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
    }
}
