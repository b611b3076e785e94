//! The HTTP app (README "The key service"): the gateway endpoints, health, usage, and in
//! db mode the admin API. Errors are `{"error","error_description"}`.

use crate::duration::Lifetime;
use crate::etag;
use crate::secret;
use crate::store::*;
use crate::usage_file::UsageFile;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use keygate_core::header::HeaderText;
use keygate_core::record::KeyHash;
use keygate_core::scope::Scope;
use keygate_core::timestamp::Timestamp;
use keygate_core::usage::UsageReport;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tower_http::timeout::TimeoutLayer;

/// The largest admin request body.
pub const ADMIN_BODY_LIMIT: usize = 64 * 1024;
/// The largest usage report body: 10 000 entries are about 1.4 MB.
pub const USAGE_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Who is on the other end of a connection, set by the server for every request.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// A client certificate was presented and verified against `--client-ca`.
    pub client_cert: bool,
}

/// Failed admin authentications from one address.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    /// The earliest time the next attempt from there is looked at: attempts are taken one
    /// at a time, `throttle_delay(count)` apart, so parallel guesses wait in line too.
    next_slot: Instant,
}

pub struct App {
    pub gateway: Arc<dyn GatewayStore>,
    /// Db mode only.
    pub admin: Option<Arc<dyn AdminStore>>,
    /// `--client-ca` given: the gateway endpoints need a verified client certificate.
    pub require_client_cert: bool,
    /// File mode: where usage reports are kept (db mode keeps them in `admin`).
    pub usage_file: Option<Arc<UsageFile>>,
    throttle: Mutex<HashMap<IpAddr, Failures>>,
    /// Long-polls of the change feed held now (changes.rs).
    pub(crate) held: AtomicUsize,
    /// Wakes the task that has the store look for changes while long-polls are held.
    pub(crate) refresh_wake: Notify,
    pub(crate) refresher_started: AtomicBool,
    /// Set when the server stops: held long-polls answer at once.
    pub(crate) stopping: watch::Sender<bool>,
    /// The answer shared by the long-polls one change woke.
    pub(crate) feed_memo: tokio::sync::Mutex<Option<crate::changes::Memo>>,
}

impl App {
    pub fn new(
        gateway: Arc<dyn GatewayStore>,
        admin: Option<Arc<dyn AdminStore>>,
        require_client_cert: bool,
    ) -> App {
        App {
            gateway,
            admin,
            require_client_cert,
            usage_file: None,
            throttle: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            refresh_wake: Notify::new(),
            refresher_started: AtomicBool::new(false),
            stopping: watch::channel(false).0,
            feed_memo: tokio::sync::Mutex::new(None),
        }
    }

    /// File mode: `POST /v1/usage` is kept in `usage` (keys.usage.json).
    pub fn with_usage_file(mut self, usage: Arc<UsageFile>) -> App {
        self.usage_file = Some(usage);
        self
    }

    /// The server is stopping: long-polls held answer 304 now rather than at the end of
    /// their wait.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            error,
            description: description.into(),
        }
    }
    pub(crate) fn bad(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
    fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: {problem}"),
        )
    }
    fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", description)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("no key with this id"),
            StoreError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "conflict", why),
            StoreError::Unavailable(why) => {
                eprintln!("keygate serve: {why}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store cannot be read or written now",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
            );
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Runs a blocking store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(StoreError::Unavailable(format!("store task failed: {e}")).into()),
    }
}

/// A request (body included) is answered within this, or gets 408; long-polls of the
/// change feed are bounded by their own wait instead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(app: Arc<App>) -> Router {
    let keyset = get(keyset).fallback(gateway_method_not_allowed);
    let mut router = Router::new()
        .route("/v1/keyset", keyset)
        .route(
            "/v1/keys/{hash}",
            get(key_by_hash).fallback(gateway_method_not_allowed),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/v1/usage", post(usage).fallback(usage_method_not_allowed));
    if app.admin.is_some() {
        router = router
            .route(
                "/v1/admin/keys",
                post(create_key).get(list_keys).delete(revoke_owner),
            )
            .route(
                "/v1/admin/keys/{id}",
                get(get_key).patch(update_key).delete(revoke_key),
            )
            .route("/v1/admin/keys/{id}/rotate", post(rotate_key))
            .route("/v1/admin/audit", get(audit));
    }
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // After the timeout layer: a long-poll may be held for up to 60 s.
        .route(
            "/v1/changes",
            get(crate::changes::changes).fallback(gateway_method_not_allowed),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
        .with_state(app)
}

async fn gateway_method_not_allowed() -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use GET or HEAD",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

async fn usage_method_not_allowed() -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use POST",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn not_found(uri: Uri) -> ApiError {
    let path = uri.path();
    if path.starts_with("/v1/keys/") {
        return bad_hash();
    }
    if path.starts_with("/v1/admin/") {
        return ApiError::not_found(
            "no such admin endpoint (the admin API is served with --db only)",
        );
    }
    ApiError::not_found("no such endpoint: use /v1/keyset, /v1/keys/{hash} or /v1/changes")
}

