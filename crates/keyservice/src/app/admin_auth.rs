//! Admin authentication (`Authorization: Bearer`) and the throttling of failures.

use super::*;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

// ---- admin authentication ----

/// An authenticated admin: the admin store and who is acting (`admin:<id>`). As an
/// extractor it authenticates (`admin`) after the extractors before it and before the
/// body is read.
pub(super) struct Admin {
    pub(super) store: Arc<dyn AdminStore>,
    pub(super) actor: String,
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Admin, ApiError> {
        let peer = parts.extensions.get::<Peer>().copied().map(Extension);
        let (store, actor) = admin(app, peer, &parts.headers).await?;
        Ok(Admin { store, actor })
    }
}

pub(super) const THROTTLE_FORGET: Duration = Duration::from_secs(15 * 60);

pub(super) fn throttle_delay(failures: u32) -> Duration {
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
    let wait_until = match ip {
        None => None,
        Some(ip) => {
            let mut map = crate::lock(&app.throttle);
            let now = Instant::now();
            match map.get_mut(&ip) {
                Some(f) if f.last.elapsed() > THROTTLE_FORGET => {
                    map.remove(&ip);
                    None
                }
                Some(f) => {
                    let slot = f.next_slot.max(now);
                    f.next_slot = slot + throttle_delay(f.count);
                    Some(f.next_slot)
                }
                None => None,
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
                let mut map = crate::lock(&app.throttle);
                map.remove(&ip);
            }
            Ok((store, format!("admin:{id}")))
        }
        None => {
            // This client's failures in a row, this one included (1 without an address).
            let mut n = 1;
            if let Some(ip) = ip {
                let mut map = crate::lock(&app.throttle);
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
