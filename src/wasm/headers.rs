//! The request's headers through the proxy-wasm ABI directly. The SDK's calls copy every
//! header into its own `String` and `Vec` and panic on a status they do not expect; these
//! hand the decision one buffer to borrow from, and report a refused edit instead.

use crate::decision::HeaderEditor;
use crate::header_map::{self, MapError};
use proxy_wasm::types::MapType;

// The host returns a proxy-wasm status as a plain integer: read as one, an unexpected
// value cannot become an invalid enum.
const STATUS_OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        name: *const u8,
        name_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: MapType, name: *const u8, name_size: usize) -> u32;
}

/// The request's headers as Envoy serialized them, in one buffer the VM owns.
pub struct RequestHeaders {
    buf: Vec<u8>,
}

impl RequestHeaders {
    /// One host call. `None` when Envoy has no request headers to give (not in a request).
    pub fn read() -> Option<Self> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer it allocated with this VM's exported allocator
        // (`proxy_on_memory_allocate`, i.e. the global allocator) and its size; the buffer
        // is then ours, and a `Vec` of that length and capacity frees it.
        unsafe {
            if proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
                != STATUS_OK
            {
                return None;
            }
            if data.is_null() {
                return Some(RequestHeaders { buf: Vec::new() });
            }
            Some(RequestHeaders {
                buf: Vec::from_raw_parts(data, size, size),
            })
        }
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
        // SAFETY: both pointers and sizes describe live `str`s for the length of the call.
        let status = unsafe {
            proxy_replace_header_map_value(
                MapType::HttpRequestHeaders,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        self.failed |= status != STATUS_OK;
    }

    fn remove(&mut self, name: &str) {
        // SAFETY: as above.
        let status = unsafe {
            proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len())
        };
        self.failed |= status != STATUS_OK;
    }
}
