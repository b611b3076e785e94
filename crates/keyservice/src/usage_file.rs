//! Usage in file mode (README "Usage (last used)"): `keygate serve --keys keys.json` takes
//! the proxies' `POST /v1/usage` reports and keeps, per key, the sum of the counts (`uses`)
//! and the latest `last_used_at` in a file beside the key file, `keys.usage.json`. The key
//! file (hashes in git) is never rewritten by traffic; `keygate list` reads both, through
//! [`path_for`] and [`read`] here.
//!
//! The usage file holds hashes, counts and times, never a key. Only keys of the key file
//! are kept: a report about any other hash is ignored, so the file stays as small as the
//! key set, and a key revoked from the key file leaves it at the next report.

use crate::atomic_file::write_atomically;
use crate::file::FileStore;
use crate::store::{StoreError, StoreResult};
use keygate_core::record::KeyHash;
use keygate_core::timestamp::Timestamp;
use keygate_core::usage::{rfc3339_millis, UsageReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// The usage kept in `path`; none when there is no such file. The error is one line
/// naming the file.
pub fn read(path: &Path) -> Result<HashMap<KeyHash, KeyUse>, String> {
    let at = |problem: &dyn std::fmt::Display| format!("{}: {problem}", path.display());
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(at(&format!("cannot read: {e}"))),
    };
    let doc: FileDoc =
        serde_json::from_slice(&bytes).map_err(|e| at(&format!("not a usage file: {e}")))?;
    let mut uses = HashMap::with_capacity(doc.usage.len());
    for (hash, entry) in doc.usage {
        let key = KeyHash::parse_hex(&hash).map_err(|e| at(&format!("not a usage file: {e}")))?;
        let last_used = Timestamp::parse_rfc3339(&entry.last_used_at)
            .map_err(|e| at(&format!("usage.{hash}.last_used_at: {e}")))?;
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

/// `keygate serve --keys`'s usage: what the usage file holds, kept in memory and written
/// after each report, before it is answered (one writer at a time).
pub struct UsageFile {
    path: PathBuf,
    keys: Arc<FileStore>,
    uses: Mutex<HashMap<KeyHash, KeyUse>>,
}

impl UsageFile {
    /// The usage of the key file `keys_path` served by `keys`. An unreadable usage file is
    /// reported on stderr and usage starts again from nothing (it is replaced at the first
    /// report): usage never stops keys from being served.
    pub fn open(keys_path: &Path, keys: Arc<FileStore>) -> UsageFile {
        let path = path_for(keys_path);
        let uses = read(&path).unwrap_or_else(|line| {
            eprintln!("keygate serve: {line}; usage starts again from nothing");
            HashMap::new()
        });
        UsageFile {
            path,
            keys,
            uses: Mutex::new(uses),
        }
    }

    /// Merges one report (only keys of the key file as it is now) and writes the usage
    /// file. Blocks: run it off the async workers. Returns how many entries were kept.
    pub fn record(&self, report: &UsageReport, now: Timestamp) -> StoreResult<usize> {
        let known = self.keys.known_hashes();
        let mut uses = crate::lock(&self.uses);
        let mut merged = uses.clone();
        let kept = merge(&mut merged, report, known, now);
        if merged == *uses {
            return Ok(kept);
        }
        write_atomically(&self.path, &to_bytes(&merged)).map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: cannot write: {e}; usage report not kept",
                self.path.display()
            ))
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

    fn key_file(dir: &Path, keys: &[&str]) -> PathBuf {
        let records: Vec<serde_json::Value> = keys
            .iter()
            .map(
                |k| serde_json::json!({"id": k, "hash": KeyHash::of_key(k).to_hex(), "owner": "o"}),
            )
            .collect();
        let path = dir.join("keys.json");
        std::fs::write(&path, serde_json::json!({ "keys": records }).to_string()).unwrap();
        path
    }

    #[test]
    fn written_and_read_back_without_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = key_file(dir.path(), &["kg_secret"]);
        let store = Arc::new(FileStore::open(&keys).unwrap());
        let usage = UsageFile::open(&keys, store.clone());
        let now = at("2026-11-30T12:00:00Z");
        let report = UsageReport {
            entries: vec![
                entry("kg_secret", 4, "2026-11-30T10:00:00.250Z"),
                entry("kg_stranger", 1, "2026-11-30T10:00:00Z"),
            ],
        };
        assert_eq!(usage.record(&report, now).unwrap(), 1);
        let text = std::fs::read_to_string(path_for(&keys)).unwrap();
        assert!(!text.contains("kg_secret"));
        assert!(text.contains(&KeyHash::of_key("kg_secret").to_hex()));
        assert!(!text.contains(&KeyHash::of_key("kg_stranger").to_hex()));
        assert!(text.contains("\"last_used_at\": \"2026-11-30T10:00:00.250Z\""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path_for(&keys))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = read(&path_for(&keys)).unwrap();
        assert_eq!(back[&KeyHash::of_key("kg_secret")].uses, 4);
        // Reopened, it goes on from what was kept.
        let again = UsageFile::open(&keys, store);
        again.record(&report, now).unwrap();
        assert_eq!(
            read(&path_for(&keys)).unwrap()[&KeyHash::of_key("kg_secret")].uses,
            8
        );
        // Nothing but temporary-free files beside the key file.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keys.json", "keys.usage.json"]);
    }

    #[test]
    fn an_unreadable_usage_file_is_named_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let keys = key_file(dir.path(), &["kg_a"]);
        std::fs::write(path_for(&keys), "{\"usage\": ").unwrap();
        let line = read(&path_for(&keys)).unwrap_err();
        assert!(
            line.starts_with(&format!(
                "{}: not a usage file: ",
                path_for(&keys).display()
            )),
            "{line}"
        );
        let usage = UsageFile::open(&keys, Arc::new(FileStore::open(&keys).unwrap()));
        let report = UsageReport {
            entries: vec![entry("kg_a", 2, "2026-11-30T10:00:00Z")],
        };
        usage.record(&report, at("2026-11-30T12:00:00Z")).unwrap();
        assert_eq!(
            read(&path_for(&keys)).unwrap()[&KeyHash::of_key("kg_a")].uses,
            2
        );
    }

    /// The endpoint in file mode, as the app serves it: the gateway endpoints' client
    /// certificate rule, 204 once kept, the field named, 405 with `Allow: POST`.
    #[tokio::test]
    async fn file_mode_endpoint() {
        use crate::app::{router, App, Peer};
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let dir = tempfile::tempdir().unwrap();
        let keys = key_file(dir.path(), &["kg_a"]);
        let store = Arc::new(FileStore::open(&keys).unwrap());
        let usage = Arc::new(UsageFile::open(&keys, store.clone()));
        let app = router(Arc::new(App::new(store, None, true).with_usage_file(usage)));
        let send = |method: &str, body: String, client_cert: bool| {
            let mut req = Request::builder()
                .method(method)
                .uri("/v1/usage")
                .body(Body::from(body))
                .unwrap();
            req.extensions_mut().insert(Peer {
                addr: "127.0.0.1:1".parse().unwrap(),
                client_cert,
            });
            let app = app.clone();
            async move {
                let res = app.oneshot(req).await.unwrap();
                let status = res.status();
                let allow = res.headers().get("allow").cloned();
                let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (status, allow, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let report = UsageReport {
            entries: vec![entry("kg_a", 3, "2020-01-01T00:00:00Z")],
        }
        .to_json();
        let (status, _, _) = send("POST", report.clone(), false).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!path_for(&keys).exists());
        let (status, _, body) = send("POST", report, true).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(
            read(&path_for(&keys)).unwrap()[&KeyHash::of_key("kg_a")].uses,
            3
        );
        let zero =
            r#"{"reports":[{"hash":"HASH","count":0,"last_used_at":"2020-01-01T00:00:00Z"}]}"#
                .replace("HASH", &KeyHash::of_key("kg_a").to_hex());
        let (status, _, body) = send("POST", zero, true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("reports[0].count: must be at least 1"),
            "{body}"
        );
        let (status, allow, _) = send("GET", String::new(), true).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(allow.unwrap(), "POST");
    }
}
