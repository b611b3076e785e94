//! Usage in file mode (README "Usage (last used)"): `keygate serve --keys keys.json` takes
//! the proxies' `POST /v1/usage` reports and keeps, per key, the sum of the counts (`uses`)
//! and the latest `last_used_at` in a file beside the key file, `keys.usage.json`. The key
//! file (hashes in git) is never rewritten by traffic; `keygate list` reads both.
//!
//! The usage file holds hashes, counts and times, never a key. Only keys of the key file
//! are kept: a report about any other hash is ignored, so the file stays as small as the
//! key set, and a key revoked from the key file leaves it at the next report.

use crate::error::{Error, Result};
use crate::keys_file;
use keygate_core::record::KeyHash;
use keygate_core::timestamp::Timestamp;
use keygate_core::usage::{rfc3339_millis, UsageReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The endpoint the proxies' `usage` calls.
pub const PATH: &str = "/v1/usage";
/// The largest report body taken: 10 000 entries are about 1.4 MB.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// One key's usage, as kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUse {
    pub uses: u64,
    pub last_used: Timestamp,
}

/// `{"usage": {"<hash>": {"uses": 12, "last_used_at": "2026-11-30T10:00:00.500Z"}}}`,
/// hashes in order, so that two writes of the same usage are the same bytes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    usage: BTreeMap<String, UseDoc>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UseDoc {
    uses: u64,
    last_used_at: String,
}

/// The usage file of key file `keys`: `keys.json` → `keys.usage.json`.
pub fn path_for(keys: &Path) -> PathBuf {
    let name = keys.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    keys.with_file_name(format!("{stem}.usage.json"))
}

/// The usage kept in `path`; none when there is no such file.
pub fn read(path: &Path) -> Result<HashMap<KeyHash, KeyUse>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::at(path, format!("cannot read: {e}"))),
    };
    let doc: FileDoc = serde_json::from_slice(&bytes)
        .map_err(|e| Error::at(path, format!("not a usage file: {e}")))?;
    let mut uses = HashMap::with_capacity(doc.usage.len());
    for (hash, entry) in doc.usage {
        let key = KeyHash::parse_hex(&hash).map_err(|e| Error::at(path, e))?;
        let last_used = Timestamp::parse_rfc3339(&entry.last_used_at)
            .map_err(|e| Error::at(path, format!("usage.{hash}.last_used_at: {e}")))?;
        uses.insert(
            key,
            KeyUse {
                uses: entry.uses,
                last_used,
            },
        );
    }
    Ok(uses)
}

