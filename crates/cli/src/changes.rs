//! `keygate serve`'s change feed for `lookup` mode (README "Watching for changes"):
//! `GET /v1/changes?since=V&epoch=E&wait=S`.
//!
//! - The epoch is random, made when the process starts: a restarted server is a new store
//!   for the filters, which then drop every cached answer.
//! - The version starts at 1 and grows by one with each reload of the key file that changed
//!   something; what changed is the diff of hashes (added, removed, or a record whose
//!   text changed).
//! - The log of changes is bounded ([`MAX_LOG_HASHES`]); a `since` older than what it
//!   holds, or a version it never had, is answered 410.
//! - No `since` (or `since=0`), or another epoch: 200 with the current version and no
//!   hashes, at once (a baseline). A `since` behind the current version: 200 with the
//!   hashes changed since, at once. Otherwise the answer waits up to `wait` seconds (at most
//!   60) for a reload that changes something, then says 304.
//!
//! Long-polls are held by one thread ([`Feed::hold`]), which waits on a condition variable
//! and stats the key file every 100 ms while any is held, so that a reload is seen without
//! other requests; the `--threads` workers are not held. At most [`MAX_HELD`] are held at
//! once (503 past that). tiny_http keeps one thread per open connection, so each held
//! long-poll also keeps one of those: this server is sized for a few dozen proxies.

use keygate_core::record::KeyHash;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tiny_http::{Header, Request, Response, StatusCode};

/// Hashes the log keeps at most (over every version it holds).
pub const MAX_LOG_HASHES: usize = 100_000;
/// Long-polls held at once at most.
pub const MAX_HELD: usize = 1_000;
/// The longest wait a client may ask for.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// How often the key file is looked at while long-polls are held.
const RELOAD_CHECK: Duration = Duration::from_millis(100);

/// The records of one version of the key file, by hash.
pub trait Records {
    fn hashes(&self) -> Vec<KeyHash>;
    /// The record's text, as served.
    fn text(&self, hash: &KeyHash) -> Option<&[u8]>;
}

/// The keys whose record differs between two versions of the file.
pub fn diff(old: &impl Records, new: &impl Records) -> Vec<KeyHash> {
    let mut changed: Vec<KeyHash> = new
        .hashes()
        .into_iter()
        .filter(|hash| old.text(hash) != new.text(hash))
        .collect();
    changed.extend(
        old.hashes()
            .into_iter()
            .filter(|hash| new.text(hash).is_none()),
    );
    changed
}

/// What the log says about a `since`.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Nothing newer.
    Current,
    /// The keys changed since, and the version they bring the client to.
    Changed(u64, Vec<KeyHash>),
    /// Older than the log, or never given.
    Gone,
}

#[derive(Debug)]
pub struct Log {
    version: u64,
    /// (version, keys changed by it), oldest first.
    entries: VecDeque<(u64, Vec<KeyHash>)>,
    hashes: usize,
    /// The oldest `since` the log can answer.
    oldest: u64,
    max_hashes: usize,
}

impl Log {
    pub fn new(max_hashes: usize) -> Log {
        Log {
            version: 1,
            entries: VecDeque::new(),
            hashes: 0,
            oldest: 1,
            max_hashes,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// A reload changed these keys: a new version, unless none changed.
    pub fn record(&mut self, changed: Vec<KeyHash>) -> bool {
        if changed.is_empty() {
            return false;
        }
        self.version += 1;
        self.hashes += changed.len();
        self.entries.push_back((self.version, changed));
        while self.hashes > self.max_hashes {
            let Some((version, dropped)) = self.entries.pop_front() else {
                break;
            };
            self.hashes -= dropped.len();
            self.oldest = version;
        }
        true
    }

    pub fn since(&self, since: u64) -> Since {
        if since == self.version {
            return Since::Current;
        }
        if since > self.version || since < self.oldest {
            return Since::Gone;
        }
        let mut seen = HashSet::new();
        let hashes = self
            .entries
            .iter()
            .filter(|(version, _)| *version > since)
            .flat_map(|(_, hashes)| hashes)
            .filter(|hash| seen.insert(**hash))
            .copied()
            .collect();
        Since::Changed(self.version, hashes)
    }
}

/// A long-poll being held.
struct Held {
    request: Request,
    since: u64,
    until: Instant,
}

struct State {
    log: Log,
    held: Vec<Held>,
}

/// The feed of one `keygate serve` process.
pub struct Feed {
    epoch: String,
    state: Mutex<State>,
    /// Signalled when a reload makes a new version, and when a long-poll is handed over.
    wake: Condvar,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while holding this lock; if something did, the state is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's query, read.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub since: Option<u64>,
    pub epoch: Option<&'a str>,
    pub wait: u64,
}

pub fn parse_query(query: &str) -> Result<Query<'_>, String> {
    let mut parsed = Query {
        since: None,
        epoch: None,
        wait: 0,
    };
    let number = |name: &str, value: &str| {
        (!value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| format!("{name} must be a decimal integer"))
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "since" => parsed.since = Some(number("since", value)?),
            "epoch" => parsed.epoch = Some(value),
            "wait" => parsed.wait = number("wait", value)?.min(MAX_WAIT_SECONDS),
            _ => {}
        }
    }
    Ok(parsed)
}

