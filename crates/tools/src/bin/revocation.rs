//! `make bench-revocation`: how fast a revocation reaches every Envoy worker in `key_set`
//! mode, with the incremental sync (the lease holder long-polls
//! `/v1/keyset?since=V&epoch=E&wait=S`, `watch_seconds: 25`) and with plain polling
//! (`watch_seconds: 0`, `refresh_seconds: 5`), side by side (GitHub issue #17; the results
//! are in BENCHMARKS.md, "Revocation in a second").
//!
//! For each key-set size N (`--keys 10000,1000000`), with the `keygate` of `KEYGATE_BIN`
//! (the release build under `make bench-revocation`), everything on 127.0.0.1 and under
//! the system temp dir (deleted at the end):
//!
//! 1. **Revocation latency.** N records are imported into a SQLite database (`keygate
//!    import`) with an admin key; the database is copied, and one `keygate serve --db`
//!    runs on each copy: one for the watching Envoy, one for the polling Envoy, so that a
//!    revocation measured on one does not make the other reload. Both Envoys run with
//!    `--concurrency 4` and stay up; rounds alternate watch / poll. A round picks a key
//!    not used before, checks that it answers 200, revokes it with `DELETE
//!    /v1/admin/keys/{id}` (the store has accepted the revoke when that answers 200), then
//!    sends requests with it, each on a new connection (Envoy spreads connections over its
//!    workers), about one per millisecond, until 8 in a row answer 401 and the next 24 do
//!    too (32 fresh connections leave a worker unvisited with a chance of 4 × (3/4)^32 ≈
//!    0.4 %). The latency is from the DELETE's 200 to the sending of the first request of
//!    that run of 401s. A 200 after 8 or more 401s in a row is counted (a worker serving
//!    the old set after another served the new one) and the run starts again.
//! 2. **One changed key.** On each Envoy once more: a steady loop of requests with another
//!    valid key (new connection each, 1 ms apart) runs for 3 s, then while one key is
//!    revoked and the change is applied (until `keygate.fetch.ok` grows, then 0.5 s).
//!    Reported: the bytes the key service answers for the change (the delta
//!    `?since=V&epoch=E`, or the full document), what Envoy received from the `keyservice`
//!    cluster meanwhile (`cluster.keyservice.upstream_cx_rx_bytes_total`), the steady
//!    requests' p99 and slowest during the change and in the 3 s before, and the CPU time
//!    of each Envoy thread over both (`/proc/PID/task/TID/stat`, 10 ms ticks): the busiest
//!    is the VM that applied the change; the other workers' median is what serving the
//!    steady loop cost.
//! 3. **Envoy's RSS** (VmRSS) with the set in force, at 1 and 4 workers (watching), from a
//!    `keygate serve --keys` file; then `--churn-sets` (10) successive sets of
//!    `--churn-keys` (100,000) keys never published before replace the whole set, the file
//!    rewritten each time; RSS after each, and the growth from the first to the last.
//! 4. **The key service under long-polls** (once, on the first size's database): the
//!    `keygate serve --db` process's RSS and CPU time (utime + stime) while 0, 1,000 and
//!    10,000 (`--long-polls`) `GET /v1/keyset?since=V&epoch=E&wait=60` are held open from
//!    this process (HTTP/1.1, one socket each), over `--long-poll-seconds` (20). The
//!    process raises its open-file limit to the hard limit first (`prlimit`; the server
//!    inherits it): 10,000 long-polls need 10,000 descriptors on each side.
//!
//! keygate's native build (`KEYGATE_NATIVE`, `make native`; README "Native build (Envoy
//! dynamic module)") is measured beside the wasm filter: a third Envoy watching its own
//! copy of the database in parts 1 and 2 (the same rounds as the wasm filter's watch,
//! interleaved with them), and its own watching Envoys in part 3 (`--builds wasm,native`
//! picks the builds; polling is measured for the wasm filter only).
//!
//! Other options: `--revocations 50` (watch rounds), `--poll-revocations 10` (polling
//! rounds), `--refresh-seconds 5` (polling), `--watch-seconds 25`, `--load-limit 300`
//! (seconds to wait for a load or a revocation), `--skip parts` (comma-separated: latency,
//! change, memory, long-polls). Prints Markdown tables. Exits 1 if a revocation was not
//! seen within the limit or a valid key was refused.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use keygate_tools::cleanup::Tracked;

/// [`keygate_tools::thousands`] of a count.
fn thousands(n: usize) -> String {
    keygate_tools::thousands(n as u64)
}
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::process::{cpu_ticks, rss_kib, status_kib, ticks_per_second};
use support::{
    bench_key, bootstrap_with_key_service, keygate_binary, try_request, Background, Build, Envoy,
    EnvoyOptions, Request, Serve, Served, TempDir, Upstream,
};

/// Envoy's default for the body of a response to a filter's call (runtime key
/// `http.async_response_buffer_limit`).
const ENVOY_ASYNC_RESPONSE_LIMIT: usize = 32 * 1024 * 1024;
/// The largest fetch timeout the configuration accepts.
const FETCH_TIMEOUT_MS: u32 = 60_000;
const WORKERS: u32 = 4;
/// 401s in a row that end a round, and the further 401s that confirm it.
const RUN: usize = 8;
const CONFIRM: usize = 24;
/// The pause between two probes of a revoked key.
const PROBE_GAP: Duration = Duration::from_millis(1);
/// How long the steady loop of "one changed key" runs before the revoke.
const STEADY_BEFORE: Duration = Duration::from_secs(3);

