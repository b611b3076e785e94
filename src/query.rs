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
    let bytes = component.as_bytes();
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
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// True when the raw parameter name decodes to `name`. A name that cannot be decoded is
/// not `name`.
pub fn name_is(raw: &str, name: &str) -> bool {
    decode(raw).is_some_and(|decoded| decoded == name)
}

/// The query without every pair whose name decodes to `name`; other pairs are kept as sent.
pub fn without(query: &str, name: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name_is(raw_name, name) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
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
}
