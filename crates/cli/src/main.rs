//! `keygate`: manage API keys for the keygate filter (README "Managing keys").
//!
//! Keys are made here and shown once; keys.json keeps only their SHA-256. Every error is
//! one line on stderr starting with `keygate: `, and the exit status is 1 (2 for a command
//! line that does not parse).

mod changes;
mod check;
mod duration;
mod edit;
mod error;
mod etag;
mod generate;
mod hash;
mod keys_file;
mod list;
mod new;
mod records;
mod serve;
mod usage;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The key file when neither --keys nor KEYGATE_KEYS names one (README "Managing keys").
const DEFAULT_KEYS: &str = "keys.json";

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Make, list, disable and revoke API keys for the keygate Envoy filter; \
             check its configuration; serve a key set over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key: print it once (with its id and expiry) and add its hashed record to
    /// the key file, which is created if missing
    New {
        /// Who the key belongs to (forwarded upstream as x-api-key-owner)
        #[arg(long)]
        owner: String,
        /// What the key is for, e.g. the machine or job that uses it
        #[arg(long)]
        label: Option<String>,
        /// Scopes the key holds, comma-separated (browse,download)
        #[arg(long, value_name = "SCOPES")]
        scopes: Vec<String>,
        /// never, or a lifetime: 7d, 30d, 90d, 365d, 45m, 12h, 2w, 1y (365 days)
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        expires_in: String,
        /// The key may only use GET, HEAD and OPTIONS
        #[arg(long)]
        read_only: bool,
        /// Text the key starts with, to recognize it (letters, digits, '_', '-', '.')
        #[arg(long, default_value = "kg_")]
        prefix: String,
        /// The key file (a key-set document)
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
    },
    /// List the keys in the key file (no hashes in the table; --json prints the records)
    List {
        /// The key file
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
        /// The records as a JSON array, hashes included
        #[arg(long)]
        json: bool,
    },
    /// Disable a key: it stays in the file and the filter answers "API key disabled"
    Disable {
        id: String,
        /// The key file
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
    },
    /// Enable a disabled key again
    Enable {
        id: String,
        /// The key file
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
    },
    /// Remove a key's record for good: the filter answers 401 invalid_token
    Revoke {
        id: String,
        /// The key file
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
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
    /// Check a plugin configuration (JSON) with the filter's own parser
    Check {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
    },
    /// Serve the key file over HTTP: GET /v1/keyset (with ETag) and GET /v1/keys/{hash}
    Serve {
        /// The key file
        #[arg(long, value_name = "FILE", env = "KEYGATE_KEYS", default_value = DEFAULT_KEYS)]
        keys: PathBuf,
        /// Address to listen on; port 0 picks a free port (the address is printed)
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081",
              value_parser = usage::listen_address)]
        listen: String,
        /// Requests answered at once
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
    },
}

fn run(command: Command) -> error::Result<()> {
    match command {
        Command::New {
            owner,
            label,
            scopes,
            expires_in,
            read_only,
            prefix,
            keys,
        } => new::run(new::NewKey {
            owner,
            label,
            scopes,
            expires_in,
            read_only,
            prefix,
            keys,
        }),
        Command::List { keys, json } => list::run(&keys, json),
        Command::Disable { id, keys } => edit::run(edit::Change::Disable, &id, &keys),
        Command::Enable { id, keys } => edit::run(edit::Change::Enable, &id, &keys),
        Command::Revoke { id, keys } => edit::run(edit::Change::Revoke, &id, &keys),
        Command::Hash {
            key: _,
            strip_prefix,
            no_strip,
        } => hash::run(strip_prefix, no_strip),
        Command::Check { config } => check::run(&config),
        Command::Serve {
            keys,
            listen,
            threads,
        } => serve::run(&keys, &listen, threads.into()),
    }
}

/// A command line that does not parse: one line, exit 2 (help and version as clap prints
/// them).
fn usage_error(line: &str) -> ExitCode {
    eprintln!("keygate: {line}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match error.kind() {
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
                return usage_error(&format!(
                    "KEYGATE_KEYS is set but empty: set it to the key file, or unset it to \
                     use {DEFAULT_KEYS}"
                ));
            }
            _ => {
                let subcommand = std::env::args_os()
                    .nth(1)
                    .and_then(|name| name.into_string().ok())
                    .filter(|name| Cli::command().find_subcommand(name).is_some());
                return usage_error(&usage::one_line(&error, subcommand.as_deref()));
            }
        },
    };
    if let Command::Hash { key, .. } = &cli.command {
        if !key.is_empty() {
            return usage_error(&usage::hash_arguments(key));
        }
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            for line in &error.lines {
                eprintln!("keygate: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
