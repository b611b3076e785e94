//! Missing credentials, public routes, unmatched routes.

use super::*;

#[test]
fn missing_credential_on_protected_route_is_missing() {
    let c = config();
    for (method, path) in [
        ("GET", "/data/query"),
        ("GET", "/data/download/x"),
        ("POST", "/data/upload"),
        ("GET", "/admin/keys"),
    ] {
        let h = request(method, path, &[]);
        let d = denied(decide(&c, &h, no_clock));
        assert_eq!(d, Denial::Missing, "{method} {path}");
        assert_eq!(d.outcome(), Outcome::Missing);
    }
}

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

#[test]
fn unmatched_deny_without_key_is_no_rule() {
    let c = config();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/other"),
        ("POST", "/data/query"),
        ("DELETE", "/data/upload/x"),
        ("GET", "/admin/keys/1"),
    ] {
        let h = request(method, path, &[]);
        let d = denied(decide(&c, &h, no_clock));
        assert_eq!(d, Denial::NoRule, "{method} {path}");
        assert_eq!(d.outcome(), Outcome::Forbidden);
    }
}

#[test]
fn unmatched_deny_with_valid_key_is_no_rule() {
    let c = config();
    for key in [ALICE, ADMIN, NOSCOPE] {
        let h = request("GET", "/other", &[("authorization", &bearer(key))]);
        assert_eq!(denied(run(&c, &h)), Denial::NoRule, "{key}");
    }
}

#[test]
fn unmatched_is_deny_by_default() {
    let mut doc = base_doc();
    doc.as_object_mut().unwrap().remove("unmatched");
    let c = config_from(&doc);
    let h = request("GET", "/other", &[("authorization", &bearer(ADMIN))]);
    assert_eq!(denied(run(&c, &h)), Denial::NoRule);
}

#[test]
fn unmatched_deny_with_unknown_key_is_still_an_invalid_key() {
    // An invalid key is rejected as anywhere else (401), before the route is considered.
    let c = config();
    let h = request("GET", "/other", &[("authorization", &bearer(UNKNOWN))]);
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
        let h = request("DELETE", "/other/thing", &[("authorization", &bearer(key))]);
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
    let unknown = request("GET", "/other", &[("authorization", &bearer(UNKNOWN))]);
    assert_eq!(denied(run(&c, &unknown)), Denial::UnknownKey);
    let expired = request("GET", "/other", &[("authorization", &bearer(EXPIRED))]);
    assert!(matches!(denied(run(&c, &expired)), Denial::Expired(_)));
    let disabled = request("GET", "/other", &[("authorization", &bearer(DISABLED))]);
    assert!(matches!(denied(run(&c, &disabled)), Denial::Disabled(_)));
    // A matched rule still needs its scopes.
    let scoped = request("GET", "/admin/keys", &[("authorization", &bearer(NOSCOPE))]);
    assert!(matches!(
        denied(run(&c, &scoped)),
        Denial::MissingScope {
            needed: "admin",
            ..
        }
    ));
}
