//! `make soak`: mixed requests through one Envoy running keygate, in each key mode in turn
//! (inline keys, a key set fetched from `keygate serve`, keys looked up in it), every answer
//! checked, keys revoked during the load, Envoy's memory watched and its wasm VM counted
//! (the "Hardening" issue).
//!
//! - **Gateway**: a real Envoy 1.40 (`--concurrency 1` unless `--workers`), keygate with
//!   ImmPort-like rules (browse / download / upload / admin, a public `/healthz`, unmatched
//!   routes denied) and 1 100 keys: browse, download, upload and read-only keys (half of
//!   the valid ones with an expiry in 2099), expired and disabled ones. Behind it, one Envoy
//!   `direct_response` route per rule, reachable only through the filter; each adds
//!   `x-soak-route` and echoes what it received from keygate (`x-api-key-id`, `-owner`,
//!   `-scopes`, the path, any credential left) in `x-soak-*` response headers.
//! - **Modes** (`--mode`, default `all`, one after the other): `inline` (the keys in the
//!   plugin configuration); `key_set` and `lookup`, where the real `keygate serve`
//!   (`KEYGATE_BIN`) serves a keys.json in a temp dir (`refresh_seconds` 2, or
//!   `cache_seconds` 2 and `negative_cache_seconds` 1; call timeouts 1 s).
//! - **Revocations** (key_set, lookup): `--revocations` times (default 4), spread over the
//!   first 60 % of the load, keys.json is rewritten (aside, then renamed, as `keygate`
//!   does) with 5 more groups of 10 keys changed: 3 groups' records removed (revoked), 2
//!   disabled. Request `n` uses keys of group `(n / 40) % 100` only. An answer to a request
//!   whose key was changed must be as before if it came before the file was replaced; the
//!   refusal (401 `invalid_token`, "unknown API key" / "API key disabled") if the request
//!   was sent more than the window after it was replaced; either in between (counted). The
//!   window follows from the filter: key_set `refresh_seconds` + 2 ticks (0.5 s) + 2 call
//!   timeouts; lookup `cache_seconds` + a tick + a call timeout ([`window`]). Each
//!   revocation's delay (first refusal, last answer as before) is reported; a revocation
//!   the load goes on past `--requests` (in rounds that use every group's keys on every
//!   connection) until each revocation has had requests sent past its window.
//! - **Mix**: a fixed pattern of 40 requests, repeated: 20 allowed (Bearer, ApiKey, Basic,
//!   `x-api-key`, `api_key` query parameter, a spoofed identity, the public route with and
//!   without a key), 10 × 401 (no key, unknown, expired, disabled), 7 × 403 (missing
//!   scope, read-only key writing, no rule), 3 × 400 (bad Basic, conflicting keys, empty
//!   Bearer). Request `n` is pattern slot `n % 40`; its key is picked from `n`.
//! - **Client**: `--connections` threads (default 8), each one keep-alive HTTP/1.1
//!   connection, one request at a time. Every answer is checked: a 200 must carry the
//!   route's header, the key's identity, no credential; a refusal must be keygate's (the
//!   exact `WWW-Authenticate` of README "Responses", `content-type`, the JSON body, no route header).
//!   Any other answer, or none, is a mismatch.
//! - **Memory**: Envoy's `VmRSS` (`/proc/PID/status`) every 250 ms; the reference is the
//!   first sample after the warm-up (the first 100 000 requests, or a tenth of a shorter
//!   run). The run fails if the largest later sample or the last one (after the load) is
//!   more than 10 % above it.
//! - **VM**: Envoy's `wasm.*` stats before and after: every `*reload*` counter must be 0
//!   and the V8 VMs created and active must not change. keygate's own counters (allowed,
//!   public, denied by reason) must equal the client's tallies (each answer counted as the
//!   outcome it matched: during a revocation window, as before or as after), no fetch or
//!   lookup may fail, and Envoy's 2xx / 4xx counters must equal the answers the client got.
//!
//! Prints a Markdown report per mode (for SECURITY.md), then a summary of the modes, and
//! exits 0 only if everything held. Options: `--mode inline|key_set|lookup|all`,
//! `--requests N` (per mode, at least; default 1 000 000 for one mode, and for `all`
//! 1 000 000 inline, 600 000 key_set, 400 000 lookup: about 3 minutes on 2 CPUs), `--connections 8`,
//! `--workers 1` (Envoy's `--concurrency`), `--warmup N`, `--max-seconds 1800` (the load
//! stops there, and fails), `--refresh-seconds 2`, `--cache-seconds 2`, `--revocations 4`.
//! Envoy and `keygate serve` are killed on exit, on a panic and on Ctrl-C.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;
use keygate_tools::cleanup::Tracked;
use keygate_tools::thousands;

use base64::Engine;
use keygate_core::stats::Outcome;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::process::{cpu_ticks, rss_kib, ticks_per_second};
use support::{hash_of, Bootstrap, Envoy, EnvoyOptions};

const REALM: &str = "immport";
/// The limit of growth of Envoy's RSS after the warm-up: 10 %.
const RSS_GROWTH_LIMIT: f64 = 1.10;
const RSS_EVERY: Duration = Duration::from_millis(250);
/// Mismatches described in full (all are counted).
const SHOWN_MISMATCHES: usize = 10;
/// A connection that fails this many times in a row ends its thread (the run then fails).
const MAX_CONSECUTIVE_IO_ERRORS: u32 = 20;

struct Options {
    modes: Vec<Mode>,
    /// Per mode; `None`: [`Mode::default_requests`].
    requests: Option<u64>,
    connections: u64,
    workers: u32,
    warmup: Option<u64>,
    max_seconds: u64,
    /// Key-set refreshes (`key_set.refresh_seconds`).
    refresh_seconds: u64,
    /// Found keys' cache lifetime (`lookup.cache_seconds`).
    cache_seconds: u64,
    /// Changes to keys.json during a key_set or lookup run.
    revocations: usize,
}

impl Options {
    fn requests(&self, mode: Mode) -> u64 {
        self.requests
            .unwrap_or_else(|| mode.default_requests(self.modes.len() > 1))
    }
}

fn options() -> Options {
    let mut options = Options {
        modes: Mode::ALL.to_vec(),
        requests: None,
        connections: 8,
        workers: 1,
        warmup: None,
        max_seconds: 1800,
        refresh_seconds: 2,
        cache_seconds: 2,
        revocations: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = args.get(i + 1).map(|v| v.replace('_', ""));
        let number = || -> u64 {
            value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{flag} takes a number")))
        };
        match flag {
            "--mode" => {
                options.modes = match args.get(i + 1).map(String::as_str) {
                    Some("all") => Mode::ALL.to_vec(),
                    Some(name) => vec![Mode::ALL
                        .into_iter()
                        .find(|m| m.name() == name)
                        .unwrap_or_else(|| usage(&format!("unknown mode {name}")))],
                    None => usage("--mode takes inline, key_set, lookup or all"),
                }
            }
            "--requests" => options.requests = Some(number()),
            "--connections" => options.connections = number(),
            "--workers" => options.workers = number() as u32,
            "--warmup" => options.warmup = Some(number()),
            "--max-seconds" => options.max_seconds = number(),
            "--refresh-seconds" => options.refresh_seconds = number(),
            "--cache-seconds" => options.cache_seconds = number(),
            "--revocations" => options.revocations = number() as usize,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown option {other}")),
        }
        i += 2;
    }
    if options.requests == Some(0) || options.connections == 0 || options.workers == 0 {
        usage("--requests, --connections and --workers must be at least 1");
    }
    if options.refresh_seconds == 0 {
        usage("--refresh-seconds must be at least 1");
    }
    if options.revocations * GROUPS_PER_REVOCATION > GROUPS as usize {
        usage(&format!(
            "--revocations: at most {}",
            GROUPS as usize / GROUPS_PER_REVOCATION
        ));
    }
    options
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("soak: {problem}");
    }
    eprintln!(
        "usage: make soak SOAK_ARGS=\"[--mode inline|key_set|lookup|all] [--requests N] \
         [--connections 8] [--workers 1] [--warmup N] [--max-seconds 1800] \
         [--refresh-seconds 2] [--cache-seconds 2] [--revocations 4]\""
    );
    std::process::exit(2)
}

/// Where keygate's keys come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// In the plugin configuration.
    Inline,
    /// The whole set fetched from `keygate serve`, refreshed every `--refresh-seconds`.
    KeySet,
    /// Each key's hash asked of `keygate serve`, cached `--cache-seconds`.
    Lookup,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Inline, Mode::KeySet, Mode::Lookup];

    fn name(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
            Mode::KeySet => "key_set",
            Mode::Lookup => "lookup",
        }
    }

    /// Requests when `--requests` is not given: a million for one mode alone; for all
    /// three in a row, what keeps `make soak` within about five minutes on two CPUs.
    fn default_requests(self, all: bool) -> u64 {
        match (all, self) {
            (false, _) | (true, Mode::Inline) => 1_000_000,
            (true, Mode::KeySet) => 600_000,
            (true, Mode::Lookup) => 400_000,
        }
    }
}

