use super::*;
use crate::record::KeyHash;
use serde_json::{json, Value};

fn hash(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

fn minimal() -> Value {
    json!({"keys": [{"id": "k1", "hash": hash("key-1"), "owner": "alice"}]})
}

fn parse(v: &Value) -> Result<Config, Vec<String>> {
    Config::parse(v.to_string().as_bytes())
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

fn parse_text(text: &str) -> Result<Config, Vec<String>> {
    Config::parse(text.as_bytes()).map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

fn with(mut base: Value, field: &str, value: Value) -> Value {
    base[field] = value;
    base
}

#[test]
fn defaults() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(&*c.realm, "api");
    assert_eq!(c.sources, default_sources());
    assert_eq!(c.strip_prefixes, vec![Box::<str>::from("apikey|")]);
    assert!(c.hide_credentials);
    assert_eq!(c.rules.unmatched, Unmatched::Deny);
    assert!(c.rules.rules.is_empty());
    assert_eq!(c.forward.id.as_str(), "x-api-key-id");
    assert_eq!(c.forward.owner.as_str(), "x-api-key-owner");
    assert_eq!(c.forward.scopes.as_str(), "x-api-key-scopes");
    assert_eq!(c.forward.kind.as_str(), "x-api-key-kind");
    assert_eq!(c.keys_loaded(), 1);
    assert_eq!(c.jwt, None);
}

#[test]
fn full_configuration() {
    let c = parse(&json!({
        "realm": "immport",
        "sources": [
            {"authorization": {"schemes": ["bearer", "BASIC"], "basic_username": "apikey"}},
            {"header": "X-Api-Key"},
            {"query": "api_key"}
        ],
        "strip_prefixes": ["apikey|", "kg|"],
        "keys": [
            {"id": "8c3e4394-10a9-46ef-8af9-b6401ba1400d", "hash": hash("a"), "owner": "alice",
             "label": "ci-runner", "scopes": ["browse", "download"],
             "created_at": "2026-11-01T10:00:00Z", "expires_at": "2027-05-21T20:55:24.654328038Z",
             "status": "enabled", "read_only": false},
            {"id": "12", "hash": hash("b"), "owner": "alpha_admin", "scopes": ["rest"],
             "status": "disabled", "read_only": true,
             "created_at": "2020-08-18T16:02:26.0136931+00:00"}
        ],
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]}
        ],
        "unmatched": "authenticate",
        "forward": {"id": "X-Key-Id", "owner": "x-key-owner", "scopes": "x-key-scopes"},
        "hide_credentials": false
    }))
    .unwrap();
    assert_eq!(&*c.realm, "immport");
    assert_eq!(c.sources.len(), 3);
    assert!(
        matches!(&c.sources[0], Source::Authorization { schemes, .. }
        if schemes == &[Scheme::Bearer, Scheme::Basic])
    );
    assert!(matches!(&c.sources[1], Source::Header(h) if h.as_str() == "x-api-key"));
    assert_eq!(c.keys_loaded(), 2);
    assert_eq!(c.rules.unmatched, Unmatched::Authenticate);
    assert_eq!(c.forward.id.as_str(), "x-key-id");
    assert!(!c.hide_credentials);
}

