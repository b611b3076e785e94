//! Envoy's dynamic-module ABI (Envoy 1.40, ABI `v0.2.0`), written from the C header
//! `source/extensions/dynamic_modules/abi/abi.h`: the event hooks keygate exports and the
//! callbacks it calls. All of the crate's `unsafe` is here. Every hook runs its work under
//! `catch_unwind`: no panic crosses into Envoy; a request whose handling panicked is
//! answered 503, a configuration whose parsing panicked is refused.

#![allow(unsafe_code)]

mod large_alloc;

#[global_allocator]
static ALLOCATOR: large_alloc::LargeAlloc = large_alloc::LargeAlloc;

use crate::filter::{self, Filter, Host};
use keygate_core::response::LocalResponse;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The ABI version this module is built against (`ENVOY_DYNAMIC_MODULES_ABI_VERSION` of
/// Envoy 1.40's abi.h). Envoy compares it with its own at load and logs the outcome.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

// Envoy's workers run requests of one filter config at once: the filter they share is
// only read, and must be shareable.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Filter>();
};

/// `envoy_dynamic_module_type_envoy_buffer` and `..._module_buffer`: a pointer and a length.
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

    /// The null buffer: `set_header` with a null value removes the header.
    const NULL: Buffer = Buffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_envoy_http_header` and `..._module_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
