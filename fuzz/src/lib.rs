//! What each fuzz target checks, one function per target. The targets in `fuzz_targets/`
//! only hand libFuzzer's input to these; `tests/fuzz_seeds.rs` in the main crate replays
//! the seed corpus (`fuzz/seeds/`) through the same functions on stable Rust, so `make test`
//! proves every seed still passes.
//!
//! A panic is a finding: beyond "does not crash", each check asserts what must hold for
//! any input (a normalized path is normal, a forwarded request carries only the caller's
//! identity, a record survives its shared-data encoding, ...).

use keygate_core::config::Config;
use keygate_core::credential::{self, Presented, Scheme, Source};
use keygate_core::decision::{self, Allowed, HeaderEditor, Verdict};
use keygate_core::header::HeaderName;
use keygate_core::header_map;
use keygate_core::key_set_bucket;
use keygate_core::key_set_scan::{Scan, Scanned, Step};
use keygate_core::lookup_cache::{self, Answer};
use keygate_core::path;
use keygate_core::record::{InlineKeys, KeyHash, KeyRecord, KeyRecordDoc, KeySetDoc, KeyState};
use keygate_core::record_codec;
use keygate_core::rules::{Access, Unmatched};
use keygate_core::scope::ScopeIndex;
use keygate_core::timestamp::Timestamp;
use std::sync::OnceLock;

/// The fuzz inputs' clock: fixed, so a run is reproducible.
fn now() -> Timestamp {
    Timestamp::from_unix_nanos(1_795_000_000_000_000_000)
}

/// A request written as text, one header per line, `name: value` (a pseudo-header keeps
/// its leading `:`). Names are lowercased, as Envoy hands them to filters; values are raw
/// bytes, whatever they hold.
pub fn headers_from_lines(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().skip(1).position(|b| *b == b':')? + 1;
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            let value = line[colon + 1..]
                .strip_prefix(b" ")
                .unwrap_or(&line[colon + 1..]);
            Some((name, value.to_vec()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// credential: every source kind, every occurrence

/// Input: the query string on the first line, then headers as in [`headers_from_lines`].
pub fn credential(data: &[u8]) {
    static SOURCES: OnceLock<Vec<Source>> = OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        vec![
            Source::Authorization {
                schemes: Scheme::ALL.to_vec(),
                basic_username: "apikey".into(),
            },
            Source::Header(HeaderName::parse("x-api-key").unwrap()),
            Source::Query("api_key".into()),
        ]
    });
    let prefixes: [Box<str>; 1] = ["apikey|".into()];
    let (first, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[data.len()..]),
    };
    let Ok(query) = std::str::from_utf8(first) else {
        return;
    };
    let mut headers = headers_from_lines(rest);
    let forward = outcome(credential::extract(
        sources,
        &prefixes,
        &headers,
        Some(query),
    ));
    if let Outcome::Key(key, sources) = &forward {
        assert!(!key.is_empty(), "an empty key was accepted");
        assert!(
            key.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "a key with whitespace or non-printable bytes was accepted: {key:?}"
        );
        assert!(*sources != 0 && *sources < 8, "sources {sources:b}");
    }
    // Which key a request carries cannot depend on the order of its headers: any two
    // different keys, or any unreadable credential, refuse it whatever comes first.
    headers.reverse();
    let backward = outcome(credential::extract(
        sources,
        &prefixes,
        &headers,
        Some(query),
    ));
    assert_eq!(forward, backward, "header order changed the credential");
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Nothing,
    Key(String, u32),
    Malformed,
}

fn outcome(presented: Presented<'_>) -> Outcome {
    match presented {
        Presented::Nothing => Outcome::Nothing,
        Presented::Key { key, sources } => Outcome::Key(key.expose().to_string(), sources),
        Presented::Malformed(_) => Outcome::Malformed,
    }
}

// ---------------------------------------------------------------------------------------
// path: normalization and the path rules are matched against

/// Input: a path (the query already split off), as text.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = path::normalize(raw) else {
        return;
    };
    assert_is_normal(&normal);
    assert!(
        matches!(path::normalize(&normal), Ok(again) if again == normal),
        "normalization is not idempotent: {raw:?} -> {normal:?} -> {:?}",
        path::normalize(&normal)
    );
    let matched = path::without_parameters(&normal);
    assert_is_normal(&matched);
    assert!(!matched.contains(';'), "{matched:?} kept a parameter");
}

