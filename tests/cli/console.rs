//! The web console (README "Web console") as served: its files come from the binary with
//! a strict Content-Security-Policy, no framing and no caching, refer to nothing outside
//! the key service, and the admin API it uses (the policy's choices included) is not
//! cached either. The flows themselves are driven in Chromium: tests/console/.

use keygate_testkit::cli::keygate;
use keygate_testkit::keysvc::{arg, scratch_db, Client, Server};
use serde_json::{json, Value};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn source(name: &str) -> String {
    let path = format!(
        "{}/crates/keyservice/console/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn set_policy(db: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["policy", "--db", db.to_str().unwrap()];
    all.extend_from_slice(args);
    serde_json::from_str(&keygate(&all).ok().stdout).unwrap()
}

#[test]
fn console_files_are_served_from_the_binary_with_strict_headers() {
    let (_dir, db, admin) = scratch_db("console-headers");
    let (_server, api) = Server::start_db(&db, &admin);
    // No admin key is needed for the page itself: it holds no data.
    let anonymous = Client::plain(api.addr);
    for (path, file, content_type) in [
        ("/console", "index.html", "text/html; charset=utf-8"),
        ("/console/", "index.html", "text/html; charset=utf-8"),
        (
            "/console/console.css",
            "console.css",
            "text/css; charset=utf-8",
        ),
        (
            "/console/console.js",
            "console.js",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let r = anonymous.get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        // Compiled in: the same bytes as the source, whatever the working directory.
        assert_eq!(r.text(), source(file), "{path}");
    }
    assert_eq!(anonymous.get("/console/other.js").status, 404);
}

#[test]
fn console_files_need_nothing_from_the_network_and_nothing_inline() {
    let page = source("index.html");
    let style = source("console.css");
    let script = source("console.js");
    for (name, text) in [
        ("index.html", &page),
        ("console.css", &style),
        ("console.js", &script),
    ] {
        for outside in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(!text.contains(outside), "{name} holds {outside:?}");
        }
    }
    // One script and one stylesheet, both the service's own; no inline script, style or
    // event handler, which the Content-Security-Policy would refuse anyway.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script src=\"/console/console.js\" defer></script>"));
    assert_eq!(page.matches("<link").count(), 1);
    assert!(page.contains("<link rel=\"stylesheet\" href=\"/console/console.css\">"));
    assert!(!page.contains("<style"));
    assert!(!page.contains(" style="));
    assert!(
        !has_event_attribute(&page),
        "an inline event handler in index.html"
    );
    // Inputs without a name: a form that somehow submitted would put nothing in a URL.
    assert_eq!(
        page.matches(" name=").count(),
        page.matches("<meta name=").count()
    );
    // Data goes into the page as text only.
    for html_sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(html_sink), "console.js uses {html_sink}");
    }
    // The admin key lives in the tab's sessionStorage, never in a cookie or localStorage.
    assert!(script.contains("sessionStorage"));
    assert!(!script.contains("localStorage"));
    assert!(!script.contains("document.cookie"));
}

#[test]
fn console_admin_answers_are_not_cached() {
    let (_dir, db, admin) = scratch_db("console-no-store");
    let (_server, api) = Server::start_db(&db, &admin);
    let created = api.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "alice", "scopes": ["browse"], "expires_in": "7d"}),
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let id = created.json()["id"].as_str().unwrap().to_string();
    for path in [
        "/v1/admin/keys".to_string(),
        format!("/v1/admin/keys/{id}"),
        "/v1/admin/audit".to_string(),
        "/v1/admin/policy".to_string(),
    ] {
        let r = api.get(&path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
    let rotated = api.json("POST", &format!("/v1/admin/keys/{id}/rotate"), &json!({}));
    assert_eq!(rotated.status, 201, "{rotated:?}");
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    let refused = Client::plain(api.addr).get("/v1/admin/keys");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    // The methods not allowed still answer as before.
    assert_eq!(api.json("PUT", "/v1/admin/policy", &json!({})).status, 405);
}

#[test]
fn console_policy_endpoint_lists_the_catalog_and_the_expiry_choices() {
    let (_dir, db, admin) = scratch_db("console-policy");
    let (mut server, api) = Server::start_db(&db, &admin);
    assert_eq!(Client::plain(api.addr).get("/v1/admin/policy").status, 401);
    assert_eq!(
        api.get("/v1/admin/policy").json(),
        json!({
            "scopes": null,
            "default_expiry": "90d",
            "max_expiry": "never",
            "expiry_choices": ["never", "7d", "30d", "90d", "365d"],
            "default_choice": "90d",
        })
    );
    set_policy(
        &db,
        &[
            "--scopes",
            "browse,download",
            "--default-expiry",
            "7d",
            "--max-expiry",
            "365d",
        ],
    );
    assert_eq!(
        api.get("/v1/admin/policy").json(),
        json!({
            "scopes": ["browse", "download"],
            "default_expiry": "7d",
            "max_expiry": "1y",
            "expiry_choices": ["7d", "30d", "90d", "365d"],
            "default_choice": "7d",
        })
    );
    // A maximum that is none of the usual choices is offered itself.
    set_policy(&db, &["--default-expiry", "14d", "--max-expiry", "14d"]);
    let policy = api.get("/v1/admin/policy").json();
    assert_eq!(policy["expiry_choices"], json!(["7d", "14d"]));
    assert_eq!(policy["default_choice"], json!("14d"));
    // What the console offers is what the admin API takes.
    for choice in ["7d", "14d"] {
        let r = api.json(
            "POST",
            "/v1/admin/keys",
            &json!({"owner": "bob", "scopes": ["browse"], "expires_in": choice}),
        );
        assert_eq!(r.status, 201, "{choice}: {r:?}");
    }
    let beyond = api.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "bob", "scopes": ["browse"], "expires_in": "30d"}),
    );
    assert_eq!(beyond.status, 422, "{beyond:?}");
    server.terminate();
    // File mode has no admin API, so no console either.
    let (dir, _, _) = scratch_db("console-file-mode");
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, r#"{"version":"1","keys":[]}"#).unwrap();
    let file_mode = Server::start(&["--keys", &arg(&keys)]);
    assert_eq!(Client::plain(file_mode.addr).get("/console").status, 404);
}

