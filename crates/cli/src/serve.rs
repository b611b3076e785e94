//! `keygate serve`: the key-service endpoints (README "`keygate serve`") over keys.json.
//!
//! - `GET /v1/keyset`: the file as it is, with a strong `ETag` (sha256 of the bytes);
//!   `If-None-Match` → 304.
//! - `GET /v1/keys/{hash}`: the record whose hash that is, as written in the file; 404 when
//!   there is none, 400 when `{hash}` is not 64 lowercase hex characters.
//! - `GET /v1/changes?since=V&epoch=E&wait=S`: the keys changed since version `V`, for
//!   `lookup` mode's watch; see changes.rs.
//! - HEAD too; other methods 405, other paths 404.
//!
//! The file is parsed once and kept with its tag and a hash index; each request only
//! compares the file's metadata with what was loaded, so a million-key file costs one
//! `stat` per request until it changes. A file that turns invalid (or disappears) while
//! running is logged once and the last good set is served; one that is invalid at start
//! is refused.

use crate::changes::{self, Feed};
use crate::error::{Error, Result};
use crate::etag;
use keygate_core::record::{KeyHash, KeySetDoc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use tiny_http::{Header, Method, Request, Response, StatusCode};

/// What identifies one version of the file on disk without reading it. `keygate` replaces
/// the file by renaming, which changes the inode even when size and mtime look the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        }
    }
}

/// Bytes shared by the snapshot and the responses being sent from it.
#[derive(Clone)]
struct Body {
    bytes: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Body {
    fn owned(bytes: Vec<u8>) -> Body {
        let range = 0..bytes.len();
        Body {
            bytes: Arc::new(bytes),
            range,
        }
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(self.range.clone()).unwrap_or_default()
    }
}

/// One good version of the file.
struct Snapshot {
    stamp: Stamp,
    body: Arc<Vec<u8>>,
    etag: String,
    version: Option<String>,
    /// Where each record's text is in `body`.
    by_hash: HashMap<KeyHash, Range<usize>>,
}

#[derive(Deserialize)]
struct RawRecords<'a> {
    #[serde(borrow)]
    keys: Vec<&'a RawValue>,
}

impl Snapshot {
    fn load(path: &Path) -> Result<Snapshot> {
        let mut file =
            File::open(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
        // The stamp of the very file read, so a change during the read is seen next time.
        let stamp = file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
        // The filter's own checks: never serve a set the filter would refuse.
        let doc = KeySetDoc::parse(&bytes).map_err(|problems| Error::each_at(path, &problems))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::at(path, e))?;
        let raw: RawRecords = serde_json::from_str(text).map_err(|e| Error::at(path, e))?;
        let start = text.as_ptr() as usize;
        let mut by_hash = HashMap::with_capacity(doc.keys.len());
        for (record, raw) in doc.keys.iter().zip(raw.keys) {
            let at = raw.get().as_ptr() as usize - start;
            by_hash.insert(record.hash, at..at + raw.get().len());
        }
        Ok(Snapshot {
            stamp,
            etag: etag::of(&bytes),
            body: Arc::new(bytes),
            version: doc.version,
            by_hash,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} keys, version {}",
            self.by_hash.len(),
            self.version.as_deref().unwrap_or("(none)")
        )
    }

    fn record(&self, hash: &KeyHash) -> Option<Body> {
        self.by_hash.get(hash).map(|range| Body {
            bytes: self.body.clone(),
            range: range.clone(),
        })
    }
}

impl changes::Records for Snapshot {
    fn hashes(&self) -> Vec<KeyHash> {
        self.by_hash.keys().copied().collect()
    }

    fn text(&self, hash: &KeyHash) -> Option<&[u8]> {
        self.by_hash
            .get(hash)
            .and_then(|range| self.body.get(range.clone()))
    }
}

struct State {
    current: Arc<Snapshot>,
    /// The file as last examined, good or not (`None`: it could not be examined), so a
    /// bad file is reported once, not on every request.
    seen: Option<Stamp>,
}

