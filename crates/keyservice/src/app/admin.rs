//! The admin API (db mode): keys, owners, rotation and the audit log.

use super::*;

// ---- admin handlers ----

pub(super) fn key_id(id: &str) -> ApiResult<String> {
    if secret::is_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad(format!(
            "id: {:?} is not a key id (a lowercase UUID)",
            id.chars().take(64).collect::<String>()
        )))
    }
}

pub(super) fn check_scopes(
    field: &str,
    scopes: &[String],
    policy: &Policy,
) -> ApiResult<Vec<String>> {
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

pub(super) fn check_label(label: Option<String>) -> ApiResult<Option<String>> {
    match label {
        Some(l) if l.chars().count() > 200 || l.chars().any(char::is_control) => Err(
            ApiError::field("label", "at most 200 characters, no control characters"),
        ),
        other => Ok(other),
    }
}

pub(super) fn lifetime(
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

pub(super) fn new_key_material() -> ApiResult<(String, String, String)> {
    secret::new_material(secret::KEY_PREFIX).map_err(|e| ApiError::from(StoreError::Unavailable(e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    owner: String,
    #[serde(default)]
    label: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    read_only: bool,
}

pub(super) async fn create_key(Admin { store, actor }: Admin, body: Body) -> ApiResult<Response> {
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
pub(super) struct Issued {
    id: String,
    api_key: String,
    expires_at: Option<String>,
    /// After a rotation: the key this one replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<String>,
}

/// ImmPort's shape: the key, shown this once.
pub(super) fn issued(row: KeyRow, api_key: String, replaces: Option<String>) -> Response {
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
pub(super) struct KeyPage {
    keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    owner: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn list_keys(
    params: Result<Query<ListParams>, QueryRejection>,
    Admin { store, .. }: Admin,
) -> ApiResult<Json<KeyPage>> {
    let p = query(params)?;
    let status = p
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| {
                ApiError::bad(format!("status: {s:?}: use enabled, disabled or revoked"))
            })
        })
        .transpose()?;
    let limit = limit_param(p.limit, 100, 1000)?;
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

pub(super) async fn get_key(
    Path(id): Path<String>,
    Admin { store, .. }: Admin,
) -> ApiResult<Json<KeyView>> {
    let id = key_id(&id)?;
    let row = blocking(move || store.get_key(&id)).await?;
    Ok(Json(row.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchRequest {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    label: Option<Option<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
}

pub(super) async fn update_key(
    Path(id): Path<String>,
    Admin { store, actor }: Admin,
    body: Body,
) -> ApiResult<Json<KeyView>> {
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

pub(super) async fn revoke_key(
    Path(id): Path<String>,
    Admin { store, actor }: Admin,
) -> ApiResult<Json<KeyView>> {
    let id = key_id(&id)?;
    let row = blocking(move || store.revoke_key(&actor, &id)).await?;
    Ok(Json(row.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnerParams {
    owner: Option<String>,
}

pub(super) async fn revoke_owner(
    params: Result<Query<OwnerParams>, QueryRejection>,
    Admin { store, actor }: Admin,
) -> ApiResult<Json<serde_json::Value>> {
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
pub(super) struct RotateRequest {
    #[serde(default)]
    grace: Option<String>,
}

pub(super) async fn rotate_key(
    Path(id): Path<String>,
    Admin { store, actor }: Admin,
    body: Body,
) -> ApiResult<Response> {
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
    let new = NewKey::replacement(new_id, hash, created_at, &policy);
    let old_until = grace.expiry_from(created_at).unwrap_or(created_at);
    let old = id.clone();
    let row = blocking(move || store.rotate_key(&actor, &old, new, old_until)).await?;
    Ok(issued(row, raw, Some(id)))
}

#[derive(Serialize)]
pub(super) struct AuditPage {
    entries: Vec<AuditEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    since: Option<String>,
    limit: Option<String>,
    /// `oldest` (the default: from `since` on) or `newest` (the latest first, paged with
    /// `before`).
    order: Option<String>,
    /// With `order=newest`: the entries before this `seq`.
    before: Option<String>,
}

pub(super) async fn audit(
    params: Result<Query<AuditParams>, QueryRejection>,
    Admin { store, .. }: Admin,
) -> ApiResult<Json<AuditPage>> {
    let p = query(params)?;
    let since = p
        .since
        .map(|s| parse_rfc3339(&s).map_err(|e| ApiError::bad(format!("since: {e}"))))
        .transpose()?;
    let limit = limit_param(p.limit, 1000, 10_000)?;
    let newest = match p.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "order: {other:?}: use oldest or newest"
            )))
        }
    };
    let before = p
        .before
        .map(|b| {
            b.parse::<i64>()
                .ok()
                .filter(|b| *b >= 0)
                .ok_or_else(|| ApiError::bad(format!("before: {b:?}: use an entry's seq")))
        })
        .transpose()?;
    let entries = match (newest, since, before) {
        (true, Some(_), _) => {
            return Err(ApiError::bad(
                "since: with order=newest, page with before=SEQ instead",
            ))
        }
        (false, _, Some(_)) => return Err(ApiError::bad("before: only with order=newest")),
        (true, None, before) => blocking(move || store.audit_latest(before, limit)).await?,
        (false, since, None) => blocking(move || store.audit(since, limit)).await?,
    };
    Ok(Json(AuditPage { entries }))
}

/// `limit`: `default` when absent, else a whole number from 1 to `max`.
fn limit_param(limit: Option<String>, default: u32, max: u32) -> ApiResult<u32> {
    match limit {
        None => Ok(default),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit: {l:?}: use a number from 1 to {max}"))),
    }
}

/// The expiries the console offers (LabKey's), those within the policy's maximum.
const EXPIRY_CHOICES: [&str; 5] = ["never", "7d", "30d", "90d", "365d"];

#[derive(Serialize)]
pub(super) struct PolicyView {
    /// The scope catalog; `null`: any valid scope.
    scopes: Option<Vec<String>>,
    default_expiry: String,
    max_expiry: String,
    /// What `expires_in` may be, from the usual choices (and the maximum itself when it
    /// is none of them).
    expiry_choices: Vec<String>,
    /// The choice equal to `default_expiry`, if any.
    default_choice: Option<String>,
}

impl PolicyView {
    pub(super) fn of(policy: Policy) -> PolicyView {
        let mut choices: Vec<(String, Lifetime)> = EXPIRY_CHOICES
            .iter()
            .filter_map(|c| Lifetime::parse(c, false).ok().map(|l| (c.to_string(), l)))
            .filter(|(_, l)| l.within(policy.max_expiry))
            .collect();
        if !choices.iter().any(|(_, l)| *l == policy.max_expiry) {
            choices.push((policy.max_expiry.to_string(), policy.max_expiry));
        }
        let default_choice = choices
            .iter()
            .find(|(_, l)| *l == policy.default_expiry)
            .map(|(c, _)| c.clone());
        PolicyView {
            scopes: policy.scopes,
            default_expiry: policy.default_expiry.to_string(),
            max_expiry: policy.max_expiry.to_string(),
            expiry_choices: choices.into_iter().map(|(c, _)| c).collect(),
            default_choice,
        }
    }
}

/// `GET /v1/admin/policy`: the scope catalog and the expiries a new key may have.
pub(super) async fn policy(Admin { store, .. }: Admin) -> ApiResult<Json<PolicyView>> {
    let policy = blocking(move || store.policy()).await?;
    Ok(Json(PolicyView::of(policy)))
}
