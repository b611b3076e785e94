//! `make bench-memory`: Envoy's memory and its calls to the key service with a large key
//! set, at one worker and at four (GitHub issue #3; the results are in BENCHMARKS.md).
//!
//! For each case it starts a real Envoy with keygate on 127.0.0.1 and reads the Envoy
//! process's `/proc/<pid>/status`: VmRSS once Envoy is ready, once the key set is loaded
//! (`keygate.keys_loaded` equals the set's size), and after authorized requests with
//! random keys of the set (every one must answer 200); VmHWM is the peak. `smaps` gives
//! the part that is the wasm VMs' linear memory.
//!
//! In `key_set` mode the set comes from the real `keygate serve` (`KEYGATE_BIN`, the release build under `make bench-memory`),
//! polled every 2 s (`watch_seconds` 0, as a plain file server is); the fetches Envoy makes (`keygate.fetch.ok`, `.not_modified`) are
//! counted over a fixed window; then the served set changes twice while requests keep
//! coming. A set larger than Envoy lets a filter's call receive by default (32 MiB) is run
//! as Envoy comes, then with that limit raised. The same sets are also tried inline in the
//! plugin configuration, where every VM parses and holds its own copy.
//!
//! keygate's native build (`KEYGATE_NATIVE`, `make native`; README "Native build (Envoy
//! dynamic module)") runs the same `key_set` cases with Envoy's limit as it comes (it reads
//! the set as it streams in, so the limit does not apply), beside a baseline of its own (one
//! inline key); it holds the set once per process in native memory, with no VM. Every case's RSS is also given above Envoy with no
//! filter at the same worker count (the native build's goal, BENCHMARKS.md).
//!
//! Options: `--keys 100000,1000000` (key_set sizes), `--inline 100000,1000000`,
//! `--workers 1,4`, `--builds wasm,native`, `--requests 200`, `--window 10` (seconds),
//! `--load-limit 150` (seconds), `--log-level info` (Envoy's), `--release-mib N` (Envoy's
//! allocator gives up to N MiB of freed memory back to the system each second:
//! `memory_allocator_manager`; by default it keeps it). Prints Markdown; exits 1 if a request was refused or a set
//! within Envoy's limits did not load. The Envoy log of a case whose set did not load is
//! kept under `target/bench-memory/`.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{
    bench_key, bench_records_json, bootstrap, bootstrap_with_key_service, try_request, Build,
    Envoy, EnvoyOptions, Request, Served, TempDir, Upstream,
};

const REFRESH_SECONDS: u32 = 2;
/// Envoy's default for the body of a response to a filter's call (its async HTTP client,
/// runtime key `http.async_response_buffer_limit`): a larger answer is reset.
const ENVOY_ASYNC_RESPONSE_LIMIT: usize = 32 * 1024 * 1024;
/// How many times a fetched set changes in each case: each rewrites every bucket in place.
const CHANGES: usize = 2;
/// Failed fetches, with nothing loaded, after which a case stops waiting.
const GIVE_UP_AFTER_FAILURES: u64 = 3;
/// The largest fetch timeout the configuration accepts: a million-key body takes a while.
const FETCH_TIMEOUT_MS: u32 = 60_000;

struct Options {
    key_set: Vec<usize>,
    inline: Vec<usize>,
    workers: Vec<u32>,
    /// Which builds to run: the wasm filter, the native module.
    wasm: bool,
    native: bool,
    requests: usize,
    window: Duration,
    load_limit: Duration,
    log_level: &'static str,
    /// Envoy's `memory_allocator_manager.bytes_to_release` (MiB a second), when given.
    release_mib: Option<u64>,
}

fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Vec<T> {
    value
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag}: {v:?} is not a number"))
        })
        .collect()
}