fn to_bytes(uses: &HashMap<KeyHash, KeyUse>) -> Vec<u8> {
    let doc = FileDoc {
        usage: uses
            .iter()
            .map(|(hash, used)| {
                (
                    hash.to_hex(),
                    UseDoc {
                        uses: used.uses,
                        last_used_at: rfc3339_millis(used.last_used),
                    },
                )
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Adds a report to `uses`: counts are summed, the later time kept. A time later than
/// `now` (a proxy whose clock runs ahead) is taken as `now`, so it cannot hide later
/// uses. Only hashes `known` are kept. Returns how many entries were kept.
pub fn merge(
    uses: &mut HashMap<KeyHash, KeyUse>,
    report: &UsageReport,
    known: impl Fn(&KeyHash) -> bool,
    now: Timestamp,
) -> usize {
    let mut kept = 0;
    for entry in &report.entries {
        if !known(&entry.hash) {
            continue;
        }
        kept += 1;
        let at = entry.last_used.min(now);
        uses.entry(entry.hash)
            .and_modify(|used| {
                used.uses = used.uses.saturating_add(entry.count);
                used.last_used = used.last_used.max(at);
            })
            .or_insert(KeyUse {
                uses: entry.count,
                last_used: at,
            });
    }
    uses.retain(|hash, _| known(hash));
    kept
}

/// Why a report was refused: the status and the `{"error","error_description"}` to answer.
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl Refusal {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Refusal {
            status,
            error,
            description: description.into(),
        }
    }
}

/// `keygate serve`'s usage: what the usage file holds, kept in memory and written after
/// each report (one writer at a time).
pub struct Store {
    path: PathBuf,
    uses: Mutex<HashMap<KeyHash, KeyUse>>,
}

impl Store {
    /// The store for key file `keys`. An unreadable usage file is reported on stderr and
    /// usage starts again from nothing (it is replaced at the first report): usage never
    /// stops keys from being served.
    pub fn open(keys: &Path) -> Store {
        let path = path_for(keys);
        let uses = read(&path).unwrap_or_else(|error| {
            for line in &error.lines {
                eprintln!("keygate serve: {line}; usage starts again from nothing");
            }
            HashMap::new()
        });
        Store {
            path,
            uses: Mutex::new(uses),
        }
    }

    /// Takes one report: reads at most [`MAX_BODY_BYTES`] of `body` (`length`: what the
    /// request says it holds), checks it, merges it and writes the usage file before
    /// answering. Returns how many entries were kept.
    pub fn report(
        &self,
        length: Option<usize>,
        body: &mut dyn Read,
        known: impl Fn(&KeyHash) -> bool,
    ) -> std::result::Result<usize, Refusal> {
        let too_large = || {
            Refusal::new(
                413,
                "payload_too_large",
                format!("a usage report is at most {MAX_BODY_BYTES} bytes"),
            )
        };
        if length.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(length.unwrap_or(0));
        body.take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Refusal::new(400, "invalid_request", format!("cannot read: {e}")))?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        let report = UsageReport::parse(&bytes).map_err(|problems| {
            let described: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Refusal::new(400, "invalid_request", described.join("; "))
        })?;
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        let mut merged = uses.clone();
        let kept = merge(&mut merged, &report, known, now);
        if merged == *uses {
            return Ok(kept);
        }
        keys_file::write_atomically(&self.path, &to_bytes(&merged)).map_err(|e| {
            eprintln!(
                "keygate serve: {}: cannot write: {e}; usage report not kept",
                self.path.display()
            );
            Refusal::new(503, "unavailable", "the usage file cannot be written")
        })?;
        *uses = merged;
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::usage::UsageEntry;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn entry(key: &str, count: u64, time: &str) -> UsageEntry {
        UsageEntry {
            hash: KeyHash::of_key(key),
            count,
            last_used: at(time),
        }
    }

    #[test]
    fn usage_file_beside_the_key_file() {
        assert_eq!(
            path_for(Path::new("/etc/keygate/keys.json")),
            Path::new("/etc/keygate/keys.usage.json")
        );
        assert_eq!(path_for(Path::new("keys")), Path::new("keys.usage.json"));
    }

    #[test]
    fn sums_counts_keeps_the_latest_and_only_known_keys() {
        let known = |h: &KeyHash| *h == KeyHash::of_key("a") || *h == KeyHash::of_key("b");
        let now = at("2026-11-30T12:00:00Z");
        let mut uses = HashMap::new();
        let first = UsageReport {
            entries: vec![
                entry("a", 2, "2026-11-30T10:00:00Z"),
                entry("stranger", 5, "2026-11-30T10:00:00Z"),
            ],
        };
        assert_eq!(merge(&mut uses, &first, known, now), 1);
        let second = UsageReport {
            entries: vec![
                entry("a", 3, "2026-11-30T09:00:00Z"),
                entry("b", 1, "2030-01-01T00:00:00Z"),
            ],
        };
        assert_eq!(merge(&mut uses, &second, known, now), 2);
        assert_eq!(
            uses[&KeyHash::of_key("a")],
            KeyUse {
                uses: 5,
                last_used: at("2026-11-30T10:00:00Z")
            }
        );
        assert_eq!(
            uses[&KeyHash::of_key("b")].last_used,
            now,
            "not in the future"
        );
        assert!(!uses.contains_key(&KeyHash::of_key("stranger")));
        // A key gone from the key file leaves.
        let only_b = |h: &KeyHash| *h == KeyHash::of_key("b");
        merge(&mut uses, &UsageReport::default(), only_b, now);
        assert_eq!(uses.len(), 1);
    }

    #[test]
    fn written_and_read_back_without_keys() {
        let dir = std::env::temp_dir().join(format!("keygate-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys.json");
        let store = Store::open(&keys);
        let report = UsageReport {
            entries: vec![entry("kg_secret", 4, "2026-11-30T10:00:00.250Z")],
        };
        let body = report.to_json();
        let kept = store
            .report(Some(body.len()), &mut body.as_bytes(), |_| true)
            .unwrap_or_else(|r| panic!("{}", r.description));
        assert_eq!(kept, 1);
        let text = std::fs::read_to_string(path_for(&keys)).unwrap();
        assert!(!text.contains("kg_secret"));
        assert!(text.contains(&KeyHash::of_key("kg_secret").to_hex()));
        assert!(text.contains("\"last_used_at\": \"2026-11-30T10:00:00.250Z\""));
        let back = read(&path_for(&keys)).unwrap();
        assert_eq!(back[&KeyHash::of_key("kg_secret")].uses, 4);
        // Reopened, it goes on from what was kept.
        let again = Store::open(&keys);
        again
            .report(None, &mut body.as_bytes(), |_| true)
            .unwrap_or_else(|r| panic!("{}", r.description));
        assert_eq!(
            read(&path_for(&keys)).unwrap()[&KeyHash::of_key("kg_secret")].uses,
            8
        );
        let refused = again
            .report(None, &mut &b"{\"reports\": [{}]}"[..], |_| true)
            .err()
            .unwrap();
        assert_eq!(refused.status, 400);
        assert!(refused.description.starts_with("reports[0]: missing field"));
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let refused = again.report(None, &mut &big[..], |_| true).err().unwrap();
        assert_eq!(refused.status, 413);
        let refused = again
            .report(Some(MAX_BODY_BYTES + 1), &mut &b""[..], |_| true)
            .err()
            .unwrap();
        assert_eq!(refused.status, 413);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
