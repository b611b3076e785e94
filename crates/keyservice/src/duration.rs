//! Lifetimes: `never`, or a whole number of m (minutes), h, d, w or y (365 days), as
//! `keygate new --expires-in` takes them (LabKey's never / 7d / 30d / 90d / 365d).

use std::fmt;

const LONGEST_MINUTES: i64 = 100 * 365 * 24 * 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Never,
    /// Seconds (always a whole number of minutes).
    Seconds(i64),
}

impl Lifetime {
    /// `zero_ok`: whether `0m` (or `0h`...) is accepted, as for a rotation's grace.
    pub fn parse(text: &str, zero_ok: bool) -> Result<Lifetime, String> {
        if text == "never" {
            return Ok(Lifetime::Never);
        }
        let accepted = "use \"never\" or a whole number followed by m, h, d, w or y (365 days), such as 7d, 30d, 90d, 365d or 24h";
        let bad = |why: &str| format!("{text:?}: {why}; {accepted}");
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| bad("no unit"))?;
        let (count, unit) = text.split_at(split);
        if count.is_empty() {
            return Err(bad("no number"));
        }
        let count: i64 = count.parse::<u32>().map_err(|_| bad("too long"))?.into();
        if count == 0 && !zero_ok {
            return Err(bad("must be more than 0"));
        }
        let per: i64 = match unit {
            "m" => 1,
            "h" => 60,
            "d" => 24 * 60,
            "w" => 7 * 24 * 60,
            "y" => 365 * 24 * 60,
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        let minutes = count * per;
        if minutes > LONGEST_MINUTES {
            return Err(bad("longer than 100 years"));
        }
        Ok(Lifetime::Seconds(minutes * 60))
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
