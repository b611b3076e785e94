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
        assert!(matches!(d, Denial::ReadOnly(_)), "{method}: {d:?}");
        assert_key_denial(&d, "id-ro", Outcome::Forbidden);
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

/// Where a key alone lets a request in, on a public route and under `unmatched:
/// authenticate`, a read-only key may read but not write (two former tests).
#[test]
fn read_only_key_writing_on_public_or_unmatched_routes_is_read_only() {
    for (c, write, path) in [
        (config(), "POST", "/healthz"),
        (
            config_with("unmatched", json!("authenticate")),
            "DELETE",
            "/other",
        ),
    ] {
        let h = with_bearer(write, path, READONLY);
        assert!(matches!(denied(run(&c, &h)), Denial::ReadOnly(_)), "{path}");
        let h = with_bearer("GET", path, READONLY);
        assert_allowed_as(run(&c, &h), "id-ro");
    }
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
    assert!(matches!(d, Denial::ReadOnlyUpgrade(_)), "{d:?}");
    assert_key_denial(&d, "id-ro", Outcome::Forbidden);
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
