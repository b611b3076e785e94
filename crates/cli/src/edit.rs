//! `keygate disable|enable|revoke ID`: change one record, or fail and leave the file be.
//! The key is named by its id or by the start of it, if no other id starts the same way.

use crate::error::{Error, Result};
use crate::keys_file::{self, Edited, Found, IfMissing};
use crate::records::{self, RecordView};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Disable,
    Enable,
    /// Removes the record: the filter then answers 401 `invalid_token`, as for a key it
    /// never knew. (Disabling keeps the record and says "API key disabled".)
    Revoke,
}

/// Ids shown in an error about an ambiguous prefix.
const SHOWN: usize = 3;

/// The key an id given on the command line names: a whole id, or the start of just one.
fn which(found: Found, given: &str, keys: &Path) -> Result<usize> {
    let list = format!("`keygate list --keys {}` shows the ids", keys.display());
    match found {
        Found::At(at) => Ok(at),
        Found::None if given.is_empty() => Err(Error::new(format!(
            "no id given: name the key by its id, or the start of it ({list})"
        ))),
        Found::None => Err(Error::at(
            keys,
            format!("no key with id {given:?}, nor one whose id starts with it ({list})"),
        )),
        Found::Several(ids) => {
            let mut shown = ids
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if ids.len() > SHOWN {
                shown.push_str(", ...");
            }
            Err(Error::at(
                keys,
                format!(
                    "{} keys have an id starting with {given:?} ({shown}): give more of the \
                     id ({list})",
                    ids.len()
                ),
            ))
        }
    }
}

pub fn run(change: Change, given: &str, keys: &Path) -> Result<()> {
    let message = keys_file::update(keys, IfMissing::Fail, |doc| {
        let at = which(doc.find(given), given, keys)?;
        let record = RecordView::of(&doc.records[at])?;
        let (id, disabled) = (&record.id, record.is_disabled());
        Ok(match change {
            Change::Revoke => {
                doc.records.remove(at);
                Edited::Changed(format!("revoked {id}"))
            }
            Change::Disable if disabled => Edited::Unchanged(format!("{id} is already disabled")),
            Change::Enable if !disabled => Edited::Unchanged(format!("{id} is already enabled")),
            Change::Disable => {
                doc.records[at] = records::with_status(&doc.records[at], "disabled")?;
                Edited::Changed(format!("disabled {id}"))
            }
            Change::Enable => {
                doc.records[at] = records::with_status(&doc.records[at], "enabled")?;
                Edited::Changed(format!("enabled {id}"))
            }
        })
    })?;
    println!("{message}");
    Ok(())
}

/// `keygate revoke --owner NAME --keys FILE`: removes every record of that owner.
pub fn revoke_owner(owner: &str, keys: &Path) -> Result<()> {
    let count = keys_file::update(keys, IfMissing::Fail, |doc| {
        let before = doc.records.len();
        doc.records
            .retain(|raw| RecordView::of(raw).map_or(true, |r| r.owner != owner));
        let count = (before - doc.records.len()) as u64;
        Ok(if count == 0 {
            Edited::Unchanged(count)
        } else {
            Edited::Changed(count)
        })
    })?;
    println!("{}", crate::service::revoked_line(count, owner));
    Ok(())
}