/// Whether `html` has an attribute such as ` onclick=`.
fn has_event_attribute(html: &str) -> bool {
    html.match_indices(" on").any(|(at, _)| {
        let rest = &html[at + 3..];
        let name_len = rest
            .find(|c: char| !c.is_ascii_lowercase())
            .unwrap_or(rest.len());
        name_len > 0 && rest[name_len..].starts_with('=')
    })
}

#[test]
fn console_audit_trail_pages_newest_first() {
    let (_dir, db, admin) = scratch_db("console-audit");
    let (_server, api) = Server::start_db(&db, &admin);
    for owner in ["a", "b", "c", "d", "e"] {
        api.create_browse_key(owner);
    }
    let seqs = |path: &str| -> Vec<i64> {
        let r = api.get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        r.json()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect()
    };
    // admin_key_create, then 5 creates: seq 1 to 6.
    assert_eq!(seqs("/v1/admin/audit"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs("/v1/admin/audit?order=oldest&limit=2"), [1, 2]);
    assert_eq!(seqs("/v1/admin/audit?order=newest&limit=4"), [6, 5, 4, 3]);
    assert_eq!(
        seqs("/v1/admin/audit?order=newest&limit=4&before=3"),
        [2, 1]
    );
    assert_eq!(
        seqs("/v1/admin/audit?order=newest&before=1"),
        Vec::<i64>::new()
    );
    let newest = api.get("/v1/admin/audit?order=newest&limit=1").json();
    assert_eq!(newest["entries"][0]["action"], json!("create"));
    assert_eq!(newest["entries"][0]["detail"], json!("e"));
    for bad in [
        "/v1/admin/audit?order=sideways",
        "/v1/admin/audit?before=3",
        "/v1/admin/audit?order=newest&before=x",
        "/v1/admin/audit?order=newest&since=2026-01-01T00:00:00Z",
    ] {
        let r = api.get(bad);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(r.json()["error"], json!("invalid_request"), "{bad}");
    }
}

#[test]
fn console_admin_key_revoked_with_keygate_admin_revoke_is_refused_at_once() {
    let (_dir, db, admin) = scratch_db("console-admin-revoke");
    let second: Value = serde_json::from_str(
        &keygate(&["admin", "new", "--db", db.to_str().unwrap()])
            .ok()
            .stdout,
    )
    .unwrap();
    let (id, key) = (
        second["id"].as_str().unwrap(),
        second["admin_key"].as_str().unwrap(),
    );
    let (_server, api) = Server::start_db(&db, &admin);
    let other = Client::plain(api.addr).with_bearer(key);
    assert_eq!(other.get("/v1/admin/policy").status, 200);
    let out = keygate(&["admin", "revoke", "--db", db.to_str().unwrap(), id]).ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!({"id": id, "revoked": true})
    );
    // The running service refuses it at once; the other admin key still works.
    let refused = other.get("/v1/admin/policy");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(api.get("/v1/admin/policy").status, 200);
    let newest = api.get("/v1/admin/audit?order=newest&limit=1").json();
    assert_eq!(newest["entries"][0]["action"], json!("admin_key_revoke"));
    assert_eq!(
        newest["entries"][0]["detail"],
        json!(format!("admin key {id}"))
    );
    // Twice, or an id that never was: an error naming it.
    let again = keygate(&["admin", "revoke", "--db", db.to_str().unwrap(), id]).failed();
    assert!(
        again.stderr.contains("no admin key with the id"),
        "{again:?}"
    );
}
