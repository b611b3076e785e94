//! Requests through a real Envoy running keygate: what the client gets (README "Responses") and what
//! the upstream receives (README "What the upstream sees"), for every credential form (README "Credentials"), key state
//! and rule (README "Configuration reference").

use keygate_testkit as support;

use serde_json::{json, Value};
use support::{hash_of, Envoy, Request, Response, Seen, Upstream};

pub(crate) const BROWSE: &str = "kg_browse_3d1f0c9a8b7e6d5c4b3a29180f";
const DOWNLOAD: &str = "kg_download_77aa55cc33ee11dd99bb";
pub(crate) const UPLOAD: &str = "kg_upload_0b1c2d3e4f5a6b7c8d9e";
const READ_ONLY: &str = "kg_readonly_5e6f7a8b9c0d1e2f3a4b";
pub(crate) const EXPIRED: &str = "kg_expired_a1b2c3d4e5f6a7b8c9d0";
const DISABLED: &str = "kg_disabled_f0e1d2c3b4a59687";
const FUTURE: &str = "kg_future_1029384756abcdef";
const EXPIRED_SOON: &str = "kg_soon_6b5a4c3d2e1f0a9b8c7d";

/// ImmPort-like keys and rules (seeds: browse / download / upload scopes, VSPC read-only).
pub(crate) fn immport_config() -> Value {
    json!({
        "realm": "immport",
        "sources": [
            {"authorization": {"schemes": ["Bearer", "ApiKey", "Basic"]}},
            {"header": "x-api-key"},
            {"query": "api_key"}
        ],
        "keys": [
            {"id": "k-browse", "hash": hash_of(BROWSE), "owner": "alice", "scopes": ["browse"]},
            {"id": "k-download", "hash": hash_of(DOWNLOAD), "owner": "bob",
             "scopes": ["browse", "download"]},
            {"id": "k-upload", "hash": hash_of(UPLOAD), "owner": "carol",
             "scopes": ["browse", "upload"], "label": "ci-runner",
             "created_at": "2026-11-01T10:00:00Z"},
            {"id": "k-readonly", "hash": hash_of(READ_ONLY), "owner": "vspc-operator",
             "scopes": ["browse", "download", "upload"], "read_only": true},
            {"id": "k-expired", "hash": hash_of(EXPIRED), "owner": "dave",
             "scopes": ["browse"], "expires_at": "2021-05-21T20:55:24.123456789Z"},
            {"id": "k-disabled", "hash": hash_of(DISABLED), "owner": "erin",
             "scopes": ["browse"], "status": "disabled"},
            {"id": "k-future", "hash": hash_of(FUTURE), "owner": "frank",
             "scopes": ["browse"], "expires_at": "2099-05-21T20:55:24.987654321+02:00"}
        ],
        "rules": support::immport_rules(),
        "unmatched": "deny"
    })
}

/// `WWW-Authenticate` of `immport_config()`: a challenge per way it accepts a key, in the
/// order of its sources; Bearer's carries `bearer_params` (RFC 6750's attributes).
fn immport_challenge(bearer_params: &str) -> String {
    format!(
        r#"Bearer realm="immport"{bearer_params}, ApiKey realm="immport", Basic realm="immport", ApiKey realm="immport", header="x-api-key", ApiKey realm="immport", query="api_key""#
    )
}

/// The 401 description of `immport_config()` when no key is presented.
const IMMPORT_MISSING: &str = "API key required; accepted: Authorization: Bearer, \
    Authorization: ApiKey, Authorization: Basic (user apikey), header x-api-key or query \
    parameter api_key";

fn gateway() -> (Upstream, Envoy) {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&immport_config(), &upstream);
    (upstream, envoy)
}

/// Asserts a local reply exactly as README "Responses" says, and that nothing reached the upstream.
fn assert_refused(
    upstream: &Upstream,
    response: &Response,
    status: u16,
    challenge: Option<&str>,
    error: &str,
    description: &str,
) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("www-authenticate"), challenge);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(
        response.json(),
        json!({"error": error, "error_description": description})
    );
    let seen = upstream.take();
    assert!(
        seen.is_empty(),
        "a refused request reached upstream: {seen:?}"
    );
}

