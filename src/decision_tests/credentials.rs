//! Every credential form reaches an allow.

use super::*;

#[test]
fn bearer_key_is_allowed_with_identity() {
    let c = config();
    let h = with_bearer("GET", "/data/query", ALICE);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    let k = a.key.unwrap();
    assert_eq!(k.owner.as_str(), "alice");
    assert_eq!(&*k.scopes_header, "browse download");
    assert_eq!(a.hide_sources, 0b001);
    assert_eq!(a.spoofed, 0);
    assert_eq!(a.new_path, None);
}

#[test]
fn apikey_scheme_is_allowed() {
    let c = config();
    let h = get_query_with("authorization", &format!("ApiKey {ALICE}"));
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b001);
}

#[test]
fn basic_with_apikey_username_is_allowed() {
    let c = config();
    let h = get_query_with("authorization", &basic(&format!("apikey:{ALICE}")));
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b001);
}

#[test]
fn basic_with_custom_username_is_allowed_and_default_username_is_not_a_key() {
    let c = config_with(
        "sources",
        json!([{"authorization": {"schemes": ["Basic"], "basic_username": "svc"}}]),
    );
    let ok = get_query_with("authorization", &basic(&format!("svc:{ALICE}")));
    assert_allowed_as(run(&c, &ok), "id-alice");
    let other = get_query_with("authorization", &basic(&format!("apikey:{ALICE}")));
    assert_eq!(denied(run(&c, &other)), Denial::Missing);
}

#[test]
fn scheme_names_are_case_insensitive() {
    let c = config();
    for value in [
        format!("bearer {ALICE}"),
        format!("BEARER {ALICE}"),
        format!("bEaReR {ALICE}"),
        format!("apikey {ALICE}"),
        format!("APIKEY {ALICE}"),
        basic(&format!("apikey:{ALICE}")).replacen("Basic", "basic", 1),
        basic(&format!("apikey:{ALICE}")).replacen("Basic", "BASIC", 1),
    ] {
        let h = get_query_with("authorization", &value);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{value}");
    }
}

#[test]
fn whitespace_around_the_key_is_ignored() {
    let c = config();
    for (name, value) in [
        ("authorization", format!("  Bearer \t {ALICE}  ")),
        ("x-api-key", format!("  {ALICE}\t")),
    ] {
        let h = request("GET", "/data/query", &[(name, &value)]);
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{name}: {value:?}");
    }
}

#[test]
fn named_header_key_is_allowed() {
    let c = config();
    let h = get_query_with("x-api-key", ALICE);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b010);
    assert_eq!(a.new_path, None);
}

#[test]
fn named_header_configured_in_mixed_case_matches_lowercase_header() {
    let c = config_with("sources", json!([{"header": "ApiKey"}]));
    let h = get_query_with("apikey", ALICE);
    assert_allowed_as(run(&c, &h), "id-alice");
}

#[test]
fn query_parameter_key_is_allowed() {
    let c = config();
    let h = request("GET", &format!("/data/query?api_key={ALICE}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b100);
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn percent_encoded_query_parameter_key_is_allowed() {
    let c = config();
    // `%5F` is `_` in the name, `%6B` is `k` in the value.
    let encoded_key = ALICE.replacen('k', "%6B", 1);
    let h = request("GET", &format!("/data/query?api%5Fkey={encoded_key}"), &[]);
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn only_configured_sources_are_read() {
    let c = config_with("sources", json!([{"header": "x-api-key"}]));
    let h = with_bearer("GET", &format!("/data/query?api_key={ALICE}"), ALICE);
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
}

#[test]
fn default_sources_read_only_the_authorization_header() {
    let mut doc = base_doc();
    doc.as_object_mut().unwrap().remove("sources");
    let c = config_from(&doc);
    let bearer_h = with_bearer("GET", "/data/query", ALICE);
    assert_allowed_as(run(&c, &bearer_h), "id-alice");
    let header = get_query_with("x-api-key", ALICE);
    assert_eq!(denied(run(&c, &header)), Denial::Missing);
    let query = request("GET", &format!("/data/query?api_key={ALICE}"), &[]);
    assert_eq!(denied(run(&c, &query)), Denial::Missing);
}

#[test]
fn legacy_apikey_prefix_is_stripped_from_every_source() {
    let c = config();
    let legacy = format!("apikey|{ALICE}");
    let cases = [
        with_bearer("GET", "/data/query", &legacy),
        get_query_with("authorization", &basic(&format!("apikey:{legacy}"))),
        get_query_with("x-api-key", &legacy),
        request("GET", &format!("/data/query?api_key=apikey%7C{ALICE}"), &[]),
    ];
    for h in cases {
        let a = allowed(run(&c, &h));
        assert_eq!(key_id(&a).as_deref(), Some("id-alice"), "{h:?}");
    }
}

#[test]
fn custom_strip_prefixes_replace_the_default() {
    let c = config_with("strip_prefixes", json!(["legacy:"]));
    let h = get_query_with("authorization", &bearer(&format!("legacy:{ALICE}")));
    assert_allowed_as(run(&c, &h), "id-alice");
    let old = get_query_with("authorization", &bearer(&format!("apikey|{ALICE}")));
    assert_eq!(denied(run(&c, &old)), Denial::UnknownKey);
}

#[test]
fn same_key_on_two_sources_is_allowed_and_marks_both() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ALICE)],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b011);
}

