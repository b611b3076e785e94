//! The key commands on a key service: its database directly (`--db`, through the
//! keyservice crate's [`AdminStore`], audited as `cli:<local user>`), or its admin API
//! (`--server`, [`crate::remote`]). Both answer in the admin API's shapes, so that the
//! commands print the same whichever is used.

use crate::error::{Error, Result};
use keygate_keyservice::duration::Lifetime;
use keygate_keyservice::secret;
use keygate_keyservice::store::{
    self, AdminStore, AuditEntry, KeyChange, ListQuery, NewKey, Status, StoreError,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A key as the admin API shows it (`GET /v1/admin/keys`): the record plus usage.
pub use keygate_keyservice::store::KeyView as Key;

/// A key shown once, ImmPort's shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    pub id: String,
    pub api_key: String,
    pub expires_at: Option<String>,
}

/// One audit entry, as `GET /v1/admin/audit` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Audit {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub key_id: Option<String>,
    pub detail: Option<String>,
}

impl From<AuditEntry> for Audit {
    fn from(e: AuditEntry) -> Audit {
        Audit {
            seq: e.seq,
            at: store::rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            key_id: e.key_id,
            detail: e.detail,
        }
    }
}

/// What `keygate new` asks of a key service.
pub struct Create<'a> {
    pub owner: &'a str,
    pub label: Option<&'a str>,
    pub scopes: &'a [String],
    pub expires_in: &'a str,
    pub read_only: bool,
    pub prefix: &'a str,
}

/// The key commands' operations on a key service.
pub trait Admin {
    /// The database or URL, to start an error line with.
    fn place(&self) -> String;
    /// The option that names this target again (`--db PATH`), for hints.
    fn option(&self) -> String;
    fn create(&self, new: &Create) -> Result<Issued>;
    fn list(&self, owner: Option<&str>, status: Option<Status>) -> Result<Vec<Key>>;
    fn set_status(&self, id: &str, status: Status) -> Result<Key>;
    fn revoke(&self, id: &str) -> Result<Key>;
    fn revoke_owner(&self, owner: &str) -> Result<u64>;
    fn rotate(&self, id: &str, grace: Option<&str>) -> Result<Issued>;
    fn audit(&self, since: Option<i64>) -> Result<Vec<Audit>>;
}

/// `--db PATH` (SQLite) or `--db postgres://...` (PostgreSQL).
pub struct Db {
    /// What messages name: the path, or the DSN without its password.
    path: PathBuf,
    store: Arc<dyn AdminStore>,
    actor: String,
}

impl Db {
    /// `create`: whether a missing database is made (only `keygate new` makes one).
    pub fn open(path: &Path, create: bool) -> Result<Db> {
        let db = keygate_keyservice::Db::parse(path).map_err(Error::new)?;
        if !create && db.is_missing_file() {
            return Err(Error::at(
                path,
                "no such database (`keygate import --keys FILE --db PATH` or `keygate new \
                 --db PATH` makes one)",
            ));
        }
        let store = db.open().map_err(Error::new)?;
        Ok(Db {
            path: PathBuf::from(db.shown()),
            store,
            actor: keygate_keyservice::local_actor(),
        })
    }

    fn error(&self, e: StoreError, id: &str) -> Error {
        match e {
            StoreError::NotFound => Error::at(
                &self.path,
                format!(
                    "no key with id {id:?} (`keygate list {}` shows the ids)",
                    self.option()
                ),
            ),
            other => Error::at(&self.path, other),
        }
    }
}

/// A lifetime option (`--expires-in`, `--grace`) read as the key service reads it.
fn lifetime(option: &str, text: &str, zero_ok: bool) -> Result<Lifetime> {
    Lifetime::parse(text, zero_ok).map_err(|e| Error::new(format!("{option}: {e}")))
}

fn new_material(prefix: &str) -> Result<(String, String, String)> {
    secret::new_material(prefix).map_err(Error::new)
}

