//! Outcomes (stats mapping) and the key a denial names.

use super::*;

fn a_record(c: &Config) -> &KeyRecord {
    inline_record(c, ALICE)
}

#[test]
fn verdict_outcome_for_allows() {
    let c = config();
    let with_key = Verdict::Allow(Allowed {
        key: Some(a_record(&c)),
        token: None,
        hide_sources: 0,
        spoofed: 0,
        spoofed_lookalikes: Vec::new(),
        new_path: None,
    });
    assert_eq!(with_key.outcome(), Outcome::Allowed);
    let public = Verdict::Allow(Allowed {
        key: None,
        token: None,
        hide_sources: 0,
        spoofed: 0b111,
        spoofed_lookalikes: Vec::new(),
        new_path: Some("/x".into()),
    });
    assert_eq!(public.outcome(), Outcome::Public);
}

#[test]
fn denial_outcome_for_every_variant() {
    let c = config();
    let k = a_record(&c);
    let cases = [
        (Denial::BadRequest("x"), Outcome::Malformed, false),
        (Denial::Missing, Outcome::Missing, false),
        (Denial::UnknownKey, Outcome::Invalid, false),
        (Denial::MalformedKey, Outcome::MalformedKey, false),
        (Denial::InvalidToken("x"), Outcome::InvalidToken, false),
        (Denial::Expired(k), Outcome::Expired, true),
        (Denial::Disabled(k), Outcome::Disabled, true),
        (
            Denial::MissingScope {
                key: Some(k),
                needed: "upload",
            },
            Outcome::Forbidden,
            true,
        ),
        (Denial::ReadOnly(k), Outcome::Forbidden, true),
        (Denial::NoRule, Outcome::Forbidden, false),
        (
            Denial::Unavailable {
                retry_after_seconds: 5,
            },
            Outcome::Unavailable,
            false,
        ),
    ];
    for (denial, outcome, names_key) in cases {
        assert_eq!(denial.outcome(), outcome, "{denial:?}");
        assert_eq!(
            Verdict::Deny(denial.clone()).outcome(),
            outcome,
            "{denial:?}"
        );
        assert_eq!(
            denial.key().map(|r| r.id.as_str()),
            names_key.then_some("id-alice"),
            "{denial:?}"
        );
    }
}

#[test]
fn decided_verdicts_count_as_the_right_outcome() {
    let c = config();
    let cases: Vec<(Headers, Outcome)> = vec![
        (get_query_with("x-api-key", ALICE), Outcome::Allowed),
        (request("GET", "/healthz", &[]), Outcome::Public),
        (
            request("GET", "/healthz", &[("x-api-key", ALICE)]),
            Outcome::Allowed,
        ),
        (request("GET", "/data/query", &[]), Outcome::Missing),
        (get_query_with("x-api-key", ""), Outcome::Malformed),
        (request("GET", "/data%2Fquery", &[]), Outcome::Malformed),
        (get_query_with("x-api-key", UNKNOWN), Outcome::Invalid),
        (get_query_with("x-api-key", EXPIRED), Outcome::Expired),
        (get_query_with("x-api-key", DISABLED), Outcome::Disabled),
        (
            request("POST", "/data/upload", &[("x-api-key", ALICE)]),
            Outcome::Forbidden,
        ),
        (
            request("PUT", "/data/download", &[("x-api-key", READONLY)]),
            Outcome::Forbidden,
        ),
        (request("GET", "/nowhere", &[]), Outcome::Forbidden),
    ];
    for (h, outcome) in cases {
        assert_eq!(run(&c, &h).outcome(), outcome, "{h:?}");
    }
}