#[test]
fn structural_errors_name_the_field() {
    let h = hash("k");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"keys": [], "bogus": 1}),
            "bogus: unknown field `bogus`",
        ),
        (
            json!({"keys": [{"id": "a", "hash": "ABC", "owner": "o"}]}),
            "keys[0].hash: not a SHA-256 hash: 64 lowercase hex characters expected, got 3 \
             characters, 3 of them not lowercase hex",
        ),
        (
            json!({"keys": [{"id": "a", "hash": h, "owner": "o", "expires_at": "tomorrow"}]}),
            "keys[0].expires_at: invalid RFC 3339 timestamp \"tomorrow\"",
        ),
        (
            json!({"keys": [{"id": "a", "hash": h, "owner": "o", "created_at": "2026-11-01"}]}),
            "keys[0].created_at: invalid RFC 3339",
        ),
        (
            json!({"keys": [{"id": "a", "hash": h, "owner": "o", "scopes": ["has space"]}]}),
            "keys[0].scopes[0]: \"has space\" is not a valid scope",
        ),
        (
            json!({"keys": [{"id": "a", "hash": h}]}),
            "keys[0]: missing field `owner`",
        ),
        (
            json!({"keys": [{"id": "a\r\nx: y", "hash": h, "owner": "o"}]}),
            "keys[0].id: ",
        ),
        (
            json!({"keys": [{"id": "a", "hash": h, "owner": "o", "status": "revoked"}]}),
            "keys[0].status: unknown variant `revoked`",
        ),
        (
            json!({"keys": [], "sources": [{"cookie": "k"}]}),
            "sources[0]: unknown variant `cookie`",
        ),
        (
            json!({"keys": [], "sources": [{"authorization": {"schemes": ["Digest"]}}]}),
            "sources[0].authorization.schemes[0]: unknown scheme \"Digest\"",
        ),
        (
            json!({"keys": [], "sources": [{"header": "x api"}]}),
            "sources[0].header: ",
        ),
        (
            json!({"keys": [], "unmatched": "allow"}),
            "unmatched: unknown variant `allow`",
        ),
        (
            json!({"keys": [], "rules": [{"path": "/a", "scopes": ["x"], "extra": true}]}),
            "rules[0].extra: unknown field `extra`",
        ),
        (
            json!({"keys": [], "forward": {"user": "x"}}),
            "forward.user: unknown field `user`",
        ),
        (
            json!({"keys": [], "hide_credentials": "yes"}),
            "hide_credentials: invalid type",
        ),
        (json!([]), "configuration must be a JSON object"),
        (json!("keys"), "configuration must be a JSON object"),
    ];
    for (config, want) in cases {
        let errors = parse(&config).unwrap_err();
        assert_eq!(errors.len(), 1, "{config}: {errors:?}");
        assert!(
            errors[0].starts_with(want),
            "{config}: got {:?}, want {want:?}",
            errors[0]
        );
    }
}

#[test]
fn every_structural_problem_is_named_at_once() {
    let h = hash("k");
    let errors = parse(&json!({
        "keys": [
            {"id": "a", "hash": "ABC", "owner": "o"},
            {"id": "b", "hash": h, "owner": "p"},
            {"id": "c", "hash": h}
        ],
        "rulez": [],
        "rules": [
            {"path": "/a", "scopes": ["x"], "extra": true},
            {"path": "/b", "scopes": "x"}
        ],
        "sources": [{"cookie": "k"}, {"header": "x-api-key"}],
        "unmatched": "allow",
        "hide_credentials": "yes"
    }))
    .unwrap_err();
    let expect = [
        "hide_credentials: invalid type",
        "keys[0].hash: not a SHA-256 hash",
        "keys[2]: missing field `owner`",
        "rules[0].extra: unknown field `extra`",
        "rules[1].scopes: invalid type",
        "rulez: unknown field `rulez`, expected one of `realm`",
        "sources[0]: unknown variant `cookie`",
        "unmatched: unknown variant `allow`",
    ];
    crate::error::assert_errors_start_with(&errors, &expect);
    // One problem alone reads as the parser says it.
    let one = parse(&json!({"keys": [], "bogus": 1})).unwrap_err();
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(
        one[0].starts_with("bogus: unknown field `bogus`"),
        "{one:?}"
    );
}

#[test]
fn not_json_and_empty() {
    let e = Config::parse(b"{\"keys\": [").unwrap_err();
    assert!(e[0].message.contains("EOF"), "{e:?}");
    let e = Config::parse(b"  \n").unwrap_err();
    assert!(e[0].message.contains("empty"), "{e:?}");
    let e = Config::parse(b"{}").unwrap_err();
    assert!(e[0].message.contains("no key source"), "{e:?}");
}