struct Options {
    keys: Vec<usize>,
    revocations: usize,
    poll_revocations: usize,
    watch_seconds: u32,
    refresh_seconds: u32,
    churn_sets: usize,
    churn_keys: usize,
    long_polls: Vec<usize>,
    long_poll_seconds: u64,
    load_limit: Duration,
    skip: BTreeSet<String>,
    /// Which builds to run: the wasm filter, the native module.
    wasm: bool,
    native: bool,
}

fn list(flag: &str, value: &str) -> Vec<usize> {
    value
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: {v:?} is not a number"))
        })
        .collect()
}

fn options() -> Options {
    let mut o = Options {
        keys: vec![10_000, 1_000_000],
        revocations: 50,
        poll_revocations: 10,
        watch_seconds: 25,
        refresh_seconds: 5,
        churn_sets: 10,
        churn_keys: 100_000,
        long_polls: vec![0, 1_000, 10_000],
        long_poll_seconds: 20,
        load_limit: Duration::from_secs(300),
        skip: BTreeSet::new(),
        wasm: true,
        native: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag}: a value is missing"));
        let one = || list(&flag, &value).first().copied().unwrap_or(0);
        match flag.as_str() {
            "--keys" => o.keys = list(&flag, &value),
            "--revocations" => o.revocations = one(),
            "--poll-revocations" => o.poll_revocations = one(),
            "--watch-seconds" => o.watch_seconds = one() as u32,
            "--refresh-seconds" => o.refresh_seconds = one() as u32,
            "--churn-sets" => o.churn_sets = one(),
            "--churn-keys" => o.churn_keys = one(),
            "--long-polls" => o.long_polls = list(&flag, &value),
            "--long-poll-seconds" => o.long_poll_seconds = one() as u64,
            "--load-limit" => o.load_limit = Duration::from_secs(one() as u64),
            "--skip" => o.skip = value.split(',').map(str::to_string).collect(),
            "--builds" => {
                let builds = Build::parse_list(&value).unwrap_or_else(|e| panic!("--builds: {e}"));
                o.wasm = builds.contains(&Build::Wasm);
                o.native = builds.contains(&Build::Native);
            }
            _ => panic!(
                "unknown option {flag}: use --keys, --revocations, --poll-revocations, \
                 --watch-seconds, --refresh-seconds, --churn-sets, --churn-keys, --long-polls, \
                 --long-poll-seconds, --load-limit, --skip, --builds"
            ),
        }
    }
    assert!(o.watch_seconds > 0, "--watch-seconds must be > 0");
    for part in &o.skip {
        assert!(
            ["latency", "change", "memory", "long-polls"].contains(&part.as_str()),
            "--skip: unknown part {part:?}"
        );
    }
    o
}

// ---------------------------------------------------------------------------------------
// The processes this tool starts

// ---------------------------------------------------------------------------------------
// Keys and the key service

/// Record `i`'s id: a lowercase UUID (v4-shaped), as `keygate import` wants.
fn record_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// A key file of the records `range` (record `i` is `bench_key(i)`'s, scope `browse`).
fn key_file(version: &str, range: std::ops::Range<usize>) -> String {
    format!(
        "{{\"version\":\"{version}\",\"keys\":{}}}",
        support::bench_records_json_range(range, None, record_id)
    )
}