const REQUEST_HEADER: u32 = 0;
const REQUEST_TRAILER: u32 = 1;

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// The `Continue` and `StopIteration` of every `..._status` enum of the HTTP hooks.
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
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
    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers_vector: *const HttpHeader,
        headers_vector_size: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        filter_config_envoy_ptr: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        filter_config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        filter_config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: Buffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        filter_config_envoy_ptr: *mut c_void,
        stream_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: Buffer,
        end_stream: bool,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_reset_http_stream(
        filter_config_envoy_ptr: *mut c_void,
        stream_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: Buffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// Writes `message` to Envoy's log (the `dynamic_modules` logger).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: Envoy's logging callback reads `message` (valid for the call) and keeps
    // nothing; it may be called from any thread.
    unsafe { envoy_dynamic_module_callback_log(level as u32, Buffer::of(message.as_bytes())) }
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success` and
/// `envoy_dynamic_module_type_http_callout_result_Success`.
const CALLOUT_SUCCESS: u32 = 0;

/// A filter config in Envoy, as a hook on Envoy's main thread hands it over: defines and
/// moves the config's stats and calls clusters. Only used during that hook.
#[derive(Clone, Copy)]
pub struct ConfigHost {
    envoy: *mut c_void,
}

/// What a stat is.
#[derive(Clone, Copy)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl ConfigHost {
    /// Defines a stat of this config (only while the config is being made); `None` when
    /// Envoy would not.
    pub fn define(&self, kind: MetricKind, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `self.envoy` is the config of the running hook (stats are defined in
        // `config_new`); the name is valid for the call and `id` is written once.
        let result = unsafe {
            match kind {
                MetricKind::Counter => {
                    envoy_dynamic_module_callback_http_filter_config_define_counter(
                        self.envoy,
                        Buffer::of(name.as_bytes()),
                        std::ptr::null(),
                        0,
                        &mut id,
                    )
                }
                MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.envoy,
                    Buffer::of(name.as_bytes()),
                    std::ptr::null(),
                    0,
                    &mut id,
                ),
            }
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Adds `n` to counter `id`.
    pub fn add(&self, id: usize, n: u64) {
        // SAFETY: `self.envoy` is the config of the running hook, `id` one of its counters.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.envoy,
                id,
                std::ptr::null(),
                0,
                n,
            )
        };
    }

    /// Sets gauge `id`.
    pub fn set(&self, id: usize, value: u64) {
        // SAFETY: `self.envoy` is the config of the running hook, `id` one of its gauges.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.envoy,
                id,
                std::ptr::null(),
                0,
                value,
            )
        };
    }

    /// Sends a request to `cluster`; its answer comes to
    /// `envoy_dynamic_module_on_http_filter_config_http_callout_done` with the id returned.
    pub fn call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, String> {
        start_call(cluster, headers, |name, raw, id| {
            // SAFETY: `self.envoy` is the config of the running hook (on the main thread);
            // the cluster name, headers and body are valid for the call and Envoy copies
            // them; `id` is written once.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.envoy,
                    id,
                    name,
                    raw.as_ptr(),
                    raw.len(),
                    Buffer::of(body),
                    timeout_ms,
                )
            }
        })
    }

    /// Sends a GET-like request (no body) to `cluster` whose answer comes as it arrives:
    /// its headers, each part of its body, then its end or a reset, to the
    /// `envoy_dynamic_module_on_http_filter_config_http_stream_*` hooks with the id
    /// returned. Envoy holds none of the body: a large answer never sits whole in memory.
    pub fn stream(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, String> {
        start_call(cluster, headers, |name, raw, id| {
            // SAFETY: `self.envoy` is the config of the running hook (on the main thread);
            // the cluster name and headers are valid for the call and Envoy copies them;
            // `id` is written once.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                    self.envoy,
                    id,
                    name,
                    raw.as_ptr(),
                    raw.len(),
                    Buffer::of(&[]),
                    true,
                    timeout_ms,
                )
            }
        })
    }

    /// Ends stream `id` (see [`ConfigHost::stream`]) if it is still open; its reset hook
    /// follows at once.
    pub fn reset_stream(&self, id: u64) {
        // SAFETY: `self.envoy` is the config of the running hook (on the main thread); Envoy
        // ignores an id it does not hold.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_reset_http_stream(self.envoy, id)
        }
    }

    /// A scheduler for this config: events committed on it, from any thread, come back to
    /// `envoy_dynamic_module_on_http_filter_config_scheduled` on the main thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: `self.envoy` is the config of the running hook.
        let raw =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.envoy) };
        (!raw.is_null()).then_some(Scheduler { raw })
    }
}

fn raw_headers(headers: &[(&str, &str)]) -> Vec<HttpHeader> {
    headers
        .iter()
        .map(|(name, value)| HttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        })
        .collect()
}

/// Starts a call or stream to `cluster` with `headers` through `start` (given the cluster
/// name, the headers as Envoy reads them and where to write the id), and gives its id or
/// why Envoy would not start it.
fn start_call(
    cluster: &str,
    headers: &[(&str, &str)],
    start: impl FnOnce(Buffer, &[HttpHeader], &mut u64) -> u32,
) -> Result<u64, String> {
    let raw = raw_headers(headers);
    let mut id = 0u64;
    let result = start(Buffer::of(cluster.as_bytes()), &raw, &mut id);
    call_started(result, id, cluster)
}

/// A callout's id, or why Envoy would not start it.
fn call_started(result: u32, id: u64, cluster: &str) -> Result<u64, String> {
    match result {
        CALLOUT_SUCCESS => Ok(id),
        1 => Err("Envoy refused the call (a required header is missing)".into()),
        2 => Err(format!(
            "cannot call cluster {cluster:?}: is it defined in Envoy's config?"
        )),
        other => Err(format!(
            "Envoy could not start the call to cluster {cluster:?} (result {other}): does it \
             have a healthy endpoint?"
        )),
    }
}

/// A config's scheduler (see [`ConfigHost::scheduler`]); deleted when dropped.
pub struct Scheduler {
    raw: *mut c_void,
}

// SAFETY: Envoy's config scheduler is made to be committed to from any thread: it posts the
// event to the main thread's dispatcher, through a weak reference to the config (an event
// for a config gone is dropped). Deleting it is done once, by `Drop`.
unsafe impl Send for Scheduler {}
// SAFETY: as for `Send`; `commit` takes `&self` and Envoy's commit is thread-safe.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: `self.raw` came from `scheduler_new` and is deleted only by `Drop`.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.raw, event)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from `scheduler_new`; this is its one delete.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.raw) }
    }
}

/// An answer to a call, as Envoy hands it to a `..._http_callout_done` hook; valid during
/// that hook.
pub struct CallAnswer<'a> {
    /// Envoy received an answer (of any status): not reset, not over its buffer limit.
    pub received: bool,
    headers: &'a [HttpHeader],
    chunks: &'a [Buffer],
}

impl CallAnswer<'_> {
    /// The value of header `name` (`:status` included), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            // SAFETY: Envoy's answer headers, valid during the hook (see `CallAnswer`).
            let (key, value) = unsafe {
                (
                    bytes(h.key_ptr, h.key_length),
                    bytes(h.value_ptr, h.value_length),
                )
            };
            if key.eq_ignore_ascii_case(name.as_bytes()) {
                std::str::from_utf8(value).ok()
            } else {
                None
            }
        })
    }

    /// The answer's status, when Envoy received one.
    pub fn status(&self) -> Option<&str> {
        self.header(":status").filter(|_| self.received)
    }

    /// The body, copied out of Envoy's buffers.
    pub fn body(&self) -> Vec<u8> {
        let size = self.chunks.iter().map(|c| c.length).sum();
        let mut body = Vec::with_capacity(size);
        for chunk in self.chunks {
            // SAFETY: Envoy's answer body chunks, valid during the hook.
            body.extend_from_slice(unsafe { bytes(chunk.ptr, chunk.length) });
        }
        body
    }
}

/// # Safety
/// `ptr` is null with `len` 0, or points to `len` readable `T`s that outlive `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: by this function's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// One request's filter in Envoy: valid during the hook that handed it over, and, for a
/// request paused in lookup mode, until its destroy hook (`crate::lookup` forgets it there).
#[derive(Clone, Copy)]
pub struct Request {
    envoy: *mut c_void,
}

impl Host for Request {
    fn headers(&self) -> Result<Vec<(&str, &[u8])>, &'static str> {
        let raw = self.read(REQUEST_HEADER).ok_or("no request headers")?;
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled `h` with pointers into its header map, valid until
                // this hook returns or a header is changed: the borrow of `self` (every
                // edit takes `&mut self`) keeps both from happening while they are read.
                let (name, value) = unsafe {
                    (
                        bytes(h.key_ptr, h.key_length),
                        bytes(h.value_ptr, h.value_length),
                    )
                };
                let name = std::str::from_utf8(name)
                    .map_err(|_| "unreadable request headers (a name is not text)")?;
                Ok((name, value))
            })
            .collect()
    }

    fn trailer_names(&self) -> Option<Vec<&str>> {
        let raw = self.read(REQUEST_TRAILER)?;
        raw.iter()
            .map(|h| {
                // SAFETY: as in `headers`.
                let name = unsafe { bytes(h.key_ptr, h.key_length) };
                std::str::from_utf8(name).ok()
            })
            .collect()
    }

    fn set(&mut self, name: &str, value: &[u8]) -> bool {
        self.set_value(REQUEST_HEADER, name, Buffer::of(value))
    }

    fn remove(&mut self, name: &str) -> bool {
        self.set_value(REQUEST_HEADER, name, Buffer::NULL)
    }

    fn add(&mut self, name: &str, value: &[u8]) -> bool {
        // SAFETY: `self.envoy` is the filter of the running hook; key and value are valid
        // for the call and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.envoy,
                REQUEST_HEADER,
                Buffer::of(name.as_bytes()),
                Buffer::of(value),
            )
        }
    }

    fn remove_trailer(&mut self, name: &str) -> bool {
        self.set_value(REQUEST_TRAILER, name, Buffer::NULL)
    }

    fn count(&mut self, id: usize) {
        // SAFETY: `self.envoy` is the filter of the running hook, `id` a counter its config
        // defined; no labels are passed.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.envoy,
                id,
                std::ptr::null(),
                0,
                1,
            )
        };
    }

    fn respond(&mut self, answer: &LocalResponse) {
        let headers: Vec<HttpHeader> = answer
            .headers
            .iter()
            .map(|(name, value)| HttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        // SAFETY: `self.envoy` is the filter of the running hook; `headers`, the body and
        // the details are valid for the call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                answer.status,
                headers.as_ptr(),
                headers.len(),
                Buffer::of(answer.body.as_bytes()),
                Buffer::of(b"keygate"),
            )
        }
    }
}

