//! `keygate serve --db`: the admin API over real TLS (certificates made here), mTLS on the
//! gateway endpoints, every kind of bad input, and durability (SIGKILL during a burst of
//! changes, 100 parallel creates).

use keygate_core::record::{KeyHash, KeySetDoc};
use keygate_testkit::cli::{keygate, Scratch};
use keygate_testkit::keysvc::tls::Pki;
use keygate_testkit::keysvc::{admin_key, arg, db_path, scratch_db, Client, Server, TlsDb};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn hash_of(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

fn key_set_hashes(client: &Client) -> (String, HashMap<String, Value>) {
    let r = client.get("/v1/keyset");
    assert_eq!(r.status, 200, "{r:?}");
    KeySetDoc::parse(&r.body).unwrap();
    let doc = r.json();
    let keys = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["hash"].as_str().unwrap().to_string(), k.clone()))
        .collect();
    (doc["version"].as_str().unwrap().to_string(), keys)
}

fn set_policy(db: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["policy", "--db", db.to_str().unwrap()];
    all.extend_from_slice(args);
    serde_json::from_str(&keygate(&all).ok().stdout).unwrap()
}

#[test]
fn admin_api_over_tls_with_client_certificates_on_gateway_endpoints() {
    let TlsDb {
        dir,
        pki,
        db,
        admin,
    } = TlsDb::new("keysvc-tls");
    assert!(admin.starts_with("kga_"));
    let policy = set_policy(
        &db,
        &[
            "--scopes",
            "browse,download,upload",
            "--default-expiry",
            "30d",
            "--max-expiry",
            "365d",
        ],
    );
    assert_eq!(
        policy,
        json!({"scopes": ["browse", "download", "upload"], "default_expiry": "30d", "max_expiry": "1y"})
    );
    let server = Server::start_tls(&db, &pki, true);
    assert!(server.https);
    assert!(
        server.log().contains("stop with Ctrl-C or SIGTERM"),
        "{}",
        server.log()
    );
    let anonymous = Client::tls(server.addr, &pki, false);
    let gateway = Client::tls(server.addr, &pki, true);
    let api = anonymous.clone().with_bearer(&admin);

    // Health needs nothing; the gateway endpoints need the client certificate.
    assert_eq!(anonymous.get("/healthz").status, 200);
    assert_eq!(anonymous.get("/readyz").json()["status"], "ready");
    let r = anonymous.get("/v1/keyset");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(
        anonymous
            .get(&format!("/v1/keys/{}", "a".repeat(64)))
            .status,
        403
    );
    assert!(
        Client::stranger(server.addr, &pki)
            .try_send("GET", "/v1/keyset", &[], None)
            .is_err(),
        "a certificate from another CA must fail the handshake"
    );
    assert!(
        Client::plain(server.addr)
            .try_send("GET", "/healthz", &[], None)
            .map_or(true, |r| r.status != 200),
        "plain HTTP on the TLS port"
    );
    let (version0, keys) = key_set_hashes(&gateway);
    assert!(keys.is_empty());

    // Create: ImmPort's shape, shown once.
    let r = api.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "alice", "label": "ci-runner", "scopes": ["browse", "download"], "expires_in": "90d"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = r.json();
    let mut fields: Vec<_> = created.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["api_key", "expires_at", "id"]);
    let alice_key = created["api_key"].as_str().unwrap().to_string();
    let alice_id = created["id"].as_str().unwrap().to_string();
    assert!(alice_key.starts_with("kg_"));
    // Default expiry from the policy; read_only defaults to false.
    let r = api.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "alice", "scopes": ["upload"], "read_only": true}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let second = r.json();
    let bob = api
        .json(
            "POST",
            "/v1/admin/keys",
            &json!({"owner": "bob", "scopes": []}),
        )
        .json();

    let record = api.get(&format!("/v1/admin/keys/{alice_id}")).json();
    assert_eq!(record["hash"], hash_of(&alice_key));
    assert_eq!(record["owner"], "alice");
    assert_eq!(record["label"], "ci-runner");
    assert_eq!(record["scopes"], json!(["browse", "download"]));
    assert_eq!(record["status"], "enabled");
    assert_eq!(record["expires_at"], created["expires_at"]);
    assert_eq!(record["last_used_at"], Value::Null);
    assert_eq!(record["uses"], 0);
    assert_eq!(
        api.get(&format!(
            "/v1/admin/keys/{}",
            second["id"].as_str().unwrap()
        ))
        .json()["read_only"],
        true
    );

    let (version1, keys) = key_set_hashes(&gateway);
    assert_ne!(version1, version0);
    assert_eq!(keys.len(), 3);
    assert!(keys.contains_key(&hash_of(&alice_key)));
    let r = gateway.get(&format!("/v1/keys/{}", hash_of(&alice_key)));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], alice_id.as_str());

    // ETag / If-None-Match.
    let r = gateway.get("/v1/keyset");
    let tag = r.header("etag").unwrap().to_string();
    let r = gateway.send("GET", "/v1/keyset", &[("If-None-Match", &tag)], None);
    assert_eq!(r.status, 304);

    // List, filtered and paged.
    let page = api.get("/v1/admin/keys?owner=alice&limit=1").json();
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let page2 = api
        .get(&format!(
            "/v1/admin/keys?owner=alice&limit=1&cursor={cursor}"
        ))
        .json();
    assert_eq!(page2["keys"].as_array().unwrap().len(), 1);
    assert_ne!(page2["keys"][0]["id"], page["keys"][0]["id"]);
    assert_eq!(page2["next_cursor"], Value::Null);

    // Usage reports from gateways.
    let r = gateway.json(
        "POST",
        "/v1/usage",
        &json!({"reports": [{"hash": hash_of(&alice_key), "count": 3, "last_used_at": "2026-11-30T10:00:00Z"}]}),
    );
    assert_eq!(r.status, 204, "{r:?}");
    let record = api.get(&format!("/v1/admin/keys/{alice_id}")).json();
    assert_eq!(record["uses"], 3);
    assert_eq!(record["last_used_at"], "2026-11-30T10:00:00Z");
    assert_eq!(
        anonymous
            .json("POST", "/v1/usage", &json!({"reports": []}))
            .status,
        403
    );

    // PATCH.
    let r = api.json(
        "PATCH",
        &format!("/v1/admin/keys/{alice_id}"),
        &json!({"status": "disabled", "label": "paused", "scopes": ["browse"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let (_, keys) = key_set_hashes(&gateway);
    let served = &keys[&hash_of(&alice_key)];
    assert_eq!(served["status"], "disabled");
    assert_eq!(served["scopes"], json!(["browse"]));
    assert_eq!(served["label"], "paused");
    let r = api.json(
        "PATCH",
        &format!("/v1/admin/keys/{alice_id}"),
        &json!({"status": "enabled", "expires_at": "2027-01-01T00:00:00Z"}),
    );
    assert_eq!(r.json()["expires_at"], "2027-01-01T00:00:00Z");

    // Rotate: same owner, label, scopes; the old key expires within the grace.
    let r = api.json(
        "POST",
        &format!("/v1/admin/keys/{alice_id}/rotate"),
        &json!({"grace": "1h"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let rotated = r.json();
    assert_eq!(rotated["replaces"], alice_id.as_str());
    let new_record = api
        .get(&format!(
            "/v1/admin/keys/{}",
            rotated["id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(new_record["owner"], "alice");
    assert_eq!(new_record["label"], "paused");
    assert_eq!(new_record["scopes"], json!(["browse"]));
    assert_eq!(
        new_record["hash"],
        hash_of(rotated["api_key"].as_str().unwrap())
    );
    let old = api.get(&format!("/v1/admin/keys/{alice_id}")).json();
    assert_ne!(old["expires_at"], "2027-01-01T00:00:00Z");

    // Revoke one; again is a conflict; a revoked key cannot be changed.
    let r = api.send("DELETE", &format!("/v1/admin/keys/{alice_id}"), &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "revoked");
    assert_eq!(
        gateway
            .get(&format!("/v1/keys/{}", hash_of(&alice_key)))
            .status,
        404
    );
    assert!(!key_set_hashes(&gateway)
        .1
        .contains_key(&hash_of(&alice_key)));
    let r = api.send("DELETE", &format!("/v1/admin/keys/{alice_id}"), &[], None);
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "conflict");
    assert_eq!(
        api.json(
            "PATCH",
            &format!("/v1/admin/keys/{alice_id}"),
            &json!({"status": "enabled"})
        )
        .status,
        409
    );
    assert_eq!(
        api.json(
            "POST",
            &format!("/v1/admin/keys/{alice_id}/rotate"),
            &json!({})
        )
        .status,
        409
    );

    // Revoke all of alice's keys (the second and the rotated one), not bob's.
    let r = api.send("DELETE", "/v1/admin/keys?owner=alice", &[], None);
    assert_eq!(r.json(), json!({"owner": "alice", "revoked": 2}));
    let (_, keys) = key_set_hashes(&gateway);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.values().next().unwrap()["id"], bob["id"]);
    let revoked = api.get("/v1/admin/keys?status=revoked").json();
    assert_eq!(revoked["keys"].as_array().unwrap().len(), 3);

    // The audit trail: who, what, which key; revoked keys stay in it.
    let audit = api.get("/v1/admin/audit?since=2020-01-01T00:00:00Z").json();
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "admin_key_create",
        "policy",
        "create",
        "update",
        "rotate",
        "revoke",
    ] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
    assert!(entries
        .iter()
        .any(|e| e["action"] == "revoke" && e["key_id"] == alice_id.as_str()));
    let admin_actor = entries.iter().find(|e| e["action"] == "create").unwrap()["actor"]
        .as_str()
        .unwrap();
    assert!(admin_actor.starts_with("admin:"), "{admin_actor}");
    assert!(entries[0]["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(
        api.get("/v1/admin/audit?since=2999-01-01T00:00:00Z").json()["entries"],
        json!([])
    );

    // No raw key anywhere on disk or in the log.
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        on_disk.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let on_disk = String::from_utf8_lossy(&on_disk);
    for secret in [
        alice_key.as_str(),
        admin.as_str(),
        second["api_key"].as_str().unwrap(),
    ] {
        assert!(!on_disk.contains(secret));
        assert!(!server.log().contains(secret));
    }
}

/// One bad request: what is sent and what must come back.
struct Case {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    status: u16,
    /// Text the error_description must contain (the field at fault).
    names: &'static str,
}

/// A case whose request has no body.
fn no_body(method: &'static str, path: &str, status: u16, names: &'static str) -> Case {
    case(method, path, Value::Null, status, names)
}

fn case(method: &'static str, path: &str, body: Value, status: u16, names: &'static str) -> Case {
    Case {
        method,
        path: path.to_string(),
        body: (!body.is_null()).then(|| body.to_string().into_bytes()),
        status,
        names,
    }
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field_and_stores_nothing() {
    let (_dir, db, admin) = scratch_db("keysvc-bad");
    set_policy(
        &db,
        &[
            "--scopes",
            "browse,download",
            "--default-expiry",
            "30d",
            "--max-expiry",
            "90d",
        ],
    );
    let (server, api) = Server::start_db(&db, &admin);
    let r = api.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "keep", "scopes": ["browse"]}),
    );
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let key_path = format!("/v1/admin/keys/{id}");
    let (version, _) = key_set_hashes(&Client::plain(server.addr));
    let audit_before = api.get("/v1/admin/audit").json()["entries"]
        .as_array()
        .unwrap()
        .len();

    let ok = json!({"owner": "alice", "scopes": ["browse"]});
    let with = |field: &str, value: Value| {
        let mut v = ok.clone();
        v[field] = value;
        v
    };
    let mut cases = vec![
        Case {
            method: "POST",
            path: "/v1/admin/keys".into(),
            body: Some(b"{\"owner\": ".to_vec()),
            status: 400,
            names: "body",
        },
        Case {
            method: "POST",
            path: "/v1/admin/keys".into(),
            body: Some(b"[1, 2]".to_vec()),
            status: 400,
            names: "body",
        },
        Case {
            method: "POST",
            path: "/v1/admin/keys".into(),
            body: Some(b"{\"owner\":\"a\",\"scopes\":[]} trailing".to_vec()),
            status: 400,
            names: "body",
        },
        case(
            "POST",
            "/v1/admin/keys",
            with("colour", json!("red")),
            400,
            "colour",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("scopes", json!("browse")),
            400,
            "scopes",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("read_only", json!("yes")),
            400,
            "read_only",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            json!({"scopes": ["browse"]}),
            400,
            "owner",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            json!({"owner": "alice"}),
            400,
            "scopes",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("owner", json!(" alice")),
            422,
            "owner",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("owner", json!("")),
            422,
            "owner",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("scopes", json!(["browse", "admin"])),
            422,
            "scopes[1]",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("scopes", json!(["has space"])),
            422,
            "scopes[0]",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("expires_in", json!("365d")),
            422,
            "expires_in",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("expires_in", json!("never")),
            422,
            "expires_in",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("expires_in", json!("0d")),
            422,
            "expires_in",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("expires_in", json!("7x")),
            422,
            "expires_in",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("label", json!("x".repeat(300))),
            422,
            "label",
        ),
        case(
            "POST",
            "/v1/admin/keys",
            with("label", json!("x".repeat(70_000))),
            413,
            "bytes",
        ),
        no_body("GET", "/v1/admin/keys/not-an-id", 400, "id"),
        no_body(
            "GET",
            "/v1/admin/keys/8C3E4394-10A9-46EF-8AF9-B6401BA1400D",
            400,
            "id",
        ),
        no_body(
            "GET",
            "/v1/admin/keys/8c3e4394-10a9-46ef-8af9-b6401ba1400d",
            404,
            "id",
        ),
        no_body(
            "DELETE",
            "/v1/admin/keys/8c3e4394-10a9-46ef-8af9-b6401ba1400d",
            404,
            "id",
        ),
        no_body("DELETE", "/v1/admin/keys/..%2f..%2fetc", 400, "id"),
        case(
            "PATCH",
            &key_path,
            json!({"status": "revoked"}),
            422,
            "status",
        ),
        case("PATCH", &key_path, json!({"status": "gone"}), 422, "status"),
        case(
            "PATCH",
            &key_path,
            json!({"expires_at": "2099-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        case(
            "PATCH",
            &key_path,
            json!({"expires_at": null}),
            422,
            "expires_at",
        ),
        case(
            "PATCH",
            &key_path,
            json!({"expires_at": "tomorrow"}),
            422,
            "expires_at",
        ),
        case(
            "PATCH",
            &key_path,
            json!({"scopes": ["upload"]}),
            422,
            "scopes[0]",
        ),
        case(
            "PATCH",
            &key_path,
            json!({"owner": "mallory"}),
            400,
            "owner",
        ),
        case(
            "POST",
            &format!("{key_path}/rotate"),
            json!({"grace": "forever"}),
            422,
            "grace",
        ),
        case(
            "POST",
            &format!("{key_path}/rotate"),
            json!({"grace": "never"}),
            422,
            "grace",
        ),
        case(
            "POST",
            &format!("{key_path}/rotate"),
            json!({"grace": "1h", "x": 1}),
            400,
            "x",
        ),
        no_body("GET", "/v1/admin/keys?limit=0", 400, "limit"),
        no_body("GET", "/v1/admin/keys?limit=many", 400, "limit"),
        no_body("GET", "/v1/admin/keys?status=lost", 400, "status"),
        no_body("GET", "/v1/admin/keys?cursor=-4", 400, "cursor"),
        no_body("GET", "/v1/admin/keys?colour=red", 400, "colour"),
        no_body("DELETE", "/v1/admin/keys", 400, "owner"),
        no_body("GET", "/v1/admin/audit?since=yesterday", 400, "since"),
        case("PUT", "/v1/admin/keys", ok.clone(), 405, ""),
        case(
            "POST",
            "/v1/usage",
            json!({"reports": [{"hash": "nothex", "count": 1, "last_used_at": "2026-01-01T00:00:00Z"}]}),
            400,
            "reports[0].hash",
        ),
    ];
    cases.push(Case {
        method: "POST",
        path: "/v1/admin/keys".into(),
        body: Some(b"".to_vec()),
        status: 400,
        names: "owner",
    });
    for c in &cases {
        let r = api.send(c.method, &c.path, &[], c.body.as_deref());
        assert_eq!(
            r.status,
            c.status,
            "{} {}: {}",
            c.method,
            c.path,
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        let description = v["error_description"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"));
        assert!(v["error"].is_string(), "{v}");
        assert!(
            description.contains(c.names),
            "{} {}: {description:?} does not name {:?}",
            c.method,
            c.path,
            c.names
        );
    }

    // Nothing was stored: same key set version, same audit trail, one key.
    let (after, keys) = key_set_hashes(&Client::plain(server.addr));
    assert_eq!(after, version);
    assert_eq!(keys.len(), 1);
    let audit_after = api.get("/v1/admin/audit").json()["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_after, audit_before);
    assert_eq!(api.get(&key_path).json()["status"], "enabled");

    // Wrong or missing admin keys: 401, logged without the key, slowed down per client.
    let anonymous = Client::plain(server.addr);
    let r = anonymous.json("POST", "/v1/admin/keys", &ok);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let guess = "kga_this-is-a-guessed-admin-key";
    let mut last = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let r = anonymous
            .clone()
            .with_bearer(guess)
            .json("POST", "/v1/admin/keys", &ok);
        assert_eq!(r.status, 401);
        last = started.elapsed();
    }
    assert!(
        last >= Duration::from_millis(700),
        "the 5th failure waited only {last:?}"
    );
    let r = anonymous.send(
        "GET",
        "/v1/admin/keys",
        &[("Authorization", &format!("Basic {admin}"))],
        None,
    );
    assert_eq!(r.status, 401);
    // A user's API key is no admin key.
    let user_key = "kg_whatever";
    assert_eq!(
        anonymous
            .clone()
            .with_bearer(user_key)
            .get("/v1/admin/keys")
            .status,
        401
    );
    let log = server.log();
    assert!(
        log.contains("admin authentication failed from 127.0.0.1"),
        "{log}"
    );
    assert!(!log.contains(guess) && !log.contains(&admin), "{log}");
    assert_eq!(key_set_hashes(&Client::plain(server.addr)).1.len(), 1);
}

#[test]
fn file_mode_has_no_admin_api_and_flags_are_checked() {
    let dir = Scratch::new("keysvc-file");
    let keys = dir.join("keys.json");
    std::fs::write(&keys, r#"{"version": "1", "keys": []}"#).unwrap();
    let server = Server::start(&["--keys", &arg(&keys)]);
    let client = Client::plain(server.addr).with_bearer("kga_x");
    let r = client.json(
        "POST",
        "/v1/admin/keys",
        &json!({"owner": "a", "scopes": []}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(client.get("/readyz").status, 200);

    let db = arg(&db_path(dir.path()));
    let k = arg(&keys);
    for args in [
        vec!["serve", "--keys", &k, "--db", &db],
        vec!["serve"],
        vec!["serve", "--db", &db, "--client-ca", &k],
        vec!["serve", "--db", &db, "--tls-cert", &k],
    ] {
        let run = keygate(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    let run = keygate(&[
        "serve",
        "--db",
        &db,
        "--tls-cert",
        &k,
        "--tls-key",
        &k,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("keygate: "), "{run:?}");
    let run = keygate(&[
        "policy",
        "--db",
        &db,
        "--default-expiry",
        "1y",
        "--max-expiry",
        "90d",
    ])
    .failed();
    assert!(run.stderr.contains("longer than the maximum"), "{run:?}");
    let run = keygate(&["policy", "--db", &db, "--scopes", "a b"]).failed();
    assert!(run.stderr.contains("--scopes"), "{run:?}");
    let shown: Value =
        serde_json::from_str(&keygate(&["policy", "--db", &db]).ok().stdout).unwrap();
    assert_eq!(
        shown,
        json!({"scopes": null, "default_expiry": "90d", "max_expiry": "never"})
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = Scratch::new("keysvc-term");
    let db = db_path(dir.path());
    let mut server = Server::start(&["--db", &arg(&db)]);
    assert_eq!(Client::plain(server.addr).get("/healthz").status, 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(
        server.log().contains("keygate serve: stopped"),
        "{}",
        server.log()
    );
}

#[test]
fn a_hundred_parallel_creates_lose_nothing() {
    let (_dir, db, admin) = scratch_db("keysvc-parallel");
    let (server, api) = Server::start_db(&db, &admin);
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let api = api.clone();
            std::thread::spawn(move || {
                let r = api.json(
                    "POST",
                    "/v1/admin/keys",
                    &json!({"owner": format!("user{}", i % 7), "scopes": []}),
                );
                assert_eq!(r.status, 201, "{r:?}");
                let v = r.json();
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["api_key"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let created: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ids: HashSet<_> = created.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 100);
    let (version, keys) = key_set_hashes(&Client::plain(server.addr));
    assert_eq!(version, "100");
    assert_eq!(keys.len(), 100);
    for (_, key) in &created {
        assert!(keys.contains_key(&hash_of(key)));
    }
    let listed = api.get("/v1/admin/keys?limit=1000").json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 100);
}

#[test]
fn sigkill_during_a_burst_loses_no_acknowledged_change() {
    let (_dir, db, admin) = scratch_db("keysvc-kill");
    let (mut server, api) = Server::start_db(&db, &admin);
    // What the server acknowledged: created (id, hash) and revoked ids.
    let created = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let revoked = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let api = api.clone();
            let created = created.clone();
            let revoked = revoked.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for n in 0.. {
                    let body = json!({"owner": format!("worker{w}"), "scopes": []}).to_string();
                    let Ok(r) = api.try_send("POST", "/v1/admin/keys", &[], Some(body.as_bytes()))
                    else {
                        return;
                    };
                    if r.status != 201 {
                        return;
                    }
                    let v = r.json();
                    let id = v["id"].as_str().unwrap().to_string();
                    created
                        .lock()
                        .unwrap()
                        .push((id.clone(), hash_of(v["api_key"].as_str().unwrap())));
                    mine.push(id);
                    if n % 2 == 1 {
                        let victim = mine.remove(0);
                        let Ok(r) =
                            api.try_send("DELETE", &format!("/v1/admin/keys/{victim}"), &[], None)
                        else {
                            return;
                        };
                        if r.status != 200 {
                            return;
                        }
                        revoked.lock().unwrap().push(victim);
                    }
                }
            })
        })
        .collect();
    // Let the burst run, then kill -9 in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while created.lock().unwrap().len() < 60 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let created = created.lock().unwrap().clone();
    let revoked: HashSet<String> = revoked.lock().unwrap().iter().cloned().collect();
    assert!(
        created.len() >= 60,
        "only {} creates before the kill",
        created.len()
    );
    assert!(!revoked.is_empty());

    server.restart();
    let api = Client::plain(server.addr).with_bearer(&admin);
    let (_, served) = key_set_hashes(&Client::plain(server.addr));
    for (id, hash) in &created {
        let r = api.get(&format!("/v1/admin/keys/{id}"));
        assert_eq!(r.status, 200, "acknowledged create of {id} lost");
        let record = r.json();
        assert_eq!(record["hash"], hash.as_str());
        if revoked.contains(id) {
            assert_eq!(
                record["status"], "revoked",
                "acknowledged revoke of {id} lost"
            );
            assert!(!served.contains_key(hash));
        } else {
            assert!(served.contains_key(hash) || record["status"] == "revoked");
        }
    }
    // Revocations that were in flight at the kill may or may not have landed; nothing
    // acknowledged is missing, and the audit trail has an entry for every acknowledged change.
    let audit = api.get("/v1/admin/audit?limit=10000").json();
    let entries = audit["entries"].as_array().unwrap();
    let audited: HashSet<(String, String)> = entries
        .iter()
        .filter_map(|e| {
            Some((
                e["action"].as_str()?.to_string(),
                e["key_id"].as_str()?.to_string(),
            ))
        })
        .collect();
    for (id, _) in &created {
        assert!(audited.contains(&("create".to_string(), id.clone())));
    }
    for id in &revoked {
        assert!(audited.contains(&("revoke".to_string(), id.clone())));
    }
}

#[test]
fn slow_and_idle_clients_are_disconnected() {
    use std::io::{Read, Write};
    let dir = Scratch::new("keysvc-slow");
    let pki = Pki::generate(dir.path());
    let db = db_path(dir.path());
    let plain = Server::start(&["--db", &arg(&db)]);
    let tls = Server::start_tls(&db, &pki, false);
    // Each connection must be closed by the server within the 10 s limits (plus slack).
    let closed_within = |addr: std::net::SocketAddr, send: &'static [u8]| {
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
            s.write_all(send).unwrap();
            let started = Instant::now();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
                }
            }
            (
                started.elapsed(),
                String::from_utf8_lossy(&seen).to_string(),
            )
        })
    };
    let checks = [
        ("nothing sent", closed_within(plain.addr, b"")),
        (
            "half a request",
            closed_within(plain.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        ),
        (
            "idle after an answer",
            closed_within(plain.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        (
            "h2c preface",
            closed_within(plain.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ),
        ("no TLS handshake", closed_within(tls.addr, b"")),
    ];
    for (what, check) in checks {
        let (took, seen) = check.join().unwrap();
        assert!(took < Duration::from_secs(15), "{what}: open for {took:?}");
        if what == "idle after an answer" {
            assert!(seen.starts_with("HTTP/1.1 200"), "{what}: {seen}");
            assert!(
                took >= Duration::from_secs(5),
                "{what}: closed too soon ({took:?})"
            );
        }
    }
    // The server still answers.
    assert_eq!(Client::plain(plain.addr).get("/healthz").status, 200);
}

#[test]
fn import_from_a_key_file_and_export_back() {
    use keygate_testkit::cli::new_key;
    let dir = Scratch::new("keysvc-import");
    let keys = dir.join("keys.json");
    let db = db_path(dir.path());
    let a = new_key(
        &keys,
        &[
            "--owner",
            "alice",
            "--scopes",
            "browse",
            "--expires-in",
            "30d",
        ],
    );
    let b = new_key(
        &keys,
        &["--owner", "bob", "--expires-in", "never", "--read-only"],
    );
    keygate(&["disable", &b.id, "--keys", &arg(&keys)]).ok();

    let run = keygate(&["import", "--keys", &arg(&keys), "--db", &arg(&db)]).ok();
    assert_eq!(
        run.stdout,
        format!("imported 2 keys into {}\n", db.display())
    );
    // Again: every id is there already, so nothing is imported.
    let run = keygate(&["import", "--keys", &arg(&keys), "--db", &arg(&db)]).failed();
    assert!(
        run.stderr.contains("keys[0]") && run.stderr.contains("nothing imported"),
        "{run:?}"
    );

    let admin = admin_key(&db);
    let (server, api) = Server::start_db(&db, &admin);
    let record = api.get(&format!("/v1/admin/keys/{}", a.id)).json();
    assert_eq!(record["hash"], hash_of(&a.api_key));
    assert_eq!(record["expires_at"], a.expires_at.as_deref().unwrap());
    assert_eq!(record["scopes"], json!(["browse"]));
    let record = api.get(&format!("/v1/admin/keys/{}", b.id)).json();
    assert_eq!(record["status"], "disabled");
    assert_eq!(record["read_only"], true);
    assert_eq!(record["expires_at"], Value::Null);
    let audit = api.get("/v1/admin/audit").json();
    assert_eq!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "import")
            .count(),
        2
    );
    assert_eq!(
        api.send("DELETE", &format!("/v1/admin/keys/{}", a.id), &[], None)
            .status,
        200
    );
    drop(server);

    let out = dir.join("exported.json");
    let run = keygate(&["export", "--db", &arg(&db), "--keys", &arg(&out)]).ok();
    assert_eq!(run.stdout, format!("exported 1 key to {}\n", out.display()));
    let doc = KeySetDoc::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc.keys.len(), 1);
    assert_eq!(doc.keys[0].hash, KeyHash::of_key(&b.api_key));
    let run = keygate(&[
        "export",
        "--db",
        &arg(&dir.join("none.db")),
        "--keys",
        &arg(&out),
    ])
    .failed();
    assert!(run.stderr.contains("no such database"), "{run:?}");

    // Ids that are not UUIDs are refused, naming them; nothing is imported.
    let odd = dir.join("odd.json");
    std::fs::write(
        &odd,
        json!({"keys": [{"id": "legacy-1", "hash": hash_of("x"), "owner": "o"}]}).to_string(),
    )
    .unwrap();
    let other_db = dir.join("other.db");
    let run = keygate(&["import", "--keys", &arg(&odd), "--db", &arg(&other_db)]).failed();
    assert!(run.stderr.contains("keys[0].id"), "{run:?}");
}

#[test]
fn parallel_admin_key_guesses_wait_in_line() {
    let (_dir, db, admin) = scratch_db("keysvc-guess");
    let server = Server::start(&["--db", &arg(&db)]);
    let guesser = Client::plain(server.addr).with_bearer("kga_guess");
    assert_eq!(guesser.get("/v1/admin/keys").status, 401);
    // One failure: each later attempt waits 200 ms more than the one before it.
    let started = Instant::now();
    let guesses: Vec<_> = (0..5)
        .map(|_| {
            let guesser = guesser.clone();
            std::thread::spawn(move || {
                let r = guesser.get("/v1/admin/keys");
                (r.status, Instant::now())
            })
        })
        .collect();
    let mut done: Vec<_> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    done.sort_by_key(|(_, at)| *at);
    assert!(done.iter().all(|(status, _)| *status == 401));
    let last = done.last().unwrap().1 - started;
    assert!(
        last >= Duration::from_millis(1000),
        "five parallel guesses done in {last:?}"
    );
    // The right key still gets in (after its turn), and clears the slate.
    let api = Client::plain(server.addr).with_bearer(&admin);
    assert_eq!(api.get("/v1/admin/keys").status, 200);
    let started = Instant::now();
    assert_eq!(api.get("/v1/admin/keys").status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
}
