//! New keys and ids, from the OS CSPRNG.

use crate::error::{Error, Result};

/// The prefix a key starts with (README "Key format"): `kg` or `kg_`, 1 to 16 lowercase
/// letters or digits, so a key stays one token in a header, a query string or a `.netrc`,
/// and a secret scanner or the filter's `key_format` can recognize it.
pub fn check_prefix(prefix: &str) -> Result<()> {
    keygate_keyservice::secret::prefix(prefix)
        .map(|_| ())
        .map_err(|e| Error::new(format!("--prefix: {e}")))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::new(format!("the OS random number generator failed: {e}")))?;
    Ok(bytes)
}

/// A new key of the key format, with `prefix`.
pub fn api_key(prefix: &str) -> Result<String> {
    keygate_keyservice::secret::new_key(prefix).map_err(Error::new)
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
        let a = api_key("kg").unwrap();
        let b = api_key("kg_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kg_") && b.starts_with("kg_"));
        assert_eq!(a.len(), 3 + 43 + 1 + 6);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_'));
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
        for good in ["kg", "kg_", "acme", "k9"] {
            assert!(check_prefix(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "apikey|",
            "a b",
            "x/",
            "é",
            "K9",
            "acme-prod.",
            &"a".repeat(17),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
