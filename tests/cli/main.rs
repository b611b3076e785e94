//! The `keygate` binary run for real: every command and its errors, and `keygate serve`.
// Test code: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod changes;
mod check;
mod commands;
mod console;
mod keyservice;
mod keyset_delta;
mod next_steps;
mod postgres;
mod serve;
mod store_modes;
mod usage;