#[test]
fn verdicts_never_show_the_raw_key_when_debug_printed() {
    let c = config();
    for h in [
        get_query_with("x-api-key", ALICE),
        request("POST", "/data/upload", &[("x-api-key", ALICE)]),
        get_query_with("x-api-key", UNKNOWN),
        get_query_with("x-api-key", EXPIRED),
        request("GET", "/nowhere", &[("x-api-key", ALICE)]),
        request(
            "GET",
            "/data/query",
            &[("x-api-key", ALICE), ("authorization", &bearer(ADMIN))],
        ),
    ] {
        let shown = format!("{:?}", run(&c, &h));
        for key in [ALICE, ADMIN, UNKNOWN, EXPIRED] {
            assert!(!shown.contains(key), "{shown}");
        }
    }
}

#[test]
fn path_parameters_do_not_slip_past_a_rule() {
    let config = config_with("unmatched", json!("authenticate"));
    for path in [
        "/admin/keys;x",
        "/admin;a=b/keys",
        "/admin/keys;jsessionid=1",
    ] {
        let headers = with_bearer("GET", path, ALICE);
        assert_eq!(needed_scope(run(&config, &headers)), "admin", "{path}");
    }
    // The parameters still reach the upstream: only matching ignores them.
    let headers = with_bearer("GET", "/data/query;v=2/x", ALICE);
    let a = assert_allowed_as(run(&config, &headers), "id-alice");
    assert_eq!(a.new_path, None);
}

#[test]
fn parameter_only_segments_do_not_slip_past_a_rule() {
    let config = config_with("unmatched", json!("authenticate"));
    for path in ["/;x/admin/keys", "/admin/;/keys", "/admin/keys/;x"] {
        let headers = with_bearer("GET", path, ALICE);
        assert_eq!(needed_scope(run(&config, &headers)), "admin", "{path}");
    }
}

#[test]
fn identity_lookalikes_with_underscores_are_removed() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[
            ("x_api_key_id", "k-admin"),
            ("x-api_key-owner", "root"),
            ("x_api_key_idx", "keep"),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0);
    assert_eq!(
        a.spoofed_lookalikes,
        vec!["x_api_key_id", "x-api_key-owner"]
    );
    assert_eq!(
        edits(&a, &c),
        vec![rm("x_api_key_id"), rm("x-api_key-owner")]
    );
    // An honest request allocates nothing for them.
    let h = request("GET", "/healthz", &[]);
    assert_eq!(allowed(run(&c, &h)).spoofed_lookalikes.capacity(), 0);
}

#[test]
fn a_refused_request_has_its_query_key_redacted_for_the_access_log() {
    let c = config();
    let h = request("GET", "/data/query?a=1&api_key=kg_wrong&b=2", &[]);
    assert_eq!(denied(run(&c, &h)), Denial::UnknownKey);
    assert_eq!(
        redacted_target(&c, &h).as_deref(),
        Some(&b"/data/query?a=1&b=2"[..])
    );
    let h = request("GET", "/data/query?api_key=kg_wrong", &[]);
    assert_eq!(
        redacted_target(&c, &h).as_deref(),
        Some(&b"/data/query"[..])
    );
    // Nothing to remove: nothing to change.
    let h = request("GET", "/data/query?a=1", &[]);
    assert_eq!(redacted_target(&c, &h), None);
    let h = request("GET", "/data/query", &[]);
    assert_eq!(redacted_target(&c, &h), None);
    // A path that is not UTF-8 is refused (400) and still loses its key.
    let mut h = request("GET", "/", &[]);
    h[3].1 = b"/data/query?q=caf\xe9&api_key=kg_wrong".to_vec();
    assert!(matches!(denied(run(&c, &h)), Denial::BadRequest(_)));
    assert_eq!(
        redacted_target(&c, &h).as_deref(),
        Some(&b"/data/query?q=caf\xe9"[..])
    );
    let no_query_source = config_with("sources", json!([{"header": "x-api-key"}]));
    let h = request("GET", "/data/query?api_key=kg_wrong", &[]);
    assert_eq!(redacted_target(&no_query_source, &h), None);
}
