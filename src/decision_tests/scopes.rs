//! Scopes and methods.

use super::*;

#[test]
fn key_holding_the_needed_scope_is_allowed() {
    let c = config();
    for (method, path, key, id) in [
        ("GET", "/data/query", ALICE, "id-alice"),
        ("HEAD", "/data/query/study/1", ALICE, "id-alice"),
        ("GET", "/data/download/file.csv", ALICE, "id-alice"),
        ("DELETE", "/data/download/file.csv", ALICE, "id-alice"),
        ("POST", "/data/upload", UPLOADER, "id-uploader"),
        ("PUT", "/data/upload/x", UPLOADER, "id-uploader"),
        ("GET", "/admin/keys", ADMIN, "id-admin"),
    ] {
        let h = with_bearer(method, path, key);
        let v = run(&c, &h);
        assert_eq!(v.outcome(), Outcome::Allowed, "{method} {path}");
        let a = allowed(v);
        assert_eq!(key_id(&a).as_deref(), Some(id), "{method} {path}");
    }
}

#[test]
fn key_missing_a_scope_is_missing_scope_with_needed_text() {
    let c = config();
    for (method, path, key, want_id, want_needed) in [
        ("POST", "/data/upload", ALICE, "id-alice", "upload"),
        (
            "GET",
            "/data/download/x",
            UPLOADER,
            "id-uploader",
            "download",
        ),
        ("GET", "/admin/keys", ALICE, "id-alice", "admin"),
        ("GET", "/data/query", NOSCOPE, "id-noscope", "browse"),
    ] {
        let h = with_bearer(method, path, key);
        let d = denied(run(&c, &h));
        match &d {
            Denial::MissingScope {
                key: Some(key),
                needed,
            } => {
                assert_eq!(key.id.as_str(), want_id);
                assert_eq!(*needed, want_needed);
            }
            other => panic!("{method} {path}: {other:?}"),
        }
        assert_eq!(d.outcome(), Outcome::Forbidden);
        assert_eq!(d.key().map(|k| k.id.as_str()), Some(want_id));
    }
}

#[test]
fn rule_with_several_scopes_needs_every_one() {
    let c = config_with(
        "rules",
        json!([{"path_prefix": "/reports", "scopes": ["browse", "download"]}]),
    );
    let ok = with_bearer("GET", "/reports/1", ALICE);
    assert_allowed_as(run(&c, &ok), "id-alice");
    // UPLOADER holds browse but not download; ADMIN holds both and more.
    let partial = with_bearer("GET", "/reports/1", UPLOADER);
    assert_eq!(
        denied(run(&c, &partial)),
        Denial::MissingScope {
            key: Some(inline_record(&c, UPLOADER)),
            needed: "browse download",
        }
    );
    let more = with_bearer("GET", "/reports/1", ADMIN);
    assert_allowed_as(run(&c, &more), "id-admin");
}

#[test]
fn key_scopes_no_rule_mentions_decide_nothing_but_are_forwarded() {
    let mut doc = base_doc();
    doc["keys"] = json!([{"id": "x", "hash": hash("kg_x"), "owner": "o",
                          "scopes": ["unrelated", "browse", "other:thing"]}]);
    let c = config_from(&doc);
    let h = with_bearer("GET", "/data/query", "kg_x");
    let a = assert_allowed_as(run(&c, &h), "x");
    assert!(edits(&a, &c).contains(&set("x-api-key-scopes", "unrelated browse other:thing")));
    let up = with_bearer("POST", "/data/upload", "kg_x");
    assert_eq!(needed_scope(run(&c, &up)), "upload");
}

#[test]
fn method_filter_mismatch_is_refused_not_unmatched() {
    let c = config();
    // `/data/query` only allows GET and HEAD; POST is no rule's.
    let h = with_bearer("POST", "/data/query", ADMIN);
    assert_eq!(denied(run(&c, &h)), Denial::MethodNotListed);
    // `/data/upload` only POST and PUT.
    let h = with_bearer("GET", "/data/upload/x", ADMIN);
    assert_eq!(denied(run(&c, &h)), Denial::MethodNotListed);
}

#[test]
fn method_filter_mismatch_falls_through_to_the_next_rule() {
    let c = config_with(
        "rules",
        json!([
            {"path_prefix": "/items", "methods": ["GET"], "scopes": ["browse"]},
            {"path_prefix": "/items", "scopes": ["upload"]}
        ]),
    );
    let get = with_bearer("GET", "/items/1", ALICE);
    assert_allowed_as(run(&c, &get), "id-alice");
    let post = with_bearer("POST", "/items/1", ALICE);
    assert_eq!(needed_scope(run(&c, &post)), "upload");
    let post_up = with_bearer("POST", "/items/1", UPLOADER);
    assert_allowed_as(run(&c, &post_up), "id-uploader");
}

#[test]
fn first_matching_rule_wins() {
    let c = config_with(
        "rules",
        json!([
            {"path_prefix": "/", "methods": ["OPTIONS"], "public": true},
            {"path_prefix": "/data", "scopes": ["admin"]},
            {"path_prefix": "/data/query", "scopes": ["browse"]},
            {"path_prefix": "/data/query", "public": true}
        ]),
    );
    // The broader `/data` rule comes first: browse is not enough.
    let h = with_bearer("GET", "/data/query", ALICE);
    assert_eq!(needed_scope(run(&c, &h)), "admin");
    // A later public rule does not open it either.
    let h = request("GET", "/data/query", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
    // OPTIONS hits the first rule, public, anywhere.
    let h = request("OPTIONS", "/data/query", &[]);
    assert_eq!(allowed(run(&c, &h)).key, None);
}

#[test]
fn methods_match_rules_in_any_case() {
    // HTTP/2 lets a client send `get`; frameworks that treat it as GET must not see a
    // looser rule applied to it.
    let c = config();
    let h = with_bearer("get", "/data/query", ALICE);
    assert_allowed_as(run(&c, &h), "id-alice");
    let h = with_bearer("post", "/data/upload/x", ALICE);
    assert_eq!(needed_scope(run(&c, &h)), "upload");
}