/// Writes `text` to `path` at once (a rename), as a key service's file should change.
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Runs `keygate ARGS`, which must succeed: its stdout.
fn keygate(args: &[&str]) -> String {
    let out = Command::new(keygate_binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "keygate {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies a SQLite database that no process has open (with its WAL, if any).
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let side = format!("{}{suffix}", from.display());
        if Path::new(&side).exists() {
            std::fs::copy(&side, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

fn serve(args: &[&str]) -> Tracked<Served> {
    let served = Serve::new(args)
        .start_timeout(Duration::from_secs(300))
        .start();
    let pid = served.pid();
    Tracked::new(served, pid)
}

/// The change feed's version and epoch, from `GET /v1/changes` (a baseline, at once).
fn feed_position(service: SocketAddr) -> (String, String) {
    let answer = try_request(service, &Request::get("/v1/changes")).unwrap();
    assert_eq!(answer.status, 200, "/v1/changes: {}", answer.text());
    let doc = answer.json();
    (
        doc["version"].as_str().unwrap().to_string(),
        doc["epoch"].as_str().unwrap().to_string(),
    )
}

/// The size of the body `/v1/keyset` answers with `query`.
fn keyset_bytes(service: SocketAddr, query: &str) -> usize {
    let answer = try_request(service, &Request::get(&format!("/v1/keyset{query}"))).unwrap();
    assert_eq!(answer.status, 200, "/v1/keyset{query}");
    answer.body.len()
}

/// Revokes record `i` through the admin API; returns when the store has accepted it.
fn revoke(service: SocketAddr, admin: &str, i: usize) -> Instant {
    let answer = try_request(
        service,
        &Request::new("DELETE", &format!("/v1/admin/keys/{}", record_id(i))).bearer(admin),
    )
    .unwrap();
    let acked = Instant::now();
    assert_eq!(answer.status, 200, "revoke {i}: {}", answer.text());
    acked
}

// ---------------------------------------------------------------------------------------
// Envoy

fn key_set_config(watch_seconds: u32, refresh_seconds: u32) -> Value {
    json!({
        "key_set": {"cluster": "keyservice", "path": "/v1/keyset",
                    "refresh_seconds": refresh_seconds, "watch_seconds": watch_seconds,
                    "timeout_ms": FETCH_TIMEOUT_MS},
        "rules": [{"path_prefix": "/data", "scopes": ["browse"]}]
    })
}

/// Envoy with keygate (the native build if `native`) fetching from `service`, once its set
/// holds `keys` keys; and how long that took from the start.
#[allow(clippy::too_many_arguments)]
fn start_envoy(
    native: bool,
    plugin: &Value,
    upstream: &Upstream,
    service: SocketAddr,
    document_bytes: usize,
    workers: u32,
    keys: usize,
    limit: Duration,
) -> (Tracked<Envoy>, Duration) {
    let mut doc = bootstrap_with_key_service(plugin, upstream.addr, service);
    if native {
        support::wasm_to_native(&mut doc);
    }
    if document_bytes > ENVOY_ASYNC_RESPONSE_LIMIT / 2 {
        doc["layered_runtime"] = json!({"layers": [{"name": "bench", "static_layer": {
            "http.async_response_buffer_limit": (document_bytes * 2).next_power_of_two()
        }}]});
    }
    let started = Instant::now();
    let envoy = Envoy::start_bootstrap(
        &doc,
        EnvoyOptions {
            concurrency: workers,
            log_level: "info",
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    );
    let pid = envoy.pid();
    let envoy = Tracked::new(envoy, pid);
    await_keys(&envoy, keys, 0, limit);
    (envoy, started.elapsed())
}

/// Waits until the set in force holds `keys` keys after more than `fetches_before`
/// successful fetches; panics with Envoy's log past `limit`.
fn await_keys(envoy: &Envoy, keys: usize, fetches_before: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let s = stats(envoy, "keygate");
        if keygate_stat(&s, "keys_loaded") as usize == keys
            && keygate_stat(&s, "fetch.ok") > fetches_before
        {
            return;
        }
        if started.elapsed() > limit {
            let log = envoy.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the set of {keys} keys did not load within {limit:?} (stats {s:?}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numeric stats whose names match `filter` (empty if the admin does not answer).
fn stats(envoy: &Envoy, filter: &str) -> BTreeMap<String, u64> {
    envoy.try_stats(filter).unwrap_or_default()
}

use support::keygate_stat_in as keygate_stat;

fn rx_bytes(envoy: &Envoy) -> u64 {
    stats(envoy, "cluster.keyservice.upstream_cx_rx_bytes_total")
        .get("cluster.keyservice.upstream_cx_rx_bytes_total")
        .copied()
        .unwrap_or(0)
}

/// The status of a request for `/data/x` with key `i` on a new connection (0: no answer).
fn status_of(envoy: &Envoy, i: usize) -> u16 {
    try_request(
        envoy.listener,
        &Request::get("/data/x").bearer(&bench_key(i)),
    )
    .map_or(0, |r| r.status)
}

/// CPU time of every thread of `pid`, in clock ticks, by thread id, with its name.
fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            out.insert(tid, (name, user + system));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 1. Revocation latency

#[derive(Default)]
struct Probe {
    /// From the DELETE's 200 to the first request of the run of 401s that held.
    latency: Option<Duration>,
    first_401: Option<Duration>,
    requests: usize,
    /// 200s after 8 or more 401s in a row.
    flip_backs: usize,
    /// Answers neither 200 nor 401 (or none).
    other: usize,
}

/// Sends requests with revoked key `i` until `RUN + CONFIRM` in a row answer 401.
fn probe(envoy: &Envoy, i: usize, acked: Instant, limit: Duration) -> Probe {
    let mut p = Probe::default();
    let mut run_start = None;
    let mut run = 0;
    while acked.elapsed() < limit {
        let sent = Instant::now();
        let status = status_of(envoy, i);
        p.requests += 1;
        if status == 401 {
            if run == 0 {
                run_start = Some(sent);
            }
            p.first_401.get_or_insert(sent - acked);
            run += 1;
            if run >= RUN + CONFIRM {
                p.latency = run_start.map(|s| s - acked);
                break;
            }
        } else {
            if run >= RUN {
                p.flip_backs += 1;
                eprintln!("  key {i}: {status} after {run} 401s in a row");
            }
            if status != 200 {
                p.other += 1;
            }
            run = 0;
        }
        std::thread::sleep(PROBE_GAP);
    }
    p
}

/// Picks keys never used before from `0..n`, skipping `reserved`.
struct Picks {
    state: u64,
    n: usize,
    used: BTreeSet<usize>,
}

impl Picks {
    fn new(n: usize, reserved: &[usize]) -> Picks {
        Picks {
            state: 0x9e37_79b9_7f4a_7c15 ^ n as u64,
            n,
            used: reserved.iter().copied().collect(),
        }
    }

    fn next(&mut self) -> usize {
        assert!(self.used.len() < self.n, "every key has been used");
        loop {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let i = (self.state % self.n as u64) as usize;
            if self.used.insert(i) {
                return i;
            }
        }
    }
}

/// One side of the comparison: an Envoy, its own key service, and what its rounds saw.
struct Side<'a> {
    name: &'static str,
    envoy: &'a Envoy,
    service: &'a Served,
    rounds: Vec<Probe>,
}

fn round(side: &mut Side, picks: &mut Picks, admin: &str, limit: Duration) -> bool {
    let i = (0..5)
        .map(|_| picks.next())
        .find(|&i| status_of(side.envoy, i) == 200)
        .unwrap_or_else(|| panic!("{}: five keys in a row did not answer 200", side.name));
    let acked = revoke(side.service.addr, admin, i);
    let p = probe(side.envoy, i, acked, limit);
    let ms = |d: Option<Duration>| d.map_or("—".into(), |d| format!("{:.1} ms", ms_of(d)));
    eprintln!(
        "  {} round {}: key {i} refused after {} (first 401 after {}), {} requests{}{}",
        side.name,
        side.rounds.len() + 1,
        ms(p.latency),
        ms(p.first_401),
        p.requests,
        if p.flip_backs > 0 {
            format!(", {} 200s after 8+ 401s", p.flip_backs)
        } else {
            String::new()
        },
        if p.other > 0 {
            format!(", {} other answers", p.other)
        } else {
            String::new()
        },
    );
    let ok = p.latency.is_some();
    side.rounds.push(p);
    ok
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-quantile of `sorted` (nearest rank).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

fn latency_cells(keys: usize, mode: &str, rounds: &[Probe]) -> Vec<String> {
    let lat = sorted(rounds.iter().filter_map(|p| p.latency.map(ms_of)).collect());
    let first = sorted(
        rounds
            .iter()
            .filter_map(|p| p.first_401.map(ms_of))
            .collect(),
    );
    let f = |v: f64| {
        if v.is_nan() {
            "—".into()
        } else if v >= 1000.0 {
            format!("{:.2} s", v / 1000.0)
        } else {
            format!("{v:.1} ms")
        }
    };
    vec![
        thousands(keys),
        mode.to_string(),
        format!(
            "{}{}",
            lat.len(),
            if lat.len() < rounds.len() {
                format!(" (+{} not seen)", rounds.len() - lat.len())
            } else {
                String::new()
            }
        ),
        f(quantile(&lat, 0.5)),
        f(quantile(&lat, 0.99)),
        f(lat.last().copied().unwrap_or(f64::NAN)),
        f(quantile(&first, 0.5)),
        rounds
            .iter()
            .map(|p| p.flip_backs)
            .sum::<usize>()
            .to_string(),
        rounds.iter().map(|p| p.other).sum::<usize>().to_string(),
        rounds.iter().map(|p| p.requests).sum::<usize>().to_string(),
    ]
}

// ---------------------------------------------------------------------------------------
// 2. One changed key

struct Change {
    keys: usize,
    mode: &'static str,
    /// The body the key service answers for the change (delta or full document).
    body_bytes: usize,
    rx_bytes: u64,
    latency: Option<Duration>,
    applied_in: Duration,
    /// The steady loop before the revoke, and from the revoke on.
    before: Steady,
    steady: Steady,
    /// Busiest thread: name, ms; median of the other workers, ms.
    busiest: (String, f64),
    others_ms: f64,
    main_ms: f64,
}

/// What the steady request loop saw over a stretch of time.
struct Steady {
    sent: usize,
    failed: usize,
    p99_ms: f64,
    slowest_ms: f64,
    over_50ms: usize,
}

impl std::fmt::Display for Steady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}, p99 {:.1} ms, slowest {:.1} ms, {} over 50 ms",
            self.sent,
            if self.failed == 0 {
                "all 200".to_string()
            } else {
                format!("{} not 200", self.failed)
            },
            self.p99_ms,
            self.slowest_ms,
            self.over_50ms
        )
    }
}

fn one_change(
    side: &Side,
    keys: usize,
    picks: &mut Picks,
    steady_key: usize,
    admin: &str,
    polling: bool,
    limit: Duration,
) -> Change {
    let envoy = side.envoy;
    let i = (0..5)
        .map(|_| picks.next())
        .find(|&i| status_of(envoy, i) == 200)
        .unwrap();
    let (version, epoch) = feed_position(side.service.addr);
    let pid = envoy.pid();
    let fetches = keygate_stat(&stats(envoy, "keygate"), "fetch.ok");
    let rx = rx_bytes(envoy);
    let cpu = thread_ticks(pid);
    let listener = envoy.listener;
    let steady = Background::start(move |stop: &AtomicBool| {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let answer = try_request(
                listener,
                &Request::get("/data/x").bearer(&bench_key(steady_key)),
            );
            let ok = matches!(answer, Ok(ref r) if r.status == 200);
            answers.push((asked, asked.elapsed(), ok));
            std::thread::sleep(PROBE_GAP);
        }
        answers
    });
    // The same loop before the change, for comparison.
    std::thread::sleep(STEADY_BEFORE);
    let acked = revoke(side.service.addr, admin, i);
    let p = probe(envoy, i, acked, limit);
    // Applied: the fetch that carried the change has completed.
    while keygate_stat(&stats(envoy, "keygate"), "fetch.ok") <= fetches && acked.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied_in = acked.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let answers = steady.stop();
    let summary = |during: bool| {
        let picked: Vec<&(Instant, Duration, bool)> = answers
            .iter()
            .filter(|a| (a.0 >= acked) == during)
            .collect();
        let times = sorted(picked.iter().map(|a| ms_of(a.1)).collect());
        Steady {
            sent: picked.len(),
            failed: picked.iter().filter(|a| !a.2).count(),
            p99_ms: quantile(&times, 0.99),
            slowest_ms: times.last().copied().unwrap_or(f64::NAN),
            over_50ms: times.iter().filter(|&&t| t > 50.0).count(),
        }
    };
    let (before, steady) = (summary(false), summary(true));
    let rx = rx_bytes(envoy).saturating_sub(rx);
    let after = thread_ticks(pid);
    let ticks_ms = 1000.0 / ticks_per_second();
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, t))| {
            let before = cpu.get(tid).map_or(0, |(_, b)| *b);
            let label = if *tid == pid {
                "main thread".to_string()
            } else {
                name.clone()
            };
            (label, t.saturating_sub(before) as f64 * ticks_ms)
        })
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let main_ms = spent
        .iter()
        .find(|(n, _)| n == "main thread")
        .map_or(0.0, |t| t.1);
    let workers: Vec<&(String, f64)> = spent
        .iter()
        .filter(|(n, _)| n.starts_with("wrk:"))
        .collect();
    let busiest = spent
        .iter()
        .find(|(n, _)| n.starts_with("wrk:") || n == "main thread")
        .cloned()
        .unwrap_or_default();
    let others = sorted(
        workers
            .iter()
            .filter(|(n, _)| *n != busiest.0)
            .map(|(_, ms)| *ms)
            .collect(),
    );
    let body_bytes = if polling {
        keyset_bytes(side.service.addr, "")
    } else {
        keyset_bytes(
            side.service.addr,
            &format!("?since={version}&epoch={epoch}"),
        )
    };
    eprintln!(
        "  {} one change: body {body_bytes} B, Envoy received {rx} B, refused after {:?}, \
         applied after {:.0} ms; steady before {before}; during {steady}; thread CPU {:?}",
        side.name,
        p.latency,
        ms_of(applied_in),
        spent
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0} ms"))
            .collect::<Vec<_>>()
    );
    Change {
        keys,
        mode: side.name,
        body_bytes,
        rx_bytes: rx,
        latency: p.latency,
        applied_in,
        before,
        steady,
        busiest,
        others_ms: quantile(&others, 0.5),
        main_ms,
    }
}