fn options() -> Options {
    let mut options = Options {
        key_set: vec![100_000, 1_000_000],
        inline: vec![100_000, 1_000_000],
        workers: vec![1, 4],
        wasm: true,
        native: true,
        requests: 200,
        window: Duration::from_secs(10),
        load_limit: Duration::from_secs(150),
        log_level: "info",
        release_mib: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (flag, value) = (&pair[0], pair.get(1).map_or("", String::as_str));
        match flag.as_str() {
            "--keys" => options.key_set = list(flag, value),
            "--inline" => options.inline = list(flag, value),
            "--workers" => options.workers = list(flag, value),
            "--builds" => {
                let builds = Build::parse_list(value).unwrap_or_else(|e| panic!("--builds: {e}"));
                options.wasm = builds.contains(&Build::Wasm);
                options.native = builds.contains(&Build::Native);
            }
            "--requests" => options.requests = list(flag, value).first().copied().unwrap_or(0),
            "--window" => {
                options.window =
                    Duration::from_secs(list(flag, value).first().copied().unwrap_or(0))
            }
            "--load-limit" => {
                options.load_limit =
                    Duration::from_secs(list(flag, value).first().copied().unwrap_or(0))
            }
            "--log-level" => options.log_level = String::leak(value.to_string()),
            "--release-mib" => options.release_mib = list(flag, value).first().copied(),
            other => panic!(
                "unknown option {other:?}: use --keys, --inline, --workers, --builds, \
                 --requests, --window, --load-limit, --log-level, --release-mib"
            ),
        }
    }
    options
}

// ---------------------------------------------------------------------------------------
// Keys

/// A small xorshift: which keys the requests use. Reproducible, and no dependency.
struct Picks(u64);

impl Picks {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn rules() -> Value {
    json!([{"path_prefix": "/data", "scopes": ["browse"]}])
}

// ---------------------------------------------------------------------------------------
// The key service: the real `keygate serve`

// ---------------------------------------------------------------------------------------
// Envoy's memory

#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    /// Of `rss_kib`, the wasm VMs' linear memories; how many VMs; the largest one's.
    wasm_kib: u64,
    vms: usize,
    largest_vm_kib: u64,
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {} (wasm memory {} in {} VMs, largest {})",
            mib(self.rss_kib),
            mib(self.wasm_kib),
            self.vms,
            mib(self.largest_vm_kib)
        )
    }
}

fn mem(pid: u32) -> Option<Mem> {
    let field = |name: &str| support::process::status_kib(pid, name);
    let per_vm = wasm_memory(pid).unwrap_or_default();
    Some(Mem {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        wasm_kib: per_vm.iter().sum(),
        vms: per_vm.len(),
        largest_vm_kib: per_vm.iter().copied().max().unwrap_or(0),
    })
}

/// The resident part of every wasm VM's linear memory, and how many VMs there are. V8
/// reserves each wasm memory as one range of several GiB (with its guard region) and makes
/// the part in use accessible, so the range shows in `smaps` as a read-write mapping
/// followed by an inaccessible one of GiBs; nothing else in Envoy maps that much.
fn wasm_memory(pid: u32) -> Option<Vec<u64>> {
    const GUARDED_KIB: u64 = 4 * 1024 * 1024;
    struct Mapping {
        start: u64,
        end: u64,
        writable: bool,
        size_kib: u64,
        rss_kib: u64,
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                let perms = words.next().unwrap_or("");
                maps.push(Mapping {
                    start,
                    end,
                    writable: perms.starts_with("rw"),
                    size_kib: 0,
                    rss_kib: 0,
                });
                continue;
            }
        }
        let (Some(last), Some(kib)) = (maps.last_mut(), words.next()) else {
            continue;
        };
        match first {
            "Size:" => last.size_kib = kib.parse().ok()?,
            "Rss:" => last.rss_kib = kib.parse().ok()?,
            _ => {}
        }
    }
    let mut per_vm = Vec::new();
    for (i, map) in maps.iter().enumerate() {
        if map.writable || map.size_kib < GUARDED_KIB {
            continue;
        }
        // The accessible part of the same reservation, just below it.
        let used = i
            .checked_sub(1)
            .map(|j| &maps[j])
            .filter(|used| used.writable && used.end == map.start);
        per_vm.push(used.map_or(0, |used| used.rss_kib));
    }
    Some(per_vm)
}