/// What every normalized path looks like: absolute; no empty, `.` or `..` segment; no
/// encoded `/`, `\` or NUL, and only upper-case escapes of bytes that need one.
pub fn assert_is_normal(p: &str) {
    assert!(p.starts_with('/'), "{p:?} is not absolute");
    let segments: Vec<&str> = p[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !segment.is_empty() || i == last,
            "{p:?} has an empty segment"
        );
        let name = segment.split(';').next().unwrap_or("");
        assert!(
            name != "." && name != "..",
            "{p:?} has a dot segment ({segment:?})"
        );
    }
    let bytes = p.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(
            (0x21..=0x7e).contains(&b) && b != b'\\' && b != b'#',
            "{p:?} holds byte {b:#04x}"
        );
        if b == b'%' {
            let escape = &p[i + 1..i + 3];
            assert!(
                escape
                    .bytes()
                    .all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()),
                "{p:?} has a lower-case escape"
            );
            let value = u8::from_str_radix(escape, 16).unwrap();
            assert!(
                !value.is_ascii_alphanumeric() && !b"-._~/\\".contains(&value) && value != 0,
                "{p:?} keeps {escape:?} encoded"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// config: the plugin configuration, then a few requests against what it built

/// Input: a plugin configuration (JSON, as Envoy hands it to the filter).
pub fn config(data: &[u8]) {
    match Config::parse(data) {
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "a configuration refused without a reason"
            );
        }
        Ok(config) => {
            for request in CANNED_REQUESTS {
                let headers = headers_from_lines(request.as_bytes());
                let verdict = decision::decide(&config, &headers, now);
                check_forwarded(&config, &headers, &verdict);
            }
        }
    }
}

const CANNED_REQUESTS: [&str; 4] = [
    ":method: GET\n:path: /data/query?api_key=kg_fuzz_key\nx-keygate-key-id: forged",
    ":method: POST\n:path: /a/../b/%2e/c?x=1\nauthorization: Bearer kg_fuzz_key",
    ":method: GET\n:path: /healthz\nx-api-key: kg_fuzz_key\nx_keygate_owner: forged",
    ":method: DELETE\n:path: /admin/keys;x\nauthorization: Basic YXBpa2V5OmtnX2Z1enpfa2V5",
];

// ---------------------------------------------------------------------------------------
// key_set: key-set documents, the key service's answer, and the shared-data record

/// Input: a key-set document (`{"version": ..., "keys": [...]}`), also read as the key
/// service's answer for one key.
pub fn key_set(data: &[u8]) {
    let index = fuzz_scopes();
    if let Ok(doc) = KeySetDoc::parse(data) {
        for record in &doc.keys {
            round_trip(record, &index);
        }
        let count = doc.keys.len();
        let set = InlineKeys::build(doc.keys, &index, "keys").unwrap();
        assert_eq!(set.len(), count, "a checked document lost records");
    }
    scanned_alike(data);
    let hash = KeyHash::of_key("kg_fuzz_key");
    if let Ok(Answer::Found(record)) = lookup_cache::read_answer(Some("200"), data, &hash, &index) {
        let doc = KeyRecordDoc::parse(data, "").unwrap();
        assert_eq!(doc.hash, hash, "an answer for another key was taken");
        assert_eq!(record.id, doc.id);
    }
}

/// The filter reads a key set a slice at a time (`key_set_scan`): in slices of any size,
/// and streamed in chunks of any size (the native build), it reads what one pass reads
/// (the same error too), and accepts a plain document exactly when the document parser
/// does.
fn scanned_alike(data: &[u8]) {
    // `chunk` 0: the whole body at once.
    let scan = |budget: usize, chunk: usize| {
        let (mut scan, mut chunks) = if chunk == 0 {
            (Scan::new(data.to_vec()), data.chunks(1))
        } else {
            (Scan::streaming(), data.chunks(chunk))
        };
        loop {
            let mut left = budget;
            match scan.step(&mut left) {
                Ok(Step::More) => continue,
                Ok(Step::Hungry) => match chunks.next() {
                    Some(bytes) => scan.feed(bytes)?,
                    None => scan.end(),
                },
                Ok(Step::Done(scanned)) => return Ok((scanned, scan.into_staged().len())),
                Err(e) => return Err(e),
            }
        }
    };
    let outcome = |r: &Result<(Scanned, usize), String>| {
        r.as_ref()
            .map(|(s, n)| (format!("{s:?}"), *n))
            .map_err(Clone::clone)
    };
    let whole = scan(usize::MAX, 0);
    for (budget, chunk) in [(3, 0), (usize::MAX, 1), (3, 5), (usize::MAX, 64)] {
        assert_eq!(
            outcome(&scan(budget, chunk)),
            outcome(&whole),
            "read otherwise than one pass: slices of {budget}, chunks of {chunk}"
        );
    }
    let doc = KeySetDoc::parse(data);
    if let Ok(doc) = &doc {
        let (_, n) = whole
            .as_ref()
            .unwrap_or_else(|e| panic!("a document the parser accepts was refused: {e}"));
        assert_eq!(*n, doc.keys.len());
    }
    if let Ok((Scanned::Full { epoch: None, .. }, _)) = &whole {
        assert!(
            doc.is_ok(),
            "a plain document the parser refuses was accepted"
        );
    }
}

