//! The admin side of the SQLite store: keys, owners, rotation, audit, policy, admin keys,
//! import and usage.

use super::*;

impl AdminStore for SqliteStore {
    fn create_key(&self, actor: &str, key: NewKey) -> StoreResult<KeyRow> {
        self.change(|tx| {
            insert_key(tx, &key)?;
            audit(tx, actor, "create", Some(&key.id), Some(&key.owner)).map_err(unavailable)?;
            bump(tx, &[&key.hash], self.log_bound).map_err(unavailable)?;
            get_by_id(tx, &key.id)
        })
    }

    fn get_key(&self, id: &str) -> StoreResult<KeyRow> {
        get_by_id(&lock(&self.reader), id)
    }

    fn list_keys(&self, query: &ListQuery) -> StoreResult<Page> {
        let conn = lock(&self.reader);
        let limit = i64::from(query.limit.max(1));
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys
                 WHERE seq > ?1 AND (?2 IS NULL OR owner = ?2) AND (?3 IS NULL OR status = ?3)
                 ORDER BY seq LIMIT ?4"
            ))
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(
                params![
                    query.after.unwrap_or(0),
                    query.owner,
                    query.status.map(Status::as_str),
                    limit + 1
                ],
                key_row,
            )
            .map_err(unavailable)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more {
            rows.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok(Page {
            keys: rows.into_iter().map(|(_, row)| row).collect(),
            next,
        })
    }

    fn update_key(&self, actor: &str, id: &str, change: KeyChange) -> StoreResult<KeyRow> {
        self.change(|tx| {
            let mut row = get_by_id(tx, id)?;
            let what = change.apply(&mut row)?;
            tx.execute(
                "UPDATE keys SET status = ?2, label = ?3, scopes = ?4, expires_at = ?5 WHERE id = ?1",
                params![
                    id,
                    row.status.as_str(),
                    row.label,
                    scopes_json(&row.scopes),
                    row.expires_at
                ],
            )
            .map_err(unavailable)?;
            audit(tx, actor, "update", Some(id), Some(&what)).map_err(unavailable)?;
            bump(tx, &[&row.hash], self.log_bound).map_err(unavailable)?;
            Ok(row)
        })
    }

    fn revoke_key(&self, actor: &str, id: &str) -> StoreResult<KeyRow> {
        self.change(|tx| {
            let row = get_by_id(tx, id)?;
            if row.status == Status::Revoked {
                return Err(StoreError::Conflict("the key is revoked already".into()));
            }
            tx.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map_err(unavailable)?;
            audit(tx, actor, "revoke", Some(id), None).map_err(unavailable)?;
            bump(tx, &[&row.hash], self.log_bound).map_err(unavailable)?;
            get_by_id(tx, id)
        })
    }

    fn revoke_owner(&self, actor: &str, owner: &str) -> StoreResult<u64> {
        self.change(|tx| {
            let keys = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id, hash FROM keys WHERE owner = ?1 AND status != 'revoked' ORDER BY seq",
                    )
                    .map_err(unavailable)?;
                let keys = stmt
                    .query_map([owner], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)?;
                keys
            };
            let at = now();
            for (id, _) in &keys {
                tx.execute(
                    "UPDATE keys SET status = 'revoked', revoked_at = ?2 WHERE id = ?1",
                    params![id, at],
                )
                .map_err(unavailable)?;
                audit(
                    tx,
                    actor,
                    "revoke",
                    Some(id),
                    Some(&format!("all keys of {owner}")),
                )
                .map_err(unavailable)?;
            }
            if !keys.is_empty() {
                let hashes: Vec<&str> = keys.iter().map(|(_, hash)| hash.as_str()).collect();
                bump(tx, &hashes, self.log_bound).map_err(unavailable)?;
            }
            Ok(keys.len() as u64)
        })
    }

    fn rotate_key(
        &self,
        actor: &str,
        old_id: &str,
        mut new: NewKey,
        old_expires_at: Seconds,
    ) -> StoreResult<KeyRow> {
        self.change(|tx| {
            let old = get_by_id(tx, old_id)?;
            let rotation = Rotation::of(&old, &mut new, old_expires_at)?;
            let until = rotation.until;
            tx.execute(
                "UPDATE keys SET expires_at = ?2 WHERE id = ?1",
                params![old_id, until],
            )
            .map_err(unavailable)?;
            insert_key(tx, &new)?;
            audit(
                tx,
                actor,
                "rotate",
                Some(old_id),
                Some(&rotation.old_detail),
            )
            .map_err(unavailable)?;
            audit(
                tx,
                actor,
                "create",
                Some(&new.id),
                Some(&rotation.new_detail),
            )
            .map_err(unavailable)?;
            bump(tx, &[&old.hash, &new.hash], self.log_bound).map_err(unavailable)?;
            get_by_id(tx, &new.id)
        })
    }

    fn audit(&self, since: Option<Seconds>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.audit_query(
            "SELECT seq, at, actor, action, key_id, detail FROM audit WHERE at >= ?1 ORDER BY seq LIMIT ?2",
            since.unwrap_or(i64::MIN),
            limit,
        )
    }

    fn audit_latest(&self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.audit_query(
            "SELECT seq, at, actor, action, key_id, detail FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            before.unwrap_or(i64::MAX),
            limit,
        )
    }

    fn policy(&self) -> StoreResult<Policy> {
        let conn = lock(&self.reader);
        Policy::from_meta(|name| Self::get_meta(&conn, name))
    }

    fn set_policy(&self, actor: &str, policy: &Policy) -> StoreResult<()> {
        self.change(|tx| {
            let (rows, detail) = policy.to_meta()?;
            for (name, value) in &rows {
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [name, value.as_str()],
                )
                .map_err(unavailable)?;
            }
            audit(tx, actor, "policy", None, Some(&detail)).map_err(unavailable)
        })
    }

    fn add_admin_key(
        &self,
        actor: &str,
        id: &str,
        hash: &str,
        label: Option<&str>,
    ) -> StoreResult<()> {
        self.change(|tx| {
            tx.execute(
                "INSERT INTO admin_keys (id, hash, label, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, hash, label, now()],
            )
            .map_err(unavailable)?;
            audit(
                tx,
                actor,
                "admin_key_create",
                None,
                Some(&format!("admin key {id}")),
            )
            .map_err(unavailable)
        })
    }

    fn revoke_admin_key(&self, actor: &str, id: &str) -> StoreResult<()> {
        self.change(|tx| {
            let removed = tx
                .execute("DELETE FROM admin_keys WHERE id = ?1", params![id])
                .map_err(unavailable)?;
            if removed == 0 {
                return Err(StoreError::NotFound);
            }
            audit(
                tx,
                actor,
                "admin_key_revoke",
                None,
                Some(&format!("admin key {id}")),
            )
            .map_err(unavailable)
        })
    }

    fn admin_key(&self, hash: &str) -> StoreResult<Option<String>> {
        lock(&self.reader)
            .query_row("SELECT id FROM admin_keys WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .optional()
            .map_err(unavailable)
    }

    fn import_keys(&self, actor: &str, keys: &[(NewKey, Status)]) -> StoreResult<usize> {
        self.change(|tx| {
            for (i, (key, status)) in keys.iter().enumerate() {
                insert_key(tx, key).map_err(|e| match e {
                    StoreError::Conflict(why) => StoreError::Conflict(format!("keys[{i}]: {why}")),
                    other => other,
                })?;
                if *status != Status::Enabled {
                    tx.execute(
                        "UPDATE keys SET status = ?2 WHERE id = ?1",
                        params![key.id, status.as_str()],
                    )
                    .map_err(unavailable)?;
                }
                audit(tx, actor, "import", Some(&key.id), Some(&key.owner)).map_err(unavailable)?;
            }
            if !keys.is_empty() {
                let hashes: Vec<&str> = keys.iter().map(|(key, _)| key.hash.as_str()).collect();
                bump(tx, &hashes, self.log_bound).map_err(unavailable)?;
            }
            Ok(keys.len())
        })
    }

    fn record_usage(&self, reports: &[Usage]) -> StoreResult<()> {
        self.change(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE keys SET uses = uses + ?2,
                     last_used_at = max(coalesce(last_used_at, ?3), ?3) WHERE hash = ?1",
                )
                .map_err(unavailable)?;
            for r in reports {
                let count = i64::try_from(r.count).unwrap_or(i64::MAX);
                stmt.execute(params![r.hash, count, r.last_used_at])
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }
}

impl SqliteStore {
    /// Audit entries from `sql`, which takes a bound (`?1`) and a limit (`?2`).
    fn audit_query(&self, sql: &str, bound: i64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
        let entries = stmt
            .query_map(params![bound, i64::from(limit)], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    key_id: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(unavailable)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(unavailable)?;
        Ok(entries)
    }
}
