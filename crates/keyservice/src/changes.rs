//! The change feed of `lookup` mode (README "Watching for changes"), in both modes:
//! `GET /v1/changes?since=V&epoch=E&wait=S` → `{"version","epoch","hashes":[...]}`.
//!
//! - The epoch is the store's ([`GatewayStore::feed_epoch`]): random per process in file
//!   mode, per database in db mode. A filter that sees another epoch drops every cached
//!   answer.
//! - No `since`, no `epoch`, or another epoch: 200 with the current version and no hashes,
//!   at once (a baseline). A `since` behind the current version: 200 with the hashes
//!   changed since, at once. The current one: the answer waits up to `wait` seconds (at
//!   most 60) for a change, then says 304. A `since` older than the changes kept, or a
//!   version the store never had, is 410.
//! - Long-polls are futures waiting on the store's `watch` channel, answered as soon as a
//!   change is served; at most [`MAX_HELD`] at once (503 past that). While any is held,
//!   one task asks the store every 100 ms to look for changes made behind its back (the
//!   key file replaced; another process writing the database).
//! - Thousands of long-polls woken by one change share one answer ([`Memo`]): the store
//!   is asked once, the body is built once. A long-poll made at the version last
//!   announced is held without asking the store.
//!
//! The key set's incremental sync (`GET /v1/keyset?since=V&epoch=E&wait=S`, README "`keygate serve`") is
//! the same long-poll ([`Feed::KeySet`]) over the same change log: a delta
//! `{"version","epoch","since","upsert","delete"}` instead of the hashes, and a full
//! document `{"version","epoch","keys"}` where the feed says 410 (or for a first call).

use crate::app::{blocking, ApiError, ApiResult, App, Gateway};
use crate::store::{GatewayStore, KeySetSince, Since};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use keygate_core::record::KeyHash;
use keygate_core::watch::Epoch;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Hashes a change log keeps at most (over every version it holds).
pub const MAX_LOG_HASHES: usize = 100_000;
/// Long-polls held at once at most.
pub const MAX_HELD: usize = 10_000;
/// The longest wait a client may ask for.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// How often the store looks for changes made behind its back while long-polls are held.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The change log of file mode, in memory: one version per reload that changed something.
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
    /// Starts at version 1.
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

    /// A reload changed these keys: a new version (answered), unless none changed.
    pub fn record(&mut self, changed: Vec<KeyHash>) -> Option<u64> {
        if changed.is_empty() {
            return None;
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
        Some(self.version)
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

/// A request's query, read.
#[derive(Debug, PartialEq, Eq)]
pub struct FeedQuery<'a> {
    pub since: Option<u64>,
    pub epoch: Option<&'a str>,
    pub wait: u64,
}

/// Whether a query asks for the incremental sync (names `since`, `epoch` or `wait`):
/// without, `/v1/keyset` answers as a plain server does.
/// Tells the long-polls held on `feed` that `version` is served; a version not newer than
/// the one announced changes nothing.
pub(crate) fn announce(feed: &tokio::sync::watch::Sender<u64>, version: u64) {
    feed.send_if_modified(|announced| {
        let newer = version > *announced;
        if newer {
            *announced = version;
        }
        newer
    });
}

pub fn is_feed_query(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        matches!(name, "since" | "epoch" | "wait")
    })
}

/// Reads `since`, `epoch` and `wait` (capped at [`MAX_WAIT_SECONDS`]); other parameters
/// are ignored.
pub fn parse_query(query: &str) -> Result<FeedQuery<'_>, String> {
    let mut parsed = FeedQuery {
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

fn changes_bytes(version: u64, epoch: &Epoch, hashes: &[KeyHash]) -> Bytes {
    let hashes: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
    let body = serde_json::json!({
        "version": version.to_string(),
        "epoch": epoch.as_str(),
        "hashes": hashes,
    });
    format!("{body}\n").into()
}

/// `{"version","epoch","since","upsert":[records],"delete":[hashes]}`: the records as
/// stored (the bytes `/v1/keys/{hash}` answers), not re-encoded.
fn delta_bytes(
    version: u64,
    epoch: &Epoch,
    since: u64,
    upsert: &[Bytes],
    delete: &[KeyHash],
) -> Bytes {
    let mut body = format!(
        "{{\"version\":\"{version}\",\"epoch\":{},\"since\":\"{since}\",\"upsert\":[",
        serde_json::Value::from(epoch.as_str())
    )
    .into_bytes();
    for (i, record) in upsert.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.extend_from_slice(b"],\"delete\":[");
    for (i, hash) in delete.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'"');
        body.extend_from_slice(hash.to_hex().as_bytes());
        body.push(b'"');
    }
    body.extend_from_slice(b"]}\n");
    body.into()
}

