//! `keygate disable|enable|revoke ID`: change one record, or fail and leave the file be.

use crate::error::{Error, Result};
use crate::keys_file::{self, Edited, IfMissing};
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

pub fn run(change: Change, id: &str, keys: &Path) -> Result<()> {
    let message = keys_file::update(keys, IfMissing::Fail, |doc| {
        let at = doc
            .position(id)
            .ok_or_else(|| Error::at(keys, format!("no key with id {id:?}")))?;
        let disabled = RecordView::of(&doc.records[at])?.is_disabled();
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
