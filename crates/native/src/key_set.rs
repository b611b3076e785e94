//! `key_set` mode in the native build (README "Native build (Envoy dynamic module)"): one
//! key set per Envoy process, in the module's own memory, read by every worker.
//!
//! The protocol is the core's ([`SharedSet`]: the lease, the long-poll of the incremental
//! sync, deltas applied bucket by bucket, layouts, backoff), run against [`Memory`], a
//! store in native memory in place of proxy-wasm's shared data. Envoy's main thread makes
//! the calls (a config-level callout, on the config's tick, `crate::ticker`); a loader
//! thread per config reads and writes what they bring, so neither the main thread nor a
//! worker is held up by a large document.

use crate::abi::{log, ConfigHost, LogLevel, Scheduler, StreamEvent};
use crate::clock::{jitter, now_ms};
use crate::metrics::Metrics;
use crate::ticker;
use keygate_core::config::Config;
use keygate_core::key_set::{
    FetchAnswer, FetchStat, Fetched, Progress, Scan, SharedSet, SharedStore, Turn,
};
use keygate_core::key_set_scan::Step;
use keygate_core::record::{KeyHash, KeyRecord};
use keygate_core::remote::KeySetConfig;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
/// The largest key set read (about eight million keys): a key service that sends more is
/// refused, and the rest of its answer not taken in.
const MAX_SET_BYTES: usize = 1 << 30;
/// The most of a set's body handed to the loader and not read yet. Envoy cannot be asked
/// to wait, so a loader that falls this far behind the network refuses the answer rather
/// than hold it; the next fetch tries again.
const MAX_WAITING_BYTES: usize = 256 << 20;
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
    /// The answer to a fetch asked at `asked_ms`, other than a set: a 304 or a failure.
    Answer {
        asked_ms: u64,
        answer: FetchAnswer,
    },
    /// A set begins to arrive, in answer to a fetch asked at `asked_ms`.
    Begin {
        asked_ms: u64,
        etag: Option<String>,
    },
    /// The next part of its body.
    Part(Vec<u8>),
    /// The body is complete.
    End,
    /// The set stopped arriving partway.
    Cut(String),
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
    /// The loader refused the set arriving before its end: the main thread ends its stream
    /// rather than take in the rest.
    refused: Arc<AtomicBool>,
    /// Bytes of the set arriving handed to the loader and not read yet.
    waiting: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    work: Sender<Work>,
    loader: Option<JoinHandle<()>>,
}

/// What only the main thread reads and writes.
#[derive(Default)]
struct MainThread {
    /// The fetch on its way.
    in_flight: Option<InFlight>,
    /// The loader is working on an answer.
    loading: bool,
}

/// A fetch on its way: a stream ([`ConfigHost::stream`]), whose body goes to the loader a
/// part at a time as it arrives.
struct InFlight {
    id: u64,
    asked_ms: u64,
    /// After this, the stream is given up (Envoy's own timeout should have ended it).
    until_ms: u64,
    answer: Arriving,
    /// Bytes of a set's body received so far.
    received: usize,
}

enum Arriving {
    /// No headers yet.
    Nothing,
    /// A 200: the loader reads its body.
    Set,
    /// A 304 or an error status, handed over when the stream completes.
    Other(FetchAnswer),
}

