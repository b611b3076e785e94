//! Instants in key records: parsed from RFC 3339 once, compared as integers afterwards.
//!
//! Read and written by hand, as the `time` crate read them (its tests below compare): the
//! crate's generic parsing made some 15 KB of the wasm module (issue #24).

use serde::{Deserialize, Deserializer};

/// An instant as nanoseconds since the Unix epoch (UTC). Parsing happens at load, so the
/// request path compares two integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i128);

impl Timestamp {
    /// Parses an RFC 3339 timestamp: fractional seconds (up to nanoseconds, as ImmPort
    /// writes them) and any UTC offset are accepted.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        rfc3339(text.as_bytes())
            .map(Timestamp)
            .map_err(|why| format!("invalid RFC 3339 timestamp {text:?}: {why}"))
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

/// The shape, for a text that does not have it.
const SHAPE: &str =
    "expected YYYY-MM-DDTHH:MM:SS, then an optional fraction, then Z or an offset (+HH:MM)";

/// Nanoseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `T` and
/// `Z` in either case. Digits of a fraction past the ninth are dropped. A leap second
/// (`:60`) is taken as the last nanosecond before it, where one may be: 23:59 UTC on the
/// last day of a month.
fn rfc3339(text: &[u8]) -> Result<i128, &'static str> {
    let mut at = Cursor { text, at: 0 };
    let year = at.number(4)?;
    at.expect(b'-')?;
    let month = at.number(2)?;
    at.expect(b'-')?;
    let day = at.number(2)?;
    // RFC 3339 (5.6) lets a space stand for the `T`, as `time` did.
    if at.peek() == Some(b' ') {
        at.at += 1;
    } else {
        at.expect(b'T')?;
    }
    let hour = at.number(2)?;
    at.expect(b':')?;
    let minute = at.number(2)?;
    at.expect(b':')?;
    let second = at.number(2)?;
    let mut nanos: i64 = 0;
    if at.peek() == Some(b'.') {
        at.at += 1;
        let digits = text[at.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(SHAPE);
        }
        let mut scale = 100_000_000;
        for d in text[at.at..at.at + digits].iter().take(9) {
            nanos += i64::from(d - b'0') * scale;
            scale /= 10;
        }
        at.at += digits;
    }
    let offset_minutes = match at.peek().map(|b| b.to_ascii_uppercase()) {
        Some(b'Z') => {
            at.at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            at.at += 1;
            let hours = at.number(2)?;
            at.expect(b':')?;
            let minutes = at.number(2)?;
            if hours > 23 || minutes > 59 {
                return Err("the offset is out of range");
            }
            if sign == b'-' {
                -(hours * 60 + minutes)
            } else {
                hours * 60 + minutes
            }
        }
        _ => return Err(SHAPE),
    };
    if at.at != text.len() {
        return Err("unexpected text after the offset");
    }
    if !(1..=12).contains(&month) {
        return Err("the month is out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("the day is out of range");
    }
    if hour > 23 {
        return Err("the hour is out of range");
    }
    if minute > 59 {
        return Err("the minute is out of range");
    }
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60;
    let utc_minute = local - offset_minutes * 60;
    let seconds = match second {
        0..=59 => utc_minute + second,
        60 => {
            // A leap second stands for the last instant before midnight UTC.
            let (y, m, d) = civil_from_days(utc_minute.div_euclid(86_400));
            let last_minute = utc_minute.rem_euclid(86_400) == 86_340;
            if !last_minute || d != days_in_month(y, m) {
                return Err("the second is out of range");
            }
            nanos = 999_999_999;
            utc_minute + 59
        }
        _ => return Err("the second is out of range"),
    };
    Ok(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// `digits` decimal digits, exactly.
    fn number(&mut self, digits: usize) -> Result<i64, &'static str> {
        let field = self.text.get(self.at..self.at + digits).ok_or(SHAPE)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return Err(SHAPE);
        }
        self.at += digits;
        Ok(field.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    }

    /// `sep`, in either case.
    fn expect(&mut self, sep: u8) -> Result<(), &'static str> {
        if self.peek().map(|b| b.to_ascii_uppercase()) != Some(sep) {
            return Err(SHAPE);
        }
        self.at += 1;
        Ok(())
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month, day).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    /// What the `time` crate accepted, and the instant it read, this reads alike.
    #[test]
    fn reads_as_the_time_crate_read() {
        use time::format_description::well_known::Rfc3339;
        use time::OffsetDateTime;
        let cases = [
            "2026-11-01T10:00:00Z",
            "2026-11-01t10:00:00z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999999Z",
            "0000-01-01T00:00:00Z",
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59.9999999999999-23:59",
            "2024-02-29T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2100-02-29T12:00:00Z",
            "2000-02-29T12:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-06-30T23:59:60Z",
            "2026-06-30T23:59:60.5Z",
            "2026-07-01T01:59:60+02:00",
            "2026-06-29T23:59:60Z",
            "2026-06-30T23:58:60Z",
            "2026-06-30T23:59:61Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00+01:60",
            "2026-01-01T00:00:00-00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00Zx",
            "2026-01-01 00:00:00Z",
            "26-01-01T00:00:00Z",
            "+2026-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-01-01T00:00:00.123456789Z",
            "2026-01-01T00:00:00.000000001+05:30",
            "",
            "Z",
            "2026-01-01T00:00:00Z\n",
            "２026-01-01T00:00:00Z",
        ];
        let mut wrong = Vec::new();
        for text in cases {
            let theirs = OffsetDateTime::parse(text, &Rfc3339).map(|t| t.unix_timestamp_nanos());
            let ours = Timestamp::parse_rfc3339(text).map(Timestamp::unix_nanos);
            if ours.as_ref().ok() != theirs.as_ref().ok() {
                wrong.push(format!("{text:?}: ours {ours:?}, time's {theirs:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every month's edges, in the years where rules change, at the offsets' extremes.
    #[test]
    fn reads_every_date_as_the_time_crate_read() {
        use time::format_description::well_known::Rfc3339;
        use time::OffsetDateTime;
        for year in [0, 1, 4, 100, 1900, 1969, 1970, 2000, 2023, 2024, 2100, 9999] {
            for month in 0..=13 {
                for day in [0, 1, 28, 29, 30, 31, 32] {
                    for time in ["00:00:00", "23:59:59", "23:59:60", "12:30:60.25"] {
                        for offset in ["Z", "+23:59", "-23:59", "+00:00", "-01:00"] {
                            let text = format!("{year:04}-{month:02}-{day:02}T{time}{offset}");
                            let theirs = OffsetDateTime::parse(&text, &Rfc3339)
                                .map(|t| t.unix_timestamp_nanos());
                            let ours = Timestamp::parse_rfc3339(&text).map(Timestamp::unix_nanos);
                            assert_eq!(ours.ok(), theirs.ok(), "{text}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn days_and_dates_agree() {
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
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
