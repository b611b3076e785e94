//! What the key service keeps, behind two traits so another database can take SQLite's
//! place: [`GatewayStore`] (what gateways read: the key set and single records) and
//! [`AdminStore`] (the admin API's reads and changes, admin keys, policy, audit, usage).
//!
//! Keys are kept only as the SHA-256 of the key. A revoked key stays as a row with status
//! `revoked` (so the audit trail and the list still name it) but is never served to a
//! gateway again.

use crate::duration::Lifetime;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Unix seconds.
pub type Seconds = i64;

pub fn now() -> Seconds {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 in UTC, whole seconds (`2026-11-01T10:00:00Z`).
pub fn rfc3339(at: Seconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string())
}

/// Parses RFC 3339 (any offset, fractional seconds dropped) to unix seconds.
pub fn parse_rfc3339(text: &str) -> Result<Seconds, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

#[derive(Debug)]
pub enum StoreError {
    /// No such key (or admin key).
    NotFound,
    /// The change does not apply to the key as it is (e.g. it is revoked).
    Conflict(String),
    /// The store cannot be read or written.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Conflict(why) => f.write_str(why),
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Enabled,
    Disabled,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "enabled" => Some(Status::Enabled),
            "disabled" => Some(Status::Disabled),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }
}

/// A key as the admin API shows it: the record (README "Configuration reference") plus
/// usage (`last_used_at`, `uses`) and, once revoked, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    /// Lowercase hex SHA-256 of the key.
    pub hash: String,
    pub owner: String,
    pub label: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: Seconds,
    pub expires_at: Option<Seconds>,
    pub status: Status,
    pub read_only: bool,
    pub revoked_at: Option<Seconds>,
    pub last_used_at: Option<Seconds>,
    pub uses: u64,
}

/// A key as the admin API answers it (and the CLI reads and prints it): a [`KeyRow`] with
/// its times in RFC 3339.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub hash: String,
    pub owner: String,
    pub label: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub status: String,
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub uses: u64,
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
            status: r.status.as_str().to_string(),
            read_only: r.read_only,
            revoked_at: r.revoked_at.map(rfc3339),
            last_used_at: r.last_used_at.map(rfc3339),
            uses: r.uses,
        }
    }
}

/// A key to add (already checked against the policy).
#[derive(Clone, Debug)]
pub struct NewKey {
    pub id: String,
    pub hash: String,
    pub owner: String,
    pub label: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: Seconds,
    pub expires_at: Option<Seconds>,
    pub read_only: bool,
}

impl NewKey {
    /// The key that replaces another on rotation: the store copies owner, label, scopes and
    /// the read-only flag from the key it replaces; the expiry is the policy's default.
    pub fn replacement(id: String, hash: String, created_at: Seconds, policy: &Policy) -> NewKey {
        NewKey {
            id,
            hash,
            owner: String::new(),
            label: None,
            scopes: Vec::new(),
            created_at,
            expires_at: policy.default_expiry.expiry_from(created_at),
            read_only: false,
        }
    }
}

/// A PATCH: each `Some` replaces the field. `expires_at: Some(None)` = never.
#[derive(Clone, Debug, Default)]
pub struct KeyChange {
    pub status: Option<Status>,
    pub label: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<Option<Seconds>>,
}

impl KeyChange {
    /// Applies the change to `row` (which must not be revoked) and answers the audit
    /// entry's detail: what changed (`status=disabled scopes=a,b`). Every store writes the
    /// row it gets back.
    pub fn apply(self, row: &mut KeyRow) -> StoreResult<String> {
        if row.status == Status::Revoked {
            return Err(StoreError::Conflict("the key is revoked".into()));
        }
        let mut what = Vec::new();
        if let Some(status) = self.status {
            what.push(format!("status={}", status.as_str()));
            row.status = status;
        }
        if let Some(label) = self.label {
            what.push("label".to_string());
            row.label = label;
        }
        if let Some(scopes) = self.scopes {
            what.push(format!("scopes={}", scopes.join(",")));
            row.scopes = scopes;
        }
        if let Some(expires_at) = self.expires_at {
            what.push(format!(
                "expires_at={}",
                expires_at.map_or("never".to_string(), rfc3339)
            ));
            row.expires_at = expires_at;
        }
        Ok(what.join(" "))
    }
}

