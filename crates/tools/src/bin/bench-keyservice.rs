//! `make bench-keyservice`: the key service (`keygate serve`) with a million keys, in db
//! mode (SQLite) and in file mode (`--keys`, the same records) side by side (GitHub issue
//! #16; the results are in BENCHMARKS.md).
//!
//! One run, with the `keygate` of `KEYGATE_BIN` (the release build under `make
//! bench-keyservice`), everything on 127.0.0.1 and under the system temp dir (deleted at
//! the end):
//! - writes a key file of N records (record `i` is `bench_key(i)`'s, with a UUID id, as
//!   the key service's ids are) and times `keygate import` of it into a new database;
//! - starts `keygate serve --keys FILE` and `keygate serve --db DB` (both stay up);
//! - `GET /v1/keys/{hash}` from several keep-alive connections for a fixed time, random
//!   existing hashes and a share of missing ones (each answer checked: 200 or 404),
//!   rounds interleaved file / db; the median round's requests/s, and the medians of the
//!   rounds' p50 / p99, with the server's CPU time per request;
//! - db mode's admin API under the same load: `POST /v1/admin/keys` (creates/s) and
//!   `DELETE /v1/admin/keys/{id}` (revokes/s) of imported keys, rounds interleaved;
//! - one revoke at a time on an idle server: the request until its answer (SQLite
//!   synchronous=FULL: acknowledged means durable), then the key's lookup must be 404;
//!   and file mode's revoke: `keygate revoke --keys FILE ID` (rewrites the file) and the
//!   time until the running `keygate serve --keys` answers 404 for the key;
//! - a full `GET /v1/keyset` from each, 3 times (db mode builds the body on the first and
//!   keeps it for its version), and each server's RSS (VmRSS, VmHWM).
//!
//! Options: `--keys 1000000`, `--rounds 3`, `--seconds 10` (each lookup round),
//! `--admin-seconds 5` (each create / revoke round), `--connections 8`, `--missing 20`
//! (percent of lookups for hashes that are not there), `--revokes 200` (single db revokes, 20 ms apart),
//! `--file-revokes 3`. Prints Markdown. Exits 1 on a wrong answer.
//!
//! `--postgres 1,3` measures PostgreSQL instead (README "Replicas on PostgreSQL"): a
//! throwaway PostgreSQL 15 on 127.0.0.1 (the test kit's), `keygate import` of the key file
//! into a new database for each replica count, then that many `keygate serve --db
//! postgres://...` replicas: lookups/s over all of them (connections spread evenly), and
//! `--long-polls 3000` long-polls (`/v1/changes?since=V&epoch=E&wait=60`) held over the
//! replicas, then one revoke through replica 0 and the time until every long-poll, on every
//! replica, has its answer. Everything, PostgreSQL included, shares the machine's cores.

// A tool: a failed step should stop it loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_testkit as support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::process::{cpu_ticks, rss_kib, status_kib, ticks_per_second};
use support::{
    bench_key, bench_records_json_with, hash_of, keygate_binary, Serve, Served, TempDir,
};

struct Options {
    keys: usize,
    rounds: usize,
    seconds: u64,
    admin_seconds: u64,
    connections: usize,
    missing_percent: u64,
    revokes: usize,
    file_revokes: usize,
    /// `--postgres 1,3`: the PostgreSQL mode, with these numbers of replicas.
    postgres: Vec<usize>,
    /// Long-polls held in the PostgreSQL mode (spread over the replicas).
    long_polls: usize,
}

