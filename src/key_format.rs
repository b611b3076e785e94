//! Keys that identify themselves (README "Key format"): `<prefix>_<random>_<checksum>`,
//! as GitHub's and Cloudflare's tokens are. A secret scanner finds them by their shape
//! with few false positives, and the filter refuses a mistyped or made-up key by its
//! checksum before it hashes it, looks it up or calls anyone.
//!
//! - `prefix`: 1 to 16 lowercase letters or digits (`kg` by default);
//! - `random`: 256 random bits in base62, exactly [`RANDOM_LEN`] characters;
//! - `checksum`: the CRC-32 (IEEE) of `<prefix>_<random>`, in base62, exactly
//!   [`CHECKSUM_LEN`] characters.
//!
//! The regular expression [`PATTERN`] matches exactly these keys, for prefix `kg`.

use serde::Deserialize;

pub const RANDOM_LEN: usize = 43;
pub const CHECKSUM_LEN: usize = 6;
/// A key of prefix `kg`, for a secret-scanning rule (other prefixes alike).
pub const PATTERN: &str = r"\bkg_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}\b";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key prefix: 1 to 16 lowercase ASCII letters or digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(Box<str>);

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let ok = (1..=16).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Prefix(text.into()))
        } else {
            Err(format!(
                "key prefix {text:?}: use 1 to 16 lowercase letters or digits (the '_' after \
                 it is added)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Prefix::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A new key from 32 random bytes (the shell draws them from the OS).
pub fn issue(prefix: &Prefix, random: [u8; 32]) -> String {
    let mut key = String::with_capacity(prefix.0.len() + 2 + RANDOM_LEN + CHECKSUM_LEN);
    key.push_str(&prefix.0);
    key.push('_');
    key.push_str(&base62(&random, RANDOM_LEN));
    let sum = checksum(&key);
    key.push('_');
    key.push_str(&sum);
    key
}

/// The checksum of `<prefix>_<random>`.
fn checksum(body: &str) -> String {
    base62(
        &crc32fast::hash(body.as_bytes()).to_be_bytes(),
        CHECKSUM_LEN,
    )
}

/// `bytes` as a big-endian number in base62, left-padded with `0` to `width` digits
/// (wide enough for any value of that many bytes).
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = vec![b'0'; width];
    for digit in digits.iter_mut().rev() {
        let mut rest = 0u32;
        for byte in number.iter_mut() {
            let value = (rest << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            rest = value % 62;
        }
        *digit = ALPHABET[rest as usize];
    }
    String::from_utf8(digits).unwrap_or_default()
}

/// What a presented key's shape says.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape<'p> {
    /// No configured prefix: a legacy key, or another system's; decided by its hash alone.
    Unprefixed,
    WellFormed(&'p Prefix),
    /// A configured prefix, and not the format: a mistyped or made-up key.
    Malformed(&'p Prefix, &'static str),
}

/// The filter's `key_format` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    pub prefixes: Vec<Prefix>,
    pub checksum: bool,
}

impl KeyFormat {
    /// Reads a key's shape; the key itself never leaves this function.
    pub fn shape(&self, key: &str) -> Shape<'_> {
        shape(key, &self.prefixes, self.checksum)
    }
}

pub fn shape<'p>(key: &str, prefixes: &'p [Prefix], check_sum: bool) -> Shape<'p> {
    let Some((prefix, rest)) = prefixes.iter().find_map(|p| {
        let rest = key.strip_prefix(p.as_str())?.strip_prefix('_')?;
        Some((p, rest))
    }) else {
        return Shape::Unprefixed;
    };
    let is_base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    let Some((random, sum)) = rest.split_once('_') else {
        return Shape::Malformed(prefix, "no checksum");
    };
    if random.len() != RANDOM_LEN || !is_base62(random) {
        return Shape::Malformed(prefix, "the random part is not 43 base62 characters");
    }
    if sum.len() != CHECKSUM_LEN || !is_base62(sum) {
        return Shape::Malformed(prefix, "the checksum is not 6 base62 characters");
    }
    if check_sum && checksum(&key[..key.len() - CHECKSUM_LEN - 1]) != sum {
        return Shape::Malformed(prefix, "the checksum does not match");
    }
    Shape::WellFormed(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kg() -> Prefix {
        Prefix::parse("kg").unwrap()
    }

    #[test]
    fn a_key_has_the_documented_shape() {
        let key = issue(&kg(), [0u8; 32]);
        assert_eq!(key.len(), 2 + 1 + RANDOM_LEN + 1 + CHECKSUM_LEN);
        assert!(key.starts_with("kg_0000000000"));
        let max = issue(&kg(), [0xff; 32]);
        assert_eq!(max.len(), key.len(), "fixed width for any value");
        assert_eq!(shape(&max, &[kg()], true), Shape::WellFormed(&kg()));
        // The checksum is CRC-32 of `<prefix>_<random>`, in base62.
        let body = &key[..key.len() - 7];
        assert_eq!(&key[key.len() - 6..], checksum(body));
        assert_eq!(base62(&[0, 0, 0, 61], 6), "00000z");
        assert_eq!(base62(&[0, 0, 0, 62], 6), "000010");
        assert_eq!(base62(&[0xff; 4], 6), "4gfFC3");
    }

    #[test]
    fn prefixes_are_short_lowercase_words() {
        for bad in ["", "KG", "kg_", "k-g", "abcdefghijklmnopq"] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Prefix::parse("ghp2").is_ok());
    }

    #[test]
    fn malformed_keys_say_why_and_others_pass() {
        let key = issue(&kg(), [7u8; 32]);
        let prefixes = [kg()];
        assert_eq!(
            shape(&key, &prefixes, true),
            Shape::WellFormed(&prefixes[0])
        );
        for (bad, why) in [
            ("kg_abc".to_string(), "no checksum"),
            (
                format!("{}x", &key[..key.len()]),
                "the checksum is not 6 base62 characters",
            ),
            (
                key.replacen("kg_", "kg_x", 1),
                "the random part is not 43 base62 characters",
            ),
        ] {
            assert_eq!(
                shape(&bad, &prefixes, true),
                Shape::Malformed(&prefixes[0], why)
            );
        }
        // Without the checksum check, only the shape counts.
        let mut wrong = key.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(
            shape(&wrong, &prefixes, true),
            Shape::Malformed(&prefixes[0], "the checksum does not match")
        );
        assert_eq!(
            shape(&wrong, &prefixes, false),
            Shape::WellFormed(&prefixes[0])
        );
        for legacy in ["apikey|abc", "kgx_abc", "KG_abc", "kg", "labkey_0123"] {
            assert_eq!(
                shape(legacy, &prefixes, true),
                Shape::Unprefixed,
                "{legacy}"
            );
        }
    }

    proptest! {
        #[test]
        fn every_issued_key_passes_and_any_one_change_fails(
            random in any::<[u8; 32]>(),
            at in any::<prop::sample::Index>(),
            to in any::<prop::sample::Index>(),
        ) {
            let prefixes = [kg()];
            let key = issue(&prefixes[0], random);
            prop_assert_eq!(shape(&key, &prefixes, true), Shape::WellFormed(&prefixes[0]));
            // Any single character changed (past the prefix, to another base62 character
            // or '_') fails the checksum or the shape.
            let mut bytes = key.clone().into_bytes();
            let i = 3 + at.index(bytes.len() - 3);
            let alphabet: Vec<u8> = ALPHABET.iter().copied().chain([b'_']).filter(|b| *b != bytes[i]).collect();
            bytes[i] = alphabet[to.index(alphabet.len())];
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(matches!(shape(&changed, &prefixes, true), Shape::Malformed(..)), "{changed}");
        }

        #[test]
        fn no_key_without_a_configured_prefix_is_refused(key in "[!-~]{1,80}") {
            prop_assume!(!key.starts_with("kg_"));
            let prefixes = [kg()];
            prop_assert_eq!(shape(&key, &prefixes, true), Shape::Unprefixed);
        }
    }
}
