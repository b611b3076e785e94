//! Hostile requests through a real Envoy running keygate, over HTTP/1.1 (bytes written as
//! given) and HTTP/2 (h2c with prior knowledge, through the `h2` crate, or frames written by
//! hand for what no conforming client sends). One table: each row is a request, the status
//! the client must get and what the upstream must see. Whatever the request, nothing
//! reaches the upstream without a valid key of the right scope (README "Credentials", "Paths", "Responses"), and what
//! does reach it carries keygate's identity headers only, never the client's (§5).
//!
//! Two witnesses of the upstream side: the echo upstream's record of what it received,
//! and Envoy's own count of requests sent to the upstream cluster (which also counts a
//! request the echo server could not parse). Rows to be refused are sent several at a
//! time and the upstream must see none of them; rows that pass are sent one at a time and
//! the upstream must see each exactly once, as itself.
//!
//! When Envoy refuses a request before keygate sees it (its codec: 400, 431, a reset
//! stream, a closed connection; its connection manager: 404 for a target that is not a
//! path), that is the row's expected answer: the exact answer, and an upstream that saw
//! nothing. `-- --nocapture` prints the table as observed.

use keygate_testkit as support;

use keygate_testkit::h2 as h2client;

use h2client::Answer;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use support::{hash_of, Envoy, Request, Seen, Upstream};

/// A key of the test key set, with the identity keygate forwards for it.
struct Key {
    raw: &'static str,
    id: &'static str,
    owner: &'static str,
    scopes: &'static str,
}

const BROWSE: Key = Key {
    raw: "kg_adv_browse_7c1e5a9d3b2f4e6a8c0d",
    id: "k-browse",
    owner: "alice",
    scopes: "browse",
};
const DOWNLOAD: Key = Key {
    raw: "kg_adv_download_2b4d6f8a0c1e3a5c7e9f",
    id: "k-download",
    owner: "bob",
    scopes: "browse download",
};
const UPLOAD: Key = Key {
    raw: "kg_adv_upload_9e8d7c6b5a4f3e2d1c0b",
    id: "k-upload",
    owner: "carol",
    scopes: "browse upload",
};
const ADMIN: Key = Key {
    raw: "kg_adv_admin_5f4e3d2c1b0a9f8e7d6c",
    id: "k-admin",
    owner: "root",
    scopes: "admin",
};
/// A key the set does not hold.
const UNKNOWN: &str = "kg_adv_unknown_0a1b2c3d4e5f6a7b8c9d";
const KEYS: [&Key; 4] = [&BROWSE, &DOWNLOAD, &UPLOAD, &ADMIN];

/// Every value a client sends in an identity header holds this, so that one reaching the
/// upstream is told from keygate's.
const SPOOF: &str = "spoofed";
const FORWARD: [&str; 3] = ["x-api-key-id", "x-api-key-owner", "x-api-key-scopes"];

/// ImmPort-like rules (browse / download / upload, admin) and every credential source.
fn config() -> Value {
    let keys: Vec<Value> = KEYS
        .iter()
        .map(|k| {
            json!({"id": k.id, "hash": hash_of(k.raw), "owner": k.owner,
                   "scopes": k.scopes.split(' ').collect::<Vec<_>>()})
        })
        .collect();
    support::immport_every_source("adversarial", Value::Array(keys))
}

// ---------------------------------------------------------------------------------------
// The table

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
}

/// A header field: name and value, as sent.
type Field = (String, Vec<u8>);
type Headers = Vec<Field>;

enum Wire {
    H1(Request),
    /// Through the h2 crate: method, origin-form target (CONNECT: authority), headers, body.
    H2(String, String, Headers, Vec<u8>),
    /// Frames by hand: every field, pseudo-headers included, in order; body.
    H2Raw(Headers, Vec<u8>),
}

