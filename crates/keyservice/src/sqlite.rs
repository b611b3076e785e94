//! The SQLite store (`keygate serve --db PATH`): one file in WAL mode with
//! `synchronous=FULL`, so a change is on disk when its transaction commits, and it commits
//! before the API answers.
//!
//! Every change bumps `meta.version` (the key set's `version`) in the same transaction
//! and writes its audit entry there too. Reads of the key set are cached by version.
//!
//! The change feed (changes.rs): its version is `meta.version`, its epoch `meta.epoch`
//! (random, made with the database). Each change writes the hashes it touched into
//! `changes` under the new version, in the same transaction; the table is kept to
//! [`MAX_LOG_HASHES`] rows by dropping the oldest versions (`meta.changes_from` is then
//! the oldest `since` it can answer). A change is announced on the feed's `watch` channel
//! once committed; one made by another process on the same file is found by
//! [`GatewayStore::refresh`].

use crate::changes::MAX_LOG_HASHES;
use crate::duration::Lifetime;
use crate::etag;
use crate::store::*;
use keygate_core::record::{count_keys, KeyHash};
use keygate_core::watch::Epoch;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    label TEXT,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled', 'revoked')),
    read_only INTEGER NOT NULL,
    revoked_at INTEGER,
    last_used_at INTEGER,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS keys_owner ON keys (owner, seq);
CREATE TABLE IF NOT EXISTS admin_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    label TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (version, hash)
) WITHOUT ROWID;
";

const KEY_COLUMNS: &str = "seq, id, hash, owner, label, scopes, created_at, expires_at, status, \
                           read_only, revoked_at, last_used_at, uses";

pub struct SqliteStore {
    path: PathBuf,
    /// Changes go through this one connection, one transaction at a time.
    writer: Mutex<Connection>,
    /// Reads (the key set, lookups, lists) go through this one: WAL readers do not wait
    /// for the writer.
    reader: Mutex<Connection>,
    /// The key set is built on its own connection: a rebuild of a large set does not
    /// hold up lookups and admin reads.
    key_set_reader: Mutex<Connection>,
    cache: Mutex<Option<Arc<KeySetBody>>>,
    epoch: Epoch,
    /// The feed's version, announced once committed.
    feed: tokio::sync::watch::Sender<u64>,
    /// Rows the `changes` table keeps at most.
    log_bound: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// A record as gateways get it (README "Configuration reference"): no usage, no
/// revocation fields, which the filter would refuse.
#[derive(Serialize)]
struct GatewayRecord<'a> {
    id: &'a str,
    hash: &'a str,
    owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    scopes: &'a [String],
    created_at: String,
    expires_at: Option<String>,
    status: &'static str,
    read_only: bool,
}

impl<'a> GatewayRecord<'a> {
    fn of(row: &'a KeyRow) -> GatewayRecord<'a> {
        GatewayRecord {
            id: &row.id,
            hash: &row.hash,
            owner: &row.owner,
            label: row.label.as_deref(),
            scopes: &row.scopes,
            created_at: rfc3339(row.created_at),
            expires_at: row.expires_at.map(rfc3339),
            status: row.status.as_str(),
            read_only: row.read_only,
        }
    }
}

/// The key set document (README "Configuration reference"), fields in order.
#[derive(Serialize)]
struct KeySetOut<'a> {
    version: &'a str,
    keys: Vec<GatewayRecord<'a>>,
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<(i64, KeyRow)> {
    let scopes: String = row.get(5)?;
    let status: String = row.get(8)?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} in the keys table").into(),
        )
    };
    let uses: i64 = row.get(12)?;
    Ok((
        row.get(0)?,
        KeyRow {
            id: row.get(1)?,
            hash: row.get(2)?,
            owner: row.get(3)?,
            label: row.get(4)?,
            scopes: serde_json::from_str(&scopes).map_err(|_| bad("scopes"))?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
            status: Status::parse(&status).ok_or_else(|| bad("status"))?,
            read_only: row.get(9)?,
            revoked_at: row.get(10)?,
            last_used_at: row.get(11)?,
            uses: u64::try_from(uses).unwrap_or(0),
        },
    ))
}

