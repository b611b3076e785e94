//! `keygate serve` and the commands that prepare its database (`keygate admin`,
//! `keygate policy`): flags in, the key service (crates/keyservice) does the work
//! (README "`keygate serve`" and "The key service (`keygate serve --db`)").

use crate::error::{Error, Result};
use keygate_core::record::count_keys;
use keygate_keyservice::server::{Options, Tls};
use keygate_keyservice::Source;
use std::path::PathBuf;

pub struct Serve {
    pub keys: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub listen: String,
    pub threads: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// Serves until the process is stopped (Ctrl-C, SIGTERM: open requests finish first).
pub fn run(serve: Serve) -> Result<()> {
    let source = match (serve.keys, serve.db) {
        (Some(keys), None) => Source::File(keys),
        (None, Some(db)) => Source::Db(db),
        _ => {
            return Err(Error::new(
                "serve: give exactly one of --keys FILE and --db PATH",
            ))
        }
    };
    let tls = match (serve.tls_cert, serve.tls_key, serve.client_ca) {
        (Some(cert), Some(key), client_ca) => Some(Tls {
            cert,
            key,
            client_ca,
        }),
        (None, None, None) => None,
        (None, None, Some(_)) => {
            return Err(Error::new(
                "--client-ca needs TLS: give --tls-cert and --tls-key too",
            ))
        }
        _ => return Err(Error::new("--tls-cert and --tls-key go together")),
    };
    let options = Options {
        listen: serve.listen,
        tls,
    };
    keygate_keyservice::run(source, options, serve.threads).map_err(|lines| Error { lines })
}

/// `keygate admin new`: prints the admin key once, as JSON.
pub fn admin_new(db: &std::path::Path, label: Option<&str>) -> Result<()> {
    let (id, key) = keygate_keyservice::admin_new(db, label).map_err(Error::new)?;
    #[derive(serde::Serialize)]
    struct Shown<'a> {
        id: &'a str,
        admin_key: &'a str,
    }
    let out = serde_json::to_string(&Shown {
        id: &id,
        admin_key: &key,
    })
    .map_err(|e| Error::new(e.to_string()))?;
    println!("{out}");
    Ok(())
}

/// `keygate admin revoke`: prints `{"id","revoked":true}`.
pub fn admin_revoke(db: &std::path::Path, id: &str) -> Result<()> {
    keygate_keyservice::admin_revoke(db, id).map_err(Error::new)?;
    println!("{}", serde_json::json!({"id": id, "revoked": true}));
    Ok(())
}

/// `keygate policy`: changes what is given and prints the policy in force.
pub fn policy(
    db: &std::path::Path,
    scopes: Option<String>,
    any_scope: bool,
    default_expiry: Option<&str>,
    max_expiry: Option<&str>,
) -> Result<()> {
    let scopes = match (scopes, any_scope) {
        (Some(list), false) => Some(Some(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )),
        (None, true) => Some(None),
        _ => None,
    };
    let policy =
        keygate_keyservice::policy(db, scopes, default_expiry, max_expiry).map_err(Error::new)?;
    #[derive(serde::Serialize)]
    struct Shown {
        scopes: Option<Vec<String>>,
        default_expiry: String,
        max_expiry: String,
    }
    let out = serde_json::to_string(&Shown {
        scopes: policy.scopes,
        default_expiry: policy.default_expiry.to_string(),
        max_expiry: policy.max_expiry.to_string(),
    })
    .map_err(|e| Error::new(e.to_string()))?;
    println!("{out}");
    Ok(())
}

/// `keygate import`: records from a key file into the database.
pub fn import(keys: &std::path::Path, db: &std::path::Path) -> Result<()> {
    let n = keygate_keyservice::import(keys, db).map_err(|lines| Error { lines })?;
    // A PostgreSQL URL is named without its password.
    let shown =
        keygate_keyservice::Db::parse(db).map_or_else(|_| db.display().to_string(), |d| d.shown());
    println!("imported {} into {shown}", count_keys(n));
    Ok(())
}

/// `keygate export`: the database's key set into a key file.
pub fn export(db: &std::path::Path, keys: &std::path::Path) -> Result<()> {
    let n = keygate_keyservice::export(db, keys).map_err(Error::new)?;
    println!("exported {} to {}", count_keys(n), keys.display());
    Ok(())
}