fn assert_identity(seen: &Seen, id: &str, owner: &str, scopes: &str) {
    assert_eq!(seen.header("x-api-key-id"), Some(id));
    assert_eq!(seen.header("x-api-key-owner"), Some(owner));
    assert_eq!(seen.header("x-api-key-scopes"), Some(scopes));
}

fn basic(user: &str, key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
    )
}

#[test]
fn allowed_request_reaches_upstream_with_identity_and_without_credential() {
    let (upstream, envoy) = gateway();
    let response = envoy.send(&Request::get("/data/query/studies?limit=10").bearer(BROWSE));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/data/query/studies?limit=10");
    assert_identity(&seen, "k-browse", "alice", "browse");
    assert_eq!(seen.header("authorization"), None);

    // The echo the client got is what the upstream saw.
    assert_eq!(
        response.json()["headers"]["x-api-key-id"],
        json!(["k-browse"])
    );

    // A key with several scopes forwards them space-separated, in its record's order.
    let response = envoy.send(&Request::get("/data/download/file.csv").bearer(DOWNLOAD));
    assert_eq!(response.status, 200);
    assert_identity(&upstream.take_one(), "k-download", "bob", "browse download");

    // Nanosecond expiry with an offset, far in the future: still valid.
    let response = envoy.send(&Request::get("/data/query").bearer(FUTURE));
    assert_eq!(response.status, 200);
    assert_identity(&upstream.take_one(), "k-future", "frank", "browse");
}

#[test]
fn every_credential_form_is_accepted_and_hidden() {
    let (upstream, envoy) = gateway();
    let forms = [
        ("Authorization", format!("Bearer {UPLOAD}")),
        ("Authorization", format!("bearer {UPLOAD}")),
        ("Authorization", format!("BEARER   {UPLOAD}  ")),
        ("Authorization", format!("ApiKey {UPLOAD}")),
        ("Authorization", format!("apikey {UPLOAD}")),
        ("Authorization", basic("apikey", UPLOAD)),
        ("Authorization", format!("Bearer apikey|{UPLOAD}")),
        ("X-Api-Key", UPLOAD.to_string()),
        ("x-api-key", format!("apikey|{UPLOAD}")),
    ];
    for (name, value) in &forms {
        let response = envoy.send(
            &Request::new("POST", "/data/upload/batch")
                .header(name, value)
                .body("{}"),
        );
        assert_eq!(response.status, 200, "{name}: {value}: {}", response.text());
        let seen = upstream.take_one();
        assert_identity(&seen, "k-upload", "carol", "browse upload");
        assert_eq!(seen.header("authorization"), None, "{name}: {value}");
        assert_eq!(seen.header("x-api-key"), None, "{name}: {value}");
    }

    // The query parameter is removed from what is forwarded; other parameters stay, in order.
    let response = envoy.send(&Request::get(&format!(
        "/data/query/x?a=1&api_key={BROWSE}&b=2"
    )));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.target, "/data/query/x?a=1&b=2");
    assert_identity(&seen, "k-browse", "alice", "browse");

    let response = envoy.send(&Request::get(&format!("/data/query?api_key={BROWSE}")));
    assert_eq!(response.status, 200);
    assert_eq!(upstream.take_one().target, "/data/query");

    // The same key in two places is one credential.
    let response = envoy.send(
        &Request::get(&format!("/data/query?api_key={BROWSE}"))
            .bearer(BROWSE)
            .header("x-api-key", BROWSE),
    );
    assert_eq!(response.status, 200);
    let seen = upstream.take_one();
    assert_eq!(seen.target, "/data/query");
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
}