// ---------------------------------------------------------------------------------------
// 3. Envoy's memory under churn

struct Churn {
    native: bool,
    keys: usize,
    workers: u32,
    load_time: Duration,
    loaded_kib: u64,
    after_sets: Vec<u64>,
    /// Envoy's heap in use after each set (bytes; [`keygate_tools::envoy_heap`]).
    heap_after_sets: Vec<u64>,
    apply_times: Vec<Duration>,
    hwm_kib: u64,
}

fn churn(
    native: bool,
    upstream: &Upstream,
    dir: &TempDir,
    n: usize,
    workers: u32,
    o: &Options,
) -> Churn {
    let file = dir.join(&format!("churn-{n}.json"));
    replace_file(&file, &key_file(&format!("full-{n}"), 0..n));
    let full_bytes = std::fs::metadata(&file).unwrap().len() as usize;
    let service = serve(&["--keys", file.to_str().unwrap()]);
    eprintln!(
        "\n== memory{}: {n} keys from a key file, {workers} worker(s), then {} sets of {}",
        if native { " (native)" } else { "" },
        o.churn_sets,
        o.churn_keys
    );
    let (envoy, load_time) = start_envoy(
        native,
        &key_set_config(o.watch_seconds, o.refresh_seconds),
        upstream,
        service.addr,
        full_bytes,
        workers,
        n,
        o.load_limit,
    );
    // Past the layout settling and any clearing.
    std::thread::sleep(Duration::from_secs(2));
    let pid = envoy.pid();
    let loaded_kib = rss_kib(pid).unwrap();
    eprintln!(
        "  loaded in {:.1} s: RSS {} MiB",
        load_time.as_secs_f64(),
        loaded_kib / 1024
    );
    let mut after_sets = Vec::new();
    let mut heap_after_sets = Vec::new();
    let mut apply_times = Vec::new();
    for set in 0..o.churn_sets {
        let first = n + set * o.churn_keys;
        let fetches = keygate_stat(&stats(&envoy, "keygate"), "fetch.ok");
        let published = Instant::now();
        replace_file(
            &file,
            &key_file(&format!("churn-{set}"), first..first + o.churn_keys),
        );
        await_keys(&envoy, o.churn_keys, fetches, o.load_limit);
        apply_times.push(published.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(status_of(&envoy, first), 200, "a key of churn set {set}");
        assert_eq!(
            status_of(&envoy, first - 1),
            401,
            "a key before churn set {set}"
        );
        let rss = rss_kib(pid).unwrap();
        let (heap, kept) = keygate_tools::envoy_heap(&envoy).unwrap_or_default();
        eprintln!(
            "  set {}: in force after {:.1} s, RSS {} MiB, heap in use {} MiB, freed but kept {} MiB",
            set + 1,
            published.elapsed().as_secs_f64() - 2.0,
            rss / 1024,
            heap >> 20,
            kept >> 20
        );
        after_sets.push(rss);
        heap_after_sets.push(heap);
    }
    let hwm_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    let failed = keygate_stat(&stats(&envoy, "keygate"), "fetch.failed");
    if failed > 0 {
        eprintln!("  keygate.fetch.failed = {failed}");
    }
    Churn {
        native,
        keys: n,
        workers,
        load_time,
        loaded_kib,
        after_sets,
        heap_after_sets,
        apply_times,
        hwm_kib,
    }
}

// ---------------------------------------------------------------------------------------
// 4. The key service under long-polls

struct LongPolls {
    held: usize,
    open_time: Duration,
    rss_before_kib: u64,
    rss_held_kib: u64,
    cpu_open_s: f64,
    cpu_window_s: f64,
    window: Duration,
    early: BTreeMap<String, usize>,
}

fn long_polls(service: &Served, count: usize, seconds: u64) -> LongPolls {
    let (version, epoch) = feed_position(service.addr);
    let pid = service.pid();
    let ticks = ticks_per_second();
    let rss_before_kib = rss_kib(pid).unwrap();
    let cpu0 = cpu_ticks(pid);
    let started = Instant::now();
    let request = format!(
        "GET /v1/keyset?since={version}&epoch={epoch}&wait=60 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    );
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = TcpStream::connect(service.addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        sockets.push(s);
    }
    // Accepted and parked.
    std::thread::sleep(Duration::from_secs(1));
    let open_time = started.elapsed();
    let cpu1 = cpu_ticks(pid);
    let window_start = Instant::now();
    let mut rss_held_kib = 0;
    while window_start.elapsed() < Duration::from_secs(seconds) {
        rss_held_kib = rss_held_kib.max(rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu2 = cpu_ticks(pid);
    let window = window_start.elapsed();
    rss_held_kib = rss_held_kib.max(rss_kib(pid).unwrap_or(0));
    // Any answer already sent: they should all still be held.
    let mut early = BTreeMap::new();
    for s in &mut sockets {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => *early.entry("closed".to_string()).or_insert(0) += 1,
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let status = line.split_whitespace().nth(1).unwrap_or("?").to_string();
                *early.entry(status).or_insert(0) += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => *early.entry(e.kind().to_string()).or_insert(0) += 1,
        }
    }
    drop(sockets);
    let row = LongPolls {
        held: count,
        open_time,
        rss_before_kib,
        rss_held_kib,
        cpu_open_s: (cpu1 - cpu0) as f64 / ticks,
        cpu_window_s: (cpu2 - cpu1) as f64 / ticks,
        window,
        early,
    };
    eprintln!(
        "  {count} long-polls: opened in {:.1} s (server CPU {:.2} s), RSS {} → {} MiB, CPU {:.2} s over {:.0} s, answered early {:?}",
        open_time.as_secs_f64(),
        row.cpu_open_s,
        rss_before_kib / 1024,
        rss_held_kib / 1024,
        row.cpu_window_s,
        window.as_secs_f64(),
        row.early
    );
    // Let the server see the sockets go.
    std::thread::sleep(Duration::from_secs(2));
    row
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it).
fn raise_open_files() -> Option<u64> {
    let pid = std::process::id().to_string();
    let hard = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
            "--raw",
        ])
        .output()
        .ok()?;
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    hard.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Tables

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / 1048576.0)
    } else if n >= 10 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("\n| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    let o = options();
    keygate_tools::cleanup::install("bench-revocation");
    let total = Instant::now();
    let open_files = raise_open_files();
    eprintln!(
        "bench-revocation: keys {:?}, keygate = {}, open-file limit {open_files:?}",
        o.keys,
        keygate_binary().display()
    );
    let upstream = Upstream::start();
    let mut latency_rows = Vec::new();
    let mut changes = Vec::new();
    let mut envoy_rss: Vec<Vec<String>> = Vec::new();
    let mut churns = Vec::new();
    let mut polls = Vec::new();
    let mut missed = 0;
    let watch_mode: &'static str = String::leak(format!("watch ({} s)", o.watch_seconds));
    let poll_mode: &'static str = String::leak(format!("polling ({} s)", o.refresh_seconds));
    let native_watch_mode: &'static str =
        String::leak(format!("watch ({} s), native", o.watch_seconds));

    for (size_index, &n) in o.keys.iter().enumerate() {
        let dir = TempDir::new("bench-revocation");
        let needs_db = !o.skip.contains("latency")
            || !o.skip.contains("change")
            || (size_index == 0 && !o.skip.contains("long-polls"));
        if needs_db {
            let made = Instant::now();
            let keys_json = dir.join("keys.json");
            std::fs::write(&keys_json, key_file("1", 0..n)).unwrap();
            let db_w = dir.join("watch.db");
            let db_p = dir.join("poll.db");
            keygate(&[
                "import",
                "--keys",
                keys_json.to_str().unwrap(),
                "--db",
                db_w.to_str().unwrap(),
            ]);
            std::fs::remove_file(&keys_json).unwrap();
            let admin: Value = serde_json::from_str(&keygate(&[
                "admin",
                "new",
                "--db",
                db_w.to_str().unwrap(),
                "--label",
                "bench",
            ]))
            .unwrap();
            let admin = admin["admin_key"].as_str().unwrap().to_string();
            copy_db(&db_w, &db_p);
            let db_n = dir.join("native.db");
            copy_db(&db_w, &db_n);
            eprintln!(
                "\n== {n} keys: databases ready in {:.1} s",
                made.elapsed().as_secs_f64()
            );

            if !o.skip.contains("latency") || !o.skip.contains("change") {
                // One Envoy per side, each on its own copy of the database: the wasm
                // filter watching and polling, the native build watching.
                struct Plan {
                    name: &'static str,
                    native: bool,
                    watch_seconds: u32,
                    db: std::path::PathBuf,
                    rounds: usize,
                }
                let mut plans = Vec::new();
                if o.wasm {
                    plans.push(Plan {
                        name: watch_mode,
                        native: false,
                        watch_seconds: o.watch_seconds,
                        db: db_w.clone(),
                        rounds: o.revocations,
                    });
                    plans.push(Plan {
                        name: poll_mode,
                        native: false,
                        watch_seconds: 0,
                        db: db_p.clone(),
                        rounds: o.poll_revocations,
                    });
                }
                if o.native {
                    plans.push(Plan {
                        name: native_watch_mode,
                        native: true,
                        watch_seconds: o.watch_seconds,
                        db: db_n.clone(),
                        rounds: o.revocations,
                    });
                }
                let services: Vec<Tracked<Served>> = plans
                    .iter()
                    .map(|p| serve(&["--db", p.db.to_str().unwrap()]))
                    .collect();
                let full_bytes = services
                    .iter()
                    .map(|s| keyset_bytes(s.addr, ""))
                    .max()
                    .unwrap_or(0);
                eprintln!("full /v1/keyset: {} bytes", full_bytes);
                let mut envoys = Vec::new();
                for (plan, service) in plans.iter().zip(&services) {
                    let (envoy, load) = start_envoy(
                        plan.native,
                        &key_set_config(plan.watch_seconds, o.refresh_seconds),
                        &upstream,
                        service.addr,
                        full_bytes,
                        WORKERS,
                        n,
                        o.load_limit,
                    );
                    let rss = rss_kib(envoy.pid()).unwrap();
                    eprintln!(
                        "loaded: {} Envoy in {:.1} s (RSS {} MiB)",
                        plan.name,
                        load.as_secs_f64(),
                        rss / 1024
                    );
                    envoy_rss.push(vec![
                        thousands(n),
                        format!("{}, db", plan.name),
                        WORKERS.to_string(),
                        format!("{:.1} s", load.as_secs_f64()),
                        mib(rss),
                    ]);
                    envoys.push(envoy);
                }
                let steady_key = n - 1;
                let mut picks = Picks::new(n, &[steady_key]);
                let mut sides: Vec<Side> = plans
                    .iter()
                    .zip(&services)
                    .zip(&envoys)
                    .map(|((plan, service), envoy)| Side {
                        name: plan.name,
                        envoy,
                        service,
                        rounds: Vec::new(),
                    })
                    .collect();
                let limit = o.load_limit;
                if !o.skip.contains("latency") {
                    eprintln!(
                        "revocations: {} per watching Envoy, {} polling, interleaved",
                        o.revocations, o.poll_revocations
                    );
                    let most = plans.iter().map(|p| p.rounds).max().unwrap_or(0);
                    for r in 0..most {
                        for (plan, side) in plans.iter().zip(&mut sides) {
                            if r < plan.rounds && !round(side, &mut picks, &admin, limit) {
                                missed += 1;
                            }
                        }
                    }
                    for side in &sides {
                        latency_rows.push(latency_cells(n, side.name, &side.rounds));
                    }
                }
                if !o.skip.contains("change") {
                    for (plan, side) in plans.iter().zip(&sides) {
                        changes.push(one_change(
                            side,
                            n,
                            &mut picks,
                            steady_key,
                            &admin,
                            plan.watch_seconds == 0,
                            limit,
                        ));
                    }
                }
                for (plan, envoy) in plans.iter().zip(&envoys) {
                    let s = stats(envoy, "keygate");
                    eprintln!(
                        "{}: fetch.ok {}, not_modified {}, failed {}; RSS {} MiB, peak {} MiB",
                        plan.name,
                        keygate_stat(&s, "fetch.ok"),
                        keygate_stat(&s, "fetch.not_modified"),
                        keygate_stat(&s, "fetch.failed"),
                        rss_kib(envoy.pid()).unwrap_or(0) / 1024,
                        status_kib(envoy.pid(), "VmHWM").unwrap_or(0) / 1024
                    );
                }
            }
            if size_index == 0 && !o.skip.contains("long-polls") {
                eprintln!("\n== the key service (--db, {n} keys) under long-polls");
                let service = serve(&["--db", db_w.to_str().unwrap()]);
                for &count in &o.long_polls {
                    polls.push(long_polls(&service, count, o.long_poll_seconds));
                }
            }
        }
        if !o.skip.contains("memory") {
            for native in [false, true] {
                if (native && !o.native) || (!native && !o.wasm) {
                    continue;
                }
                for workers in [1, WORKERS] {
                    churns.push(churn(native, &upstream, &dir, n, workers, &o));
                }
            }
        }
    }

    eprintln!("\ndone in {:.0} s", total.elapsed().as_secs_f64());
    if !latency_rows.is_empty() {
        println!("\n### Revocation latency ({WORKERS} workers)");
        table(
            &[
                "keys",
                "mode",
                "revocations",
                "p50",
                "p99",
                "max",
                "first 401, p50",
                "200 after ≥ 8 × 401",
                "other answers",
                "requests sent",
            ],
            &latency_rows,
        );
        println!(
            "\nFrom the admin API's 200 to the DELETE to the first of {RUN} + {CONFIRM} \
             consecutive 401s, each request on a new connection (about one per ms). p99 is \
             the nearest rank: with 50 rounds or fewer, the largest."
        );
    }
    if !changes.is_empty() {
        println!("\n### One changed key ({WORKERS} workers)");
        table(
            &[
                "keys",
                "mode",
                "body answered",
                "Envoy received",
                "refused after",
                "fetch done after",
                "steady requests meanwhile",
                "the same before the revoke",
                "busiest thread CPU",
                "other workers (median) / main",
            ],
            &changes
                .iter()
                .map(|c| {
                    vec![
                        thousands(c.keys),
                        c.mode.to_string(),
                        bytes(c.body_bytes as u64),
                        bytes(c.rx_bytes),
                        c.latency
                            .map_or("—".into(), |d| format!("{:.1} ms", ms_of(d))),
                        format!("{:.0} ms", ms_of(c.applied_in)),
                        c.steady.to_string(),
                        c.before.to_string(),
                        format!("{:.0} ms ({})", c.busiest.1, c.busiest.0),
                        format!("{:.0} ms / {:.0} ms", c.others_ms, c.main_ms),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    if !envoy_rss.is_empty() || !churns.is_empty() {
        println!("\n### Envoy's RSS with the set in force");
        let mut rows = envoy_rss.clone();
        for c in &churns {
            rows.push(vec![
                thousands(c.keys),
                format!(
                    "{}, file",
                    if c.native {
                        native_watch_mode
                    } else {
                        watch_mode
                    }
                ),
                c.workers.to_string(),
                format!("{:.1} s", c.load_time.as_secs_f64()),
                mib(c.loaded_kib),
            ]);
        }
        table(
            &[
                "keys",
                "mode, key service",
                "workers",
                "load time",
                "RSS loaded",
            ],
            &rows,
        );
    }
    if !churns.is_empty() {
        println!(
            "\n### Churn: {} sets of {} new keys, each replacing the whole set",
            o.churn_sets,
            thousands(o.churn_keys)
        );
        table(
            &[
                "from",
                "build",
                "workers",
                "RSS loaded",
                "after set 1",
                "after each set",
                "after the last",
                "growth from set 1",
                "Envoy heap in use after each set (MiB)",
                "peak (VmHWM)",
                "each set in force after",
            ],
            &churns
                .iter()
                .map(|c| {
                    let first = c.after_sets.first().copied().unwrap_or(0);
                    let last = c.after_sets.last().copied().unwrap_or(0);
                    vec![
                        thousands(c.keys),
                        if c.native { "native" } else { "wasm" }.to_string(),
                        c.workers.to_string(),
                        mib(c.loaded_kib),
                        mib(first),
                        c.after_sets
                            .iter()
                            .map(|k| (k / 1024).to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        mib(last),
                        format!(
                            "{:+.0} MiB ({:+.1} %)",
                            (last as f64 - first as f64) / 1024.0,
                            (last as f64 - first as f64) * 100.0 / first.max(1) as f64
                        ),
                        c.heap_after_sets
                            .iter()
                            .map(|b| (b >> 20).to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        mib(c.hwm_kib),
                        {
                            let t = sorted(c.apply_times.iter().map(|d| d.as_secs_f64()).collect());
                            format!(
                                "{:.1}–{:.1} s",
                                t.first().copied().unwrap_or(0.0),
                                t.last().copied().unwrap_or(0.0)
                            )
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    if !polls.is_empty() {
        println!(
            "\n### The key service (`keygate serve --db`, {} keys) under long-polls",
            thousands(o.keys[0])
        );
        table(
            &[
                "long-polls held",
                "opened in",
                "server CPU opening them",
                "RSS before",
                "RSS while held (max)",
                "server CPU while held",
                "of one core",
                "answered early",
            ],
            &polls
                .iter()
                .map(|p| {
                    vec![
                        thousands(p.held),
                        format!("{:.1} s", p.open_time.as_secs_f64()),
                        format!("{:.2} s", p.cpu_open_s),
                        mib(p.rss_before_kib),
                        mib(p.rss_held_kib),
                        format!(
                            "{:.2} s over {:.0} s",
                            p.cpu_window_s,
                            p.window.as_secs_f64()
                        ),
                        format!("{:.1} %", p.cpu_window_s * 100.0 / p.window.as_secs_f64()),
                        if p.early.is_empty() {
                            "none".into()
                        } else {
                            format!("{:?}", p.early)
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    if missed > 0 {
        eprintln!("{missed} revocation(s) not seen within {:?}", o.load_limit);
        std::process::exit(1);
    }
}