#[test]
fn same_key_on_all_three_sources_with_and_without_legacy_prefix_is_allowed() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data/query?api_key={ALICE}"),
        &[
            ("authorization", &bearer(ALICE)),
            ("x-api-key", &format!("apikey|{ALICE}")),
        ],
    );
    let a = assert_allowed_as(run(&c, &h), "id-alice");
    assert_eq!(a.hide_sources, 0b111);
    assert_eq!(a.new_path.as_deref(), Some("/data/query"));
}

#[test]
fn two_different_keys_are_a_bad_request() {
    let c = config();
    let cases = [
        // Two valid keys.
        request(
            "GET",
            "/data/query",
            &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
        ),
        // A valid key and an unknown one.
        request(
            "GET",
            "/data/query",
            &[("authorization", &bearer(ALICE)), ("x-api-key", UNKNOWN)],
        ),
        // The same header twice.
        request(
            "GET",
            "/data/query",
            &[
                ("authorization", &bearer(ALICE)),
                ("authorization", &bearer(ADMIN)),
            ],
        ),
        // Header and query.
        request(
            "GET",
            &format!("/data/query?api_key={ADMIN}"),
            &[("x-api-key", ALICE)],
        ),
        // The query parameter twice.
        request(
            "GET",
            &format!("/data/query?api_key={ALICE}&api_key={ADMIN}"),
            &[],
        ),
    ];
    for h in cases {
        let why = assert_bad_request(run(&c, &h));
        assert!(why.contains("conflicting"), "{h:?}: {why}");
    }
}

#[test]
fn conflicting_keys_are_refused_even_on_a_public_route() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ADMIN)],
    );
    assert!(assert_bad_request(run(&c, &h)).contains("conflicting"));
}

#[test]
fn malformed_credentials_are_a_bad_request() {
    let c = config();
    let cases: Vec<Headers> = vec![
        get_query_with("authorization", "Bearer"),
        get_query_with("authorization", "Bearer   "),
        get_query_with("authorization", "ApiKey two words"),
        get_query_with("authorization", "Basic !!!notbase64"),
        get_query_with("authorization", &basic("apikey-without-colon")),
        get_query_with("authorization", &basic("apikey:")),
        get_query_with("authorization", "Bearer apikey|"),
        get_query_with("x-api-key", ""),
        request("GET", "/data/query?api_key=", &[]),
        request("GET", "/data/query?api_key=%zz", &[]),
    ];
    for h in cases {
        assert_bad_request(run(&c, &h));
    }
    // A malformed credential is refused on a public route too.
    let public = request("GET", "/healthz", &[("authorization", "Bearer")]);
    assert_bad_request(run(&c, &public));
}

#[test]
fn basic_for_another_user_is_no_credential_so_missing() {
    let c = config();
    let h = get_query_with("authorization", &basic("alice@example.org:hunter2"));
    assert_eq!(denied(run(&c, &h)), Denial::Missing);
}

#[test]
fn unconfigured_or_foreign_schemes_are_no_credential() {
    let c = config_with(
        "sources",
        json!([{"authorization": {"schemes": ["Bearer"]}}]),
    );
    for value in [
        format!("ApiKey {ALICE}"),
        basic(&format!("apikey:{ALICE}")),
        "Digest username=alice".to_string(),
        format!("Token {ALICE}"),
    ] {
        let h = get_query_with("authorization", &value);
        assert_eq!(denied(run(&c, &h)), Denial::Missing, "{value}");
    }
}
