//! keygate: API-key authentication and scope enforcement for Envoy.
//!
//! The crate is a functional core with a thin shell. Every module but `wasm` is plain Rust
//! with no proxy-wasm calls: configuration parsing ([`config`]), credential extraction
//! ([`credential`]), path normalization ([`path`]), rule matching ([`rules`]), key lookup
//! ([`keyset`]), the decision ([`decision`]) and the response it implies ([`response`]).
//! The `wasm` module (built only for `wasm32`) reads the request headers, asks
//! [`decision::decide`] and carries out the verdict.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod credential;
pub mod decision;
pub mod error;
pub mod header;
pub mod header_map;
pub mod keyset;
pub mod lookup_cache;
pub mod path;
pub mod query;
pub mod record_codec;
pub mod remote;
pub mod response;
pub mod rules;
pub mod scope;
pub mod shared_set;
pub mod stats;
pub mod timestamp;

#[cfg(target_arch = "wasm32")]
mod wasm;
