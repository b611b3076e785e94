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
use crate::etag;
use crate::lock;
use crate::store::*;
use keygate_core::record::{count_keys, KeyHash};
use keygate_core::watch::Epoch;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
pub(crate) struct GatewayRecord<'a> {
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
    pub(crate) fn of(row: &'a KeyRow) -> GatewayRecord<'a> {
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

/// The key set document (README "Configuration reference"), `{"version","keys"}`, and
/// where its `keys` array is in it.
fn key_set_document(
    version: &str,
    keys: &[GatewayRecord<'_>],
) -> serde_json::Result<(Vec<u8>, std::ops::Range<usize>)> {
    let mut body = b"{\"version\":".to_vec();
    serde_json::to_writer(&mut body, version)?;
    body.extend_from_slice(b",\"keys\":");
    let start = body.len();
    serde_json::to_writer(&mut body, keys)?;
    let keys_at = start..body.len();
    body.push(b'}');
    Ok((body, keys_at))
}

/// The key set served at `version`, its rows those not revoked in order.
pub(crate) fn key_set_body(version: String, rows: &[KeyRow]) -> StoreResult<KeySetBody> {
    let records: Vec<GatewayRecord<'_>> = rows.iter().map(GatewayRecord::of).collect();
    let (body, keys_at) = key_set_document(&version, &records).map_err(unavailable)?;
    Ok(KeySetBody {
        etag: etag::of(&body),
        version,
        keys: rows.len(),
        keys_at,
        body: body.into(),
    })
}

/// The record of `hash` as gateways get it, unless it is revoked or unknown.
fn gateway_record(conn: &Connection, hash: &str) -> StoreResult<Option<bytes::Bytes>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE hash = ?1 AND status != 'revoked'"
        ))
        .and_then(|mut stmt| stmt.query_row([hash], key_row).optional())
        .map_err(unavailable)?;
    row.map(|(_, row)| {
        serde_json::to_vec(&GatewayRecord::of(&row))
            .map(Into::into)
            .map_err(unavailable)
    })
    .transpose()
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
        crate::changes::announce(&self.feed, version);
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
            let set = Arc::new(key_set_body(version, &rows)?);
            *lock(&self.cache) = Some(set.clone());
            Ok(set)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn record(&self, hash: &KeyHash) -> StoreResult<Option<bytes::Bytes>> {
        gateway_record(&lock(&self.reader), &hash.to_hex())
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
        let result = Self::changes_in(&conn, since);
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn key_set_at(&self) -> StoreResult<(u64, Arc<KeySetBody>)> {
        // The key set's version is the feed's (read with its rows).
        let set = self.key_set()?;
        Ok((set.feed_version()?, set))
    }

    fn key_set_since(&self, since: u64) -> StoreResult<KeySetSince> {
        let conn = lock(&self.reader);
        // One read transaction: the records are those of the version the delta gives.
        conn.execute_batch("BEGIN").map_err(unavailable)?;
        let result = Self::changes_in(&conn, since).and_then(|changes| {
            KeySetSince::from_changes(changes, |hash| gateway_record(&conn, &hash.to_hex()))
        });
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

impl SqliteStore {
    /// What changed since `since`, inside the caller's read transaction.
    fn changes_in(conn: &Connection, since: u64) -> StoreResult<Since> {
        let version = Self::feed_version_of(conn)?;
        if since == version {
            return Ok(Since::Current);
        }
        let from = match Self::get_meta(conn, "changes_from")? {
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
                KeyHash::parse_hex(&hash)
                    .map_err(|_| unavailable(format!("bad hash in the changes table: {hash:?}")))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Since::Changed(version, hashes))
    }
}

mod admin;

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