struct KeyService {
    path: PathBuf,
    state: Mutex<State>,
    /// Held by the one thread that reloads; the others keep answering from the current
    /// snapshot meanwhile.
    reloading: Mutex<()>,
    /// What each reload changed, for `/v1/changes`.
    feed: Arc<Feed>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the state is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeyService {
    fn snapshot(&self) -> Arc<Snapshot> {
        let observed = std::fs::metadata(&self.path);
        let observed_stamp = observed.as_ref().ok().map(Stamp::of);
        let current = {
            let state = lock(&self.state);
            if state.seen == observed_stamp {
                return state.current.clone();
            }
            state.current.clone()
        };
        let Ok(_reloading) = self.reloading.try_lock() else {
            return current;
        };
        let mut state = lock(&self.state);
        if state.seen == observed_stamp {
            return state.current.clone();
        }
        let path = self.path.display();
        let still = || {
            format!(
                "still serving the last good key set ({})",
                current.describe()
            )
        };
        match observed {
            Err(e) => {
                eprintln!("keygate serve: {path}: cannot read: {e}; {}", still());
                state.seen = None;
            }
            // The file is read without the state locked: other requests are answered
            // from the current snapshot meanwhile.
            Ok(_) => {
                drop(state);
                let loaded = Snapshot::load(&self.path);
                // Reloads take turns (`reloading`): `current` is still the one in force.
                let changed = match &loaded {
                    // The same bytes (a file touched or rewritten as it was): nothing changed.
                    Ok(snapshot) if snapshot.etag != current.etag => {
                        changes::diff(&*current, snapshot)
                    }
                    _ => Vec::new(),
                };
                state = lock(&self.state);
                match loaded {
                    Ok(snapshot) => {
                        eprintln!(
                            "keygate serve: {path}: reloaded: {}, {} key(s) changed",
                            snapshot.describe(),
                            changed.len()
                        );
                        state.seen = Some(snapshot.stamp);
                        state.current = Arc::new(snapshot);
                        // Only once the new records are served: a filter told of a change
                        // asks again and must get the new record.
                        self.feed.reloaded(changed);
                    }
                    Err(error) => {
                        for line in &error.lines {
                            eprintln!("keygate serve: {line}; {}", still());
                        }
                        state.seen = observed_stamp;
                    }
                }
            }
        }
        state.current.clone()
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(status: u16, headers: Vec<Option<Header>>, body: Body) -> Response<Cursor<Body>> {
    let len = body.as_ref().len();
    Response::new(
        StatusCode(status),
        headers.into_iter().flatten().collect(),
        Cursor::new(body),
        Some(len),
        None,
    )
}

fn json_error(status: u16, error: &str, description: &str) -> Response<Cursor<Body>> {
    let body = serde_json::json!({"error": error, "error_description": description});
    respond(
        status,
        vec![header("Content-Type", "application/json")],
        Body::owned(format!("{body}\n").into_bytes()),
    )
}

fn answer(service: &KeyService, request: &Request) -> Response<Cursor<Body>> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        let mut response = json_error(405, "method_not_allowed", "use GET or HEAD");
        if let Some(allow) = header("Allow", "GET, HEAD") {
            response.add_header(allow);
        }
        return response;
    }
    let url = request.url();
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if path == "/v1/keyset" {
        let snapshot = service.snapshot();
        let if_none_match = request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("If-None-Match"))
            .map(|h| h.value.as_str());
        let etag = header("ETag", &snapshot.etag);
        if etag::none_match(if_none_match, &snapshot.etag) {
            return respond(304, vec![etag], Body::owned(Vec::new()));
        }
        let len = snapshot.body.len();
        return respond(
            200,
            vec![
                header("Content-Type", "application/json"),
                etag,
                header("Cache-Control", "no-cache"),
            ],
            Body {
                bytes: snapshot.body.clone(),
                range: 0..len,
            },
        );
    }
    if let Some(hash) = path.strip_prefix("/v1/keys/") {
        let Ok(hash) = KeyHash::parse_hex(hash) else {
            return json_error(
                400,
                "invalid_request",
                "the path must end with a key hash: 64 lowercase hex characters",
            );
        };
        return match service.snapshot().record(&hash) {
            Some(record) => respond(
                200,
                vec![header("Content-Type", "application/json")],
                record,
            ),
            None => json_error(404, "not_found", "no key with this hash"),
        };
    }
    json_error(
        404,
        "not_found",
        "no such endpoint: use /v1/keyset, /v1/keys/{hash} or /v1/changes",
    )
}

/// `/v1/changes` is answered by the feed (changes.rs), which may hold the request; any
/// other request is handed back.
fn changes_hook(service: &KeyService, request: Request) -> Option<Request> {
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let method = request.method().clone();
    if path != "/v1/changes" || !matches!(method, Method::Get | Method::Head) {
        return Some(request);
    }
    let query = query.to_string();
    // Any reload first, so that the answer is as of the file now.
    service.snapshot();
    service
        .feed
        .handle(request, &query, matches!(method, Method::Get));
    None
}

fn work(service: &KeyService, server: &tiny_http::Server) {
    loop {
        match server.recv() {
            // A client that left before its answer was sent needs nothing more.
            Ok(request) => {
                let Some(request) = changes_hook(service, request) else {
                    continue;
                };
                let response = answer(service, &request);
                let _ = request.respond(response);
            }
            Err(e) => eprintln!("keygate serve: cannot accept a connection: {e}"),
        }
    }
}

/// Serves until the process is stopped (SIGINT, SIGTERM: nothing to save on the way out).
pub fn run(keys: &Path, listen: &str, threads: usize) -> Result<()> {
    let snapshot = Snapshot::load(keys)?;
    let server = tiny_http::Server::http(listen)
        .map_err(|e| Error::new(format!("--listen {listen}: cannot listen: {e}")))?;
    let address = match server.server_addr().to_ip() {
        Some(address) => address.to_string(),
        None => listen.to_string(),
    };
    eprintln!(
        "keygate serve: listening on http://{address} ({}: {})",
        keys.display(),
        snapshot.describe()
    );
    let service = Arc::new(KeyService {
        path: keys.to_path_buf(),
        state: Mutex::new(State {
            seen: Some(snapshot.stamp),
            current: Arc::new(snapshot),
        }),
        reloading: Mutex::new(()),
        feed: Arc::new(Feed::new()),
    });
    eprintln!(
        "keygate serve: change feed: epoch {}, version {}",
        service.feed.epoch(),
        service.feed.version()
    );
    {
        let service = service.clone();
        let feed = service.feed.clone();
        std::thread::spawn(move || {
            feed.hold(move || {
                service.snapshot();
            })
        });
    }
    let server = Arc::new(server);
    for _ in 1..threads.max(1) {
        let service = service.clone();
        let server = server.clone();
        std::thread::spawn(move || work(&service, &server));
    }
    work(&service, &server);
    Ok(())
}
