//! The proxy-wasm host calls keygate makes once configured, through the ABI directly. The
//! SDK's wrappers panic on a status they do not expect (and read the status into an enum,
//! which an unknown value would make invalid); a panic aborts the VM and fails every
//! request of the worker. Here a status is a plain integer and every call returns a
//! `Result`, for the caller to fail closed.
//!
//! Left to the SDK: `dispatch_http_call`, whose token the SDK must register to route the
//! answer back, and the calls made while configuring (a panic there fails the load, which
//! Envoy reports).

// The only unsafe code of keygate: the host's functions, each wrapped with its contract.
#![allow(unsafe_code)]

use keygate_core::header_map::{self, Header};
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A proxy-wasm status other than OK.
pub type Status = u32;
const OK: Status = 0;
const NOT_FOUND: Status = 1;

/// `proxy_continue_stream`'s stream: the request.
const HTTP_REQUEST: u32 = 0;

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
    fn proxy_add_header_map_value(
        map_type: MapType,
        name: *const u8,
        name_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: MapType, name: *const u8, name_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: MetricType,
        name: *const u8,
        name_size: usize,
        id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Runs a call that hands back a buffer the host allocated in this VM, and takes it over.
/// `Ok(None)`: the host had nothing to give.
fn take_buffer(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    check(call(&mut data, &mut size))?;
    if data.is_null() {
        return Ok(None);
    }
    // SAFETY: the host allocated `size` bytes at `data` with this VM's exported allocator
    // (`proxy_on_memory_allocate`, i.e. the global allocator) and gave up the buffer: a
    // `Vec` of that length and capacity owns and frees it.
    Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) }))
}

/// A header map, serialized as the ABI defines (read with [`header_map::parse`]).
pub fn map_pairs(map_type: MapType) -> Result<Vec<u8>, Status> {
    // SAFETY: both out-pointers are live for the call.
    take_buffer(|data, size| unsafe { proxy_get_header_map_pairs(map_type, data, size) })
        .map(Option::unwrap_or_default)
}

/// Replaces every value of `name` (adds it when absent).
pub fn replace_map_value(map_type: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both pointers and sizes describe live slices for the length of the call.
    check(unsafe {
        proxy_replace_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Adds a value of `name`, keeping any the map holds: Envoy appends it without looking
/// for values to replace.
pub fn add_map_value(map_type: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both pointers and sizes describe live slices for the length of the call.
    check(unsafe {
        proxy_add_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_map_value(map_type: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: as above.
    check(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

/// Up to `max_size` bytes of a buffer from `start`; empty when there is none.
pub fn buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Vec<u8>, Status> {
    // SAFETY: both out-pointers are live for the call.
    match take_buffer(|data, size| unsafe {
        proxy_get_buffer_bytes(buffer_type, start, max_size, data, size)
    }) {
        Ok(bytes) => Ok(bytes.unwrap_or_default()),
        Err(NOT_FOUND) => Ok(Vec::new()),
        Err(status) => Err(status),
    }
}

/// A property of the request (e.g. a dynamic-metadata value), its segments joined by NUL
/// bytes as the ABI defines; `Ok(None)` when there is no such property. A string comes as
/// its bytes; a list or map as a pairs map ([`header_map::parse`]).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let joined = path.join("\0");
    // SAFETY: the path describes a live byte string; the out-pointers are live for the call.
    match take_buffer(|data, size| unsafe {
        proxy_get_property(joined.as_ptr(), joined.len(), data, size)
    }) {
        Err(NOT_FOUND) => Ok(None),
        other => other,
    }
}

/// A shared-data value and its CAS token; `(None, None)` when the key is not there.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut cas: u32 = 0;
    // SAFETY: the key describes a live `str`; the out-pointers are live for the call.
    let value = take_buffer(|data, size| unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas)
    });
    match value {
        Ok(value) => Ok((value, (cas != 0).then_some(cas))),
        Err(NOT_FOUND) => Ok((None, None)),
        Err(status) => Err(status),
    }
}

/// Writes a shared-data value; with a CAS token, only if nobody wrote since it was read.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: key and value describe live slices for the call.
    check(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Answers the current request locally; it does not go upstream.
pub fn send_local_response(
    status_code: u32,
    headers: &[impl Header],
    body: &[u8],
) -> Result<(), Status> {
    let headers = header_map::serialize(headers);
    // SAFETY: body and headers are live slices for the call; no details are passed.
    check(unsafe {
        proxy_send_local_response(
            status_code,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Lets the current (paused) request go on.
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Resets the current request: it ends without going upstream.
pub fn close_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_close_stream(HTTP_REQUEST) })
}

/// Makes `context_id` the request the next calls act on; fails when it has ended.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

pub fn current_time() -> Result<SystemTime, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: the out-pointer is live for the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
}

pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: the name describes a live `str`; the out-pointer is live for the call.
    check(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}
