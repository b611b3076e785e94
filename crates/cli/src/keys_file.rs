//! keys.json, the key-set document the CLI manages (README "Configuration reference").
//!
//! Every change is made under an exclusive lock on a sidecar `keys.json.lock`, reading
//! the file and writing it back while the lock is held, so two `keygate new` runs never lose
//! a record. The lock is on a sidecar because the file itself is replaced on every write:
//! a lock on it would be a lock on the old inode. The new content goes to a temporary
//! file in the same directory, is synced, and is renamed over keys.json, so a reader (the
//! filter's config tooling, `keygate serve`, `keygate list`) sees the old document or the
//! new one, never half of one, and takes no lock.
//!
//! Records are kept as the JSON text they were read as: a rewrite changes only the
//! records a command touches and the version, whatever else the file holds.

use crate::error::{Error, Result};
use keygate_core::error::ConfigError;
use keygate_core::record::KeySetDoc;
#[cfg(unix)]
use keygate_keyservice::atomic_file::NEW_FILE_MODE;
use keygate_keyservice::atomic_file::{directory_of, sidecar, write_atomically};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

pub struct KeysDoc {
    /// A counter, as a string (the format only asks for something opaque that changes).
    pub version: Option<String>,
    pub records: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RawDoc {
    #[serde(default)]
    version: Option<String>,
    keys: Vec<Box<RawValue>>,
}

/// What [`KeysDoc::find`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    At(usize),
    None,
    /// The ids that start with what was given, none equal to it.
    Several(Vec<String>),
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

impl KeysDoc {
    pub fn empty() -> KeysDoc {
        KeysDoc {
            version: None,
            records: Vec::new(),
        }
    }

    /// Reads a document with the filter's own checks, so that a file the filter would
    /// refuse is never used as the base of a rewrite.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<KeysDoc> {
        KeySetDoc::parse(bytes).map_err(|problems| not_a_key_file(path, bytes, &problems))?;
        let raw: RawDoc = serde_json::from_slice(bytes).map_err(|e| Error::at(path, e))?;
        Ok(KeysDoc {
            version: raw.version,
            records: raw.keys,
        })
    }

    /// The record an id given on the command line means: the one with that id, else the one
    /// whose id starts with it, if only one does (ids are UUIDs: a few characters are enough).
    pub fn find(&self, given: &str) -> Found {
        let ids: Vec<(usize, std::borrow::Cow<'_, str>)> = self
            .records
            .iter()
            .enumerate()
            .filter_map(|(at, raw)| {
                serde_json::from_str::<IdOnly>(raw.get())
                    .ok()
                    .map(|record| (at, record.id))
            })
            .collect();
        if let Some((at, _)) = ids.iter().find(|(_, id)| id == given) {
            return Found::At(*at);
        }
        let mut starting: Vec<&(usize, std::borrow::Cow<'_, str>)> = ids
            .iter()
            .filter(|(_, id)| !given.is_empty() && id.starts_with(given))
            .collect();
        match (starting.pop(), starting.is_empty()) {
            (None, _) => Found::None,
            (Some((at, _)), true) => Found::At(*at),
            (Some(last), false) => {
                starting.push(last);
                Found::Several(starting.iter().map(|(_, id)| id.to_string()).collect())
            }
        }
    }

    /// One record per line: readable, and a change shows as a one-line diff.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(
            64 + self
                .records
                .iter()
                .map(|r| r.get().len() + 6)
                .sum::<usize>(),
        );
        out.extend_from_slice(b"{\n");
        if let Some(version) = &self.version {
            let version = serde_json::to_string(version).map_err(|e| Error::new(e.to_string()))?;
            out.extend_from_slice(format!("  \"version\": {version},\n").as_bytes());
        }
        if self.records.is_empty() {
            out.extend_from_slice(b"  \"keys\": []\n}\n");
            return Ok(out);
        }
        out.extend_from_slice(b"  \"keys\": [\n");
        for (i, record) in self.records.iter().enumerate() {
            out.extend_from_slice(b"    ");
            out.extend_from_slice(record.get().as_bytes());
            out.extend_from_slice(if i + 1 < self.records.len() {
                b",\n"
            } else {
                b"\n"
            });
        }
        out.extend_from_slice(b"  ]\n}\n");
        Ok(out)
    }
}

/// What a key file looks like, for errors about one that does not.
const SHAPE: &str = "a key file is a JSON object, {\"keys\": [...]}";

