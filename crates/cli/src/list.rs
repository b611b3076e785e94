//! `keygate list`: the records of keys.json, as a table or as JSON. The table leaves out
//! hashes (not secret, but 64 characters that say nothing to a reader); `--json` has them.

use crate::error::{Error, Result};
use crate::keys_file;
use crate::records::RecordView;
use keygate_core::timestamp::Timestamp;
use std::io::Write;
use std::path::Path;

const HEADINGS: [&str; 8] = [
    "ID",
    "OWNER",
    "LABEL",
    "SCOPES",
    "CREATED",
    "EXPIRES",
    "STATUS",
    "READ-ONLY",
];

fn row(record: &RecordView, now: Timestamp) -> [String; 8] {
    let expires = match &record.expires_at {
        None => "never".to_string(),
        Some(at) => match Timestamp::parse_rfc3339(at) {
            Ok(t) if t <= now => format!("{at} (expired)"),
            _ => at.clone(),
        },
    };
    let blank_as_dash = |text: String| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text
        }
    };
    [
        record.id.clone(),
        record.owner.clone(),
        blank_as_dash(record.label.clone().unwrap_or_default()),
        blank_as_dash(record.scopes.join(",")),
        blank_as_dash(record.created_at.clone().unwrap_or_default()),
        expires,
        record
            .status
            .clone()
            .unwrap_or_else(|| "enabled".to_string()),
        if record.read_only { "yes" } else { "no" }.to_string(),
    ]
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
pub fn table(rows: &[[String; 8]]) -> String {
    let mut widths = HEADINGS.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headings = HEADINGS.map(str::to_string);
    for row in std::iter::once(&headings).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn run(keys: &Path, json: bool) -> Result<()> {
    let doc = keys_file::read(keys)?;
    let mut out = Vec::new();
    if json {
        // The records as stored, hashes included: what a config's inline "keys" takes.
        out.extend_from_slice(b"[");
        for (i, record) in doc.records.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n  " } else { b",\n  " });
            out.extend_from_slice(record.get().as_bytes());
        }
        out.extend_from_slice(if doc.records.is_empty() {
            b"]\n"
        } else {
            b"\n]\n"
        });
    } else {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let rows = doc
            .records
            .iter()
            .map(|raw| RecordView::of(raw).map(|record| row(&record, now)))
            .collect::<Result<Vec<_>>>()?;
        out.extend_from_slice(table(&rows).as_bytes());
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::new(format!("cannot write the list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn view(json: &str) -> RecordView {
        RecordView::of(&RawValue::from_string(json.to_string()).unwrap()).unwrap()
    }

    #[test]
    fn expired_keys_are_marked_and_defaults_shown() {
        let now = Timestamp::parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
        let past = row(
            &view(r#"{"id":"a","owner":"o","expires_at":"2026-05-31T23:59:59Z","read_only":true}"#),
            now,
        );
        assert_eq!(past[5], "2026-05-31T23:59:59Z (expired)");
        assert_eq!(past[6], "enabled");
        assert_eq!(past[7], "yes");
        assert_eq!(past[2], "-");
        let future = row(
            &view(
                r#"{"id":"b","owner":"o","scopes":["x","y"],"expires_at":"2026-06-01T00:00:01Z","status":"disabled"}"#,
            ),
            now,
        );
        assert_eq!(future[3], "x,y");
        assert_eq!(future[5], "2026-06-01T00:00:01Z");
        assert_eq!(future[6], "disabled");
        let never = row(&view(r#"{"id":"c","owner":"o"}"#), now);
        assert_eq!(never[5], "never");
    }

    #[test]
    fn table_aligns_columns() {
        let cells =
            |id: &str| [id, "o", "-", "-", "-", "never", "enabled", "no"].map(str::to_string);
        let text = table(&[cells("short"), cells("a-much-longer-id")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let owner_at = |line: &str, owner: &str| line.find(owner).unwrap();
        assert_eq!(owner_at(lines[0], "OWNER"), owner_at(lines[1], " o ") + 1);
        assert_eq!(owner_at(lines[1], " o "), owner_at(lines[2], " o "));
    }
}