impl Request {
    /// Sends a GET-like request to `cluster` for this request; its answer comes to
    /// `envoy_dynamic_module_on_http_filter_http_callout_done` with the id returned.
    pub fn call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, String> {
        start_call(cluster, headers, |name, raw, id| {
            // SAFETY: `self.envoy` is a live request's filter (see `Request`), used on its
            // worker; the cluster name and headers are valid for the call and Envoy copies
            // them; `id` is written once.
            unsafe {
                envoy_dynamic_module_callback_http_filter_http_callout(
                    self.envoy,
                    id,
                    name,
                    raw.as_ptr(),
                    raw.len(),
                    Buffer::of(&[]),
                    timeout_ms,
                )
            }
        })
    }

    /// Resumes a request that stopped in its headers hook.
    pub fn continue_decoding(&self) {
        // SAFETY: `self.envoy` is a live, paused request's filter, used on its worker.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.envoy) }
    }

    /// The headers (or trailers) Envoy holds, as pointers into its map; `None` when it has
    /// none to give.
    fn read(&self, header_type: u32) -> Option<Vec<HttpHeader>> {
        // SAFETY: `self.envoy` is the filter of the running hook.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.envoy, header_type) };
        let mut raw = vec![
            HttpHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            count
        ];
        if count == 0 {
            return Some(raw);
        }
        // SAFETY: `raw` has room for the `count` entries Envoy just reported, and nothing
        // changes the map between the two calls (one hook, one thread).
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(
                self.envoy,
                header_type,
                raw.as_mut_ptr(),
            )
        };
        ok.then_some(raw)
    }

    fn set_value(&mut self, header_type: u32, name: &str, value: Buffer) -> bool {
        // SAFETY: `self.envoy` is the filter of the running hook; key and value are valid
        // for the call and Envoy copies them (a null value removes the header).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.envoy,
                header_type,
                Buffer::of(name.as_bytes()),
                value,
            )
        }
    }
}

