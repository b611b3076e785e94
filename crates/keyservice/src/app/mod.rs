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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tower_http::timeout::TimeoutLayer;

mod admin;
mod admin_auth;
mod console;
mod gateway;
mod usage;

use admin::{
    audit, create_key, get_key, list_keys, policy, revoke_key, revoke_owner, rotate_key, update_key,
};
use admin_auth::Admin;
pub use gateway::Gateway;
use gateway::{key_by_hash, keyset, readyz};
use usage::usage;

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
    /// The same for the key set's incremental sync (`/v1/keyset?since=`).
    pub(crate) key_set_memo: tokio::sync::Mutex<Option<crate::changes::Memo>>,
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
            key_set_memo: tokio::sync::Mutex::new(None),
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
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route(
            "/v1/keys/{hash}",
            get(key_by_hash).fallback(gateway_method_not_allowed),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/v1/usage", post(usage).fallback(usage_method_not_allowed));
    if app.admin.is_some() {
        let admin = Router::new()
            .route(
                "/v1/admin/keys",
                post(create_key).get(list_keys).delete(revoke_owner),
            )
            .route(
                "/v1/admin/keys/{id}",
                get(get_key).patch(update_key).delete(revoke_key),
            )
            .route("/v1/admin/keys/{id}/rotate", post(rotate_key))
            .route("/v1/admin/audit", get(audit))
            .route("/v1/admin/policy", get(policy))
            .layer(axum::middleware::map_response(console::no_store));
        router = console::routes(router.merge(admin));
    }
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // After the timeout layer: a long-poll may be held for up to 60 s (the key set
        // without the query keeps the timeout: see `keyset`).
        .route(
            "/v1/keyset",
            get(keyset).fallback(gateway_method_not_allowed),
        )
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
    method_not_allowed("use GET or HEAD", "GET, HEAD")
}

async fn usage_method_not_allowed() -> Response {
    method_not_allowed("use POST", "POST")
}

/// 405 saying `what` to use, with `Allow: allow`.
fn method_not_allowed(what: &'static str, allow: &'static str) -> Response {
    let mut response =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", what).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
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

#[cfg(test)]
mod tests;
