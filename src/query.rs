//! Query strings, read the way web frameworks read them (`application/x-www-form-urlencoded`),
//! so that the filter and the upstream agree on which parameter carries a key.

use crate::path::hex_value;
use std::borrow::Cow;

/// The `name=value` pairs of a query string, raw and in order; empty pairs are skipped and
/// a pair without `=` has an empty value.
pub fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Decodes one component: `+` is a space and `%XX` a byte. `None` for a malformed escape or
/// bytes that are not UTF-8. Borrows when there is nothing to decode.
pub fn decode(component: &str) -> Option<Cow<'_, str>> {
    if !component.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(component));
    }
    String::from_utf8(decode_bytes(component.as_bytes())?)
        .ok()
        .map(Cow::Owned)
}

/// Decodes one component as bytes, whatever they are (a path Envoy accepted need not be
/// UTF-8); `None` for a malformed escape.
fn decode_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value)?;
                let lo = bytes.get(i + 2).copied().and_then(hex_value)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// True when the raw parameter name decodes to `name`. A name that cannot be decoded is
/// not `name`.
pub fn name_is(raw: &str, name: &str) -> bool {
    decode(raw).is_some_and(|decoded| decoded == name)
}

/// The query without every pair whose name decodes to `name`; other pairs are kept as sent.
pub fn without(query: &str, name: &str) -> String {
    // Whole pairs of a `str`, split at ASCII `&`, joined by `&`: still UTF-8.
    String::from_utf8(without_bytes(query.as_bytes(), name)).unwrap_or_default()
}

/// [`without`] on bytes: a query that is not UTF-8 loses its `name` pairs just the same
/// (a name that decodes to `name` is `name`, whatever bytes the other pairs hold).
pub fn without_bytes(query: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.len());
    for pair in query.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        let raw_name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
        if decode_bytes(raw_name).is_some_and(|decoded| decoded == name.as_bytes()) {
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(pair);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_order() {
        let got: Vec<_> = pairs("a=1&&b&c=3=4&").collect();
        assert_eq!(got, [("a", "1"), ("b", ""), ("c", "3=4")]);
        assert_eq!(pairs("").count(), 0);
    }

    #[test]
    fn decodes_form_components() {
        assert!(matches!(decode("plain"), Some(Cow::Borrowed("plain"))));
        assert_eq!(decode("a+b%2Bc%7e").unwrap(), "a b+c~");
        assert_eq!(decode("api%5Fkey").unwrap(), "api_key");
        assert_eq!(decode("caf%C3%A9").unwrap(), "café");
        assert!(decode("%").is_none());
        assert!(decode("%4").is_none());
        assert!(decode("%g0").is_none());
        assert!(decode("%FF").is_none());
    }

    #[test]
    fn removes_every_spelling_of_the_name() {
        assert_eq!(
            without("api_key=x&q=1&api%5Fkey=y&api_key", "api_key"),
            "q=1"
        );
        assert_eq!(without("q=1&r=2", "api_key"), "q=1&r=2");
        assert_eq!(without("api_key=x", "api_key"), "");
        assert_eq!(without("api_keys=x&%zz=1", "api_key"), "api_keys=x&%zz=1");
    }

    #[test]
    fn removes_the_name_from_a_query_that_is_not_utf8() {
        assert_eq!(
            without_bytes(b"q=caf\xe9&api_key=k&r=\xff", "api_key"),
            b"q=caf\xe9&r=\xff"
        );
        // A name spelled with escapes and raw bytes that decode to it together.
        assert_eq!(without_bytes(b"\xe9=1&api%5fkey=k", "api_key"), b"\xe9=1");
        assert_eq!(without_bytes("caf\u{e9}=k".as_bytes(), "caf\u{e9}"), b"");
        assert_eq!(without_bytes(b"caf\xc3%A9=k&x=1", "caf\u{e9}"), b"x=1");
        assert_eq!(without_bytes(b"caf\xe9=k", "caf\u{e9}"), b"caf\xe9=k");
    }
}
