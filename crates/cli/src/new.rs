//! `keygate new`: a key, shown once; its hashed record, kept.

use crate::duration::{self, Expiry};
use crate::error::{Error, Result};
use crate::generate;
use crate::keys_file::{self, Edited, IfMissing};
use crate::records::NewRecord;
use crate::target::{Target, TargetArgs};
use keygate_core::header::HeaderText;
use keygate_core::record::KeyHash;
use keygate_core::scope::Scope;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

// The arguments of `keygate new` (the command's help is its doc comment in main.rs).
#[derive(clap::Args)]
pub struct NewKey {
    /// Who the key belongs to (forwarded upstream as x-api-key-owner)
    #[arg(long)]
    pub owner: String,
    /// What the key is for, e.g. the machine or job that uses it
    #[arg(long)]
    pub label: Option<String>,
    /// Scopes the key holds, comma-separated (browse,download)
    #[arg(long, value_name = "SCOPES")]
    pub scopes: Vec<String>,
    /// never, or a lifetime: 7d, 30d, 90d, 365d, 45m, 12h, 2w, 1y (365 days)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub expires_in: String,
    /// The key may only use GET, HEAD and OPTIONS
    #[arg(long)]
    pub read_only: bool,
    /// The key's prefix, to recognize it: 1 to 16 lowercase letters or digits
    #[arg(long, default_value = "kg")]
    pub prefix: String,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The one line `new` prints, ImmPort's shape.
#[derive(Serialize)]
struct Issued<'a> {
    id: &'a str,
    api_key: &'a str,
    expires_at: Option<&'a str>,
}

/// Scopes in the order given, each checked as the filter checks them, repeats dropped.
/// Spaces around a name are dropped too (`--scopes "browse, download"`): a scope has none.
fn parse_scopes(lists: &[String]) -> Result<Vec<String>> {
    let mut scopes: Vec<String> = Vec::new();
    for name in lists.iter().flat_map(|list| list.split(',')).map(str::trim) {
        let scope = Scope::parse(name).map_err(|e| Error::new(format!("--scopes: {e}")))?;
        if !scopes.iter().any(|s| s == scope.as_str()) {
            scopes.push(scope.as_str().to_string());
        }
    }
    Ok(scopes)
}

fn rfc3339(t: OffsetDateTime) -> Result<String> {
    t.format(&Rfc3339)
        .map_err(|e| Error::new(format!("cannot format {t}: {e}")))
}

pub fn run(args: NewKey, keys_on_command_line: bool) -> Result<()> {
    let owner = HeaderText::parse(&args.owner).map_err(|e| Error::new(format!("--owner: {e}")))?;
    let label = match &args.label {
        Some(label) => {
            Some(HeaderText::parse(label).map_err(|e| Error::new(format!("--label: {e}")))?)
        }
        None => None,
    };
    let scopes = parse_scopes(&args.scopes)?;
    generate::check_prefix(&args.prefix)?;
    let keys = match args.target.clone().resolve(keys_on_command_line)? {
        Target::Keys(keys) => keys,
        Target::Db(db) => {
            return on_service(
                &crate::admin::Db::open(&db, true)?,
                &args,
                &owner,
                label.as_ref(),
                &scopes,
            )
        }
        Target::Server(remote) => {
            return on_service(&remote, &args, &owner, label.as_ref(), &scopes)
        }
    };
    let expiry = duration::parse(&args.expires_in).map_err(Error::new)?;

    // Whole seconds: the record is read by people too.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| Error::new(e.to_string()))?;
    let created_at = rfc3339(now)?;
    let expires_at = match expiry {
        Expiry::Never => None,
        Expiry::After(lifetime) => {
            Some(rfc3339(now.checked_add(lifetime).ok_or_else(|| {
                Error::new("--expires-in: too far in the future")
            })?)?)
        }
    };

    let id = generate::key_id()?;
    let key = generate::api_key(&args.prefix)?;
    let hash = KeyHash::of_key(&key).to_hex();
    let record = NewRecord {
        id: &id,
        hash: &hash,
        owner: owner.as_str(),
        label: label.as_ref().map(HeaderText::as_str),
        scopes: &scopes,
        created_at: &created_at,
        expires_at: expires_at.as_deref(),
        status: "enabled",
        read_only: args.read_only,
    }
    .to_raw()?;
    keys_file::update(&keys, IfMissing::Create, |doc| {
        doc.records.push(record);
        Ok(Edited::Changed(()))
    })?;

    // Printed only once the record is safely stored: a key shown but never stored would
    // be handed out and fail; a record stored but never shown is merely unusable.
    let line = serde_json::to_string(&Issued {
        id: &id,
        api_key: &key,
        expires_at: expires_at.as_deref(),
    })
    .map_err(|e| Error::new(e.to_string()))?;
    println_or_explain(&line, &id, &format!("--keys {}", keys.display()))
}

/// `new --db` / `new --server`: the key service makes the key, applying its policy.
fn on_service(
    admin: &dyn crate::admin::Admin,
    args: &NewKey,
    owner: &HeaderText,
    label: Option<&HeaderText>,
    scopes: &[String],
) -> Result<()> {
    let issued = admin.create(&crate::admin::Create {
        owner: owner.as_str(),
        label: label.map(HeaderText::as_str),
        scopes,
        expires_in: &args.expires_in,
        read_only: args.read_only,
        prefix: &args.prefix,
    })?;
    print_issued(&issued, &admin.option())
}

/// The one line of a key made by a key service (`new`, `rotate`), ImmPort's shape.
pub fn print_issued(issued: &crate::admin::Issued, option: &str) -> Result<()> {
    let line = serde_json::to_string(&Issued {
        id: &issued.id,
        api_key: &issued.api_key,
        expires_at: issued.expires_at.as_deref(),
    })
    .map_err(|e| Error::new(e.to_string()))?;
    println_or_explain(&line, &issued.id, option)
}

fn println_or_explain(line: &str, id: &str, option: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| {
            Error::new(format!(
                "key {id} was made but could not be shown ({e}); revoke it with \
                 `keygate revoke {id} {option}`"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_split_and_deduplicated() {
        let given = |l: &[&str]| parse_scopes(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(given(&["browse,download"]).unwrap(), ["browse", "download"]);
        assert_eq!(
            given(&["browse", "download,browse"]).unwrap(),
            ["browse", "download"]
        );
        assert!(given(&[]).unwrap().is_empty());
        assert_eq!(
            given(&[" browse , download "]).unwrap(),
            ["browse", "download"]
        );
        assert!(given(&["browse, ,download"]).is_err());
        assert!(given(&["browse,,download"]).is_err());
        let err = given(&["two words"]).err().unwrap();
        assert!(err.lines[0].starts_with("--scopes: \"two words\" is not a valid scope"));
    }
}
