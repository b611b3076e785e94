//! `make run-compose`: what `envoy/docker-compose.yaml` runs, natively and on 127.0.0.1:
//! `keygate serve --db` with the arguments of `envoy/Dockerfile.keygate-serve` (its
//! database, address and certificate files moved here), an echo upstream in place of the
//! `echo` container, and Envoy with `envoy/compose/envoy.yaml` (the containers' names and
//! paths pointed at those; its `keyservice` cluster over mTLS with a client certificate).
//! The certificates are made at run time (the test kit's `keysvc::tls`, in place of the
//! files the operator makes with openssl). The first admin key is made with `keygate admin
//! new --db`, as `docker-compose run --rm keyservice admin new --db /data/keys.db` makes it;
//! keys are made through the admin API over HTTPS, and keygate fetches them from the key
//! service (`key_set` mode). Ctrl-C stops it all.
//!
//! `--check` sends every printed example, then revokes a key through the admin API and
//! waits for the gateway to refuse it, and exits (`make test` runs it).
//!
//! Runs `KEYGATE_BIN` (set by `make run-compose`), or builds the `keygate` binary itself.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::keysvc::tls::Pki;
use support::keysvc::Client;
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
/// `keygate`), with the database, the listening address and the certificates of this
/// machine.
fn key_service_args(db: &Path, pki: &Pki) -> Outcome<Vec<String>> {
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
        "--db",
        "/data/keys.db",
        "--listen",
        "0.0.0.0:8443",
        "--tls-cert",
        "/etc/keygate/tls/tls.crt",
        "--tls-key",
        "/etc/keygate/tls/tls.key",
        "--client-ca",
        "/etc/keygate/tls/ca.crt",
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
            "/data/keys.db" => db.display().to_string(),
            "0.0.0.0:8443" => "127.0.0.1:0".to_string(),
            "/etc/keygate/tls/tls.crt" => pki.server_cert.display().to_string(),
            "/etc/keygate/tls/tls.key" => pki.server_key.display().to_string(),
            "/etc/keygate/tls/ca.crt" => pki.ca.display().to_string(),
            _ => a,
        })
        .collect())
}

/// `envoy/compose/envoy.yaml` with the containers' addresses and paths replaced (Envoy's
/// client certificate and the CA are `pki`'s).
fn envoy_config(
    port: u16,
    key_service: SocketAddr,
    upstream: SocketAddr,
    pki: &Pki,
) -> Outcome<String> {
    let what = "envoy/compose/envoy.yaml";
    let wasm = support::wasm_module();
    let file = |path: &Path| format!("{{ filename: {} }}", path.display());
    let replacements = [
        (
            "address: 0.0.0.0, port_value: 10000",
            format!("address: 127.0.0.1, port_value: {port}"),
        ),
        (
            "address: 0.0.0.0, port_value: 9901",
            "address: 127.0.0.1, port_value: 0".to_string(),
        ),
        (
            "address: keyservice, port_value: 8443",
            format!(
                "address: {}, port_value: {}",
                key_service.ip(),
                key_service.port()
            ),
        ),
        (
            "address: echo, port_value: 80",
            format!(
                "address: {}, port_value: {}",
                upstream.ip(),
                upstream.port()
            ),
        ),
        (
            "{ filename: /etc/envoy-tls/tls.crt }",
            file(&pki.client_cert),
        ),
        (
            "{ filename: /etc/envoy-tls/tls.key }",
            file(&pki.client_key),
        ),
        ("{ filename: /etc/envoy-tls/ca.crt }", file(&pki.ca)),
        ("/etc/envoy/keygate.wasm", wasm.display().to_string()),
    ];
    let mut text = read(&support::repo_root().join(what))?;
    for (from, to) in &replacements {
        text = replaced(&text, what, from, to)?;
    }
    Ok(text)
}

/// A key as the admin API's `POST /v1/admin/keys` answered it.
struct Issued {
    id: String,
    api_key: String,
}

