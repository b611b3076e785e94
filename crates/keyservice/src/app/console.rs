//! The web console (README "Web console"): one HTML page, one stylesheet and one script,
//! compiled into the binary and served at `/console` in db mode. The page talks to the
//! admin API with the admin key the user pastes (kept in the tab's `sessionStorage`).

use super::*;

const PAGE: &str = include_str!("../../console/index.html");
const STYLE: &str = include_str!("../../console/console.css");
const SCRIPT: &str = include_str!("../../console/console.js");

/// Nothing but the page's own files: no inline script or style, no other origin, no
/// framing, no form posted elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes: `/console` (and `/console/`), its stylesheet and its script.
pub(super) fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/console.css", get(style))
        .route("/console/console.js", get(script))
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(headers);
    response
}

/// The headers of every console file: the page shows keys, so nothing of it is cached,
/// framed, sniffed or sent on as a referrer.
fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Admin API answers are not cached either (keys, owners, the audit trail): `no-store`
/// unless the handler said otherwise.
pub(super) async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
