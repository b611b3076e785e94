//! Path normalization, and the path forwarded upstream.

use super::*;

#[test]
fn rules_match_the_normalized_path_and_it_is_forwarded() {
    let c = config();
    for (raw, normal) in [
        ("/data//query/../query/x", "/data/query/x"),
        ("//data///query", "/data/query"),
        ("/data/./query", "/data/query"),
        ("/data/upload/../query", "/data/query"),
        ("/data/%71uery", "/data/query"),
        ("/%64ata/query/%7Ex", "/data/query/~x"),
        // The query string is kept as sent (a former test).
        (
            "/data//query/./x?b=2&a=1&a=%2F&flag",
            "/data/query/x?b=2&a=1&a=%2F&flag",
        ),
    ] {
        let h = with_bearer("GET", raw, ALICE);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{raw}");
        assert_eq!(a.new_path.as_deref(), Some(normal), "{raw}");
    }
}

#[test]
fn dot_segments_cannot_reach_a_protected_route_through_a_public_one() {
    let c = config();
    for raw in [
        "/healthz/../admin/keys",
        "/healthz/%2e%2e/admin/keys",
        "/healthz/./../admin//keys",
    ] {
        let h = request("GET", raw, &[]);
        assert_eq!(denied(run(&c, &h)), Denial::Missing, "{raw}");
        let h = with_bearer("GET", raw, ALICE);
        assert_eq!(needed_scope(run(&c, &h)), "admin", "{raw}");
    }
}

#[test]
fn dot_segments_into_a_public_route_are_public_and_normalized() {
    let c = config();
    let h = request("GET", "/admin/../healthz", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(a.new_path.as_deref(), Some("/healthz"));
}

/// Bad paths are a 400 on protected and public routes alike, with a key and without, the
/// clock never read; the reason contains the row's text. Rows: encoded `/`, `\` and NUL;
/// `..` above the root; other malformed paths (three former tests).
#[test]
fn bad_paths_are_bad_requests_with_or_without_a_key() {
    let c = config();
    for (raw, reason) in [
        ("/data%2Fquery", "request path"),
        ("/data%2fquery", "request path"),
        ("/data/query%5Cx", "request path"),
        ("/data/query%00", "request path"),
        ("/healthz%2F..%2Fadmin/keys", "request path"),
        ("/..", ".."),
        ("/../admin/keys", ".."),
        ("/data/../../x", ".."),
        ("/healthz/../../healthz", ".."),
        ("healthz", ""),
        ("*", ""),
        ("", ""),
        ("/healthz\\x", ""),
        ("/healthz#frag", ""),
        ("/healthz/%zz", ""),
        ("/healthz/..;/admin", ""),
        ("/healthz/caf\u{e9}", ""),
    ] {
        for h in [request("GET", raw, &[]), with_bearer("GET", raw, ADMIN)] {
            let why = assert_bad_request(decide(&c, &h, no_clock));
            assert!(why.contains(reason), "{raw}: {why}");
        }
    }
}

#[test]
fn path_is_checked_before_the_credential() {
    let c = config();
    // Bad path and conflicting keys: the path is what the 400 names.
    let h = request(
        "GET",
        "/data%2Fquery",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
    );
    assert!(assert_bad_request(run(&c, &h)).contains("%2F"));
}

#[test]
fn prefix_rules_are_segment_aware() {
    let c = config();
    for raw in ["/data/queryx", "/data/query-x", "/healthzx", "/data"] {
        let h = with_bearer("GET", raw, ADMIN);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{raw}");
    }
    let h = request("GET", "/healthzx", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn exact_path_rule_matches_only_that_path() {
    let c = config();
    let ok = with_bearer("GET", "/admin/keys", ADMIN);
    assert_allowed_as(run(&c, &ok), "id-admin");
    for raw in ["/admin/keys/1", "/admin", "/admin/keysx"] {
        let h = with_bearer("GET", raw, ADMIN);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{raw}");
    }
    // A trailing slash names the same resource to many frameworks: the rule still applies.
    let h = with_bearer("GET", "/admin/keys/", ALICE);
    assert_eq!(needed_scope(run(&c, &h)), "admin");
    // But a path that normalizes to it matches.
    let h = with_bearer("GET", "/admin//keys", ADMIN);
    assert_eq!(
        allowed(run(&c, &h)).new_path.as_deref(),
        Some("/admin/keys")
    );
}

#[test]
fn query_string_is_not_part_of_the_matched_path() {
    let c = config();
    let h = with_bearer("GET", "/admin/keys?x=/../healthz", ALICE);
    assert_eq!(needed_scope(run(&c, &h)), "admin");
    let h = request("GET", "/healthz?next=/admin/keys", &[]);
    assert_eq!(allowed(run(&c, &h)).key, None);
}

#[test]
fn new_path_is_none_when_the_path_is_unchanged() {
    let c = config();
    for raw in [
        "/data/query",
        "/data/query/",
        "/data/query?q=1&r=two",
        "/data/query/x;y=1",
        "/data/query/%C3%A9",
        "/data/query?",
    ] {
        let h = with_bearer("GET", raw, ALICE);
        let a = allowed(run(&c, &h));
        assert_eq!(a.new_path, None, "{raw}");
        assert!(!edits(&a, &c)
            .iter()
            .any(|e| matches!(e, Edit::Set(n, _) if n == ":path")));
    }
    let public = request("GET", "/healthz", &[]);
    assert_eq!(allowed(run(&c, &public)).new_path, None);
}

#[test]
fn query_credential_is_removed_from_the_forwarded_path() {
    let c = config();
    for (sent, forwarded) in [
        (
            "/data/query?z=26&api_key=KEY&a=1&m=%20x",
            "/data/query?z=26&a=1&m=%20x",
        ),
        ("/data/query?api_key=KEY", "/data/query"),
        (
            "/data/query?api_key=KEY&keep=1&api%5Fkey=apikey%7CKEY",
            "/data/query?keep=1",
        ),
        ("/data/./query//x?a=1&api_key=KEY", "/data/query/x?a=1"),
        ("/healthz?api_key=KEY&v=1", "/healthz?v=1"),
    ] {
        let h = request("GET", &sent.replace("KEY", ALICE), &[]);
        let a = assert_allowed_as(run(&c, &h), "id-alice");
        assert_eq!(a.new_path.as_deref(), Some(forwarded), "{sent}");
    }
}

#[test]
fn query_credential_is_kept_when_hide_credentials_is_false() {
    let c = config_with("hide_credentials", json!(false));
    let h = request("GET", &format!("/data/query?a=1&api_key={ALICE}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0);
    assert_eq!(a.new_path, None);
    // Normalization still applies, and the query is kept whole.
    let h = request("GET", &format!("/data//query?a=1&api_key={ALICE}"), &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(
        a.new_path.as_deref(),
        Some(format!("/data/query?a=1&api_key={ALICE}").as_str())
    );
}

#[test]
fn query_parameters_are_untouched_when_the_key_came_from_a_header() {
    let c = config();
    let h = request(
        "GET",
        "/data/query?api_keys=1&xapi_key=2",
        &[("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.new_path, None);
}
