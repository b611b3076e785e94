//! Missing credentials, public routes, unmatched routes.

use super::*;

#[test]
fn missing_credential_on_public_route_is_allowed_without_key() {
    let c = config();
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/healthz/live"),
        ("GET", "/healthz/"),
    ] {
        let h = request(method, path, &[]);
        let v = decide(&c, &h, no_clock);
        assert_eq!(v.outcome(), Outcome::Public, "{method} {path}");
        let a = allowed(v);
        assert_eq!(a.key, None);
        assert_eq!(a.hide_sources, 0);
        assert_eq!(a.new_path, None);
    }
}

/// Without a key: a protected route asks for one, a route no rule covers is refused, and so
/// is a method its rule does not list (two former tests).
#[test]
fn without_a_key_protected_routes_are_missing_and_unmatched_ones_refused() {
    let c = config();
    for (method, path, denial, outcome) in [
        ("GET", "/data/query", Denial::Missing, Outcome::Missing),
        ("GET", "/data/download/x", Denial::Missing, Outcome::Missing),
        ("POST", "/data/upload", Denial::Missing, Outcome::Missing),
        ("GET", "/admin/keys", Denial::Missing, Outcome::Missing),
        ("GET", "/", Denial::NoRule, Outcome::Forbidden),
        ("GET", "/other", Denial::NoRule, Outcome::Forbidden),
        ("GET", "/admin/keys/1", Denial::NoRule, Outcome::Forbidden),
        (
            "POST",
            "/data/query",
            Denial::MethodNotListed,
            Outcome::Forbidden,
        ),
        (
            "DELETE",
            "/data/upload/x",
            Denial::MethodNotListed,
            Outcome::Forbidden,
        ),
    ] {
        let d = denied(decide(&c, &request(method, path, &[]), no_clock));
        assert_eq!(d, denial, "{method} {path}");
        assert_eq!(d.outcome(), outcome, "{method} {path}");
    }
}

#[test]
fn unmatched_deny_with_valid_key_is_no_rule() {
    let c = config();
    for key in [ALICE, ADMIN, NOSCOPE] {
        let h = with_bearer("GET", "/other", key);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{key}");
    }
}