/// Which long-poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Feed {
    /// `/v1/changes`: the hashes changed.
    Changes,
    /// `/v1/keyset?since=`: a delta, or a full document.
    KeySet,
}

/// A 200's body (or 410), shared by the long-polls one change woke.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Json(Bytes),
    /// A body in pieces: a full key set around the stored document's `keys`, not copied.
    Chunks(Vec<Bytes>),
    Gone,
}

impl Reply {
    fn response(self) -> Response {
        match self {
            Reply::Json(body) => json_response(body),
            Reply::Chunks(chunks) => {
                let len = chunks.iter().map(Bytes::len).sum();
                json_response(axum::body::Body::new(ChunkedBody {
                    chunks: chunks.into(),
                    len,
                }))
            }
            Reply::Gone => gone(),
        }
    }
}

/// A body sent as the pieces it is made of.
struct ChunkedBody {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl http_body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.len = self.len.saturating_sub(chunk.len());
        }
        Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(u64::try_from(self.len).unwrap_or(u64::MAX))
    }
}

/// The full key set document of the incremental sync, `{"version","epoch","keys"}`, the
/// version being the feed's (in file mode, the file's own `version` is not it).
async fn full_key_set(store: &Arc<dyn GatewayStore>) -> ApiResult<Reply> {
    let s = store.clone();
    let (version, set) = blocking(move || s.key_set_at()).await?;
    let Some(keys) = set
        .body
        .get(set.keys_at.clone())
        .map(|_| set.body.slice(set.keys_at.clone()))
    else {
        return Err(crate::store::StoreError::Unavailable(
            "the key set's keys are not where they were found".into(),
        )
        .into());
    };
    let head = format!(
        "{{\"version\":\"{version}\",\"epoch\":{},\"keys\":",
        serde_json::Value::from(store.feed_epoch().as_str())
    );
    Ok(Reply::Chunks(vec![
        head.into(),
        keys,
        Bytes::from_static(b"}\n"),
    ]))
}

fn json_response(body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.into(),
    )
        .into_response()
}

fn gone() -> Response {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "the version asked from is older than the changes kept, or unknown: start over \
         without since",
    )
    .into_response()
}

/// The answer given to the long-polls at `since` woken by the announcement of
/// `announced`: the next ones woken by it take it as is.
pub struct Memo {
    since: u64,
    announced: u64,
    reply: Reply,
}

/// What to answer `since` now; `None`: nothing new yet.
async fn answer(store: &Arc<dyn GatewayStore>, feed: Feed, since: u64) -> ApiResult<Option<Reply>> {
    let s = store.clone();
    let epoch = store.feed_epoch();
    Ok(match feed {
        Feed::Changes => match blocking(move || s.changes_since(since)).await? {
            Since::Current => None,
            Since::Changed(version, hashes) => {
                Some(Reply::Json(changes_bytes(version, epoch, &hashes)))
            }
            Since::Gone => Some(Reply::Gone),
        },
        Feed::KeySet => match blocking(move || s.key_set_since(since)).await? {
            KeySetSince::Current => None,
            KeySetSince::Delta {
                version,
                upsert,
                delete,
            } => Some(Reply::Json(delta_bytes(
                version, epoch, since, &upsert, &delete,
            ))),
            KeySetSince::Gone => Some(full_key_set(store).await?),
        },
    })
}

/// What to answer a long-poll at `since` woken by `announced`; `None`: nothing new yet.
async fn answer_woken(
    app: &App,
    feed: Feed,
    since: u64,
    announced: u64,
) -> ApiResult<Option<Response>> {
    let mut memo = match feed {
        Feed::Changes => app.feed_memo.lock().await,
        Feed::KeySet => app.key_set_memo.lock().await,
    };
    if let Some(m) = memo
        .as_ref()
        .filter(|m| m.since == since && m.announced == announced)
    {
        return Ok(Some(m.reply.clone().response()));
    }
    let Some(reply) = answer(&app.gateway, feed, since).await? else {
        return Ok(None);
    };
    *memo = Some(Memo {
        since,
        announced,
        reply: reply.clone(),
    });
    Ok(Some(reply.response()))
}

fn not_modified() -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

/// One held long-poll: counted while it lives.
struct Held<'a>(&'a App);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