#[derive(Clone)]
enum Expect {
    /// 200 from the upstream, which saw exactly this request: `key`'s identity (none on a
    /// public route without a key), no credential, no client-sent identity value, and
    /// exactly `target`.
    Pass {
        key: Option<&'static Key>,
        target: String,
    },
    /// keygate's own answer: this status, and this `error` in its JSON body.
    Keygate(u16, &'static str),
    /// Envoy's answer before keygate decided anything: this status (or `reset(...)`,
    /// `goaway(...)` for an HTTP/2 stream), no keygate body.
    Envoy(&'static str),
}

struct Case {
    name: String,
    proto: Proto,
    wire: Wire,
    expect: Expect,
}

fn pass(key: &'static Key, target: &str) -> Expect {
    Expect::Pass {
        key: Some(key),
        target: target.to_string(),
    }
}

fn public(target: &str) -> Expect {
    Expect::Pass {
        key: None,
        target: target.to_string(),
    }
}

const MISSING: Expect = Expect::Keygate(401, "unauthorized");
const INVALID: Expect = Expect::Keygate(401, "invalid_token");
const MALFORMED: Expect = Expect::Keygate(400, "invalid_request");
const FORBIDDEN: Expect = Expect::Keygate(403, "insufficient_scope");
/// HTTP/2: Envoy's codec (nghttp2) refuses the HEADERS frame and closes the connection at
/// once, without a GOAWAY or even its SETTINGS.
const CLOSED: Expect = Expect::Envoy("closed");

fn h(name: &str, value: impl AsRef<[u8]>) -> Field {
    (name.to_string(), value.as_ref().to_vec())
}

fn bearer(key: &str) -> Field {
    h("authorization", format!("Bearer {key}"))
}

fn with_bytes(prefix: &str, bytes: &[u8], suffix: &str) -> Vec<u8> {
    [prefix.as_bytes(), bytes, suffix.as_bytes()].concat()
}

#[derive(Default)]
struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn push(&mut self, name: &str, proto: Proto, wire: Wire, expect: Expect) {
        self.cases.push(Case {
            name: name.to_string(),
            proto,
            wire,
            expect,
        });
    }

    /// HTTP/1.1: `method target` with `headers` written as given (after Host and
    /// Connection: close).
    fn h1(&mut self, name: &str, method: &str, target: &[u8], headers: &[Field], expect: Expect) {
        let mut request = Request::new(method, "");
        request.target = target.to_vec();
        request.headers = headers.to_vec();
        if matches!(method, "POST" | "PUT") {
            request.body = b"{}".to_vec();
        }
        self.push(name, Proto::H1, Wire::H1(request), expect);
    }

    /// HTTP/2 through the h2 crate (which lower-cases header names).
    fn h2(&mut self, name: &str, method: &str, target: &str, headers: &[Field], expect: Expect) {
        let body = if matches!(method, "POST" | "PUT") {
            b"{}".to_vec()
        } else {
            Vec::new()
        };
        let wire = Wire::H2(method.into(), target.into(), headers.to_vec(), body);
        self.push(name, Proto::H2, wire, expect);
    }

    /// HTTP/2 by hand: `:method`, `:scheme`, `:authority`, `:path`, then `headers`.
    fn h2raw(&mut self, name: &str, method: &str, path: &[u8], headers: &[Field], expect: Expect) {
        let mut fields = vec![
            h(":method", method),
            h(":scheme", "http"),
            h(":authority", "keygate.test"),
            h(":path", path),
        ];
        fields.extend_from_slice(headers);
        self.push(name, Proto::H2, Wire::H2Raw(fields, Vec::new()), expect);
    }

    /// HTTP/2 by hand, every field given.
    fn h2fields(&mut self, name: &str, fields: &[Field], expect: Expect) {
        self.push(
            name,
            Proto::H2,
            Wire::H2Raw(fields.to_vec(), Vec::new()),
            expect,
        );
    }

    /// The same request over HTTP/1.1 and, through the h2 crate, HTTP/2, expecting the same.
    fn both(&mut self, name: &str, method: &str, target: &str, headers: &[Field], expect: Expect) {
        self.h1(name, method, target.as_bytes(), headers, expect.clone());
        self.h2(name, method, target, headers, expect);
    }
}

fn basic(user: &str, key: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let pair = [user.as_bytes(), b":", key].concat();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
    .into_bytes()
}

/// Several credentials at once, folded, comma-joined, in other cases.
#[rustfmt::skip]
fn credential_cases(t: &mut Table) {
    let (b, d) = (BROWSE.raw, DOWNLOAD.raw);
    // Envoy joins a repeated Authorization into one value, "Bearer K1,Bearer K2": never a
    // credential keygate reads as a key of either.
    t.both("Authorization twice, same key", "GET", "/data/query", &[bearer(b), bearer(b)], MALFORMED);
    t.both("Authorization twice, two valid keys", "GET", "/data/query", &[bearer(b), bearer(d)], MALFORMED);
    t.both("Authorization twice, valid then unknown", "GET", "/data/download/f", &[bearer(d), bearer(UNKNOWN)], MALFORMED);
    t.both("Authorization twice, unknown then valid", "GET", "/data/download/f", &[bearer(UNKNOWN), bearer(d)], MALFORMED);
    t.both("Authorization twice, lacking scope then scoped", "GET", "/data/download/f", &[bearer(b), bearer(d)], MALFORMED);
    t.both("Authorization twice, valid then empty Bearer", "GET", "/data/query", &[bearer(b), h("authorization", "Bearer")], INVALID);
    t.both("Authorization twice, Basic of another user then valid", "GET", "/data/query", &[h("authorization", basic("alice", d.as_bytes())), bearer(b)], MALFORMED);
    t.both("Authorization and x-api-key, different keys", "GET", "/data/download/f", &[bearer(b), h("x-api-key", d)], MALFORMED);
    t.both("x-api-key twice, same key", "GET", "/data/query", &[h("x-api-key", b), h("x-api-key", b)], pass(&BROWSE, "/data/query"));
    t.both("x-api-key twice, two valid keys", "GET", "/data/download/f", &[h("x-api-key", b), h("x-api-key", d)], MALFORMED);
    t.both("Authorization comma-joined, two keys", "GET", "/data/download/f", &[h("authorization", format!("Bearer {b}, Bearer {d}"))], MALFORMED);
    t.both("Authorization comma-joined, same key", "GET", "/data/query", &[h("authorization", format!("Bearer {b},Bearer {b}"))], MALFORMED);
    t.both("Authorization comma-joined key,key", "GET", "/data/query", &[h("authorization", format!("Bearer {b},{b}"))], INVALID);
    t.both("x-api-key comma-joined, two keys", "GET", "/data/download/f", &[h("x-api-key", format!("{b}, {d}"))], MALFORMED);
    t.both("x-api-key comma-joined without space", "GET", "/data/download/f", &[h("x-api-key", format!("{b},{d}"))], INVALID);

    // obs-fold (RFC 9112 §5.2), HTTP/1.1 only: Envoy unfolds the line into the value
    // (a space for the line break), and keygate judges what the upstream will get.
    t.h1("Authorization folded: key on a continuation line", "GET", b"/data/query", &[h("Authorization", format!("Bearer\r\n {b}"))], pass(&BROWSE, "/data/query"));
    t.h1("Authorization folded with a tab", "GET", b"/data/query", &[h("Authorization", format!("Bearer\r\n\t{b}"))], pass(&BROWSE, "/data/query"));
    t.h1("Authorization folded: key then extra line", "GET", b"/data/query", &[h("Authorization", format!("Bearer {b}\r\n extra"))], MALFORMED);
    t.h1("Authorization folded: key lacking the scope", "GET", b"/admin/keys", &[h("Authorization", format!("Bearer\r\n {b}"))], FORBIDDEN);
    t.h1("identity header folded, public route", "GET", b"/healthz", &[h("X-Api-Key-Id", format!("{SPOOF}\r\n k-admin"))], public("/healthz"));
    t.h1("identity header folded, allowed route", "GET", b"/data/query", &[h("X-Api-Key-Id", format!("{SPOOF}\r\n k-admin")), bearer(b)], pass(&BROWSE, "/data/query"));
    t.h1("continuation line holding an identity header", "GET", b"/healthz", &[h("X-Note", format!("a\r\n X-Api-Key-Id: {SPOOF}"))], public("/healthz"));

    // Names and schemes in any case.
    t.h1("AUTHORIZATION upper-case name", "GET", b"/data/query", &[h("AUTHORIZATION", format!("Bearer {b}"))], pass(&BROWSE, "/data/query"));
    t.h1("x-API-key mixed-case name", "GET", b"/data/query", &[h("x-API-key", b)], pass(&BROWSE, "/data/query"));
    t.h1("AUTHORIZATION bEaReR, route needing another scope", "POST", b"/data/upload/x", &[h("AUTHORIZATION", format!("bEaReR {b}"))], FORBIDDEN);
    t.h2raw("AUTHORIZATION upper-case name (invalid in HTTP/2)", "GET", b"/data/query", &[h("AUTHORIZATION", format!("Bearer {b}"))], CLOSED);
    t.h2raw("x-API-key mixed-case name (invalid in HTTP/2)", "GET", b"/data/query", &[h("x-API-key", b)], CLOSED);
    t.both("scheme bEaReR", "GET", "/data/query", &[h("authorization", format!("bEaReR {b}"))], pass(&BROWSE, "/data/query"));
    t.both("scheme aPiKeY", "GET", "/data/query", &[h("authorization", format!("aPiKeY {b}"))], pass(&BROWSE, "/data/query"));
    t.both("scheme and key split by a tab", "GET", "/data/query", &[h("authorization", format!("Bearer\t{b}"))], pass(&BROWSE, "/data/query"));
    t.both("scheme glued to the key", "GET", "/data/query", &[h("authorization", format!("Bearer{b}"))], MISSING);
    t.both("scheme with a colon", "GET", "/data/query", &[h("authorization", format!("Bearer: {b}"))], MISSING);
    t.both("scheme with a Cyrillic e", "GET", "/data/query", &[h("authorization", format!("B\u{435}arer {b}"))], MISSING);
    t.both("Basic of another user carrying a valid key", "GET", "/data/query", &[h("authorization", basic("admin", b.as_bytes()))], MISSING);
}

/// Bytes outside printable ASCII in the key, in other header values and in the path.
/// Envoy's HTTP/1 codec refuses NUL and DEL in a value, drops a lone CR and ends the line
/// at a bare LF; nghttp2 refuses NUL, CR, LF and DEL. What passes them, keygate judges.
#[rustfmt::skip]
fn byte_cases(t: &mut Table) {
    let b = BROWSE.raw;
    let lone_cr = |x: &str| format!("{x} (Envoy drops a lone CR)");
    // (what, bytes, HTTP/1.1 key with the bytes inside, HTTP/2 same)
    let key_bytes: [(&str, &[u8], Expect, Expect); 6] = [
        ("NUL", b"\x00", Expect::Envoy("400"), CLOSED),
        ("CR alone", b"\r", INVALID, CLOSED),
        ("DEL", b"\x7f", Expect::Envoy("400"), CLOSED),
        ("0x80", b"\x80", MALFORMED, MALFORMED),
        ("0xff", b"\xff", MALFORMED, MALFORMED),
        ("tab", b"\t", MALFORMED, MALFORMED),
    ];
    for (what, bytes, h1_inside, h2_inside) in key_bytes {
        let inside = with_bytes(&format!("Bearer {b}"), bytes, "x");
        let after = with_bytes(&format!("Bearer {b}"), bytes, "");
        // A trailing tab is whitespace around the key; a lone CR is gone.
        let h1_after = match what {
            "tab" | "CR alone" => pass(&BROWSE, "/data/query"),
            _ => h1_inside.clone(),
        };
        let label = |x: &str| if what == "CR alone" { lone_cr(x) } else { x.to_string() };
        t.h1(&label(&format!("key with {what} inside")), "GET", b"/data/query", &[h("Authorization", &inside)], h1_inside.clone());
        t.h1(&label(&format!("valid key then {what}")), "GET", b"/data/query", &[h("Authorization", &after)], h1_after);
        t.h1(&label(&format!("x-api-key with {what} inside")), "GET", b"/data/query", &[h("x-api-key", with_bytes(b, bytes, "x"))], h1_inside);
        t.h2raw(&format!("key with {what} inside"), "GET", b"/data/query", &[h("authorization", &inside)], h2_inside);
        // Base64 and percent-encoding carry any byte past the codecs: keygate alone judges.
        t.both(&format!("Basic key with {what} inside"), "GET", "/data/query", &[h("authorization", basic("apikey", &with_bytes(b, bytes, "x")))], MALFORMED);
        let encoded: String = bytes.iter().map(|x| format!("%{x:02X}")).collect();
        t.both(&format!("api_key with encoded {what} inside"), "GET", &format!("/data/query?api_key={b}{encoded}x"), &[], MALFORMED);
    }
    t.both("api_key with an encoded CRLF and a header", "GET", &format!("/data/query?api_key={b}%0D%0Ax-api-key-id:%20{SPOOF}"), &[], MALFORMED);

    // Other header values: an identity header keygate would not see must not exist.
    t.h1("bare LF in a value starting an identity header", "GET", b"/healthz", &[h("X-Note", format!("a\nX-Api-Key-Id: {SPOOF}"))], public("/healthz"));
    t.h1("bare LF in a value starting an identity header, allowed route", "GET", b"/data/query", &[h("X-Note", format!("a\nX-Api-Key-Id: {SPOOF}")), bearer(b)], pass(&BROWSE, "/data/query"));
    t.h1(&lone_cr("lone CR in a value before an identity header"), "GET", b"/healthz", &[h("X-Note", format!("a\rX-Api-Key-Id: {SPOOF}"))], public("/healthz"));
    t.h2raw("CRLF in a value starting an identity header", "GET", b"/healthz", &[h("x-note", format!("a\r\nx-api-key-id: {SPOOF}"))], CLOSED);
    t.h1("NUL in an identity header", "GET", b"/healthz", &[h("X-Api-Key-Id", format!("{SPOOF}\0"))], Expect::Envoy("400"));
    t.h2raw("NUL in an identity header", "GET", b"/healthz", &[h("x-api-key-id", format!("{SPOOF}\0"))], CLOSED);
    t.h1("DEL in an identity header", "GET", b"/healthz", &[h("X-Api-Key-Scopes", format!("{SPOOF}\x7fadmin"))], Expect::Envoy("400"));
    t.h2raw("DEL in an identity header", "GET", b"/healthz", &[h("x-api-key-scopes", format!("{SPOOF}\x7fadmin"))], CLOSED);
    t.both("obs-text in an identity header, public route", "GET", "/healthz", &[h("x-api-key-id", with_bytes(SPOOF, b"\xc3\xa9\xff", ""))], public("/healthz"));
    t.both("obs-text in an identity header, allowed route", "GET", "/data/query", &[h("x-api-key-owner", with_bytes(SPOOF, b"\xff\x80", "")), bearer(b)], pass(&BROWSE, "/data/query"));
    t.both("tab in an identity header, allowed route", "GET", "/data/query", &[h("x-api-key-scopes", format!("{SPOOF}\tadmin")), bearer(b)], pass(&BROWSE, "/data/query"));

    // The path: Envoy's HTTP/1 codec refuses all of these; over HTTP/2, nghttp2 the
    // control bytes, keygate the rest.
    let path_bytes: [(&str, &[u8], Expect); 7] = [
        ("NUL", b"\x00", CLOSED),
        ("CR alone", b"\r", CLOSED),
        ("DEL", b"\x7f", CLOSED),
        ("0x80", b"\x80", MALFORMED),
        ("0xff", b"\xff", MALFORMED),
        ("tab", b"\t", CLOSED),
        ("UTF-8", "\u{e9}".as_bytes(), MALFORMED),
    ];
    for (what, bytes, h2_expect) in path_bytes {
        let path = with_bytes("/data/query/", bytes, "x");
        t.h1(&format!("path with {what}"), "GET", &path, &[bearer(b)], Expect::Envoy("400"));
        t.h2raw(&format!("path with {what}"), "GET", &path, &[bearer(b)], h2_expect.clone());
        // From a public prefix towards a protected route, without a key.
        let climb = with_bytes("/healthz/", bytes, "/../../admin/keys");
        t.h1(&format!("path with {what} climbing from a public route"), "GET", &climb, &[], Expect::Envoy("400"));
        t.h2raw(&format!("path with {what} climbing from a public route"), "GET", &climb, &[], h2_expect);
    }
}

/// Around Envoy's limits: 60 KiB of request headers, 100 headers (its defaults).
#[rustfmt::skip]
fn size_cases(t: &mut Table) {
    let b = BROWSE.raw;
    // The request line, Host, Connection and Authorization take about 150 bytes.
    let under = "a".repeat(60 * 1024 - 512);
    let over = "a".repeat(60 * 1024 + 512);
    t.both("60 KiB header just under the limit, valid key", "GET", "/data/query", &[bearer(b), h("x-pad", &under)], pass(&BROWSE, "/data/query"));
    t.both("60 KiB header just under the limit, no key", "GET", "/data/query", &[h("x-pad", &under)], MISSING);
    // Over the limit: 431 over HTTP/1.1; over HTTP/2 Envoy resets the stream.
    t.h1("60 KiB header just over the limit, valid key", "GET", b"/data/query", &[bearer(b), h("x-pad", &over)], Expect::Envoy("431"));
    t.h2("60 KiB header just over the limit, valid key", "GET", "/data/query", &[bearer(b), h("x-pad", &over)], Expect::Envoy("reset(INTERNAL_ERROR)"));
    t.h1("60 KiB header just over the limit, no key", "GET", b"/data/query", &[h("x-pad", &over)], Expect::Envoy("431"));
    t.h2("60 KiB header just over the limit, no key", "GET", "/data/query", &[h("x-pad", &over)], Expect::Envoy("reset(INTERNAL_ERROR)"));
    t.both("60 KiB Authorization, unknown key", "GET", "/data/query", &[h("authorization", format!("Bearer kg_{under}"))], INVALID);
    t.both("60 KiB identity header, public route", "GET", "/healthz", &[h("x-api-key-id", format!("{SPOOF}{under}"))], public("/healthz"));
    t.both("60 KiB identity header, allowed route", "GET", "/data/query", &[bearer(b), h("x-api-key-scopes", format!("{SPOOF} {under}"))], pass(&BROWSE, "/data/query"));

    let padded = |n: usize, first: Field| {
        let mut headers = vec![first];
        headers.extend((headers.len()..n).map(|i| h(&format!("x-pad-{i}"), "1")));
        headers
    };
    // Envoy's default limit is 100 header fields: over HTTP/1.1 Host and Connection count
    // (every request of the table has them), over HTTP/2 the four pseudo-headers do.
    for (fields, within) in [(99, true), (100, true), (101, false), (200, false)] {
        let (ok, none) = if within {
            (pass(&BROWSE, "/data/query"), MISSING)
        } else {
            (Expect::Envoy("431"), Expect::Envoy("431"))
        };
        t.h1(&format!("{fields} header fields, valid key"), "GET", b"/data/query", &padded(fields - 2, bearer(b)), ok);
        t.h1(&format!("{fields} header fields, no key"), "GET", b"/data/query", &padded(fields - 2, h("x-pad", "0")), none);
        let (ok, none) = if within {
            (pass(&BROWSE, "/data/query"), MISSING)
        } else {
            (Expect::Envoy("reset(INTERNAL_ERROR)"), Expect::Envoy("reset(INTERNAL_ERROR)"))
        };
        t.h2(&format!("{fields} header fields, valid key"), "GET", "/data/query", &padded(fields - 4, bearer(b)), ok);
        t.h2(&format!("{fields} header fields, no key"), "GET", "/data/query", &padded(fields - 4, h("x-pad", "0")), none);
    }

    // Many spoofed identity headers, every one removed.
    let mut spoofs = vec![bearer(b)];
    for i in 0..30 {
        for name in FORWARD {
            spoofs.push(h(name, format!("{SPOOF}-{i}")));
        }
    }
    t.both("90 spoofed identity headers, allowed route", "GET", "/data/query", &spoofs, pass(&BROWSE, "/data/query"));
    spoofs.remove(0);
    t.both("90 spoofed identity headers, public route", "GET", "/healthz", &spoofs, public("/healthz"));
    t.both("90 spoofed identity headers, no key", "GET", "/data/query", &spoofs, MISSING);
}

/// Methods and request-target forms (RFC 9112 §3.2).
#[rustfmt::skip]
fn method_cases(t: &mut Table) {
    let (b, d, a) = (BROWSE.raw, DOWNLOAD.raw, ADMIN.raw);
    t.both("HEAD with a scoped key", "HEAD", "/data/query", &[bearer(b)], pass(&BROWSE, "/data/query"));
    t.both("HEAD without a key", "HEAD", "/data/query", &[], MISSING);
    t.both("HEAD with a key lacking the scope", "HEAD", "/admin/keys", &[bearer(b)], FORBIDDEN);
    t.both("HEAD on a POST/PUT-only route", "HEAD", "/data/upload/x", &[bearer(UPLOAD.raw)], FORBIDDEN);
    t.both("OPTIONS on a GET/HEAD-only route", "OPTIONS", "/data/query", &[bearer(b)], FORBIDDEN);
    t.both("OPTIONS without a key", "OPTIONS", "/data/download/f", &[], MISSING);
    t.both("OPTIONS with a scoped key", "OPTIONS", "/data/download/f", &[bearer(d)], pass(&DOWNLOAD, "/data/download/f"));
    t.both("OPTIONS on a public route", "OPTIONS", "/healthz", &[], public("/healthz"));
    // A lower-case method: Envoy's HTTP/1 codec refuses it; over HTTP/2 it reaches keygate,
    // which matches rule methods without regard to case (as frameworks that take `get` for
    // `GET` would route it), so `get` meets the GET rule's scope.
    t.h1("lower-case get, scoped key", "get", b"/data/query", &[bearer(b)], Expect::Envoy("400"));
    t.h2("lower-case get, scoped key", "get", "/data/query", &[bearer(b)], pass(&BROWSE, "/data/query"));
    t.h2("lower-case get, key lacking the scope", "get", "/data/query", &[bearer(a)], FORBIDDEN);
    t.h2("lower-case get, no key", "get", "/data/query", &[], MISSING);
    t.h2("lower-case post, key lacking the scope", "post", "/data/upload/x", &[bearer(b)], FORBIDDEN);
    t.h2("lower-case post on a GET-only route", "post", "/data/query", &[bearer(b)], FORBIDDEN);
    t.both("unknown method without a key", "PROPFIND", "/data/download/f", &[], MISSING);
    t.both("TRACE with a key lacking the scope", "TRACE", "/data/download/f", &[bearer(b)], FORBIDDEN);

    // Envoy answers a target that is not a path itself (404, before any filter).
    t.h1("OPTIONS *, no key", "OPTIONS", b"*", &[], Expect::Envoy("404"));
    t.h1("OPTIONS *, admin key", "OPTIONS", b"*", &[bearer(a)], Expect::Envoy("404"));
    t.h2raw("OPTIONS *, no key", "OPTIONS", b"*", &[], Expect::Envoy("404"));
    t.h2raw("OPTIONS *, admin key", "OPTIONS", b"*", &[bearer(a)], Expect::Envoy("404"));
    t.h1("GET *, admin key", "GET", b"*", &[bearer(a)], Expect::Envoy("400"));
    t.h2raw("GET *, admin key", "GET", b"*", &[bearer(a)], CLOSED);
    // CONNECT has no path: keygate refuses it, key or not.
    t.h1("CONNECT, no key", "CONNECT", b"keygate.test:443", &[], MALFORMED);
    t.h1("CONNECT, admin key", "CONNECT", b"keygate.test:443", &[bearer(a)], MALFORMED);
    t.h2("CONNECT, no key", "CONNECT", "keygate.test:443", &[], MALFORMED);
    t.h2("CONNECT, admin key", "CONNECT", "keygate.test:443", &[bearer(a)], MALFORMED);
    t.h2fields("CONNECT with a :path, admin key", &[h(":method", "CONNECT"), h(":authority", "keygate.test:443"), h(":path", "/admin/keys"), bearer(a)], CLOSED);

    // Absolute-form: Envoy takes the path from the URL, and keygate judges that path.
    t.h1("absolute-form, scoped key", "GET", b"http://keygate.test/data/query", &[bearer(b)], pass(&BROWSE, "/data/query"));
    t.h1("absolute-form, no key", "GET", b"http://keygate.test/data/query", &[], MISSING);
    t.h1("absolute-form, key lacking the scope", "GET", b"http://keygate.test/admin/keys", &[bearer(b)], FORBIDDEN);
    t.h1("absolute-form to another host, no key", "GET", b"http://upstream.internal/admin/keys", &[], MISSING);
    t.h1("absolute-form climbing from a public route", "GET", b"http://keygate.test/healthz/../admin/keys", &[], MISSING);
    t.h1("absolute-form with userinfo", "GET", b"http://user:pw@keygate.test/admin/keys", &[], MISSING);
    t.h1("absolute-form without a path", "GET", b"http://keygate.test", &[bearer(b)], FORBIDDEN);
    t.h1("authority-form on GET", "GET", b"keygate.test:80", &[bearer(a)], Expect::Envoy("400"));
    t.h2raw("absolute URL as :path, admin route", "GET", b"http://keygate.test/admin/keys", &[bearer(b)], CLOSED);
    t.h2raw("absolute URL as :path, no key", "GET", b"http://keygate.test/data/query", &[], CLOSED);
    t.h2fields("two :path, public then admin", &[h(":method", "GET"), h(":scheme", "http"), h(":authority", "keygate.test"), h(":path", "/healthz"), h(":path", "/admin/keys")], CLOSED);
    t.h2fields("two :method, GET then POST", &[h(":method", "GET"), h(":method", "POST"), h(":scheme", "http"), h(":authority", "keygate.test"), h(":path", "/data/query"), bearer(b)], CLOSED);
    t.h2fields("no :path", &[h(":method", "GET"), h(":scheme", "http"), h(":authority", "keygate.test"), bearer(b)], CLOSED);
    t.h2fields("pseudo-header after a regular one", &[h(":method", "GET"), h(":scheme", "http"), h(":authority", "keygate.test"), bearer(b), h(":path", "/data/query")], CLOSED);
}

/// The query parameter source (README "Credentials"), read as web frameworks read a query.
#[rustfmt::skip]
fn query_cases(t: &mut Table) {
    let (b, d) = (BROWSE.raw, DOWNLOAD.raw);
    let q = |query: &str| format!("/data/query?{query}");
    t.both("api_key twice, same key", "GET", &q(&format!("api_key={b}&api_key={b}")), &[], pass(&BROWSE, "/data/query"));
    t.both("api_key twice, two valid keys", "GET", &q(&format!("api_key={b}&api_key={d}")), &[], MALFORMED);
    t.both("api_key twice, valid then unknown", "GET", &q(&format!("api_key={b}&api_key={UNKNOWN}")), &[], MALFORMED);
    t.both("api_key twice, empty then valid", "GET", &q(&format!("api_key=&api_key={b}")), &[], MALFORMED);
    t.both("api_key with an empty value", "GET", &q("api_key="), &[], MALFORMED);
    t.both("api_key without a value", "GET", &q("api_key"), &[], MALFORMED);
    t.both("api_key of a space", "GET", &q("api_key=%20"), &[], MALFORMED);
    t.both("api_key with an empty value, public route", "GET", "/healthz?api_key=", &[], MALFORMED);
    t.both("api%5Fkey: encoded name", "GET", &q(&format!("x=1&api%5Fkey={b}")), &[], pass(&BROWSE, "/data/query?x=1"));
    t.both("api%5fkey and api_key, two keys", "GET", &q(&format!("api%5fkey={d}&api_key={b}")), &[], MALFORMED);
    t.both("%61pi_key: encoded letter", "GET", &q(&format!("%61pi_key={b}")), &[], pass(&BROWSE, "/data/query"));
    t.both("api_key%00: name with NUL, unknown key", "GET", &q(&format!("api_key%00={UNKNOWN}")), &[], MISSING);
    t.both("api_key%00 beside a valid Bearer", "GET", &q(&format!("api_key%00={UNKNOWN}")), &[bearer(b)], pass(&BROWSE, &q(&format!("api_key%00={UNKNOWN}"))));
    t.both("API_KEY upper-case name", "GET", &q(&format!("API_KEY={b}")), &[], MISSING);
    t.both("api_key[] name", "GET", &q(&format!("api_key[]={b}")), &[], MISSING);
    t.both("api_key with a ;-joined second key", "GET", &q(&format!("api_key={b};api_key={d}")), &[], INVALID);
    t.both("api_key with a bad escape", "GET", &q("api_key=%zz"), &[], MALFORMED);
    t.both("api_key key with legacy prefix", "GET", &q(&format!("api_key=apikey%7C{b}")), &[], pass(&BROWSE, "/data/query"));
    t.both("api_key kept only elsewhere: a=1&api_key&b=2", "GET", &q(&format!("a=1&api_key={b}&b=2")), &[], pass(&BROWSE, "/data/query?a=1&b=2"));
    t.both("api_key on a route needing another scope", "GET", &format!("/admin/keys?api_key={b}"), &[], FORBIDDEN);
    t.both("key in header and query, same", "GET", &q(&format!("api_key={b}")), &[bearer(b)], pass(&BROWSE, "/data/query"));
    t.both("key in header and query, different", "GET", &format!("/data/download/f?api_key={d}"), &[bearer(b)], MALFORMED);
    t.both("key in x-api-key and query, different", "GET", &format!("/data/download/f?api_key={b}"), &[h("x-api-key", d)], MALFORMED);
    // A fragment is never sent by a browser; Envoy refuses one in the request target.
    t.h1("api_key in a fragment", "GET", format!("/data/query#api_key={b}").as_bytes(), &[], Expect::Envoy("400"));
    t.h1("api_key in a fragment after a query", "GET", format!("/data/query?x=1#api_key={b}").as_bytes(), &[], Expect::Envoy("400"));
    t.h2raw("api_key in a fragment", "GET", format!("/data/query#api_key={b}").as_bytes(), &[], Expect::Envoy("400"));
    t.h2raw("api_key in a fragment after a query", "GET", format!("/data/query?x=1#api_key={b}").as_bytes(), &[], Expect::Envoy("400"));
}

/// Paths that try to reach a route of one scope with a key of another (README "Paths").
#[rustfmt::skip]
fn path_cases(t: &mut Table) {
    let (b, d, a) = (BROWSE.raw, DOWNLOAD.raw, ADMIN.raw);
    let browse = [bearer(b)];
    let none: [Field; 0] = [];
    let rows: [(&str, &str, &str, &[Field], Expect); 40] = [
        ("public/../admin, no key", "GET", "/healthz/../admin/keys", &none, MISSING),
        ("public/../admin, browse key", "GET", "/healthz/../admin/keys", &browse, FORBIDDEN),
        ("public/%2e%2e/admin, no key", "GET", "/healthz/%2e%2e/admin/keys", &none, MISSING),
        ("public/%2E%2E/admin, browse key", "GET", "/healthz/%2E%2E/admin/keys", &browse, FORBIDDEN),
        ("public/.%2e/admin, no key", "GET", "/healthz/.%2e/admin/keys", &none, MISSING),
        ("public%2F..%2Fadmin, no key", "GET", "/healthz%2F..%2Fadmin/keys", &none, MALFORMED),
        ("public/..%2fadmin, no key", "GET", "/healthz/..%2fadmin/keys", &none, MALFORMED),
        ("public/..;/admin, no key", "GET", "/healthz/..;/admin/keys", &none, MALFORMED),
        ("public;/../admin, no key", "GET", "/healthz;/../admin/keys", &none, MISSING),
        ("public/%5C../admin, no key", "GET", "/healthz/%5C../admin/keys", &none, MALFORMED),
        ("public/..%5Cadmin, no key", "GET", "/healthz/..%5Cadmin/keys", &none, MALFORMED),
        ("public/%00/../admin, no key", "GET", "/healthz/%00/../admin/keys", &none, MALFORMED),
        ("//admin, browse key", "GET", "//admin/keys", &browse, FORBIDDEN),
        ("///admin//keys, browse key", "GET", "///admin//keys", &browse, FORBIDDEN),
        ("/./admin/./keys, browse key", "GET", "/./admin/./keys", &browse, FORBIDDEN),
        ("/%61dmin (encoded letter), browse key", "GET", "/%61dmin/keys", &browse, FORBIDDEN),
        ("/admin/keys/, browse key", "GET", "/admin/keys/", &browse, FORBIDDEN),
        ("/admin/keys;x, browse key", "GET", "/admin/keys;x", &browse, FORBIDDEN),
        ("/admin;x/keys, browse key", "GET", "/admin;x/keys", &browse, FORBIDDEN),
        ("/admin/keys%3Bx (encoded ;), browse key", "GET", "/admin/keys%3Bx", &browse, FORBIDDEN),
        ("/admin/keys%20, browse key", "GET", "/admin/keys%20", &browse, FORBIDDEN),
        ("/admin/keys%00, browse key", "GET", "/admin/keys%00", &browse, MALFORMED),
        ("/ADMIN/keys (case), admin key", "GET", "/ADMIN/keys", &[bearer(a)], FORBIDDEN),
        ("query/../download, browse key", "GET", "/data/query/../download/f", &browse, FORBIDDEN),
        ("query/%2e%2e/download, browse key", "GET", "/data/query/%2e%2e/download/f", &browse, FORBIDDEN),
        ("query/..%2Fdownload, browse key", "GET", "/data/query/..%2Fdownload/f", &browse, MALFORMED),
        ("query%2f..%2fdownload, browse key", "GET", "/data/query%2f..%2fdownload/f", &browse, MALFORMED),
        ("query/../../admin, browse key", "GET", "/data/query/../../admin/keys", &browse, FORBIDDEN),
        ("query/../../../admin (above root)", "GET", "/data/query/../../../admin/keys", &browse, MALFORMED),
        ("/%2e%2e/admin (above root)", "GET", "/%2e%2e/admin/keys", &[bearer(a)], MALFORMED),
        ("query/..;jsessionid/download, browse key", "GET", "/data/query/..;jsessionid=1/download/f", &browse, MALFORMED),
        ("query/%%32%65 (double escape), browse key", "GET", "/data/query/%%32%65%%32%65/download", &browse, MALFORMED),
        ("download/./f, browse key", "GET", "/data/download/./f", &browse, FORBIDDEN),
        ("download%2ff, download key", "GET", "/data/download%2ff", &[bearer(d)], MALFORMED),
        ("downloa%64 (encoded letter), browse key", "GET", "/data/downloa%64/f", &browse, FORBIDDEN),
        ("/data/queryx (not a segment), browse key", "GET", "/data/queryx/../download/f", &browse, FORBIDDEN),
        ("upload/../query, POST, upload key", "POST", "/data/upload/../query", &[bearer(UPLOAD.raw)], FORBIDDEN),
        ("query?/../../admin: dots in the query", "GET", "/data/query?/../../admin/keys", &browse, pass(&BROWSE, "/data/query?/../../admin/keys")),
        ("/%61dmin (encoded letter), admin key", "GET", "/%61dmin/keys", &[bearer(a)], pass(&ADMIN, "/admin/keys")),
        ("downloa%64 (encoded letter), download key", "GET", "/data/downloa%64/f", &[bearer(d)], pass(&DOWNLOAD, "/data/download/f")),
    ];
    for (name, method, path, headers, expect) in rows {
        t.both(name, method, path, headers, expect);
    }
    // Raw backslashes: no URI may hold one, so HTTP/2 goes by hand.
    for (name, path) in [
        ("public\\..\\admin, no key", "/healthz\\..\\admin\\keys"),
        ("public/..\\admin, no key", "/healthz/..\\admin/keys"),
    ] {
        t.h1(name, "GET", path.as_bytes(), &[], MALFORMED);
        t.h2raw(name, "GET", path.as_bytes(), &[], MALFORMED);
    }
    // Escapes that stay escaped: the upstream gets them as sent, matched as sent. An
    // upstream that decodes twice, or decodes overlong UTF-8, would read another path.
    for (name, path) in [
        ("query/%252e%252e/download (double-encoded dots)", "/data/query/%252e%252e/download/f"),
        ("query/%c0%ae%c0%ae/download (overlong UTF-8 dots)", "/data/query/%C0%AE%C0%AE/download/f"),
    ] {
        t.both(name, "GET", path, &browse, pass(&BROWSE, path));
    }
}

/// The identity headers keygate sets (README "What the upstream sees"), sent by the client in every case and
/// repeated, on allowed and refused routes alike.
#[rustfmt::skip]
fn spoof_cases(t: &mut Table) {
    let b = BROWSE.raw;
    let variants: [(&str, Headers); 6] = [
        ("lower-case", FORWARD.iter().map(|n| h(n, SPOOF)).collect()),
        ("UPPER-CASE", FORWARD.iter().map(|n| h(&n.to_ascii_uppercase(), SPOOF)).collect()),
        ("Mixed-Case", vec![h("X-Api-Key-Id", SPOOF), h("X-API-Key-Owner", SPOOF), h("x-Api-KEY-scopes", SPOOF)]),
        ("repeated", FORWARD.iter().flat_map(|n| {[h(n, format!("{SPOOF}-1")), h(&n.to_ascii_uppercase(), format!("{SPOOF}-2")), h(n, "")]}).collect()),
        ("with underscores", vec![h("x_api_key_id", SPOOF), h("X_API_KEY_OWNER", SPOOF), h("x-api_key-scopes", SPOOF)]),
        ("padded with spaces", FORWARD.iter().map(|n| h(n, format!("  {SPOOF}  "))).collect()),
    ];
    let routes: [(&str, &str, Headers, Expect); 7] = [
        ("public route, no key", "/healthz", vec![], public("/healthz")),
        ("allowed, Bearer", "/data/query", vec![bearer(b)], pass(&BROWSE, "/data/query")),
        ("allowed, query key", "/data/query?api_key=KEY", vec![], pass(&BROWSE, "/data/query")),
        ("no key", "/data/query", vec![], MISSING),
        ("unknown key", "/data/query", vec![bearer(UNKNOWN)], INVALID),
        ("key lacking the scope", "/admin/keys", vec![bearer(b)], FORBIDDEN),
        ("unmatched route", "/elsewhere", vec![bearer(b)], FORBIDDEN),
    ];
    for (variant, spoofs) in &variants {
        for (route, target, credential, expect) in &routes {
            let target = target.replace("KEY", b);
            let name = format!("identity headers {variant}, {route}");
            let mut headers = spoofs.clone();
            headers.extend(credential.iter().cloned());
            t.h1(&name, "GET", target.as_bytes(), &headers, expect.clone());
            // HTTP/2 names are lower-case on the wire (the h2 crate lower-cases them);
            // upper-case ones are malformed, sent by hand: Envoy closes the connection.
            if !variant.contains("UPPER") && !variant.contains("Mixed") {
                t.h2(&name, "GET", &target, &headers, expect.clone());
            } else if route.starts_with("public") || route == &"allowed, Bearer" {
                t.h2raw(&name, "GET", target.as_bytes(), &headers, CLOSED);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running the table

/// What the client got: a status (or what stood in for one) and the `error` of keygate's
/// JSON body, if the body is one.
struct Observed {
    status: String,
    keygate_error: Option<String>,
}

fn keygate_error(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    doc.get("error_description")?;
    Some(doc.get("error")?.as_str()?.to_string())
}

fn send(listener: SocketAddr, wire: &Wire) -> Observed {
    let (status, body) = match wire {
        Wire::H1(request) => match support::try_request(listener, request) {
            Ok(response) => (response.status.to_string(), response.body),
            Err(_) => ("closed".to_string(), Vec::new()),
        },
        Wire::H2(method, target, headers, body) => {
            answer(h2client::send(listener, method, target, headers, body))
        }
        Wire::H2Raw(fields, body) => answer(h2client::send_raw(listener, fields, body)),
    };
    Observed {
        status,
        keygate_error: keygate_error(&body),
    }
}

fn answer(answer: Answer) -> (String, Vec<u8>) {
    let status = answer.describe();
    match answer {
        Answer::Response { body, .. } => (status, body),
        _ => (status, Vec::new()),
    }
}

/// How many requests Envoy has sent to the upstream cluster.
fn sent_upstream(envoy: &Envoy) -> u64 {
    envoy
        .stats("upstream_rq_total")
        .get("cluster.upstream.upstream_rq_total")
        .copied()
        .unwrap_or(0)
}

/// Checks one forwarded request: `key`'s identity exactly once each (none without a key),
/// no look-alike of an identity header, no client-sent identity value, no credential.
fn check_forwarded(seen: &Seen, key: Option<&Key>, target: &str) -> Result<(), String> {
    if seen.target != target {
        return Err(format!(
            "upstream target {:?}, expected {target:?}",
            seen.target
        ));
    }
    let expected = key.map(|k| [k.id, k.owner, k.scopes]);
    for (i, name) in FORWARD.iter().enumerate() {
        let want: Vec<&str> = expected.iter().map(|e| e[i]).collect();
        if seen.values(name) != want {
            return Err(format!(
                "upstream {name}: {:?}, expected {want:?}",
                seen.values(name)
            ));
        }
    }
    for (name, value) in &seen.headers {
        // Names are lower-case here; `_` for `-` is how CGI-style servers read them.
        let dashed = name.replace('_', "-");
        if FORWARD.contains(&dashed.as_str()) && (dashed != *name || value.contains(SPOOF)) {
            return Err(format!("upstream got the client's {name}: {value:?}"));
        }
        if let Some(k) = KEYS.iter().find(|k| value.contains(k.raw)) {
            return Err(format!("upstream got {}'s raw key in {name}", k.id));
        }
    }
    if let Some(k) = KEYS.iter().find(|k| seen.target.contains(k.raw)) {
        return Err(format!("upstream got {}'s raw key in the target", k.id));
    }
    if key.is_some() {
        for name in ["authorization", "x-api-key"] {
            if !seen.values(name).is_empty() {
                return Err(format!("upstream got the credential header {name}"));
            }
        }
    }
    Ok(())
}

/// A HEAD answer has no body to tell keygate's refusal from Envoy's.
fn is_head(case: &Case) -> bool {
    matches!(&case.wire, Wire::H1(r) if r.method == "HEAD")
        || matches!(&case.wire, Wire::H2(m, ..) if m == "HEAD")
}

/// The client's answer against the row; `Ok` holds what the upstream saw, for the report.
fn check(case: &Case, observed: &Observed, seen: &[Seen], sent: u64) -> Result<String, String> {
    let saw = match seen {
        [] => "nothing".to_string(),
        [one] => format!(
            "{} {} as {}",
            one.method,
            one.target,
            one.values(FORWARD[0])
                .first()
                .copied()
                .unwrap_or("(no identity)")
        ),
        many => format!("{} requests", many.len()),
    };
    if sent != seen.len() as u64 {
        return Err(format!(
            "Envoy sent {sent} request(s) upstream, the upstream recorded {}: {seen:?}",
            seen.len()
        ));
    }
    let head = is_head(case);
    match &case.expect {
        Expect::Pass { key, target } => {
            if observed.status != "200" {
                return Err(format!("status {}, expected 200 ({saw})", observed.status));
            }
            let [one] = seen else {
                return Err(format!("upstream saw {saw}, expected one request"));
            };
            check_forwarded(one, *key, target)?;
        }
        Expect::Keygate(status, error) => {
            let refused_by_keygate = head || observed.keygate_error.as_deref() == Some(*error);
            if observed.status != status.to_string() || !refused_by_keygate {
                return Err(format!(
                    "got {} {:?}, expected keygate's {status} {error}",
                    observed.status, observed.keygate_error
                ));
            }
        }
        Expect::Envoy(status) => {
            if observed.status != *status || observed.keygate_error.is_some() {
                return Err(format!(
                    "got {} {:?}, expected Envoy's {status}",
                    observed.status, observed.keygate_error
                ));
            }
        }
    }
    if !matches!(case.expect, Expect::Pass { .. }) && !seen.is_empty() {
        return Err(format!("refused, yet the upstream saw {saw}"));
    }
    Ok(saw)
}

/// Sends the cases at `which`, on 8 connections at a time; the answers in the same order.
fn send_all(listener: SocketAddr, cases: &[Case], which: &[usize]) -> Vec<Observed> {
    let next = AtomicUsize::new(0);
    let answers: Mutex<Vec<Option<Observed>>> = Mutex::new(which.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = which.get(n) else { break };
                let observed = send(listener, &cases[i].wire);
                answers.lock().unwrap()[n] = Some(observed);
            });
        }
    });
    answers
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|a| a.expect("every case was sent"))
        .collect()
}