/// A rotation as every store writes it: the new key takes the old one's owner, label,
/// scopes and read-only flag; the old one expires at `until`.
pub struct Rotation {
    pub until: Seconds,
    /// The audit details of the old key (`rotate`) and of the new one (`create`).
    pub old_detail: String,
    pub new_detail: String,
}

impl Rotation {
    /// Fills `new` from `old` (which must not be revoked); the old key expires at
    /// `old_expires_at`, or at its own expiry if that is sooner.
    pub fn of(old: &KeyRow, new: &mut NewKey, old_expires_at: Seconds) -> StoreResult<Rotation> {
        if old.status == Status::Revoked {
            return Err(StoreError::Conflict("the key is revoked".into()));
        }
        new.owner = old.owner.clone();
        new.label = old.label.clone();
        new.scopes = old.scopes.clone();
        new.read_only = old.read_only;
        let until = old
            .expires_at
            .map_or(old_expires_at, |e| e.min(old_expires_at));
        Ok(Rotation {
            until,
            old_detail: format!("new key {}; old key expires at {}", new.id, rfc3339(until)),
            new_detail: format!("rotation of {}", old.id),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub owner: Option<String>,
    pub status: Option<Status>,
    pub limit: u32,
    /// Rows after this position (an opaque cursor from the previous page).
    pub after: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct Page {
    pub keys: Vec<KeyRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(serialize_with = "ser_time")]
    pub at: Seconds,
    /// `admin:<admin key id>` or `cli:<local user>`.
    pub actor: String,
    pub action: String,
    pub key_id: Option<String>,
    pub detail: Option<String>,
}

fn ser_time<S: serde::Serializer>(at: &Seconds, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

/// README "The key service": the scope catalog (`None`: any scope) and expiries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub scopes: Option<Vec<String>>,
    pub default_expiry: Lifetime,
    pub max_expiry: Lifetime,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            scopes: None,
            default_expiry: Lifetime::Seconds(90 * 86_400),
            max_expiry: Lifetime::Never,
        }
    }
}

/// The policy as the stores keep it: three `meta` rows, by name.
pub const POLICY_SCOPES: &str = "policy.scopes";
pub const POLICY_DEFAULT_EXPIRY: &str = "policy.default_expiry";
pub const POLICY_MAX_EXPIRY: &str = "policy.max_expiry";

impl Policy {
    /// The policy from its `meta` rows (`get` reads one by name); a missing row keeps the
    /// default.
    pub fn from_meta(
        mut get: impl FnMut(&str) -> StoreResult<Option<String>>,
    ) -> StoreResult<Policy> {
        let bad = |e: &dyn fmt::Display| StoreError::Unavailable(e.to_string());
        let mut policy = Policy::default();
        if let Some(scopes) = get(POLICY_SCOPES)? {
            policy.scopes = serde_json::from_str(&scopes).map_err(|e| bad(&e))?;
        }
        if let Some(d) = get(POLICY_DEFAULT_EXPIRY)? {
            policy.default_expiry = Lifetime::parse(&d, false).map_err(|e| bad(&e))?;
        }
        if let Some(d) = get(POLICY_MAX_EXPIRY)? {
            policy.max_expiry = Lifetime::parse(&d, false).map_err(|e| bad(&e))?;
        }
        Ok(policy)
    }

