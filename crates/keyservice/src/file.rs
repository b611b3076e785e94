//! File mode (`keygate serve --keys keys.json`): the key file, read-only.
//!
//! The file is parsed once (with the filter's own checks: never serve a set the filter
//! would refuse) and kept with its tag and a hash index; each request only compares the
//! file's metadata with what was loaded, so a million-key file costs one `stat` per
//! request until it changes. A file that turns invalid (or disappears) while running is
//! logged once and the last good set is served; one that is invalid at start is refused.
//!
//! The change feed (changes.rs): the epoch is random, made when the store is opened (a
//! restarted server is a new store for the filters); the version starts at 1 and grows by
//! one with each reload that changed something, the diff of hashes (added, removed, or a
//! record whose text changed) kept in a bounded [`Log`]. A version is announced only once
//! its records are served: a filter told of a change asks again and must get the new
//! record.

use crate::changes::{Log, MAX_LOG_HASHES};
use crate::etag;
use crate::lock;
use crate::store::{GatewayStore, KeySetBody, KeySetSince, Since, StoreResult};
use keygate_core::record::{count_keys, KeyHash, KeySetDoc};
use keygate_core::watch::Epoch;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What identifies one version of the file on disk without reading it. `keygate` replaces
/// the file by renaming, which changes the inode even when size and mtime look the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        }
    }
}

/// One good version of the file.
struct Snapshot {
    stamp: Stamp,
    set: Arc<KeySetBody>,
    /// Where each record's text is in the body.
    by_hash: HashMap<KeyHash, Range<usize>>,
}

#[derive(Deserialize)]
struct RawKeys<'a> {
    #[serde(borrow)]
    keys: &'a RawValue,
}

impl Snapshot {
    /// The record of `hash` as the file holds it.
    fn record(&self, hash: &KeyHash) -> Option<bytes::Bytes> {
        self.by_hash
            .get(hash)
            .filter(|range| range.end <= self.set.body.len())
            .map(|range| self.set.body.slice(range.clone()))
    }

    fn load(path: &Path) -> Result<Snapshot, Vec<String>> {
        let at = |e: &dyn std::fmt::Display| vec![format!("{}: {e}", path.display())];
        let mut file = File::open(path).map_err(|e| at(&format!("cannot read: {e}")))?;
        // The stamp of the very file read, so a change during the read is seen next time.
        let stamp = file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(|e| at(&format!("cannot read: {e}")))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| at(&format!("cannot read: {e}")))?;
        let doc = KeySetDoc::parse(&bytes).map_err(|problems| {
            problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect::<Vec<_>>()
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| at(&e))?;
        let array: RawKeys = serde_json::from_str(text).map_err(|e| at(&e))?;
        let raw: Vec<&RawValue> = serde_json::from_str(array.keys.get()).map_err(|e| at(&e))?;
        let start = text.as_ptr() as usize;
        let keys_start = array.keys.get().as_ptr() as usize - start;
        let keys_at = keys_start..keys_start + array.keys.get().len();
        let mut by_hash = HashMap::with_capacity(doc.keys.len());
        for (record, raw) in doc.keys.iter().zip(raw) {
            let at = raw.get().as_ptr() as usize - start;
            by_hash.insert(record.hash, at..at + raw.get().len());
        }
        Ok(Snapshot {
            stamp,
            set: Arc::new(KeySetBody {
                etag: etag::of(&bytes),
                version: doc.version.unwrap_or_default(),
                keys: by_hash.len(),
                keys_at,
                body: bytes.into(),
            }),
            by_hash,
        })
    }

    /// A record's text, as served.
    fn text(&self, hash: &KeyHash) -> Option<&[u8]> {
        self.by_hash
            .get(hash)
            .and_then(|range| self.set.body.get(range.clone()))
    }

    fn describe(&self) -> String {
        let version = if self.set.version.is_empty() {
            "(none)"
        } else {
            &self.set.version
        };
        format!("{}, version {version}", count_keys(self.by_hash.len()))
    }
}

/// The keys whose record differs between two versions of the file: added, removed, or
/// whose text changed.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<KeyHash> {
    let mut changed: Vec<KeyHash> = new
        .by_hash
        .keys()
        .filter(|hash| old.text(hash) != new.text(hash))
        .copied()
        .collect();
    changed.extend(
        old.by_hash
            .keys()
            .filter(|hash| !new.by_hash.contains_key(hash)),
    );
    changed
}

