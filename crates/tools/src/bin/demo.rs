//! `make run`: Envoy with keygate on 127.0.0.1, an upstream that echoes what it received,
//! and fresh ImmPort-like demo keys, printed once with curl lines to try. Ctrl-C stops it.
//!
//! `--check` runs every printed example against the gateway, checks its status, and exits
//! (`make test` uses it to prove `make run` works).
//!
//! `KEYGATE_BUILD` picks the filter: `wasm` (the default, keygate.wasm) or `native` (the
//! Envoy dynamic module, libkeygate_native.so: README "Native build (Envoy dynamic module)").
//! The demo's keys are inline, which both builds serve.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use base64::Engine;
use serde_json::{json, Value};
use support::{hash_of, Build, Envoy, EnvoyOptions, Refused, Request, Upstream};

/// The listener port when `KEYGATE_PORT` is not set; 0 picks a free one.
const DEFAULT_PORT: u16 = 10000;

struct DemoKey {
    name: &'static str,
    key: String,
    record: Value,
}

/// 256 bits from the OS CSPRNG, as `kg_` + unpadded base64url.
fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!(
        "kg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn demo_keys() -> Vec<DemoKey> {
    let key = |name: &'static str, owner: &str, scopes: &[&str], extra: Value| {
        let key = new_key();
        let mut record = json!({
            "id": format!("demo-{name}"),
            "hash": hash_of(&key),
            "owner": owner,
            "label": format!("{name} demo key"),
            "scopes": scopes,
            "created_at": "2026-11-01T10:00:00Z",
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            record[k] = v.clone();
        }
        DemoKey { name, key, record }
    };
    vec![
        key(
            "browse",
            "alice",
            &["browse"],
            json!({"expires_at": "2027-05-21T20:55:24.123456789Z"}),
        ),
        key("download", "bob", &["browse", "download"], json!({})),
        key("upload", "carol", &["browse", "upload"], json!({})),
        key(
            "read-only",
            "vspc-operator",
            &["browse", "download", "upload"],
            json!({"read_only": true}),
        ),
        key(
            "expired",
            "dave",
            &["browse"],
            json!({"expires_at": "2025-01-31T23:59:59+01:00"}),
        ),
        key(
            "disabled",
            "erin",
            &["browse", "download"],
            json!({"status": "disabled"}),
        ),
    ]
}

fn plugin_config(keys: &[DemoKey]) -> Value {
    json!({
        "realm": "immport-demo",
        "sources": [
            {"authorization": {"schemes": ["Bearer", "ApiKey", "Basic"]}},
            {"header": "x-api-key"}
        ],
        "keys": keys.iter().map(|k| k.record.clone()).collect::<Vec<_>>(),
        "rules": support::immport_rules(),
        "unmatched": "deny"
    })
}

/// A curl line to print, the same request to check it with, and the status it must get.
struct Example {
    what: &'static str,
    curl: String,
    request: Request,
    status: u16,
}

fn examples(base: &str, keys: &[DemoKey]) -> Vec<Example> {
    let key = |name: &str| {
        keys.iter()
            .find(|k| k.name == name)
            .map(|k| k.key.clone())
            .unwrap_or_default()
    };
    let bearer = |method: &str, path: &str, name: &str| {
        let k = key(name);
        let flag = if method == "GET" {
            String::new()
        } else {
            format!("-X {method} ")
        };
        (
            format!("curl -i {flag}'{base}{path}' -H 'Authorization: Bearer {k}'"),
            Request::new(method, path).bearer(&k),
        )
    };
    let anonymous = |path: &str| (format!("curl -i '{base}{path}'"), Request::get(path));
    let mut out = Vec::new();
    let mut add = |what, (curl, request): (String, Request), status| {
        out.push(Example {
            what,
            curl,
            request,
            status,
        })
    };
    add(
        "browse key on a browse route: the upstream echo shows x-api-key-* headers",
        bearer("GET", "/data/query/studies?limit=5", "browse"),
        200,
    );
    add(
        "the same key in the x-api-key header",
        (
            format!(
                "curl -i {base}/data/query/studies -H 'x-api-key: {}'",
                key("browse")
            ),
            Request::get("/data/query/studies").header("x-api-key", key("browse")),
        ),
        200,
    );
    add(
        "LabKey-style Basic credential (user apikey)",
        (
            format!(
                "curl -i {base}/data/download/SDY1.zip -u 'apikey:{}'",
                key("download")
            ),
            Request::get("/data/download/SDY1.zip").header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("apikey:{}", key("download")))
                ),
            ),
        ),
        200,
    );
    // The rest, in order: a key by its demo name on a route (`None`: no key, and GET).
    for (what, method, path, name, status) in [
        (
            "upload key uploading",
            "POST",
            "/data/upload/batch-1",
            Some("upload"),
            200,
        ),
        ("public route, no key", "GET", "/healthz", None, 200),
        (
            "no key on a protected route",
            "GET",
            "/data/query/studies",
            None,
            401,
        ),
        (
            "expired key",
            "GET",
            "/data/query/studies",
            Some("expired"),
            401,
        ),
        (
            "disabled key",
            "GET",
            "/data/download/SDY1.zip",
            Some("disabled"),
            401,
        ),
        (
            "browse key trying to upload",
            "POST",
            "/data/upload/batch-1",
            Some("browse"),
            403,
        ),
        (
            "read-only key trying to write",
            "PUT",
            "/data/upload/batch-1",
            Some("read-only"),
            403,
        ),
        (
            "a key without the admin scope",
            "GET",
            "/admin/keys",
            Some("download"),
            403,
        ),
        (
            "a route no rule allows",
            "GET",
            "/internal/metrics",
            Some("download"),
            403,
        ),
    ] {
        let example = match name {
            Some(name) => bearer(method, path, name),
            None => anonymous(path),
        };
        add(what, example, status);
    }
    out
}

