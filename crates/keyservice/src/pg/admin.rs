//! The admin side of the PostgreSQL store: as the SQLite store's (sqlite/admin.rs), each
//! change one transaction with its audit entry.

use super::*;

impl AdminStore for PgStore {
    fn create_key(&self, actor: &str, key: NewKey) -> StoreResult<KeyRow> {
        self.change(|tx| {
            self.insert_key(tx, &key)?;
            self.audit_in(tx, actor, "create", Some(&key.id), Some(&key.owner))?;
            self.bump(tx, &[&key.hash])?;
            self.get_by_id(tx, &key.id)
        })
    }

    fn get_key(&self, id: &str) -> StoreResult<KeyRow> {
        let mut conn = self.conn()?;
        self.get_by_id(&mut *conn, id)
    }

    fn list_keys(&self, query: &ListQuery) -> StoreResult<Page> {
        let mut conn = self.conn()?;
        let limit = i64::from(query.limit.max(1));
        let rows = conn
            .query_typed(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys
                     WHERE seq > $1 AND ($2::TEXT IS NULL OR owner = $2)
                       AND ($3::TEXT IS NULL OR status = $3)
                     ORDER BY seq LIMIT $4"
                ),
                &[
                    (&query.after.unwrap_or(0), Type::INT8),
                    (&query.owner, Type::TEXT),
                    (&query.status.map(Status::as_str), Type::TEXT),
                    (&(limit + 1), Type::INT8),
                ],
            )
            .map_err(self.err())?
            .iter()
            .map(key_row)
            .collect::<StoreResult<Vec<_>>>()?;
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
            let mut row = self.get_by_id(tx, id)?;
            let what = change.apply(&mut row)?;
            tx.execute(
                "UPDATE keys SET status = $2, label = $3, scopes = $4, expires_at = $5 WHERE id = $1",
                &[
                    &id,
                    &row.status.as_str(),
                    &row.label,
                    &scopes_json(&row.scopes),
                    &row.expires_at,
                ],
            )
            .map_err(self.err())?;
            self.audit_in(tx, actor, "update", Some(id), Some(&what))?;
            self.bump(tx, &[&row.hash])?;
            Ok(row)
        })
    }

    fn revoke_key(&self, actor: &str, id: &str) -> StoreResult<KeyRow> {
        self.change(|tx| {
            let row = self.get_by_id(tx, id)?;
            if row.status == Status::Revoked {
                return Err(StoreError::Conflict("the key is revoked already".into()));
            }
            tx.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = $2 WHERE id = $1",
                &[&id, &now()],
            )
            .map_err(self.err())?;
            self.audit_in(tx, actor, "revoke", Some(id), None)?;
            self.bump(tx, &[&row.hash])?;
            self.get_by_id(tx, id)
        })
    }

    fn revoke_owner(&self, actor: &str, owner: &str) -> StoreResult<u64> {
        self.change(|tx| {
            let keys = tx
                .query(
                    "SELECT id, hash FROM keys WHERE owner = $1 AND status != 'revoked' ORDER BY seq",
                    &[&owner],
                )
                .map_err(self.err())?
                .iter()
                .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
                .collect::<Result<Vec<_>, postgres::Error>>()
                .map_err(self.err())?;
            let at = now();
            let detail = format!("all keys of {owner}");
            for (id, _) in &keys {
                tx.execute(
                    "UPDATE keys SET status = 'revoked', revoked_at = $2 WHERE id = $1",
                    &[id, &at],
                )
                .map_err(self.err())?;
                self.audit_in(tx, actor, "revoke", Some(id), Some(&detail))?;
            }
            if !keys.is_empty() {
                let hashes: Vec<&str> = keys.iter().map(|(_, hash)| hash.as_str()).collect();
                self.bump(tx, &hashes)?;
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
            let old = self.get_by_id(tx, old_id)?;
            let rotation = Rotation::of(&old, &mut new, old_expires_at)?;
            let until = rotation.until;
            tx.execute(
                "UPDATE keys SET expires_at = $2 WHERE id = $1",
                &[&old_id, &until],
            )
            .map_err(self.err())?;
            self.insert_key(tx, &new)?;
            self.audit_in(
                tx,
                actor,
                "rotate",
                Some(old_id),
                Some(&rotation.old_detail),
            )?;
            self.audit_in(
                tx,
                actor,
                "create",
                Some(&new.id),
                Some(&rotation.new_detail),
            )?;
            self.bump(tx, &[&old.hash, &new.hash])?;
            self.get_by_id(tx, &new.id)
        })
    }

    fn audit(&self, since: Option<Seconds>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.audit_query(
            "SELECT seq, at, actor, action, key_id, detail FROM audit WHERE at >= $1 ORDER BY seq LIMIT $2",
            since.unwrap_or(i64::MIN),
            limit,
        )
    }

    fn audit_latest(&self, before: Option<i64>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.audit_query(
            "SELECT seq, at, actor, action, key_id, detail FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            before.unwrap_or(i64::MAX),
            limit,
        )
    }

    fn policy(&self) -> StoreResult<Policy> {
        let mut conn = self.conn()?;
        Policy::from_meta(|name| get_meta(&mut *conn, name))
    }

    fn set_policy(&self, actor: &str, policy: &Policy) -> StoreResult<()> {
        self.change(|tx| {
            let (rows, detail) = policy.to_meta()?;
            for (name, value) in &rows {
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    &[name, value],
                )
                .map_err(self.err())?;
            }
            self.audit_in(tx, actor, "policy", None, Some(&detail))
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
                "INSERT INTO admin_keys (id, hash, label, created_at) VALUES ($1, $2, $3, $4)",
                &[&id, &hash, &label, &now()],
            )
            .map_err(self.err())?;
            let detail = format!("admin key {id}");
            self.audit_in(tx, actor, "admin_key_create", None, Some(&detail))
        })
    }

    fn revoke_admin_key(&self, actor: &str, id: &str) -> StoreResult<()> {
        self.change(|tx| {
            let removed = tx
                .execute("DELETE FROM admin_keys WHERE id = $1", &[&id])
                .map_err(self.err())?;
            if removed == 0 {
                return Err(StoreError::NotFound);
            }
            let detail = format!("admin key {id}");
            self.audit_in(tx, actor, "admin_key_revoke", None, Some(&detail))
        })
    }

    fn admin_key(&self, hash: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn()?;
        conn.query_typed_opt(
            "SELECT id FROM admin_keys WHERE hash = $1",
            &[(&hash, Type::TEXT)],
        )
        .and_then(|row| row.map(|r| r.try_get(0)).transpose())
        .map_err(self.err())
    }

    fn import_keys(&self, actor: &str, keys: &[(NewKey, Status)]) -> StoreResult<usize> {
        self.change(|tx| {
            for (i, (key, status)) in keys.iter().enumerate() {
                self.insert_key(tx, key).map_err(|e| match e {
                    StoreError::Conflict(why) => StoreError::Conflict(format!("keys[{i}]: {why}")),
                    other => other,
                })?;
                if *status != Status::Enabled {
                    tx.execute(
                        "UPDATE keys SET status = $2 WHERE id = $1",
                        &[&key.id, &status.as_str()],
                    )
                    .map_err(self.err())?;
                }
                self.audit_in(tx, actor, "import", Some(&key.id), Some(&key.owner))?;
            }
            if !keys.is_empty() {
                let hashes: Vec<&str> = keys.iter().map(|(key, _)| key.hash.as_str()).collect();
                self.bump(tx, &hashes)?;
            }
            Ok(keys.len())
        })
    }

    fn record_usage(&self, reports: &[Usage]) -> StoreResult<()> {
        if reports.is_empty() {
            return Ok(());
        }
        // Usage changes nothing gateways get: no version lock, no bump. Each row's update
        // is atomic on its own, so replicas recording at once add up.
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(self.err())?;
        let stmt = tx
            .prepare(
                "UPDATE keys SET uses = uses + $2,
                 last_used_at = GREATEST(coalesce(last_used_at, $3), $3) WHERE hash = $1",
            )
            .map_err(self.err())?;
        // Rows locked in one order by every replica: two reports never deadlock.
        let mut sorted: Vec<&Usage> = reports.iter().collect();
        sorted.sort_by(|a, b| a.hash.cmp(&b.hash));
        for r in sorted {
            let count = i64::try_from(r.count).unwrap_or(i64::MAX);
            tx.execute(&stmt, &[&r.hash, &count, &r.last_used_at])
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }
}

impl PgStore {
    /// Audit entries from `sql`, which takes a bound (`$1`) and a limit (`$2`).
    fn audit_query(&self, sql: &str, bound: i64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let mut conn = self.conn()?;
        conn.query_typed(
            sql,
            &[(&bound, Type::INT8), (&i64::from(limit), Type::INT8)],
        )
        .map_err(self.err())?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                seq: r.try_get(0)?,
                at: r.try_get(1)?,
                actor: r.try_get(2)?,
                action: r.try_get(3)?,
                key_id: r.try_get(4)?,
                detail: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(self.err())
    }
}
