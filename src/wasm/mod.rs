//! The proxy-wasm shell. It reads the request headers once, asks [`decide`], and carries
//! out the verdict: header edits and `Continue`, or a local response and `Pause`. No
//! decision is made here.

use crate::config::Config;
use crate::decision::{decide, redacted_target, HeaderEditor, Verdict};
use crate::response;
use crate::stats::{Outcome, KEYS_LOADED};
use crate::timestamp::Timestamp;
use log::{debug, error, info};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Metric ids, defined once per VM. Envoy hands out the same stat for the same name, so
/// counts from every worker add up.
struct Metrics {
    outcomes: [Option<u32>; Outcome::ALL.len()],
    keys_loaded: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        Metrics {
            outcomes: Outcome::ALL
                .map(|o| hostcalls::define_metric(MetricType::Counter, o.metric_name()).ok()),
            keys_loaded: hostcalls::define_metric(MetricType::Gauge, KEYS_LOADED).ok(),
        }
    }

    fn count(&self, outcome: Outcome) {
        if let Some(id) = self.outcomes[outcome.index()] {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn keys_loaded(&self, n: usize) {
        if let Some(id) = self.keys_loaded {
            let _ = hostcalls::record_metric(id, n as u64);
        }
    }
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Follow Envoy's log level so that debug lines cost nothing when they are off.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&json) {
            Ok(config) => {
                let metrics = self
                    .metrics
                    .get_or_insert_with(|| Rc::new(Metrics::define()));
                metrics.keys_loaded(config.keys_loaded());
                info!(
                    "keygate: configuration accepted: {} keys, {} rules",
                    config.keys_loaded(),
                    config.rules.rules.len()
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(problems) => {
                for problem in &problems {
                    error!("keygate: invalid configuration: {problem}");
                }
                error!(
                    "keygate: configuration refused ({} problem(s)); the filter will not run",
                    problems.len()
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            // Envoy does not create request contexts for a refused configuration; should
            // one appear anyway, nothing passes unchecked.
            let denial = crate::decision::Denial::Unavailable {
                retry_after_seconds: 5,
            };
            self.respond(&response::render(crate::config::DEFAULT_REALM, &denial));
            return Action::Pause;
        };
        let headers = self.get_http_request_headers_bytes();
        let verdict = decide(&config, &headers, || {
            Timestamp::from_system_time(self.get_current_time())
        });
        if let Some(metrics) = &self.metrics {
            metrics.count(verdict.outcome());
        }
        match verdict {
            Verdict::Allow(allowed) => {
                allowed.apply(&config, &mut Editor(self));
                Action::Continue
            }
            Verdict::Deny(denial) => {
                debug!(
                    "keygate: denied ({:?}) key id {}",
                    denial.outcome(),
                    denial.key().map_or("-", |k| k.id.as_str())
                );
                if let Some(target) = redacted_target(&config, &headers) {
                    self.set_http_request_header(":path", Some(&target));
                }
                self.respond(&response::render(&config.realm, &denial));
                Action::Pause
            }
        }
    }
}

impl Request {
    fn respond(&self, answer: &response::LocalResponse) {
        let headers: Vec<(&str, &str)> = answer
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        self.send_http_response(answer.status, headers, Some(answer.body.as_bytes()));
    }
}

struct Editor<'a>(&'a Request);

impl HeaderEditor for Editor<'_> {
    fn set(&mut self, name: &str, value: &str) {
        self.0.set_http_request_header(name, Some(value));
    }

    fn remove(&mut self, name: &str) {
        self.0.set_http_request_header(name, None);
    }
}
