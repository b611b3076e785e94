//! File mode (`keygate serve --keys keys.json`): the key file, read-only.
//!
//! The file is parsed once (with the filter's own checks: never serve a set the filter
//! would refuse) and kept with its tag and a hash index; each request only compares the
//! file's metadata with what was loaded, so a million-key file costs one `stat` per
//! request until it changes. A file that turns invalid (or disappears) while running is
//! logged once and the last good set is served; one that is invalid at start is refused.

use crate::etag;
use crate::store::{GatewayStore, KeySetBody, StoreResult};
use keygate_core::record::{KeyHash, KeySetDoc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
struct RawRecords<'a> {
    #[serde(borrow)]
    keys: Vec<&'a RawValue>,
}

impl Snapshot {
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
                .map(|p| match p.path.as_str() {
                    "" => format!("{}: {}", path.display(), p.message),
                    field => format!("{}: {field}: {}", path.display(), p.message),
                })
                .collect::<Vec<_>>()
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| at(&e))?;
        let raw: RawRecords = serde_json::from_str(text).map_err(|e| at(&e))?;
        let start = text.as_ptr() as usize;
        let mut by_hash = HashMap::with_capacity(doc.keys.len());
        for (record, raw) in doc.keys.iter().zip(raw.keys) {
            let at = raw.get().as_ptr() as usize - start;
            by_hash.insert(record.hash, at..at + raw.get().len());
        }
        Ok(Snapshot {
            stamp,
            set: Arc::new(KeySetBody {
                etag: etag::of(&bytes),
                version: doc.version.unwrap_or_default(),
                keys: by_hash.len(),
                body: bytes.into(),
            }),
            by_hash,
        })
    }

    fn describe(&self) -> String {
        let version = if self.set.version.is_empty() {
            "(none)"
        } else {
            &self.set.version
        };
        format!("{} keys, version {version}", self.by_hash.len())
    }
}

struct State {
    current: Arc<Snapshot>,
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the state is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FileStore {
    /// Loads `path`; an invalid file is refused with one line per problem.
    pub fn open(path: &Path) -> Result<FileStore, Vec<String>> {
        let snapshot = Snapshot::load(path)?;
        Ok(FileStore {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                seen: Some(snapshot.stamp),
                current: Arc::new(snapshot),
            }),
            reloading: Mutex::new(()),
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
                state = lock(&self.state);
                match loaded {
                    Ok(snapshot) => {
                        eprintln!("keygate serve: {path}: reloaded: {}", snapshot.describe());
                        state.seen = Some(snapshot.stamp);
                        state.current = Arc::new(snapshot);
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
        let snapshot = self.snapshot();
        Ok(snapshot
            .by_hash
            .get(hash)
            .filter(|range| range.end <= snapshot.set.body.len())
            .map(|range| snapshot.set.body.slice(range.clone())))
    }

    fn ready(&self) -> StoreResult<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}: {}", self.path.display(), self.snapshot().describe())
    }
}
