//! The gateway endpoints: `/v1/keyset`, `/v1/keys/{hash}`, and `/readyz`.

use super::*;

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

pub(super) async fn keyset(
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

pub(super) async fn key_by_hash(
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

pub(super) async fn readyz(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let store = app.gateway.clone();
    blocking(move || store.ready()).await?;
    Ok(Json(json!({"status": "ready"})))
}
