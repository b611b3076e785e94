//! `list`, `disable`, `enable`, `revoke`, `rotate` and `audit` on a key service (`--db` or
//! `--server`), printing what file mode prints: the same table, the same JSON shapes, the
//! same one-line messages.

use crate::admin::{Admin, Audit, Key};
use crate::edit::Change;
use crate::error::{Error, Result};
use crate::list;
use keygate_core::timestamp::Timestamp;
use keygate_keyservice::duration::Lifetime;
use keygate_keyservice::store::{self, Status};
use std::io::Write;

fn write_out(out: &[u8], what: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::new(format!("cannot write the {what}: {e}")))
}

/// A JSON array, one element a line, as `list --json` prints a key file's records.
fn json_lines<T: serde::Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(b"[");
    for (i, item) in items.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n  " } else { b",\n  " });
        let line = serde_json::to_string(item).map_err(|e| Error::new(e.to_string()))?;
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(if items.is_empty() { b"]\n" } else { b"\n]\n" });
    Ok(out)
}

pub fn list(
    admin: &dyn Admin,
    json: bool,
    owner: Option<&str>,
    status: Option<Status>,
) -> Result<()> {
    let keys = admin.list(owner, status)?;
    let out = if json {
        json_lines(&keys)?
    } else {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let rows = keys
            .iter()
            .map(|key| list::row_of_key(key, now))
            .collect::<Vec<_>>();
        list::table(&rows).into_bytes()
    };
    write_out(&out, "list")
}

/// The key an id given on the command line names: a whole id, or the start of just one.
fn which(admin: &dyn Admin, given: &str) -> Result<Key> {
    let list = format!("`keygate list {}` shows the ids", admin.option());
    if given.is_empty() {
        return Err(Error::new(format!(
            "no id given: name the key by its id, or the start of it ({list})"
        )));
    }
    let keys = admin.list(None, None)?;
    if let Some(key) = keys.iter().find(|k| k.id == given) {
        return Ok(key.clone());
    }
    let mut starting: Vec<&Key> = keys.iter().filter(|k| k.id.starts_with(given)).collect();
    match starting.len() {
        0 => Err(Error::new(format!(
            "{}: no key with id {given:?}, nor one whose id starts with it ({list})",
            admin.place()
        ))),
        1 => Ok(starting.remove(0).clone()),
        n => {
            let mut shown = starting
                .iter()
                .take(3)
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if n > 3 {
                shown.push_str(", ...");
            }
            Err(Error::new(format!(
                "{}: {n} keys have an id starting with {given:?} ({shown}): give more of the \
                 id ({list})",
                admin.place()
            )))
        }
    }
}

pub fn change(admin: &dyn Admin, change: Change, given: &str) -> Result<()> {
    let key = which(admin, given)?;
    let id = &key.id;
    let revoked = key.status == "revoked";
    let message = match change {
        Change::Revoke if revoked => format!("{id} is already revoked"),
        _ if revoked => {
            return Err(Error::new(format!(
                "{}: {id} is revoked: a revoked key cannot be enabled or disabled (make a new \
                 one with `keygate new {}`)",
                admin.place(),
                admin.option()
            )))
        }
        Change::Revoke => {
            admin.revoke(id)?;
            format!("revoked {id}")
        }
        Change::Disable if key.status == "disabled" => format!("{id} is already disabled"),
        Change::Enable if key.status == "enabled" => format!("{id} is already enabled"),
        Change::Disable => {
            admin.set_status(id, Status::Disabled)?;
            format!("disabled {id}")
        }
        Change::Enable => {
            admin.set_status(id, Status::Enabled)?;
            format!("enabled {id}")
        }
    };
    println!("{message}");
    Ok(())
}

/// `revoke --owner NAME`: "revoked 2 keys of alice".
pub fn revoked_line(count: u64, owner: &str) -> String {
    let keys = keygate_core::record::count_keys(usize::try_from(count).unwrap_or(usize::MAX));
    format!("revoked {keys} of {owner}")
}

pub fn revoke_owner(admin: &dyn Admin, owner: &str) -> Result<()> {
    let count = admin.revoke_owner(owner)?;
    println!("{}", revoked_line(count, owner));
    Ok(())
}

pub fn rotate(admin: &dyn Admin, given: &str, grace: Option<&str>) -> Result<()> {
    let key = which(admin, given)?;
    let issued = admin.rotate(&key.id, grace)?;
    crate::new::print_issued(&issued, &admin.option())
}

/// `--since`: an RFC 3339 time, or a duration back from now (`24h`, `7d`).
pub fn since(text: &str) -> Result<i64> {
    if let Ok(at) = store::parse_rfc3339(text) {
        return Ok(at);
    }
    match Lifetime::parse(text, true) {
        Ok(Lifetime::Seconds(back)) => Ok(store::now().saturating_sub(back)),
        _ => Err(Error::new(format!(
            "--since {text:?}: give a time (2026-11-01T10:00:00Z) or how long ago (24h, 7d)"
        ))),
    }
}

const AUDIT_HEADINGS: [&str; 5] = ["AT", "ACTOR", "ACTION", "KEY", "DETAIL"];

fn audit_table(entries: &[Audit]) -> String {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.key_id.clone().unwrap_or_else(|| "-".to_string()),
                e.detail.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let mut widths = AUDIT_HEADINGS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headings = AUDIT_HEADINGS.map(str::to_string);
    for row in std::iter::once(&headings).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn audit(admin: &dyn Admin, since: Option<i64>, json: bool) -> Result<()> {
    let entries = admin.audit(since)?;
    let out = if json {
        json_lines(&entries)?
    } else {
        audit_table(&entries).into_bytes()
    };
    write_out(&out, "audit trail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        assert_eq!(since("1970-01-01T00:01:00Z").unwrap(), 60);
        let ago = since("24h").unwrap();
        assert!((store::now() - 86_400 - ago).abs() <= 2);
        assert!(since("yesterday").is_err());
    }

    #[test]
    fn owner_counts_read_as_words() {
        assert_eq!(revoked_line(1, "alice"), "revoked 1 key of alice");
        assert_eq!(revoked_line(0, "bob"), "revoked 0 keys of bob");
    }
}