/// # Safety
/// `ptr` is null with `len` 0, or points to `len` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: by this function's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

// ---------------------------------------------------------------------------------------
// Event hooks. Envoy resolves every one of these names when it loads an HTTP filter
// config; keygate acts on the program init, the config, the request headers and request
// trailers. The others continue.
// ---------------------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    if cfg!(panic = "abort") {
        // `cargo build --release` (the workspace's release profile aborts on panic, for
        // keygate.wasm): a panic here would end Envoy instead of one request.
        log(
            LogLevel::Warn,
            "keygate: this module was built with panic=abort; build it with `make native` \
             (cargo build --profile native) so that a panic fails one request, not Envoy",
        );
    }
    ABI_VERSION.as_ptr().cast()
}

/// Parses the filter's JSON once; null (Envoy then refuses the configuration) when it is
/// invalid or asks for what this build cannot do yet.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy passes its filter name and configuration, valid during this call.
    let (name, json) = unsafe {
        (
            bytes(name.ptr, name.length),
            bytes(config.ptr, config.length),
        )
    };
    let host = ConfigHost {
        envoy: filter_config_envoy_ptr,
    };
    match catch_unwind(AssertUnwindSafe(|| filter::new_config(name, json, host))) {
        Ok(Some(filter)) => {
            let module = Box::into_raw(Box::new(Module {
                envoy: filter_config_envoy_ptr,
                every_request: PerRequest {
                    module: std::ptr::null(),
                    stream: 0,
                },
                filter,
            }));
            // SAFETY: `module` is the fresh, unique pointer `Box::into_raw` just gave; the
            // field written is the module's own, before Envoy sees the pointer.
            unsafe { (*module).every_request.module = module };
            module.cast_const().cast()
        }
        Ok(None) => std::ptr::null(),
        Err(_) => {
            log(
                LogLevel::Error,
                "keygate: configuration refused: reading it panicked",
            );
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if config.is_null() {
        return;
    }
    // Its streams are ended first, while the config can still hear of it (the reset hook
    // runs at once and reads the module: it is still only borrowed), so that Envoy never
    // calls in about them once it is gone.
    // SAFETY: `config` came from `Box::into_raw` in `config_new`; nothing frees it before
    // the `Box::from_raw` below.
    if let Some(module) = unsafe { config.cast::<Module>().as_ref() } {
        let host = ConfigHost {
            envoy: module.envoy,
        };
        guarded("ending a configuration's calls", || {
            filter::ending(&module.filter, host)
        });
    }
    // SAFETY: `config` came from `Box::into_raw` in `config_new`, and Envoy destroys it
    // once, after its last filter; no borrow of it is left.
    let module = unsafe { Box::from_raw(config.cast_mut().cast::<Module>()) };
    // Dropping it stops its threads (`ticker`, the key set's loader) and gives up its lease.
    guarded("ending a configuration", move || drop(module));
}

/// What `config_new` hands Envoy: the config, and the one per-request object every
/// request shares when it needs no state of its own (all modes but lookup), so that no
/// request allocates one.
struct Module {
    /// Envoy's config, which outlives this (it is destroyed after its destroy hook).
    envoy: *mut c_void,
    every_request: PerRequest,
    filter: Filter,
}

/// A request's filter: its config's module, and its number in lookup mode. Number 0 is
/// the module's shared one ([`Module::every_request`]); any other was allocated for its
/// request (`lookup::stream_id` never gives 0).
struct PerRequest {
    module: *const Module,
    stream: u32,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    // SAFETY: `config` is what `config_new` returned (Envoy destroys it after its filters).
    match unsafe { config.cast::<Module>().as_ref() } {
        Some(module) if filter::needs_stream(&module.filter) => {
            let per_request = PerRequest {
                module,
                stream: crate::lookup::stream_id(),
            };
            Box::into_raw(Box::new(per_request)).cast_const().cast()
        }
        Some(module) => std::ptr::from_ref(&module.every_request).cast(),
        None => std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if filter.is_null() {
        return;
    }
    // SAFETY: `filter` came from `filter_new`, and Envoy destroys it once.
    let Some((config, stream)) = (unsafe { request_of(filter) }) else {
        return;
    };
    if stream == 0 {
        // The module's shared one: it goes with the module.
        return;
    }
    guarded("ending a request", || filter::request_ended(config, stream));
    // SAFETY: a request with a number of its own got it from `Box::into_raw` in
    // `filter_new`; this is its one destroy, and nothing reads it after.
    drop(unsafe { Box::from_raw(filter.cast_mut().cast::<PerRequest>()) });
}

/// The config of a config pointer from `config_new`.
///
/// # Safety
/// `config` is null or a pointer `config_new` returned whose config is not yet destroyed
/// (Envoy destroys a config after its filters).
unsafe fn config_of<'a>(config: *const c_void) -> Option<&'a Filter> {
    // SAFETY: by this function's contract; a `Filter` is only read, from any worker.
    unsafe {
        config
            .cast::<Module>()
            .as_ref()
            .map(|module| &module.filter)
    }
}

/// The config and stream number of a filter pointer from `filter_new`.
///
/// # Safety
/// `filter` is null or a pointer `filter_new` returned, not yet destroyed.
unsafe fn request_of<'a>(filter: *const c_void) -> Option<(&'a Filter, u32)> {
    // SAFETY: by this function's contract, and the config outlives its filters.
    unsafe {
        let per_request = filter.cast::<PerRequest>().as_ref()?;
        Some((config_of(per_request.module.cast())?, per_request.stream))
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let mut request = Request {
        envoy: filter_envoy_ptr,
    };
    // SAFETY: `filter` is what `filter_new` returned for this request.
    let found = unsafe { request_of(filter) };
    let config = found.map(|(config, _)| config);
    let proceed = catch_unwind(AssertUnwindSafe(|| match found {
        Some((config, stream)) => filter::request_headers(config, stream, &mut request),
        None => {
            filter::unavailable(None, &mut request);
            false
        }
    }));
    match proceed {
        Ok(true) => CONTINUE,
        Ok(false) => STOP_ITERATION,
        Err(_) => refuse(
            config,
            &mut request,
            "keygate: deciding a request panicked; it is refused (503)",
        ),
    }
}

/// Logs `why` and answers the request 503: it cannot be decided safely.
fn refuse(config: Option<&Filter>, request: &mut Request, why: &str) -> u32 {
    log(LogLevel::Error, why);
    let _ = catch_unwind(AssertUnwindSafe(|| filter::unavailable(config, request)));
    STOP_ITERATION
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy_ptr: *mut c_void,
    filter: *const c_void,
) -> u32 {
    let mut request = Request {
        envoy: filter_envoy_ptr,
    };
    // SAFETY: `filter` is what `filter_new` returned for this request.
    let found = unsafe { request_of(filter) };
    let config = found.map(|(config, _)| config);
    let stripped = catch_unwind(AssertUnwindSafe(|| match found {
        Some((config, stream)) => {
            filter::strip_trailers(config, &mut request).then(|| filter::waiting(config, stream))
        }
        None => None,
    }));
    match stripped {
        Ok(Some(false)) => return CONTINUE,
        Ok(Some(true)) => return STOP_ITERATION,
        _ => {}
    }
    refuse(
        config,
        &mut request,
        "keygate: a request trailer could not be removed; the request is refused",
    )
}

/// A body arriving while the request waits for its key must not move it on (a body let
/// through would resume the request): only the key service's answer does.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: `filter` is what `filter_new` returned for this request.
    let Some((config, stream)) = (unsafe { request_of(filter) }) else {
        return STOP_ITERATION;
    };
    match catch_unwind(AssertUnwindSafe(|| filter::waiting(config, stream))) {
        Ok(false) => CONTINUE,
        // StopIterationAndBuffer: held until the answer.
        Ok(true) | Err(_) => STOP_ITERATION,
    }
}

// The hooks keygate does nothing in: each continues. Their further arguments (the ABI
// passes them in registers) are not read.

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

/// The answer to a call a request made (lookup mode), on its worker.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy_ptr: *mut c_void,
    filter: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    body_chunks: *const Buffer,
    body_chunks_size: usize,
) {
    // SAFETY: `filter` is what `filter_new` returned for this request.
    let Some((config, stream)) = (unsafe { request_of(filter) }) else {
        return;
    };
    // SAFETY: Envoy's answer headers and body chunks, valid until this hook returns.
    let answer =
        unsafe { call_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
    guarded("reading a key lookup's answer", || {
        filter::request_called(config, stream, callout_id, &answer)
    });
}

/// Runs `f`, a hook's work that answers no request, catching a panic (logged).
fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        log(LogLevel::Error, &format!("keygate: {what} panicked"));
    }
}

