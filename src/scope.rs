//! Scopes: names checked once, then numbered so that "does this key hold every scope this
//! rule needs" is one bitwise test on the request path.

use crate::header::checked_text;
use std::collections::HashMap;

/// A scope name: a `scope-token` of RFC 6749 §3.3 (printable ASCII except space, `"` and
/// `\`), so that it can be quoted in `WWW-Authenticate` and joined by spaces in a header.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Box<str>);

impl Scope {
    pub fn parse(text: &str) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if ok {
            Ok(Scope(text.into()))
        } else {
            Err(format!(
                "{text:?} is not a valid scope (printable ASCII without spaces, '\"' or '\\')"
            ))
        }
    }
}

checked_text!(Scope);

/// Scopes joined by single spaces, as the scopes header carries them and a challenge names
/// them.
pub fn joined(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scopes a key holds or a rule needs, as bits of a [`ScopeIndex`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeMask(u128);

impl ScopeMask {
    pub const EMPTY: ScopeMask = ScopeMask(0);

    /// True when every scope of `needed` is also in `self`.
    pub fn holds_all(self, needed: ScopeMask) -> bool {
        needed.0 & !self.0 == 0
    }
}

/// Numbers the distinct scopes that rules mention. A key's scopes that no rule mentions
/// decide nothing, so they need no bit (they are still forwarded upstream).
#[derive(Clone, Debug, Default)]
pub struct ScopeIndex {
    bits: HashMap<Scope, u32>,
}

impl ScopeIndex {
    /// How many distinct scopes rules may mention.
    pub const CAPACITY: usize = 128;

    pub fn add(&mut self, scope: &Scope) -> Result<(), String> {
        if self.bits.contains_key(scope) {
            return Ok(());
        }
        if self.bits.len() >= Self::CAPACITY {
            return Err(format!(
                "rules mention more than {} distinct scopes",
                Self::CAPACITY
            ));
        }
        let bit = self.bits.len() as u32;
        self.bits.insert(scope.clone(), bit);
        Ok(())
    }

    pub fn mask<'a>(&self, scopes: impl IntoIterator<Item = &'a Scope>) -> ScopeMask {
        ScopeMask(
            scopes
                .into_iter()
                .filter_map(|s| self.bits.get(s))
                .fold(0u128, |mask, bit| mask | (1u128 << bit)),
        )
    }
}

/// The index of `names`, for tests.
#[cfg(test)]
pub fn test_index(names: &[&str]) -> ScopeIndex {
    let mut index = ScopeIndex::default();
    for n in names {
        if let Ok(scope) = Scope::parse(n) {
            let _ = index.add(&scope);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(names: &[&str]) -> Vec<Scope> {
        names.iter().map(|n| Scope::parse(n).unwrap()).collect()
    }

    #[test]
    fn scope_tokens() {
        for good in [
            "browse",
            "download",
            "rest",
            "integration",
            "read:users",
            "a/b",
            "x!",
        ] {
            assert!(Scope::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "two words", "quo\"te", "back\\slash", "tab\t", "é"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn masks_compare_by_subset() {
        let mut index = ScopeIndex::default();
        for s in scopes(&["browse", "download", "upload"]) {
            index.add(&s).unwrap();
        }
        let key = index.mask(&scopes(&["browse", "download", "unrelated"]));
        assert!(key.holds_all(index.mask(&scopes(&["browse"]))));
        assert!(key.holds_all(index.mask(&scopes(&["browse", "download"]))));
        assert!(!key.holds_all(index.mask(&scopes(&["upload"]))));
        assert!(!key.holds_all(index.mask(&scopes(&["browse", "upload"]))));
        assert!(ScopeMask::default().holds_all(ScopeMask::default()));
    }

    #[test]
    fn capacity_is_enforced_and_repeats_are_free() {
        let mut index = ScopeIndex::default();
        for i in 0..ScopeIndex::CAPACITY {
            index.add(&Scope::parse(&format!("s{i}")).unwrap()).unwrap();
        }
        index.add(&Scope::parse("s0").unwrap()).unwrap();
        let err = index
            .add(&Scope::parse("one-too-many").unwrap())
            .unwrap_err();
        assert!(err.contains("128"), "{err}");
        let last = index.mask(&scopes(&["s127"]));
        assert!(!ScopeMask::default().holds_all(last));
    }
}
