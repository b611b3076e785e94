//! `key_set` mode's incremental sync (README "`keygate serve`"): what the answers of
//! `GET /v1/keyset?since=V&epoch=E&wait=S` mean, and the bounds both sides keep. The
//! filter reads them, as hostile input, with [`crate::key_set_scan`].
//!
//! - 304: nothing newer than `V` during the wait.
//! - 200 with a delta: `{"version","epoch","since","upsert","delete"}`.
//! - 200 with a full document (`{"version","epoch","keys"}`): another epoch, or `V` older
//!   than the change log kept.
//!
//! ## What a delta means
//!
//! The set at `version` is the set at `since` with every record of `upsert` put in place
//! (added, or replacing the record with the same hash) and every hash of `delete` taken
//! out. `upsert` holds, for each key changed after `since` and still served at `version`,
//! its record exactly as `GET /v1/keys/{hash}` answers it at `version`; `delete` each key
//! changed after `since` and not served at `version` (revoked, removed). The service reads
//! the change log, the version and the records in one consistent view, so no change is
//! left out: a key not listed did not change between `since` and `version` (the change log
//! records every key each version touched, in the same transaction as the version).

/// At most this many keys (upserted and deleted) in one delta: the key service's change
/// log keeps no more; it answers a full document instead.
pub const MAX_DELTA_KEYS: usize = 100_000;

/// A version as the key service writes it: a decimal integer in a string, no sign, no
/// leading zero (but `"0"`), at most 19 digits.
pub fn parse_version(field: &str, text: &str) -> Result<u64, String> {
    let decimal = !text.is_empty()
        && text.len() <= 19
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    decimal
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| format!("{field} must be a decimal integer in a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_decimal_strings() {
        assert_eq!(parse_version("v", "0"), Ok(0));
        assert_eq!(parse_version("v", "7"), Ok(7));
        for bad in [
            "",
            "07",
            "-7",
            "7.0",
            "99999999999999999999",
            "18446744073709551615",
        ] {
            assert_eq!(
                parse_version("v", bad),
                Err("v must be a decimal integer in a string".into()),
                "{bad:?}"
            );
        }
    }
}
