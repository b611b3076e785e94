//! The gateway endpoints: `/v1/keyset`, `/v1/keys/{hash}`, and `/readyz`.

use super::*;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Method;

/// The app, for a gateway endpoint's handler: as an extractor it refuses (403) a peer
/// without a client certificate when the service asks for one (`--client-ca`), after the
/// extractors before it and before the body is read.
pub struct Gateway(pub Arc<App>);

impl FromRequestParts<Arc<App>> for Gateway {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Gateway, ApiError> {
        let peer = parts.extensions.get::<Peer>().copied().map(Extension);
        gateway_allowed(app, peer)?;
        Ok(Gateway(app.clone()))
    }
}

fn gateway_allowed(app: &App, peer: Option<Extension<Peer>>) -> ApiResult<()> {
    if app.require_client_cert && !peer.is_some_and(|Extension(p)| p.client_cert) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint needs a client certificate signed by the service's --client-ca",
        ));
    }
    Ok(())
}

/// `GET /v1/keyset`: the key set document with its ETag (`If-None-Match` → 304), as a
/// plain server serves it; with `since`, `epoch` or `wait` in the query, the incremental
/// sync (README "`keygate serve`", changes.rs): a delta, a full document with its epoch, or 304 after
/// the wait.
pub(super) async fn keyset(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Gateway(app): Gateway,
) -> ApiResult<Response> {
    let query = uri.query().unwrap_or("");
    if crate::changes::is_feed_query(query) {
        let query = crate::changes::parse_query(query).map_err(ApiError::bad)?;
        return crate::changes::long_poll(app, method, &query, crate::changes::Feed::KeySet).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, plain_keyset(headers, app)).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the key set was not read in time",
        )),
    }
}

async fn plain_keyset(headers: HeaderMap, app: Arc<App>) -> ApiResult<Response> {
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

pub(super) async fn key_by_hash(
    Path(hash): Path<String>,
    Gateway(app): Gateway,
) -> ApiResult<Response> {
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

pub(super) async fn readyz(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let store = app.gateway.clone();
    blocking(move || store.ready()).await?;
    Ok(Json(json!({"status": "ready"})))
}