#[test]
fn hostile_requests_never_reach_the_upstream_without_the_right_key() {
    let mut table = Table::default();
    credential_cases(&mut table);
    byte_cases(&mut table);
    size_cases(&mut table);
    method_cases(&mut table);
    query_cases(&mut table);
    path_cases(&mut table);
    spoof_cases(&mut table);

    let upstream = Upstream::start();
    let envoy = Envoy::start(&config(), &upstream);
    let cases = &table.cases;
    let mut rows: Vec<Option<(String, String)>> = vec![None; cases.len()];
    let mut failures = Vec::new();
    let mut record = |i: usize, observed: &Observed, result: Result<String, String>| {
        let case = &cases[i];
        let saw = result.unwrap_or_else(|why| {
            failures.push(format!("{} [{}]: {why}", case.name, case.proto.name()));
            format!("FAILED: {why}")
        });
        // Whose answer it was: keygate's carries its `error`.
        let status = match &observed.keygate_error {
            Some(error) => format!("{} {error}", observed.status),
            None if observed.status == "200" || is_head(case) => observed.status.clone(),
            None => format!("{} (Envoy)", observed.status),
        };
        rows[i] = Some((status, saw));
    };

    // Requests to be refused, several at a time (over HTTP/2, Envoy takes a second to
    // close a connection whose HEADERS it refused): the upstream must see none of them.
    let refused: Vec<usize> = (0..cases.len())
        .filter(|&i| !matches!(cases[i].expect, Expect::Pass { .. }))
        .collect();
    let before = sent_upstream(&envoy);
    let answers = send_all(envoy.listener, cases, &refused);
    let seen = upstream.take();
    let sent = sent_upstream(&envoy) - before;
    for (&i, observed) in refused.iter().zip(&answers) {
        record(i, observed, check(&cases[i], observed, &[], 0));
    }
    // Each row above already failed if it was not refused; this names what got through.
    let leaked = if seen.is_empty() && sent == 0 {
        None
    } else {
        let what: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {} {:?}", s.method, s.target, s.values(FORWARD[0])))
            .collect();
        Some(format!(
            "while only requests to be refused were sent, Envoy sent {sent} upstream and the \
             upstream saw {what:?}"
        ))
    };

    // Requests that pass, one at a time: each reaches the upstream once, as itself.
    for i in (0..cases.len()).filter(|i| !refused.contains(i)) {
        let before = sent_upstream(&envoy);
        let observed = send(envoy.listener, &cases[i].wire);
        let seen = upstream.take();
        let sent = sent_upstream(&envoy) - before;
        record(i, &observed, check(&cases[i], &observed, &seen, sent));
    }

    let mut report = String::new();
    for (case, row) in cases.iter().zip(&rows) {
        let (status, saw) = row.as_ref().expect("every case ran");
        let _ = writeln!(
            report,
            "| {} | {} | {status} | {saw} |",
            case.name,
            case.proto.name()
        );
    }
    let count = |p: Proto| table.cases.iter().filter(|c| c.proto == p).count();
    let summary = format!(
        "adversarial: {} cases, HTTP/1.1 {}, HTTP/2 {}",
        table.cases.len(),
        count(Proto::H1),
        count(Proto::H2)
    );
    println!("| case | protocol | status | upstream saw |\n|---|---|---|---|\n{report}");
    // Past the test harness's capture: the count shows in every run.
    let _ = writeln!(std::io::stderr(), "{summary}");
    failures.extend(leaked);
    assert!(
        failures.is_empty(),
        "{} of {summary} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Through all of it the filter kept working, in the VM it started in.
    let response = envoy.send(&Request::get("/data/query").bearer(BROWSE.raw));
    assert_eq!(response.status, 200);
    check_forwarded(&upstream.take_one(), Some(&BROWSE), "/data/query").unwrap();
    envoy.assert_no_vm_reload();
}
