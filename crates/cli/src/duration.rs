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

const ACCEPTED: &str = "use \"never\" or a positive whole number followed by m (minutes), \
                        h (hours), d (days), w (weeks) or y (365 days), such as 7d, 30d, \
                        90d, 365d, 12h or 2w";

/// Parsed by the key service's parser of lifetimes (the same units and limit of 100
/// years), worded for the command line.
pub fn parse(text: &str) -> Result<Expiry, String> {
    match keygate_keyservice::duration::minutes(text, false) {
        Ok(None) => Ok(Expiry::Never),
        Ok(Some(minutes)) => Ok(Expiry::After(Duration::minutes(minutes))),
        Err(refused) => Err(format!(
            "--expires-in {text:?}: {}; {ACCEPTED}",
            refused.words(
                "a key that expires at once is useless (to stop a key, disable or revoke it)",
                "longer than 100 years (say \"never\" for a key that does not expire)",
            )
        )),
    }
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
