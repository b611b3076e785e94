//! What the tests run: Envoy, the filter (wasm, and the native module) and the `keygate`
//! binary. `make test` builds them and says where (`KEYGATE_ENVOY`, `KEYGATE_WASM`,
//! `KEYGATE_NATIVE`, `KEYGATE_BIN`); a plain `cargo test`
//! builds the filter and the binary here, once per test binary, into `target/testkit`
//! (a target dir of its own: the one `cargo test` holds is locked while tests run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (where `.venv` and `target/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// The Envoy binary: `$KEYGATE_ENVOY`, else `.venv/bin/envoy` (installed by `make tools`).
pub fn envoy_binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    found(FOUND.get_or_init(|| {
        let path = std::env::var_os("KEYGATE_ENVOY")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "no Envoy at {}: run `make tools` (or set KEYGATE_ENVOY)",
                path.display()
            ))
        }
    }))
}

/// The filter: `$KEYGATE_WASM`, else built now (release, wasm32-wasip1).
pub fn wasm_module() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    found(BUILT.get_or_init(|| {
        given("KEYGATE_WASM").unwrap_or_else(|| {
            build(
                &[
                    "--release",
                    "-p",
                    "keygate-filter",
                    "--target",
                    "wasm32-wasip1",
                ],
                "wasm32-wasip1/release/keygate.wasm",
            )
        })
    }))
}

/// The native filter, `libkeygate_native.so` (an Envoy dynamic module): `$KEYGATE_NATIVE`,
/// else built now (debug: unwinding panics, and quick to build beside the tests).
pub fn native_module() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    found(BUILT.get_or_init(|| {
        given("KEYGATE_NATIVE")
            .unwrap_or_else(|| build(&["-p", "keygate-native"], "debug/libkeygate_native.so"))
    }))
}

/// The folder Envoy searches for `lib<name>.so` (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
pub fn native_module_dir() -> PathBuf {
    let module = native_module();
    module
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `keygate` binary: `$KEYGATE_BIN`, else built now (debug).
pub fn keygate_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    found(BUILT.get_or_init(|| {
        given("KEYGATE_BIN")
            .unwrap_or_else(|| build(&["-p", "keygate-cli", "--bin", "keygate"], "debug/keygate"))
    }))
}

fn given(variable: &str) -> Option<Result<PathBuf, String>> {
    let path = PathBuf::from(std::env::var_os(variable)?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{variable} is {} but there is no file there: run `make test`, or unset it",
            path.display()
        ))
    })
}

fn build(args: &[&str], output: &str) -> Result<PathBuf, String> {
    let target_dir = repo_root().join("target/testkit");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("keygate-testkit: cargo build {}", args.join(" "));
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .arg("build")
        .args(args)
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let path = target_dir.join(output);
    if status.success() && path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "`cargo build {}` failed (see above): run `make test`, which installs the \
             wasm32-wasip1 target and Envoy first",
            args.join(" ")
        ))
    }
}

/// The path, or the test's failure with the one thing to do. Every test that needs a
/// missing piece fails with the same line.
fn found(result: &Result<PathBuf, String>) -> PathBuf {
    match result {
        Ok(path) => path.clone(),
        Err(what) => panic!("{what}"),
    }
}
