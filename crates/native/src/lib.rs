//! keygate as an Envoy dynamic module: the same core as the proxy-wasm filter
//! (`crates/filter`), loaded by Envoy 1.40's `envoy.filters.http.dynamic_modules` as
//! `libkeygate_native.so`: every key source (inline, `key_set`, `lookup`) and `usage`; a
//! configuration with `jwt` is refused at load (README "Native build (Envoy dynamic
//! module)").
//!
//! `abi` holds every `unsafe` line (the ABI's hooks and callbacks); `filter` decides and
//! carries out, through the [`filter::Host`] trait, as the wasm shell does; `key_set`,
//! `lookup` (with `lookup_watch`) and `usage` run the core's protocols with Envoy's
//! callouts; `ticker` gives each config the main-thread turn the ABI has no timer for.

#![deny(clippy::undocumented_unsafe_blocks)]

mod abi;
mod clock;
mod filter;
mod key_set;
mod lookup;
mod lookup_watch;
mod metrics;
mod ticker;
mod usage;
