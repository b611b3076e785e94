//! An Envoy dynamic module whose HTTP filter lets every request through untouched: what
//! the dynamic-module interface itself costs Envoy per request (a filter made and
//! destroyed, its hooks called) before any work. Envoy 1.40's ABI (`v0.2.0`), the hooks
//! and signatures of keygate's native build (crates/native/src/abi.rs), all no-ops.

use std::ffi::{c_char, c_void};

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40's abi.h.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// The `Continue` of every `..._status` enum of the HTTP hooks.
const CONTINUE: u32 = 0;

/// What `config_new` and `filter_new` hand Envoy: any pointer but null (null refuses the
/// configuration, or the request). Never dereferenced.
static NOTHING: u8 = 0;

fn something() -> *const c_void {
    std::ptr::addr_of!(NOTHING).cast()
}

/// `envoy_dynamic_module_type_envoy_buffer`: a pointer and a length.
#[repr(C)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _filter_config_envoy_ptr: *mut c_void,
    _name: Buffer,
    _config: Buffer,
) -> *const c_void {
    something()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    something()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _filter_envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers() -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body() -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers() -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark()
{
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark()
{
}