fn bad_hash() -> ApiError {
    ApiError::bad("the path must end with a key hash: 64 lowercase hex characters")
}

pub(crate) fn gateway_allowed(app: &App, peer: Option<Extension<Peer>>) -> ApiResult<()> {
    if app.require_client_cert && !peer.is_some_and(|Extension(p)| p.client_cert) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint needs a client certificate signed by the service's --client-ca",
        ));
    }
    Ok(())
}

async fn keyset(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    gateway_allowed(&app, peer)?;
    let store = app.gateway.clone();
    let set = blocking(move || store.key_set()).await?;
    let tag = HeaderValue::from_str(&set.etag).map_err(|e| ApiError::bad(e.to_string()))?;
    let if_none_match = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok());
    if etag::none_match(if_none_match, &set.etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, tag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from(set.body.clone()),
    )
        .into_response())
}

async fn key_by_hash(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    gateway_allowed(&app, peer)?;
    let hash = KeyHash::parse_hex(&hash).map_err(|_| bad_hash())?;
    let store = app.gateway.clone();
    match blocking(move || store.record(&hash)).await? {
        Some(record) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            record,
        )
            .into_response()),
        None => Err(ApiError::not_found("no key with this hash")),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let store = app.gateway.clone();
    blocking(move || store.ready()).await?;
    Ok(Json(json!({"status": "ready"})))
}

/// Reads a JSON body of at most `limit` bytes into `T`, naming the field at fault.
async fn json_body<T: DeserializeOwned>(body: Body, limit: usize) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes (or was not received in full)"),
        )
    })?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "body".to_string()
        } else {
            format!("body.{path}")
        };
        ApiError::bad(format!("{path}: {}", e.inner()))
    })?;
    de.end().map_err(|e| ApiError::bad(format!("body: {e}")))?;
    Ok(value)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))
}

/// `Some(None)` for an explicit `null`, `None` for an absent member.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---- admin authentication ----

const THROTTLE_FORGET: Duration = Duration::from_secs(15 * 60);

fn throttle_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// The admin store and who is acting (`admin:<id>`), from `Authorization: Bearer`.
/// Failures are logged (never with the presented key) and every later attempt from the
/// same address waits longer, up to 5 s, until one succeeds or 15 minutes pass.
async fn admin(
    app: &App,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
) -> ApiResult<(Arc<dyn AdminStore>, String)> {
    let store = app
        .admin
        .clone()
        .ok_or_else(|| ApiError::not_found("the admin API is served with --db only"))?;
    let ip = peer.map(|Extension(p)| p.addr.ip());
    let (failures, wait_until) = match ip {
        None => (None, None),
        Some(ip) => {
            let mut map = app.throttle.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            match map.get_mut(&ip) {
                Some(f) if f.last.elapsed() > THROTTLE_FORGET => {
                    map.remove(&ip);
                    (None, None)
                }
                Some(f) => {
                    let slot = f.next_slot.max(now);
                    f.next_slot = slot + throttle_delay(f.count);
                    (Some(f.count), Some(slot + throttle_delay(f.count)))
                }
                None => (None, None),
            }
        }
    };
    if let Some(until) = wait_until {
        tokio::time::sleep_until(until.into()).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let found = match presented {
        Some(token) => {
            let hash = secret::hash(token).to_hex();
            let s = store.clone();
            blocking(move || s.admin_key(&hash)).await?
        }
        None => None,
    };
    let who = ip.map_or("unknown".to_string(), |ip| ip.to_string());
    match found {
        Some(id) => {
            if let Some(ip) = ip {
                let mut map = app.throttle.lock().unwrap_or_else(PoisonError::into_inner);
                map.remove(&ip);
            }
            Ok((store, format!("admin:{id}")))
        }
        None => {
            let mut n = failures.unwrap_or(0).saturating_add(1);
            if let Some(ip) = ip {
                let mut map = app.throttle.lock().unwrap_or_else(PoisonError::into_inner);
                if map.len() > 100_000 {
                    map.retain(|_, f| f.last.elapsed() <= THROTTLE_FORGET);
                    if map.len() > 100_000 {
                        map.clear();
                    }
                }
                let now = Instant::now();
                let entry = map.entry(ip).or_insert(Failures {
                    count: 0,
                    last: now,
                    next_slot: now,
                });
                entry.count = entry.count.saturating_add(1);
                entry.last = now;
                n = entry.count;
            }
            let what = if presented.is_some() {
                "an unknown admin key"
            } else {
                "no bearer token"
            };
            eprintln!(
                "keygate serve: admin authentication failed from {who}: {what} (failure {n}; next attempt from there waits {} ms)",
                throttle_delay(n).as_millis()
            );
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "an admin key is needed: Authorization: Bearer <admin key>",
            ))
        }
    }
}