/// The fetch's and the lookup's call timeout: part of the revocation window.
const CALL_TIMEOUT_MS: u64 = 1000;
/// keygate's timer (`TICK` in crates/filter/src/lib.rs).
const TICK: Duration = Duration::from_millis(500);
/// Revocations act on groups of keys: group `g` is every key (of the browse, download,
/// upload and read-only pools) whose index is `g` modulo 100. Request `n` uses keys of
/// group `(n / 40) % 100` only, whatever its kind, so that a request's group says whether
/// its key is revoked.
const GROUPS: u64 = 100;
/// Groups changed by one revocation: half revoked (the records removed), half disabled.
const GROUPS_PER_REVOCATION: usize = 5;

// ---------------------------------------------------------------------------------------
// Keys

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    Browse,
    Download,
    Upload,
    ReadOnly,
    Expired,
    Disabled,
}

impl Pool {
    const ALL: [Pool; 6] = [
        Pool::Browse,
        Pool::Download,
        Pool::Upload,
        Pool::ReadOnly,
        Pool::Expired,
        Pool::Disabled,
    ];

    fn size(self) -> u64 {
        match self {
            Pool::Browse | Pool::Download | Pool::Upload => 300,
            Pool::ReadOnly => 100,
            Pool::Expired | Pool::Disabled => 50,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pool::Browse => "browse",
            Pool::Download => "download",
            Pool::Upload => "upload",
            Pool::ReadOnly => "readonly",
            Pool::Expired => "expired",
            Pool::Disabled => "disabled",
        }
    }

    /// The scopes as forwarded in `x-api-key-scopes`: the record's, in order.
    fn scopes(self) -> &'static str {
        match self {
            Pool::Browse | Pool::Expired | Pool::Disabled => "browse",
            Pool::Download => "browse download",
            Pool::Upload => "browse upload",
            Pool::ReadOnly => "browse download upload",
        }
    }

    /// Whether revocations change this pool's keys (not the expired and disabled ones).
    fn revocable(self) -> bool {
        let revocable = matches!(
            self,
            Pool::Browse | Pool::Download | Pool::Upload | Pool::ReadOnly
        );
        // A key's group must be the group of every request that uses it.
        assert!(!revocable || self.size().is_multiple_of(GROUPS));
        revocable
    }

    /// Key `n % size` of the pool, spread over request numbers.
    fn pick(self, n: u64) -> Key {
        Key {
            pool: self,
            index: (n / PATTERN_LEN as u64) % self.size(),
        }
    }

    fn record(self, index: u64) -> Value {
        let key = Key { pool: self, index };
        let mut record = json!({
            "id": key.id(),
            "hash": hash_of(&key.secret()),
            "owner": key.owner(),
            "scopes": self.scopes().split(' ').collect::<Vec<_>>(),
        });
        match self {
            Pool::Browse | Pool::Download | Pool::Upload if index.is_multiple_of(2) => {
                record["expires_at"] = json!("2099-01-01T00:00:00Z");
            }
            Pool::ReadOnly => record["read_only"] = json!(true),
            Pool::Expired => record["expires_at"] = json!("2021-05-21T20:55:24.123456789Z"),
            Pool::Disabled => record["status"] = json!("disabled"),
            _ => {}
        }
        record
    }
}

#[derive(Clone, Copy)]
struct Key {
    pool: Pool,
    index: u64,
}

impl Key {
    fn secret(&self) -> String {
        format!("kg_soak_{}_{:04}_5f3c9a", self.pool.name(), self.index)
    }

    fn id(&self) -> String {
        format!("soak-{}-{}", self.pool.name(), self.index)
    }

    fn owner(&self) -> String {
        format!("owner-{}", self.index % 17)
    }

    fn identity(&self) -> Identity {
        Identity {
            id: self.id(),
            owner: self.owner(),
            scopes: self.pool.scopes(),
        }
    }
}

fn key_count() -> u64 {
    Pool::ALL.iter().map(|p| p.size()).sum()
}

/// Every key record, less the groups `changed` revokes; those it disables, disabled.
fn records(changed: &BTreeMap<u64, How>) -> Vec<Value> {
    Pool::ALL
        .iter()
        .flat_map(|&pool| (0..pool.size()).map(move |i| (pool, i)))
        .filter_map(|(pool, i)| {
            let mut record = pool.record(i);
            if pool.revocable() {
                match changed.get(&(i % GROUPS)) {
                    Some(How::Revoked) => return None,
                    Some(How::Disabled) => record["status"] = json!("disabled"),
                    None => {}
                }
            }
            Some(record)
        })
        .collect()
}

/// keys.json as `keygate serve` serves it.
fn keys_document(version: u64, changed: &BTreeMap<u64, How>) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"version": version.to_string(), "keys": records(changed)}))
        .unwrap()
}

fn keygate_config(mode: Mode, options: &Options) -> Value {
    let mut config = support::immport_every_source(REALM, json!([]));
    let config_map = config.as_object_mut().unwrap();
    config_map.remove("keys");
    match mode {
        Mode::Inline => {
            config_map.insert("keys".into(), Value::Array(records(&BTreeMap::new())));
        }
        Mode::KeySet => {
            config_map.insert(
                "key_set".into(),
                json!({
                    "cluster": "keyservice",
                    "path": "/v1/keyset",
                    "authority": "keyservice",
                    "refresh_seconds": options.refresh_seconds,
                    "timeout_ms": CALL_TIMEOUT_MS
                }),
            );
        }
        Mode::Lookup => {
            config_map.insert(
                "lookup".into(),
                json!({
                    "cluster": "keyservice",
                    "path": "/v1/keys/{hash}",
                    "authority": "keyservice",
                    "cache_seconds": options.cache_seconds,
                    "negative_cache_seconds": 1,
                    "timeout_ms": CALL_TIMEOUT_MS
                }),
            );
        }
    }
    config
}

// ---------------------------------------------------------------------------------------
// Envoy: keygate, then one direct response per route

/// The routes behind keygate, by path prefix, each answering 200 with its name.
const ROUTES: [(&str, &str); 6] = [
    ("/healthz", "health"),
    ("/data/query", "query"),
    ("/data/download", "download"),
    ("/data/upload", "upload"),
    ("/admin/keys", "admin"),
    ("/", "other"),
];

fn bootstrap(keygate: &Value, key_service: Option<SocketAddr>) -> Value {
    // What the route received, echoed in the response (omitted when empty).
    let echo = [
        ("x-soak-key-id", "%REQ(x-api-key-id)%"),
        ("x-soak-key-owner", "%REQ(x-api-key-owner)%"),
        ("x-soak-key-scopes", "%REQ(x-api-key-scopes)%"),
        ("x-soak-authorization", "%REQ(authorization)%"),
        ("x-soak-x-api-key", "%REQ(x-api-key)%"),
        ("x-soak-path", "%REQ(:path)%"),
    ];
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(prefix, name)| {
            let mut headers = vec![json!({"header": {"key": "x-soak-route", "value": name}})];
            headers.extend(
                echo.iter()
                    .map(|(k, v)| json!({"header": {"key": k, "value": v}})),
            );
            json!({
                "match": {"prefix": prefix},
                "direct_response": {"status": 200, "body": {"inline_string": name}},
                "response_headers_to_add": headers
            })
        })
        .collect();
    let filters = vec![support::keygate_filter(keygate)];
    let clusters: Vec<Value> = key_service
        .map(|addr| support::key_service_cluster("keyservice", addr))
        .into_iter()
        .collect();
    json!({
        "admin": support::admin(),
        "static_resources": {
            "listeners": [support::http_listener("soak", 0, filters, Value::Array(routes))],
            "clusters": clusters
        }
    })
}

// ---------------------------------------------------------------------------------------
// The mix

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // 200
    QueryBearer,
    DownloadBearer,
    UploadApiKey,
    ReadOnlyHeader,
    QueryBasic,
    QueryParameter,
    SpoofedIdentity,
    PublicNoKey,
    PublicWithKey,
    // 401
    NoKey,
    UnknownKey,
    ExpiredKey,
    DisabledKey,
    // 403
    NoUploadScope,
    NoAdminScope,
    NoDownloadScope,
    ReadOnlyWrite,
    NoRule,
    // 400
    BadBasic,
    Conflicting,
    EmptyBearer,
}

/// Each kind and how many of the 40 requests of the pattern it makes.
const MIX: [(Kind, usize); 21] = [
    (Kind::QueryBearer, 6),
    (Kind::DownloadBearer, 4),
    (Kind::UploadApiKey, 3),
    (Kind::ReadOnlyHeader, 2),
    (Kind::QueryBasic, 1),
    (Kind::QueryParameter, 1),
    (Kind::SpoofedIdentity, 1),
    (Kind::PublicNoKey, 1),
    (Kind::PublicWithKey, 1),
    (Kind::NoKey, 3),
    (Kind::UnknownKey, 3),
    (Kind::ExpiredKey, 2),
    (Kind::DisabledKey, 2),
    (Kind::NoUploadScope, 2),
    (Kind::NoAdminScope, 1),
    (Kind::NoDownloadScope, 2),
    (Kind::ReadOnlyWrite, 1),
    (Kind::NoRule, 1),
    (Kind::BadBasic, 1),
    (Kind::Conflicting, 1),
    (Kind::EmptyBearer, 1),
];
const PATTERN_LEN: usize = 40;
const KINDS: usize = MIX.len();
const OUTCOMES: usize = Outcome::ALL.len();