impl Admin for Db {
    fn place(&self) -> String {
        self.path.display().to_string()
    }

    fn option(&self) -> String {
        format!("--db {}", self.path.display())
    }

    fn create(&self, new: &Create) -> Result<Issued> {
        let policy = self.store.policy().map_err(|e| Error::at(&self.path, e))?;
        if let Some(catalog) = &policy.scopes {
            if let Some(unknown) = new.scopes.iter().find(|s| !catalog.contains(s)) {
                return Err(Error::new(format!(
                    "--scopes: {unknown:?} is not in the scope catalog ({}); `keygate policy \
                     --db {}` shows and sets it",
                    catalog.join(", "),
                    self.path.display()
                )));
            }
        }
        let life = lifetime("--expires-in", new.expires_in, false)?;
        if !life.within(policy.max_expiry) {
            return Err(Error::new(format!(
                "--expires-in: {:?} is beyond the policy's maximum expiry ({})",
                new.expires_in, policy.max_expiry
            )));
        }
        let (raw, id, hash) = new_material(new.prefix)?;
        let created_at = store::now();
        let key = NewKey {
            id: id.clone(),
            hash,
            owner: new.owner.to_string(),
            label: new.label.map(str::to_string),
            scopes: new.scopes.to_vec(),
            created_at,
            expires_at: life.expiry_from(created_at),
            read_only: new.read_only,
        };
        let row = self
            .store
            .create_key(&self.actor, key)
            .map_err(|e| self.error(e, &id))?;
        Ok(Issued {
            id: row.id,
            api_key: raw,
            expires_at: row.expires_at.map(store::rfc3339),
        })
    }

    fn list(&self, owner: Option<&str>, status: Option<Status>) -> Result<Vec<Key>> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_keys(&ListQuery {
                    owner: owner.map(str::to_string),
                    status,
                    limit: 1000,
                    after,
                })
                .map_err(|e| Error::at(&self.path, e))?;
            keys.extend(page.keys.into_iter().map(Key::from));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    fn set_status(&self, id: &str, status: Status) -> Result<Key> {
        let change = KeyChange {
            status: Some(status),
            ..KeyChange::default()
        };
        self.store
            .update_key(&self.actor, id, change)
            .map(Key::from)
            .map_err(|e| self.error(e, id))
    }

    fn revoke(&self, id: &str) -> Result<Key> {
        self.store
            .revoke_key(&self.actor, id)
            .map(Key::from)
            .map_err(|e| self.error(e, id))
    }

    fn revoke_owner(&self, owner: &str) -> Result<u64> {
        self.store
            .revoke_owner(&self.actor, owner)
            .map_err(|e| Error::at(&self.path, e))
    }

    fn rotate(&self, id: &str, grace: Option<&str>) -> Result<Issued> {
        let grace = match grace {
            None => Lifetime::Seconds(0),
            Some(text) => match lifetime("--grace", text, true)? {
                Lifetime::Never => {
                    return Err(Error::new(
                        "--grace: \"never\" is not a grace period: use a duration such as 0m, \
                         1h or 24h",
                    ))
                }
                life => life,
            },
        };
        let policy = self.store.policy().map_err(|e| Error::at(&self.path, e))?;
        let (raw, new_id, hash) = new_material(secret::KEY_PREFIX)?;
        let created_at = store::now();
        let new = NewKey::replacement(new_id, hash, created_at, &policy);
        let old_until = grace.expiry_from(created_at).unwrap_or(created_at);
        let row = self
            .store
            .rotate_key(&self.actor, id, new, old_until)
            .map_err(|e| self.error(e, id))?;
        Ok(Issued {
            id: row.id,
            api_key: raw,
            expires_at: row.expires_at.map(store::rfc3339),
        })
    }

    fn audit(&self, since: Option<i64>) -> Result<Vec<Audit>> {
        self.store
            .audit(since, 10_000)
            .map(|entries| entries.into_iter().map(Audit::from).collect())
            .map_err(|e| Error::at(&self.path, e))
    }
}
