//! An Envoy dynamic module whose HTTP filter lets every request through untouched: what
//! the dynamic-module interface itself costs Envoy per request (a filter made and
//! destroyed, its hooks called) before any work. Envoy 1.40's ABI (`v0.2.0`), the hooks
//! and signatures of keygate's native build (crates/native/src/abi/mod.rs), all no-ops.
//!
//! With the filter configuration `floor`, it makes instead the host calls that forwarding
//! keygate's identity takes whatever decides it (README "What the upstream sees"), and
//! nothing else: every request header read (keygate looks through them for spoofed identity
//! headers; the floor only reads them), the credential removed, the four identity headers added, one counter
//! counted. The difference between this floor and keygate's native build is keygate's own
//! work: finding and hashing the key, the lookup, the rules (BENCHMARKS.md).

// The hooks' pointers are Envoy's, handed to the hooks it calls: the ABI's contract.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

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
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

impl Buffer {
    fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

const REQUEST_HEADER: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        result_headers: *mut HttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// A `floor` config: its counter.
struct Floor {
    counter: usize,
}

/// The identity a request gains, as keygate forwards it.
const IDENTITY: [(&str, &str); 4] = [
    ("x-api-key-id", "bench-123"),
    ("x-api-key-owner", "bench"),
    ("x-api-key-scopes", "read"),
    ("x-api-key-kind", "api_key"),
];

/// The host calls of the floor, on one request.
///
/// # Safety
/// `envoy` is the filter of the running request-headers hook.
unsafe fn floor(envoy: *mut c_void, config: &Floor) {
    let mut headers = [HttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    }; 64];
    unsafe {
        let n = envoy_dynamic_module_callback_http_get_headers_size(envoy, REQUEST_HEADER);
        if n <= headers.len() {
            envoy_dynamic_module_callback_http_get_headers(
                envoy,
                REQUEST_HEADER,
                headers.as_mut_ptr(),
            );
        }
        let null = Buffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        envoy_dynamic_module_callback_http_set_header(
            envoy,
            REQUEST_HEADER,
            Buffer::of(b"authorization"),
            null,
        );
        for (name, value) in IDENTITY {
            envoy_dynamic_module_callback_http_add_header(
                envoy,
                REQUEST_HEADER,
                Buffer::of(name.as_bytes()),
                Buffer::of(value.as_bytes()),
            );
        }
        envoy_dynamic_module_callback_http_filter_increment_counter(
            envoy,
            config.counter,
            std::ptr::null(),
            0,
            1,
        );
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy's configuration bytes, valid during this call (null when empty).
    let config = if config.ptr.is_null() || config.length == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(config.ptr, config.length) }
    };
    if config != b"floor" {
        return something();
    }
    let mut counter = 0;
    // SAFETY: the config being made; the name is valid for the call.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            filter_config_envoy_ptr,
            Buffer::of(b"allowed"),
            std::ptr::null(),
            0,
            &mut counter,
        )
    };
    // Lives as long as Envoy: a bench module, made once per run.
    Box::into_raw(Box::new(Floor { counter })).cast_const().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: *const c_void) {}

/// The filter is its config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    config
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if filter != something() {
        // SAFETY: any filter but the empty one's is a `Floor` from `config_new`, which
        // lives on; `filter_envoy_ptr` is this hook's request.
        unsafe { floor(filter_envoy_ptr, &*filter.cast::<Floor>()) };
    }
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
