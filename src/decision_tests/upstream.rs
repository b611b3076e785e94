//! What the upstream sees: anti-spoofing, identity, hidden credentials.

use super::*;

#[test]
fn identity_is_set_and_credential_hidden_in_order() {
    let c = config();
    let h = with_bearer("GET", "/data/query", ALICE);
    let a = allowed(run(&c, &h));
    assert_eq!(
        edits(&a, &c),
        alice_edits(vec![], vec![rm("authorization")])
    );
}

#[test]
fn spoofed_identity_headers_are_removed_then_identity_set() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[
            ("x-api-key-id", "id-admin"),
            ("x-api-key-owner", "root"),
            ("x-api-key-scopes", "admin"),
            ("x-api-key-scopes", "upload"),
            ("authorization", &bearer(ALICE)),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b111);
    assert_eq!(
        edits(&a, &c),
        alice_edits(
            vec![
                rm("x-api-key-id"),
                rm("x-api-key-owner"),
                rm("x-api-key-scopes"),
            ],
            vec![rm("authorization")]
        )
    );
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, "x-api-key-id"), ["id-alice"]);
    assert_eq!(header_values(&up, "x-api-key-owner"), ["alice"]);
    assert_eq!(header_values(&up, "x-api-key-scopes"), ["browse download"]);
    assert!(header_values(&up, "authorization").is_empty());
}

#[test]
fn only_the_spoofed_headers_are_removed() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("x-api-key-owner", "root"), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b010);
    assert_eq!(
        edits(&a, &c),
        alice_edits(vec![rm("x-api-key-owner")], vec![rm("x-api-key")])
    );
}

#[test]
fn spoofed_identity_headers_are_removed_on_public_routes_without_key() {
    let c = config();
    let h = request(
        "GET",
        "/healthz",
        &[
            ("x-api-key-id", "id-admin"),
            ("x-api-key-owner", "root"),
            ("x-api-key-scopes", "admin"),
        ],
    );
    let v = run(&c, &h);
    assert_eq!(v.outcome(), Outcome::Public);
    let a = allowed(v);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-id"),
            rm("x-api-key-owner"),
            rm("x-api-key-scopes"),
        ]
    );
    let up = upstream(&a, &c, &h);
    assert!(
        up.iter().all(|(n, _)| !n.starts_with("x-api-key")),
        "{up:?}"
    );
}

#[test]
fn spoofed_identity_with_empty_value_is_removed_too() {
    let c = config();
    let h = request("GET", "/healthz", &[("x-api-key-id", "")]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), vec![rm("x-api-key-id")]);
}

#[test]
fn public_route_without_key_or_spoofing_needs_no_edits() {
    let c = config();
    let h = request("GET", "/healthz", &[("accept", "application/json")]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), Vec::<Edit>::new());
}

#[test]
fn custom_forward_names_are_stripped_and_set() {
    let c = config_with(
        "forward",
        json!({"id": "X-Consumer-Id", "owner": "x-consumer-username", "scopes": "x-consumer-groups"}),
    );
    let h = request(
        "GET",
        "/data/query",
        &[
            ("x-consumer-id", "id-admin"),
            ("x-consumer-groups", "admin"),
            ("x-api-key-id", "client-sent"),
            ("authorization", &bearer(ALICE)),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0b101);
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-consumer-id"),
            rm("x-consumer-groups"),
            set("x-consumer-id", "id-alice"),
            set("x-consumer-username", "alice"),
            set("x-consumer-groups", "browse download"),
            set("x-api-key-kind", "api_key"),
            rm("authorization"),
        ]
    );
    // Custom names replace the defaults: `x-api-key-id` is an ordinary header now.
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, "x-api-key-id"), ["client-sent"]);
}

