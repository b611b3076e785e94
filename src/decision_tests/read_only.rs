//! read_only keys.

use super::*;

#[test]
fn read_only_key_may_get_head_and_options() {
    let c = config();
    for method in ["GET", "HEAD", "OPTIONS"] {
        let h = with_bearer(method, "/data/download/x", READONLY);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-ro"), "{method}");
    }
}

#[test]
fn read_only_key_may_not_write() {
    let c = config();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let h = with_bearer(method, "/data/download/x", READONLY);
        let d = denied(run(&c, &h));
        assert!(
            matches!(&d, Denial::ReadOnly(k) if k.id.as_str() == "id-ro"),
            "{method}: {d:?}"
        );
        assert_eq!(d.outcome(), Outcome::Forbidden);
        assert_eq!(d.key().map(|k| k.id.as_str()), Some("id-ro"));
    }
}

#[test]
fn read_only_key_holding_the_scope_still_may_not_upload() {
    let c = config();
    for method in ["POST", "PUT"] {
        let h = with_bearer(method, "/data/upload/f", READONLY);
        assert!(
            matches!(denied(run(&c, &h)), Denial::ReadOnly(_)),
            "{method}"
        );
    }
}

#[test]
fn read_only_key_writing_on_public_route_is_read_only() {
    let c = config();
    let h = with_bearer("POST", "/healthz", READONLY);
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)));
    let h = with_bearer("GET", "/healthz", READONLY);
    assert_allowed_as(run(&c, &h), "id-ro");
}

#[test]
fn read_only_key_writing_under_unmatched_authenticate_is_read_only() {
    let c = config_with("unmatched", json!("authenticate"));
    let h = with_bearer("DELETE", "/other", READONLY);
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)));
    let h = with_bearer("GET", "/other", READONLY);
    assert_allowed_as(run(&c, &h), "id-ro");
}

#[test]
fn read_only_key_may_not_upgrade_the_connection() {
    let c = config();
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let mut extra = vec![("authorization", bearer(READONLY))];
    extra.extend(upgrade.iter().map(|(n, v)| (*n, v.to_string())));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let h = request("GET", "/data/download/x", &extra);
    let d = denied(run(&c, &h));
    assert!(
        matches!(&d, Denial::ReadOnlyUpgrade(k) if k.id.as_str() == "id-ro"),
        "{d:?}"
    );
    assert_eq!(d.outcome(), Outcome::Forbidden);
    assert_eq!(d.key().map(|k| k.id.as_str()), Some("id-ro"));
    // On a public route too: the key presented is checked as anywhere else.
    let h = request("GET", "/healthz", &extra);
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnlyUpgrade(_)));
    // HTTP/2's extended CONNECT names the protocol in `:protocol`.
    let bearer_ro = bearer(READONLY);
    let h = request(
        "CONNECT",
        "/data/download/x",
        &[(":protocol", "websocket"), ("authorization", &bearer_ro)],
    );
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnlyUpgrade(_)));
    // A plain CONNECT is not a read.
    let h = request(
        "CONNECT",
        "/data/download/x",
        &[("authorization", &bearer_ro)],
    );
    assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)));
}

#[test]
fn a_key_that_may_write_may_upgrade() {
    let c = config();
    let auth = bearer(ALICE);
    let h = request(
        "GET",
        "/data/download/x",
        &[
            ("authorization", &auth),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    assert_allowed_as(run(&c, &h), "id-alice");
}
