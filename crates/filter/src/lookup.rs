//! `lookup` mode's host: the core's coordination ([`Lookups`]) carried out with
//! proxy-wasm's calls. Which requests wait, which call serves them and when to ask again
//! is decided in the core.

use crate::abi;
use crate::headers;
use crate::host::{self, carry_out, Metrics};
use crate::usage::Usage;
use keygate_core::config::Config;
use keygate_core::decision::Verdict;
use keygate_core::lookup::{LookupHost, Lookups};
use keygate_core::record::KeyHash;
use keygate_core::remote::LookupConfig;
use keygate_core::stats::Outcome;
use keygate_core::timestamp::Timestamp;
use log::warn;

/// The host as one callback sees it.
pub struct Host<'a> {
    pub config: &'a Config,
    pub lookup: &'a LookupConfig,
    pub metrics: &'a Metrics,
    pub usage: Option<&'a Usage>,
}

impl LookupHost for Host<'_> {
    fn now_ms(&self) -> u64 {
        host::clock_ms()
    }

    fn request_time(&self) -> Timestamp {
        host::request_time()
    }

    fn dispatch(&mut self, path: &str) -> Result<u32, String> {
        let endpoint = &self.lookup.endpoint;
        self.metrics.lookup_calls.add();
        let accept = [("accept", "application/json")];
        host::call(
            endpoint,
            "GET",
            path,
            &accept,
            None,
            u64::from(endpoint.timeout_ms),
        )
    }

    fn failed(&mut self, reason: &str) {
        self.metrics.lookup_failed.add();
        warn!("keygate: {reason}");
    }

    fn cache_hit(&mut self) {
        self.metrics.lookup_cache_hits.add();
    }

    fn set_path(&mut self, path: &[u8]) {
        // Should Envoy refuse it, the request is decided as usual: a refusal sets the
        // redacted path again.
        let _ = headers::set_path(path);
    }

    fn resume(
        &mut self,
        context_id: u32,
        hash: &KeyHash,
        verdict: Verdict<'_>,
        redacted_path: Option<&[u8]>,
    ) {
        // A request that has ended meanwhile cannot be made effective: nothing to do.
        if abi::set_effective_context(context_id).is_ok() {
            let used = verdict.outcome() == Outcome::Allowed;
            let proceed = carry_out(self.config, self.metrics, verdict, redacted_path, true);
            if let (true, true, Some(usage)) = (used, proceed, self.usage) {
                usage.record(self.metrics, hash);
            }
        }
    }
}

/// The answer to call `token`, read from the host and handed to the core.
pub fn answered(
    lookups: &Lookups,
    config: &Config,
    lookup: &LookupConfig,
    metrics: &Metrics,
    usage: Option<&Usage>,
    token: u32,
    body_size: usize,
) {
    if !lookups.is_call(token) {
        return;
    }
    let status = host::call_response().status;
    let body = if status.as_deref() == Some("200") {
        host::call_body(body_size)
    } else {
        Vec::new()
    };
    // A fresh reading, so that an answer is never kept for less than its lifetime (the
    // VM's clock may be half a second old); one per call, not per request.
    host::refresh_clock();
    let mut host = Host {
        config,
        lookup,
        metrics,
        usage,
    };
    lookups.answered(&mut host, config, token, status.as_deref(), &body);
}