fn scopes_json(scopes: &[String]) -> String {
    serde_json::to_string(scopes).unwrap_or_else(|_| "[]".to_string())
}

fn get_by_id(conn: &Connection, id: &str) -> StoreResult<KeyRow> {
    conn.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
        [id],
        key_row,
    )
    .optional()
    .map_err(unavailable)?
    .map(|(_, row)| row)
    .ok_or(StoreError::NotFound)
}

/// A new version, which touched `hashes` (lowercase hex): recorded in `changes`, which
/// is then pruned to `bound` rows, oldest versions first.
fn bump(tx: &Connection, hashes: &[&str], bound: usize) -> rusqlite::Result<()> {
    let version: i64 = tx.query_row(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'version'
         RETURNING CAST(value AS INTEGER)",
        [],
        |r| r.get(0),
    )?;
    let mut added = 0usize;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO changes (version, hash) VALUES (?1, ?2)")?;
        for hash in hashes {
            added += insert.execute(params![version, hash])?;
        }
    }
    let rows: i64 = tx.query_row(
        "UPDATE meta SET value = CAST(value AS INTEGER) + ?1 WHERE name = 'changes_rows'
         RETURNING CAST(value AS INTEGER)",
        [i64::try_from(added).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )?;
    let mut over = rows.saturating_sub(i64::try_from(bound).unwrap_or(i64::MAX));
    if over <= 0 {
        return Ok(());
    }
    let mut upto = None;
    {
        let mut versions = tx.prepare_cached(
            "SELECT version, count(*) FROM changes GROUP BY version ORDER BY version",
        )?;
        let mut rows = versions.query([])?;
        while over > 0 {
            let Some(row) = rows.next()? else {
                break;
            };
            upto = Some(row.get::<_, i64>(0)?);
            over -= row.get::<_, i64>(1)?;
        }
    }
    if let Some(upto) = upto {
        let removed = tx.execute("DELETE FROM changes WHERE version <= ?1", [upto])?;
        tx.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) - ?1 WHERE name = 'changes_rows'",
            [i64::try_from(removed).unwrap_or(i64::MAX)],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'changes_from'",
            [upto.to_string()],
        )?;
    }
    Ok(())
}

fn audit(
    tx: &Connection,
    actor: &str,
    action: &str,
    key_id: Option<&str>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, key_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now(), actor, action, key_id, detail],
    )?;
    Ok(())
}

fn insert_key(tx: &Connection, key: &NewKey) -> StoreResult<()> {
    let result = tx.execute(
        "INSERT INTO keys (id, hash, owner, label, scopes, created_at, expires_at, status, read_only)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'enabled', ?8)",
        params![
            key.id,
            key.hash,
            key.owner,
            key.label,
            scopes_json(&key.scopes),
            key.created_at,
            key.expires_at,
            key.read_only
        ],
    );
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(
                "a key with this id or hash exists".into(),
            ))
        }
        Err(e) => Err(unavailable(e)),
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, String> {
        let at = |e: rusqlite::Error| format!("{}: {e}", path.display());
        let writer = open_connection(path).map_err(at)?;
        writer.execute_batch(SCHEMA).map_err(at)?;
        let epoch = crate::secret::new_id()?;
        writer
            .execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('version', '0'), ('epoch', ?1)",
                [epoch],
            )
            .map_err(at)?;
        // A database made before the change feed: its log starts at its current version.
        writer
            .execute_batch(
                "INSERT OR IGNORE INTO meta (name, value)
                     SELECT 'changes_from', value FROM meta WHERE name = 'version';
                 INSERT OR IGNORE INTO meta (name, value) VALUES ('changes_rows', '0');",
            )
            .map_err(at)?;
        let epoch = Self::get_meta(&writer, "epoch")
            .map_err(|e| format!("{}: {e}", path.display()))?
            .unwrap_or_default();
        let epoch = Epoch::parse(&epoch)
            .map_err(|e| format!("{}: the change feed's epoch: {e}", path.display()))?;
        let version =
            Self::feed_version_of(&writer).map_err(|e| format!("{}: {e}", path.display()))?;
        let reader = open_connection(path).map_err(at)?;
        let key_set_reader = open_connection(path).map_err(at)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            key_set_reader: Mutex::new(key_set_reader),
            cache: Mutex::new(None),
            epoch,
            feed: tokio::sync::watch::channel(version).0,
            log_bound: MAX_LOG_HASHES,
        })
    }

    /// `meta.version`, as the feed's version.
    fn feed_version_of(conn: &Connection) -> StoreResult<u64> {
        Self::version(conn)?
            .parse::<u64>()
            .map_err(|e| unavailable(format!("meta.version: {e}")))
    }

    /// Tells the long-polls about `version`, if newer than what they were told.
    fn announce(&self, version: u64) {
        self.feed.send_if_modified(|announced| {
            let newer = version > *announced;
            if newer {
                *announced = version;
            }
            newer
        });
    }

    /// Runs `change` in one IMMEDIATE transaction and commits it (durably: WAL with
    /// synchronous=FULL) before returning.
    fn change<T>(&self, change: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = lock(&self.writer);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let out = change(&tx)?;
        let version = Self::feed_version_of(&tx)?;
        tx.commit().map_err(unavailable)?;
        drop(conn);
        self.announce(version);
        Ok(out)
    }

    fn version(conn: &Connection) -> StoreResult<String> {
        conn.query_row("SELECT value FROM meta WHERE name = 'version'", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(unavailable)
    }

    fn get_meta(conn: &Connection, name: &str) -> StoreResult<Option<String>> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(unavailable)
    }
}

