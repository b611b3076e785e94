//! Through a real Envoy 1.40 (`.venv`, installed by `make tools`) running the filter: what
//! the client gets and what the upstream receives. The test kit builds the filter and the
//! `keygate` binary when `make test` has not (see README, "Development").
// Test code: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod cli;
mod ecds;
mod http2;
mod jwt;
mod key_service;
mod key_service_mtls;
mod key_set;
mod key_set_watch;
mod lookup;
mod lookup_watch;
mod native;
mod operations;
mod postgres;
mod reload;
mod requests;
mod rules;
mod usage;
