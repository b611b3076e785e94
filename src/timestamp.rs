//! Instants in key records: parsed from RFC 3339 once, compared as integers afterwards.

use serde::{Deserialize, Deserializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// An instant as nanoseconds since the Unix epoch (UTC). Parsing happens at load, so the
/// request path compares two integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i128);

impl Timestamp {
    /// Parses an RFC 3339 timestamp: fractional seconds (up to nanoseconds, as ImmPort
    /// writes them) and any UTC offset are accepted.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Timestamp(t.unix_timestamp_nanos()))
            .map_err(|e| format!("invalid RFC 3339 timestamp {text:?}: {e}"))
    }

    pub const fn from_unix_nanos(nanos: i128) -> Self {
        Timestamp(nanos)
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Timestamp(after.as_nanos() as i128),
            Err(before) => Timestamp(-(before.duration().as_nanos() as i128)),
        }
    }

    pub const fn unix_nanos(self) -> i128 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down), as the key service stores times;
    /// saturates far outside any real date.
    pub fn unix_seconds(self) -> i64 {
        i64::try_from(self.0.div_euclid(1_000_000_000)).unwrap_or(if self.0 < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_seconds() {
        let t = Timestamp::parse_rfc3339("2026-11-01T10:00:00Z").unwrap();
        assert_eq!(t.unix_nanos(), 1_793_527_200 * 1_000_000_000);
    }

    #[test]
    fn parses_immport_nanoseconds() {
        let t = Timestamp::parse_rfc3339("2026-05-21T20:55:24.654328038Z").unwrap();
        assert_eq!(t.unix_nanos() % 1_000_000_000, 654_328_038);
    }

    #[test]
    fn parses_vspc_offset_with_seven_digits() {
        let with_offset = Timestamp::parse_rfc3339("2020-08-18T16:02:26.0136931+00:00").unwrap();
        let in_utc = Timestamp::parse_rfc3339("2020-08-18T16:02:26.0136931Z").unwrap();
        assert_eq!(with_offset, in_utc);
    }

    #[test]
    fn offset_moves_the_instant() {
        let east = Timestamp::parse_rfc3339("2026-01-01T02:00:00+02:00").unwrap();
        let utc = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(east, utc);
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-01",
            "2026-11-01 10:00:00",
            "2026-11-01T10:00:00",
            "2026-13-01T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "yesterday",
            "1700000000",
        ] {
            let err = Timestamp::parse_rfc3339(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn system_time_before_and_after_epoch() {
        use std::time::{Duration, UNIX_EPOCH};
        let after = UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(
            Timestamp::from_system_time(after).unix_nanos(),
            5_000_000_000
        );
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(
            Timestamp::from_system_time(before).unix_nanos(),
            -5_000_000_000
        );
    }
}