/// A callout's answer as a `..._callout_done` hook receives it.
///
/// # Safety
/// `headers` and `chunks` are null, or point to `headers_size` headers and `chunks_size`
/// buffers that stay valid (with what they point to) while the answer is used.
unsafe fn call_answer<'a>(
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    chunks: *const Buffer,
    chunks_size: usize,
) -> CallAnswer<'a> {
    // SAFETY: by this function's contract.
    unsafe {
        CallAnswer {
            received: result == CALLOUT_SUCCESS,
            headers: slice(headers, headers_size),
            chunks: slice(chunks, chunks_size),
        }
    }
}

/// An event a config's [`Scheduler`] committed: the key set's and usage's turn, on the
/// main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    event_id: u64,
) {
    let host = ConfigHost {
        envoy: filter_config_envoy_ptr,
    };
    // SAFETY: `config` is what `config_new` returned; Envoy calls this hook while the
    // config lives.
    let Some(filter) = (unsafe { config_of(config) }) else {
        return;
    };
    guarded("a scheduled task", || {
        filter::scheduled(filter, host, event_id)
    });
}

/// The answer to a call a config made ([`ConfigHost::call`]), on the main thread.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    body_chunks: *const Buffer,
    body_chunks_size: usize,
) {
    let host = ConfigHost {
        envoy: filter_config_envoy_ptr,
    };
    // SAFETY: as in `config_scheduled`.
    let Some(filter) = (unsafe { config_of(config) }) else {
        return;
    };
    // SAFETY: Envoy's answer headers and body chunks, valid until this hook returns (null
    // when the call failed).
    let answer =
        unsafe { call_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
    guarded("reading a key service's answer", || {
        filter::called(filter, host, callout_id, &answer)
    });
}

/// What a config's stream ([`ConfigHost::stream`]) brought; its headers and body parts
/// are valid during the hook that hands it over.
pub enum StreamEvent<'a> {
    /// The answer's headers (`end`: no body follows).
    Headers { answer: CallAnswer<'a>, end: bool },
    /// A part of the body (`end`: the last).
    Data { answer: CallAnswer<'a>, end: bool },
    /// The answer is complete (after its headers, body and any trailers).
    Complete,
    /// The stream was reset: a timeout, a lost connection, or ended by keygate.
    Reset,
}

/// Hands a stream event to the filter, on the main thread.
///
/// # Safety
/// `config` is what `config_new` returned, and Envoy calls the hook while it lives.
unsafe fn on_stream_event(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    stream_id: u64,
    event: StreamEvent<'_>,
) {
    let host = ConfigHost {
        envoy: filter_config_envoy_ptr,
    };
    // SAFETY: by this function's contract.
    let Some(filter) = (unsafe { config_of(config) }) else {
        return;
    };
    guarded("reading a key service's answer", || {
        filter::streamed(filter, host, stream_id, event)
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    stream_id: u64,
    headers: *const HttpHeader,
    headers_size: usize,
    end_stream: bool,
) {
    // SAFETY: Envoy's answer headers, valid until this hook returns.
    let answer =
        unsafe { call_answer(CALLOUT_SUCCESS, headers, headers_size, std::ptr::null(), 0) };
    let event = StreamEvent::Headers {
        answer,
        end: end_stream,
    };
    // SAFETY: Envoy calls a config's stream hooks while the config lives (it resets its
    // streams, without calling in, once the config is destroyed).
    unsafe { on_stream_event(filter_config_envoy_ptr, config, stream_id, event) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    stream_id: u64,
    data: *const Buffer,
    data_count: usize,
    end_stream: bool,
) {
    // SAFETY: Envoy's body parts, valid until this hook returns.
    let answer = unsafe { call_answer(CALLOUT_SUCCESS, std::ptr::null(), 0, data, data_count) };
    let event = StreamEvent::Data {
        answer,
        end: end_stream,
    };
    // SAFETY: as in `config_http_stream_headers`.
    unsafe { on_stream_event(filter_config_envoy_ptr, config, stream_id, event) }
}

/// Trailers end the answer too; `..._stream_complete` follows, which is what keygate acts on.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    stream_id: u64,
) {
    // SAFETY: as in `config_http_stream_headers`.
    unsafe {
        on_stream_event(
            filter_config_envoy_ptr,
            config,
            stream_id,
            StreamEvent::Complete,
        )
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    filter_config_envoy_ptr: *mut c_void,
    config: *const c_void,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: as in `config_http_stream_headers`.
    unsafe {
        on_stream_event(
            filter_config_envoy_ptr,
            config,
            stream_id,
            StreamEvent::Reset,
        )
    }
}

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