fn hold(app: &Arc<App>) -> ApiResult<Held<'_>> {
    if app.held.fetch_add(1, Ordering::SeqCst) >= MAX_HELD {
        app.held.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many long-polls held at once; retry shortly",
        ));
    }
    let held = Held(app);
    if !app.refresher_started.swap(true, Ordering::SeqCst) {
        tokio::spawn(refresher(app.clone()));
    }
    app.refresh_wake.notify_one();
    Ok(held)
}

/// While any long-poll is held, has the store look for changes made behind its back
/// every [`REFRESH_EVERY`] (a change found is announced on its `watch` channel).
async fn refresher(app: Arc<App>) {
    loop {
        while app.held.load(Ordering::SeqCst) == 0 {
            app.refresh_wake.notified().await;
        }
        tokio::time::sleep(REFRESH_EVERY).await;
        let store = app.gateway.clone();
        let _ = tokio::task::spawn_blocking(move || store.refresh()).await;
    }
}

/// `GET /v1/changes?since=V&epoch=E&wait=S` (HEAD answers at once, never held).
pub async fn changes(method: Method, uri: Uri, Gateway(app): Gateway) -> ApiResult<Response> {
    let query = parse_query(uri.query().unwrap_or("")).map_err(ApiError::bad)?;
    long_poll(app, method, &query, Feed::Changes).await
}

/// The long-poll of `feed` (HEAD answers at once, never held): at once when `since` is
/// behind (or missing, or of another epoch), else held up to `wait` seconds for a change,
/// then 304. Held long-polls count against [`MAX_HELD`] together, whichever the feed.
pub(crate) async fn long_poll(
    app: Arc<App>,
    method: Method,
    query: &FeedQuery<'_>,
    feed: Feed,
) -> ApiResult<Response> {
    let store = app.gateway.clone();
    let epoch = store.feed_epoch().clone();
    let since = match (query.since, query.epoch) {
        (Some(since), Some(asked)) if asked == epoch.as_str() => since,
        // A first call, or one from another epoch: the current version, at once.
        _ => {
            return Ok(match feed {
                Feed::Changes => {
                    let s = store.clone();
                    let version = blocking(move || s.feed_version()).await?;
                    json_response(changes_bytes(version, &epoch, &[]))
                }
                Feed::KeySet => full_key_set(&store).await?.response(),
            });
        }
    };
    let holding = query.wait > 0 && method != Method::HEAD;
    // Subscribed before the store is asked: a change made meanwhile is not missed.
    let mut versions = store.subscribe();
    let announced = *versions.borrow_and_update();
    // At the version last announced: nothing to ask the store (a change it has not
    // announced yet is announced to the long-poll, by a request or the refresher).
    if !(holding && since == announced) {
        if let Some(reply) = answer(&store, feed, since).await? {
            return Ok(reply.response());
        }
    }
    if !holding {
        return Ok(not_modified());
    }
    let _held = match hold(&app) {
        Ok(held) => held,
        Err(busy) => {
            let mut response = busy.into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(response);
        }
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(query.wait);
    let mut stopping = app.stopping.subscribe();
    let stop = async move {
        // The `Ref` it gives is not kept across an await.
        let _ = stopping.wait_for(|stop| *stop).await.is_ok();
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    // The store is gone (never while the app lives): wait out the wait.
                    tokio::time::sleep_until(until).await;
                    return Ok(not_modified());
                }
            }
            _ = tokio::time::sleep_until(until) => return Ok(not_modified()),
            // The server is stopping: nothing changed so far.
            () = &mut stop => return Ok(not_modified()),
        }
        let announced = *versions.borrow_and_update();
        if let Some(response) = answer_woken(&app, feed, since, announced).await? {
            return Ok(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str) -> KeyHash {
        KeyHash::of_key(key)
    }

    #[test]
    fn the_log_answers_what_changed_since() {
        let mut log = Log::new(100);
        assert_eq!(log.version(), 1);
        assert_eq!(log.since(1), Since::Current);
        assert_eq!(log.record(vec![]), None, "nothing changed: no new version");
        assert_eq!(log.record(vec![h("a"), h("b")]), Some(2));
        assert_eq!(log.record(vec![h("b"), h("c")]), Some(3));
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
            Ok(FeedQuery {
                since: Some(12),
                epoch: Some("ab12"),
                wait: 25
            })
        );
        assert_eq!(parse_query("wait=600").unwrap().wait, 60);
        assert_eq!(
            parse_query(""),
            Ok(FeedQuery {
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
