//! `--expires-in`: how long a new key lives.
//!
//! LabKey offers never, 7, 30, 90 and 365 days; any positive count of minutes, hours,
//! days, weeks or years (365 days, so `1y` is `365d`) is accepted too. Months are left out
//! on purpose: "1 month" from the 31st has no single answer.

use time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Never,
    After(Duration),
}

/// Longer than any key should live; past it, `never` says what is meant.
const LONGEST_DAYS: i64 = 100 * 365;

const ACCEPTED: &str = "use \"never\" or a positive whole number followed by m (minutes), \
                        h (hours), d (days), w (weeks) or y (365 days), such as 7d, 30d, \
                        90d, 365d, 12h or 2w";

pub fn parse(text: &str) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry::Never);
    }
    let bad = |why: &str| format!("--expires-in {text:?}: {why}; {ACCEPTED}");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad("no unit"))?;
    let (count, unit) = text.split_at(split);
    if count.is_empty() {
        return Err(bad("no number"));
    }
    // A count too long for u32 is far past the longest allowed anyway.
    let count: i64 = count.parse::<u32>().map_err(|_| bad("too long"))?.into();
    if count == 0 {
        return Err(bad(
            "a key that expires at once is useless (to stop a key, disable or revoke it)",
        ));
    }
    let minutes_per_unit: i64 = match unit {
        "m" => 1,
        "h" => 60,
        "d" => 24 * 60,
        "w" => 7 * 24 * 60,
        "y" => 365 * 24 * 60,
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    };
    let minutes = count * minutes_per_unit;
    if minutes > LONGEST_DAYS * 24 * 60 {
        return Err(bad(
            "longer than 100 years (say \"never\" for a key that does not expire)",
        ));
    }
    Ok(Expiry::After(Duration::minutes(minutes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labkey_choices_and_other_durations() {
        assert_eq!(parse("never"), Ok(Expiry::Never));
        for (text, days) in [("7d", 7), ("30d", 30), ("90d", 90), ("365d", 365)] {
            assert_eq!(
                parse(text),
                Ok(Expiry::After(Duration::days(days))),
                "{text}"
            );
        }
        assert_eq!(parse("45m"), Ok(Expiry::After(Duration::minutes(45))));
        assert_eq!(parse("12h"), Ok(Expiry::After(Duration::hours(12))));
        assert_eq!(parse("2w"), Ok(Expiry::After(Duration::days(14))));
        assert_eq!(parse("1y"), Ok(Expiry::After(Duration::days(365))));
        assert_eq!(parse("100y"), Ok(Expiry::After(Duration::days(36_500))));
    }

    #[test]
    fn refuses_zero_garbage_and_absurd_lengths() {
        for bad in [
            "",
            "0d",
            "0",
            "7",
            "d",
            "7days",
            "7D",
            "-7d",
            "+7d",
            " 7d",
            "7d ",
            "1.5d",
            "1mo",
            "Never",
            "101y",
            "99999999999d",
            "1d12h",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("never") && err.contains("365d"),
                "{bad:?}: {err}"
            );
        }
        assert!(parse("0d").unwrap_err().contains("useless"));
        assert!(parse("101y").unwrap_err().contains("100 years"));
    }
}