/// The 40 slots of the pattern: the kinds by weight, spread out (stride 17, prime to 40).
fn pattern() -> [Kind; PATTERN_LEN] {
    let grouped: Vec<Kind> = MIX
        .iter()
        .flat_map(|&(kind, n)| std::iter::repeat_n(kind, n))
        .collect();
    assert_eq!(grouped.len(), PATTERN_LEN);
    std::array::from_fn(|slot| grouped[(slot * 17) % PATTERN_LEN])
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Kind::QueryBearer => "GET /data/query, Bearer, browse key",
            Kind::DownloadBearer => "GET /data/download, Bearer, download key",
            Kind::UploadApiKey => "POST /data/upload with a body, ApiKey, upload key",
            Kind::ReadOnlyHeader => "GET /data/download, x-api-key, read-only key",
            Kind::QueryBasic => "GET /data/query, Basic apikey:KEY",
            Kind::QueryParameter => "GET /data/query?api_key=KEY",
            Kind::SpoofedIdentity => "GET /data/query, Bearer, spoofed x-api-key-* headers",
            Kind::PublicNoKey => "GET /healthz, no key",
            Kind::PublicWithKey => "GET /healthz/live, Bearer, upload key",
            Kind::NoKey => "GET /data/query, no key",
            Kind::UnknownKey => "GET /data/query, Bearer, unknown key",
            Kind::ExpiredKey => "GET /data/download, Bearer, expired key",
            Kind::DisabledKey => "GET /data/query, Bearer, disabled key",
            Kind::NoUploadScope => "POST /data/upload, Bearer, download key",
            Kind::NoAdminScope => "GET /admin/keys, Bearer, upload key",
            Kind::NoDownloadScope => "GET /data/download, Bearer, browse key",
            Kind::ReadOnlyWrite => "PUT /data/upload, x-api-key, read-only key",
            Kind::NoRule => "GET /elsewhere, Bearer, browse key",
            Kind::BadBasic => "GET /data/query, Basic not base64",
            Kind::Conflicting => "GET /data/query, Bearer and x-api-key differ",
            Kind::EmptyBearer => "GET /data/query, Bearer with no key",
        }
    }

    /// What keygate counts for this request.
    fn outcome(self) -> Outcome {
        match self {
            Kind::PublicNoKey => Outcome::Public,
            Kind::QueryBearer
            | Kind::DownloadBearer
            | Kind::UploadApiKey
            | Kind::ReadOnlyHeader
            | Kind::QueryBasic
            | Kind::QueryParameter
            | Kind::SpoofedIdentity
            | Kind::PublicWithKey => Outcome::Allowed,
            Kind::NoKey => Outcome::Missing,
            Kind::UnknownKey => Outcome::Invalid,
            Kind::ExpiredKey => Outcome::Expired,
            Kind::DisabledKey => Outcome::Disabled,
            Kind::NoUploadScope
            | Kind::NoAdminScope
            | Kind::NoDownloadScope
            | Kind::ReadOnlyWrite
            | Kind::NoRule => Outcome::Forbidden,
            Kind::BadBasic | Kind::Conflicting | Kind::EmptyBearer => Outcome::Malformed,
        }
    }

    fn status(self) -> u16 {
        status_of(self.outcome())
    }
}

/// The status keygate answers with an outcome.
fn status_of(outcome: Outcome) -> u16 {
    match outcome {
        Outcome::Allowed | Outcome::Public => 200,
        Outcome::Malformed => 400,
        Outcome::Forbidden => 403,
        Outcome::Unavailable => 503,
        _ => 401,
    }
}

struct Identity {
    id: String,
    owner: String,
    scopes: &'static str,
}

/// What an answer must be.
enum Expected {
    Pass {
        route: &'static str,
        identity: Option<Identity>,
        /// The path the route must receive (the credential's query parameter removed).
        path: String,
    },
    Refuse {
        status: u16,
        challenge: String,
        error: &'static str,
        /// The exact `error_description`, or (for 400s, whose wording is the parser's)
        /// a word it must contain.
        description: &'static str,
        exact: bool,
    },
}

fn challenge(error: Option<&str>, scope: Option<&str>) -> String {
    let mut text = format!("Bearer realm=\"{REALM}\"");
    if let Some(e) = error {
        text.push_str(&format!(", error=\"{e}\""));
    }
    if let Some(s) = scope {
        text.push_str(&format!(", scope=\"{s}\""));
    }
    // Then one challenge per other way `immport_every_source` accepts a key.
    text.push_str(&format!(
        ", ApiKey realm=\"{REALM}\", Basic realm=\"{REALM}\", ApiKey realm=\"{REALM}\", \
         header=\"x-api-key\", ApiKey realm=\"{REALM}\", query=\"api_key\""
    ));
    text
}

fn basic(user: &str, key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
    )
}

/// Writes request `n` (of kind `kind`) into `out`; returns what its answer must be.
fn build(kind: Kind, n: u64, out: &mut Vec<u8>) -> Expected {
    let mut method = "GET";
    let mut headers: Vec<(&str, String)> = Vec::new();
    let mut body = String::new();
    let bearer = |key: &Key| ("Authorization", format!("Bearer {}", key.secret()));
    let pass = |route, key: Option<&Key>, path: &str| Expected::Pass {
        route,
        identity: key.map(Key::identity),
        path: path.to_string(),
    };
    let refuse =
        |error: Option<&'static str>, scope: Option<&str>, description, exact| Expected::Refuse {
            status: kind.status(),
            challenge: challenge(error, scope),
            error: error.unwrap_or("unauthorized"),
            description,
            exact,
        };
    let invalid_token = |description| refuse(Some("invalid_token"), None, description, true);
    let insufficient =
        |scope, description| refuse(Some("insufficient_scope"), scope, description, true);
    let invalid_request = |word| refuse(Some("invalid_request"), None, word, false);

    let (target, expected) = match kind {
        Kind::QueryBearer => {
            let key = Pool::Browse.pick(n);
            headers.push(bearer(&key));
            let target = format!("/data/query/studies?page={}", n % 97);
            let expected = pass("query", Some(&key), &target);
            (target, expected)
        }
        Kind::DownloadBearer => {
            let key = Pool::Download.pick(n);
            headers.push(bearer(&key));
            let target = format!("/data/download/file-{n}.csv");
            let expected = pass("download", Some(&key), &target);
            (target, expected)
        }
        Kind::UploadApiKey => {
            let key = Pool::Upload.pick(n);
            method = "POST";
            headers.push(("Authorization", format!("ApiKey {}", key.secret())));
            headers.push(("Content-Type", "application/json".into()));
            body = format!("{{\"batch\":{n}}}");
            let target = "/data/upload/batch".to_string();
            let expected = pass("upload", Some(&key), &target);
            (target, expected)
        }
        Kind::ReadOnlyHeader => {
            let key = Pool::ReadOnly.pick(n);
            headers.push(("X-Api-Key", key.secret()));
            let target = "/data/download/readme.txt".to_string();
            let expected = pass("download", Some(&key), &target);
            (target, expected)
        }
        Kind::QueryBasic => {
            let key = Pool::Download.pick(n);
            headers.push(("Authorization", basic("apikey", &key.secret())));
            let target = "/data/query".to_string();
            let expected = pass("query", Some(&key), &target);
            (target, expected)
        }
        Kind::QueryParameter => {
            let key = Pool::Browse.pick(n);
            let target = format!("/data/query/x?a=1&api_key={}&b={n}", key.secret());
            let expected = pass("query", Some(&key), &format!("/data/query/x?a=1&b={n}"));
            (target, expected)
        }
        Kind::SpoofedIdentity => {
            let key = Pool::Upload.pick(n);
            headers.push(bearer(&key));
            headers.push(("X-Api-Key-Id", "k-admin".into()));
            headers.push(("x-api-key-owner", "root".into()));
            headers.push(("X-API-KEY-SCOPES", "admin".into()));
            let target = "/data/query".to_string();
            let expected = pass("query", Some(&key), &target);
            (target, expected)
        }
        Kind::PublicNoKey => {
            headers.push(("x-api-key-id", "k-admin".into()));
            let target = "/healthz".to_string();
            let expected = pass("health", None, &target);
            (target, expected)
        }
        Kind::PublicWithKey => {
            let key = Pool::Upload.pick(n);
            headers.push(bearer(&key));
            let target = "/healthz/live".to_string();
            let expected = pass("health", Some(&key), &target);
            (target, expected)
        }
        Kind::NoKey => (
            "/data/query".to_string(),
            refuse(
                None,
                None,
                "API key required; accepted: Authorization: Bearer, Authorization: ApiKey, \
                 Authorization: Basic (user apikey), header x-api-key or query parameter api_key",
                true,
            ),
        ),
        Kind::UnknownKey => {
            headers.push((
                "Authorization",
                format!("Bearer kg_soak_unknown_{n:010}_5f3c9a"),
            ));
            ("/data/query".to_string(), invalid_token("unknown API key"))
        }
        Kind::ExpiredKey => {
            headers.push(bearer(&Pool::Expired.pick(n)));
            (
                "/data/download/old.csv".to_string(),
                invalid_token("API key expired"),
            )
        }
        Kind::DisabledKey => {
            headers.push(bearer(&Pool::Disabled.pick(n)));
            ("/data/query".to_string(), invalid_token("API key disabled"))
        }
        Kind::NoUploadScope => {
            method = "POST";
            headers.push(bearer(&Pool::Download.pick(n)));
            (
                "/data/upload/x".to_string(),
                insufficient(Some("upload"), "requires scope upload"),
            )
        }
        Kind::NoAdminScope => {
            headers.push(bearer(&Pool::Upload.pick(n)));
            (
                "/admin/keys".to_string(),
                insufficient(Some("admin"), "requires scope admin"),
            )
        }
        Kind::NoDownloadScope => {
            headers.push(bearer(&Pool::Browse.pick(n)));
            (
                "/data/download/file.csv".to_string(),
                insufficient(Some("download"), "requires scope download"),
            )
        }
        Kind::ReadOnlyWrite => {
            method = "PUT";
            headers.push(("x-api-key", Pool::ReadOnly.pick(n).secret()));
            body = "{}".into();
            (
                "/data/upload/f".to_string(),
                insufficient(None, "read-only API key may only use GET, HEAD and OPTIONS"),
            )
        }
        Kind::NoRule => {
            headers.push(bearer(&Pool::Browse.pick(n)));
            (
                format!("/elsewhere/{}", n % 13),
                insufficient(None, "no rule allows this route"),
            )
        }
        Kind::BadBasic => {
            headers.push(("Authorization", "Basic %%%not-base64%%%".into()));
            ("/data/query".to_string(), invalid_request("base64"))
        }
        Kind::Conflicting => {
            headers.push(bearer(&Pool::Browse.pick(n)));
            headers.push(("x-api-key", Pool::Download.pick(n).secret()));
            ("/data/query".to_string(), invalid_request("conflicting"))
        }
        Kind::EmptyBearer => {
            headers.push(("Authorization", "Bearer    ".into()));
            ("/data/query".to_string(), invalid_request("empty"))
        }
    };

    out.clear();
    write!(out, "{method} {target} HTTP/1.1\r\nHost: soak.test\r\n").unwrap();
    for (name, value) in &headers {
        write!(out, "{name}: {value}\r\n").unwrap();
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        write!(out, "Content-Length: {}\r\n", body.len()).unwrap();
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    expected
}

