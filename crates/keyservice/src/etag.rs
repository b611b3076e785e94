//! Entity tags for `/v1/keyset` and the `If-None-Match` test (RFC 9110 §8.8.3, §13.1.2).

use sha2::{Digest, Sha256};

/// A strong tag for exactly these bytes: the same document always gets the same tag,
/// across restarts and across several `keygate serve` behind one name.
pub fn of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(bytes)))
}

/// Whether `If-None-Match` (every value of it) matches `etag`, so the answer is 304.
/// `*` matches; tags compare weakly, as the RFC asks for this header (`W/"x"` is `"x"`).
/// A malformed member matches nothing.
pub fn none_match<'a>(values: impl IntoIterator<Item = &'a str>, etag: &str) -> bool {
    values.into_iter().any(|value| list_matches(value, etag))
}

fn list_matches(mut rest: &str, etag: &str) -> bool {
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        if let Some(after) = rest.strip_prefix('*') {
            if after.trim_start_matches([' ', '\t']).is_empty()
                || after.starts_with([' ', '\t', ','])
            {
                return true;
            }
        }
        let unweak = rest.strip_prefix("W/").unwrap_or(rest);
        // An opaque tag is a quoted string without escapes: it ends at the next quote.
        let tag_end = unweak
            .strip_prefix('"')
            .and_then(|inner| inner.find('"'))
            .map(|close| close + 2);
        match tag_end {
            Some(end) => {
                if &unweak[..end] == etag {
                    return true;
                }
                rest = &unweak[end..];
            }
            None => match rest.find(',') {
                Some(comma) => rest = &rest[comma + 1..],
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"abc\"";

    #[test]
    fn tags_are_quoted_sha256_of_the_content() {
        assert_eq!(
            of(b"abc"),
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
        assert_ne!(of(b"abc"), of(b"abd"));
    }

    #[test]
    fn matching() {
        for yes in [
            "\"abc\"",
            "*",
            " * ",
            "W/\"abc\"",
            "\"x\", \"abc\"",
            "\"x\",W/\"abc\"",
            "\"x\" ,\t\"abc\" ",
            "\"with,comma\", \"abc\"",
        ] {
            assert!(none_match([yes], TAG), "{yes:?}");
        }
        for no in [
            "",
            "\"abcd\"",
            "\"ab\"",
            "abc",
            "\"abc",
            "W/abc",
            "\"x\"",
            "w/\"abc\"",
            "*x",
            "\"a\"bc\"",
        ] {
            assert!(!none_match([no], TAG), "{no:?}");
        }
        assert!(none_match(["\"x\"", "\"abc\""], TAG));
        assert!(!none_match(Vec::<&str>::new(), TAG));
        // Garbage before a good tag does not hide it.
        assert!(none_match(["junk, \"abc\""], TAG));
    }
}
