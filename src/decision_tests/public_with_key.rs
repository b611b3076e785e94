//! Public routes with a key presented (an expired or disabled one: key_states).

use super::*;

#[test]
fn public_route_with_unknown_key_is_unknown_key() {
    let c = config();
    for extra in [
        ("authorization", bearer(UNKNOWN)),
        ("x-api-key", UNKNOWN.to_string()),
    ] {
        let h = request("GET", "/healthz", &[(extra.0, &extra.1)]);
        let d = denied(run(&c, &h));
        assert_eq!(d, Denial::UnknownKey);
        assert_eq!(d.outcome(), Outcome::Invalid);
    }
    let q = request("GET", &format!("/healthz?api_key={UNKNOWN}"), &[]);
    assert_eq!(denied(run(&c, &q)), Denial::UnknownKey);
}

#[test]
fn public_route_with_valid_key_forwards_identity() {
    let c = config();
    // NOSCOPE holds no scopes at all: a public route needs none.
    let h = with_bearer("GET", "/healthz", NOSCOPE);
    let v = run(&c, &h);
    assert_eq!(v.outcome(), Outcome::Allowed);
    let a = assert_allowed_as(v, "id-noscope");
    assert_eq!(
        edits(&a, &c),
        vec![
            set("x-api-key-id", "id-noscope"),
            set("x-api-key-owner", "nobody"),
            set("x-api-key-scopes", ""),
            set("x-api-key-kind", "api_key"),
            rm("authorization"),
        ]
    );
}