/// `keygate admin new --db DB`, as `docker-compose run --rm keyservice admin new --db
/// /data/keys.db` runs it: the admin key it printed.
fn bootstrap_admin(keygate: &Path, db: &Path) -> Outcome<String> {
    let output = Command::new(keygate)
        .args(["admin", "new", "--db"])
        .arg(db)
        .output()
        .map_err(|e| format!("{}: {e}", keygate.display()))?;
    if !output.status.success() {
        return Err(format!(
            "keygate admin new: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let printed: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("keygate admin new printed no JSON: {e}"))?;
    printed["admin_key"]
        .as_str()
        .map(str::to_string)
        .ok_or("keygate admin new printed no admin_key".to_string())
}

/// `POST /v1/admin/keys` with `body`, over HTTPS: the key made.
fn new_key(api: &Client, body: &Value) -> Outcome<Issued> {
    let answer = api
        .try_send(
            "POST",
            "/v1/admin/keys",
            &[],
            Some(body.to_string().as_bytes()),
        )
        .map_err(|e| format!("POST /v1/admin/keys: {e}"))?;
    if answer.status != 201 {
        return Err(format!(
            "POST /v1/admin/keys {body}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let printed = answer.json();
    let field = |name: &str| {
        printed[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("POST /v1/admin/keys answered no {name}"))
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

    // The database and the certificates: in .run/compose/ to play with (curl or `keygate
    // --server` on the admin API while this runs); a fresh temporary directory for --check.
    let scratch = TempDir::new("compose");
    let dir = if check {
        scratch.path().to_path_buf()
    } else {
        support::repo_root().join(".run/compose")
    };
    let _ = std::fs::create_dir_all(&dir);
    let db = dir.join("keys.db");
    for stale in ["keys.db", "keys.db-wal", "keys.db-shm", "keys.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    // What the operator makes with openssl (README "docker-compose"): a CA, the key
    // service's certificate (for `keyservice`, localhost and 127.0.0.1), Envoy's client
    // certificate.
    let pki = Pki::generate(&dir);
    let admin = bootstrap_admin(&keygate, &db)?;

    let key_service = Serve::new(key_service_args(&db, &pki)?)
        .echo("")
        .try_start()?;
    // The admin API over HTTPS, trusting the CA, with no client certificate (the admin key
    // is its credential).
    let api = Client::tls(key_service.addr, &pki, false).with_bearer(&admin);
    // The gateway endpoints want a client certificate: without one, 403.
    let bare = Client::tls(key_service.addr, &pki, false)
        .try_send("GET", "/v1/keyset", &[], None)
        .map_err(|e| format!("GET /v1/keyset without a client certificate: {e}"))?;
    if bare.status != 403 {
        return Err(format!(
            "GET /v1/keyset without a client certificate: {}, not 403",
            bare.status
        ));
    }
    let upstream = Upstream::start();
    let config = envoy_config(port, key_service.addr, upstream.addr, &pki)?;
    let envoy = Envoy::start_from(
        Bootstrap::Yaml(&config),
        EnvoyOptions {
            concurrency: 2,
            port,
            ..EnvoyOptions::default()
        },
    );
    let status = |key: &str, request: Request| envoy.send(&request.bearer(key)).status;
    // Protected routes answer 503 until the first key set has been fetched (over mTLS);
    // then an unknown key is 401.
    if !eventually(Duration::from_secs(15), || {
        status("kg_nobody", Request::get("/data/query/study")) == 401
    }) {
        return Err(format!(
            "the gateway never loaded a key set over mTLS:\n{}",
            envoy.log()
        ));
    }

    // Keys made now reach the gateway with its next fetch (every 5 s).
    let browse = new_key(
        &api,
        &json!({"owner": "alice", "label": "compose-demo", "scopes": ["browse"],
                "expires_in": "30d"}),
    )?;
    let upload = new_key(
        &api,
        &json!({"owner": "ci", "scopes": ["browse", "upload"], "expires_in": "never"}),
    )?;
    if !eventually(Duration::from_secs(15), || {
        status(&browse.api_key, Request::get("/data/query/study")) == 200
            && status(&upload.api_key, Request::get("/data/query/study")) == 200
    }) {
        return Err(format!(
            "the gateway never let the keys made through the admin API in:\n{}",
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
    let service = format!("https://localhost:{}", key_service.addr.port());
    let ca = pki.ca.display();
    println!("keygate, as envoy/docker-compose.yaml runs it, natively: Envoy on {base},");
    println!(
        "keygate serve on {service} ({}; gateway endpoints over mTLS, certificates in {}),",
        db.display(),
        dir.display()
    );
    println!("an echo upstream on http://{}.", upstream.addr);
    println!();
    println!("The admin key (keygate admin new --db {}):", db.display());
    println!("  ADMIN={admin}");
    println!("Keys made through the admin API, e.g.:");
    println!(
        "  curl -s --cacert {ca} {service}/v1/admin/keys -H \"Authorization: Bearer $ADMIN\" \\"
    );
    println!(
        r#"    -d '{{"owner":"alice","label":"compose-demo","scopes":["browse"],"expires_in":"30d"}}'"#
    );
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
        "  curl -s -X DELETE --cacert {ca} {service}/v1/admin/keys/{} -H \"Authorization: Bearer $ADMIN\"",
        browse.id
    );
    println!(
        "Counters: curl -s 'http://{}/stats?filter=keygate'",
        envoy.admin
    );

    if check {
        let path = format!("/v1/admin/keys/{}", browse.id);
        let revoked = api
            .try_send("DELETE", &path, &[], None)
            .map_err(|e| format!("DELETE {path}: {e}"))?;
        if revoked.status != 200 {
            return Err(format!("DELETE {path}: {}", revoked.status));
        }
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
            "compose check: all {} examples as expected over mTLS; the key revoked through the admin API refused",
            examples.len()
        );
        return Ok(());
    }

    keygate_tools::run_until_ctrl_c("Envoy, keygate serve and the upstream");
    Ok(())
}
