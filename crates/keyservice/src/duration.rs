//! Lifetimes: `never`, or a whole number of m (minutes), h, d, w or y (365 days), as
//! `keygate new --expires-in` takes them (LabKey's never / 7d / 30d / 90d / 365d).

use std::fmt;

const LONGEST_MINUTES: i64 = 100 * 365 * 24 * 60;

/// Why the text of a lifetime was refused; each caller words it (`words`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    NoUnit,
    NoNumber,
    TooLong,
    Zero,
    UnknownUnit(String),
    Over100Years,
}

impl Refused {
    /// The reason, with the caller's words for `0` and for more than 100 years.
    pub fn words(&self, zero: &str, over: &str) -> String {
        match self {
            Refused::NoUnit => "no unit".to_string(),
            Refused::NoNumber => "no number".to_string(),
            Refused::TooLong => "too long".to_string(),
            Refused::Zero => zero.to_string(),
            Refused::UnknownUnit(unit) => format!("unknown unit {unit:?}"),
            Refused::Over100Years => over.to_string(),
        }
    }
}

/// `never` (`None`), or a whole number of m (minutes), h, d, w or y (365 days) as
/// minutes, at most 100 years; `0` only when `zero_ok`. The one parser of lifetimes, for
/// the key service and `keygate new --expires-in`.
pub fn minutes(text: &str, zero_ok: bool) -> Result<Option<i64>, Refused> {
    if text == "never" {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(Refused::NoUnit)?;
    let (count, unit) = text.split_at(split);
    if count.is_empty() {
        return Err(Refused::NoNumber);
    }
    // A count too long for u32 is far past the longest allowed anyway.
    let count: i64 = count.parse::<u32>().map_err(|_| Refused::TooLong)?.into();
    if count == 0 && !zero_ok {
        return Err(Refused::Zero);
    }
    let per: i64 = match unit {
        "m" => 1,
        "h" => 60,
        "d" => 24 * 60,
        "w" => 7 * 24 * 60,
        "y" => 365 * 24 * 60,
        _ => return Err(Refused::UnknownUnit(unit.to_string())),
    };
    let minutes = count * per;
    if minutes > LONGEST_MINUTES {
        return Err(Refused::Over100Years);
    }
    Ok(Some(minutes))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Never,
    /// Seconds (always a whole number of minutes).
    Seconds(i64),
}

impl Lifetime {
    /// `zero_ok`: whether `0m` (or `0h`...) is accepted, as for a rotation's grace.
    pub fn parse(text: &str, zero_ok: bool) -> Result<Lifetime, String> {
        let accepted = "use \"never\" or a whole number followed by m, h, d, w or y (365 days), such as 7d, 30d, 90d, 365d or 24h";
        match minutes(text, zero_ok) {
            Ok(None) => Ok(Lifetime::Never),
            Ok(Some(minutes)) => Ok(Lifetime::Seconds(minutes * 60)),
            Err(refused) => Err(format!(
                "{text:?}: {}; {accepted}",
                refused.words("must be more than 0", "longer than 100 years")
            )),
        }
    }

    /// Whether `self` is no longer than `max`.
    pub fn within(self, max: Lifetime) -> bool {
        match (self, max) {
            (_, Lifetime::Never) => true,
            (Lifetime::Never, Lifetime::Seconds(_)) => false,
            (Lifetime::Seconds(a), Lifetime::Seconds(b)) => a <= b,
        }
    }

    /// The expiry of something made at `now` (unix seconds).
    pub fn expiry_from(self, now: i64) -> Option<i64> {
        match self {
            Lifetime::Never => None,
            Lifetime::Seconds(s) => Some(now.saturating_add(s)),
        }
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Lifetime::Never => f.write_str("never"),
            Lifetime::Seconds(s) => {
                let m = s / 60;
                for (unit, per) in [("y", 525_600), ("d", 1440), ("h", 60)] {
                    if m % per == 0 && m >= per {
                        return write!(f, "{}{unit}", m / per);
                    }
                }
                write!(f, "{m}m")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for text in ["never", "7d", "30d", "90d", "1y", "25h", "45m"] {
            assert_eq!(Lifetime::parse(text, false).unwrap().to_string(), text);
        }
        assert_eq!(Lifetime::parse("365d", false).unwrap().to_string(), "1y");
        assert_eq!(Lifetime::parse("2w", false).unwrap().to_string(), "14d");
        assert_eq!(Lifetime::parse("24h", false).unwrap().to_string(), "1d");
        for bad in ["", "0d", "7", "d", "7x", "-1d", "999999999999d", "101y"] {
            assert!(Lifetime::parse(bad, false).is_err(), "{bad}");
        }
        assert_eq!(Lifetime::parse("0h", true).unwrap(), Lifetime::Seconds(0));
        let d90 = Lifetime::parse("90d", false).unwrap();
        assert!(d90.within(Lifetime::Never));
        assert!(!Lifetime::Never.within(d90));
        assert!(Lifetime::parse("30d", false).unwrap().within(d90));
        assert!(!Lifetime::parse("91d", false).unwrap().within(d90));
    }
}
