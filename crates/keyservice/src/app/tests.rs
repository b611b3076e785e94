use super::admin_auth::throttle_delay;
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

/// An app in db mode (no client certificate asked for) and its admin key's
/// `Authorization` value; the directory holds the database.
fn admin_app() -> (tempfile::TempDir, Router, String) {
    let dir = tempfile::tempdir().unwrap();
    let (router, admin) = app(&dir, false);
    (dir, router, format!("Bearer {admin}"))
}

/// `POST /v1/admin/keys` for alice with the scope `browse`.
async fn create_alice(
    router: &Router,
    auth: &[(&str, &str)],
    peer: Option<Peer>,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let body = r#"{"owner":"alice","scopes":["browse"]}"#;
    call(router, "POST", "/v1/admin/keys", auth, body, peer).await
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
    let (_dir, router, bearer) = admin_app();
    let auth = [("authorization", bearer.as_str())];
    let (status, headers, body) = create_alice(&router, &auth, peer(false)).await;
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
    let (_dir, router, bearer) = admin_app();
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
    let (status, _, created) = create_alice(&router, &auth, None).await;
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
    let (status, headers, body) = call(&router, "GET", "/v1/admin/keys", &[], "", peer(true)).await;
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