#[test]
fn unmatched_is_deny_by_default() {
    let mut doc = base_doc();
    doc.as_object_mut().unwrap().remove("unmatched");
    let c = config_from(&doc);
    let h = with_bearer("GET", "/other", ADMIN);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn unmatched_deny_with_unknown_key_is_still_an_invalid_key() {
    // An invalid key is rejected as anywhere else (401), before the route is considered.
    let c = config();
    let h = with_bearer("GET", "/other", UNKNOWN);
    assert_eq!(denied(run(&c, &h)), Denial::UnknownKey);
}

#[test]
fn unmatched_authenticate_lets_any_valid_key_pass() {
    let c = config_with("unmatched", json!("authenticate"));
    for (key, id) in [
        (ALICE, "id-alice"),
        (NOSCOPE, "id-noscope"),
        (ADMIN, "id-admin"),
    ] {
        let h = with_bearer("DELETE", "/other/thing", key);
        let v = run(&c, &h);
        assert_eq!(v.outcome(), Outcome::Allowed);
        assert_allowed_as(v, id);
    }
}

#[test]
fn unmatched_authenticate_without_key_is_missing() {
    let c = config_with("unmatched", json!("authenticate"));
    let h = request("GET", "/other", &[]);
    assert_eq!(denied(decide(&c, &h, no_clock)), Denial::Missing);
}

#[test]
fn unmatched_authenticate_still_refuses_invalid_keys_and_rules_still_apply() {
    let c = config_with("unmatched", json!("authenticate"));
    let unknown = with_bearer("GET", "/other", UNKNOWN);
    assert_eq!(denied(run(&c, &unknown)), Denial::UnknownKey);
    let expired = with_bearer("GET", "/other", EXPIRED);
    assert!(matches!(denied(run(&c, &expired)), Denial::Expired(_)));
    let disabled = with_bearer("GET", "/other", DISABLED);
    assert!(matches!(denied(run(&c, &disabled)), Denial::Disabled(_)));
    // A matched rule still needs its scopes.
    let scoped = with_bearer("GET", "/admin/keys", NOSCOPE);
    assert_eq!(needed_scope(run(&c, &scoped)), "admin");
}

/// The rules: method-limited, everything else to any valid key.
fn method_limited_under(unmatched: &str) -> Config {
    let mut doc = base_doc();
    doc["rules"] = json!([
        {"path_prefix": "/admin", "methods": ["GET", "HEAD"], "scopes": ["admin"]},
        {"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]}
    ]);
    doc["unmatched"] = json!(unmatched);
    config_from(&doc)
}

#[test]
fn methods_a_rule_does_not_list_are_refused_not_authenticated() {
    for unmatched in ["authenticate", "deny"] {
        let c = method_limited_under(unmatched);
        for (method, path) in [
            ("POST", "/admin/users"),
            ("DELETE", "/admin/users/1"),
            ("PATCH", "/data/upload/f"),
            ("GET", "/data/upload/f"),
            ("post", "/admin"),
        ] {
            for key in [ALICE, ADMIN, NOSCOPE] {
                let h = with_bearer(method, path, key);
                let d = denied(run(&c, &h));
                assert_eq!(d, Denial::MethodNotListed, "{unmatched}: {method} {path}");
                assert_eq!(d.outcome(), Outcome::Forbidden);
            }
            // Without a key: the same refusal, not a request for a key.
            let h = request(method, path, &[]);
            let d = denied(decide(&c, &h, no_clock));
            assert_eq!(d, Denial::MethodNotListed, "{unmatched}: {method} {path}");
        }
    }
}

#[test]
fn methods_a_rule_lists_and_uncovered_paths_are_unchanged() {
    let c = method_limited_under("authenticate");
    let h = with_bearer("GET", "/admin/users", ADMIN);
    assert_allowed_as(run(&c, &h), "id-admin");
    let h = with_bearer("GET", "/admin/users", ALICE);
    assert_eq!(needed_scope(run(&c, &h)), "admin");
    let h = with_bearer("PUT", "/data/upload/f", UPLOADER);
    assert_allowed_as(run(&c, &h), "id-uploader");
    // Paths no rule covers, including look-alikes of covered ones, stay `authenticate`'s.
    for path in ["/other", "/administrator", "/data/uploads", "/data"] {
        let h = with_bearer("DELETE", path, NOSCOPE);
        assert_allowed_as(run(&c, &h), "id-noscope");
    }
    // An invalid key is still a 401 before the route is considered.
    let h = with_bearer("POST", "/admin/users", UNKNOWN);
    assert_eq!(denied(run(&c, &h)), Denial::UnknownKey);
}

#[test]
fn a_later_rule_listing_the_method_still_decides() {
    let c = config_with(
        "rules",
        json!([
            {"path_prefix": "/items", "methods": ["GET"], "scopes": ["browse"]},
            {"path_prefix": "/items/special", "methods": ["POST"], "scopes": ["upload"]}
        ]),
    );
    let h = with_bearer("POST", "/items/special", UPLOADER);
    assert_allowed_as(run(&c, &h), "id-uploader");
    let h = with_bearer("POST", "/items/other", UPLOADER);
    assert_eq!(denied(run(&c, &h)), Denial::MethodNotListed);
}

#[test]
fn a_method_not_listed_while_keys_are_unavailable_is_still_refused() {
    let c = method_limited_under("authenticate");
    let h = with_bearer("POST", "/admin/users", ADMIN);
    match begin(&c, &h) {
        Step::Key(check) => assert_eq!(
            check.unavailable(&c),
            Verdict::Deny(Denial::MethodNotListed)
        ),
        Step::Done(v) => panic!("expected a key check, got {v:?}"),
    }
}