/// Why `bytes` is not a key file. A document that is not an object, or not JSON at all, is
/// named for what it is (an empty file, `keygate list --json`'s list...), with what to do
/// next; an object gets the filter's findings, by field.
fn not_a_key_file(path: &Path, bytes: &[u8], problems: &[ConfigError]) -> Error {
    use serde::de::IgnoredAny;
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    let json = serde_json::from_slice::<IgnoredAny>(bytes);
    let problem = match (first, json) {
        (None, _) => format!(
            "empty: {SHAPE} ({{\"keys\": []}} holds no key yet); if a redirect such as \
             `> {}` emptied it, restore it from a copy",
            path.display()
        ),
        (Some(b'['), Ok(_))
            if serde_json::from_slice::<Vec<IgnoredAny>>(bytes)
                .is_ok_and(|list| list.is_empty()) =>
        {
            format!("an empty JSON list, not a key file: {SHAPE}; with no key: {{\"keys\": []}}")
        }
        (Some(b'['), Ok(_)) => format!(
            "a JSON list of records (what `keygate list --json` prints), not a key file: \
             {SHAPE}; put the list in one as its \"keys\""
        ),
        (Some(b'{'), Ok(_)) => return Error::each_at(path, problems),
        (Some(_), Ok(_)) => format!("a JSON {}, not a key file: {SHAPE}", kind_of(bytes)),
        (Some(_), Err(e)) if e.classify() == serde_json::error::Category::Eof => format!(
            "cut short: the JSON ends at line {} column {} before the document does",
            e.line(),
            e.column()
        ),
        (Some(b'{' | b'['), Err(e)) => {
            let text = e.to_string();
            let message = text.split(" at line ").next().unwrap_or_default();
            let message = match message {
                "expected ident" => "expected true, false or null",
                "expected value" => "expected a JSON value",
                other => other,
            };
            format!(
                "not valid JSON at line {} column {}: {message}",
                e.line(),
                e.column()
            )
        }
        (Some(_), Err(_)) => format!("not JSON: {SHAPE}"),
    };
    Error::at(path, problem)
}

/// What a JSON document that is neither an object nor a list is.
fn kind_of(bytes: &[u8]) -> &'static str {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::String(_)) => "string",
        Ok(serde_json::Value::Number(_)) => "number",
        Ok(serde_json::Value::Bool(_)) => "boolean",
        Ok(serde_json::Value::Null) => "null",
        _ => "value",
    }
}

/// The version after `current`: the next integer, or 1 when there is none (or it is not
/// a counter this tool wrote).
pub fn next_version(current: Option<&str>) -> String {
    current
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|n| n.checked_add(1))
        .unwrap_or(1)
        .to_string()
}

fn missing(path: &Path) -> Error {
    if let Some(error) = no_directory(path) {
        return error;
    }
    Error::at(
        path,
        format!(
            "no such file: `keygate new --keys {}` creates it (--keys or KEYGATE_KEYS names \
             another)",
            path.display()
        ),
    )
}

/// An error when the directory meant to hold the key file is not there.
fn no_directory(path: &Path) -> Option<Error> {
    let dir = directory_of(path);
    (!dir.is_dir()).then(|| {
        Error::at(
            path,
            format!(
                "no directory {}: create it (mkdir -p {}), or give another --keys",
                dir.display(),
                dir.display()
            ),
        )
    })
}

fn a_directory(path: &Path) -> Error {
    Error::at(
        path,
        format!(
            "a directory, not a key file: name the file, e.g. --keys {}",
            path.join("keys.json").display()
        ),
    )
}

/// Reads the file, naming a missing one or a directory for what it is.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(_) if path.is_dir() => Err(a_directory(path)),
        Err(e) => Err(Error::at(path, format!("cannot read: {e}"))),
    }
}