/// The build the demo loads (`KEYGATE_BUILD`, see [`Build::parse`]), or what to do about
/// an unknown value.
fn chosen_build(value: Option<&str>) -> Result<Build, String> {
    Build::parse(value.unwrap_or_default())
        .map_err(|message| format!("{message} (e.g. KEYGATE_BUILD=native make run)"))
}

fn describe(build: Build) -> &'static str {
    match build {
        Build::Wasm => "keygate.wasm, the wasm filter",
        Build::Native => "libkeygate_native.so, the native build as an Envoy dynamic module",
    }
}

/// One line on stderr, exit 1: what went wrong and what to do about it.
fn fail(line: &str) -> ! {
    eprintln!("keygate demo: {line}");
    std::process::exit(1)
}

/// Why Envoy did not start, in one line, from its log: a busy port says which one and how
/// to pick another; anything else, Envoy's own critical message.
fn why_refused(refused: &Refused, port: u16) -> String {
    if refused.log.contains("Address already in use") {
        return format!(
            "port {port} is already in use on 127.0.0.1: stop what listens there, or pick \
             another port with KEYGATE_PORT (e.g. KEYGATE_PORT={} make run; 0 picks a free one)",
            port.checked_add(1).unwrap_or(10001)
        );
    }
    let critical = refused
        .log
        .lines()
        .filter(|line| line.contains("[critical]") || line.contains("[error]"))
        .filter_map(|line| line.splitn(3, "] ").nth(2))
        .map(str::trim)
        .find(|message| !message.is_empty());
    match (refused.exit_code, critical) {
        (Some(code), Some(message)) => format!("Envoy did not start (exit {code}): {message}"),
        (None, Some(message)) => format!("Envoy did not start in time: {message}"),
        (Some(code), None) => format!("Envoy did not start (exit {code})"),
        (None, None) => "Envoy did not start in time".to_string(),
    }
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let port = match std::env::var("KEYGATE_PORT") {
        Ok(p) => p.trim().parse().unwrap_or_else(|_| {
            fail(&format!(
                "KEYGATE_PORT is {p:?}, not a port number: e.g. KEYGATE_PORT=10001 make run \
                 (0 picks a free one)"
            ))
        }),
        Err(_) if check => 0,
        Err(_) => DEFAULT_PORT,
    };

    let build = chosen_build(std::env::var("KEYGATE_BUILD").ok().as_deref())
        .unwrap_or_else(|message| fail(&message));

    let keys = demo_keys();
    let config = plugin_config(&keys);
    let upstream = Upstream::start();
    let bootstrap = support::bootstrap_for(build, &config, upstream.addr, port);
    let envoy = Envoy::try_start(
        &bootstrap,
        EnvoyOptions {
            port,
            ..EnvoyOptions::default()
        },
    )
    .unwrap_or_else(|refused| fail(&why_refused(&refused, port)));
    // What was started, for a look: hashes only, never the keys.
    let run_dir = support::repo_root().join(".run");
    let _ = std::fs::create_dir_all(&run_dir);
    let config_file = run_dir.join("demo-plugin-config.json");
    let _ = std::fs::write(
        &config_file,
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    );

    let base = format!("http://{}", envoy.listener);
    let examples = examples(&base, &keys);
    let mut failures = 0;
    println!("keygate demo: Envoy with keygate on {base}, in front of an echo upstream.");
    println!(
        "Filter: {} (KEYGATE_BUILD={}); keys inline.",
        describe(build),
        build.name()
    );
    println!(
        "Plugin configuration (hashes only): {}",
        config_file.display()
    );
    println!();
    println!("Demo keys, shown once (new ones on every run):");
    for k in &keys {
        let scopes = k.record["scopes"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let mut notes = format!("scopes: {scopes}");
        for flag in ["read_only", "status", "expires_at"] {
            if let Some(v) = k.record.get(flag) {
                notes.push_str(&format!(", {flag}: {v}"));
            }
        }
        println!("  {:<10} {}  ({notes})", k.name, k.key);
    }
    println!();
    println!("Try (each was just sent once; the status it got is shown):");
    for example in &examples {
        let got = envoy.send(&example.request).status;
        let mark = if got == example.status {
            String::new()
        } else {
            failures += 1;
            format!("   <-- expected {}", example.status)
        };
        println!("  # {} -> {got}{mark}", example.what);
        println!("  {}", example.curl);
    }
    println!();
    println!(
        "Counters: curl -s 'http://{}/stats?filter=keygate'",
        envoy.admin
    );
    upstream.take();

    if check {
        if failures > 0 {
            eprintln!("demo check: {failures} example(s) got an unexpected status");
            std::process::exit(1);
        }
        println!(
            "demo check ({}): all {} examples as expected",
            describe(build),
            examples.len()
        );
        return;
    }

    keygate_tools::run_until_ctrl_c("Envoy and the upstream");
    drop(envoy);
    drop(upstream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy 1.40's log when the listener's port is taken (the lines that matter).
    const BUSY: &str = "\
[2026-11-30 09:55:35.177][17379][error][config] [source/common/listener_manager/listener_manager_impl.cc:1405] listener 'ingress' failed to bind or apply socket options: cannot bind '127.0.0.1:18731': Address already in use
[2026-11-30 09:55:35.182][17379][critical][main] [source/server/server.cc:449] error `cannot bind '127.0.0.1:18731': Address already in use` initializing config 'goo.gle/debugstr
  /tmp/keygate-envoy-17372-0/envoy.json'
[2026-11-30 09:55:35.182][17379][info][main] [source/server/server.cc:1159] exiting
";

    #[test]
    fn a_busy_port_is_one_line_naming_the_port_and_keygate_port() {
        let refused = Refused {
            exit_code: Some(1),
            log: BUSY.to_string(),
        };
        assert_eq!(
            why_refused(&refused, 10000),
            "port 10000 is already in use on 127.0.0.1: stop what listens there, or pick \
             another port with KEYGATE_PORT (e.g. KEYGATE_PORT=10001 make run; 0 picks a free one)"
        );
    }

    #[test]
    fn keygate_build_is_wasm_by_default_and_names_the_allowed_values_otherwise() {
        assert_eq!(chosen_build(None), Ok(Build::Wasm));
        assert_eq!(chosen_build(Some("")), Ok(Build::Wasm));
        assert_eq!(chosen_build(Some("wasm")), Ok(Build::Wasm));
        assert_eq!(chosen_build(Some("native")), Ok(Build::Native));
        assert_eq!(
            chosen_build(Some("so")),
            Err(
                "KEYGATE_BUILD is \"so\": it takes `wasm` (the default) or `native` \
                 (e.g. KEYGATE_BUILD=native make run)"
                    .to_string()
            )
        );
    }

    #[test]
    fn other_refusals_give_envoys_first_error() {
        let refused = Refused {
            exit_code: Some(1),
            log: "[t][1][info][main] [a.cc:1] starting\n\
                  [t][1][critical][main] [b.cc:2] error initializing configuration: bad\n"
                .to_string(),
        };
        assert_eq!(
            why_refused(&refused, 10000),
            "Envoy did not start (exit 1): error initializing configuration: bad"
        );
        let silent = Refused {
            exit_code: None,
            log: String::new(),
        };
        assert_eq!(why_refused(&silent, 0), "Envoy did not start in time");
    }
}
