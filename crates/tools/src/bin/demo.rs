//! `make run`: Envoy with keygate on 127.0.0.1, an upstream that echoes what it received,
//! and fresh ImmPort-like demo keys, printed once with curl lines to try. Ctrl-C stops it.
//!
//! `--check` runs every printed example against the gateway, checks its status, and exits
//! (`make test` uses it to prove `make run` works).

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use base64::Engine;
use serde_json::{json, Value};
use support::{hash_of, Envoy, EnvoyOptions, Request, Upstream};

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
    add(
        "upload key uploading",
        bearer("POST", "/data/upload/batch-1", "upload"),
        200,
    );
    add("public route, no key", anonymous("/healthz"), 200);
    add(
        "no key on a protected route",
        anonymous("/data/query/studies"),
        401,
    );
    add(
        "expired key",
        bearer("GET", "/data/query/studies", "expired"),
        401,
    );
    add(
        "disabled key",
        bearer("GET", "/data/download/SDY1.zip", "disabled"),
        401,
    );
    add(
        "browse key trying to upload",
        bearer("POST", "/data/upload/batch-1", "browse"),
        403,
    );
    add(
        "read-only key trying to write",
        bearer("PUT", "/data/upload/batch-1", "read-only"),
        403,
    );
    add(
        "a key without the admin scope",
        bearer("GET", "/admin/keys", "download"),
        403,
    );
    add(
        "a route no rule allows",
        bearer("GET", "/internal/metrics", "download"),
        403,
    );
    out
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let port = match std::env::var("KEYGATE_PORT") {
        Ok(p) => p.parse().expect("KEYGATE_PORT must be a port number"),
        Err(_) if check => 0,
        Err(_) => DEFAULT_PORT,
    };

    let keys = demo_keys();
    let config = plugin_config(&keys);
    let upstream = Upstream::start();
    let envoy = Envoy::start_with(
        &config,
        &upstream,
        EnvoyOptions {
            port,
            ..EnvoyOptions::default()
        },
    );
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
        println!("demo check: all {} examples as expected", examples.len());
        return;
    }

    keygate_tools::run_until_ctrl_c("Envoy and the upstream");
    drop(envoy);
    drop(upstream);
}