fn json_response(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_data(body.into_bytes()).with_status_code(StatusCode(status));
    if let Ok(header) = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        response.add_header(header);
    }
    if let Ok(header) = Header::from_bytes(&b"Cache-Control"[..], &b"no-store"[..]) {
        response.add_header(header);
    }
    response
}

fn error(status: u16, error: &str, description: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::json!({"error": error, "error_description": description});
    json_response(status, format!("{body}\n"))
}

impl Feed {
    pub fn new() -> Feed {
        let mut bytes = [0u8; 16];
        // Without the OS's randomness, the clock: an epoch must differ between processes.
        let epoch = match getrandom::fill(&mut bytes) {
            Ok(()) => hex::encode(bytes),
            Err(_) => format!(
                "t{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
        };
        Feed::with_epoch(epoch, MAX_LOG_HASHES)
    }

    pub fn with_epoch(epoch: String, max_hashes: usize) -> Feed {
        Feed {
            epoch,
            state: Mutex::new(State {
                log: Log::new(max_hashes),
                held: Vec::new(),
            }),
            wake: Condvar::new(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn version(&self) -> u64 {
        lock(&self.state).log.version()
    }

    /// The hook of a reload: records what changed and answers the long-polls it concerns.
    pub fn reloaded(&self, changed: Vec<KeyHash>) {
        if lock(&self.state).log.record(changed) {
            self.wake.notify_all();
        }
    }

    fn body(&self, version: u64, hashes: &[KeyHash]) -> String {
        let hashes: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
        let body = serde_json::json!({
            "version": version.to_string(),
            "epoch": self.epoch,
            "hashes": hashes,
        });
        format!("{body}\n")
    }

    /// What to answer `since` now; `None`: nothing new yet.
    fn answer_now(&self, log: &Log, since: u64) -> Option<Response<std::io::Cursor<Vec<u8>>>> {
        match log.since(since) {
            Since::Current => None,
            Since::Changed(version, hashes) => {
                Some(json_response(200, self.body(version, &hashes)))
            }
            Since::Gone => Some(error(
                410,
                "gone",
                "the version asked from is older than the changes kept, or unknown: start over \
                 without since",
            )),
        }
    }

    /// Answers `GET /v1/changes?query`, or hands the request to the holding thread.
    pub fn handle(&self, request: Request, query: &str, long_poll: bool) {
        let query = match parse_query(query) {
            Ok(query) => query,
            Err(why) => {
                let _ = request.respond(error(400, "invalid_request", &why));
                return;
            }
        };
        let mut state = lock(&self.state);
        let since = match (query.since, query.epoch) {
            (Some(since), Some(epoch)) if since > 0 && epoch == self.epoch => since,
            // A first call, or one from another epoch: the current version, at once.
            _ => {
                let body = self.body(state.log.version(), &[]);
                drop(state);
                let _ = request.respond(json_response(200, body));
                return;
            }
        };
        if let Some(response) = self.answer_now(&state.log, since) {
            drop(state);
            let _ = request.respond(response);
            return;
        }
        if query.wait == 0 || !long_poll {
            drop(state);
            let _ = request.respond(Response::empty(304));
            return;
        }
        if state.held.len() >= MAX_HELD {
            drop(state);
            let mut response = error(
                503,
                "busy",
                "too many long-polls held at once; retry shortly",
            );
            if let Ok(header) = Header::from_bytes(&b"Retry-After"[..], &b"1"[..]) {
                response.add_header(header);
            }
            let _ = request.respond(response);
            return;
        }
        state.held.push(Held {
            request,
            since,
            until: Instant::now() + Duration::from_secs(query.wait),
        });
        drop(state);
        self.wake.notify_all();
    }

    /// The thread that holds the long-polls: answers each when a reload brings something
    /// newer than its `since`, or with 304 when its wait is over. `refresh` looks at the
    /// key file (a reload calls [`Feed::reloaded`]); it runs every 100 ms while any
    /// long-poll is held, never with the lock taken.
    pub fn hold(self: Arc<Self>, refresh: impl Fn()) {
        loop {
            {
                let state = lock(&self.state);
                let state = if state.held.is_empty() {
                    self.wake
                        .wait_while(state, |s| s.held.is_empty())
                        .unwrap_or_else(PoisonError::into_inner)
                } else {
                    let now = Instant::now();
                    let next = state
                        .held
                        .iter()
                        .map(|h| h.until.saturating_duration_since(now))
                        .min()
                        .unwrap_or(RELOAD_CHECK)
                        .min(RELOAD_CHECK);
                    self.wake
                        .wait_timeout(state, next)
                        .map(|(s, _)| s)
                        .unwrap_or_else(|e| e.into_inner().0)
                };
                drop(state);
            }
            refresh();
            let answers = self.due(Instant::now());
            for (request, response) in answers {
                let _ = request.respond(response);
            }
        }
    }

    /// Takes the long-polls that can be answered now, with their answers.
    fn due(&self, now: Instant) -> Vec<(Request, Response<std::io::Cursor<Vec<u8>>>)> {
        let mut state = lock(&self.state);
        let State { log, held } = &mut *state;
        let mut answers = Vec::new();
        let mut still = Vec::with_capacity(held.len());
        for h in held.drain(..) {
            match self.answer_now(log, h.since) {
                Some(response) => answers.push((h.request, response)),
                None if now >= h.until => answers.push((
                    h.request,
                    Response::from_data(Vec::new()).with_status_code(304),
                )),
                None => still.push(h),
            }
        }
        *held = still;
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str) -> KeyHash {
        KeyHash::of_key(key)
    }

    struct Set(Vec<(KeyHash, &'static [u8])>);

    impl Records for Set {
        fn hashes(&self) -> Vec<KeyHash> {
            self.0.iter().map(|(h, _)| *h).collect()
        }
        fn text(&self, hash: &KeyHash) -> Option<&[u8]> {
            self.0.iter().find(|(h, _)| h == hash).map(|(_, t)| *t)
        }
    }

    #[test]
    fn a_reload_changes_the_keys_added_removed_or_rewritten() {
        let old = Set(vec![(h("a"), b"a1"), (h("b"), b"b1"), (h("c"), b"c1")]);
        let new = Set(vec![(h("a"), b"a1"), (h("b"), b"b2"), (h("d"), b"d1")]);
        let mut changed = diff(&old, &new);
        changed.sort_by_key(KeyHash::to_hex);
        let mut expected = vec![h("b"), h("c"), h("d")];
        expected.sort_by_key(KeyHash::to_hex);
        assert_eq!(changed, expected);
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn the_log_answers_what_changed_since() {
        let mut log = Log::new(100);
        assert_eq!(log.version(), 1);
        assert_eq!(log.since(1), Since::Current);
        assert!(!log.record(vec![]), "nothing changed: no new version");
        assert!(log.record(vec![h("a"), h("b")]));
        assert!(log.record(vec![h("b"), h("c")]));
        assert_eq!(log.since(3), Since::Current);
        assert_eq!(log.since(2), Since::Changed(3, vec![h("b"), h("c")]));
        assert_eq!(
            log.since(1),
            Since::Changed(3, vec![h("a"), h("b"), h("c")]),
            "each key once"
        );
        assert_eq!(log.since(4), Since::Gone, "a version never given");
        assert_eq!(log.since(0), Since::Gone);
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = Log::new(3);
        log.record(vec![h("a"), h("b")]); // 2
        log.record(vec![h("c")]); // 3
        log.record(vec![h("d")]); // 4: "a" and "b" go
        assert_eq!(log.since(1), Since::Gone);
        assert_eq!(log.since(2), Since::Changed(4, vec![h("c"), h("d")]));
        log.record(vec![h("e"), h("f"), h("g"), h("i")]); // 5: alone over the bound
        assert_eq!(log.since(4), Since::Gone);
        assert_eq!(log.since(5), Since::Current);
    }

    #[test]
    fn queries_are_read_strictly() {
        assert_eq!(
            parse_query("since=12&epoch=ab12&wait=25&x=1"),
            Ok(Query {
                since: Some(12),
                epoch: Some("ab12"),
                wait: 25
            })
        );
        assert_eq!(parse_query("wait=600").unwrap().wait, 60);
        assert_eq!(
            parse_query(""),
            Ok(Query {
                since: None,
                epoch: None,
                wait: 0
            })
        );
        for bad in [
            "since=-1",
            "since=",
            "wait=1.5",
            "since=99999999999999999999",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
