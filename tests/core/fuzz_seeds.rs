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

#[test]
fn credential_seeds() {
    replay("credential", checks::credential);
}

#[test]
fn path_seeds() {
    replay("path", checks::path);
}

#[test]
fn config_seeds() {
    replay("config", checks::config);
}

#[test]
fn key_set_seeds() {
    replay("key_set", checks::key_set);
}

#[test]
fn shared_record_seeds() {
    replay("shared_record", checks::shared_record);
}

#[test]
fn header_map_seeds() {
    replay("header_map", checks::header_map);
}

#[test]
fn request_seeds() {
    replay("request", checks::request);
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
