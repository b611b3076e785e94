//! keygate's core: API-key authentication and scope enforcement, decided without a host.
//!
//! Nothing here calls Envoy, the network or the file system. Configuration parsing
//! ([`config`]), credential extraction ([`credential`]), path normalization ([`path`]), rule
//! matching ([`rules`]), key records ([`record`]), the decision ([`decision`]) and the
//! response it implies ([`response`]), and the protocols a host follows: the `key_set`
//! mode's shared set ([`key_set`]) and the `lookup` mode's calls ([`lookup`]) and cache
//! ([`lookup_cache`]), kept fresh by the key service's change feed ([`watch`]). The
//! hosts (the proxy-wasm filter in `crates/filter`, the `keygate` CLI in `crates/cli`) read
//! input, call this crate and act on its answer.
#![forbid(unsafe_code)]

pub mod config;
pub mod credential;
pub mod decision;
pub mod error;
pub mod header;
pub mod header_map;
pub mod json;
pub mod json_text;
pub mod jwt;
pub mod key_format;
pub mod key_set;
pub mod key_set_bucket;
pub mod key_set_delta;
pub mod key_set_scan;
pub mod lookup;
pub mod lookup_cache;
pub mod meta_codec;
pub mod path;
pub mod query;
pub mod record;
pub mod record_codec;
pub mod remote;
pub mod response;
pub mod rules;
pub mod scope;
pub mod stats;
pub mod timestamp;
pub mod trailers;
pub mod usage;
pub mod watch;
