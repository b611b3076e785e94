//! Pseudo-headers.

use super::*;

fn without(headers: Headers, name: &str) -> Headers {
    headers.into_iter().filter(|(n, _)| n != name).collect()
}

fn replace(headers: Headers, name: &str, value: &[u8]) -> Headers {
    headers
        .into_iter()
        .map(|(n, v)| {
            if n == name {
                (n, value.to_vec())
            } else {
                (n, v)
            }
        })
        .collect()
}

#[test]
fn missing_method_is_a_bad_request() {
    let c = config();
    let h = without(with_bearer("GET", "/healthz", ALICE), ":method");
    let d = denied(decide(&c, &h, no_clock));
    assert!(matches!(d, Denial::BadRequest(_)), "{d:?}");
    assert_eq!(d.outcome(), Outcome::Malformed);
}

#[test]
fn missing_path_is_a_bad_request() {
    let c = config();
    let h = without(request("GET", "/healthz", &[]), ":path");
    let why = assert_bad_request(decide(&c, &h, no_clock));
    assert!(why.contains("no path"), "{why}");
}

#[test]
fn no_headers_at_all_is_a_bad_request() {
    let c = config();
    assert_bad_request(decide(&c, &Headers::new(), no_clock));
}

#[test]
fn non_utf8_path_is_a_bad_request() {
    let c = config();
    for bytes in [&b"/healthz/\xff"[..], b"/data/query/\xc3", b"/\x80"] {
        let h = replace(request("GET", "/", &[]), ":path", bytes);
        assert_bad_request(decide(&c, &h, no_clock));
    }
}

#[test]
fn non_utf8_method_is_a_bad_request() {
    let c = config();
    let h = replace(request("GET", "/healthz", &[]), ":method", b"G\xffT");
    assert_bad_request(decide(&c, &h, no_clock));
}

#[test]
fn the_first_pseudo_header_counts() {
    let c = config();
    // A second :path or :method must not change what the rules saw.
    let mut h = get_query_with("x-api-key", ALICE);
    h.push((":path".to_string(), b"/admin/keys".to_vec()));
    assert_allowed_as(run(&c, &h), "id-alice");
    let mut h = get_query_with("x-api-key", ALICE);
    h.push((":method".to_string(), b"POST".to_vec()));
    assert_allowed_as(run(&c, &h), "id-alice");
    let mut h = request("POST", "/data/query", &[("x-api-key", ALICE)]);
    h.push((":method".to_string(), b"GET".to_vec()));
    assert_eq!(denied(run(&c, &h)), Denial::MethodNotListed);
}

#[test]
fn pseudo_headers_are_never_treated_as_identity_or_credentials() {
    let c = config();
    let h = request("GET", "/healthz", &[]);
    let a = allowed(run(&c, &h));
    assert_eq!(a.spoofed, 0);
    assert_eq!(a.hide_sources, 0);
}