/// A record written to shared data reads back as the same record.
fn round_trip(doc: &KeyRecordDoc, index: &ScopeIndex) {
    let (_, want) = KeyRecord::from_doc(doc.clone(), index);
    let bytes = record_codec::encode(doc);
    let got = record_codec::decode(&bytes, index)
        .unwrap_or_else(|| panic!("record {} did not survive encoding", doc.id.as_str()));
    // The label and creation time are not kept: a decision does not read them.
    let want = KeyRecord {
        label: None,
        created_at: None,
        ..want
    };
    assert_eq!(got, want, "a record changed through shared data");
}

fn fuzz_scopes() -> ScopeIndex {
    let mut index = ScopeIndex::default();
    for scope in ["browse", "download", "upload", "admin"] {
        index
            .add(&keygate_core::scope::Scope::parse(scope).unwrap())
            .unwrap();
    }
    index
}

/// Input: a bucket read from Envoy's shared data, which any plugin in the same VM id may
/// write: entries of records, or garbage. What decodes must be a record the configuration
/// could have loaded (its texts safe to forward as header values).
pub fn shared_record(data: &[u8]) {
    let index = fuzz_scopes();
    for (hash, bytes) in key_set_bucket::entries(data) {
        assert!(
            key_set_bucket::find(data, &KeyHash::from_bytes(*hash)).is_some(),
            "an entry of the bucket is not found by its hash"
        );
        let Some(record) = record_codec::decode(bytes, &index) else {
            continue;
        };
        check_texts(&record);
    }
    // A bare record, as an older filter wrote it, is no bucket of records.
    if let Some(record) = record_codec::decode(data, &index) {
        check_texts(&record);
    }
}