#[test]
fn responses_follow_the_spec_table() {
    let (upstream, envoy) = gateway();
    let get = |target: &str| Request::get(target);

    // 401 without `error` when no credential is presented (RFC 6750 §3.1).
    assert_refused(
        &upstream,
        &envoy.send(&get("/data/query")),
        401,
        Some(&immport_challenge("")),
        "unauthorized",
        IMMPORT_MISSING,
    );
    // A Basic credential for another user is not an API key.
    assert_refused(
        &upstream,
        &envoy.send(&get("/data/query").header("Authorization", basic("alice", BROWSE))),
        401,
        Some(&immport_challenge("")),
        "unauthorized",
        IMMPORT_MISSING,
    );

    let invalid_request = immport_challenge(r#", error="invalid_request""#);
    let invalid_request = Some(invalid_request.as_str());
    for (name, value) in [
        ("Authorization", "Basic %%%not-base64%%%".to_string()),
        ("Authorization", format!("Basic {}", "YXBpa2V5")), // "apikey", no colon
        ("Authorization", "Bearer".to_string()),
        ("Authorization", "Bearer    ".to_string()),
        ("Authorization", format!("Bearer {BROWSE} extra")),
    ] {
        let response = envoy.send(&get("/data/query").header(name, &value));
        assert_eq!(response.status, 400, "{value}: {}", response.text());
        assert_eq!(response.header("www-authenticate"), invalid_request);
        assert_eq!(response.json()["error"], "invalid_request");
        assert!(upstream.take().is_empty());
    }

    // Two different keys: conflicting credentials.
    let response = envoy.send(
        &get("/data/query")
            .bearer(BROWSE)
            .header("x-api-key", DOWNLOAD),
    );
    assert_eq!(response.status, 400);
    assert_eq!(response.header("www-authenticate"), invalid_request);
    assert!(response.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("conflicting"));
    assert!(upstream.take().is_empty());

    let invalid_token = immport_challenge(r#", error="invalid_token""#);
    let invalid_token = Some(invalid_token.as_str());
    assert_refused(
        &upstream,
        &envoy.send(&get("/data/query").bearer("kg_not_a_key_we_know")),
        401,
        invalid_token,
        "invalid_token",
        "unknown API key",
    );
    assert_refused(
        &upstream,
        &envoy.send(&get("/data/query").bearer(EXPIRED)),
        401,
        invalid_token,
        "invalid_token",
        "API key expired",
    );
    assert_refused(
        &upstream,
        &envoy.send(&get("/data/query").bearer(DISABLED)),
        401,
        invalid_token,
        "invalid_token",
        "API key disabled",
    );

    // A valid key without the route's scope.
    assert_refused(
        &upstream,
        &envoy.send(&Request::new("POST", "/data/upload/x").bearer(DOWNLOAD)),
        403,
        Some(&immport_challenge(
            r#", error="insufficient_scope", scope="upload""#,
        )),
        "insufficient_scope",
        "requires scope upload",
    );
    assert_refused(
        &upstream,
        &envoy.send(&get("/admin/keys").bearer(UPLOAD)),
        403,
        Some(&immport_challenge(
            r#", error="insufficient_scope", scope="admin""#,
        )),
        "insufficient_scope",
        "requires scope admin",
    );
}

#[test]
fn no_raw_key_in_any_answer() {
    let (upstream, envoy) = gateway();
    for request in [
        Request::get("/data/query").bearer("kg_this_key_is_unknown_123"),
        Request::get("/data/query").bearer(EXPIRED),
        Request::get("/data/upload").bearer(DOWNLOAD),
        Request::get("/nowhere").bearer(BROWSE),
    ] {
        let response = envoy.send(&request);
        assert!(response.status >= 400);
        let everything = format!("{:?}{}", response.headers, response.text());
        for key in ["kg_this_key_is_unknown_123", EXPIRED, DOWNLOAD, BROWSE] {
            assert!(!everything.contains(key), "{everything}");
        }
    }
    assert!(upstream.take().is_empty());
    let log = envoy.log();
    for key in [EXPIRED, DOWNLOAD, BROWSE, UPLOAD] {
        assert!(!log.contains(key), "the Envoy log holds a raw key");
    }
}

#[test]
fn read_only_keys_may_only_read() {
    let (upstream, envoy) = gateway();
    for method in ["GET", "HEAD"] {
        let response = envoy.send(&Request::new(method, "/data/download/f").bearer(READ_ONLY));
        assert_eq!(response.status, 200, "{method}");
        assert_identity(
            &upstream.take_one(),
            "k-readonly",
            "vspc-operator",
            "browse download upload",
        );
    }
    // OPTIONS passes the read-only check; the route's scope still applies.
    let response = envoy.send(&Request::new("OPTIONS", "/data/download/f").bearer(READ_ONLY));
    assert_eq!(response.status, 200);
    upstream.take_one();

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        assert_refused(
            &upstream,
            &envoy.send(&Request::new(method, "/data/upload/f").bearer(READ_ONLY)),
            403,
            Some(&immport_challenge(r#", error="insufficient_scope""#)),
            "insufficient_scope",
            "read-only API key may only use GET, HEAD and OPTIONS",
        );
    }
    // Even on a public route: a presented key is checked as anywhere else.
    let response = envoy.send(&Request::new("POST", "/healthz").bearer(READ_ONLY));
    assert_eq!(response.status, 403);
    assert!(upstream.take().is_empty());
}

#[test]
fn rules_match_first_by_segment_and_method() {
    let (upstream, envoy) = gateway();
    // Segment-aware prefix: /data/queryx is not under /data/query, so no rule: 403.
    assert_refused(
        &upstream,
        &envoy.send(&Request::get("/data/queryx").bearer(BROWSE)),
        403,
        Some(&immport_challenge(r#", error="insufficient_scope""#)),
        "insufficient_scope",
        "no rule allows this route",
    );
    // Unmatched under "deny" is 403 even without a key.
    let response = envoy.send(&Request::get("/elsewhere"));
    assert_eq!(response.status, 403);
    // The method limits the rule: POST on /data/query matches nothing.
    let response = envoy.send(&Request::new("POST", "/data/query").bearer(BROWSE));
    assert_eq!(response.status, 403);
    // Exact path: /admin/keys/x is not /admin/keys.
    assert_eq!(
        envoy
            .send(&Request::get("/admin/keys/x").bearer(BROWSE))
            .json()["error_description"],
        "no rule allows this route"
    );
    assert!(upstream.take().is_empty());

    let response = envoy.send(&Request::get("/data/query/deep/er").bearer(BROWSE));
    assert_eq!(response.status, 200);
    upstream.take_one();
}

#[test]
fn public_routes_pass_without_a_key_and_still_check_one() {
    let (upstream, envoy) = gateway();
    let response = envoy.send(&Request::get("/healthz"));
    assert_eq!(response.status, 200);
    let seen = upstream.take_one();
    assert_eq!(seen.header("x-api-key-id"), None);

    let response = envoy.send(&Request::get("/healthz/live").bearer(DOWNLOAD));
    assert_eq!(response.status, 200);
    assert_identity(&upstream.take_one(), "k-download", "bob", "browse download");

    for key in ["kg_unknown_public_probe", EXPIRED, DISABLED] {
        let response = envoy.send(&Request::get("/healthz").bearer(key));
        assert_eq!(response.status, 401, "{key}");
        assert_eq!(response.json()["error"], "invalid_token");
    }
    let response = envoy.send(&Request::get("/healthz").header("Authorization", "Basic ???"));
    assert_eq!(response.status, 400);
    assert!(upstream.take().is_empty());
}

#[test]
fn spoofed_identity_headers_never_reach_upstream() {
    let (upstream, envoy) = gateway();
    let spoof = |request: Request| {
        request
            .header("X-Api-Key-Id", "k-admin")
            .header("x-api-key-owner", "root")
            .header("X-API-KEY-SCOPES", "admin")
            .header("x-api-key-scopes", "admin browse")
    };
    // A public route, no key: stripped, nothing added.
    let response = envoy.send(&spoof(Request::get("/healthz")));
    assert_eq!(response.status, 200);
    let seen = upstream.take_one();
    for name in ["x-api-key-id", "x-api-key-owner", "x-api-key-scopes"] {
        assert!(seen.values(name).is_empty(), "{name}: {seen:?}");
    }
    // Lookalikes with underscores, which CGI-style servers read as the same header.
    let response = envoy.send(
        &Request::get("/healthz")
            .header("x_api_key_id", "k-admin")
            .header("X_Api_Key_Owner", "root"),
    );
    assert_eq!(response.status, 200);
    let seen = upstream.take_one();
    assert!(seen.values("x_api_key_id").is_empty(), "{seen:?}");
    assert!(seen.values("x_api_key_owner").is_empty(), "{seen:?}");
    // An allowed request: exactly one value of each, the real one.
    let response = envoy.send(&spoof(Request::get("/data/query").bearer(BROWSE)));
    assert_eq!(response.status, 200);
    assert_identity(&upstream.take_one(), "k-browse", "alice", "browse");
}

#[test]
fn paths_are_normalized_before_matching_and_forwarded_normalized() {
    let (upstream, envoy) = gateway();
    for (raw, forwarded) in [
        ("/data/upload/../query/x", "/data/query/x"),
        ("//data///query/./x", "/data/query/x"),
        ("/data/%71uery/x?q=%2F", "/data/query/x?q=%2F"),
    ] {
        let response = envoy.send(&Request::get(raw).bearer(BROWSE));
        assert_eq!(response.status, 200, "{raw}: {}", response.text());
        assert_eq!(upstream.take_one().target, forwarded, "{raw}");
    }
    // A route reached through dot segments is judged by where it leads.
    let response = envoy.send(&Request::get("/data/query/../../admin/keys").bearer(BROWSE));
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error_description"], "requires scope admin");
    // `;` parameters are ignored when matching (Tomcat drops them before routing).
    // A trailing slash or a segment of parameters only does not escape an exact rule.
    for raw in [
        "/admin/keys;jsessionid=1",
        "/;x/admin/keys",
        "/admin/;/keys",
        "/admin/keys/",
    ] {
        let response = envoy.send(&Request::get(raw).bearer(BROWSE));
        assert_eq!(
            response.json()["error_description"],
            "requires scope admin",
            "{raw}"
        );
    }

    // An encoded slash, backslash or NUL is refused, never decoded.
    for raw in [
        "/data/query%2F..%2F..%2Fadmin",
        "/data/query/a%2fb",
        "/data/query/%5Cx",
        "/data/query/%00",
        "/data/query/../../../etc/passwd",
    ] {
        let response = envoy.send(&Request::get(raw).bearer(BROWSE));
        assert_eq!(response.status, 400, "{raw}: {}", response.text());
        assert_eq!(response.json()["error"], "invalid_request", "{raw}");
    }
    assert!(upstream.take().is_empty());
}

#[test]
fn credentials_stay_when_hide_credentials_is_off_and_names_are_configurable() {
    let upstream = Upstream::start();
    let config = json!({
        "realm": "labkey",
        "sources": [{"authorization": {"schemes": ["Basic"], "basic_username": "apikey"}},
                    {"header": "apikey"}, {"query": "token"}],
        "hide_credentials": false,
        "forward": {"id": "x-labkey-key", "owner": "x-labkey-user", "scopes": "x-labkey-perms"},
        "keys": [{"id": "lk-1", "hash": hash_of("0123456789abcdef"), "owner": "labuser",
                  "scopes": ["read"]}],
        "unmatched": "authenticate"
    });
    let envoy = Envoy::start(&config, &upstream);

    let authorization = basic("apikey", "apikey|0123456789abcdef");
    let response = envoy.send(
        &Request::get("/labkey/project/begin.view?token=0123456789abcdef")
            .header("Authorization", &authorization)
            .header("x-labkey-user", "spoofed"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.take_one();
    assert_eq!(seen.header("authorization"), Some(authorization.as_str()));
    assert_eq!(
        seen.target,
        "/labkey/project/begin.view?token=0123456789abcdef"
    );
    assert_eq!(seen.header("x-labkey-key"), Some("lk-1"));
    assert_eq!(seen.header("x-labkey-user"), Some("labuser"));
    assert_eq!(seen.header("x-labkey-perms"), Some("read"));
    assert_eq!(seen.header("x-api-key-id"), None);

    let response = envoy.send(&Request::get("/any").header("apikey", "0123456789abcdef"));
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream.take_one().header("apikey"),
        Some("0123456789abcdef")
    );

    // "authenticate": unmatched routes need a valid key, of any scope.
    let response = envoy.send(&Request::get("/any"));
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            r#"Basic realm="labkey", ApiKey realm="labkey", header="apikey", ApiKey realm="labkey", query="token""#
        )
    );
    // Bearer is not among this config's schemes: not a credential here. The answer names
    // the ways that are, and not the key.
    let response = envoy.send(&Request::get("/any").bearer("0123456789abcdef"));
    assert_eq!(response.status, 401);
    assert_eq!(
        response.json()["error_description"],
        "API key required; accepted: Authorization: Basic (user apikey), header apikey or \
         query parameter token"
    );
    assert!(!response.text().contains("0123456789abcdef"));
    assert!(upstream.take().is_empty());
}

#[test]
fn hostile_bytes_are_refused_without_harming_the_filter() {
    let (upstream, envoy) = gateway();
    let hostile: [(&str, &[u8]); 4] = [
        ("Authorization", b"Bearer kg_\xff\xfe"),
        ("Authorization", b"Bearer \xc3\xa9t\xc3\xa9"),
        ("x-api-key", b"kg_\x80abc"),
        ("Authorization", b"Basic \xff"),
    ];
    for (name, value) in hostile {
        let response = envoy.send(&Request::get("/data/query").header(name, value));
        assert!(
            response.status == 400 || response.status == 401,
            "{name}: {value:?}: {}",
            response.status
        );
    }
    let response = envoy.send(&Request::get("/data/query/caf\u{e9}").bearer(BROWSE));
    assert_eq!(response.status, 400);
    assert!(upstream.take().is_empty());
    // The VM is alive and was never restarted.
    assert_eq!(
        envoy
            .send(&Request::get("/data/query").bearer(BROWSE))
            .status,
        200
    );
    assert_eq!(upstream.take().len(), 1);
    envoy.assert_no_vm_reload();
}

#[test]
fn access_log_never_records_a_query_key() {
    let upstream = Upstream::start();
    let dir = support::TempDir::new("access-log");
    let log = dir.path().join("access.log");
    let mut bootstrap = support::bootstrap(&immport_config(), upstream.addr, 0);
    support::with_access_log(&mut bootstrap, &log, "%RESPONSE_CODE% %REQ(:PATH)%\n");
    let options = support::EnvoyOptions {
        extra_args: vec!["--file-flush-interval-msec", "50"],
        ..support::EnvoyOptions::default()
    };
    let envoy = Envoy::start_bootstrap(&bootstrap, options);
    let requests = [
        (format!("/data/query?a=1&api_key={BROWSE}"), 200),
        (format!("/data/upload?api_key={BROWSE}&b=2"), 403),
        ("/data/query?api_key=kg_guess_0001".to_string(), 401),
        (format!("/data/query?api_key={EXPIRED}"), 401),
    ];
    for (target, status) in &requests {
        assert_eq!(
            envoy.send(&Request::get(target)).status,
            *status,
            "{target}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut text = String::new();
    while text.lines().count() < requests.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    drop(envoy);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "200 /data/query?a=1",
            "403 /data/upload?b=2",
            "401 /data/query",
            "401 /data/query"
        ],
        "{text}"
    );
}

#[test]
fn a_key_is_refused_from_its_expires_at_on_to_the_millisecond() {
    use std::time::{Duration, SystemTime};
    // Long enough for Envoy to start and answer once before it; on a machine so loaded
    // that Envoy started too late for that, again with a longer lifetime.
    let upstream = Upstream::start();
    let (envoy, expires, expires_at) = [4, 15, 45]
        .into_iter()
        .find_map(|seconds| {
            let expires = SystemTime::now() + Duration::from_secs(seconds);
            let expires_at = time::OffsetDateTime::from(expires)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            let mut config = immport_config();
            config["keys"].as_array_mut().unwrap().push(
                json!({"id": "k-soon", "hash": hash_of(EXPIRED_SOON), "owner": "gina",
                       "scopes": ["browse"], "expires_at": expires_at}),
            );
            let envoy = Envoy::start(&config, &upstream);
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            (left > Duration::from_secs(1)).then_some((envoy, expires, expires_at))
        })
        .expect("Envoy never started within 44 s");
    let status = || {
        envoy
            .send(&Request::get("/data/query").bearer(EXPIRED_SOON))
            .status
    };
    assert_eq!(status(), 200, "before {expires_at}");
    // Just past the instant: no grace, not even the half second a clock read on the
    // VM's tick would give.
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    std::thread::sleep(wait + Duration::from_millis(20));
    assert_eq!(status(), 401, "after {expires_at}");
}
