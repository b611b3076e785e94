//! Which build of keygate the tests run: the proxy-wasm filter (`keygate.wasm`) or the
//! native Envoy dynamic module (`libkeygate_native.so`), picked by `KEYGATE_BUILD`
//! (`wasm`, the default, or `native`). Every Envoy integration test runs against either
//! from the same code (`make test` runs both passes; README "Development"), so the two
//! builds cannot drift: whatever differs between them (the filter entry, the stats
//! prefix, the shipped configs' filter block) is decided here, once.

use std::sync::OnceLock;

/// A build of keygate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// `envoy.filters.http.wasm` running keygate.wasm in V8.
    Wasm,
    /// `envoy.filters.http.dynamic_modules` loading libkeygate_native.so.
    Native,
}

impl Build {
    /// The build `KEYGATE_BUILD` names (`wasm` when unset). An unknown value stops the
    /// test with the values it takes.
    pub fn current() -> Build {
        static CHOSEN: OnceLock<Result<Build, String>> = OnceLock::new();
        match CHOSEN.get_or_init(|| {
            let value = std::env::var("KEYGATE_BUILD").unwrap_or_default();
            Build::parse(&value)
        }) {
            Ok(build) => *build,
            Err(what) => panic!("{what}"),
        }
    }

    /// A `KEYGATE_BUILD` value: empty is wasm; anything but the two names is an error
    /// naming them.
    pub fn parse(value: &str) -> Result<Build, String> {
        match value.trim() {
            "" | "wasm" => Ok(Build::Wasm),
            "native" => Ok(Build::Native),
            other => Err(format!(
                "KEYGATE_BUILD is {other:?}: it takes `wasm` (the default) or `native`"
            )),
        }
    }

    /// A comma-separated list of builds (a tool's `--builds wasm,native`); every item must
    /// name one.
    pub fn parse_list(value: &str) -> Result<Vec<Build>, String> {
        value
            .split(',')
            .map(|item| match item.trim() {
                "" => Err(format!(
                    "{value:?} has an empty item: name `wasm` or `native`"
                )),
                item => Build::parse(item),
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Build::Wasm => "wasm",
            Build::Native => "native",
        }
    }

    /// What Envoy logs when keygate refuses its configuration at load (after keygate's own
    /// `keygate: configuration refused`): the wasm plugin, or the dynamic module, failed.
    pub fn refused_at_load(self) -> &'static str {
        match self {
            Build::Wasm => "Unable to create Wasm plugin keygate",
            Build::Native => "Failed to initialize dynamic module",
        }
    }

    /// Where Envoy puts the counters and gauges keygate defines (`<prefix>keygate.allowed`):
    /// proxy-wasm metrics under `wasmcustom.`, a dynamic module's under
    /// `dynamicmodulescustom.` (README "Stats").
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Build::Wasm => "wasmcustom.",
            Build::Native => "dynamicmodulescustom.",
        }
    }
}

/// Tests that are about the wasm build itself (its VM, its module file, V8,
/// `failure_policy`) and have no native counterpart. On the native pass this prints why
/// and returns true: the test returns early.
/// `if support::wasm_only("the V8 VM's reload counter") { return; }`
pub fn wasm_only(why: &str) -> bool {
    skip_unless(Build::Wasm, why)
}

/// As [`wasm_only`], for a test about the native build itself.
pub fn native_only(why: &str) -> bool {
    skip_unless(Build::Native, why)
}

fn skip_unless(build: Build, why: &str) -> bool {
    let current = Build::current();
    if current == build {
        return false;
    }
    say(&format!(
        "skipped on the {} build ({} only): {why}",
        current.name(),
        build.name()
    ));
    true
}

/// A line on stderr past the test harness's capture: a skipped test passes, and the
/// harness shows a passing test's output only with `--nocapture`.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Tests the native build does not pass, each with why: only `make test`'s native pass
/// skips them; the wasm pass runs them all. What is listed is a feature the native build
/// lacks (README "Native build (Envoy dynamic module)"), not a difference in behaviour.
pub const NATIVE_PENDING: &[(&str, &str)] = &[
    (
        "jwt::a_jwt_jwt_authn_did_not_verify_is_refused_by_keygate",
        JWT,
    ),
    (
        "jwt::a_verified_token_with_the_scope_reaches_upstream_with_its_identity",
        JWT,
    ),
    ("jwt::a_verified_token_without_the_scope_is_403", JWT),
    (
        "jwt::api_keys_pass_beside_tokens_and_both_at_once_are_400",
        JWT,
    ),
    (
        "jwt::keygate_refuses_tokens_jwt_authn_let_through_unverified",
        JWT,
    ),
    ("jwt::the_readme_immune_example_takes_keys_and_tokens", JWT),
    (
        "jwt::tokens_that_do_not_verify_are_refused_and_never_reach_upstream",
        JWT,
    ),
    ("jwt::tokens_need_no_key_service", JWT),
];

const JWT: &str = "refused at load: jwt (Envoy 1.40's dynamic-module ABI reads top-level \
                   dynamic metadata only; jwt_authn's verified payload is nested)";

/// True (after printing why) when the running test is in [`NATIVE_PENDING`] and this is
/// the native pass: the test returns early. The test harness names each test's thread
/// after the test (`lookup::a_test`), which is how the list names them.
/// `if support::native_pending() { return; }`
pub fn native_pending() -> bool {
    if Build::current() != Build::Native {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or_default();
    match NATIVE_PENDING.iter().find(|(name, _)| *name == test) {
        Some((_, why)) => {
            say(&format!(
                "skipped on the native build, pending (NATIVE_PENDING): {test}: {why}"
            ));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pending test exists in tests/envoy/ and asks [`native_pending`] first: an
    /// entry cannot outlive its test, nor a test be listed without being skipped.
    #[test]
    fn every_pending_test_exists_and_asks() {
        for (name, why) in NATIVE_PENDING {
            assert!(!why.is_empty(), "{name}: no reason");
            let (module, test) = name.split_once("::").unwrap();
            let file = crate::repo_root().join(format!("tests/envoy/{module}.rs"));
            let text = std::fs::read_to_string(&file).unwrap();
            let opening = format!(
                "fn {test}() {{\n    if support::native_pending() {{\n        return;\n    }}\n"
            );
            assert!(
                text.contains(&opening),
                "{name}: {} does not start with the check",
                file.display()
            );
        }
    }

    #[test]
    fn a_list_names_a_build_in_every_item() {
        assert_eq!(
            Build::parse_list("wasm,native"),
            Ok(vec![Build::Wasm, Build::Native])
        );
        assert_eq!(Build::parse_list("native"), Ok(vec![Build::Native]));
        assert!(Build::parse_list("wasm,").is_err());
        assert!(Build::parse_list("wasm,so").is_err());
    }

    #[test]
    fn the_switch_takes_wasm_native_or_nothing() {
        assert_eq!(Build::parse(""), Ok(Build::Wasm));
        assert_eq!(Build::parse("wasm"), Ok(Build::Wasm));
        assert_eq!(Build::parse("native"), Ok(Build::Native));
        let refused = Build::parse("nativ").unwrap_err();
        assert!(refused.contains("KEYGATE_BUILD") && refused.contains("`native`"));
    }
}
