//! New keys and ids, from the OS CSPRNG.

use crate::error::{Error, Result};
use base64::Engine;

/// 256 bits: a key is as strong as the hash that stores it, and no stronger is useful.
const KEY_BYTES: usize = 32;

/// The prefix a key may start with: short and URL-safe, so a key stays one token in a
/// header, a query string or a `.netrc`, and it cannot be mistaken for a legacy
/// `apikey|` key (which the filter would strip).
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "--prefix {prefix:?}: use at most 32 letters, digits, '_', '-' or '.'"
        )))
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::new(format!("the OS random number generator failed: {e}")))?;
    Ok(bytes)
}

/// `prefix` + 256 random bits as unpadded base64url (43 characters).
pub fn api_key(prefix: &str) -> Result<String> {
    let bytes: [u8; KEY_BYTES] = random()?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random (version 4) UUID, like ImmPort's and VSPC's key ids.
pub fn key_id() -> Result<String> {
    Ok(uuid::Builder::from_random_bytes(random()?)
        .into_uuid()
        .hyphenated()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_long_and_different() {
        let a = api_key("kg_").unwrap();
        let b = api_key("kg_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kg_"));
        assert_eq!(a.len(), 3 + 43);
        let body = &a[3..];
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(api_key("").unwrap().len(), 43);
    }

    #[test]
    fn ids_are_uuid_v4() {
        let id = key_id().unwrap();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id, id.to_lowercase());
        assert_ne!(id, key_id().unwrap());
    }

    #[test]
    fn prefixes() {
        for good in ["", "kg_", "acme-prod.", "K9"] {
            assert!(check_prefix(good).is_ok(), "{good}");
        }
        for bad in ["apikey|", "a b", "x/", "é", &"a".repeat(33)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