#[test]
fn semantic_errors_are_all_reported() {
    let h = hash("k");
    let errors = parse(&json!({
        "realm": "a\"b",
        "sources": [
            {"authorization": {"schemes": [], "basic_username": "a:b"}},
            {"header": "Authorization"},
            {"query": ""},
            {"header": "x-api-key"},
            {"header": "X-API-KEY"}
        ],
        "strip_prefixes": [""],
        "keys": [
            {"id": "a", "hash": h, "owner": "o"},
            {"id": "a", "hash": h, "owner": "p"}
        ],
        "rules": [{"path_prefix": "/x"}],
        "forward": {"id": "x-api-key", "scopes": "x-api-key-owner"}
    }))
    .unwrap_err();
    let expect = [
        "realm: ",
        "sources[0].authorization.schemes: is empty",
        "sources[0].authorization.basic_username: \"a:b\"",
        "sources[1].header: use the \"authorization\" source",
        "sources[2].query: the parameter name is empty",
        "sources[4]: reads the same place as sources[3]",
        "strip_prefixes[0]: is empty",
        "forward.id: \"x-api-key\" is where keys are read from",
        "forward.scopes: \"x-api-key-owner\" is already used",
        "rules[0]: has no scopes and is not public",
        "keys[1].id: duplicate id \"a\" (also keys[0])",
        "keys[1].hash: duplicate hash (also keys[0])",
    ];
    crate::error::assert_errors_start_with(&errors, &expect);
}

#[test]
fn exactly_one_key_source() {
    let both = with(
        minimal(),
        "key_set",
        json!({"cluster": "keyservice", "path": "/v1/keyset"}),
    );
    let e = parse(&both).unwrap_err();
    assert!(
        e[0].contains("exactly one key source, not keys and key_set"),
        "{e:?}"
    );
    let fetched = json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset"}});
    assert!(matches!(
        parse(&fetched).unwrap().keys,
        KeySource::KeySet(_)
    ));
    let lookup = json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}"}});
    assert!(matches!(parse(&lookup).unwrap().keys, KeySource::Lookup(_)));
    let no_path = json!({"key_set": {"cluster": "keyservice"}});
    let e = parse(&no_path).unwrap_err();
    assert!(e[0].starts_with("key_set: missing field `path`"), "{e:?}");
    let bad = json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys"}});
    let e = parse(&bad).unwrap_err();
    assert!(e[0].starts_with("lookup.path: "), "{e:?}");
}

#[test]
fn usage_goes_with_any_key_source() {
    assert!(parse(&minimal()).unwrap().usage.is_none());
    let usage = json!({"cluster": "keyservice", "report_seconds": 10});
    for base in [
        minimal(),
        json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset"}}),
        json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}"}}),
    ] {
        let c = parse(&with(base, "usage", usage.clone())).unwrap();
        let u = c.usage.unwrap();
        assert_eq!((&*u.path, u.report_seconds), ("/v1/usage", 10));
        assert_eq!(&*u.endpoint.authority, "keyservice");
    }
    let e = parse(&with(minimal(), "usage", json!({"path": "/v1/usage"}))).unwrap_err();
    assert!(e[0].starts_with("usage: missing field `cluster`"), "{e:?}");
    let e = parse(&with(
        minimal(),
        "usage",
        json!({"cluster": "k", "report_seconds": 0, "interval": 1}),
    ))
    .unwrap_err();
    assert!(e[0].starts_with("usage.interval: unknown field"), "{e:?}");
    let e = parse(&with(
        minimal(),
        "usage",
        json!({"cluster": "k", "report_seconds": 0}),
    ))
    .unwrap_err();
    assert_eq!(e, ["usage.report_seconds: 0 is out of range (1 to 3600)"]);
}

#[test]
fn too_many_sources() {
    let sources: Vec<Value> = (0..33)
        .map(|i| json!({"header": format!("x-k{i}")}))
        .collect();
    let e = parse(&with(minimal(), "sources", Value::Array(sources))).unwrap_err();
    assert!(
        e[0].starts_with("sources: lists 33 sources; at most 32"),
        "{e:?}"
    );
    let empty = parse(&with(minimal(), "sources", json!([]))).unwrap_err();
    assert!(empty[0].starts_with("sources: is empty"), "{empty:?}");
}

#[test]
fn default_authorization_source_body() {
    let c = parse(&with(minimal(), "sources", json!([{"authorization": {}}]))).unwrap();
    assert_eq!(c.sources, default_sources());
}

