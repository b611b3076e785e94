//! `key_set` mode in the shell: every worker's root context ticks every 500 ms (`TICK` in lib.rs), reads
//! which slot of the shared set is in force, and fetches when the lease says it is its
//! turn. Requests read their key's entry from shared data.

use crate::host::{self, Metrics, SharedData};
use keygate_core::config::Config;
use keygate_core::key_set::{FetchAnswer, Fetched, Serving, SharedSet};
use keygate_core::record::{count_keys, KeyHash, KeyRecord};
use keygate_core::remote::KeySetConfig;
use log::{info, warn};
use std::cell::Cell;

/// One VM's view of the shared set.
pub struct KeySetState {
    set: SharedSet,
    fetch: KeySetConfig,
    holder: u64,
    /// The set in force, as last read; `None` until a first set has loaded.
    active: Cell<Option<Serving>>,
    /// While this worker's own fetch is on its way: until when.
    in_flight_until_ms: Cell<u64>,
}

impl KeySetState {
    pub fn new(fetch: &KeySetConfig) -> Self {
        let set = SharedSet::new(fetch);
        let holder = set.new_holder(&mut SharedData);
        let state = KeySetState {
            set,
            fetch: fetch.clone(),
            holder,
            active: Cell::new(None),
            in_flight_until_ms: Cell::new(0),
        };
        state.active.set(state.set.read_meta(&SharedData).serving());
        state
    }

    /// The record of `hash` in the set in force: `Ok(None)` for a key the set does not
    /// hold, `Err(NotLoaded)` before a first set has loaded.
    pub fn record(&self, config: &Config, hash: &KeyHash) -> Result<Option<KeyRecord>, NotLoaded> {
        // Before a first load, look again on every request, so the first set serves at
        // once rather than at the next tick.
        let serving = self.active.get().or_else(|| {
            let active = self.set.read_meta(&SharedData).serving();
            self.active.set(active);
            active
        });
        let serving = serving.ok_or(NotLoaded)?;
        let (record, current) = self
            .set
            .lookup_current(&SharedData, serving, hash, &config.scopes);
        self.active.set(Some(current));
        Ok(record)
    }

    /// Every tick (500 ms), on every worker.
    pub fn tick(&self, metrics: &Metrics) {
        let now = host::now_ms();
        let meta = self.set.read_meta(&SharedData);
        log::debug!(
            "keygate: tick holder {} active {:?}",
            self.holder,
            meta.active
        );
        self.active.set(meta.serving());
        metrics.keys_loaded(meta.keys);
        if let Some(ok) = meta.last_ok_ms {
            metrics.fetch_age(now.saturating_sub(ok) / 1000);
        }
        if now < self.in_flight_until_ms.get() {
            return;
        }
        let Some(etag) = self.set.claim(&mut SharedData, self.holder, now) else {
            return;
        };
        let endpoint = &self.fetch.endpoint;
        let mut headers = vec![("accept", "application/json")];
        if let Some(etag) = etag.as_deref() {
            headers.push(("if-none-match", etag));
        }
        let timeout_ms = u64::from(endpoint.timeout_ms);
        match host::call(
            endpoint,
            "GET",
            &self.fetch.path,
            &headers,
            None,
            timeout_ms,
        ) {
            Ok(_) => self.in_flight_until_ms.set(now + timeout_ms + 1000),
            Err(reason) => self.settle(metrics, FetchAnswer::Failed(reason)),
        }
    }

    /// The answer to this worker's fetch.
    pub fn answered(&self, metrics: &Metrics, body_size: usize) {
        self.in_flight_until_ms.set(0);
        let host::CallResponse { status, etag } = host::call_response();
        let body;
        let answer = match status.as_deref() {
            Some("200") => {
                body = host::call_body(body_size);
                FetchAnswer::Set {
                    etag: etag.as_deref(),
                    body: &body,
                }
            }
            Some("304") => FetchAnswer::NotModified,
            Some(other) => FetchAnswer::Failed(format!("key service answered {other}")),
            // Envoy resets a call whose answer outgrows its buffer limit, and says so only in
            // its own log, now and then: name that cause here, it is the likely one for a
            // large set.
            None => FetchAnswer::Failed(
                "the call was reset: an answer larger than Envoy's \
                 http.async_response_buffer_limit (32 MiB by default), or a lost connection"
                    .into(),
            ),
        };
        self.settle(metrics, answer);
    }

    fn settle(&self, metrics: &Metrics, answer: FetchAnswer<'_>) {
        let now = host::now_ms();
        let jitter = host::jitter(self.holder);
        let generation = host::random().unwrap_or(jitter);
        let cluster = &*self.fetch.endpoint.cluster;
        let fetched = self.set.complete(
            &mut SharedData,
            self.holder,
            now,
            jitter,
            generation,
            answer,
        );
        let serving = self.set.read_meta(&SharedData).serving();
        self.active.set(serving);
        match fetched {
            Fetched::Loaded { keys, version } => {
                metrics.fetch_ok.add();
                metrics.keys_loaded(keys);
                metrics.fetch_age(0);
                info!(
                    "keygate: key set loaded from cluster {cluster}: {}, version {}",
                    count_keys(keys),
                    version.as_deref().unwrap_or("-")
                );
            }
            Fetched::NotModified => {
                metrics.fetch_not_modified.add();
                metrics.fetch_age(0);
            }
            Fetched::Failed {
                reason,
                retry_in_ms,
            } => {
                metrics.fetch_failed.add();
                let kept = if serving.is_some() {
                    "keeping the last good set"
                } else {
                    "no key set loaded yet (protected routes answer 503)"
                };
                warn!(
                    "keygate: key set fetch from cluster {cluster} failed, {kept}, retrying in \
                     {retry_in_ms} ms: {reason}"
                );
            }
        }
    }
}

/// No key set has loaded yet.
pub struct NotLoaded;
