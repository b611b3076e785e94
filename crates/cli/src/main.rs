//! `keygate`: manage API keys for the keygate filter (README "Managing keys").
//!
//! Keys are made here and shown once; keys.json keeps only their SHA-256. Every error is
//! one line on stderr starting with `keygate: `, and the exit status is 1 (2 for a command
//! line that does not parse).

mod admin;
mod check;
mod duration;
mod edit;
mod error;
mod generate;
mod hash;
mod keys_file;
mod list;
mod new;
mod records;
mod remote;
mod serve;
mod service;
mod target;
mod usage;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use target::{Target, TargetArgs};

/// The key file when neither --keys nor KEYGATE_KEYS names one (README "Managing keys").
const DEFAULT_KEYS: &str = "keys.json";

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Make, list, disable, revoke and rotate API keys for the keygate Envoy filter \
             (in a key file, a key service's database, or through its admin API); check its \
             configuration; serve keys over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key: print it once (with its id and expiry) and store its hashed record (a
    /// missing key file or database is created)
    New(new::NewKey),
    /// List the keys (no hashes in the table; --json prints the records)
    List {
        #[command(flatten)]
        target: TargetArgs,
        /// The records as a JSON array, hashes included
        #[arg(long)]
        json: bool,
        /// Only this owner's keys
        #[arg(long)]
        owner: Option<String>,
        /// Only keys with this status
        #[arg(long, value_parser = ["enabled", "disabled", "revoked"])]
        status: Option<String>,
    },
    /// Disable a key: it stays listed and the filter answers "API key disabled"
    Disable {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Enable a disabled key again
    Enable {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Revoke a key (or, with --owner, all of an owner's keys): the filter answers 401
    /// invalid_token. A key file loses the record; a key service keeps it as revoked
    Revoke {
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        id: Option<String>,
        /// Revoke every key of this owner, and print how many
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Replace a key (--db or --server): a new key with the same owner, label, scopes and
    /// read-only flag, printed once; the old one expires after --grace (default: now)
    Rotate {
        id: String,
        /// How long the old key keeps working: 0m, 1h, 24h...
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The key service's audit trail (--db or --server): who changed which key, when
    Audit {
        /// Only entries from this time on: RFC 3339, or how long ago (24h, 7d)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// The entries as a JSON array
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the record hash (hex SHA-256) of a key read on stdin, after removing a legacy
    /// prefix as the filter does (default: apikey|)
    Hash {
        /// Not an option: a key given here is refused with a pointer to stdin (and is
        /// never echoed, unlike an argument clap does not know)
        #[arg(hide = true, value_name = "KEY", allow_hyphen_values = true)]
        key: Vec<String>,
        /// A prefix to remove before hashing, as the filter's strip_prefixes (repeatable;
        /// replaces the default apikey|)
        #[arg(long, value_name = "PREFIX", conflicts_with = "no_strip")]
        strip_prefix: Vec<String>,
        /// Hash the key exactly as given (for a filter with "strip_prefixes": [])
        #[arg(long)]
        no_strip: bool,
    },
    /// Say whether a key read on stdin is of keygate's key format (prefix, 256 random bits,
    /// checksum), as the filter's key_format decides; never prints the key. Exits 1 when
    /// it is not
    CheckKey {
        /// Not an option: a key given here is refused with a pointer to stdin
        #[arg(hide = true, value_name = "KEY", allow_hyphen_values = true)]
        key: Vec<String>,
        /// A prefix of the key format (repeatable; default kg)
        #[arg(long, value_name = "PREFIX")]
        prefix: Vec<String>,
    },
    /// Check a plugin configuration with the filter's own parser: a JSON file, - for
    /// stdin, or an Envoy / Kubernetes YAML holding keygate's configuration
    Check {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
        /// Print the checked JSON configuration as the Envoy filter (YAML) that loads it
        #[arg(long)]
        emit_envoy: bool,
    },
    /// Serve keys to gateways over HTTP(S): GET /v1/keyset (with ETag) and
    /// GET /v1/keys/{hash}; with --db, also the admin API (/v1/admin/...)
    Serve {
        /// A key file, served read-only
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "db",
            conflicts_with = "db"
        )]
        keys: Option<PathBuf>,
        /// A SQLite database (created if missing) or postgres://USER:PASSWORD@HOST:PORT/DB
        /// (one of several replicas), served read-write with the admin API
        #[arg(long, value_name = "PATH", env = "KEYGATE_DB", hide_env_values = true)]
        db: Option<PathBuf>,
        /// Address to listen on; port 0 picks a free port (the address is printed)
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081",
              value_parser = usage::listen_address)]
        listen: String,
        /// Worker threads
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Serve HTTPS with this certificate chain (PEM)
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM)
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Gateway endpoints (/v1/keyset, /v1/keys/{hash}, /v1/usage) answer only clients
        /// with a certificate signed by this CA (PEM); needs --tls-cert
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        client_ca: Option<PathBuf>,
    },
    /// Copy every record of a key file into a key service database (all or none)
    Import {
        /// The key file to read
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
        /// The key service's database: a SQLite file (created if missing) or postgres://...
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
    },
    /// Write a key service database's key set (revoked keys left out) to a key file
    Export {
        /// The key service's database: a SQLite file or postgres://...
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The key file to write (replaced atomically)
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
    },
    /// Admin keys for the key service's admin API
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show or set the key service's policy: the scope catalog and the default and
    /// maximum expiry of new keys
    Policy {
        /// The key service's database: a SQLite file or postgres://...
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The scope catalog, comma-separated: keys may hold only these
        #[arg(long, value_name = "SCOPES", conflicts_with = "any_scope")]
        scopes: Option<String>,
        /// No catalog: any scope is accepted
        #[arg(long)]
        any_scope: bool,
        /// Lifetime of a new key when none is asked for: never, 7d, 30d, 90d, 365d...
        #[arg(long, value_name = "DURATION")]
        default_expiry: Option<String>,
        /// The longest lifetime a key may get: never, 7d, 30d, 90d, 365d...
        #[arg(long, value_name = "DURATION")]
        max_expiry: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make an admin key: printed once, stored hashed in the database
    New {
        /// The key service's database: a SQLite file (created if missing) or postgres://...
        #[arg(long, value_name = "PATH", env = "KEYGATE_DB", hide_env_values = true)]
        db: PathBuf,
        /// What the admin key is for
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke an admin key: refused from then on, by a running `keygate serve` too
    Revoke {
        /// The key service's database: a SQLite file or postgres://...
        #[arg(long, value_name = "PATH", env = "KEYGATE_DB", hide_env_values = true)]
        db: PathBuf,
        /// The admin key's id (as `admin new` printed it, and as the audit trail names it)
        id: String,
    },
}

/// A key command on its target: the key file, or a key service.
fn on(
    target: Target,
    keys: impl FnOnce(PathBuf) -> error::Result<()>,
    service: impl FnOnce(&dyn admin::Admin) -> error::Result<()>,
) -> error::Result<()> {
    match target {
        Target::Keys(path) => keys(path),
        Target::Db(path) => service(&admin::Db::open(&path, false)?),
        Target::Server(remote) => service(&remote),
    }
}

/// What a key file cannot do (rotate, audit): say what to use instead.
fn needs_service(line: &str) -> error::Result<()> {
    Err(error::Error::new(line))
}

fn run(command: Command, keys_cli: bool) -> error::Result<()> {
    use edit::Change;
    match command {
        Command::New(key) => new::run(key, keys_cli),
        Command::List {
            target,
            json,
            owner,
            status,
        } => {
            let status_filter = status
                .as_deref()
                .and_then(keygate_keyservice::store::Status::parse);
            on(
                target.resolve(keys_cli)?,
                |keys| list::run(&keys, json, owner.as_deref(), status.as_deref()),
                |admin| service::list(admin, json, owner.as_deref(), status_filter),
            )
        }
        Command::Disable { id, target } => on(
            target.resolve(keys_cli)?,
            |keys| edit::run(Change::Disable, &id, &keys),
            |admin| service::change(admin, Change::Disable, &id),
        ),
        Command::Enable { id, target } => on(
            target.resolve(keys_cli)?,
            |keys| edit::run(Change::Enable, &id, &keys),
            |admin| service::change(admin, Change::Enable, &id),
        ),
        Command::Revoke { id, owner, target } => match (id, owner) {
            (_, Some(owner)) => on(
                target.resolve(keys_cli)?,
                |keys| edit::revoke_owner(&owner, &keys),
                |admin| service::revoke_owner(admin, &owner),
            ),
            (id, None) => {
                let id = id.unwrap_or_default();
                on(
                    target.resolve(keys_cli)?,
                    |keys| edit::run(Change::Revoke, &id, &keys),
                    |admin| service::change(admin, Change::Revoke, &id),
                )
            }
        },
        Command::Rotate { id, grace, target } => on(
            target.resolve(keys_cli)?,
            |keys| {
                needs_service(&format!(
                    "rotate needs a key service (--db PATH or --server URL): with a key file, \
                     make the new key with `keygate new --keys {}` and revoke the old one once \
                     its user has switched",
                    keys.display()
                ))
            },
            |admin| service::rotate(admin, &id, grace.as_deref()),
        ),
        Command::Audit {
            since,
            json,
            target,
        } => {
            let since = since.as_deref().map(service::since).transpose()?;
            on(
                target.resolve(keys_cli)?,
                |_| {
                    needs_service(
                        "audit needs a key service (--db PATH or --server URL): a key file \
                         keeps no audit trail (its history is its version control's)",
                    )
                },
                |admin| service::audit(admin, since, json),
            )
        }
        Command::Hash {
            key: _,
            strip_prefix,
            no_strip,
        } => hash::run(strip_prefix, no_strip),
        Command::CheckKey { key: _, prefix } => hash::check_key(prefix),
        Command::Check { config, emit_envoy } => check::run(&config, emit_envoy),
        Command::Serve {
            keys,
            db,
            listen,
            threads,
            tls_cert,
            tls_key,
            client_ca,
        } => serve::run(serve::Serve {
            keys,
            db,
            listen,
            threads: threads.into(),
            tls_cert,
            tls_key,
            client_ca,
        }),
        Command::Import { keys, db } => serve::import(&keys, &db),
        Command::Export { db, keys } => serve::export(&db, &keys),
        Command::Admin(AdminCommand::New { db, label }) => serve::admin_new(&db, label.as_deref()),
        Command::Admin(AdminCommand::Revoke { db, id }) => serve::admin_revoke(&db, &id),
        Command::Policy {
            db,
            scopes,
            any_scope,
            default_expiry,
            max_expiry,
        } => serve::policy(
            &db,
            scopes,
            any_scope,
            default_expiry.as_deref(),
            max_expiry.as_deref(),
        ),
    }
}

/// A command line that does not parse: one line, exit 2 (help and version as clap prints
/// them).
fn usage_error(line: &str) -> ExitCode {
    eprintln!("keygate: {line}");
    ExitCode::from(2)
}

/// Whether --keys was given on the command line, not read from KEYGATE_KEYS.
fn keys_on_command_line(matches: &clap::ArgMatches) -> bool {
    matches.subcommand().is_some_and(|(_, m)| {
        m.ids().any(|id| id.as_str() == "keys")
            && m.value_source("keys") == Some(ValueSource::CommandLine)
    })
}

fn parse_failed(error: clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        // An empty KEYGATE_KEYS reads to clap as an empty --keys.
        ErrorKind::InvalidValue
            if std::env::var_os("KEYGATE_KEYS").is_some_and(|v| v.is_empty())
                && matches!(error.get(ContextKind::InvalidArg),
                    Some(ContextValue::String(arg)) if arg.starts_with("--keys"))
                && !std::env::args_os().any(|a| a.to_string_lossy().starts_with("--keys")) =>
        {
            usage_error(&format!(
                "KEYGATE_KEYS is set but empty: set it to the key file, or unset it to use \
                 {DEFAULT_KEYS}"
            ))
        }
        _ => {
            let subcommand = std::env::args_os()
                .nth(1)
                .and_then(|name| name.into_string().ok())
                .filter(|name| Cli::command().find_subcommand(name).is_some());
            usage_error(&usage::one_line(&error, subcommand.as_deref()))
        }
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => return parse_failed(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return parse_failed(error),
    };
    let keys_cli = keys_on_command_line(&matches);
    if let Command::Hash { key, .. } | Command::CheckKey { key, .. } = &cli.command {
        if !key.is_empty() {
            return usage_error(&usage::hash_arguments(key));
        }
    }
    match run(cli.command, keys_cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            for line in &error.lines {
                eprintln!("keygate: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
