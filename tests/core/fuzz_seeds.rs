//! Replays the fuzz seed corpus (`fuzz/seeds/<target>/`) through the fuzz targets' checks
//! on stable Rust: `make test` proves every seed still passes them, and that the checks
//! compile, without nightly or libFuzzer. `make fuzz` runs the targets themselves.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "seed {} fails its check", path.display());
        seeds += 1;
    }
    assert!(
        seeds >= 4,
        "{target}: only {seeds} seeds in {}",
        dir.display()
    );
}

/// One test a fuzz target: `name: target => check`.
macro_rules! seed_tests {
    ($($name:ident: $target:literal => $check:path),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay($target, $check);
            }
        )*
    };
}

seed_tests! {
    credential_seeds: "credential" => checks::credential,
    path_seeds: "path" => checks::path,
    config_seeds: "config" => checks::config,
    key_set_seeds: "key_set" => checks::key_set,
    shared_record_seeds: "shared_record" => checks::shared_record,
    header_map_seeds: "header_map" => checks::header_map,
    request_seeds: "request" => checks::request,
}

/// The checks are not vacuous: a request the rules refuse is refused, and one they allow
/// passes with the caller's identity (a broken check would fail one of the two).
#[test]
fn the_request_check_sees_a_bypass() {
    let allowed = b":method: GET\n:path: /data/query\nauthorization: Bearer kg_fuzz_browse";
    checks::request(allowed);
    assert!(std::panic::catch_unwind(|| checks::assert_is_normal("/a/../b")).is_err());
    assert!(std::panic::catch_unwind(|| checks::assert_is_normal("/a//b")).is_err());
    assert!(std::panic::catch_unwind(|| checks::assert_is_normal("/a%2fb")).is_err());
    assert!(std::panic::catch_unwind(|| checks::assert_is_normal("/a/%2E")).is_err());
    checks::assert_is_normal("/a/b;c/");
}