fn options() -> Options {
    let mut o = Options {
        keys: 1_000_000,
        rounds: 3,
        seconds: 10,
        admin_seconds: 5,
        connections: 8,
        missing_percent: 20,
        revokes: 200,
        file_revokes: 3,
        postgres: Vec::new(),
        long_polls: 3000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag}: a value is missing"));
        let number = || -> u64 {
            value
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--keys" => o.keys = number() as usize,
            "--rounds" => o.rounds = number() as usize,
            "--seconds" => o.seconds = number(),
            "--admin-seconds" => o.admin_seconds = number(),
            "--connections" => o.connections = number() as usize,
            "--missing" => o.missing_percent = number(),
            "--revokes" => o.revokes = number() as usize,
            "--file-revokes" => o.file_revokes = number() as usize,
            "--postgres" => {
                o.postgres = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("--postgres {value}"))
                    })
                    .collect()
            }
            "--long-polls" => o.long_polls = number() as usize,
            _ => panic!("unknown option {flag}"),
        }
    }
    assert!(
        o.keys > o.revokes + o.file_revokes + 1000,
        "--keys is too small"
    );
    assert!(o.rounds > 0 && o.connections > 0);
    o
}

/// Record `i`'s id: a lowercase UUID (v4-shaped), as `keygate import` wants.
fn record_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// A key file of `n` records with scope `browse`: record `i` is `bench_key(i)`'s.
fn key_file(n: usize) -> String {
    format!(
        "{{\"version\":\"1\",\"keys\":{}}}",
        bench_records_json_with(n, None, record_id)
    )
}

/// A small xorshift generator: the load needs no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    /// Sends one request and reads its whole answer: the status and the body.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> (u16, Vec<u8>) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        if let Some(key) = bearer {
            head.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body);
        self.reader.get_mut().write_all(head.as_bytes()).unwrap();

        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().unwrap());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..]).unwrap();
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length.unwrap_or(0), 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        (status, body)
    }
}

/// What one load run saw.
struct Load {
    requests: u64,
    elapsed: Duration,
    /// Every request's latency, in microseconds, sorted.
    latencies: Vec<u32>,
    wrong: u64,
    statuses: BTreeMap<u16, u64>,
    /// The server's CPU time over the run, in seconds.
    server_cpu: f64,
    /// This process's (the client's) CPU time over the run, in seconds.
    client_cpu: f64,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }
    fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu * 1e6 / self.requests.max(1) as f64
    }
    fn client_us_per_request(&self) -> f64 {
        self.client_cpu * 1e6 / self.requests.max(1) as f64
    }
}

fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

/// A request of a load: method, path, body, and the statuses that are right for it.
struct Req {
    method: &'static str,
    path: String,
    body: String,
    expect: &'static [u16],
}

/// `connections` keep-alive connections, each sending `next` requests back to back until
/// `duration` is over (or `next` has none left).
fn load(
    served: &Served,
    connections: usize,
    duration: Duration,
    bearer: Option<&str>,
    next: &(dyn Fn(&mut Rng) -> Option<Req> + Sync),
) -> Load {
    load_on(&[served], connections, duration, bearer, next)
}