#[test]
fn text_after_the_object_is_refused() {
    let base = minimal().to_string();
    for trailing in [" trailing", "{\"rules\": []}", "]"] {
        let errors = parse_text(&format!("{base}{trailing}")).unwrap_err();
        assert!(
            errors[0].contains("unexpected text after the configuration object"),
            "{errors:?}"
        );
    }
    assert!(parse_text(&format!("{base}\n  ")).is_ok());
}

#[test]
fn forward_names_must_not_be_framing_or_routing_headers() {
    for name in ["host", "content-length", "transfer-encoding", "cookie"] {
        let doc = with(minimal(), "forward", json!({"id": name}));
        let errors = parse(&doc).unwrap_err();
        assert!(errors[0].starts_with("forward.id: "), "{errors:?}");
    }
}

#[test]
fn query_parameter_names_must_be_plain() {
    for name in ["api key", "a&b", "k=v", "api%5Fkey"] {
        let doc = with(minimal(), "sources", json!([{"query": name}]));
        let errors = parse(&doc).unwrap_err();
        assert!(
            errors[0].starts_with("sources[0].query: "),
            "{name}: {errors:?}"
        );
    }
    let doc = with(minimal(), "sources", json!([{"query": "api_key"}]));
    assert!(parse(&doc).is_ok());
}

#[test]
fn jwt_defaults_and_checks() {
    let c = parse(&with(minimal(), "jwt", json!({}))).unwrap();
    let jwt = c.jwt.unwrap();
    assert_eq!(&*jwt.metadata_namespace, "envoy.filters.http.jwt_authn");
    assert_eq!(&*jwt.payload_key, "jwt_payload");
    assert_eq!(&*jwt.scope_claim, "scope");
    assert_eq!(&*jwt.subject_claim, "sub");
    assert_eq!(
        jwt.claim_path("sub"),
        [
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            "jwt_payload",
            "sub"
        ]
    );
    let c = parse(&with(
        minimal(),
        "jwt",
        json!({"payload_key": "claims", "scope_claim": "scp", "subject_claim": "client_id"}),
    ))
    .unwrap();
    assert_eq!(&*c.jwt.unwrap().scope_claim, "scp");
    let errs = parse(&with(
        minimal(),
        "jwt",
        json!({"payload_key": "", "scope_claim": "a\nb", "issuer": "x"}),
    ))
    .unwrap_err();
    assert!(errs.iter().any(|e| e.contains("issuer")), "{errs:?}");
    let errs = parse(&with(
        minimal(),
        "jwt",
        json!({"payload_key": "", "scope_claim": "a\nb"}),
    ))
    .unwrap_err();
    assert!(
        errs.iter().any(|e| e.starts_with("jwt.payload_key")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("jwt.scope_claim")),
        "{errs:?}"
    );
    let errs = parse(&with(minimal(), "forward", json!({"kind": "x-api-key-id"}))).unwrap_err();
    assert!(errs.iter().any(|e| e.contains("forward.kind")), "{errs:?}");
}

#[test]
fn the_summary_names_the_key_source_and_the_rules() {
    let inline = parse(&minimal()).unwrap();
    assert_eq!(
        inline.summary(),
        format!(
            "{} keys, 0 rules",
            minimal()["keys"].as_array().unwrap().len()
        )
    );
    let key_set = parse(&json!({
        "key_set": {"cluster": "ks", "path": "/v1/keyset", "refresh_seconds": 5},
        "rules": [{"path_prefix": "/", "public": true}]
    }))
    .unwrap();
    assert_eq!(
        key_set.summary(),
        "key set from cluster ks path /v1/keyset (watched in 25 s long-polls where the \
         service syncs, else polled every 5 s), 1 rules"
    );
    let lookup = parse(&json!({
        "lookup": {"cluster": "ks", "path": "/v1/keys/{hash}", "watch_seconds": 0}
    }))
    .unwrap();
    assert_eq!(
        lookup.summary(),
        "keys looked up on cluster ks, no change feed (watch_seconds 0), 0 rules"
    );
}