fn stats(envoy: &Envoy) -> Option<BTreeMap<String, u64>> {
    envoy.try_stats("keygate")
}

use support::keygate_stat_in as stat;

/// The lines of Envoy's log that say what keygate or Envoy thought went wrong or right.
fn telling_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("keygate")
                || l.contains("[error]")
                || l.contains("[critical]")
                || l.contains("[warning]")
        })
        .map(str::to_string)
        .collect()
}

/// Which thread's VM logged each "key set loaded": Envoy puts the thread id in every log
/// line, the main thread's is the pid, and workers are named `wrk:worker_N`.
fn parsed_on(log: &str, pid: u32) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("key set loaded from cluster"))
        .filter_map(|line| {
            let tid = line.split(']').nth(1)?.trim_start_matches('[');
            let tid: u32 = tid.parse().ok()?;
            if tid == pid {
                return Some("main thread".to_string());
            }
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok();
            Some(name.map_or(format!("thread {tid}"), |n| n.trim().to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// One case

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    KeySet,
    Inline,
    /// Envoy with no keygate filter: the baseline.
    NoFilter,
}

#[derive(Default)]
struct Row {
    mode: String,
    /// Whether this case must work: a set that Envoy's response limit allows.
    must_load: bool,
    keys: usize,
    workers: u32,
    /// Loaded RSS less the no-filter Envoy's at the same worker count (KiB, signed).
    above_baseline_kib: Option<i64>,
    /// Envoy's heap once loaded (its allocator, tcmalloc, which the native module's
    /// allocations go to as well): bytes in use, and bytes freed but kept.
    heap: Option<(u64, u64)>,
    ready: Option<Mem>,
    loaded: Option<Mem>,
    after_requests: Option<Mem>,
    /// `key_set`: after the fetch window (`--window`), before the set changes.
    settled: Option<Mem>,
    peak_kib: Option<u64>,
    load_time: Option<Duration>,
    /// `fetch.ok` and `fetch.not_modified` over the window.
    fetches: Option<(u64, u64)>,
    /// Each time the key service's set changed and Envoy loaded it: memory; the longest it
    /// took; the requests sent meanwhile (sent, not 200, slowest).
    changed: Vec<Mem>,
    change_time: Option<Duration>,
    during_change: Option<(usize, usize, Duration)>,
    failed_requests: usize,
    /// The Envoy threads whose VM parsed each fetched set, in order.
    parsed_on: Vec<String>,
    /// The longest an admin request waited while the set loaded.
    slowest_admin: Option<Duration>,
    problem: Option<String>,
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

impl Row {
    fn cells(&self) -> Vec<String> {
        let m = |mem: Option<Mem>| mem.map_or("—".into(), |m| mib(m.rss_kib));
        vec![
            self.mode.to_string(),
            self.keys.to_string(),
            self.workers.to_string(),
            m(self.ready),
            m(self.loaded),
            self.above_baseline_kib
                .map_or("—".into(), |k| format!("{:+.0} MiB", k as f64 / 1024.0)),
            self.heap.map_or("—".into(), |(used, free)| {
                format!("{} in use, {} free", mib(used >> 10), mib(free >> 10))
            }),
            m(self.after_requests),
            m(self.settled),
            self.after_requests
                .filter(|m| m.vms > 0)
                .map_or("—".into(), |m| {
                    format!(
                        "{} in {} VMs, largest {}",
                        mib(m.wasm_kib),
                        m.vms,
                        mib(m.largest_vm_kib)
                    )
                }),
            self.peak_kib.map_or("—".into(), mib),
            self.load_time
                .map_or("—".into(), |t| format!("{:.1} s", t.as_secs_f64())),
            match (self.mode.starts_with("key_set"), self.slowest_admin) {
                (true, Some(t)) => format!("{:.2} s", t.as_secs_f64()),
                _ => "—".into(),
            },
            self.fetches.map_or("—".into(), |(ok, not_modified)| {
                format!("{ok} + {not_modified}")
            }),
            if self.parsed_on.is_empty() {
                "—".into()
            } else {
                let mut names = self.parsed_on.clone();
                names.dedup();
                names.join(", ")
            },
            if self.changed.is_empty() {
                "—".into()
            } else {
                self.changed
                    .iter()
                    .map(|m| mib(m.rss_kib))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.change_time
                .map_or("—".into(), |t| format!("{:.1} s", t.as_secs_f64())),
            self.during_change
                .map_or("—".into(), |(sent, failed, slowest)| {
                    format!(
                        "{sent}, {failed} not 200, slowest {:.0} ms",
                        slowest.as_secs_f64() * 1000.0
                    )
                }),
        ]
    }
}

struct Case<'a> {
    mode: Mode,
    /// keygate's native build in place of the wasm filter.
    native: bool,
    /// `http.async_response_buffer_limit` set in Envoy's runtime, when not Envoy's default.
    response_limit: Option<usize>,
    /// The size of the key-set document, in `key_set` mode.
    body_len: usize,
    keys: usize,
    workers: u32,
    upstream: &'a Upstream,
    /// `key_set`: where `keygate serve` listens, the file it serves and the records in it
    /// (to write a changed set). Inline: the records.
    key_service: Option<SocketAddr>,
    key_file: Option<(&'a Path, &'a str)>,
    records: Option<&'a Value>,
}

fn run(case: &Case, options: &Options) -> Row {
    let mut row = Row {
        mode: match (case.mode, case.response_limit) {
            (Mode::KeySet, None) => "key_set".into(),
            (Mode::KeySet, Some(limit)) => format!(
                "key_set, `http.async_response_buffer_limit` {} MiB",
                limit >> 20
            ),
            (Mode::Inline, _) => "inline".into(),
            (Mode::NoFilter, _) => "baseline: no filter".into(),
        } + if case.native { " (native)" } else { "" },
        must_load: case.mode != Mode::KeySet
            || case.native
            || case.body_len <= case.response_limit.unwrap_or(ENVOY_ASYNC_RESPONSE_LIMIT),
        keys: case.keys,
        workers: case.workers,
        ..Row::default()
    };
    eprintln!(
        "\n== {} {} keys, {} worker(s)",
        row.mode, case.keys, case.workers
    );
    let mut doc = match case.mode {
        Mode::KeySet => bootstrap_with_key_service(
            &json!({
                "key_set": {"cluster": "keyservice", "path": "/v1/keyset",
                            "refresh_seconds": REFRESH_SECONDS, "timeout_ms": FETCH_TIMEOUT_MS,
                            // Polled whole, as from a plain file server: what a full load
                            // costs is measured here (`make bench-revocation` measures the
                            // watch, whose rewritten-but-unchanged file is no change at all).
                            "watch_seconds": 0},
                "rules": rules()
            }),
            case.upstream.addr,
            case.key_service.expect("a key service"),
        ),
        Mode::Inline => bootstrap(
            &json!({"keys": case.records.expect("records"), "rules": rules()}),
            case.upstream.addr,
            0,
        ),
        Mode::NoFilter => bootstrap(&json!({"rules": rules()}), case.upstream.addr, 0),
    };
    if case.mode == Mode::NoFilter {
        // keygate's entry is the first of the listener's HTTP filters (the router the last).
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array_mut()
            .unwrap()
            .remove(0);
    } else if case.native {
        support::wasm_to_native(&mut doc);
    }
    if let Some(limit) = case.response_limit {
        doc["layered_runtime"] = json!({"layers": [{"name": "bench", "static_layer": {
            "http.async_response_buffer_limit": limit
        }}]});
    }
    if let Some(mib) = options.release_mib {
        // Envoy's allocator gives freed memory back to the system, up to this much a
        // second (by default it keeps it: what a full load freed stays in RSS).
        doc["memory_allocator_manager"] = json!({
            "bytes_to_release": mib << 20, "memory_release_interval": "1s"});
    }
    let started = Instant::now();
    let envoy = match Envoy::try_start(
        &doc,
        EnvoyOptions {
            concurrency: case.workers,
            log_level: options.log_level,
            // Envoy writes its log file every 10 s by default; a case that fails fast
            // must still find the reason in it.
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    ) {
        Ok(envoy) => envoy,
        Err(refused) => {
            let lines = telling_lines(&refused.log);
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            eprintln!(
                "Envoy did not start after {:.1} s (exit {:?}):\n{tail}",
                started.elapsed().as_secs_f64(),
                refused.exit_code
            );
            row.problem = Some(format!(
                "Envoy did not start after {:.0} s (exit {:?})",
                started.elapsed().as_secs_f64(),
                refused.exit_code
            ));
            return row;
        }
    };
    drop(doc);
    let ready_after = started.elapsed();
    let pid = envoy.pid();
    let before = stats(&envoy).unwrap_or_default();
    row.ready = mem(pid);
    eprintln!(
        "ready after {:.1} s: {} (keys_loaded {}, fetch.ok {})",
        ready_after.as_secs_f64(),
        row.ready.map_or("?".into(), |m| m.to_string()),
        stat(&before, "keys_loaded"),
        stat(&before, "fetch.ok")
    );

    // Loaded: the gauge shows the whole set.
    // The admin endpoint is served by Envoy's main thread: how long it waited shows how long
    // that thread was busy.
    let mut slowest_admin = Duration::ZERO;
    let loaded = loop {
        if case.mode == Mode::NoFilter {
            break stats(&envoy);
        }
        let asked = Instant::now();
        let answer = stats(&envoy);
        slowest_admin = slowest_admin.max(asked.elapsed());
        match answer {
            Some(s) if stat(&s, "keys_loaded") as usize == case.keys => break Some(s),
            Some(s)
                if stat(&s, "fetch.failed") >= GIVE_UP_AFTER_FAILURES
                    && stat(&s, "keys_loaded") == 0 =>
            {
                break None
            }
            None if mem(pid).is_none() => break None,
            _ => {}
        }
        if started.elapsed() > options.load_limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(loaded) = loaded else {
        std::thread::sleep(Duration::from_millis(300));
        let kept = support::repo_root().join(format!(
            "target/bench-memory/{}-{}-{}{}.log",
            row.mode.split(',').next().unwrap_or(""),
            case.keys,
            case.workers,
            if case.response_limit.is_some() {
                "-raised"
            } else {
                ""
            }
        ));
        let _ = std::fs::create_dir_all(kept.parent().unwrap());
        let _ = std::fs::write(&kept, envoy.log());
        eprintln!("Envoy's log: {}", kept.display());
        let lines = telling_lines(&envoy.log());
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        eprintln!(
            "not loaded after {:.1} s (stats: {:?}):\n{tail}",
            started.elapsed().as_secs_f64(),
            stats(&envoy)
        );
        let last = stats(&envoy).unwrap_or_default();
        row.problem = Some(format!(
            "set not loaded after {:.0} s ({} failed fetches)",
            started.elapsed().as_secs_f64(),
            stat(&last, "fetch.failed")
        ));
        row.peak_kib = mem(pid).map(|m| m.hwm_kib);
        return row;
    };
    row.load_time = Some(started.elapsed());
    row.loaded = mem(pid);
    row.heap = keygate_tools::envoy_heap(&envoy);
    eprintln!(
        "loaded after {:.1} s: {} (fetch.ok {}, fetch.failed {}; slowest admin answer \
         meanwhile {:.2} s)",
        started.elapsed().as_secs_f64(),
        row.loaded.map_or("?".into(), |m| m.to_string()),
        stat(&loaded, "fetch.ok"),
        stat(&loaded, "fetch.failed"),
        slowest_admin.as_secs_f64()
    );
    row.slowest_admin = Some(slowest_admin);

    // Requests: each on a new connection, so the kernel spreads them over the workers.
    let mut picks = Picks(0x9e37_79b9_7f4a_7c15 ^ case.keys as u64);
    let sent = Instant::now();
    for _ in 0..options.requests {
        let i = picks.below(case.keys);
        let answer = try_request(
            envoy.listener,
            &Request::get("/data/x").bearer(&bench_key(i)),
        );
        match answer {
            Ok(response) if response.status == 200 => {}
            Ok(response) => {
                row.failed_requests += 1;
                eprintln!("key {i}: {} {}", response.status, response.text().trim());
            }
            Err(e) => {
                row.failed_requests += 1;
                eprintln!("key {i}: {e}");
            }
        }
    }
    row.after_requests = mem(pid);
    eprintln!(
        "{} requests in {:.2} s, {} not 200: {}",
        options.requests,
        sent.elapsed().as_secs_f64(),
        row.failed_requests,
        row.after_requests.map_or("?".into(), |m| m.to_string())
    );
    if row.failed_requests > 0 {
        row.problem = Some(format!(
            "{} of {} requests not 200",
            row.failed_requests, options.requests
        ));
    }

    if case.mode == Mode::KeySet {
        let first = stats(&envoy).unwrap_or_default();
        std::thread::sleep(options.window);
        let last = stats(&envoy).unwrap_or_default();
        row.settled = mem(pid);
        let delta = |name| stat(&last, name).saturating_sub(stat(&first, name));
        row.fetches = Some((delta("fetch.ok"), delta("fetch.not_modified")));
        eprintln!(
            "window {} s: {} + {} fetches; since start fetch.ok {} not_modified {} failed {}",
            options.window.as_secs(),
            delta("fetch.ok"),
            delta("fetch.not_modified"),
            stat(&last, "fetch.ok"),
            stat(&last, "fetch.not_modified"),
            stat(&last, "fetch.failed")
        );
        if stat(&last, "fetch.failed") > 0 {
            row.problem
                .get_or_insert_with(|| format!("{} failed fetches", stat(&last, "fetch.failed")));
        }
        if let Some((file, records)) = case.key_file {
            for _ in 0..CHANGES {
                change_set(&envoy, pid, case, &mut row, file, records, options);
            }
        }
    }
    row.peak_kib = mem(pid).map(|m| m.hwm_kib);
    std::thread::sleep(Duration::from_millis(300));
    // The native build reads a set on its own loader thread, and reports it from the main
    // thread: its log line tells nothing of where the work was done.
    if !case.native {
        row.parsed_on = parsed_on(&envoy.log(), pid);
    }
    if !row.parsed_on.is_empty() {
        eprintln!("sets parsed on: {}", row.parsed_on.join(", "));
    }
    for line in telling_lines(&envoy.log()).iter().rev().take(6).rev() {
        eprintln!("  log: {line}");
    }
    row
}

/// The key service's set changes (a new version, the same keys): Envoy fetches it whole,
/// writes it into the other slot and switches, while requests keep coming.
fn change_set(
    envoy: &Envoy,
    pid: u32,
    case: &Case,
    row: &mut Row,
    file: &Path,
    records: &str,
    options: &Options,
) {
    static CHANGES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let change = CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let before = stat(&stats(envoy).unwrap_or_default(), "fetch.ok");
    let next = file.with_extension("next");
    write_file(
        &next,
        &[
            &format!(
                "{{\"version\":\"bench-{}-change-{change}\",\"keys\":",
                case.keys
            ),
            records,
            "}",
        ],
    );
    std::fs::rename(&next, file).unwrap();
    let changed_at = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut slowest_admin = Duration::ZERO;
    let (loaded, during) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let mut picks = Picks(0x2545_f491_4f6c_dd1d ^ change as u64);
            let (mut sent, mut failed, mut slowest) = (0, 0, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = picks.below(case.keys);
                let asked = Instant::now();
                let answer = try_request(
                    envoy.listener,
                    &Request::get("/data/x").bearer(&bench_key(i)),
                );
                slowest = slowest.max(asked.elapsed());
                sent += 1;
                if !matches!(answer, Ok(ref r) if r.status == 200) {
                    failed += 1;
                }
            }
            (sent, failed, slowest)
        });
        let loaded = loop {
            let asked = Instant::now();
            let answer = stats(envoy);
            slowest_admin = slowest_admin.max(asked.elapsed());
            if let Some(s) = answer {
                if stat(&s, "fetch.ok") > before && stat(&s, "keys_loaded") as usize == case.keys {
                    break true;
                }
            }
            if changed_at.elapsed() > options.load_limit {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Past the switch, and past the time workers take to follow it.
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (loaded, sender.join().unwrap())
    });
    let (sent, failed, slowest) = row.during_change.unwrap_or_default();
    row.during_change = Some((sent + during.0, failed + during.1, slowest.max(during.2)));
    row.failed_requests += during.1;
    if !loaded {
        row.problem
            .get_or_insert_with(|| "a changed set did not load".into());
        return;
    }
    let took = changed_at.elapsed() - Duration::from_secs(1);
    row.change_time = row.change_time.max(Some(took));
    let after = mem(pid);
    row.changed.extend(after);
    row.slowest_admin = row.slowest_admin.max(Some(slowest_admin));
    eprintln!(
        "changed set loaded after {:.1} s: {}; {} requests meanwhile, {} not 200, slowest {:.0} ms; \
         slowest admin answer {:.2} s",
        took.as_secs_f64(),
        after.map_or("?".into(), |m| m.to_string()),
        during.0,
        during.1,
        during.2.as_secs_f64() * 1000.0,
        slowest_admin.as_secs_f64()
    );
}

fn print_table(rows: &[Row], options: &Options) {
    let header = [
        "mode",
        "keys",
        "workers",
        "RSS ready",
        "RSS loaded",
        "above no filter",
        "Envoy heap loaded",
        "RSS after requests",
        "RSS after the window",
        "of which wasm",
        "peak (VmHWM)",
        "load time",
        "slowest admin answer while loading",
        "fetches in window (200 + 304)",
        "sets parsed on",
        "RSS after each changed set",
        "change loaded in",
        "requests while it loads",
    ];
    println!("\n| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.cells().join(" | "));
    }
    println!(
        "\nabove no filter: RSS loaded less that of Envoy with no filter at the same worker \
         count.\n\
         Envoy heap loaded: Envoy's allocator (tcmalloc, admin `/memory`) once loaded: \
         `allocated` in use, and `pageheap_free` + thread caches freed but kept by the \
         allocator (the wasm VMs' linear memory is not on this heap; the native build's \
         allocations are, but for its blocks of 256 KiB or more, which it maps itself).\n\
         sets parsed on: the thread whose VM logged each load; the native build reads sets \
         on a loader thread of its own, as they stream in (—).\n\
         wasm: the resident linear memory of all keygate VMs (main thread, workers and \
         the base VM); the native build has none.\n\
         slowest admin answer: Envoy's main thread, which serves the admin endpoint, was \
         busy that long (polled every 100 ms).\n\
         fetches in window: keygate.fetch.ok + fetch.not_modified over {} s, refresh_seconds {}.\n\
         changed set: the key service's file rewritten with a new version and the same keys \
         ({CHANGES} times, one after the other); Envoy fetches it whole (`watch_seconds` 0: \
         polled as from a plain file server) and rewrites its buckets while requests keep \
         coming (counted over all changes).",
        options.window.as_secs(),
        REFRESH_SECONDS
    );
    let problems: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            r.problem
                .as_ref()
                .map(|p| format!("- {} {} keys, {} worker(s): {p}", r.mode, r.keys, r.workers))
        })
        .collect();
    if !problems.is_empty() {
        println!("\n{}", problems.join("\n"));
    }
}

fn write_file(path: &Path, parts: &[&str]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for part in parts {
        file.write_all(part.as_bytes()).unwrap();
    }
    file.flush().unwrap();
}

fn main() {
    let options = options();
    let upstream = Upstream::start();
    let dir = TempDir::new("bench");
    let total = Instant::now();
    let mut rows = Vec::new();

    // Baselines: Envoy with no filter, and each build with one inline key.
    let one: Value = serde_json::from_str(&bench_records_json(1, None)).unwrap();
    let mut baselines = Vec::new();
    for (mode, native, wanted) in [
        (Mode::NoFilter, false, true),
        (Mode::Inline, false, options.wasm),
        (Mode::Inline, true, options.native),
    ] {
        for &workers in options.workers.iter().filter(|_| wanted) {
            let mut row = run(
                &Case {
                    mode,
                    native,
                    response_limit: None,
                    body_len: 0,
                    keys: 1,
                    workers,
                    upstream: &upstream,
                    key_service: None,
                    key_file: None,
                    records: Some(&one),
                },
                &options,
            );
            if mode == Mode::NoFilter {
                baselines.push((workers, row.loaded.map_or(0, |m| m.rss_kib)));
            } else {
                row.mode = format!(
                    "baseline: inline, 1 key{}",
                    if native { " (native)" } else { "" }
                );
            }
            rows.push(row);
        }
    }

    let mut sizes: Vec<usize> = options.key_set.clone();
    sizes.extend(&options.inline);
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let made = Instant::now();
        let records = bench_records_json(n, None);
        eprintln!(
            "\n{n} records: {:.1} MiB of JSON in {:.1} s",
            records.len() as f64 / 1048576.0,
            made.elapsed().as_secs_f64()
        );
        if options.key_set.contains(&n) {
            let file: PathBuf = dir.path().join(format!("keys-{n}.json"));
            write_file(
                &file,
                &[
                    &format!("{{\"version\":\"bench-{n}\",\"keys\":"),
                    &records,
                    "}",
                ],
            );
            let body_len = std::fs::metadata(&file).unwrap().len() as usize;
            let service = Served::start(&file);
            // A document larger than Envoy lets a filter's call receive by default: run it
            // as Envoy comes, then with the limit raised in Envoy's runtime.
            let mut limits = vec![None];
            if body_len > ENVOY_ASYNC_RESPONSE_LIMIT {
                limits.push(Some(body_len.next_power_of_two()));
            }
            // The native build reads the set as it streams in: Envoy's limit, which bounds
            // a buffered answer, does not apply, and is left as Envoy comes.
            let builds = [
                (false, options.wasm, limits.clone()),
                (true, options.native, vec![None]),
            ];
            for (native, response_limit) in builds
                .into_iter()
                .filter(|b| b.1)
                .flat_map(|(native, _, limits)| limits.into_iter().map(move |l| (native, l)))
            {
                for &workers in &options.workers {
                    rows.push(run(
                        &Case {
                            mode: Mode::KeySet,
                            native,
                            response_limit,
                            body_len,
                            keys: n,
                            workers,
                            upstream: &upstream,
                            key_service: Some(service.addr),
                            key_file: Some((&file, &records)),
                            records: None,
                        },
                        &options,
                    ));
                }
            }
            drop(service);
            let _ = std::fs::remove_file(&file);
        }
        if options.wasm && options.inline.contains(&n) {
            let value: Value = serde_json::from_str(&records).unwrap();
            drop(records);
            for &workers in &options.workers {
                rows.push(run(
                    &Case {
                        mode: Mode::Inline,
                        native: false,
                        response_limit: None,
                        body_len: 0,
                        keys: n,
                        workers,
                        upstream: &upstream,
                        key_service: None,
                        key_file: None,
                        records: Some(&value),
                    },
                    &options,
                ));
            }
        }
    }

    eprintln!("\ndone in {:.0} s", total.elapsed().as_secs_f64());
    for row in &mut rows {
        let baseline = baselines.iter().find(|b| b.0 == row.workers);
        if let (Some(&(_, base)), Some(loaded)) = (baseline, row.loaded) {
            row.above_baseline_kib = Some(loaded.rss_kib as i64 - base as i64);
        }
    }
    print_table(&rows, &options);
    // A request refused, or a set that fits Envoy's limits and does not load, is a failure;
    // a set larger than those limits is a result.
    if rows
        .iter()
        .any(|r| r.failed_requests > 0 || (r.must_load && r.problem.is_some()))
    {
        std::process::exit(1);
    }
}