/// As [`load`], over several servers: connection `c` goes to server `c % servers`, and the
/// server CPU is theirs added up.
fn load_on(
    servers: &[&Served],
    connections: usize,
    duration: Duration,
    bearer: Option<&str>,
    next: &(dyn Fn(&mut Rng) -> Option<Req> + Sync),
) -> Load {
    let ticks = ticks_per_second();
    let servers_cpu = || servers.iter().map(|s| cpu_ticks(s.pid())).sum::<u64>();
    let cpu_before = servers_cpu();
    let own_before = cpu_ticks(std::process::id());
    let start = Instant::now();
    let deadline = start + duration;
    let per_conn: Vec<(Vec<u32>, u64, BTreeMap<u16, u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                scope.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) << 32) ^ nanos());
                    let mut conn = Conn::open(servers[c % servers.len()].addr);
                    let mut latencies = Vec::with_capacity(200_000);
                    let mut wrong = 0;
                    let mut statuses = BTreeMap::new();
                    while Instant::now() < deadline {
                        let Some(req) = next(&mut rng) else { break };
                        let sent = Instant::now();
                        let (status, body) = conn.send(req.method, &req.path, bearer, &req.body);
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        *statuses.entry(status).or_insert(0) += 1;
                        if !req.expect.contains(&status) {
                            if wrong < 3 {
                                eprintln!(
                                    "wrong answer: {} {} -> {status} {}",
                                    req.method,
                                    req.path,
                                    String::from_utf8_lossy(&body)
                                );
                            }
                            wrong += 1;
                        }
                    }
                    (latencies, wrong, statuses)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let server_cpu = (servers_cpu() - cpu_before) as f64 / ticks;
    let client_cpu = (cpu_ticks(std::process::id()) - own_before) as f64 / ticks;
    let mut latencies = Vec::new();
    let mut wrong = 0;
    let mut statuses = BTreeMap::new();
    for (l, w, s) in per_conn {
        latencies.extend(l);
        wrong += w;
        for (k, v) in s {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    latencies.sort_unstable();
    Load {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        wrong,
        statuses,
        server_cpu,
        client_cpu,
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The medians over rounds: requests/s, p50 ms, p99 ms, server CPU µs per request.
struct Summary {
    per_second: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    client_us: f64,
    rounds: Vec<f64>,
    requests: u64,
    wrong: u64,
    statuses: BTreeMap<u16, u64>,
}

fn summarize(runs: &[Load]) -> Summary {
    let mut statuses = BTreeMap::new();
    for run in runs {
        for (k, v) in &run.statuses {
            *statuses.entry(*k).or_insert(0) += v;
        }
    }
    Summary {
        per_second: median(runs.iter().map(Load::per_second).collect()),
        p50: median(runs.iter().map(|r| r.percentile_ms(0.50)).collect()),
        p99: median(runs.iter().map(|r| r.percentile_ms(0.99)).collect()),
        cpu_us: median(runs.iter().map(Load::cpu_us_per_request).collect()),
        client_us: median(runs.iter().map(Load::client_us_per_request).collect()),
        rounds: runs.iter().map(Load::per_second).collect(),
        requests: runs.iter().map(|r| r.requests).sum(),
        wrong: runs.iter().map(|r| r.wrong).sum(),
        statuses,
    }
}

fn rounds_text(rounds: &[f64]) -> String {
    rounds
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Runs `keygate ARGS`, which must succeed: its stdout and how long it took.
fn keygate(args: &[&str]) -> (String, Duration) {
    let start = Instant::now();
    let out = Command::new(keygate_binary()).args(args).output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "keygate {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1048576.0)
}

/// A full `GET /v1/keyset` on a new connection: how long and how many bytes.
fn keyset(served: &Served) -> (Duration, usize) {
    let mut conn = Conn::open(served.addr);
    let start = Instant::now();
    let (status, body) = conn.send("GET", "/v1/keyset", None, "");
    let took = start.elapsed();
    assert_eq!(status, 200, "GET /v1/keyset");
    (took, body.len())
}

fn main() {
    let o = options();
    if !o.postgres.is_empty() {
        postgres::run(&o);
        return;
    }
    let n = o.keys;
    let dir = TempDir::new("bench-keyservice");
    let keys_path = dir.join("keys.json");
    let db_path = dir.join("keys.db");
    let keys_arg = keys_path.to_str().unwrap();
    let db_arg = db_path.to_str().unwrap();
    eprintln!(
        "bench-keyservice: {n} keys in {}, keygate = {}",
        dir.path().display(),
        keygate_binary().display()
    );

    let started = Instant::now();
    std::fs::write(&keys_path, key_file(n)).unwrap();
    let generate = started.elapsed();
    let (_, import) = keygate(&["import", "--keys", keys_arg, "--db", db_arg]);
    eprintln!(
        "key file ({:.0} MiB) written in {:.1} s; imported in {:.1} s",
        file_mib(&keys_path),
        generate.as_secs_f64(),
        import.as_secs_f64()
    );
    let db_size = file_mib(&db_path);
    let (admin, _) = keygate(&["admin", "new", "--db", db_arg, "--label", "bench"]);
    let admin: serde_json::Value = serde_json::from_str(&admin).unwrap();
    let admin = admin["admin_key"].as_str().unwrap().to_string();

    let start_server = |args: &[&str]| {
        let started = Instant::now();
        let served = Serve::new(args)
            .start_timeout(Duration::from_secs(300))
            .start();
        (served, started.elapsed())
    };
    let (file, file_start) = start_server(&["--keys", keys_arg]);
    let (db, db_start) = start_server(&["--db", db_arg]);
    let rss_start = [rss_kib(file.pid()).unwrap(), rss_kib(db.pid()).unwrap()];
    eprintln!(
        "started: file mode in {:.2} s, db mode in {:.2} s",
        file_start.as_secs_f64(),
        db_start.as_secs_f64()
    );

    // Lookups: random existing hashes from a pool spread over the whole set, and missing ones.
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ nanos());
    let pool: Vec<String> = (0..n.min(200_000))
        .map(|_| {
            format!(
                "/v1/keys/{}",
                hash_of(&bench_key(rng.below(n - o.revokes - o.file_revokes)))
            )
        })
        .collect();
    let missing: Vec<String> = (0..10_000)
        .map(|j| format!("/v1/keys/{}", hash_of(&format!("kg_missing_{j}"))))
        .collect();
    let missing_percent = o.missing_percent;
    let lookup = move |rng: &mut Rng| {
        Some(if rng.below(100) < missing_percent as usize {
            Req {
                method: "GET",
                path: missing[rng.below(missing.len())].clone(),
                body: String::new(),
                expect: &[404],
            }
        } else {
            Req {
                method: "GET",
                path: pool[rng.below(pool.len())].clone(),
                body: String::new(),
                expect: &[200],
            }
        })
    };
    let warmup = Duration::from_secs(2);
    load(&file, o.connections, warmup, None, &lookup);
    load(&db, o.connections, warmup, None, &lookup);
    let (mut file_runs, mut db_runs) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let duration = Duration::from_secs(o.seconds);
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_db in order {
            let (served, runs) = if is_db {
                (&db, &mut db_runs)
            } else {
                (&file, &mut file_runs)
            };
            let run = load(served, o.connections, duration, None, &lookup);
            eprintln!(
                "round {}: {} lookups {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                round + 1,
                if is_db { "db" } else { "file" },
                run.per_second(),
                run.percentile_ms(0.5),
                run.percentile_ms(0.99)
            );
            runs.push(run);
        }
    }
    let rss_lookups = [rss_kib(file.pid()).unwrap(), rss_kib(db.pid()).unwrap()];
    let file_lookups = summarize(&file_runs);
    let db_lookups = summarize(&db_runs);

    // Full key set, 3 times each, interleaved: the first after the changes above (db mode
    // builds the body then, and keeps it for its version), then twice more.
    let (mut file_keyset, mut db_keyset) = (Vec::new(), Vec::new());
    let mut keyset_bytes = [0, 0];
    for _ in 0..3 {
        let (t, b) = keyset(&file);
        file_keyset.push(t.as_secs_f64());
        keyset_bytes[0] = b;
        let (t, b) = keyset(&db);
        db_keyset.push(t.as_secs_f64());
        keyset_bytes[1] = b;
    }
    let rss_after = [rss_kib(file.pid()).unwrap(), rss_kib(db.pid()).unwrap()];
    let hwm = [
        status_kib(file.pid(), "VmHWM").unwrap(),
        status_kib(db.pid(), "VmHWM").unwrap(),
    ];

    // Admin API under load (db mode): creates, and revokes of imported keys from the top.
    let create = |_: &mut Rng| {
        Some(Req {
            method: "POST",
            path: "/v1/admin/keys".into(),
            body: r#"{"owner":"bench-create","scopes":["browse"]}"#.into(),
            expect: &[201],
        })
    };
    // Single revokes take the top `revokes` keys, file mode's the `file_revokes` below
    // them: no lookup picks them.
    let next_revoke = AtomicUsize::new(n);
    let floor = n - o.revokes - o.file_revokes;
    let revoke = |_: &mut Rng| {
        let i = next_revoke.fetch_sub(1, Ordering::Relaxed).checked_sub(1)?;
        (i >= floor).then(|| Req {
            method: "DELETE",
            path: format!("/v1/admin/keys/{}", record_id(i)),
            body: String::new(),
            expect: &[200, 204],
        })
    };
    let (mut create_runs, mut revoke_runs) = (Vec::new(), Vec::new());
    let admin_duration = Duration::from_secs(o.admin_seconds);
    // Revokes under load take the keys below `floor`, downwards (the lookups are over).
    let next_bulk = AtomicUsize::new(floor);
    let bulk_revoke = |_: &mut Rng| {
        let i = next_bulk.fetch_sub(1, Ordering::Relaxed).checked_sub(1)?;
        Some(Req {
            method: "DELETE",
            path: format!("/v1/admin/keys/{}", record_id(i)),
            body: String::new(),
            expect: &[200, 204],
        })
    };
    for round in 0..o.rounds {
        let c = load(&db, o.connections, admin_duration, Some(&admin), &create);
        let r = load(
            &db,
            o.connections,
            admin_duration,
            Some(&admin),
            &bulk_revoke,
        );
        eprintln!(
            "round {}: creates {:.0}/s (p99 {:.2} ms), revokes {:.0}/s (p99 {:.2} ms)",
            round + 1,
            c.per_second(),
            c.percentile_ms(0.99),
            r.per_second(),
            r.percentile_ms(0.99)
        );
        create_runs.push(c);
        revoke_runs.push(r);
    }
    let creates = summarize(&create_runs);
    let revokes = summarize(&revoke_runs);

    // One revoke at a time, idle server: request → acknowledged (durable), then checked.
    let mut single = Vec::new();
    let mut conn = Conn::open(db.addr);
    let mut check = Conn::open(db.addr);
    let mut not_gone = 0;
    for _ in 0..o.revokes {
        let Some(req) = revoke(&mut Rng(1)) else {
            break;
        };
        let i = next_revoke.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        let (status, body) = conn.send(req.method, &req.path, Some(&admin), "");
        single.push(sent.elapsed().as_micros() as u32);
        assert!(
            req.expect.contains(&status),
            "revoke: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let (status, _) = check.send(
            "GET",
            &format!("/v1/keys/{}", hash_of(&bench_key(i))),
            None,
            "",
        );
        if status != 404 {
            not_gone += 1;
        }
    }
    single.sort_unstable();

    // What one durable commit costs on this disk, at the least: 4 KiB rewritten in place
    // (as SQLite reuses its WAL) and synced.
    let mut syncs = Vec::new();
    {
        let mut f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.sync_all().unwrap();
        for _ in 0..o.revokes {
            std::thread::sleep(Duration::from_millis(5));
            let t = Instant::now();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.write_all(&[7u8; 4096]).unwrap();
            f.sync_data().unwrap();
            syncs.push(t.elapsed().as_micros() as u32);
        }
    }
    syncs.sort_unstable();

    // File mode: `keygate revoke --keys FILE ID`, then until the running server says 404.
    let mut file_revoke_cli = Vec::new();
    let mut file_revoke_seen = Vec::new();
    let mut check = Conn::open(file.addr);
    for k in 0..o.file_revokes {
        let i = floor + k;
        let lookup_path = format!("/v1/keys/{}", hash_of(&bench_key(i)));
        assert_eq!(check.send("GET", &lookup_path, None, "").0, 200);
        let started = Instant::now();
        keygate(&["revoke", "--keys", keys_arg, &record_id(i)]);
        file_revoke_cli.push(started.elapsed().as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if check.send("GET", &lookup_path, None, "").0 == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "file mode never stopped serving the revoked key"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        file_revoke_seen.push(started.elapsed().as_secs_f64());
    }
    let (_, file_new) = keygate(&[
        "new",
        "--keys",
        keys_arg,
        "--owner",
        "bench-create",
        "--scopes",
        "browse",
        "--expires-in",
        "90d",
    ]);

    let wrong = file_lookups.wrong + db_lookups.wrong + creates.wrong + revokes.wrong;
    let total = started.elapsed();

    // The report.
    println!(
        "### Results ({n} keys, {} connections, {} rounds of {} s lookups / {} s admin, {} % missing hashes)\n",
        o.connections, o.rounds, o.seconds, o.admin_seconds, o.missing_percent
    );
    println!("| what | file mode (`--keys`) | db mode (`--db`, SQLite) | goal |");
    println!("|---|---|---|---|");
    let lookups_row = |s: &Summary| {
        format!(
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            s.per_second, s.p50, s.p99
        )
    };
    println!(
        "| `GET /v1/keys/{{hash}}` lookups | {} | {} | ≥ 5,000/s, p99 ≤ 5 ms |",
        lookups_row(&file_lookups),
        lookups_row(&db_lookups)
    );
    println!(
        "| lookups/s per round | {} | {} | |",
        rounds_text(&file_lookups.rounds),
        rounds_text(&db_lookups.rounds)
    );
    println!(
        "| CPU per lookup: server / client (2 cores in all) | {:.0} / {:.0} µs | {:.0} / {:.0} µs | |",
        file_lookups.cpu_us, file_lookups.client_us, db_lookups.cpu_us, db_lookups.client_us
    );
    println!(
        "| CPU per create / revoke: server / client | — | {:.0} / {:.0} µs, {:.0} / {:.0} µs | |",
        creates.cpu_us, creates.client_us, revokes.cpu_us, revokes.client_us
    );
    println!(
        "| creates/s (admin API) | `keygate new`: {:.2} s each ({:.2}/s) | {:.0}/s, p50 {:.2} ms, p99 {:.2} ms | — |",
        file_new.as_secs_f64(),
        1.0 / file_new.as_secs_f64(),
        creates.per_second,
        creates.p50,
        creates.p99
    );
    println!(
        "| revokes/s (admin API) | — | {:.0}/s, p50 {:.2} ms, p99 {:.2} ms | — |",
        revokes.per_second, revokes.p50, revokes.p99
    );
    let cli_median = median(file_revoke_cli.clone());
    let seen_median = median(file_revoke_seen.clone());
    println!(
        "| one revoke, request → acknowledged (durable) | `keygate revoke`: {:.2} s; served 404 after {:.2} s (median of {}) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} revokes, each key 404 right after: {}) | ≤ 10 ms |",
        cli_median,
        seen_median,
        file_revoke_cli.len(),
        percentile(&single, 0.5),
        percentile(&single, 0.99),
        percentile(&single, 1.0),
        single.len(),
        if not_gone == 0 { "yes".to_string() } else { format!("{not_gone} not") }
    );
    println!(
        "| for comparison: this disk's 4 KiB rewrite + fdatasync ({} times) | — | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | |",
        syncs.len(),
        percentile(&syncs, 0.5),
        percentile(&syncs, 0.99),
        percentile(&syncs, 1.0)
    );
    println!(
        "| full `GET /v1/keyset`: first / next two | {:.0} / {:.0}, {:.0} ms ({:.1} MiB) | {:.0} / {:.0}, {:.0} ms ({:.1} MiB) | — |",
        file_keyset[0] * 1000.0,
        file_keyset[1] * 1000.0,
        file_keyset[2] * 1000.0,
        keyset_bytes[0] as f64 / 1048576.0,
        db_keyset[0] * 1000.0,
        db_keyset[1] * 1000.0,
        db_keyset[2] * 1000.0,
        keyset_bytes[1] as f64 / 1048576.0
    );
    println!(
        "| `keygate serve` RSS: started / after the lookups / after 3 key sets / peak | {:.0} / {:.0} / {:.0} / {:.0} MiB | {:.0} / {:.0} / {:.0} / {:.0} MiB | — |",
        mib(rss_start[0]),
        mib(rss_lookups[0]),
        mib(rss_after[0]),
        mib(hwm[0]),
        mib(rss_start[1]),
        mib(rss_lookups[1]),
        mib(rss_after[1]),
        mib(hwm[1])
    );
    println!(
        "| start (until listening) | {:.2} s | {:.2} s | — |",
        file_start.as_secs_f64(),
        db_start.as_secs_f64()
    );
    println!(
        "| filling | key file ({:.0} MiB) written in {:.1} s | `keygate import`: {:.1} s ({:.0} keys/s); database {:.0} MiB | — |",
        file_mib(&keys_path),
        generate.as_secs_f64(),
        import.as_secs_f64(),
        n as f64 / import.as_secs_f64(),
        db_size
    );
    println!();
    println!(
        "Answers: lookups file {:?}, db {:?}; creates {:?}; revokes {:?}. Whole run {:.0} s.",
        file_lookups.statuses,
        db_lookups.statuses,
        creates.statuses,
        revokes.statuses,
        total.as_secs_f64()
    );
    let _ = (file_lookups.requests, db_lookups.requests);
    drop(file);
    drop(db);
    drop(dir);
    if wrong > 0 {
        eprintln!("bench-keyservice: {wrong} wrong answers");
        std::process::exit(1);
    }
}

/// `--postgres 1,3`: replicas on PostgreSQL.
mod postgres {
    use super::*;
    use support::postgres::Postgres;

    /// What one replica count measured.
    struct Row {
        replicas: usize,
        lookups: Summary,
        held: usize,
        woken_all: Duration,
        woken_p50: Duration,
        rss_mib: Vec<f64>,
        import: Duration,
    }

    pub fn run(o: &Options) {
        let n = o.keys;
        let dir = TempDir::new("bench-keyservice-pg");
        let keys_path = dir.join("keys.json");
        std::fs::write(&keys_path, key_file(n)).unwrap();
        let mut pg = Postgres::start();
        eprintln!(
            "bench-keyservice --postgres: {n} keys, PostgreSQL on 127.0.0.1:{}, keygate = {}",
            pg.port,
            keygate_binary().display()
        );
        let rows: Vec<Row> = o
            .postgres
            .iter()
            .map(|&replicas| one(o, &mut pg, &keys_path, replicas))
            .collect();
        println!();
        println!(
            "| replicas | lookups/s (all replicas) | p50 / p99 ms | long-polls held | all woken after a change through replica 0 (p50 / all) | RSS a replica, long-polls held |"
        );
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            let rss: Vec<String> = r.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
            println!(
                "| {} | {:.0} ({}) | {:.2} / {:.2} | {} | {:.0} ms / {:.0} ms | {} MiB |",
                r.replicas,
                r.lookups.per_second,
                rounds_text(&r.lookups.rounds),
                r.lookups.p50,
                r.lookups.p99,
                r.held,
                r.woken_p50.as_secs_f64() * 1000.0,
                r.woken_all.as_secs_f64() * 1000.0,
                rss.join(" / ")
            );
        }
        println!();
        for r in &rows {
            println!(
                "{} replica(s): `keygate import` of {n} keys into PostgreSQL in {:.1} s; lookups {:?}",
                r.replicas,
                r.import.as_secs_f64(),
                r.lookups.statuses
            );
        }
        if rows.iter().any(|r| r.lookups.wrong > 0) {
            eprintln!("wrong answers: see above");
            std::process::exit(1);
        }
    }

    fn one(o: &Options, pg: &mut Postgres, keys_path: &Path, replicas: usize) -> Row {
        let n = o.keys;
        let dsn = pg.new_database();
        let (_, import) = keygate(&[
            "import",
            "--keys",
            keys_path.to_str().unwrap(),
            "--db",
            &dsn,
        ]);
        let (admin, _) = keygate(&["admin", "new", "--db", &dsn, "--label", "bench"]);
        let admin: serde_json::Value = serde_json::from_str(&admin).unwrap();
        let admin = admin["admin_key"].as_str().unwrap().to_string();
        let servers: Vec<Served> = (0..replicas)
            .map(|_| {
                Serve::new(["--db", dsn.as_str()])
                    .start_timeout(Duration::from_secs(120))
                    .start()
            })
            .collect();
        let refs: Vec<&Served> = servers.iter().collect();
        eprintln!("{replicas} replica(s) up; imported {n} keys in {import:?}");

        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ nanos());
        let pool: Vec<String> = (0..n.min(200_000))
            .map(|_| format!("/v1/keys/{}", hash_of(&bench_key(rng.below(n - 10)))))
            .collect();
        let missing = o.missing_percent;
        let lookup = |rng: &mut Rng| {
            Some(if rng.below(100) < missing as usize {
                Req {
                    method: "GET",
                    path: format!("/v1/keys/{}", hash_of(&format!("missing-{}", rng.next()))),
                    body: String::new(),
                    expect: &[404],
                }
            } else {
                Req {
                    method: "GET",
                    path: pool[rng.below(pool.len())].clone(),
                    body: String::new(),
                    expect: &[200],
                }
            })
        };
        load_on(&refs, o.connections, Duration::from_secs(1), None, &lookup);
        let runs: Vec<Load> = (0..o.rounds)
            .map(|_| {
                load_on(
                    &refs,
                    o.connections,
                    Duration::from_secs(o.seconds),
                    None,
                    &lookup,
                )
            })
            .collect();
        let lookups = summarize(&runs);
        eprintln!("{replicas} replica(s): {:.0} lookups/s", lookups.per_second);

        // Long-polls over every replica, at the current version.
        let mut conn = Conn::open(servers[0].addr);
        let (status, body) = conn.send("GET", "/v1/changes", None, "");
        assert_eq!(status, 200);
        let feed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let (version, epoch) = (
            feed["version"].as_str().unwrap().to_string(),
            feed["epoch"].as_str().unwrap().to_string(),
        );
        let path = format!("/v1/changes?since={version}&epoch={epoch}&wait=60");
        let streams: Vec<TcpStream> = (0..o.long_polls)
            .map(|i| {
                let mut s = TcpStream::connect(servers[i % replicas].addr).unwrap();
                s.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
                    .unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        // None answered yet: each is held.
        let held = streams
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 1];
                let waiting = matches!(s.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                s.set_nonblocking(false).unwrap();
                waiting
            })
            .count();
        let rss_mib: Vec<f64> = servers
            .iter()
            .map(|s| mib(rss_kib(s.pid()).unwrap_or(0)))
            .collect();

        // One revoke through replica 0 wakes them all, on every replica.
        let mut admin_conn = Conn::open(servers[0].addr);
        let changed = Instant::now();
        let (status, _) = admin_conn.send(
            "DELETE",
            &format!("/v1/admin/keys/{}", record_id(n - 1)),
            Some(&admin),
            "",
        );
        assert_eq!(status, 200, "revoke");
        let chunks: Vec<Vec<TcpStream>> = {
            let mut chunks: Vec<Vec<TcpStream>> = (0..8).map(|_| Vec::new()).collect();
            for (i, s) in streams.into_iter().enumerate() {
                chunks[i % 8].push(s);
            }
            chunks
        };
        let mut woken: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|s| {
                                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                let mut reader = BufReader::new(s);
                                let mut line = String::new();
                                reader.read_line(&mut line).unwrap();
                                assert!(line.contains(" 200 "), "long-poll answered {line:?}");
                                changed.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        woken.sort();
        let woken_all = *woken.last().unwrap();
        let woken_p50 = woken[woken.len() / 2];
        eprintln!(
            "{replicas} replica(s): {held} of {} long-polls held; all woken {woken_all:?} after the change",
            o.long_polls
        );
        Row {
            replicas,
            lookups,
            held,
            woken_all,
            woken_p50,
            rss_mib,
            import,
        }
    }
}