// ---------------------------------------------------------------------------------------
// Revocations (key_set and lookup)

/// What a revocation does to a group's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// The records removed from keys.json (`keygate revoke`).
    Revoked,
    /// `"status": "disabled"` (`keygate disable`).
    Disabled,
}

impl How {
    fn outcome(self) -> Outcome {
        match self {
            How::Revoked => Outcome::Invalid,
            How::Disabled => Outcome::Disabled,
        }
    }

    /// The answer to a request whose key this change reached: keygate checks the key
    /// before the route, so every kind that presents one gets it.
    fn expected(self) -> Expected {
        Expected::Refuse {
            status: 401,
            challenge: challenge(Some("invalid_token"), None),
            error: "invalid_token",
            description: match self {
                How::Revoked => "unknown API key",
                How::Disabled => "API key disabled",
            },
            exact: true,
        }
    }
}

impl Kind {
    /// Whether the request presents a key of a revocable pool, whose state decides its
    /// answer (a conflicting pair is refused before any key is looked at).
    fn presents_revocable_key(self) -> bool {
        !matches!(
            self,
            Kind::PublicNoKey
                | Kind::NoKey
                | Kind::UnknownKey
                | Kind::ExpiredKey
                | Kind::DisabledKey
                | Kind::BadBasic
                | Kind::Conflicting
                | Kind::EmptyBearer
        )
    }
}

/// A group's change, once made.
struct Change {
    how: How,
    /// Just before keys.json was replaced: an answer received earlier was decided on the
    /// old keys.
    from: Instant,
    /// Once keys.json had been replaced.
    written: OnceLock<Instant>,
    /// Nanoseconds after `from` of the last answer as before the change, plus one (0: none
    /// yet), and of the first as after it (`u64::MAX`: none yet).
    last_old_ns: AtomicU64,
    first_new_ns: AtomicU64,
    /// Answers to requests sent past the window (all must be refusals).
    past_window: AtomicU64,
}

/// One rewrite of keys.json.
struct Event {
    /// Requests answered when it was made.
    at_requests: u64,
    groups: Vec<(u64, How)>,
    from: Instant,
    written: Instant,
}

/// The changes made to keys.json during a run, and how long one may take to reach every
/// answer (`window`).
struct Revocations {
    window: Duration,
    groups: Vec<OnceLock<Change>>,
    events: Mutex<Vec<Event>>,
}

