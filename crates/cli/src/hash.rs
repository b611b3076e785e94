//! `keygate hash`: the record `hash` for a key read on stdin, computed as the filter will
//! compute it when the key is presented: the legacy prefix (default `apikey|`, the
//! filter's default `strip_prefixes`) is removed first, so a LabKey user's
//! `apikey|<random>` gets the hash the filter looks up.

use crate::error::{Error, Result};
use keygate_core::config::DEFAULT_STRIP_PREFIX;
use keygate_core::key_format::{self, Prefix, Shape};
use keygate_core::record::KeyHash;
use std::io::Read;

/// Far more than any key; Envoy refuses longer headers anyway.
const MAX_INPUT: u64 = 64 * 1024;

/// The key as read: only the line ending is removed, so a key with stray spaces is refused
/// rather than quietly changed.
pub fn key_from_input(input: &[u8]) -> Result<&str> {
    let text = std::str::from_utf8(input)
        .map_err(|_| Error::new("the key on stdin is not printable ASCII"))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(Error::new("no key on stdin"));
    }
    // The filter refuses any other key as malformed (400): no record could ever match it.
    if !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Error::new(
            "the key on stdin has whitespace or characters outside printable ASCII, \
             which the filter refuses; give one key, on one line",
        ));
    }
    Ok(text)
}

/// The first matching prefix is removed, as the filter does.
pub fn hash_key(key: &str, strip_prefixes: &[String]) -> Result<String> {
    let stripped = strip_prefixes
        .iter()
        .find(|p| key.starts_with(p.as_str()))
        .map_or(key, |p| &key[p.len()..]);
    if stripped.is_empty() {
        return Err(Error::new(
            "nothing is left of the key once its prefix is removed",
        ));
    }
    Ok(KeyHash::of_key(stripped).to_hex())
}

pub fn run(strip_prefixes: Vec<String>, no_strip: bool) -> Result<()> {
    let prefixes = match (no_strip, strip_prefixes.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => vec![DEFAULT_STRIP_PREFIX.to_string()],
        (false, false) => strip_prefixes,
    };
    if prefixes.iter().any(String::is_empty) {
        return Err(Error::new(
            "--strip-prefix: must not be empty (use --no-strip)",
        ));
    }
    let input = read_stdin()?;
    println!("{}", hash_key(key_from_input(&input)?, &prefixes)?);
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut input)
        .map_err(|e| Error::new(format!("cannot read stdin: {e}")))?;
    // Hashing the first part of something longer would give a hash that matches nothing.
    if input.len() as u64 > MAX_INPUT {
        return Err(Error::new(format!(
            "more than {MAX_INPUT} bytes on stdin: give one key"
        )));
    }
    Ok(input)
}

/// `keygate check-key`: the key's shape under the key format (README "Key format").
pub fn check_key(prefixes: Vec<String>) -> Result<()> {
    let texts = if prefixes.is_empty() {
        vec![keygate_keyservice::secret::KEY_PREFIX.to_string()]
    } else {
        prefixes
    };
    let prefixes = texts
        .iter()
        .map(|p| {
            keygate_keyservice::secret::prefix(p).map_err(|e| Error::new(format!("--prefix: {e}")))
        })
        .collect::<Result<Vec<Prefix>>>()?;
    let input = read_stdin()?;
    let key = key_from_input(&input)?;
    match key_format::shape(key, &prefixes, true) {
        Shape::WellFormed(prefix) => {
            println!("well formed: prefix {}, checksum valid", prefix.as_str());
            Ok(())
        }
        Shape::Malformed(prefix, why) => Err(Error::new(format!(
            "malformed: prefix {}, but {why}: a mistyped, cut or made-up key, which a filter \
             with key_format refuses (401) without looking it up",
            prefix.as_str()
        ))),
        Shape::Unprefixed => Err(Error::new(format!(
            "not of the key format: it does not start with {}; a legacy key is still \
             decided by its hash",
            prefixes
                .iter()
                .map(|p| format!("{}_", p.as_str()))
                .collect::<Vec<_>>()
                .join(" or ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn only_the_line_ending_is_removed() {
        assert_eq!(key_from_input(b"abc\n").unwrap(), "abc");
        assert_eq!(key_from_input(b"abc\r\n").unwrap(), "abc");
        assert_eq!(key_from_input(b"abc").unwrap(), "abc");
        for bad in [
            &b""[..],
            b"\n",
            b" abc\n",
            b"abc \n",
            b"a b",
            b"abc\n\n",
            b"\xff",
        ] {
            assert!(key_from_input(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_like_the_filter() {
        let default = vec!["apikey|".to_string()];
        assert_eq!(hash_key("abc", &default).unwrap(), ABC);
        assert_eq!(hash_key("apikey|abc", &default).unwrap(), ABC);
        assert_ne!(hash_key("apikey|abc", &[]).unwrap(), ABC);
        let two = vec!["a".to_string(), "ab".to_string()];
        assert_eq!(
            hash_key("abc", &two).unwrap(),
            KeyHash::of_key("bc").to_hex()
        );
        assert!(hash_key("apikey|", &default).is_err());
    }
}
