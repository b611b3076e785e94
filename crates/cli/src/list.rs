//! `keygate list`: the records of keys.json, as a table or as JSON. The table leaves out
//! hashes (not secret, but 64 characters that say nothing to a reader); `--json` has them.
//! Both show each key's usage from the usage file that `keygate serve` keeps beside
//! keys.json ([`usage_file`], shared with the key service).

use crate::error::{Error, Result};
use crate::keys_file;
use crate::records::RecordView;
use keygate_core::record::KeyHash;
use keygate_core::timestamp::Timestamp;
use keygate_core::usage::rfc3339_millis;
use keygate_keyservice::usage_file::{self, KeyUse};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const COLUMNS: usize = 10;

const HEADINGS: [&str; COLUMNS] = [
    "ID",
    "OWNER",
    "LABEL",
    "SCOPES",
    "CREATED",
    "EXPIRES",
    "STATUS",
    "READ-ONLY",
    "LAST USED",
    "USES",
];

/// A record's hash, to find its usage.
#[derive(Deserialize)]
struct HashOf {
    hash: KeyHash,
}

fn usage_of<'u>(raw: &RawValue, usage: &'u HashMap<KeyHash, KeyUse>) -> Option<&'u KeyUse> {
    let HashOf { hash } = serde_json::from_str(raw.get()).ok()?;
    usage.get(&hash)
}

/// The record as stored, with `"last_used_at"` (`null`: never) and `"uses"` added.
fn with_usage(raw: &RawValue, used: Option<&KeyUse>) -> String {
    let text = raw.get().trim_end();
    let open = text.strip_suffix('}').unwrap_or(text).trim_end();
    let last = used.map_or("null".to_string(), |u| {
        format!("\"{}\"", rfc3339_millis(u.last_used))
    });
    let comma = if open.ends_with('{') { "" } else { "," };
    format!(
        "{open}{comma}\"last_used_at\":{last},\"uses\":{}}}",
        used.map_or(0, |u| u.uses)
    )
}

fn row(record: &RecordView, used: Option<&KeyUse>, now: Timestamp) -> [String; COLUMNS] {
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
        used.map_or("never".to_string(), |u| {
            // To the second, as CREATED.
            let mut at = rfc3339_millis(u.last_used);
            at.replace_range(19..23, "");
            at
        }),
        used.map_or(0, |u| u.uses).to_string(),
    ]
}

/// A key service's key as a row: the same columns as a key file's record.
pub fn row_of_key(key: &crate::admin::Key, now: Timestamp) -> [String; COLUMNS] {
    let record = RecordView {
        id: key.id.clone(),
        owner: key.owner.clone(),
        label: key.label.clone(),
        scopes: key.scopes.clone(),
        created_at: Some(key.created_at.clone()),
        expires_at: key.expires_at.clone(),
        status: Some(key.status.clone()),
        read_only: key.read_only,
    };
    let used = key
        .last_used_at
        .as_deref()
        .and_then(|at| Timestamp::parse_rfc3339(at).ok())
        .map(|last_used| KeyUse {
            uses: key.uses,
            last_used,
        });
    row(&record, used.as_ref(), now)
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
pub fn table(rows: &[[String; COLUMNS]]) -> String {
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

pub fn run(keys: &Path, json: bool, owner: Option<&str>, status: Option<&str>) -> Result<()> {
    let mut doc = keys_file::read(keys)?;
    if owner.is_some() || status.is_some() {
        doc.records.retain(|raw| {
            RecordView::of(raw).is_ok_and(|r| {
                owner.is_none_or(|o| r.owner == o)
                    && status.is_none_or(|s| r.status.as_deref().unwrap_or("enabled") == s)
            })
        });
    }
    let usage_path = usage_file::path_for(keys);
    // Usage is an addition: a usage file that cannot be read does not hide the keys.
    let usage = usage_file::read(&usage_path).unwrap_or_else(|line| {
        eprintln!("keygate: {line}; usage not shown");
        HashMap::new()
    });
    let mut out = Vec::new();
    if json {
        // The records as stored, hashes included, with their usage: what a config's
        // inline "keys" takes.
        out.extend_from_slice(b"[");
        for (i, record) in doc.records.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n  " } else { b",\n  " });
            out.extend_from_slice(with_usage(record, usage_of(record, &usage)).as_bytes());
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
            .map(|raw| RecordView::of(raw).map(|record| row(&record, usage_of(raw, &usage), now)))
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
            None,
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
            None,
            now,
        );
        assert_eq!(future[3], "x,y");
        assert_eq!(future[5], "2026-06-01T00:00:01Z");
        assert_eq!(future[6], "disabled");
        let never = row(&view(r#"{"id":"c","owner":"o"}"#), None, now);
        assert_eq!(never[5], "never");
        assert_eq!((never[8].as_str(), never[9].as_str()), ("never", "0"));
        let used = KeyUse {
            uses: 12,
            last_used: Timestamp::parse_rfc3339("2026-05-31T10:00:00.750Z").unwrap(),
        };
        let row = row(&view(r#"{"id":"c","owner":"o"}"#), Some(&used), now);
        assert_eq!(
            (row[8].as_str(), row[9].as_str()),
            ("2026-05-31T10:00:00Z", "12")
        );
    }

    #[test]
    fn json_records_get_their_usage() {
        let raw = RawValue::from_string(r#"{"id":"a","owner":"o"}"#.to_string()).unwrap();
        assert_eq!(
            with_usage(&raw, None),
            r#"{"id":"a","owner":"o","last_used_at":null,"uses":0}"#
        );
        let used = KeyUse {
            uses: 3,
            last_used: Timestamp::parse_rfc3339("2026-05-31T10:00:00.750Z").unwrap(),
        };
        let spaced = RawValue::from_string("{ \"id\": \"a\" }".to_string()).unwrap();
        assert_eq!(
            with_usage(&spaced, Some(&used)),
            r#"{ "id": "a","last_used_at":"2026-05-31T10:00:00.750Z","uses":3}"#
        );
    }

    #[test]
    fn table_aligns_columns() {
        let cells = |id: &str| {
            [
                id, "o", "-", "-", "-", "never", "enabled", "no", "never", "0",
            ]
            .map(str::to_string)
        };
        let text = table(&[cells("short"), cells("a-much-longer-id")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let owner_at = |line: &str, owner: &str| line.find(owner).unwrap();
        assert_eq!(owner_at(lines[0], "OWNER"), owner_at(lines[1], " o ") + 1);
        assert_eq!(owner_at(lines[1], " o "), owner_at(lines[2], " o "));
    }
}
