//! New keys and ids from the OS CSPRNG, and the one way a key is kept: its SHA-256.

use keygate_core::key_format::{self, Prefix};
use keygate_core::record::KeyHash;

/// The prefix of API keys made by the service (as `keygate new`'s default).
pub const KEY_PREFIX: &str = "kg";
/// The prefix of admin keys: recognisable, and never confused with a gateway key.
pub const ADMIN_PREFIX: &str = "kga";

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("the OS random number generator failed: {e}"))?;
    Ok(bytes)
}

/// A key prefix as an operator writes it: `kg`, or `kg_` with the separator the key format
/// adds anyway (README "Key format").
pub fn prefix(text: &str) -> Result<Prefix, String> {
    Prefix::parse(text.strip_suffix('_').unwrap_or(text))
}

/// A new key: `<prefix>_<256 random bits in base62>_<checksum>` (README "Key format").
pub fn new_key(prefix_text: &str) -> Result<String, String> {
    let prefix = prefix(prefix_text)?;
    Ok(key_format::issue(&prefix, random()?))
}

/// A change feed's epoch: 128 random bits, lowercase hex.
pub fn new_epoch() -> Result<String, String> {
    let bytes: [u8; 16] = random()?;
    Ok(hex::encode(bytes))
}

/// A random (version 4) UUID, lowercase and hyphenated.
/// A new key with `prefix`, a new record id and the key's hash: what creating or rotating a
/// key needs. The raw key is for the one answer that shows it.
pub fn new_material(prefix: &str) -> Result<(String, String, String), String> {
    let raw = new_key(prefix)?;
    let id = new_id()?;
    let hash = hash(&raw).to_hex();
    Ok((raw, id, hash))
}

pub fn new_id() -> Result<String, String> {
    let mut b: [u8; 16] = random()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Whether `text` is an id as `new_id` (or `keygate new`) makes them: a lowercase UUID.
pub fn is_id(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

pub fn hash(key: &str) -> KeyHash {
    KeyHash::of_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids() {
        let a = new_key(KEY_PREFIX).unwrap();
        assert!(a.starts_with("kg_") && a.len() == 53, "{a}");
        let prefixes = [prefix("kg").unwrap()];
        assert!(matches!(
            key_format::shape(&a, &prefixes, true),
            key_format::Shape::WellFormed(_)
        ));
        assert_eq!(prefix("kg_"), prefix("kg"));
        assert!(prefix("apikey|").is_err());
        assert_ne!(a, new_key(KEY_PREFIX).unwrap());
        let id = new_id().unwrap();
        assert!(is_id(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(!is_id("8C3E4394-10A9-46EF-8AF9-B6401BA1400D"));
        assert!(!is_id("../etc/passwd"));
    }
}