fn check_texts(record: &KeyRecord) {
    for text in [
        record.id.as_str(),
        record.owner.as_str(),
        &*record.scopes_header,
    ] {
        assert!(
            !text.chars().any(char::is_control),
            "a decoded record carries a control character: {text:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// header_map: Envoy's serialized header map, read in place

/// Input: a serialized header map as the ABI hands it over. What parses must serialize
/// back to the bytes it was read from.
pub fn header_map(data: &[u8]) {
    let Ok(pairs) = header_map::parse(data) else {
        return;
    };
    if data.is_empty() {
        assert!(pairs.is_empty());
        return;
    }
    let again = header_map::serialize(&pairs);
    assert_eq!(&data[..again.len()], &again[..], "parse misread the map");
}

// ---------------------------------------------------------------------------------------
// request: the whole decision, and what the upstream would receive

/// Input: a request as in [`headers_from_lines`], decided by an ImmPort-like configuration
/// (the README's). Whatever the request, what reaches the upstream must be one the rules
/// allow, under the caller's identity only.
pub fn request(data: &[u8]) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| Config::parse(request_config().as_bytes()).unwrap());
    let headers = headers_from_lines(data);
    let verdict = decision::decide(config, &headers, now);
    check_forwarded(config, &headers, &verdict);
}

/// The keys of [`request`]'s configuration, for seeds: (key, id, record fields).
pub const REQUEST_KEYS: [(&str, &str); 5] = [
    (
        "kg_fuzz_browse",
        r#""owner": "alice", "scopes": ["browse"]"#,
    ),
    (
        "kg_fuzz_all",
        r#""owner": "ci", "scopes": ["browse", "download", "upload", "admin"]"#,
    ),
    (
        "kg_fuzz_readonly",
        r#""owner": "ops", "scopes": ["browse", "upload"], "read_only": true"#,
    ),
    (
        "kg_fuzz_expired",
        r#""owner": "dave", "scopes": ["browse"], "expires_at": "2021-05-21T20:55:24Z""#,
    ),
    (
        "kg_fuzz_disabled",
        r#""owner": "erin", "scopes": ["browse"], "status": "disabled""#,
    ),
];

fn request_config() -> String {
    let keys: Vec<String> = REQUEST_KEYS
        .iter()
        .map(|(key, fields)| {
            format!(
                r#"{{"id": "{key}-id", "hash": "{}", {fields}}}"#,
                KeyHash::of_key(key).to_hex()
            )
        })
        .collect();
    format!(
        r#"{{
  "realm": "fuzz",
  "sources": [
    {{"authorization": {{"schemes": ["Bearer", "ApiKey", "Basic"]}}}},
    {{"header": "x-api-key"}},
    {{"query": "api_key"}}
  ],
  "keys": [{}],
  "rules": [
    {{"path_prefix": "/healthz", "public": true}},
    {{"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]}},
    {{"path_prefix": "/data/download", "scopes": ["download"]}},
    {{"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]}},
    {{"path": "/admin/keys", "scopes": ["admin"]}}
  ],
  "unmatched": "deny"
}}"#,
        keys.join(",\n    ")
    )
}

/// Envoy's header map as the edits leave it (names lowercase; `set` replaces every value).
struct Map(Vec<(String, Vec<u8>)>);

impl HeaderEditor for Map {
    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.0.push((name.to_string(), value.as_bytes().to_vec()));
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }
}

/// What must hold of any request the verdict lets through, checked on the request the
/// upstream would receive, against the rules read again from scratch.
fn check_forwarded(config: &Config, headers: &[(String, Vec<u8>)], verdict: &Verdict<'_>) {
    let Verdict::Allow(allowed) = verdict else {
        return;
    };
    let mut map = Map(headers.to_vec());
    allowed.apply(config, &mut map);
    let upstream = map.0;

    // Only the caller's identity, once each; none at all on a public route.
    let forward = config.forward.names();
    for (name, _) in &upstream {
        let read_as = name.replace('_', "-");
        let is_forward = forward
            .iter()
            .any(|f| f.as_str().replace('_', "-") == read_as);
        assert!(
            !is_forward || forward.iter().any(|f| f.as_str() == name),
            "the look-alike {name:?} reached the upstream"
        );
    }
    for name in forward {
        let values: Vec<&[u8]> = upstream
            .iter()
            .filter(|(n, _)| n == name.as_str())
            .map(|(_, v)| v.as_slice())
            .collect();
        match allowed.key {
            None => assert!(values.is_empty(), "{name} reached a public route"),
            Some(_) => assert_eq!(values.len(), 1, "{name} sent {} times", values.len()),
        }
    }
    if let Some(key) = allowed.key {
        let value = |name: &HeaderName| {
            upstream
                .iter()
                .find(|(n, _)| n == name.as_str())
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(&config.forward.id), Some(key.id.as_str().into()));
        assert_eq!(
            value(&config.forward.owner),
            Some(key.owner.as_str().into())
        );
        assert_eq!(
            value(&config.forward.scopes),
            Some(key.scopes_header.as_bytes().to_vec())
        );
        assert_eq!(
            key.state_at(now),
            KeyState::Active,
            "{} let through",
            key.id.as_str()
        );
    }

    // The path the upstream reads is normal, and the rule it falls under admits the caller.
    let method = first(&upstream, ":method").unwrap_or_default();
    let target = first(&upstream, ":path").unwrap_or_default();
    let (raw_path, _) = path::split_query(&target);
    let normal = path::normalize(raw_path)
        .unwrap_or_else(|e| panic!("the upstream got {raw_path:?}, which is refused: {e:?}"));
    assert_eq!(
        normal, raw_path,
        "the upstream got a path that is not normal"
    );
    assert_is_normal(raw_path);
    let rule = config
        .rules
        .find(&method, &path::without_parameters(raw_path));
    check_admitted(config, allowed, rule.map(|r| &r.access), &method, &target);
}

fn check_admitted(
    config: &Config,
    allowed: &Allowed<'_>,
    access: Option<&Access>,
    method: &str,
    target: &str,
) {
    match (access, allowed.key) {
        (Some(Access::Public), _) => {}
        (None, Some(_)) => assert!(
            matches!(config.rules.unmatched, Unmatched::Authenticate),
            "{method} {target} matches no rule, yet went through"
        ),
        (Some(Access::Scopes { mask, needed }), Some(key)) => {
            assert!(
                key.scope_mask.holds_all(*mask),
                "{} reached {method} {target}, which needs {needed}",
                key.id.as_str()
            );
            assert!(
                !key.read_only
                    || ["GET", "HEAD", "OPTIONS"]
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(method)),
                "read-only {} sent {method}",
                key.id.as_str()
            );
        }
        (_, None) => panic!("{method} {target} went through without a key"),
    }
}

fn first(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}