/// Reads keys.json without a lock: writers replace it whole, so what is read is complete.
pub fn read(path: &Path) -> Result<KeysDoc> {
    match read_bytes(path)? {
        Some(bytes) => KeysDoc::parse(path, &bytes),
        None => Err(missing(path)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    Create,
    Fail,
}

/// Applies `edit` to keys.json under the lock and writes the result atomically with a new
/// version. Nothing is written when `edit` fails, or when it returns `Unchanged`.
pub fn update<T>(
    path: &Path,
    if_missing: IfMissing,
    edit: impl FnOnce(&mut KeysDoc) -> Result<Edited<T>>,
) -> Result<T> {
    // Checked before the lock, which would otherwise be made beside a directory, or fail
    // as a lock file in a directory that is not there.
    if path.is_dir() {
        return Err(a_directory(path));
    }
    if let Some(error) = no_directory(path) {
        return Err(error);
    }
    let _lock = lock(path)?;
    let mut doc = match read_bytes(path)? {
        Some(bytes) => KeysDoc::parse(path, &bytes)?,
        None if if_missing == IfMissing::Create => KeysDoc::empty(),
        None => return Err(missing(path)),
    };
    let (value, changed) = match edit(&mut doc)? {
        Edited::Changed(value) => (value, true),
        Edited::Unchanged(value) => (value, false),
    };
    if !changed {
        return Ok(value);
    }
    doc.version = Some(next_version(doc.version.as_deref()));
    let bytes = doc.to_bytes()?;
    // The edit only adds, changes or removes whole records, but the file is what the
    // filter will read: check it as the filter would before it replaces a good one.
    if let Err(problems) = KeySetDoc::parse(&bytes) {
        let mut error = Error::each_at(path, &problems);
        error.lines.push(format!(
            "{}: not written: the change would make it invalid",
            path.display()
        ));
        return Err(error);
    }
    write_atomically(path, &bytes).map_err(|e| Error::at(path, format!("cannot write: {e}")))?;
    Ok(value)
}

/// What an edit did: only a change is written.
pub enum Edited<T> {
    Changed(T),
    Unchanged(T),
}

/// Holds the exclusive lock until dropped. The lock file is never removed: removing it
/// would let a waiting process lock a file that a newcomer no longer sees.
fn lock(path: &Path) -> Result<File> {
    let lock_path = sidecar(path, ".lock");
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, NEW_FILE_MODE);
    let file = options
        .open(&lock_path)
        .map_err(|e| Error::at(&lock_path, format!("cannot open the lock file: {e}")))?;
    file.lock()
        .map_err(|e| Error::at(&lock_path, format!("cannot lock: {e}")))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up() {
        assert_eq!(next_version(None), "1");
        assert_eq!(next_version(Some("1")), "2");
        assert_eq!(next_version(Some("41")), "42");
        assert_eq!(next_version(Some("v7")), "1");
        assert_eq!(next_version(Some(&u64::MAX.to_string())), "1");
    }

    #[test]
    fn writes_one_record_per_line_and_reads_it_back() {
        let path = Path::new("keys.json");
        let text = r#"{"version": "3", "keys": [
            {"id": "a", "owner": "alice", "hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
            {"id": "b", "owner": "bob", "hash": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "expires_at": "2027-05-21T20:55:24.654328038Z"}
        ]}"#;
        let doc = KeysDoc::parse(path, text.as_bytes()).unwrap();
        assert_eq!(doc.version.as_deref(), Some("3"));
        assert_eq!(doc.find("b"), Found::At(1));
        assert_eq!(doc.find("c"), Found::None);
        let out = String::from_utf8(doc.to_bytes().unwrap()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert_eq!(lines[1], r#"  "version": "3","#);
        // Records are kept as written, spacing and nanoseconds included.
        assert!(lines[3].starts_with(r#"    {"id": "a", "owner": "alice","#));
        assert!(lines[4].contains(r#""expires_at": "2027-05-21T20:55:24.654328038Z"}"#));
        let again = KeysDoc::parse(path, out.as_bytes()).unwrap();
        assert_eq!(again.to_bytes().unwrap(), out.as_bytes());

        let empty = String::from_utf8(KeysDoc::empty().to_bytes().unwrap()).unwrap();
        assert_eq!(empty, "{\n  \"keys\": []\n}\n");
    }

    #[test]
    fn ids_are_found_whole_or_by_a_unique_prefix() {
        let hash = |n: u8| format!("{n:064x}");
        let text = format!(
            r#"{{"keys": [
            {{"id": "8c3e4394-10a9", "owner": "o", "hash": "{}"}},
            {{"id": "8c3f0000-0000", "owner": "o", "hash": "{}"}},
            {{"id": "8c3", "owner": "o", "hash": "{}"}},
            {{"id": "b1", "owner": "o", "hash": "{}"}}
        ]}}"#,
            hash(1),
            hash(2),
            hash(3),
            hash(4)
        );
        let doc = KeysDoc::parse(Path::new("k"), text.as_bytes()).unwrap();
        assert_eq!(doc.find("8c3"), Found::At(2), "a whole id wins");
        assert_eq!(doc.find("8c3e"), Found::At(0));
        assert_eq!(doc.find("8c3f0000-0000"), Found::At(1));
        assert_eq!(doc.find("b"), Found::At(3));
        assert_eq!(
            doc.find("8c"),
            Found::Several(vec![
                "8c3e4394-10a9".to_string(),
                "8c3f0000-0000".to_string(),
                "8c3".to_string()
            ])
        );
        assert_eq!(doc.find("8c3e4394-10a9-"), Found::None);
        assert_eq!(doc.find(""), Found::None);
    }

    #[test]
    fn refuses_what_the_filter_refuses_with_field_paths() {
        let path = Path::new("dir/keys.json");
        let err = KeysDoc::parse(
            path,
            br#"{"keys": [{"id": "a", "owner": "o", "hash": "nothex"}]}"#,
        )
        .err()
        .unwrap();
        assert!(
            err.lines[0].starts_with("dir/keys.json: keys[0].hash: "),
            "{:?}",
            err.lines
        );
        let err = KeysDoc::parse(path, b"{\"keys\": [").err().unwrap();
        assert!(
            err.lines[0].starts_with("dir/keys.json: "),
            "{:?}",
            err.lines
        );
    }
}
