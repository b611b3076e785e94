//! The whole way through a real Envoy: keys made, disabled and revoked with `keygate`, put
//! into the filter's configuration from keys.json, and answered as the CLI says.

use keygate_testkit as support;
use keygate_testkit::cli as cli_support;

use cli_support::{key_file, keygate, new_scoped_key, records, Scratch};
use serde_json::{json, Value};
use std::path::Path;
use support::{immport_rules, Envoy, Request, Upstream};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A plugin configuration with keys.json's records inline, checked by `keygate check`
/// first, as an operator would.
fn config_from(keys: &Path, dir: &Scratch) -> Value {
    let config = json!({"keys": records(keys), "rules": immport_rules()});
    let path = dir.join("keygate.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let run = keygate(&["check", p(&path)]).ok();
    assert!(run.stdout.contains(": ok: "), "{run:?}");
    config
}

#[test]
fn keys_made_and_revoked_with_the_cli_work_in_envoy() {
    let (dir, keys) = key_file("envoy");
    let alice = new_scoped_key(&keys, "alice", "browse", "90d", &["--label", "laptop"]);
    let bob = new_scoped_key(&keys, "bob", "browse,download", "never", &["--read-only"]);
    let upstream = Upstream::start();

    {
        let envoy = Envoy::start(&config_from(&keys, &dir), &upstream);
        let r = envoy
            .send(&Request::get("/data/query/study?studyAccession=SDY1").bearer(&alice.api_key));
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = upstream.take_one();
        assert_eq!(seen.header("x-api-key-id"), Some(alice.id.as_str()));
        assert_eq!(seen.header("x-api-key-owner"), Some("alice"));
        assert_eq!(seen.header("x-api-key-scopes"), Some("browse"));
        assert_eq!(seen.header("authorization"), None);

        // Its scope, not another's.
        let r = envoy.send(&Request::get("/data/download/file").bearer(&alice.api_key));
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["error"], "insufficient_scope");
        // The read-only flag set by --read-only.
        let r = envoy.send(&Request::get("/data/download/file").bearer(&bob.api_key));
        assert_eq!(r.status, 200);
        let r = envoy.send(&Request::new("POST", "/data/download/file").bearer(&bob.api_key));
        assert_eq!(r.status, 403);
        upstream.take();
    }

    keygate(&["revoke", &alice.id, "--keys", p(&keys)]).ok();
    keygate(&["disable", &bob.id, "--keys", p(&keys)]).ok();
    {
        let envoy = Envoy::start(&config_from(&keys, &dir), &upstream);
        let r = envoy.send(&Request::get("/data/query/study").bearer(&alice.api_key));
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "invalid_token");
        assert_eq!(r.json()["error_description"], "unknown API key");
        let r = envoy.send(&Request::get("/data/query/study").bearer(&bob.api_key));
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error_description"], "API key disabled");
        assert!(upstream.take().is_empty());
        // No answer and no log line holds a key.
        let log = envoy.log();
        assert!(!log.contains(&alice.api_key) && !log.contains(&bob.api_key));
    }

    keygate(&["enable", &bob.id, "--keys", p(&keys)]).ok();
    let envoy = Envoy::start(&config_from(&keys, &dir), &upstream);
    let r = envoy.send(&Request::get("/data/query/study").bearer(&bob.api_key));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.take_one().header("x-api-key-owner"), Some("bob"));
}