impl KeySet {
    /// Starts the loader, which commits a tick on `scheduler` when it is done with an
    /// answer; `None` (logged) when no thread can be started.
    pub fn start(fetch: &KeySetConfig, scheduler: Arc<Scheduler>) -> Option<KeySet> {
        let set = SharedSet::new(fetch);
        let holder = set.new_holder(&mut Memory);
        let (work, inbox) = mpsc::channel();
        let done = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let loader = {
            let set = set.clone();
            let (done, refused) = (Arc::clone(&done), Arc::clone(&refused));
            let (waiting, stopping) = (Arc::clone(&waiting), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("keygate-keyset".into())
                .spawn(move || {
                    let reports = Reports {
                        done: &done,
                        refused: &refused,
                        waiting: &waiting,
                        stopping: &stopping,
                        scheduler: &scheduler,
                    };
                    load(&set, holder, &inbox, &reports)
                })
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
            refused,
            waiting,
            stopping,
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
        let arriving = main
            .in_flight
            .as_ref()
            .is_some_and(|f| matches!(f.answer, Arriving::Set));
        // The loader has refused the set: the rest of it would be read for nothing.
        let refused = arriving && self.refused.swap(false, Ordering::AcqRel);
        let stale = main.in_flight.as_ref().is_some_and(|f| now >= f.until_ms);
        if refused || (stale && !main.loading) {
            let why = if refused {
                "refused before its end"
            } else {
                "no end to the answer within the fetch timeout"
            };
            self.give_up(main, host, why);
            return;
        }
        if main.loading || main.in_flight.is_some() {
            return;
        }
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
        match host.stream(&self.fetch.endpoint.cluster, &headers, fetch.timeout_ms) {
            Ok(id) => {
                main.in_flight = Some(InFlight {
                    id,
                    asked_ms: now,
                    until_ms: now + fetch.timeout_ms + 1000,
                    answer: Arriving::Nothing,
                    received: 0,
                })
            }
            Err(reason) => {
                main.loading = true;
                self.hand_over(now, FetchAnswer::Failed(reason));
            }
        }
    }

    /// What the fetch's stream brought: the status and ETag, each part of a set's body
    /// (to the loader, which reads it as it comes), its end or a reset.
    pub fn streamed(&self, host: ConfigHost, id: u64, event: StreamEvent<'_>) {
        let mut main = self.main.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(fetch) = main.in_flight.as_mut().filter(|f| f.id == id) else {
            return;
        };
        let cut = match event {
            StreamEvent::Headers { answer, end } => {
                fetch.answer = match answer.status() {
                    Some("200") => {
                        self.refused.store(false, Ordering::Release);
                        self.send(Work::Begin {
                            asked_ms: fetch.asked_ms,
                            etag: answer.header("etag").map(str::to_string),
                        });
                        Arriving::Set
                    }
                    Some("304") => Arriving::Other(FetchAnswer::NotModified),
                    other => Arriving::Other(FetchAnswer::Failed(format!(
                        "key service answered {}",
                        other.unwrap_or("with no status")
                    ))),
                };
                if !end {
                    return;
                }
                None
            }
            StreamEvent::Data { answer, end } => {
                let mut cut = None;
                if matches!(fetch.answer, Arriving::Set) {
                    let part = answer.body();
                    let size = part.len();
                    fetch.received += size;
                    if fetch.received > MAX_SET_BYTES {
                        cut = Some("a key set larger than 1 GiB: refused");
                    } else if self.waiting.fetch_add(size, Ordering::AcqRel) + size
                        > MAX_WAITING_BYTES
                    {
                        self.waiting.fetch_sub(size, Ordering::AcqRel);
                        cut = Some(
                            "the key set arrives faster than it can be read \
                             (256 MiB waiting): refused",
                        );
                    } else if size > 0 {
                        self.send(Work::Part(part));
                    }
                }
                if let Some(why) = cut {
                    // The rest is not taken in.
                    self.give_up(main, host, why);
                    return;
                }
                if !end {
                    return;
                }
                None
            }
            StreamEvent::Complete => None,
            StreamEvent::Reset => Some("the call was reset: a timeout, or a lost connection"),
        };
        // The answer is complete, or cut: the loader takes it from here, and whatever else
        // Envoy says of this stream is ignored.
        let Some(fetch) = main.in_flight.take() else {
            return;
        };
        main.loading = true;
        drop(main);
        self.ended(fetch, cut);
    }

    /// Gives up the fetch in flight: its stream is ended (the reset hook finds nothing in
    /// flight, the lock is let go first) and the loader told why.
    fn give_up(&self, mut main: MutexGuard<'_, MainThread>, host: ConfigHost, why: &str) {
        let Some(fetch) = main.in_flight.take() else {
            return;
        };
        main.loading = true;
        drop(main);
        host.reset_stream(fetch.id);
        self.ended(fetch, Some(why));
    }

    /// Hands a fetch that has ended (`cut`: partway, and why) to the loader.
    fn ended(&self, fetch: InFlight, cut: Option<&str>) {
        match (fetch.answer, cut) {
            (Arriving::Set, None) => self.send(Work::End),
            (Arriving::Set, Some(why)) => self.send(Work::Cut(why.into())),
            (Arriving::Other(answer), None) => self.hand_over(fetch.asked_ms, answer),
            (Arriving::Nothing, None) => self.hand_over(
                fetch.asked_ms,
                FetchAnswer::Failed("the key service's answer had no headers".into()),
            ),
            (_, Some(why)) => self.hand_over(fetch.asked_ms, FetchAnswer::Failed(why.into())),
        }
    }

    /// Ends the fetch's stream, if one is open (the config is being destroyed).
    pub fn end_stream(&self, host: ConfigHost) {
        let open = self
            .main
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight
            .take();
        if let Some(fetch) = open {
            host.reset_stream(fetch.id);
        }
    }

    fn hand_over(&self, asked_ms: u64, answer: FetchAnswer) {
        self.send(Work::Answer { asked_ms, answer });
    }

    fn send(&self, work: Work) {
        if self.work.send(work).is_err() {
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
        self.stopping.store(true, Ordering::Release);
        let _ = self.work.send(Work::Stop);
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
        self.set.release(&mut Memory, self.holder);
    }
}

/// The loader thread: reads a set as it arrives, then writes it (no worker waits on it:
/// they read the buckets already written), and has the main thread take its turn at once.
/// How the loader reports to the main thread: what each answer came to, and a set refused
/// while it still arrives; either way the main thread's turn is called at once.
struct Reports<'a> {
    done: &'a Mutex<Vec<Fetched>>,
    refused: &'a AtomicBool,
    /// Bytes of parts handed over and not read yet.
    waiting: &'a AtomicUsize,
    /// The config is going: the loader stops at its next piece of work.
    stopping: &'a AtomicBool,
    scheduler: &'a Scheduler,
}

fn load(set: &SharedSet, holder: u64, inbox: &Receiver<Work>, reports: &Reports<'_>) {
    let mut reading: Option<Reading> = None;
    loop {
        let work = match inbox.recv() {
            Ok(Work::Stop) | Err(_) => return,
            // The config is going: what is still queued is not read.
            Ok(_) if reports.stopping.load(Ordering::Acquire) => return,
            Ok(work) => work,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            take(set, holder, &mut reading, work, reports)
        }));
        if outcome.is_err() {
            // Fail this answer, as a failed fetch, and go on with the next.
            reading = None;
            log(
                LogLevel::Error,
                "keygate: reading the key set's answer panicked; the set in force stays",
            );
            reports
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Fetched::Failed {
                    reason: "reading the answer panicked".into(),
                    retry_in_ms: PANIC_RETRY_MS,
                });
            reports.scheduler.commit(ticker::EVENT);
        }
    }
}