impl GatewayStore for SqliteStore {
    fn key_set(&self) -> StoreResult<Arc<KeySetBody>> {
        let conn = lock(&self.key_set_reader);
        // One read transaction: the version and the rows agree.
        conn.execute_batch("BEGIN").map_err(unavailable)?;
        let result = (|| {
            let version = Self::version(&conn)?;
            if let Some(cached) = lock(&self.cache).as_ref() {
                if cached.version == version {
                    return Ok(cached.clone());
                }
            }
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE status != 'revoked' ORDER BY seq"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], key_row)
                .map_err(unavailable)?
                .map(|r| r.map(|(_, row)| row))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            let doc = KeySetOut {
                version: &version,
                keys: rows.iter().map(GatewayRecord::of).collect(),
            };
            let body = serde_json::to_vec(&doc).map_err(unavailable)?;
            let set = Arc::new(KeySetBody {
                etag: etag::of(&body),
                version,
                keys: rows.len(),
                body: body.into(),
            });
            *lock(&self.cache) = Some(set.clone());
            Ok(set)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn record(&self, hash: &KeyHash) -> StoreResult<Option<bytes::Bytes>> {
        let conn = lock(&self.reader);
        let row = conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE hash = ?1 AND status != 'revoked'"),
                [hash.to_hex()],
                key_row,
            )
            .optional()
            .map_err(unavailable)?;
        row.map(|(_, row)| {
            serde_json::to_vec(&GatewayRecord::of(&row))
                .map(Into::into)
                .map_err(unavailable)
        })
        .transpose()
    }

    fn ready(&self) -> StoreResult<()> {
        Self::version(&lock(&self.reader)).map(|_| ())
    }

    fn describe(&self) -> String {
        let conn = lock(&self.reader);
        let count: rusqlite::Result<i64> = conn.query_row(
            "SELECT count(*) FROM keys WHERE status != 'revoked'",
            [],
            |r| r.get(0),
        );
        match (count, Self::version(&conn)) {
            (Ok(n), Ok(v)) => format!(
                "{}: {}, version {v}",
                self.path.display(),
                count_keys(usize::try_from(n).unwrap_or(usize::MAX))
            ),
            _ => self.path.display().to_string(),
        }
    }

    fn feed_epoch(&self) -> &Epoch {
        &self.epoch
    }

    fn feed_version(&self) -> StoreResult<u64> {
        Self::feed_version_of(&lock(&self.reader))
    }

    fn changes_since(&self, since: u64) -> StoreResult<Since> {
        let conn = lock(&self.reader);
        // One read transaction: the version, the log's start and its rows agree.
        conn.execute_batch("BEGIN").map_err(unavailable)?;
        let result = (|| {
            let version = Self::feed_version_of(&conn)?;
            if since == version {
                return Ok(Since::Current);
            }
            let from = match Self::get_meta(&conn, "changes_from")? {
                Some(from) => from
                    .parse::<u64>()
                    .map_err(|e| unavailable(format!("meta.changes_from: {e}")))?,
                None => version,
            };
            if since > version || since < from {
                return Ok(Since::Gone);
            }
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT hash FROM changes WHERE version > ?1")
                .map_err(unavailable)?;
            let hashes = stmt
                .query_map([i64::try_from(since).unwrap_or(i64::MAX)], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(unavailable)?
                .map(|hash| {
                    let hash = hash.map_err(unavailable)?;
                    KeyHash::parse_hex(&hash).map_err(|_| {
                        unavailable(format!("bad hash in the changes table: {hash:?}"))
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(Since::Changed(version, hashes))
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn refresh(&self) {
        if let Ok(version) = self.feed_version() {
            self.announce(version);
        }
    }
}

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
            if row.status == Status::Revoked {
                return Err(StoreError::Conflict("the key is revoked".into()));
            }
            let mut what = Vec::new();
            if let Some(status) = change.status {
                what.push(format!("status={}", status.as_str()));
                row.status = status;
            }
            if let Some(label) = change.label {
                what.push("label".to_string());
                row.label = label;
            }
            if let Some(scopes) = change.scopes {
                what.push(format!("scopes={}", scopes.join(",")));
                row.scopes = scopes;
            }
            if let Some(expires_at) = change.expires_at {
                what.push(format!(
                    "expires_at={}",
                    expires_at.map_or("never".to_string(), rfc3339)
                ));
                row.expires_at = expires_at;
            }
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
            audit(tx, actor, "update", Some(id), Some(&what.join(" "))).map_err(unavailable)?;
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
                Some(&format!(
                    "new key {}; old key expires at {}",
                    new.id,
                    rfc3339(until)
                )),
            )
            .map_err(unavailable)?;
            audit(
                tx,
                actor,
                "create",
                Some(&new.id),
                Some(&format!("rotation of {old_id}")),
            )
            .map_err(unavailable)?;
            bump(tx, &[&old.hash, &new.hash], self.log_bound).map_err(unavailable)?;
            get_by_id(tx, &new.id)
        })
    }

    fn audit(&self, since: Option<Seconds>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at, actor, action, key_id, detail FROM audit WHERE at >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(unavailable)?;
        let entries = stmt
            .query_map(params![since.unwrap_or(i64::MIN), i64::from(limit)], |r| {
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

    fn policy(&self) -> StoreResult<Policy> {
        let conn = lock(&self.reader);
        let mut policy = Policy::default();
        if let Some(scopes) = Self::get_meta(&conn, "policy.scopes")? {
            policy.scopes = serde_json::from_str(&scopes).map_err(unavailable)?;
        }
        if let Some(d) = Self::get_meta(&conn, "policy.default_expiry")? {
            policy.default_expiry = Lifetime::parse(&d, false).map_err(unavailable)?;
        }
        if let Some(d) = Self::get_meta(&conn, "policy.max_expiry")? {
            policy.max_expiry = Lifetime::parse(&d, false).map_err(unavailable)?;
        }
        Ok(policy)
    }

    fn set_policy(&self, actor: &str, policy: &Policy) -> StoreResult<()> {
        self.change(|tx| {
            let scopes = serde_json::to_string(&policy.scopes).map_err(unavailable)?;
            let default = policy.default_expiry.to_string();
            let max = policy.max_expiry.to_string();
            for (name, value) in [
                ("policy.scopes", &scopes),
                ("policy.default_expiry", &default),
                ("policy.max_expiry", &max),
            ] {
                tx.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [name, value],
                )
                .map_err(unavailable)?;
            }
            let detail = format!("scopes={scopes} default_expiry={default} max_expiry={max}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::record::KeySetDoc;

    fn key(owner: &str, n: u32) -> (String, NewKey) {
        let raw = crate::secret::new_key("kg_").unwrap();
        let new = NewKey {
            id: crate::secret::new_id().unwrap(),
            hash: crate::secret::hash(&raw).to_hex(),
            owner: owner.to_string(),
            label: Some(format!("label {n}")),
            scopes: vec!["browse".into()],
            created_at: 1_800_000_000,
            expires_at: Some(1_900_000_000),
            read_only: n.is_multiple_of(2),
        };
        (raw, new)
    }

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("keys.db")).unwrap()
    }

    #[test]
    fn wal_with_full_sync_on_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        for conn in [&s.writer, &s.reader, &s.key_set_reader] {
            let conn = lock(conn);
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", 2));
        }
    }

    #[test]
    fn keys_are_served_until_revoked_and_the_set_parses() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let empty = s.key_set().unwrap();
        assert_eq!(empty.version, "0");
        let (raw, a) = key("alice", 1);
        let row = s.create_key("cli:test", a.clone()).unwrap();
        assert_eq!(row.status, Status::Enabled);
        let set = s.key_set().unwrap();
        assert_ne!(set.etag, empty.etag);
        assert_eq!(set.version, "1");
        let doc = KeySetDoc::parse(&set.body).unwrap();
        assert_eq!(doc.keys.len(), 1);
        assert_eq!(doc.keys[0].hash, crate::secret::hash(&raw));
        // The raw key is nowhere in the database file.
        drop(s);
        let bytes = std::fs::read(dir.path().join("keys.db")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&raw));
        let s = store(&dir);
        assert!(s.record(&crate::secret::hash(&raw)).unwrap().is_some());
        s.revoke_key("cli:test", &a.id).unwrap();
        assert!(s.record(&crate::secret::hash(&raw)).unwrap().is_none());
        assert_eq!(
            KeySetDoc::parse(&s.key_set().unwrap().body)
                .unwrap()
                .keys
                .len(),
            0
        );
        assert!(matches!(
            s.revoke_key("cli:test", &a.id),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(s.get_key("nope"), Err(StoreError::NotFound)));
        assert_eq!(s.get_key(&a.id).unwrap().status, Status::Revoked);
        let audit = s.audit(None, 100).unwrap();
        let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["create", "revoke"]);
    }

    #[test]
    fn update_rotate_revoke_owner_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let mut ids = Vec::new();
        for n in 0..5 {
            let (_, k) = key(if n < 3 { "alice" } else { "bob" }, n);
            ids.push(k.id.clone());
            s.create_key("admin:x", k).unwrap();
        }
        let changed = s
            .update_key(
                "admin:x",
                &ids[0],
                KeyChange {
                    status: Some(Status::Disabled),
                    scopes: Some(vec!["a".into(), "b".into()]),
                    expires_at: Some(None),
                    ..KeyChange::default()
                },
            )
            .unwrap();
        assert_eq!(changed.status, Status::Disabled);
        assert_eq!(changed.expires_at, None);
        assert_eq!(s.get_key(&ids[0]).unwrap(), changed);

        let (_, new) = key("ignored", 9);
        let rotated = s
            .rotate_key("admin:x", &ids[1], new, 1_850_000_000)
            .unwrap();
        assert_eq!(rotated.owner, "alice");
        assert_eq!(rotated.label.as_deref(), Some("label 1"));
        assert_eq!(s.get_key(&ids[1]).unwrap().expires_at, Some(1_850_000_000));

        let page1 = s
            .list_keys(&ListQuery {
                owner: Some("alice".into()),
                limit: 2,
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(page1.keys.len(), 2);
        let page2 = s
            .list_keys(&ListQuery {
                owner: Some("alice".into()),
                limit: 2,
                after: page1.next,
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(page2.keys.len(), 2);
        assert_eq!(page2.next, None);

        assert_eq!(s.revoke_owner("admin:x", "alice").unwrap(), 4);
        assert_eq!(s.revoke_owner("admin:x", "alice").unwrap(), 0);
        let revoked = s
            .list_keys(&ListQuery {
                status: Some(Status::Revoked),
                limit: 100,
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(revoked.keys.len(), 4);
        assert!(matches!(
            s.update_key("admin:x", &ids[0], KeyChange::default()),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            KeySetDoc::parse(&s.key_set().unwrap().body)
                .unwrap()
                .keys
                .len(),
            2
        );
    }

    fn changed(s: &SqliteStore, since: u64) -> (u64, Vec<String>) {
        match s.changes_since(since).unwrap() {
            Since::Changed(version, hashes) => {
                let mut hashes: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
                hashes.sort();
                (version, hashes)
            }
            other => panic!("since {since}: {other:?}"),
        }
    }

    fn sorted(hashes: &[&str]) -> Vec<String> {
        let mut hashes: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
        hashes.sort();
        hashes
    }

    #[test]
    fn every_change_is_in_the_feed_under_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let mut versions = s.subscribe();
        assert_eq!(s.feed_version().unwrap(), 0);
        assert_eq!(s.changes_since(0).unwrap(), Since::Current);
        assert_eq!(s.changes_since(1).unwrap(), Since::Gone);
        let (_, a) = key("alice", 1);
        let (_, b) = key("alice", 2);
        let (_, c) = key("bob", 3);
        for k in [&a, &b, &c] {
            s.create_key("t", k.clone()).unwrap();
        }
        assert_eq!(*versions.borrow_and_update(), 3);
        assert_eq!(changed(&s, 0), (3, sorted(&[&a.hash, &b.hash, &c.hash])));
        assert_eq!(changed(&s, 2), (3, sorted(&[&c.hash])));
        s.update_key(
            "t",
            &c.id,
            KeyChange {
                status: Some(Status::Disabled),
                ..KeyChange::default()
            },
        )
        .unwrap();
        assert_eq!(changed(&s, 3), (4, sorted(&[&c.hash])));
        s.revoke_key("t", &c.id).unwrap();
        assert_eq!(changed(&s, 4), (5, sorted(&[&c.hash])));
        let (_, new) = key("x", 4);
        let rotated = s.rotate_key("t", &a.id, new, 1_850_000_000).unwrap();
        assert_eq!(changed(&s, 5), (6, sorted(&[&a.hash, &rotated.hash])));
        assert_eq!(s.revoke_owner("t", "alice").unwrap(), 3);
        assert_eq!(
            changed(&s, 6),
            (7, sorted(&[&a.hash, &b.hash, &rotated.hash]))
        );
        let (_, d) = key("dave", 5);
        s.import_keys("t", &[(d.clone(), Status::Enabled)]).unwrap();
        assert_eq!(changed(&s, 7), (8, sorted(&[&d.hash])));
        assert!(versions.has_changed().unwrap());
        assert_eq!(*versions.borrow_and_update(), 8);
        // Usage, policy and admin keys are not changes of what gateways get.
        s.record_usage(&[Usage {
            hash: d.hash.clone(),
            count: 1,
            last_used_at: 1,
        }])
        .unwrap();
        s.set_policy("t", &Policy::default()).unwrap();
        assert_eq!(s.changes_since(8).unwrap(), Since::Current);
        assert!(!versions.has_changed().unwrap());
        // The epoch is the database's: the same when opened again.
        let epoch = s.feed_epoch().clone();
        drop(s);
        let s = store(&dir);
        assert_eq!(s.feed_epoch(), &epoch);
        assert_eq!(changed(&s, 7), (8, sorted(&[&d.hash])));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(store(&other).feed_epoch(), &epoch);
    }

    #[test]
    fn the_changes_table_is_bounded_and_other_writers_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.log_bound = 3;
        let keys: Vec<NewKey> = (0..4).map(|n| key("alice", n).1).collect();
        s.import_keys(
            "t",
            &[
                (keys[0].clone(), Status::Enabled),
                (keys[1].clone(), Status::Enabled),
            ],
        )
        .unwrap(); // 1
        s.create_key("t", keys[2].clone()).unwrap(); // 2
        s.create_key("t", keys[3].clone()).unwrap(); // 3: version 1 goes
        assert_eq!(s.changes_since(0).unwrap(), Since::Gone);
        assert_eq!(changed(&s, 1), (3, sorted(&[&keys[2].hash, &keys[3].hash])));
        assert_eq!(s.revoke_owner("t", "alice").unwrap(), 4); // 4: alone over the bound
        assert_eq!(s.changes_since(3).unwrap(), Since::Gone);
        assert_eq!(s.changes_since(4).unwrap(), Since::Current);
        let rows: i64 = lock(&s.reader)
            .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);

        // Another process changes the database: found by refresh.
        let mut versions = s.subscribe();
        versions.borrow_and_update();
        let other = store(&dir);
        let (_, e) = key("erin", 9);
        other.create_key("cli:other", e.clone()).unwrap();
        assert!(!versions.has_changed().unwrap());
        s.refresh();
        assert_eq!(*versions.borrow_and_update(), 5);
        assert_eq!(changed(&s, 4), (5, sorted(&[&e.hash])));
    }

    #[test]
    fn policy_admin_keys_usage() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert_eq!(s.policy().unwrap(), Policy::default());
        let policy = Policy {
            scopes: Some(vec!["browse".into()]),
            default_expiry: Lifetime::parse("30d", false).unwrap(),
            max_expiry: Lifetime::parse("1y", false).unwrap(),
        };
        s.set_policy("cli:me", &policy).unwrap();
        assert_eq!(store(&dir).policy().unwrap(), policy);
        s.add_admin_key("cli:me", "adm1", &"ab".repeat(32), None)
            .unwrap();
        assert_eq!(
            s.admin_key(&"ab".repeat(32)).unwrap().as_deref(),
            Some("adm1")
        );
        assert_eq!(s.admin_key(&"cd".repeat(32)).unwrap(), None);
        let (_, k) = key("alice", 1);
        s.create_key("cli:me", k.clone()).unwrap();
        let before = s.key_set().unwrap();
        for at in [100, 300, 200] {
            s.record_usage(&[Usage {
                hash: k.hash.clone(),
                count: 2,
                last_used_at: at,
            }])
            .unwrap();
        }
        let row = s.get_key(&k.id).unwrap();
        assert_eq!((row.uses, row.last_used_at), (6, Some(300)));
        // Usage is not a change of the key set.
        assert_eq!(s.key_set().unwrap().etag, before.etag);
    }
}

/// `cargo test -p keygate-keyservice --release -- --ignored --nocapture million`: what a
/// revocation and the next key set cost at 1 000 000 keys.
#[cfg(test)]
mod scale {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn a_million_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        {
            let mut conn = lock(&store.writer);
            let tx = conn.transaction().unwrap();
            for n in 0..1_000_000u32 {
                let key = NewKey {
                    id: crate::secret::new_id().unwrap(),
                    hash: crate::secret::hash(&n.to_string()).to_hex(),
                    owner: format!("owner{}", n % 1000),
                    label: None,
                    scopes: vec!["browse".into()],
                    created_at: 1_800_000_000,
                    expires_at: None,
                    read_only: false,
                };
                insert_key(&tx, &key).unwrap();
            }
            bump(&tx, &[], MAX_LOG_HASHES).unwrap();
            tx.commit().unwrap();
        }
        let t = Instant::now();
        let set = store.key_set().unwrap();
        println!("first key set: {:?}, {} bytes", t.elapsed(), set.body.len());
        let id: String = lock(&store.reader)
            .query_row("SELECT id FROM keys WHERE seq = 500000", [], |r| r.get(0))
            .unwrap();
        let t = Instant::now();
        store.revoke_key("test", &id).unwrap();
        println!("revoke (committed): {:?}", t.elapsed());
        let t = Instant::now();
        let set = store.key_set().unwrap();
        println!("key set after it: {:?} ({} keys)", t.elapsed(), set.keys);
        let t = Instant::now();
        let n = store.revoke_owner("test", "owner7").unwrap();
        println!("revoke all of an owner ({n} keys): {:?}", t.elapsed());
        let t = Instant::now();
        store.record(&crate::secret::hash("123")).unwrap().unwrap();
        println!("lookup: {:?}", t.elapsed());
    }
}