    /// The `meta` rows to write (name, value), and the audit entry's detail.
    pub fn to_meta(&self) -> StoreResult<([(&'static str, String); 3], String)> {
        let scopes = serde_json::to_string(&self.scopes)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let default = self.default_expiry.to_string();
        let max = self.max_expiry.to_string();
        let detail = format!("scopes={scopes} default_expiry={default} max_expiry={max}");
        Ok((
            [
                (POLICY_SCOPES, scopes),
                (POLICY_DEFAULT_EXPIRY, default),
                (POLICY_MAX_EXPIRY, max),
            ],
            detail,
        ))
    }
}

/// One usage report entry (README "Usage"): `count` more uses, the latest at `last_used_at`.
#[derive(Clone, Debug)]
pub struct Usage {
    pub hash: String,
    pub count: u64,
    pub last_used_at: Seconds,
}

/// The key set as served on `/v1/keyset`: the document's bytes and their tag.
#[derive(Debug)]
pub struct KeySetBody {
    pub version: String,
    /// Shared with the answers being sent: a clone costs nothing.
    pub body: bytes::Bytes,
    pub etag: String,
    pub keys: usize,
    /// Where the `keys` array (`[...]`) is in `body`: the full document of the
    /// incremental sync is built around it without copying it.
    pub keys_at: std::ops::Range<usize>,
}

impl KeySetBody {
    /// The set's `version` as the change feed's: the database stores make the two one
    /// number.
    pub fn feed_version(&self) -> StoreResult<u64> {
        self.version
            .parse::<u64>()
            .map_err(|e| StoreError::Unavailable(format!("meta.version: {e}")))
    }
}

/// What `/v1/keyset?since=V` (README "`keygate serve`") gets from the store: read in one consistent view
/// of the change log, the version and the records.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySetSince {
    /// Nothing newer than `since`.
    Current,
    /// The keys changed since: the records (as `/v1/keys/{hash}` answers) of those still
    /// served, and the hashes of those not served any more, as of `version`.
    Delta {
        version: u64,
        upsert: Vec<bytes::Bytes>,
        delete: Vec<keygate_core::record::KeyHash>,
    },
    /// Older than the changes kept, or a version the store never had: a full document.
    Gone,
}

#[cfg(test)]
impl KeySetSince {
    /// The delta's version, upserts and deletes; a test fails on any other answer.
    pub fn into_delta(self) -> (u64, Vec<bytes::Bytes>, Vec<keygate_core::record::KeyHash>) {
        match self {
            KeySetSince::Delta {
                version,
                upsert,
                delete,
            } => (version, upsert, delete),
            other => panic!("no delta: {other:?}"),
        }
    }
}

impl KeySetSince {
    /// The key set's answer to what the change log says about `since`: each changed hash
    /// still served is upserted with its record (`record`, as `/v1/keys/{hash}` answers it),
    /// the others deleted. A change too large for one delta is answered as [`Gone`] (the
    /// full document) before any record is read.
    ///
    /// [`Gone`]: KeySetSince::Gone
    pub fn from_changes(
        since: Since,
        mut record: impl FnMut(&keygate_core::record::KeyHash) -> StoreResult<Option<bytes::Bytes>>,
    ) -> StoreResult<KeySetSince> {
        Ok(match since {
            Since::Current => KeySetSince::Current,
            Since::Gone => KeySetSince::Gone,
            Since::Changed(_, hashes)
                if hashes.len() > keygate_core::key_set_delta::MAX_DELTA_KEYS =>
            {
                KeySetSince::Gone
            }
            Since::Changed(version, hashes) => {
                let mut upsert = Vec::new();
                let mut delete = Vec::new();
                for hash in hashes {
                    match record(&hash)? {
                        Some(record) => upsert.push(record),
                        None => delete.push(hash),
                    }
                }
                KeySetSince::Delta {
                    version,
                    upsert,
                    delete,
                }
            }
        })
    }
}

/// What the change feed (README "Watching for changes") says about a `since`.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Nothing newer.
    Current,
    /// The keys changed (added, changed, removed) since, and the version they bring the
    /// client to.
    Changed(u64, Vec<keygate_core::record::KeyHash>),
    /// Older than the changes kept, or a version the store never had.
    Gone,
}

/// What gateways read. Calls block (file reads, database queries): run them off the
/// async workers.
///
/// The change feed: every change that alters what gateways get makes a new version,
/// which only grows within the store's epoch (random, made with the store); the hashes
/// each version touched are kept, within a bound.
pub trait GatewayStore: Send + Sync {
    /// The key set document, with a tag that changes exactly when its bytes do.
    fn key_set(&self) -> StoreResult<std::sync::Arc<KeySetBody>>;
    /// The record (JSON, as in the key set) of a key that is not revoked.
    fn record(&self, hash: &keygate_core::record::KeyHash) -> StoreResult<Option<bytes::Bytes>>;
    /// Whether the store can be read now.
    fn ready(&self) -> StoreResult<()>;
    /// One line for the log: what is served.
    fn describe(&self) -> String;
    /// The change feed's epoch.
    fn feed_epoch(&self) -> &keygate_core::watch::Epoch;
    /// The change feed's current version.
    fn feed_version(&self) -> StoreResult<u64>;
    /// What changed since version `since` of this epoch.
    fn changes_since(&self, since: u64) -> StoreResult<Since>;
    /// The key set with the feed's version it is at (read together).
    fn key_set_at(&self) -> StoreResult<(u64, std::sync::Arc<KeySetBody>)>;
    /// The delta from version `since` of this epoch to the current one.
    fn key_set_since(&self, since: u64) -> StoreResult<KeySetSince>;
    /// Sees the feed's version each time a change is made (or found by [`Self::refresh`]),
    /// once what it changed is being served.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Looks for changes made behind the service's back (the key file replaced, another
    /// process writing the database) and announces them; run every 100 ms while
    /// long-polls are held.
    fn refresh(&self);
}

/// What the admin API (and `keygate admin`/`keygate policy`) read and change. Every change
/// is committed, with its audit entry, before the call returns.
pub trait AdminStore: GatewayStore {
    fn create_key(&self, actor: &str, key: NewKey) -> StoreResult<KeyRow>;
    fn get_key(&self, id: &str) -> StoreResult<KeyRow>;
    fn list_keys(&self, query: &ListQuery) -> StoreResult<Page>;
    fn update_key(&self, actor: &str, id: &str, change: KeyChange) -> StoreResult<KeyRow>;
    fn revoke_key(&self, actor: &str, id: &str) -> StoreResult<KeyRow>;
    /// Revokes every key of `owner` that is not revoked yet; answers how many.
    fn revoke_owner(&self, actor: &str, owner: &str) -> StoreResult<u64>;
    /// Adds `new` with the owner, label, scopes and read-only flag of `old_id`, and makes
    /// the old key expire at `old_expires_at` if that is sooner than its expiry.
    fn rotate_key(
        &self,
        actor: &str,
        old_id: &str,
        new: NewKey,
        old_expires_at: Seconds,
    ) -> StoreResult<KeyRow>;
    fn audit(&self, since: Option<Seconds>, limit: u32) -> StoreResult<Vec<AuditEntry>>;
    /// The latest entries first: at most `limit`, those before the entry `before` (its
    /// `seq`) when given.
    fn audit_latest(&self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEntry>>;
    fn policy(&self) -> StoreResult<Policy>;
    fn set_policy(&self, actor: &str, policy: &Policy) -> StoreResult<()>;
    fn add_admin_key(
        &self,
        actor: &str,
        id: &str,
        hash: &str,
        label: Option<&str>,
    ) -> StoreResult<()>;
    /// Removes the admin key `id` (audited): it is refused from then on.
    fn revoke_admin_key(&self, actor: &str, id: &str) -> StoreResult<()>;
    /// The id of the admin key with this hash.
    fn admin_key(&self, hash: &str) -> StoreResult<Option<String>>;
    fn record_usage(&self, reports: &[Usage]) -> StoreResult<()>;
    /// Adds existing records (`keygate import`), all or none: a key whose id or hash is
    /// already in the store is a conflict naming its position.
    fn import_keys(&self, actor: &str, keys: &[(NewKey, Status)]) -> StoreResult<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::key_set_delta::MAX_DELTA_KEYS;
    use keygate_core::record::KeyHash;

    #[test]
    fn a_delta_splits_the_changed_hashes_into_upserts_and_deletes() {
        let (kept, gone) = (KeyHash::of_key("kept"), KeyHash::of_key("gone"));
        let answer = KeySetSince::from_changes(Since::Changed(7, vec![kept, gone]), |h| {
            Ok((*h == kept).then(|| bytes::Bytes::from_static(b"{}")))
        })
        .unwrap();
        assert_eq!(
            answer.into_delta(),
            (7, vec![bytes::Bytes::from_static(b"{}")], vec![gone])
        );
    }

    #[test]
    fn a_change_too_large_for_a_delta_is_the_full_document_without_reading_a_record() {
        let hashes = (0..=MAX_DELTA_KEYS)
            .map(|i| KeyHash::of_key(&i.to_string()))
            .collect();
        let answer = KeySetSince::from_changes(Since::Changed(9, hashes), |_| {
            panic!("no record is read for a change that gets the full document")
        });
        assert_eq!(answer.unwrap(), KeySetSince::Gone);
        for (since, expected) in [
            (Since::Current, KeySetSince::Current),
            (Since::Gone, KeySetSince::Gone),
        ] {
            assert_eq!(
                KeySetSince::from_changes(since, |_| Ok(None)).unwrap(),
                expected
            );
        }
    }
}