// ---- admin handlers ----

#[derive(Serialize)]
struct KeyView {
    id: String,
    hash: String,
    owner: String,
    label: Option<String>,
    scopes: Vec<String>,
    created_at: String,
    expires_at: Option<String>,
    status: Status,
    read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    last_used_at: Option<String>,
    uses: u64,
}

impl From<KeyRow> for KeyView {
    fn from(r: KeyRow) -> KeyView {
        KeyView {
            id: r.id,
            hash: r.hash,
            owner: r.owner,
            label: r.label,
            scopes: r.scopes,
            created_at: rfc3339(r.created_at),
            expires_at: r.expires_at.map(rfc3339),
            status: r.status,
            read_only: r.read_only,
            revoked_at: r.revoked_at.map(rfc3339),
            last_used_at: r.last_used_at.map(rfc3339),
            uses: r.uses,
        }
    }
}

fn key_id(id: &str) -> ApiResult<String> {
    if secret::is_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad(format!(
            "id: {:?} is not a key id (a lowercase UUID)",
            id.chars().take(64).collect::<String>()
        )))
    }
}

fn check_scopes(field: &str, scopes: &[String], policy: &Policy) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for (i, scope) in scopes.iter().enumerate() {
        Scope::parse(scope).map_err(|e| ApiError::field(&format!("{field}[{i}]"), e))?;
        if let Some(catalog) = &policy.scopes {
            if !catalog.contains(scope) {
                return Err(ApiError::field(
                    &format!("{field}[{i}]"),
                    format!(
                        "{scope:?} is not in the scope catalog ({})",
                        catalog.join(", ")
                    ),
                ));
            }
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

fn check_label(label: Option<String>) -> ApiResult<Option<String>> {
    match label {
        Some(l) if l.chars().count() > 200 || l.chars().any(char::is_control) => Err(
            ApiError::field("label", "at most 200 characters, no control characters"),
        ),
        other => Ok(other),
    }
}

fn lifetime(
    field: &str,
    text: Option<&str>,
    policy: &Policy,
    zero_ok: bool,
) -> ApiResult<Lifetime> {
    let Some(text) = text else {
        return Ok(policy.default_expiry);
    };
    let life = Lifetime::parse(text, zero_ok).map_err(|e| ApiError::field(field, e))?;
    if !zero_ok && !life.within(policy.max_expiry) {
        return Err(ApiError::field(
            field,
            format!(
                "{text:?} is beyond the policy's maximum expiry ({})",
                policy.max_expiry
            ),
        ));
    }
    Ok(life)
}

fn new_key_material() -> ApiResult<(String, String, String)> {
    let internal = |e: String| ApiError::from(StoreError::Unavailable(e));
    let raw = secret::new_key(secret::KEY_PREFIX).map_err(internal)?;
    let id = secret::new_id().map_err(internal)?;
    let hash = secret::hash(&raw).to_hex();
    Ok((raw, id, hash))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    owner: String,
    #[serde(default)]
    label: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    read_only: bool,
}

async fn create_key(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (store, actor) = admin(&app, peer, &headers).await?;
    let req: CreateRequest = json_body(body, ADMIN_BODY_LIMIT).await?;
    let owner = HeaderText::parse(&req.owner).map_err(|e| ApiError::field("owner", e))?;
    let s = store.clone();
    let policy = blocking(move || s.policy()).await?;
    let scopes = check_scopes("scopes", &req.scopes, &policy)?;
    let label = check_label(req.label)?;
    let life = lifetime("expires_in", req.expires_in.as_deref(), &policy, false)?;
    let (raw, id, hash) = new_key_material()?;
    let created_at = now();
    let key = NewKey {
        id,
        hash,
        owner: owner.as_str().to_string(),
        label,
        scopes,
        created_at,
        expires_at: life.expiry_from(created_at),
        read_only: req.read_only,
    };
    let row = blocking(move || store.create_key(&actor, key)).await?;
    Ok(issued(row, raw, None))
}

#[derive(Serialize)]
struct Issued {
    id: String,
    api_key: String,
    expires_at: Option<String>,
    /// After a rotation: the key this one replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<String>,
}

/// ImmPort's shape: the key, shown this once.
fn issued(row: KeyRow, api_key: String, replaces: Option<String>) -> Response {
    let body = Issued {
        id: row.id,
        api_key,
        expires_at: row.expires_at.map(rfc3339),
        replaces,
    };
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

#[derive(Serialize)]
struct KeyPage {
    keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    owner: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_keys(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<KeyPage>> {
    let (store, _) = admin(&app, peer, &headers).await?;
    let p = query(params)?;
    let status = p
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| {
                ApiError::bad(format!("status: {s:?}: use enabled, disabled or revoked"))
            })
        })
        .transpose()?;
    let limit = match p.limit {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit: {l:?}: use a number from 1 to 1000")))?,
    };
    let after = p
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|c| *c >= 0)
                .ok_or_else(|| ApiError::bad("cursor: not a cursor from a previous page"))
        })
        .transpose()?;
    let q = ListQuery {
        owner: p.owner,
        status,
        limit,
        after,
    };
    let page = blocking(move || store.list_keys(&q)).await?;
    Ok(Json(KeyPage {
        keys: page.keys.into_iter().map(KeyView::from).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

async fn get_key(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let (store, _) = admin(&app, peer, &headers).await?;
    let id = key_id(&id)?;
    let row = blocking(move || store.get_key(&id)).await?;
    Ok(Json(row.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    label: Option<Option<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
}

async fn update_key(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<KeyView>> {
    let (store, actor) = admin(&app, peer, &headers).await?;
    let id = key_id(&id)?;
    let req: PatchRequest = json_body(body, ADMIN_BODY_LIMIT).await?;
    if req.status.is_none()
        && req.label.is_none()
        && req.scopes.is_none()
        && req.expires_at.is_none()
    {
        return Err(ApiError::bad(
            "body: give at least one of status, label, scopes, expires_at",
        ));
    }
    let s = store.clone();
    let policy = blocking(move || s.policy()).await?;
    let status = req
        .status
        .map(|s| match Status::parse(&s) {
            Some(Status::Revoked) => Err(ApiError::field(
                "status",
                "to revoke a key, DELETE /v1/admin/keys/{id}",
            )),
            Some(status) => Ok(status),
            None => Err(ApiError::field(
                "status",
                format!("{s:?}: use enabled or disabled"),
            )),
        })
        .transpose()?;
    let scopes = req
        .scopes
        .map(|s| check_scopes("scopes", &s, &policy))
        .transpose()?;
    let label = match req.label {
        Some(l) => Some(check_label(l)?),
        None => None,
    };
    let expires_at = match req.expires_at {
        None => None,
        Some(text) => {
            let at = match text.as_deref() {
                None | Some("never") => None,
                Some(t) => Some(parse_rfc3339(t).map_err(|e| ApiError::field("expires_at", e))?),
            };
            let latest = policy.max_expiry.expiry_from(now());
            let beyond = match (at, latest) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(at), Some(latest)) => at > latest,
            };
            if beyond {
                return Err(ApiError::field(
                    "expires_at",
                    format!(
                        "beyond the policy's maximum expiry ({} from now)",
                        policy.max_expiry
                    ),
                ));
            }
            Some(at)
        }
    };
    let change = KeyChange {
        status,
        label,
        scopes,
        expires_at,
    };
    let row = blocking(move || store.update_key(&actor, &id, change)).await?;
    Ok(Json(row.into()))
}

async fn revoke_key(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let (store, actor) = admin(&app, peer, &headers).await?;
    let id = key_id(&id)?;
    let row = blocking(move || store.revoke_key(&actor, &id)).await?;
    Ok(Json(row.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerParams {
    owner: Option<String>,
}

async fn revoke_owner(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    params: Result<Query<OwnerParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let (store, actor) = admin(&app, peer, &headers).await?;
    let owner = query(params)?
        .owner
        .filter(|o| !o.is_empty())
        .ok_or_else(|| ApiError::bad("owner: DELETE /v1/admin/keys needs ?owner=NAME"))?;
    let who = owner.clone();
    let revoked = blocking(move || store.revoke_owner(&actor, &who)).await?;
    Ok(Json(json!({"owner": owner, "revoked": revoked})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    grace: Option<String>,
}

async fn rotate_key(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let (store, actor) = admin(&app, peer, &headers).await?;
    let id = key_id(&id)?;
    let req: RotateRequest = json_body(body, ADMIN_BODY_LIMIT).await?;
    let grace = match req.grace.as_deref() {
        None => Lifetime::Seconds(0),
        Some(text) => match Lifetime::parse(text, true) {
            Ok(Lifetime::Never) | Err(_) => {
                return Err(ApiError::field(
                    "grace",
                    format!("{text:?}: use a duration such as 0m, 1h or 24h"),
                ))
            }
            Ok(life) => life,
        },
    };
    let s = store.clone();
    let policy = blocking(move || s.policy()).await?;
    let (raw, new_id, hash) = new_key_material()?;
    let created_at = now();
    let new = NewKey {
        id: new_id,
        hash,
        owner: String::new(),
        label: None,
        scopes: Vec::new(),
        created_at,
        expires_at: policy.default_expiry.expiry_from(created_at),
        read_only: false,
    };
    let old_until = grace.expiry_from(created_at).unwrap_or(created_at);
    let old = id.clone();
    let row = blocking(move || store.rotate_key(&actor, &old, new, old_until)).await?;
    Ok(issued(row, raw, Some(id)))
}

#[derive(Serialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    since: Option<String>,
    limit: Option<String>,
}

async fn audit(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    let (store, _) = admin(&app, peer, &headers).await?;
    let p = query(params)?;
    let since = p
        .since
        .map(|s| parse_rfc3339(&s).map_err(|e| ApiError::bad(format!("since: {e}"))))
        .transpose()?;
    let limit = match p.limit {
        None => 1000,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit: {l:?}: use a number from 1 to 10000")))?,
    };
    let entries = blocking(move || store.audit(since, limit)).await?;
    Ok(Json(AuditPage { entries }))
}

// ---- usage (README "Usage (last used)") ----

/// `POST /v1/usage`, both modes: db mode adds to each key's `uses` and `last_used_at`
/// in the database, file mode in keys.usage.json. The report is checked as the core
/// reads it (400 naming the field); a time ahead of the service's clock is taken as now.
async fn usage(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    gateway_allowed(&app, peer)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a usage report is at most {USAGE_BODY_LIMIT} bytes"),
        )
    };
    // Refused for what it says it holds, before it is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > USAGE_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, USAGE_BODY_LIMIT)
        .await
        .map_err(|_| too_large())?;
    let report = UsageReport::parse(&bytes).map_err(|problems| {
        let described: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::bad(described.join("; "))
    })?;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    if let Some(store) = app.admin.clone() {
        let reports: Vec<Usage> = report
            .entries
            .iter()
            .map(|e| Usage {
                hash: e.hash.to_hex(),
                count: e.count,
                last_used_at: i64::try_from(
                    e.last_used.min(now).unix_nanos().div_euclid(1_000_000_000),
                )
                .unwrap_or(i64::MAX),
            })
            .collect();
        blocking(move || store.record_usage(&reports)).await?;
    } else if let Some(file) = app.usage_file.clone() {
        blocking(move || file.record(&report, now)).await?;
    } else {
        return Err(ApiError::not_found("this key service keeps no usage"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app(dir: &tempfile::TempDir, require_client_cert: bool) -> (Router, String) {
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).unwrap());
        let key = secret::new_key(secret::ADMIN_PREFIX).unwrap();
        store
            .add_admin_key("test", "adm", &secret::hash(&key).to_hex(), None)
            .unwrap();
        let app = App::new(store.clone(), Some(store), require_client_cert);
        (router(Arc::new(app)), key)
    }

    async fn call(
        router: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
        peer: Option<Peer>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let mut req = req.body(Body::from(body.to_string())).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    fn peer(client_cert: bool) -> Option<Peer> {
        Some(Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            client_cert,
        })
    }

    #[test]
    fn delays_grow_and_are_capped() {
        assert_eq!(throttle_delay(1), Duration::from_millis(200));
        assert_eq!(throttle_delay(2), Duration::from_millis(400));
        assert_eq!(throttle_delay(100), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn created_keys_are_served_and_etags_answer_304() {
        let dir = tempfile::tempdir().unwrap();
        let (router, admin) = app(&dir, false);
        let bearer = format!("Bearer {admin}");
        let auth = [("authorization", bearer.as_str())];
        let (status, headers, body) = call(
            &router,
            "POST",
            "/v1/admin/keys",
            &auth,
            r#"{"owner":"alice","scopes":["browse"]}"#,
            peer(false),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let key = body["api_key"].as_str().unwrap();
        let hash = secret::hash(key).to_hex();
        let (status, _, record) = call(
            &router,
            "GET",
            &format!("/v1/keys/{hash}"),
            &[],
            "",
            peer(false),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(record["owner"], "alice");
        let (_, headers, set) = call(&router, "GET", "/v1/keyset", &[], "", None).await;
        assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        let tag = headers[header::ETAG].to_str().unwrap().to_string();
        let (status, _, _) = call(
            &router,
            "GET",
            "/v1/keyset",
            &[("if-none-match", &tag)],
            "",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn held_long_polls_are_answered_by_the_change_that_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (router, admin) = app(&dir, false);
        let bearer = format!("Bearer {admin}");
        let auth = [("authorization", bearer.as_str())];
        let (_, _, base) = call(&router, "GET", "/v1/changes", &[], "", None).await;
        let epoch = base["epoch"].as_str().unwrap().to_string();
        assert_eq!(base["version"], "0");
        let polls: Vec<_> = (0..200)
            .map(|_| {
                let router = router.clone();
                let uri = format!("/v1/changes?since=0&epoch={epoch}&wait=20");
                tokio::spawn(async move { call(&router, "GET", &uri, &[], "", None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, created) = call(
            &router,
            "POST",
            "/v1/admin/keys",
            &auth,
            r#"{"owner":"alice","scopes":["browse"]}"#,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let hash = secret::hash(created["api_key"].as_str().unwrap()).to_hex();
        let started = Instant::now();
        for poll in polls {
            let (status, headers, body) = poll.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
            assert_eq!(
                body,
                json!({"version": "1", "epoch": epoch, "hashes": [hash]})
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // A HEAD, or a wait of 0, is not held; nothing is held any more.
        let uri = format!("/v1/changes?since=1&epoch={epoch}&wait=20");
        let (status, _, _) = call(&router, "HEAD", &uri, &[], "", None).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let uri = format!("/v1/changes?since=2&epoch={epoch}&wait=20");
        let (status, _, body) = call(&router, "GET", &uri, &[], "", None).await;
        assert_eq!((status, &body["error"]), (StatusCode::GONE, &json!("gone")));
    }

    #[tokio::test]
    async fn client_certificates_and_admin_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (router, admin) = app(&dir, true);
        for p in [None, peer(false)] {
            let (status, _, body) = call(&router, "GET", "/v1/keyset", &[], "", p).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(body["error"], "forbidden");
        }
        let (status, _, _) = call(&router, "GET", "/v1/keyset", &[], "", peer(true)).await;
        assert_eq!(status, StatusCode::OK);
        // The change feed is a gateway endpoint too.
        let (status, _, body) = call(&router, "GET", "/v1/changes", &[], "", peer(false)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "forbidden");
        let (status, _, body) = call(&router, "GET", "/v1/changes", &[], "", peer(true)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"], "0");
        let (status, _, _) = call(&router, "GET", "/healthz", &[], "", None).await;
        assert_eq!(status, StatusCode::OK);
        // The admin API needs the admin key, not a client certificate.
        let (status, headers, body) =
            call(&router, "GET", "/v1/admin/keys", &[], "", peer(true)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(body["error"], "invalid_token");
        let bearer = format!("Bearer {admin}");
        let (status, _, body) = call(
            &router,
            "GET",
            "/v1/admin/keys",
            &[("authorization", &bearer)],
            "",
            peer(false),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["keys"], serde_json::json!([]));
    }
}
