//! `key_set` mode in the native build (README "Native build (Envoy dynamic module)"): one
//! key set per Envoy process, in the module's own memory, read by every worker.
//!
//! The protocol is the core's ([`SharedSet`]: the lease, the long-poll of the incremental
//! sync, deltas applied bucket by bucket, layouts, backoff), run against [`Memory`], a
//! store in native memory in place of proxy-wasm's shared data. Envoy's main thread makes
//! the calls (a config-level callout, on the config's tick, `crate::ticker`); a loader
//! thread per config reads and writes what they bring, so neither the main thread nor a
//! worker is held up by a large document.

use crate::abi::{log, ConfigHost, LogLevel, Scheduler};
use crate::clock::{jitter, now_ms};
use crate::metrics::Metrics;
use crate::ticker;
use keygate_core::config::Config;
use keygate_core::key_set::{
    FetchAnswer, FetchStat, Fetched, Progress, SharedSet, SharedStore, Turn,
};
use keygate_core::record::{KeyHash, KeyRecord};
use keygate_core::remote::KeySetConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
/// [`KeySet::bits`] before a first set has loaded.
const NO_LAYOUT: u8 = u8::MAX;

/// Every key set of the process (sets from different sources never share entries: the
/// core names them by source), shared by every filter config and worker.
/// Entries by name: a value and its version.
type Entries = HashMap<String, (Vec<u8>, u32)>;

static MEMORY: LazyLock<RwLock<Entries>> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// The process's key-set store, as the core's [`SharedStore`].
struct Memory;

impl SharedStore for Memory {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let entries = MEMORY.read().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn read<R>(&self, key: &str, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let entries = MEMORY.read().unwrap_or_else(PoisonError::into_inner);
        f(entries.get(key).map(|(value, _)| value.as_slice()))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut entries = MEMORY.write().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(key) {
            Some((old, version)) => {
                if cas.is_some_and(|want| want != 0 && want != *version) {
                    return false;
                }
                // A fresh allocation, not the old one refilled: a bucket that once grew
                // large would otherwise keep that capacity for the life of the process.
                *old = value.to_vec();
                *version = version.wrapping_add(1).max(1);
            }
            None => {
                entries.insert(key.to_string(), (value.to_vec(), 1));
            }
        }
        true
    }
}

/// What the main thread hands the loader thread.
enum Work {
    /// The answer to a fetch asked at `asked_ms`.
    Answer {
        asked_ms: u64,
        answer: FetchAnswer,
    },
    Stop,
}

/// One filter config's view of the set, and its loader.
pub struct KeySet {
    set: SharedSet,
    fetch: KeySetConfig,
    holder: u64,
    /// The layout in force as last read ([`NO_LAYOUT`]: none loaded yet).
    bits: AtomicU8,
    main: Mutex<MainThread>,
    /// What the loader came to, for the main thread's stats and log.
    done: Arc<Mutex<Vec<Fetched>>>,
    work: Sender<Work>,
    loader: Option<JoinHandle<()>>,
}

/// What only the main thread reads and writes.
#[derive(Default)]
struct MainThread {
    /// The fetch on its way: its call id, when it was asked and until when to wait.
    in_flight: Option<(u64, u64, u64)>,
    /// The loader is working on an answer.
    loading: bool,
}

impl KeySet {
    /// Starts the loader, which commits a tick on `scheduler` when it is done with an
    /// answer; `None` (logged) when no thread can be started.
    pub fn start(fetch: &KeySetConfig, scheduler: Arc<Scheduler>) -> Option<KeySet> {
        let set = SharedSet::new(fetch);
        let holder = set.new_holder(&mut Memory);
        let (work, inbox) = mpsc::channel();
        let done = Arc::new(Mutex::new(Vec::new()));
        let loader = {
            let (set, done) = (set.clone(), Arc::clone(&done));
            std::thread::Builder::new()
                .name("keygate-keyset".into())
                .spawn(move || load(&set, holder, &inbox, &done, &scheduler))
        };
        let loader = match loader {
            Ok(loader) => loader,
            Err(why) => {
                log(
                    LogLevel::Error,
                    &format!("keygate: configuration refused: cannot start the key set's loader thread: {why}"),
                );
                return None;
            }
        };
        let bits = set.read_meta(&Memory).bits.unwrap_or(NO_LAYOUT);
        Some(KeySet {
            set,
            fetch: fetch.clone(),
            holder,
            bits: AtomicU8::new(bits),
            main: Mutex::new(MainThread::default()),
            done,
            work,
            loader: Some(loader),
        })
    }

    /// The record of `hash` in the set in force: `Ok(None)` for a key the set does not
    /// hold, `Err(NotLoaded)` before a first set has loaded.
    pub fn record(&self, config: &Config, hash: &KeyHash) -> Result<Option<KeyRecord>, NotLoaded> {
        let mut bits = self.bits.load(Ordering::Acquire);
        if bits == NO_LAYOUT {
            // Before a first load, look again on every request, so the first set serves
            // at once rather than at the next tick.
            bits = self.set.read_meta(&Memory).bits.ok_or(NotLoaded)?;
            self.bits.store(bits, Ordering::Release);
        }
        let (record, found_under) = self.set.lookup(&Memory, bits, hash, &config.scopes);
        if found_under != bits {
            // Moved to a new layout before the main thread's tick said so.
            self.bits.store(found_under, Ordering::Release);
        }
        Ok(record)
    }

