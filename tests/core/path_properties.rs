//! Properties of path normalization (README "Paths") over generated paths: built from the pieces
//! attacks are made of (dot segments plain and encoded, encoded slashes and backslashes,
//! `;` parameters, repeated slashes), not only from random text.

use keygate_core::path::{normalize, without_parameters, PathError};
use proptest::prelude::*;

/// One segment: ordinary names, every spelling of `.` and `..`, parameters, escapes.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_~-]{1,6}",
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just(".%2E".to_string()),
        Just("...".to_string()),
        "[a-z]{0,3};[a-z=]{0,4}",
        "%[0-9a-fA-F]{2}",
        "[a-z]{0,2}%[0-7][0-9a-fA-F][a-z]{0,2}",
    ]
}

/// An origin-form path: `/` and segments, sometimes a trailing slash.
fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segments, slash)| {
        let mut p = format!("/{}", segments.join("/"));
        if slash {
            p.push('/');
        }
        p
    })
}

/// The spellings of an encoded `/`, `\` and NUL.
fn dangerous_escape() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C", "%00"])
}

fn segments(p: &str) -> Vec<&str> {
    p[1..].split('/').collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn normalizing_twice_changes_nothing(p in path()) {
        if let Ok(once) = normalize(&p) {
            let twice = normalize(&once);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "{}", p);
        }
    }

    #[test]
    fn a_normal_path_has_no_dot_segment_and_no_empty_one(p in path()) {
        if let Ok(n) = normalize(&p) {
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{} -> {}", p, n);
            let all = segments(&n);
            for (i, s) in all.iter().enumerate() {
                prop_assert!(*s != "." && *s != "..", "{} -> {}", p, n);
                prop_assert!(!s.is_empty() || i == all.len() - 1, "{} -> {}", p, n);
            }
            let matched = without_parameters(&n);
            prop_assert!(!matched.contains("//") && !matched.contains(';'), "{}", matched);
            for s in segments(&matched) {
                prop_assert!(s != "." && s != "..", "{} -> {}", p, matched);
            }
        }
    }

    #[test]
    fn an_encoded_slash_backslash_or_nul_is_always_refused(
        before in path(),
        escape in dangerous_escape(),
        after in "[a-z/.]{0,6}",
    ) {
        let p = format!("{before}{escape}{after}");
        let refused = normalize(&p);
        prop_assert!(refused.is_err(), "{} -> {:?}", p, refused);
        // Refused as what it is, unless something before it was already refused.
        if normalize(&before).is_ok() && !before.ends_with('%') {
            prop_assert!(matches!(
                refused,
                Err(PathError::EncodedSlash | PathError::EncodedBackslash | PathError::EncodedNul)
            ), "{} -> {:?}", p, refused);
        }
    }

    #[test]
    fn a_backslash_is_always_refused(before in path(), after in "[a-z/.]{0,6}") {
        let p = format!("{before}\\{after}");
        prop_assert!(normalize(&p).is_err(), "{}", p);
    }

    #[test]
    fn spelling_an_unreserved_character_as_an_escape_changes_nothing(
        p in path(),
        at in any::<prop::sample::Index>(),
    ) {
        // Not inside an escape: `%2e` with its `2` spelled `%32` would be another path.
        let in_escape = |i: usize| p[..i].ends_with('%') || p[..i.saturating_sub(1)].ends_with('%');
        let unreserved: Vec<usize> = p
            .bytes()
            .enumerate()
            .filter(|&(i, b)| (b.is_ascii_alphanumeric() || b"-_~".contains(&b)) && !in_escape(i))
            .map(|(i, _)| i)
            .collect();
        if unreserved.is_empty() {
            return Ok(());
        }
        let i = unreserved[at.index(unreserved.len())];
        let encoded = format!("{}%{:02X}{}", &p[..i], p.as_bytes()[i], &p[i + 1..]);
        prop_assert_eq!(normalize(&encoded).ok(), normalize(&p).ok(), "{} vs {}", p, encoded);
    }

    #[test]
    fn climbing_above_the_root_is_refused_never_clamped(p in path()) {
        let depth = segments(&p).iter().filter(|s| !s.is_empty() && **s != "." ).count();
        let climb = format!("{p}/{}", vec![".."; depth + 1].join("/"));
        prop_assert!(normalize(&climb).is_err(), "{}", climb);
    }
}