impl Revocations {
    fn new(window: Duration) -> Revocations {
        Revocations {
            window,
            groups: (0..GROUPS).map(|_| OnceLock::new()).collect(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Whether some revocation made has had no request sent past its window yet.
    fn unchecked(&self) -> bool {
        self.events.lock().unwrap().iter().any(|event| {
            event
                .groups
                .iter()
                .filter_map(|(g, _)| self.groups[*g as usize].get())
                .all(|c| c.past_window.load(Ordering::Relaxed) == 0)
        })
    }

    /// The change to request `n`'s key, if one has been made (or is being made).
    fn change(&self, kind: Kind, n: u64) -> Option<&Change> {
        if !kind.presents_revocable_key() {
            return None;
        }
        self.groups[((n / PATTERN_LEN as u64) % GROUPS) as usize].get()
    }

    /// Makes revocation `event` (of `events`): its groups (spread over the hundred, half
    /// revoked, half disabled) marked changed from now, then keys.json replaced, as
    /// `keygate` writes it (aside, then renamed).
    fn make(&self, event: usize, at_requests: u64, keys: &Path, changed: &mut BTreeMap<u64, How>) {
        let groups: Vec<(u64, How)> = (0..GROUPS_PER_REVOCATION)
            .map(|j| {
                let group = ((event * GROUPS_PER_REVOCATION + j) as u64 * 37) % GROUPS;
                let how = if j % 2 == 0 {
                    How::Revoked
                } else {
                    How::Disabled
                };
                (group, how)
            })
            .collect();
        let from = Instant::now();
        for &(group, how) in &groups {
            changed.insert(group, how);
            let fresh = Change {
                how,
                from,
                written: OnceLock::new(),
                last_old_ns: AtomicU64::new(0),
                first_new_ns: AtomicU64::new(u64::MAX),
                past_window: AtomicU64::new(0),
            };
            assert!(self.groups[group as usize].set(fresh).is_ok());
        }
        support::cli::replace(keys, &keys_document(event as u64 + 2, changed));
        let written = Instant::now();
        for &(group, _) in &groups {
            let _ = self.groups[group as usize]
                .get()
                .unwrap()
                .written
                .set(written);
        }
        self.events.lock().unwrap().push(Event {
            at_requests,
            groups,
            from,
            written,
        });
    }

    /// Makes `count` revocations, evenly spread over the first 60 % of the run's
    /// `requests` (the rest lets the last one's window close), as answers come (`done`);
    /// returns when they are made or the run is over.
    fn run(&self, count: usize, requests: u64, keys: &Path, done: &AtomicU64, over: &AtomicBool) {
        let mut changed = BTreeMap::new();
        for event in 0..count {
            let at = requests * 3 * (event as u64 + 1) / (5 * count as u64);
            while done.load(Ordering::Relaxed) < at {
                if over.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.make(event, done.load(Ordering::Relaxed), keys, &mut changed);
        }
    }
}

/// Whether `answer` is right for request `n` (of `kind`, sent at `sent` and answered at
/// `received`); if so, what keygate counted for it. A request whose key a change reached:
/// answered before keys.json was replaced, it must get the answer as before the change;
/// sent later than the window after, the answer of a revoked (or disabled) key; in
/// between, either (counted).
fn verdict(
    kind: Kind,
    n: u64,
    expected: &Expected,
    answer: &Answer,
    timing: (Instant, Instant),
    revocations: Option<&Revocations>,
    tally: &mut Tally,
) -> Result<Outcome, String> {
    let (sent, received) = timing;
    let change = revocations.and_then(|r| Some((r.change(kind, n)?, r.window)));
    let Some((change, window)) = change else {
        return check(expected, answer).map_or(Ok(kind.outcome()), Err);
    };
    let since = |at: Instant| at.saturating_duration_since(change.from).as_nanos() as u64;
    if received < change.from {
        return check(expected, answer).map_or(Ok(kind.outcome()), Err);
    }
    let past_window = change
        .written
        .get()
        .is_some_and(|written| sent > *written + window);
    if past_window {
        change.past_window.fetch_add(1, Ordering::Relaxed);
    }
    let as_before = check(expected, answer);
    let as_after = check(&change.how.expected(), answer);
    match (as_before, as_after, past_window) {
        (None, _, false) => {
            tally.window_old += 1;
            change
                .last_old_ns
                .fetch_max(since(received) + 1, Ordering::Relaxed);
            Ok(kind.outcome())
        }
        (_, None, _) => {
            if past_window {
                tally.refused_after += 1;
            } else {
                tally.window_new += 1;
            }
            change
                .first_new_ns
                .fetch_min(since(received), Ordering::Relaxed);
            Ok(change.how.outcome())
        }
        (_, Some(why), true) => Err(format!(
            "sent {:.3} s after keys.json {} its key, past the {:.1} s window: {why}",
            since(sent) as f64 / 1e9,
            match change.how {
                How::Revoked => "revoked",
                How::Disabled => "disabled",
            },
            window.as_secs_f64()
        )),
        (Some(before), Some(after), false) => Err(format!(
            "during a revocation, neither as before ({before}) nor as after ({after})"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The client

struct Answer {
    status: u16,
    /// Lowercase names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn read_answer(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<Answer> {
    line.clear();
    if reader.read_line(line)? == 0 {
        return Err(std::io::Error::other("connection closed before an answer"));
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::with_capacity(12);
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(std::io::Error::other("connection closed in the headers"));
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("bad header line {text:?}")))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
        headers.push((name, value));
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                line.clear();
                reader.read_line(line)?;
                break;
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            reader.read_exact(&mut body[start..])?;
            body.truncate(start + size);
        }
    } else {
        let length = length.ok_or_else(|| std::io::Error::other("no content-length"))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Why an answer is not what its request must get; `None` if it is.
fn check(expected: &Expected, answer: &Answer) -> Option<String> {
    let mut wrong = Vec::new();
    let mut want = |what: &str, got: Option<&str>, expected: Option<&str>| {
        if got != expected {
            wrong.push(format!("{what} {got:?}, expected {expected:?}"));
        }
    };
    match expected {
        Expected::Pass {
            route,
            identity,
            path,
        } => {
            want("status", Some(&answer.status.to_string()), Some("200"));
            // Only the route adds x-soak-route: the request went through keygate to it.
            want("x-soak-route", answer.header("x-soak-route"), Some(route));
            want("body", std::str::from_utf8(&answer.body).ok(), Some(route));
            want(
                "x-api-key-id upstream",
                answer.header("x-soak-key-id"),
                identity.as_ref().map(|i| i.id.as_str()),
            );
            want(
                "x-api-key-owner upstream",
                answer.header("x-soak-key-owner"),
                identity.as_ref().map(|i| i.owner.as_str()),
            );
            want(
                "x-api-key-scopes upstream",
                answer.header("x-soak-key-scopes"),
                identity.as_ref().map(|i| i.scopes),
            );
            want(
                "authorization upstream",
                answer.header("x-soak-authorization"),
                None,
            );
            want(
                "x-api-key upstream",
                answer.header("x-soak-x-api-key"),
                None,
            );
            want("path upstream", answer.header("x-soak-path"), Some(path));
            if answer.count("x-soak-key-id") > 1 {
                wrong.push("x-soak-key-id repeated".into());
            }
        }
        Expected::Refuse {
            status,
            challenge,
            error,
            description,
            exact,
        } => {
            want(
                "status",
                Some(&answer.status.to_string()),
                Some(&status.to_string()),
            );
            want(
                "www-authenticate",
                answer.header("www-authenticate"),
                Some(challenge),
            );
            want(
                "content-type",
                answer.header("content-type"),
                Some("application/json"),
            );
            want(
                "cache-control",
                answer.header("cache-control"),
                Some("no-store"),
            );
            // A refusal is keygate's local reply: no route answered it.
            want("x-soak-route", answer.header("x-soak-route"), None);
            let body: Option<Value> = serde_json::from_slice(&answer.body).ok();
            let fields = body.as_ref().and_then(Value::as_object);
            let field = |name| fields.and_then(|f| f.get(name)).and_then(Value::as_str);
            let good_description = field("error_description").is_some_and(|d| {
                if *exact {
                    d == *description
                } else {
                    d.contains(description)
                }
            });
            if fields.map(|f| f.len()) != Some(2)
                || field("error") != Some(error)
                || !good_description
            {
                wrong.push(format!(
                    "body {:?}, expected error {error:?} and a description {} {description:?}",
                    String::from_utf8_lossy(&answer.body),
                    if *exact { "equal to" } else { "containing" }
                ));
            }
        }
    }
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

#[derive(Default)]
struct Tally {
    /// Answers (checked) by kind, and how many of them were as expected.
    answered: [u64; KINDS],
    matched: [u64; KINDS],
    by_status: BTreeMap<u16, u64>,
    mismatches: u64,
    /// Requests that got no answer (connection errors, timeouts).
    unanswered: u64,
    reconnects: u64,
    shown: Vec<String>,
    /// What keygate must have counted, by [`Outcome::index`].
    by_outcome: [u64; OUTCOMES],
    /// Answers to requests whose key a change reached, within its window: as before the
    /// change, and as after it; and past the window (all refused).
    window_old: u64,
    window_new: u64,
    refused_after: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        for k in 0..KINDS {
            self.answered[k] += other.answered[k];
            self.matched[k] += other.matched[k];
        }
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        self.mismatches += other.mismatches;
        self.unanswered += other.unanswered;
        self.reconnects += other.reconnects;
        for o in 0..OUTCOMES {
            self.by_outcome[o] += other.by_outcome[o];
        }
        self.window_old += other.window_old;
        self.window_new += other.window_new;
        self.refused_after += other.refused_after;
        for s in other.shown {
            if self.shown.len() < SHOWN_MISMATCHES {
                self.shown.push(s);
            }
        }
    }

    fn requests(&self) -> u64 {
        self.answered.iter().sum::<u64>() + self.unanswered
    }

    fn note(&mut self, text: String) {
        if self.shown.len() < SHOWN_MISMATCHES {
            self.shown.push(text);
        }
    }
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn connect(addr: SocketAddr) -> std::io::Result<Connection> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(Connection {
        writer: stream.try_clone()?,
        reader: BufReader::with_capacity(16 * 1024, stream),
    })
}

/// Sends requests `range`, in order, one at a time on one keep-alive connection, and
/// checks every answer. `done` counts answers across threads.
fn client(
    addr: SocketAddr,
    range: std::ops::Range<u64>,
    done: &AtomicU64,
    stop: &AtomicBool,
    revocations: Option<&Revocations>,
) -> Tally {
    let pattern = pattern();
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(512);
    let mut line = String::with_capacity(256);
    let mut connection: Option<Connection> = None;
    let mut failures_in_a_row = 0;
    for n in range.clone() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let kind = pattern[(n % PATTERN_LEN as u64) as usize];
        let expected = build(kind, n, &mut buf);
        let sent = Instant::now();
        let result = (|| {
            if connection.is_none() {
                connection = Some(connect(addr)?);
            }
            let c = connection.as_mut().unwrap();
            c.writer.write_all(&buf)?;
            read_answer(&mut c.reader, &mut line)
        })();
        match result {
            Ok(answer) => {
                let timing = (sent, Instant::now());
                failures_in_a_row = 0;
                tally.answered[kind.index()] += 1;
                *tally.by_status.entry(answer.status).or_default() += 1;
                match verdict(kind, n, &expected, &answer, timing, revocations, &mut tally) {
                    Ok(outcome) => {
                        tally.matched[kind.index()] += 1;
                        tally.by_outcome[outcome.index()] += 1;
                    }
                    Err(why) => {
                        tally.mismatches += 1;
                        // Counted as its kind is, whatever keygate made of it.
                        tally.by_outcome[kind.outcome().index()] += 1;
                        tally.note(format!("request {n} ({}): {why}", kind.label()));
                    }
                }
                if answer.closes() {
                    connection = None;
                    tally.reconnects += 1;
                }
            }
            Err(e) => {
                tally.unanswered += 1;
                tally.note(format!("request {n} ({}): no answer: {e}", kind.label()));
                connection = None;
                tally.reconnects += 1;
                failures_in_a_row += 1;
                if failures_in_a_row >= MAX_CONSECUTIVE_IO_ERRORS {
                    tally.note(format!(
                        "connection for requests {range:?}: {failures_in_a_row} failures in a \
                         row, gave up"
                    ));
                    break;
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// Sends requests `range` with `connections` threads, each its own share of the range in
/// order (so every connection sends every kind); returns the tallies.
fn load(
    addr: SocketAddr,
    range: std::ops::Range<u64>,
    connections: u64,
    done: &AtomicU64,
    stop: &AtomicBool,
    revocations: Option<&Revocations>,
) -> Tally {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..connections)
            .map(|t| {
                let len = range.end - range.start;
                let share =
                    range.start + len * t / connections..range.start + len * (t + 1) / connections;
                scope.spawn(move || client(addr, share, done, stop, revocations))
            })
            .collect();
        let mut total = Tally::default();
        for t in threads {
            total.add(t.join().expect("a client thread panicked"));
        }
        total
    })
}

// ---------------------------------------------------------------------------------------
// Envoy's process and stats

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Sample {
    done: u64,
    kib: u64,
}

/// Samples Envoy's RSS every [`RSS_EVERY`] until `finished`.
fn sample_rss(pid: u32, done: &AtomicU64, finished: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !finished.load(Ordering::Relaxed) {
        if let Some(kib) = rss_kib(pid) {
            samples.push(Sample {
                done: done.load(Ordering::Relaxed),
                kib,
            });
        }
        std::thread::sleep(RSS_EVERY);
    }
    samples
}

/// Envoy's counters of the listener, its wasm stats and keygate's (under `wasmcustom.` or,
/// for the native build, `dynamicmodulescustom.`).
fn stats(envoy: &Envoy) -> BTreeMap<String, u64> {
    envoy.stats("^(http\\.soak\\.downstream_rq_|wasm|dynamicmodulescustom)")
}

/// keygate's counter `keygate.<name>` as Envoy shows it for the build soaked
/// (`KEYGATE_BUILD`).
fn counter(metric: &str) -> String {
    format!("{}{metric}", support::Build::current().stat_prefix())
}

fn get(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats.get(name).copied().unwrap_or(0)
}

fn envoy_version() -> String {
    let out = Command::new(support::envoy_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    out.split_once("version: ")
        .and_then(|(_, v)| v.split('/').nth(1))
        .unwrap_or("?")
        .to_string()
}

/// Log lines of Envoy at `level` (`[error]`, `[critical]`, …).
fn log_lines(log: &str, level: &str) -> Vec<String> {
    let tag = format!("[{level}]");
    log.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------

/// What one run measured.
struct Run {
    mode: Mode,
    requests: u64,
    connections: u64,
    workers: u32,
    warmup: u64,
    tally: Tally,
    timed_out: bool,
    seconds: f64,
    cpu_seconds: f64,
    samples: Vec<Sample>,
    rss_start: u64,
    rss_last: u64,
    before: BTreeMap<String, u64>,
    after: BTreeMap<String, u64>,
    log: String,
    listener: SocketAddr,
    /// The changes made to keys.json (key_set and lookup).
    revocations: Option<Revocations>,
    /// Records in keys.json at the end.
    records_left: u64,
    /// `keygate serve`'s RSS after the load, KiB.
    serve_rss: Option<u64>,
    revocations_asked: usize,
    /// Where the keys came from, for the report.
    keys_from: String,
}

/// How long a change to keys.json may take to reach every answer, from the moment the
/// file is replaced (crates/filter/src/key_set.rs, lookup.rs; a call takes at most
/// [`CALL_TIMEOUT_MS`]):
/// - key_set: the fetch in flight may have read the old file and lands up to a timeout
///   later; the next is due `refresh_seconds` after it lands, starts on the next tick,
///   lands up to a timeout later, and reaches the other workers on their next tick.
/// - lookup: an answer read from the old file up to a timeout later is kept
///   `cache_seconds`, as a VM clock that may be a tick behind reads it.
fn window(mode: Mode, options: &Options) -> Duration {
    let call = Duration::from_millis(CALL_TIMEOUT_MS);
    match mode {
        Mode::Inline => Duration::ZERO,
        Mode::KeySet => Duration::from_secs(options.refresh_seconds) + 2 * call + 2 * TICK,
        Mode::Lookup => Duration::from_secs(options.cache_seconds) + call + TICK,
    }
}

/// Starts `keygate serve` (key_set, lookup) and Envoy, checks one pattern of requests,
/// sends the load (revoking keys meanwhile), and stops them. `None` if the first pattern
/// already went wrong (printed).
fn measure(options: &Options, mode: Mode) -> Option<Run> {
    let requests = options.requests(mode);
    let warmup = options.warmup.unwrap_or((requests / 10).min(100_000));
    let dir = support::TempDir::new("soak");
    let keys = dir.join("keys.json");
    let served = (mode != Mode::Inline).then(|| {
        std::fs::write(&keys, keys_document(1, &BTreeMap::new())).unwrap();
        let served = support::Served::start(&keys);
        let pid = served.pid();
        Tracked::new(served, pid)
    });
    let envoy = Envoy::start_from(
        Bootstrap::Json(&bootstrap(
            &keygate_config(mode, options),
            served.as_ref().map(|s| s.addr),
        )),
        EnvoyOptions {
            concurrency: options.workers,
            log_level: "warning",
            ..EnvoyOptions::default()
        },
    );
    let pid = envoy.pid();
    let envoy = Tracked::new(envoy, pid);
    let listener = envoy.listener;
    eprintln!(
        "soak: {}: Envoy {} (pid {pid}, --concurrency {}) on {listener}, {} keys{}",
        mode.name(),
        envoy_version(),
        options.workers,
        key_count(),
        served.as_ref().map_or(String::new(), |s| format!(
            " served by keygate serve on {}",
            s.url
        ))
    );
    if mode == Mode::KeySet
        && !support::eventually(Duration::from_secs(30), || {
            envoy.keygate_stat("keys_loaded") == key_count()
        })
    {
        eprintln!("soak: the key set never loaded:\n{}", envoy.log());
        return None;
    }

    // Every kind once, on one connection: a wrong setup stops here, before the load.
    let never = AtomicBool::new(false);
    let probe = load(
        listener,
        0..PATTERN_LEN as u64,
        1,
        &AtomicU64::new(0),
        &never,
        None,
    );
    if probe.mismatches + probe.unanswered > 0 {
        eprintln!("soak: the first pattern of requests went wrong:");
        for s in &probe.shown {
            eprintln!("  {s}");
        }
        drop(envoy);
        return None;
    }

    envoy.await_stats_flush();
    let before = stats(&envoy);
    let rss_start = rss_kib(pid).unwrap_or(0);
    let cpu_before = cpu_ticks(pid);

    let revocations = (mode != Mode::Inline).then(|| Revocations::new(window(mode, options)));
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let load_over = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (tally, samples, seconds, timed_out) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_rss(pid, &done, &finished));
        let revoker = revocations.as_ref().map(|revocations| {
            scope.spawn(|| revocations.run(options.revocations, requests, &keys, &done, &load_over))
        });
        let progress = scope.spawn(|| {
            let step = (requests / 10).max(1);
            let mut next = step;
            let deadline = started + Duration::from_secs(options.max_seconds);
            let mut timed_out = false;
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let n = done.load(Ordering::Relaxed);
                if n >= next && next < requests {
                    let s = started.elapsed().as_secs_f64();
                    eprintln!(
                        "soak: {:>9} requests  {:6.1} s  {:6.0} req/s  Envoy RSS {:.1} MiB",
                        thousands(n),
                        s,
                        n as f64 / s,
                        mib(rss_kib(pid).unwrap_or(0))
                    );
                    next += step;
                }
                if Instant::now() > deadline && !timed_out {
                    eprintln!(
                        "soak: --max-seconds {} reached; stopping",
                        options.max_seconds
                    );
                    stop.store(true, Ordering::Relaxed);
                    timed_out = true;
                }
            }
            timed_out
        });
        let mut tally = load(
            listener,
            0..requests,
            options.connections,
            &done,
            &stop,
            revocations.as_ref(),
        );
        load_over.store(true, Ordering::Relaxed);
        if let Some(revoker) = revoker {
            revoker.join().expect("the revoker panicked");
        }
        // Past `requests` until every revocation has been checked past its window: rounds
        // in which each connection uses every group's keys once.
        if let Some(revocations) = &revocations {
            let round = options.connections * PATTERN_LEN as u64 * GROUPS;
            let mut next = requests;
            while revocations.unchecked() && !stop.load(Ordering::Relaxed) {
                let more = load(
                    listener,
                    next..next + round,
                    options.connections,
                    &done,
                    &stop,
                    Some(revocations),
                );
                tally.add(more);
                next += round;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        finished.store(true, Ordering::Relaxed);
        let samples = sampler.join().expect("the RSS sampler panicked");
        let timed_out = progress.join().expect("the progress thread panicked");
        (tally, samples, seconds, timed_out)
    });
    let cpu_seconds = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / ticks_per_second();

    envoy.await_stats_flush();
    let after = stats(&envoy);
    let rss_last = rss_kib(pid).unwrap_or(0);
    let log = envoy.log();
    drop(envoy);
    let serve_rss = served.as_ref().and_then(|s| rss_kib(s.pid()));
    drop(served);
    let records_left = match mode {
        Mode::Inline => key_count(),
        _ => {
            let doc: Value = serde_json::from_slice(&std::fs::read(&keys).unwrap()).unwrap();
            doc["keys"].as_array().map_or(0, |k| k.len() as u64)
        }
    };
    Some(Run {
        mode,
        requests,
        connections: options.connections,
        workers: options.workers,
        warmup,
        tally,
        timed_out,
        seconds,
        cpu_seconds,
        samples,
        rss_start,
        rss_last,
        before,
        after,
        log,
        listener,
        revocations,
        records_left,
        serve_rss,
        keys_from: match mode {
            Mode::Inline => "inline".to_string(),
            Mode::KeySet => format!(
                "fetched from the real `keygate serve` (`key_set`, `refresh_seconds` {}, \
                 `timeout_ms` {CALL_TIMEOUT_MS})",
                options.refresh_seconds
            ),
            Mode::Lookup => format!(
                "looked up in the real `keygate serve` (`lookup`, `cache_seconds` {}, \
                 `negative_cache_seconds` 1, `timeout_ms` {CALL_TIMEOUT_MS})",
                options.cache_seconds
            ),
        },
        revocations_asked: if mode == Mode::Inline {
            0
        } else {
            options.revocations
        },
    })
}

/// What the run came to: the figures of the report and every check that failed.
struct Findings {
    failures: Vec<String>,
    answered: u64,
    rss_ref: Option<u64>,
    rss_min: u64,
    rss_max: u64,
    /// RSS at each tenth of the run.
    series: Vec<(u64, u64)>,
    /// Every `wasm.*` stat, before and after.
    wasm_stats: BTreeMap<String, (u64, u64)>,
    /// keygate's counters: name, the client's tally, keygate's count.
    outcomes: Vec<(&'static str, u64, u64)>,
    errors: Vec<String>,
    critical: Vec<String>,
    warnings: Vec<String>,
}

impl Run {
    /// A counter's growth during the load.
    fn delta(&self, name: &str) -> u64 {
        get(&self.after, name).saturating_sub(get(&self.before, name))
    }

    fn listener_delta(&self, name: &str) -> u64 {
        self.delta(&format!("http.soak.downstream_rq_{name}"))
    }
}

fn judge(run: &Run) -> Findings {
    let tally = &run.tally;
    let mut failures: Vec<String> = Vec::new();
    let requests = tally.requests();
    if run.timed_out || requests < run.requests {
        failures.push(format!(
            "{} of {} requests sent",
            thousands(requests),
            thousands(run.requests)
        ));
    }
    if tally.mismatches > 0 {
        failures.push(format!("{} answers not as expected", tally.mismatches));
    }
    if tally.unanswered > 0 {
        failures.push(format!("{} requests got no answer", tally.unanswered));
    }

    // Memory: the first sample after the warm-up, then the smallest, largest and last.
    let after_warmup: Vec<u64> = run
        .samples
        .iter()
        .filter(|s| s.done >= run.warmup)
        .map(|s| s.kib)
        .chain([run.rss_last])
        .collect();
    let rss_ref = run
        .samples
        .iter()
        .find(|s| s.done >= run.warmup)
        .map(|s| s.kib);
    let rss_min = after_warmup.iter().copied().min().unwrap_or(run.rss_last);
    let rss_max = after_warmup.iter().copied().max().unwrap_or(run.rss_last);
    match rss_ref {
        None => failures.push("no RSS sample after the warm-up".into()),
        Some(reference) => {
            let limit = reference as f64 * RSS_GROWTH_LIMIT;
            if rss_max as f64 > limit || run.rss_last as f64 > limit {
                failures.push(format!(
                    "Envoy's RSS grew more than 10 % after the warm-up: {:.1} → max {:.1}, \
                     last {:.1} MiB",
                    mib(reference),
                    mib(rss_max),
                    mib(run.rss_last)
                ));
            }
        }
    }
    let series: Vec<(u64, u64)> = (1..=10)
        .filter_map(|k| {
            let at = run.requests * k / 10;
            run.samples
                .iter()
                .find(|s| s.done >= at)
                .map(|s| (at, s.kib))
        })
        .collect();

    // The VM: no reload, no new VM, as many VMs at the end as at the start.
    let wasm_stats: BTreeMap<String, (u64, u64)> = run
        .before
        .keys()
        .chain(run.after.keys())
        .filter(|name| name.starts_with("wasm."))
        .map(|name| {
            (
                name.clone(),
                (get(&run.before, name), get(&run.after, name)),
            )
        })
        .collect();
    // The native build has no VM (it runs in Envoy's process): nothing to count.
    let wasm = support::Build::current() == support::Build::Wasm;
    if wasm && !wasm_stats.keys().any(|name| name.contains("vm_reload")) {
        failures.push("no vm_reload stat on /stats".into());
    }
    for (name, (b, a)) in &wasm_stats {
        if name.contains("reload") && *a != 0 {
            failures.push(format!("{name} is {a}"));
        }
        let counts_vms = name.ends_with("runtime.v8.created")
            || name.ends_with("runtime.v8.active")
            || name == "wasm.wasm_vm_count";
        if counts_vms && b != a {
            failures.push(format!("{name} went from {b} to {a} during the run"));
        }
    }
    for suffix in ["created", "active"] {
        if wasm
            && !wasm_stats
                .keys()
                .any(|name| name.ends_with(&format!("runtime.v8.{suffix}")))
        {
            failures.push(format!("no wasm runtime.v8.{suffix} stat on /stats"));
        }
    }

    // keygate's counters against the client's tallies.
    let mut outcomes = Vec::new();
    for outcome in Outcome::ALL {
        let counted = run.delta(&counter(outcome.metric_name()));
        let expected = tally.by_outcome[outcome.index()];
        if counted != expected {
            failures.push(format!(
                "keygate counted {counted} {}, the client {expected}",
                outcome.metric_name()
            ));
        }
        if expected > 0 || counted > 0 {
            outcomes.push((outcome.metric_name(), expected, counted));
        }
    }
    if run.mode != Mode::Lookup {
        let keys_loaded = get(&run.after, &counter("keygate.keys_loaded"));
        if keys_loaded != run.records_left {
            failures.push(format!(
                "keygate.keys_loaded is {keys_loaded}, not {}",
                run.records_left
            ));
        }
    }
    for failed in ["keygate.fetch.failed", "keygate.lookup.failed"] {
        let n = run.delta(&counter(failed));
        if n > 0 {
            failures.push(format!("{failed}: {n}"));
        }
    }
    if let Some(revocations) = &run.revocations {
        let events = revocations.events.lock().unwrap();
        for (i, event) in events.iter().enumerate() {
            let past: u64 = event
                .groups
                .iter()
                .filter_map(|(g, _)| revocations.groups[*g as usize].get())
                .map(|c| c.past_window.load(Ordering::Relaxed))
                .sum();
            if past == 0 {
                failures.push(format!(
                    "revocation {}: no request sent past its window ({:.1} s) to check: the \
                     load ended first (more --requests, or fewer --revocations)",
                    i + 1,
                    revocations.window.as_secs_f64()
                ));
            }
        }
        let made = events.len();
        if made != run.revocations_asked {
            failures.push(format!(
                "{made} of {} revocations made",
                run.revocations_asked
            ));
        }
    }

    // Envoy's listener counters against the answers.
    let answered: u64 = tally.answered.iter().sum();
    if run.listener_delta("completed") != answered {
        failures.push(format!(
            "Envoy completed {} requests, the client got {answered} answers",
            run.listener_delta("completed")
        ));
    }
    for c in 1..=5u16 {
        let counted = run.listener_delta(&format!("{c}xx"));
        let client: u64 = tally
            .by_status
            .iter()
            .filter(|(s, _)| **s / 100 == c)
            .map(|(_, n)| n)
            .sum();
        if counted != client {
            failures.push(format!(
                "Envoy counted {counted} {c}xx, the client {client}"
            ));
        }
    }

    let errors = log_lines(&run.log, "error");
    let critical = log_lines(&run.log, "critical");
    if let Some(first) = errors.iter().chain(&critical).next() {
        failures.push(format!(
            "Envoy logged {} error and {} critical lines, first: {first}",
            errors.len(),
            critical.len(),
        ));
    }
    Findings {
        failures,
        answered,
        rss_ref,
        rss_min,
        rss_max,
        series,
        wasm_stats,
        outcomes,
        errors,
        critical,
        warnings: log_lines(&run.log, "warning"),
    }
}

/// The Markdown report.
fn report(run: &Run, f: &Findings) -> String {
    // The build soaked (`KEYGATE_BUILD`) and its file.
    let module = match support::Build::current() {
        support::Build::Wasm => ("keygate.wasm", support::wasm_module()),
        support::Build::Native => ("libkeygate_native.so", support::native_module()),
    };
    let tally = &run.tally;
    let requests = tally.requests();
    let mut r = String::new();
    let pct = |n: u64| 100.0 * n as f64 / f.answered.max(1) as f64;
    let mut by_expected: BTreeMap<u16, u64> = BTreeMap::new();
    for outcome in Outcome::ALL {
        *by_expected.entry(status_of(outcome)).or_default() += tally.by_outcome[outcome.index()];
    }
    let mut per_pattern: BTreeMap<u16, usize> = BTreeMap::new();
    for (kind, weight) in MIX {
        *per_pattern.entry(kind.status()).or_default() += weight;
    }
    r.push_str(&format!(
        "### Soak, {}: {} mixed requests through one Envoy (`make soak`)\n\n",
        run.mode.name(),
        thousands(requests)
    ));
    r.push_str(&format!(
        "Envoy {} `--concurrency {}`, {} {} bytes, {} keys {}, the ImmPort-like \
         rules; {} keep-alive HTTP/1.1 connections from a client on the same {}-CPU machine \
         ({}). Each {PATTERN_LEN} requests: {} ({} kinds of request, crates/tools/src/bin/soak.rs). \
         Every answer checked: status, keygate's `WWW-Authenticate` and JSON body on \
         refusals, the route's header and the forwarded identity on 200s.\n\n",
        envoy_version(),
        run.workers,
        module.0,
        thousands(std::fs::metadata(&module.1).map_or(0, |m| m.len())),
        thousands(key_count()),
        run.keys_from,
        run.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run.listener,
        per_pattern
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect::<Vec<_>>()
            .join(", "),
        KINDS,
    ));
    r.push_str("| | |\n|---|---:|\n");
    r.push_str(&format!("| requests | {} |\n", thousands(requests)));
    r.push_str(&format!("| wall time | {:.1} s |\n", run.seconds));
    r.push_str(&format!(
        "| requests/s | {} |\n",
        thousands((requests as f64 / run.seconds) as u64)
    ));
    r.push_str(&format!(
        "| Envoy CPU | {:.1} s ({:.1} µs/request) |\n",
        run.cpu_seconds,
        run.cpu_seconds * 1e6 / requests.max(1) as f64
    ));
    r.push_str(&format!(
        "| answers not as expected | {} |\n",
        tally.mismatches
    ));
    r.push_str(&format!(
        "| requests without an answer | {} |\n",
        tally.unanswered
    ));
    r.push_str(&format!(
        "| answers with `connection: close` (connection reopened) | {} |\n",
        thousands(tally.reconnects)
    ));
    r.push_str(&format!(
        "| Envoy log lines: warning / error / critical | {} / {} / {} |\n\n",
        f.warnings.len(),
        f.errors.len(),
        f.critical.len()
    ));

    let statuses: std::collections::BTreeSet<u16> = by_expected
        .keys()
        .chain(tally.by_status.keys())
        .copied()
        .collect();
    r.push_str("| status | requests that must get it | answers | share |\n|---|---:|---:|---:|\n");
    for status in statuses {
        let n = tally.by_status.get(&status).copied().unwrap_or(0);
        r.push_str(&format!(
            "| {status} | {} | {} | {:.1} % |\n",
            thousands(by_expected.get(&status).copied().unwrap_or(0)),
            thousands(n),
            pct(n)
        ));
    }
    r.push_str(&format!(
        "\nEnvoy's listener counted {} requests completed, {} 2xx and {} 4xx (5xx: {}).\n\n",
        thousands(run.listener_delta("completed")),
        thousands(run.listener_delta("2xx")),
        thousands(run.listener_delta("4xx")),
        thousands(run.listener_delta("5xx")),
    ));

    r.push_str("| keygate counter | client's tally | keygate's |\n|---|---:|---:|\n");
    for (name, expected, counted) in &f.outcomes {
        r.push_str(&format!(
            "| `{name}` | {} | {} |\n",
            thousands(*expected),
            thousands(*counted)
        ));
    }
    r.push('\n');
    if let Some(revocations) = &run.revocations {
        r.push_str(&revocation_report(run, revocations));
    }

    let growth = f.rss_ref.map_or("–".into(), |k| {
        format!("{:+.1} %", (run.rss_last as f64 / k as f64 - 1.0) * 100.0)
    });
    r.push_str(&format!(
        "Envoy RSS, MiB (reference: the first sample after {} requests; limit +10 %):\n\n\
         | at start | after warm-up | min | max | last (after the load) | growth (last) |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {:.1} | {} | {:.1} | {:.1} | {:.1} | {growth} |\n\n",
        thousands(run.warmup),
        mib(run.rss_start),
        f.rss_ref.map_or("–".into(), |k| format!("{:.1}", mib(k))),
        mib(f.rss_min),
        mib(f.rss_max),
        mib(run.rss_last),
    ));
    if !f.series.is_empty() {
        r.push_str(&format!(
            "RSS by requests served: {}.\n\n",
            f.series
                .iter()
                .map(|(at, kib)| format!("{} {:.1}", thousands(*at), mib(*kib)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // The native build has no VM, so no wasm stats to show.
    if !f.wasm_stats.is_empty() {
        r.push_str("| wasm stat | before | after |\n|---|---:|---:|\n");
        for (name, (b, a)) in &f.wasm_stats {
            r.push_str(&format!("| `{name}` | {b} | {a} |\n"));
        }
        r.push('\n');
    }

    if f.failures.is_empty() {
        r.push_str(
            "**Result: held**: every answer as expected, keygate's and Envoy's counters equal \
             to the client's, no VM reload or new VM, RSS within 10 % of its post-warm-up \
             value.\n",
        );
    } else {
        r.push_str("**Result: FAILED**\n\n");
        for failure in &f.failures {
            r.push_str(&format!("- {failure}\n"));
        }
    }
    r
}

/// The revocations made during the run, when they took effect, and the key service's
/// side.
fn revocation_report(run: &Run, revocations: &Revocations) -> String {
    let tally = &run.tally;
    let events = revocations.events.lock().unwrap();
    let keys_per_group: u64 = Pool::ALL
        .iter()
        .filter(|p| p.revocable())
        .map(|p| p.size() / GROUPS)
        .sum();
    let mut r = format!(
        "Revocations: {} rewrites of keys.json during the load, each changing {} groups of \
         {keys_per_group} keys (the records of three groups removed, two disabled). The \
         window: an answer received before the file was replaced must be as before; a \
         request sent more than {:.1} s after it was replaced must be refused \
         (`invalid_token`, \"unknown API key\" or \"API key disabled\"); in between, \
         either. Answers to requests with a changed key: {} as before within the window, \
         {} refused within it, {} refused past it.\n\n",
        events.len(),
        GROUPS_PER_REVOCATION,
        revocations.window.as_secs_f64(),
        thousands(tally.window_old),
        thousands(tally.window_new),
        thousands(tally.refused_after),
    );
    r.push_str(
        "| # | after requests | file replaced in | first refusal | last answer as before | \
         answers past the window |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    // Times after the file was replaced, in seconds (negative: while it was written).
    let after_written = |event: &Event, ns: u64| {
        let from_written = event.written.duration_since(event.from).as_nanos() as f64;
        format!("{:+.3} s", (ns as f64 - from_written) / 1e9)
    };
    for (i, event) in events.iter().enumerate() {
        let changes: Vec<&Change> = event
            .groups
            .iter()
            .filter_map(|(g, _)| revocations.groups[*g as usize].get())
            .collect();
        let first_new = changes
            .iter()
            .map(|c| c.first_new_ns.load(Ordering::Relaxed))
            .min()
            .filter(|&ns| ns != u64::MAX);
        let last_old = changes
            .iter()
            .map(|c| c.last_old_ns.load(Ordering::Relaxed))
            .filter(|&ns| ns != 0)
            .max()
            .map(|ns| ns - 1);
        let past: u64 = changes
            .iter()
            .map(|c| c.past_window.load(Ordering::Relaxed))
            .sum();
        r.push_str(&format!(
            "| {} | {} | {:.1} ms | {} | {} | {} |\n",
            i + 1,
            thousands(event.at_requests),
            event.written.duration_since(event.from).as_secs_f64() * 1000.0,
            first_new.map_or("–".into(), |ns| after_written(event, ns)),
            last_old.map_or("none".into(), |ns| after_written(event, ns)),
            thousands(past),
        ));
    }
    let stat = |name: &str| thousands(run.delta(&counter(&format!("keygate.{name}"))));
    r.push_str(&match run.mode {
        Mode::KeySet => format!(
            "\nKey-set fetches during the load: {} ok, {} not modified, {} failed.",
            stat("fetch.ok"),
            stat("fetch.not_modified"),
            stat("fetch.failed")
        ),
        _ => format!(
            "\nLookups during the load: {} calls to the key service, {} answered from the \
             cache, {} failed.",
            stat("lookup.calls"),
            stat("lookup.cache_hits"),
            stat("lookup.failed")
        ),
    });
    if let Some(kib) = run.serve_rss {
        r.push_str(&format!(
            " `keygate serve` RSS after the load: {:.1} MiB.",
            mib(kib)
        ));
    }
    r.push_str("\n\n");
    r
}

/// The longest time, after keys.json was replaced, until a changed key's answers were
/// all refused: the last answer as before (or, if none came after the change, the first
/// refusal), over every revocation. `None` without revocations.
fn revocation_delay(revocations: &Revocations) -> Option<f64> {
    let events = revocations.events.lock().unwrap();
    events
        .iter()
        .filter_map(|event| {
            let written = event.written.duration_since(event.from).as_nanos() as u64;
            event
                .groups
                .iter()
                .filter_map(|(g, _)| revocations.groups[*g as usize].get())
                .filter_map(|c| {
                    let old = c.last_old_ns.load(Ordering::Relaxed);
                    let new = c.first_new_ns.load(Ordering::Relaxed);
                    if old != 0 {
                        Some(old - 1)
                    } else {
                        (new != u64::MAX).then_some(new)
                    }
                })
                .max()
                .map(|ns| (ns as f64 - written as f64) / 1e9)
        })
        .reduce(f64::max)
}

fn main() -> ExitCode {
    let options = options();
    keygate_tools::cleanup::install("soak");
    let mut summary = Vec::new();
    let mut failed = false;
    for &mode in &options.modes {
        let Some(run) = measure(&options, mode) else {
            return ExitCode::FAILURE;
        };
        let findings = judge(&run);
        println!("{}", report(&run, &findings));

        eprintln!(
            "soak: {}: answers by kind (matched / answered):",
            mode.name()
        );
        for (kind, _) in MIX {
            eprintln!(
                "  {:<55} {:>9} / {:>9}",
                kind.label(),
                run.tally.matched[kind.index()],
                run.tally.answered[kind.index()]
            );
        }
        if !findings.warnings.is_empty() {
            eprintln!(
                "soak: Envoy's warnings (first 5 of {}):",
                findings.warnings.len()
            );
            for line in findings.warnings.iter().take(5) {
                eprintln!("  {line}");
            }
        }
        if !run.tally.shown.is_empty() {
            eprintln!("soak: first mismatches:");
            for s in &run.tally.shown {
                eprintln!("  {s}");
            }
        }
        failed |= !findings.failures.is_empty();
        let counters_equal = findings.outcomes.iter().all(|(_, a, b)| a == b);
        summary.push(format!(
            "| {} | {} | {} | {} | {:.1} → {:.1} MiB | {:.1} s | {} | {} |",
            mode.name(),
            thousands(run.tally.requests()),
            run.tally.mismatches + run.tally.unanswered,
            if counters_equal { "yes" } else { "**no**" },
            mib(findings.rss_ref.unwrap_or(run.rss_start)),
            mib(run.rss_last),
            run.seconds,
            run.revocations
                .as_ref()
                .and_then(revocation_delay)
                .map_or("–".into(), |d| format!(
                    "{d:.2} s (window {:.1} s)",
                    run.revocations
                        .as_ref()
                        .map_or(0.0, |r| r.window.as_secs_f64())
                )),
            if findings.failures.is_empty() {
                "held"
            } else {
                "**FAILED**"
            },
        ));
    }
    if summary.len() > 1 {
        println!(
            "### Soak: every mode\n\n\
             | mode | requests | wrong or no answer | keygate's counters = client's | Envoy RSS \
             (after warm-up → last) | wall time | revocation delay (max) | result |\n\
             |---|---:|---:|---|---:|---:|---:|---|"
        );
        for row in &summary {
            println!("{row}");
        }
        println!();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