struct State {
    current: Arc<Snapshot>,
    /// What each reload changed.
    log: Log,
    /// The file as last examined, good or not (`None`: it could not be examined), so a
    /// bad file is reported once, not on every request.
    seen: Option<Stamp>,
}

pub struct FileStore {
    path: PathBuf,
    state: Mutex<State>,
    /// Held by the one thread that reloads; the others keep answering from the current
    /// snapshot meanwhile.
    reloading: Mutex<()>,
    epoch: Epoch,
    /// The feed's version, announced once served.
    feed: tokio::sync::watch::Sender<u64>,
}

impl FileStore {
    /// Loads `path`; an invalid file is refused with one line per problem.
    pub fn open(path: &Path) -> Result<FileStore, Vec<String>> {
        FileStore::open_with_log(path, MAX_LOG_HASHES)
    }

    fn open_with_log(path: &Path, max_log_hashes: usize) -> Result<FileStore, Vec<String>> {
        let snapshot = Snapshot::load(path)?;
        let epoch = crate::secret::new_epoch()
            .and_then(|e| Epoch::parse(&e))
            .map_err(|e| vec![format!("the change feed's epoch: {e}")])?;
        let log = Log::new(max_log_hashes);
        let (feed, _) = tokio::sync::watch::channel(log.version());
        Ok(FileStore {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                seen: Some(snapshot.stamp),
                current: Arc::new(snapshot),
                log,
            }),
            reloading: Mutex::new(()),
            epoch,
            feed,
        })
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        let observed = std::fs::metadata(&self.path);
        let observed_stamp = observed.as_ref().ok().map(Stamp::of);
        let current = {
            let state = lock(&self.state);
            if state.seen == observed_stamp {
                return state.current.clone();
            }
            state.current.clone()
        };
        let Ok(_reloading) = self.reloading.try_lock() else {
            return current;
        };
        let mut state = lock(&self.state);
        if state.seen == observed_stamp {
            return state.current.clone();
        }
        let path = self.path.display();
        let still = || {
            format!(
                "still serving the last good key set ({})",
                current.describe()
            )
        };
        match observed {
            Err(e) => {
                eprintln!("keygate serve: {path}: cannot read: {e}; {}", still());
                state.seen = None;
            }
            // The file is read without the state locked: other requests are answered
            // from the current snapshot meanwhile.
            Ok(_) => {
                drop(state);
                let loaded = Snapshot::load(&self.path);
                // Reloads take turns (`reloading`): `current` is still the one in force.
                let changed = match &loaded {
                    // The same bytes (a file touched or rewritten as it was): nothing changed.
                    Ok(snapshot) if snapshot.set.etag != current.set.etag => {
                        diff(&current, snapshot)
                    }
                    _ => Vec::new(),
                };
                state = lock(&self.state);
                match loaded {
                    Ok(snapshot) => {
                        eprintln!(
                            "keygate serve: {path}: reloaded: {}; {} changed",
                            snapshot.describe(),
                            count_keys(changed.len())
                        );
                        state.seen = Some(snapshot.stamp);
                        state.current = Arc::new(snapshot);
                        // Only once the new records are served.
                        if let Some(version) = state.log.record(changed) {
                            let current = state.current.clone();
                            drop(state);
                            crate::changes::announce(&self.feed, version);
                            return current;
                        }
                    }
                    Err(lines) => {
                        for line in &lines {
                            eprintln!("keygate serve: {line}; {}", still());
                        }
                        state.seen = observed_stamp;
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl FileStore {
    /// Whether a hash is in the key file as it is now: one look at the file for however
    /// many hashes (a usage report's).
    pub fn known_hashes(&self) -> impl Fn(&KeyHash) -> bool {
        let snapshot = self.snapshot();
        move |hash| snapshot.by_hash.contains_key(hash)
    }
}

impl GatewayStore for FileStore {
    fn key_set(&self) -> StoreResult<Arc<KeySetBody>> {
        Ok(self.snapshot().set.clone())
    }

    fn record(&self, hash: &KeyHash) -> StoreResult<Option<bytes::Bytes>> {
        Ok(self.snapshot().record(hash))
    }

    fn ready(&self) -> StoreResult<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}: {}", self.path.display(), self.snapshot().describe())
    }

    fn feed_epoch(&self) -> &Epoch {
        &self.epoch
    }

    fn feed_version(&self) -> StoreResult<u64> {
        // Any reload first: the answer is as of the file now.
        self.snapshot();
        Ok(lock(&self.state).log.version())
    }

    fn changes_since(&self, since: u64) -> StoreResult<Since> {
        self.snapshot();
        Ok(lock(&self.state).log.since(since))
    }

    fn key_set_at(&self) -> StoreResult<(u64, Arc<KeySetBody>)> {
        self.snapshot();
        // The version and the snapshot change together, under this lock.
        let state = lock(&self.state);
        Ok((state.log.version(), state.current.set.clone()))
    }

    fn key_set_since(&self, since: u64) -> StoreResult<KeySetSince> {
        self.snapshot();
        let state = lock(&self.state);
        let current = &state.current;
        KeySetSince::from_changes(state.log.since(since), |hash| Ok(current.record(hash)))
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn refresh(&self) {
        self.snapshot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, records: &[(&str, &str)]) {
        let keys: Vec<String> = records
            .iter()
            .enumerate()
            .map(|(n, (key, owner))| {
                format!(
                    r#"{{"id":"k{n}","hash":"{}","owner":"{owner}","scopes":["browse"],"created_at":"2026-01-01T00:00:00Z","expires_at":null,"status":"enabled"}}"#,
                    KeyHash::of_key(key).to_hex()
                )
            })
            .collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!(r#"{{"keys":[{}]}}"#, keys.join(","))).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn sorted(mut hashes: Vec<KeyHash>) -> Vec<KeyHash> {
        hashes.sort_by_key(KeyHash::to_hex);
        hashes
    }

    #[test]
    fn a_reload_changes_the_keys_added_removed_or_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, &[("a", "alice"), ("b", "bob"), ("c", "carol")]);
        let store = FileStore::open(&path).unwrap();
        let mut versions = store.subscribe();
        assert_eq!(store.feed_version().unwrap(), 1);
        assert_eq!(store.changes_since(1).unwrap(), Since::Current);
        write(&path, &[("a", "alice"), ("b", "bobby"), ("d", "dave")]);
        let Since::Changed(2, changed) = store.changes_since(1).unwrap() else {
            panic!("no version 2");
        };
        let h = KeyHash::of_key;
        assert_eq!(sorted(changed), sorted(vec![h("b"), h("c"), h("d")]));
        assert!(versions.has_changed().unwrap());
        assert_eq!(*versions.borrow_and_update(), 2);
        // The records of version 2 are the ones served.
        assert!(store.record(&h("d")).unwrap().is_some());
        assert!(store.record(&h("c")).unwrap().is_none());
        // The same bytes again: no version.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(path.with_extension("tmp"), &bytes).unwrap();
        std::fs::rename(path.with_extension("tmp"), &path).unwrap();
        store.refresh();
        assert_eq!(store.feed_version().unwrap(), 2);
        assert!(!versions.has_changed().unwrap());
        assert_eq!(store.changes_since(0).unwrap(), Since::Gone);
        assert_eq!(store.changes_since(3).unwrap(), Since::Gone);
    }

    #[test]
    fn key_set_deltas_are_the_records_served_at_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, &[("a", "alice"), ("b", "bob")]);
        let store = FileStore::open(&path).unwrap();
        let (version, set) = store.key_set_at().unwrap();
        assert_eq!(version, 1);
        assert!(set.body[set.keys_at.clone()].starts_with(b"[{"));
        assert!(set.body[set.keys_at.clone()].ends_with(b"}]"));
        assert_eq!(store.key_set_since(1).unwrap(), KeySetSince::Current);
        write(&path, &[("b", "bobby"), ("c", "carol")]);
        let h = KeyHash::of_key;
        let (version, upsert, delete) = store.key_set_since(1).unwrap().into_delta();
        assert_eq!(version, 2);
        assert_eq!(delete, vec![h("a")]);
        let mut expected = vec![
            store.record(&h("b")).unwrap().unwrap(),
            store.record(&h("c")).unwrap().unwrap(),
        ];
        let mut upsert = upsert;
        upsert.sort();
        expected.sort();
        assert_eq!(upsert, expected);
        assert_eq!(store.key_set_since(5).unwrap(), KeySetSince::Gone);
    }

    #[test]
    fn the_log_of_a_file_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, &[("a", "alice")]);
        let store = FileStore::open_with_log(&path, 3).unwrap();
        write(&path, &[("a", "alice"), ("b", "bob")]);
        store.refresh();
        write(&path, &[("b", "bob"), ("c", "carol")]);
        store.refresh();
        assert_eq!(store.changes_since(1).unwrap(), Since::Gone);
        assert!(matches!(
            store.changes_since(2).unwrap(),
            Since::Changed(3, _)
        ));
    }
}
