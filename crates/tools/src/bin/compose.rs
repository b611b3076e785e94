//! `make run-compose`: what `envoy/docker-compose.yaml` runs, natively and on 127.0.0.1:
//! `keygate serve` with the arguments of `envoy/Dockerfile.keygate-serve` (its key file and
//! address moved here), an echo upstream in place of the `echo` container, and Envoy with
//! `envoy/compose/envoy.yaml` (the containers' names and paths pointed at those). Keys are
//! made with `keygate new`, as `docker-compose run --rm keyservice new ...` makes them, and
//! keygate fetches them from the key service (`key_set` mode). Ctrl-C stops it all.
//!
//! `--check` sends every printed example, then revokes a key and waits for the gateway to
//! refuse it, and exits (`make test` runs it).
//!
//! Runs `KEYGATE_BIN` (set by `make run-compose`), or builds the `keygate` binary itself.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{eventually, Bootstrap, Envoy, EnvoyOptions, Request, Serve, TempDir, Upstream};

/// The gateway's port when `KEYGATE_PORT` is not set (as the compose file publishes it).
const DEFAULT_PORT: u16 = 10000;

/// What went wrong, said once by `main` after everything started here has been stopped.
type Outcome<T> = Result<T, String>;

fn keygate_binary() -> Outcome<PathBuf> {
    Ok(support::keygate_binary())
}