/// How long after a panic the next fetch is made.
const PANIC_RETRY_MS: u64 = 30_000;

/// Deals with one piece of work: reads a part of a set, or completes an answer (writing a
/// set read whole) and reports what it came to.
fn take(
    set: &SharedSet,
    holder: u64,
    reading: &mut Option<Reading>,
    work: Work,
    reports: &Reports<'_>,
) {
    let (asked_ms, answer) = match work {
        Work::Begin { asked_ms, etag } => {
            *reading = Some(Reading {
                asked_ms,
                etag,
                scan: Box::new(Scan::streaming()),
                refused: None,
            });
            return;
        }
        Work::Part(part) => {
            reports.waiting.fetch_sub(part.len(), Ordering::AcqRel);
            if let Some(reading) = reading {
                if reading.read(&part) {
                    reports.refused.store(true, Ordering::Release);
                    reports.scheduler.commit(ticker::EVENT);
                }
            }
            return;
        }
        Work::End => match reading.take() {
            Some(reading) => reading.answer(),
            None => return,
        },
        Work::Cut(why) => match reading.take() {
            // Cut because it was refused: the refusal says why.
            Some(reading) => (
                reading.asked_ms,
                FetchAnswer::Failed(reading.refused.unwrap_or(why)),
            ),
            None => return,
        },
        Work::Answer { asked_ms, answer } => (asked_ms, answer),
        Work::Stop => return,
    };
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
    reports
        .done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(fetched);
    reports.scheduler.commit(ticker::EVENT);
}

/// A set being read as it arrives: only the record in progress and what was read of the
/// others (a few bytes each) are held, never the document.
struct Reading {
    asked_ms: u64,
    etag: Option<String>,
    scan: Box<Scan>,
    /// The answer was refused partway: the rest of it is not read.
    refused: Option<String>,
}

impl Reading {
    /// Reads the next part; true when this part has the set refused.
    fn read(&mut self, part: &[u8]) -> bool {
        if self.refused.is_some() {
            return false;
        }
        if let Err(why) = self.scan.feed(part) {
            self.refused = Some(why);
            return true;
        }
        loop {
            let mut budget = usize::MAX;
            match self.scan.step(&mut budget) {
                Ok(Step::More) => {}
                // The end is only reached once the answer is (`Reading::answer`).
                Ok(Step::Hungry | Step::Done(_)) => return false,
                Err(why) => {
                    self.refused = Some(why);
                    return true;
                }
            }
        }
    }

    /// The whole answer has come.
    fn answer(mut self) -> (u64, FetchAnswer) {
        let answer = match self.refused {
            Some(why) => FetchAnswer::Failed(why),
            None => {
                self.scan.end();
                FetchAnswer::Streamed {
                    etag: self.etag,
                    scan: self.scan,
                }
            }
        };
        (self.asked_ms, answer)
    }
}

/// No key set has loaded yet.
pub struct NotLoaded;
