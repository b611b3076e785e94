//! The core without a host: the README's configuration examples, path-normalization
//! properties, and the fuzz seed corpus replayed on stable Rust.
// Test code: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fuzz_seeds;
mod path_properties;
mod readme;