fn read(path: &Path) -> Outcome<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; `from` must be there (the shipped file changed
/// otherwise, and this runner with it).
fn replaced(text: &str, what: &str, from: &str, to: &str) -> Outcome<String> {
    if !text.contains(from) {
        return Err(format!("{what} no longer has {from:?}"));
    }
    Ok(text.replace(from, to))
}

/// The key service's arguments after `serve`: the Dockerfile's `CMD` (its ENTRYPOINT is
/// `keygate`), with the key file and the listening address of this machine.
fn key_service_args(keys: &Path) -> Outcome<Vec<String>> {
    let what = "envoy/Dockerfile.keygate-serve";
    let text = read(&support::repo_root().join(what))?;
    if !text.contains(r#"ENTRYPOINT ["/usr/local/bin/keygate"]"#) {
        return Err(format!("{what}: the entrypoint is no longer keygate"));
    }
    let cmd = text
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .ok_or(format!("{what} has no CMD"))?;
    let args: Vec<String> =
        serde_json::from_str(cmd).map_err(|e| format!("{what}: CMD {cmd}: {e}"))?;
    let expected = [
        "serve",
        "--keys",
        "/data/keys.json",
        "--listen",
        "0.0.0.0:8081",
    ];
    if args != expected {
        return Err(format!(
            "{what}: CMD is {args:?}, this runner knows {expected:?}"
        ));
    }
    Ok(args
        .into_iter()
        .skip(1)
        .map(|a| match a.as_str() {
            "/data/keys.json" => keys.display().to_string(),
            "0.0.0.0:8081" => "127.0.0.1:0".to_string(),
            _ => a,
        })
        .collect())
}

/// `envoy/compose/envoy.yaml` with the containers' addresses and paths replaced.
fn envoy_config(port: u16, key_service: SocketAddr, upstream: SocketAddr) -> Outcome<String> {
    let what = "envoy/compose/envoy.yaml";
    let text = read(&support::repo_root().join(what))?;
    let wasm = support::wasm_module();
    let text = replaced(
        &text,
        what,
        "address: 0.0.0.0, port_value: 10000",
        &format!("address: 127.0.0.1, port_value: {port}"),
    )?;
    let text = replaced(
        &text,
        what,
        "address: 0.0.0.0, port_value: 9901",
        "address: 127.0.0.1, port_value: 0",
    )?;
    let text = replaced(
        &text,
        what,
        "address: keyservice, port_value: 8081",
        &format!(
            "address: {}, port_value: {}",
            key_service.ip(),
            key_service.port()
        ),
    )?;
    let text = replaced(
        &text,
        what,
        "address: echo, port_value: 80",
        &format!(
            "address: {}, port_value: {}",
            upstream.ip(),
            upstream.port()
        ),
    )?;
    replaced(
        &text,
        what,
        "/etc/envoy/keygate.wasm",
        &wasm.display().to_string(),
    )
}

/// A key as `keygate new` printed it.
struct Issued {
    id: String,
    api_key: String,
}

/// `keygate ARGS...`, which must succeed: what it printed on stdout.
fn keygate_run(keygate: &Path, args: &[&str], keys: &Path) -> Outcome<Vec<u8>> {
    let output = Command::new(keygate)
        .args(args)
        .arg("--keys")
        .arg(keys)
        .output()
        .map_err(|e| format!("{}: {e}", keygate.display()))?;
    if !output.status.success() {
        return Err(format!(
            "keygate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}

fn new_key(keygate: &Path, keys: &Path, args: &[&str]) -> Outcome<Issued> {
    let args: Vec<&str> = ["new"].iter().chain(args).copied().collect();
    let stdout = keygate_run(keygate, &args, keys)?;
    let printed: Value =
        serde_json::from_slice(&stdout).map_err(|e| format!("keygate new printed no JSON: {e}"))?;
    let field = |name: &str| {
        printed[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("keygate new printed no {name}"))
    };
    Ok(Issued {
        id: field("id")?,
        api_key: field("api_key")?,
    })
}

fn main() {
    if let Err(problem) = run(std::env::args().any(|a| a == "--check")) {
        eprintln!("compose: {problem}");
        std::process::exit(1);
    }
}

fn run(check: bool) -> Outcome<()> {
    let port = match std::env::var("KEYGATE_PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("KEYGATE_PORT {p:?} is not a port number"))?,
        Err(_) if check => 0,
        Err(_) => DEFAULT_PORT,
    };
    let keygate = keygate_binary()?;

    // The key file: in .run/compose/ to play with (keygate list/revoke/disable on it while
    // this runs); a fresh temporary one for --check.
    let scratch = TempDir::new("compose");
    let dir = if check {
        scratch.path().to_path_buf()
    } else {
        support::repo_root().join(".run/compose")
    };
    let _ = std::fs::create_dir_all(&dir);
    let keys = dir.join("keys.json");
    let _ = std::fs::remove_file(&keys);
    let browse = new_key(
        &keygate,
        &keys,
        &[
            "--owner",
            "alice",
            "--label",
            "compose-demo",
            "--scopes",
            "browse",
            "--expires-in",
            "30d",
        ],
    )?;
    let upload = new_key(
        &keygate,
        &keys,
        &[
            "--owner",
            "ci",
            "--scopes",
            "browse,upload",
            "--expires-in",
            "never",
        ],
    )?;

    let key_service = Serve::new(key_service_args(&keys)?).echo("").try_start()?;
    let upstream = Upstream::start();
    let config = envoy_config(port, key_service.addr, upstream.addr)?;
    let envoy = Envoy::start_from(
        Bootstrap::Yaml(&config),
        EnvoyOptions {
            concurrency: 2,
            port,
            ..EnvoyOptions::default()
        },
    );
    let status = |key: &str, request: Request| envoy.send(&request.bearer(key)).status;
    // Protected routes answer 503 until the first key set has been fetched.
    if !eventually(Duration::from_secs(15), || {
        status(&browse.api_key, Request::get("/data/query/study")) == 200
    }) {
        return Err(format!(
            "the gateway never let the browse key in:\n{}",
            envoy.log()
        ));
    }

    let base = format!("http://{}", envoy.listener);
    let bearer = |method: &str, path: &str, key: &str| {
        let flag = if method == "GET" {
            String::new()
        } else {
            format!("-X {method} ")
        };
        (
            format!("curl -i {flag}{base}{path} -H 'Authorization: Bearer {key}'"),
            Request::new(method, path).bearer(key),
        )
    };
    let examples = [
        (
            "browse key, browse route: the echo shows x-api-key-owner: alice",
            bearer("GET", "/data/query/study", &browse.api_key),
            200,
        ),
        (
            "browse key uploading",
            bearer("POST", "/data/upload/batch-1", &browse.api_key),
            403,
        ),
        (
            "upload key uploading",
            bearer("POST", "/data/upload/batch-1", &upload.api_key),
            200,
        ),
        (
            "no key",
            (
                format!("curl -i {base}/data/query/study"),
                Request::get("/data/query/study"),
            ),
            401,
        ),
        (
            "public route",
            (format!("curl -i {base}/healthz"), Request::get("/healthz")),
            200,
        ),
    ];
    println!("keygate, as envoy/docker-compose.yaml runs it, natively: Envoy on {base},");
    println!(
        "keygate serve on {} ({}), an echo upstream on http://{}.",
        key_service.url,
        keys.display(),
        upstream.addr
    );
    println!();
    println!("Keys, shown once:");
    println!(
        "  alice (browse)        {}  id {}",
        browse.api_key, browse.id
    );
    println!(
        "  ci (browse, upload)   {}  id {}",
        upload.api_key, upload.id
    );
    println!();
    println!("Try (each was just sent once; the status it got is shown):");
    let mut failures = 0;
    for (what, (curl, request), expected) in &examples {
        let got = envoy.send(request).status;
        let mark = if got == *expected {
            String::new()
        } else {
            failures += 1;
            format!("   <-- expected {expected}")
        };
        println!("  # {what} -> {got}{mark}");
        println!("  {curl}");
    }
    upstream.take();
    println!();
    println!(
        "Revoke alice's key; the gateway refuses it within 5 s (the fetch interval), no restart:"
    );
    println!(
        "  {} revoke {} --keys {}",
        keygate.display(),
        browse.id,
        keys.display()
    );
    println!(
        "Counters: curl -s 'http://{}/stats?filter=keygate'",
        envoy.admin
    );

    if check {
        keygate_run(&keygate, &["revoke", &browse.id], &keys)?;
        // The fetch interval (5 s) and a moment for every worker to see the new set.
        let refused = eventually(Duration::from_secs(8), || {
            status(&browse.api_key, Request::get("/data/query/study")) == 401
        });
        if !refused {
            failures += 1;
            eprintln!("compose check: the revoked key was still let in after 8 s");
        }
        if failures > 0 {
            return Err(format!(
                "check: {failures} unexpected answer(s)\n{}",
                envoy.log()
            ));
        }
        println!(
            "compose check: all {} examples as expected; the revoked key refused",
            examples.len()
        );
        return Ok(());
    }

    keygate_tools::run_until_ctrl_c("Envoy, keygate serve and the upstream");
    Ok(())
}