    /// The main thread's turn: what the loader came to, the stats, and the next fetch.
    pub fn tick(&self, host: ConfigHost, metrics: &Metrics) {
        let finished: Vec<Fetched> =
            std::mem::take(&mut *self.done.lock().unwrap_or_else(PoisonError::into_inner));
        let mut main = self.main.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = self.set.read_meta(&Memory);
        self.bits
            .store(meta.bits.unwrap_or(NO_LAYOUT), Ordering::Release);
        for fetched in finished {
            main.loading = false;
            self.report(host, metrics, fetched, meta.bits.is_some());
        }
        let now = now_ms();
        metrics.keys_loaded(host, meta.keys);
        if let Some(ok) = meta.last_ok_ms {
            metrics.fetch_age(host, now.saturating_sub(ok) / 1000);
        }
        if main.loading || main.in_flight.is_some_and(|(_, _, until)| now < until) {
            return;
        }
        main.in_flight = None;
        let Some(fetch) = self.set.claim(&mut Memory, self.holder, now) else {
            return;
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", fetch.path.as_str()),
            (":authority", &*self.fetch.endpoint.authority),
            ("accept", "application/json"),
        ];
        if let Some(etag) = fetch.etag.as_deref() {
            headers.push(("if-none-match", etag));
        }
        match host.call(
            &self.fetch.endpoint.cluster,
            &headers,
            &[],
            fetch.timeout_ms,
        ) {
            Ok(id) => main.in_flight = Some((id, now, now + fetch.timeout_ms + 1000)),
            Err(reason) => {
                main.loading = true;
                self.hand_over(now, FetchAnswer::Failed(reason));
            }
        }
    }

    /// The answer to a config call; false when it is not this key set's.
    pub fn answered(&self, id: u64, answer: &crate::abi::CallAnswer<'_>) -> bool {
        let mut main = self.main.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, asked_ms, _)) = main.in_flight.filter(|(mine, _, _)| *mine == id) else {
            return false;
        };
        main.in_flight = None;
        main.loading = true;
        drop(main);
        let answer = match answer.status() {
            Some("200") => FetchAnswer::Set {
                etag: answer.header("etag").map(str::to_string),
                body: answer.body(),
            },
            Some("304") => FetchAnswer::NotModified,
            Some(other) => FetchAnswer::Failed(format!("key service answered {other}")),
            // Envoy resets a call whose answer outgrows its buffer limit, and says so only
            // in its own log, now and then: name that cause here, it is the likely one for a
            // large set.
            None => FetchAnswer::Failed(
                "the call was reset: an answer larger than Envoy's \
                 http.async_response_buffer_limit (32 MiB by default), or a lost connection"
                    .into(),
            ),
        };
        self.hand_over(asked_ms, answer);
        true
    }

    fn hand_over(&self, asked_ms: u64, answer: FetchAnswer) {
        if self.work.send(Work::Answer { asked_ms, answer }).is_err() {
            log(
                LogLevel::Error,
                "keygate: the key set's loader thread is gone; the set in force stays",
            );
        }
    }

    fn report(&self, host: ConfigHost, metrics: &Metrics, fetched: Fetched, loaded: bool) {
        let report = fetched.report(&self.fetch.endpoint.cluster, loaded);
        metrics.fetched(host, report.stat);
        if report.stat != FetchStat::Failed {
            metrics.fetch_age(host, 0);
        }
        if let Some(keys) = report.keys {
            metrics.keys_loaded(host, keys);
        }
        if let Some((warning, line)) = report.line {
            let level = if warning {
                LogLevel::Warn
            } else {
                LogLevel::Info
            };
            log(level, &line);
        }
    }
}

impl Drop for KeySet {
    /// Stops the loader (after the answer it is working on) and gives the lease up, so a
    /// config that replaces this one fetches at once.
    fn drop(&mut self) {
        let _ = self.work.send(Work::Stop);
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
        self.set.release(&mut Memory, self.holder);
    }
}

/// The loader thread: deals with each answer whole (no worker waits on it: they read the
/// buckets already written), then has the main thread take its turn at once.
fn load(
    set: &SharedSet,
    holder: u64,
    inbox: &Receiver<Work>,
    done: &Mutex<Vec<Fetched>>,
    scheduler: &Scheduler,
) {
    loop {
        match inbox.recv() {
            Ok(Work::Answer { asked_ms, answer }) => {
                let now = now_ms();
                let turn = Turn {
                    holder,
                    now_ms: now,
                    jitter: jitter(holder),
                };
                let mut progress = set.complete(&mut Memory, turn, asked_ms, answer, usize::MAX);
                let fetched = loop {
                    match progress {
                        Progress::Done(fetched) => break fetched,
                        Progress::Working(job) => {
                            progress = set.resume(&mut Memory, turn, job, usize::MAX);
                        }
                    }
                };
                done.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(fetched);
                scheduler.commit(ticker::EVENT);
            }
            Ok(Work::Stop) | Err(_) => return,
        }
    }
}

/// No key set has loaded yet.
pub struct NotLoaded;
