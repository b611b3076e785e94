//! Where a key command works (README "Managing keys"): a key file (`--keys`, the default),
//! a key service database (`--db`), or a key service's admin API (`--server`). Exactly one.

use crate::error::{Error, Result};
use crate::remote::Remote;
use crate::DEFAULT_KEYS;
use std::path::PathBuf;

/// The options every key command takes to say where the keys are.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// The key file
    #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
    pub keys: PathBuf,
    /// A key service database (a SQLite file or postgres://...), changed directly and
    /// audited as the local user
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// A key service's URL (https://...): its admin API, with the admin key from
    /// $KEYGATE_ADMIN_KEY or --admin-key-file
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// A file holding the admin key for --server
    #[arg(long, value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Also trust this CA certificate (PEM) for --server, e.g. for a self-signed service
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

pub enum Target {
    Keys(PathBuf),
    Db(PathBuf),
    Server(Remote),
}

impl TargetArgs {
    /// `keys_on_command_line`: whether --keys was given on the command line (rather than
    /// read from KEYGATE_KEYS, which only says where the key file is when no other target
    /// is named).
    pub fn resolve(self, keys_on_command_line: bool) -> Result<Target> {
        let explicit_keys = Some(&self.keys).filter(|_| keys_on_command_line);
        let named = [
            explicit_keys.map(|_| "--keys"),
            self.db.as_ref().map(|_| "--db"),
            self.server.as_ref().map(|_| "--server"),
        ];
        let named: Vec<&str> = named.into_iter().flatten().collect();
        if named.len() > 1 {
            return Err(Error::new(format!(
                "{} given together: name one place for the keys (--keys FILE, --db PATH or \
                 --server URL)",
                named.join(" and ")
            )));
        }
        if self.server.is_none() {
            for (given, option) in [
                (self.admin_key_file.is_some(), "--admin-key-file"),
                (self.ca_cert.is_some(), "--ca-cert"),
            ] {
                if given {
                    return Err(Error::new(format!(
                        "{option} is for --server URL only: add --server, or leave {option} out"
                    )));
                }
            }
        }
        if let Some(url) = self.server {
            return Ok(Target::Server(Remote::connect(
                &url,
                self.admin_key_file.as_deref(),
                self.ca_cert.as_deref(),
            )?));
        }
        if let Some(db) = self.db {
            return Ok(Target::Db(db));
        }
        Ok(Target::Keys(self.keys))
    }
}
