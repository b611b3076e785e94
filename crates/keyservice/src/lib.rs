//! keygate's key service (README "The key service"): the store behind `keygate serve`
//! (keys.json read-only, or SQLite or PostgreSQL read-write), the HTTP app (gateway
//! endpoints, health, the admin API), TLS and mTLS.

pub mod app;
pub mod atomic_file;

/// A mutex's guard. Nothing panics while holding the key service's locks; if something
/// did, what they guard is still whole.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub mod changes;
pub mod duration;
pub mod etag;
pub mod file;
pub mod pg;
pub mod secret;
pub mod server;
pub mod sqlite;
pub mod store;
pub mod usage_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where keys come from: exactly one per process.
pub enum Source {
    /// `--keys keys.json`: read-only.
    File(PathBuf),
    /// `--db PATH` (SQLite) or `--db postgres://...` (PostgreSQL): read-write, with the
    /// admin API.
    Db(PathBuf),
}

/// What `--db` names: a SQLite file, or a PostgreSQL database (`postgres://` or
/// `postgresql://`). Every command that takes `--db` opens its store here.
pub enum Db {
    Sqlite(PathBuf),
    Postgres(Box<pg::Dsn>),
}

impl Db {
    pub fn parse(value: &Path) -> Result<Db, String> {
        match value.to_str() {
            Some(text) if pg::is_dsn(text) => {
                pg::Dsn::parse(text).map(|dsn| Db::Postgres(Box::new(dsn)))
            }
            _ => Ok(Db::Sqlite(value.to_path_buf())),
        }
    }

    /// What errors name: the path, or the DSN without its password.
    pub fn shown(&self) -> String {
        match self {
            Db::Sqlite(path) => path.display().to_string(),
            Db::Postgres(dsn) => dsn.shown().to_string(),
        }
    }

    /// Whether this is a SQLite file that does not exist (a PostgreSQL database is made
    /// by its operator, and its tables at the first open).
    pub fn is_missing_file(&self) -> bool {
        matches!(self, Db::Sqlite(path) if !path.is_file())
    }

    /// Opens the store (creating a missing SQLite file, or missing tables).
    pub fn open(&self) -> Result<Arc<dyn store::AdminStore>, String> {
        Ok(match self {
            Db::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path)?),
            Db::Postgres(dsn) => Arc::new(pg::PgStore::open(dsn)?),
        })
    }

    /// Opens the store for `keygate serve`: on PostgreSQL, also listens for the changes
    /// other replicas make.
    pub fn open_to_serve(&self) -> Result<Arc<dyn store::AdminStore>, String> {
        Ok(match self {
            Db::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path)?),
            Db::Postgres(dsn) => {
                let store = pg::PgStore::open(dsn)?;
                store.listen()?;
                Arc::new(store)
            }
        })
    }
}

/// `keygate serve`: opens the store and serves until Ctrl-C or SIGTERM. Errors are lines
/// for stderr.
pub fn run(source: Source, options: server::Options, threads: usize) -> Result<(), Vec<String>> {
    let require_client_cert = options.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let app = match source {
        Source::File(path) => {
            let store = Arc::new(file::FileStore::open(&path)?);
            let usage = usage_file::UsageFile::open(&path, store.clone());
            app::App::new(store, None, require_client_cert).with_usage_file(Arc::new(usage))
        }
        Source::Db(path) => {
            let store = Db::parse(&path)
                .and_then(|db| db.open_to_serve())
                .map_err(|e| vec![e])?;
            app::App::new(store.clone(), Some(store), require_client_cert)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| vec![format!("cannot start the async runtime: {e}")])?;
    runtime
        .block_on(server::serve(app, options))
        .map_err(|e| vec![e])
}

/// Who acts when a local command changes the store: `cli:<user>` (`$USER`, `$LOGNAME`,
/// or the numeric uid).
pub fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty());
    #[cfg(unix)]
    let user = user.or_else(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .ok()
            .map(|m| format!("uid {}", m.uid()))
    });
    format!("cli:{}", user.unwrap_or_else(|| "unknown".to_string()))
}

/// `keygate admin new --db PATH`: makes an admin key; answers `(id, key)`. The key is
/// stored hashed and shown only by the caller, once.
pub fn admin_new(db: &Path, label: Option<&str>) -> Result<(String, String), String> {
    let db = Db::parse(db)?;
    let store = db.open()?;
    let key = secret::new_key(secret::ADMIN_PREFIX)?;
    let id = secret::new_id()?;
    store
        .add_admin_key(&local_actor(), &id, &secret::hash(&key).to_hex(), label)
        .map_err(|e| format!("{}: {e}", db.shown()))?;
    Ok((id, key))
}

