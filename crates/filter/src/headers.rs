//! The request's headers through the proxy-wasm ABI directly. The SDK's calls copy every
//! header into its own `String` and `Vec` and panic on a status they do not expect; these
//! hand the decision one buffer to borrow from, and report a refused edit instead.

use crate::abi;
use keygate_core::decision::HeaderEditor;
use keygate_core::header_map::{self, MapError};
use proxy_wasm::types::MapType;

/// The request's headers as Envoy serialized them, in one buffer the VM owns.
pub struct RequestHeaders {
    buf: Vec<u8>,
}

impl RequestHeaders {
    /// One host call. `None` when Envoy has no request headers to give (not in a request).
    pub fn read() -> Option<Self> {
        abi::map_pairs(MapType::HttpRequestHeaders)
            .ok()
            .map(|buf| RequestHeaders { buf })
    }

    /// Names and values, borrowed from the buffer.
    pub fn pairs(&self) -> Result<Vec<(&str, &[u8])>, MapError> {
        header_map::parse(&self.buf)
    }
}

/// Carries out header edits on the request being decided (or the effective context of a
/// request that waited), one host call per edit: cheaper than writing the whole map back,
/// which Envoy does by removing every header and adding each again.
#[derive(Default)]
pub struct HostEditor {
    /// Whether Envoy refused any edit: the request must not go on half-edited.
    pub failed: bool,
}

impl HeaderEditor for HostEditor {
    fn set(&mut self, name: &str, value: &str) {
        self.failed |=
            abi::replace_map_value(MapType::HttpRequestHeaders, name, value.as_bytes()).is_err();
    }

    fn remove(&mut self, name: &str) {
        self.failed |= abi::remove_map_value(MapType::HttpRequestHeaders, name).is_err();
    }

    fn add(&mut self, name: &str, value: &str) {
        self.failed |=
            abi::add_map_value(MapType::HttpRequestHeaders, name, value.as_bytes()).is_err();
    }
}

/// Replaces the request's `:path` with `path`, bytes as they are (a path Envoy accepted
/// need not be UTF-8).
pub fn set_path(path: &[u8]) -> Result<(), abi::Status> {
    abi::replace_map_value(MapType::HttpRequestHeaders, ":path", path)
}

/// Removes the request trailers that must not reach the upstream (README "What the
/// upstream sees"); false when Envoy would not let one go, or gave no trailers to read.
pub fn strip_trailers(config: &keygate_core::config::Config) -> bool {
    let Ok(buf) = abi::map_pairs(MapType::HttpRequestTrailers) else {
        return false;
    };
    let Ok(trailers) = header_map::parse(&buf) else {
        return false;
    };
    let names = trailers.iter().map(|(name, _)| *name);
    keygate_core::trailers::to_remove(config, names)
        .into_iter()
        .all(|name| abi::remove_map_value(MapType::HttpRequestTrailers, name).is_ok())
}