#[test]
fn custom_forward_names_are_stripped_on_public_routes() {
    let c = config_with("forward", json!({"owner": "x-user"}));
    let h = request(
        "GET",
        "/healthz",
        &[("x-user", "root"), ("x-api-key-id", "id-admin")],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(edits(&a, &c), vec![rm("x-api-key-id"), rm("x-user")]);
}

#[test]
fn hide_credentials_removes_the_header_the_key_came_from() {
    let c = config();
    let h = request(
        "GET",
        "/data/query",
        &[("x-api-key", ALICE), ("authorization", "Digest username=a")],
    );
    let a = allowed(run(&c, &h));
    let e = edits(&a, &c);
    assert_eq!(e.last(), Some(&rm("x-api-key")));
    // The Authorization header did not carry the key: it stays.
    assert!(!e.contains(&rm("authorization")), "{e:?}");
    let up = upstream(&a, &c, &h);
    assert!(header_values(&up, "x-api-key").is_empty());
    assert_eq!(header_values(&up, "authorization"), ["Digest username=a"]);
}

#[test]
fn hide_credentials_removes_every_source_that_carried_the_key() {
    let c = config();
    let h = request(
        "GET",
        &format!("/data//query?api_key={ALICE}&q=1"),
        &[
            ("x-api-key-id", "spoof"),
            ("authorization", &bearer(ALICE)),
            ("x-api-key", ALICE),
        ],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.hide_sources, 0b111);
    assert_eq!(
        edits(&a, &c),
        alice_edits(
            vec![rm("x-api-key-id")],
            vec![
                rm("authorization"),
                rm("x-api-key"),
                set(":path", "/data/query?q=1"),
            ]
        )
    );
    let up = upstream(&a, &c, &h);
    assert!(
        up.iter().all(|(_, v)| !v.contains(ALICE)),
        "the key reached the upstream: {up:?}"
    );
}

#[test]
fn hide_credentials_false_keeps_the_credential() {
    let c = config_with("hide_credentials", json!(false));
    let h = request(
        "GET",
        "/data/query",
        &[("authorization", &bearer(ALICE)), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(a.hide_sources, 0);
    assert_eq!(edits(&a, &c), alice_edits(vec![], vec![]));
    let up = upstream(&a, &c, &h);
    assert_eq!(
        header_values(&up, "authorization"),
        [bearer(ALICE).as_str()]
    );
    assert_eq!(header_values(&up, "x-api-key"), [ALICE]);
}

#[test]
fn hide_credentials_false_still_strips_spoofed_identity() {
    let c = config_with("hide_credentials", json!(false));
    let h = request(
        "GET",
        "/healthz",
        &[("x-api-key-scopes", "admin"), ("x-api-key", ALICE)],
    );
    let a = allowed(run(&c, &h));
    assert_eq!(
        edits(&a, &c),
        alice_edits(vec![rm("x-api-key-scopes")], vec![])
    );
}

#[test]
fn hide_credentials_on_public_route_with_valid_key() {
    let c = config();
    let h = request("GET", "/healthz", &[("x-api-key", ALICE)]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c).last(), Some(&rm("x-api-key")));
}

#[test]
fn a_basic_credential_for_another_user_is_not_hidden_on_a_public_route() {
    let c = config();
    let other = basic("alice@example.org:hunter2");
    let h = request("GET", "/healthz", &[("authorization", &other)]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.key, None);
    assert_eq!(edits(&a, &c), Vec::<Edit>::new());
}

#[test]
fn normalized_path_is_set_last() {
    let c = config();
    let h = request("GET", "/data//query", &[("x-api-key", ALICE)]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c).last(), Some(&set(":path", "/data/query")));
    let up = upstream(&a, &c, &h);
    assert_eq!(header_values(&up, ":path"), ["/data/query"]);
}

#[test]
fn normalized_path_is_forwarded_on_public_routes_without_key() {
    let c = config();
    let h = request("GET", "/healthz//live/.", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(edits(&a, &c), vec![set(":path", "/healthz/live/")]);
}

#[test]
fn apply_follows_the_fields_it_is_given() {
    // Built by hand: every bit and field is honoured independently.
    let c = config();
    let a = Allowed {
        key: None,
        token: None,
        hide_sources: 0b110,
        spoofed: 0b100,
        spoofed_lookalikes: Vec::new(),
        new_path: Some("/p?q=1".to_string()),
    };
    assert_eq!(
        edits(&a, &c),
        vec![
            rm("x-api-key-scopes"),
            rm("x-api-key"),
            set(":path", "/p?q=1")
        ]
    );
}

#[test]
fn a_key_without_scopes_forwards_an_empty_scopes_header() {
    // The three identity headers always travel together: an empty `x-api-key-scopes` says
    // "a valid key holding no scope"; a client-sent one is replaced, never kept.
    let c = config_with("unmatched", json!("authenticate"));
    let h = request(
        "GET",
        "/other",
        &[
            ("authorization", &bearer(NOSCOPE)),
            ("x-api-key-scopes", "admin"),
        ],
    );
    let a = assert_allowed_as(run(&c, &h), "id-noscope");
    let seen = upstream(&a, &c, &h);
    assert_eq!(header_values(&seen, "x-api-key-id"), ["id-noscope"]);
    assert_eq!(header_values(&seen, "x-api-key-owner"), ["nobody"]);
    assert_eq!(header_values(&seen, "x-api-key-scopes"), [""]);
}