/// `keygate admin revoke --db PATH ID`: the admin key `id` is refused from now on (by a
/// running `keygate serve` too: admin keys are looked up on every request).
pub fn admin_revoke(db: &Path, id: &str) -> Result<(), String> {
    use store::StoreError;
    let db = Db::parse(db)?;
    let store = db.open()?;
    store
        .revoke_admin_key(&local_actor(), id)
        .map_err(|e| match e {
            StoreError::NotFound => format!("{}: no admin key with the id {id:?}", db.shown()),
            e => format!("{}: {e}", db.shown()),
        })
}

/// `keygate policy --db PATH [--scopes a,b | --any-scope] [--default-expiry D] [--max-expiry D]`:
/// changes what is given, keeps the rest, and answers the policy now in force.
pub fn policy(
    db: &Path,
    scopes: Option<Option<Vec<String>>>,
    default_expiry: Option<&str>,
    max_expiry: Option<&str>,
) -> Result<store::Policy, String> {
    use duration::Lifetime;
    let db = Db::parse(db)?;
    let store = db.open()?;
    let at = |e: store::StoreError| format!("{}: {e}", db.shown());
    let mut policy = store.policy().map_err(at)?;
    let changing = scopes.is_some() || default_expiry.is_some() || max_expiry.is_some();
    if let Some(scopes) = scopes {
        if let Some(list) = &scopes {
            for scope in list {
                keygate_core::scope::Scope::parse(scope).map_err(|e| format!("--scopes: {e}"))?;
            }
        }
        policy.scopes = scopes;
    }
    if let Some(d) = default_expiry {
        policy.default_expiry =
            Lifetime::parse(d, false).map_err(|e| format!("--default-expiry {e}"))?;
    }
    if let Some(d) = max_expiry {
        policy.max_expiry = Lifetime::parse(d, false).map_err(|e| format!("--max-expiry {e}"))?;
    }
    if !policy.default_expiry.within(policy.max_expiry) {
        return Err(format!(
            "the default expiry ({}) is longer than the maximum ({})",
            policy.default_expiry, policy.max_expiry
        ));
    }
    if changing {
        store.set_policy(&local_actor(), &policy).map_err(at)?;
    }
    Ok(policy)
}

/// `keygate import --keys FILE --db PATH`: adds every record of a key file (checked as the
/// filter checks it) to the database, in one transaction: all or none. Ids must be
/// UUIDs (as `keygate new` makes them); times keep whole seconds. The policy is not
/// applied: these keys exist already. Answers how many.
pub fn import(keys: &Path, db: &Path) -> Result<usize, Vec<String>> {
    use keygate_core::record::{KeySetDoc, KeyStatus};
    use store::{NewKey, Status};
    let at = |what: String| format!("{}: {what}", keys.display());
    let bytes = std::fs::read(keys).map_err(|e| vec![at(format!("cannot read: {e}"))])?;
    let doc = KeySetDoc::parse(&bytes).map_err(|problems| {
        problems
            .iter()
            .map(|p| at(p.to_string()))
            .collect::<Vec<_>>()
    })?;
    let seconds = |t: keygate_core::timestamp::Timestamp| t.unix_seconds();
    let now = store::now();
    let mut records = Vec::with_capacity(doc.keys.len());
    let mut problems = Vec::new();
    for (i, record) in doc.keys.into_iter().enumerate() {
        if !secret::is_id(record.id.as_str()) {
            problems.push(at(format!(
                "keys[{i}].id: {:?} is not a lowercase UUID, which the key service's ids are",
                record.id.as_str()
            )));
            continue;
        }
        let status = match record.status {
            KeyStatus::Enabled => Status::Enabled,
            KeyStatus::Disabled => Status::Disabled,
        };
        records.push((
            NewKey {
                id: record.id.as_str().to_string(),
                hash: record.hash.to_hex(),
                owner: record.owner.as_str().to_string(),
                label: record.label,
                scopes: record
                    .scopes
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
                created_at: record.created_at.map_or(now, seconds),
                expires_at: record.expires_at.map(seconds),
                read_only: record.read_only,
            },
            status,
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let db = Db::parse(db).map_err(|e| vec![e])?;
    let store = db.open().map_err(|e| vec![e])?;
    store
        .import_keys(&local_actor(), &records)
        .map_err(|e| vec![format!("{}: {e} (nothing imported)", db.shown())])
}

/// `keygate export --db PATH --keys FILE`: writes the key set as gateways get it (no
/// revoked keys, no usage) to FILE, atomically (a temporary file, fsync, rename), so
/// file mode or any static server can serve it. Answers how many keys.
pub fn export(db: &Path, keys: &Path) -> Result<usize, String> {
    let db = Db::parse(db)?;
    if db.is_missing_file() {
        return Err(format!("{}: no such database", db.shown()));
    }
    let store = db.open()?;
    let set = store
        .key_set()
        .map_err(|e| format!("{}: {e}", db.shown()))?;
    atomic_file::write_atomically(keys, &[&set.body[..], b"\n"].concat())
        .map_err(|e| format!("{}: cannot write: {e}", keys.display()))?;
    Ok(set.keys)
}
