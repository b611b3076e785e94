//! An HTTP filter that lets every request through untouched: what any proxy-wasm filter
//! costs Envoy before it does any work (VM calls to create, run and delete the contexts).
//!
//! With the plugin configuration `floor` it is the **wasm job floor** instead (issue #24):
//! the host calls any API-key filter must make and nothing else. It reads `authorization`
//! with one call, removes it, and sets one identity header. The difference between this
//! floor and keygate is keygate's own work (BENCHMARKS.md).
//!
//! `floor+CALL:N` makes one host call N more times on top of the floor, to weigh a call
//! (`make bench BENCH_ARGS='--floor NAME=floor+clock:20'`): `clock` reads the time, `add`
//! adds a header, `replace` replaces one, `pairs` reads the whole header map, `value`
//! reads one header, `setpairs` writes the whole map back (as read, less the credential,
//! with four identity headers), `identity` adds keygate's other three identity headers.
//!
//! `calls` makes keygate's host calls on an allowed request, as keygate makes them, and
//! nothing else: the whole header map read (one call, the buffer kept as it comes), the
//! clock read (the key's expiry), the credential removed, four identity headers added.
//! keygate less this is keygate's own work in the VM.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Copy, Default)]
enum Call {
    #[default]
    Clock,
    Add,
    Replace,
    Pairs,
    Value,
    SetPairs,
    Identity,
}

#[derive(Clone, Copy, Default)]
struct Root {
    floor: bool,
    calls: bool,
    extra: Call,
    times: usize,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let (floor, extra) = config.split_once('+').unwrap_or((&config, ""));
        self.floor = floor == "floor";
        self.calls = floor == "calls";
        let (call, times) = extra.split_once(':').unwrap_or(("", "0"));
        self.extra = match call {
            "add" => Call::Add,
            "replace" => Call::Replace,
            "pairs" => Call::Pairs,
            "value" => Call::Value,
            "setpairs" => Call::SetPairs,
            "identity" => Call::Identity,
            _ => Call::Clock,
        };
        self.times = times.parse().unwrap_or(0);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.calls {
            Some(Box::new(Calls))
        } else if self.floor {
            Some(Box::new(Floor(*self)))
        } else {
            Some(Box::new(Pass))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {}

struct Floor(Root);

struct Calls;

impl Context for Calls {}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> u32;
}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = MapType::HttpRequestHeaders;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: both out-pointers are live for the call; the buffer the host allocated
        // with this VM's allocator is taken over whole.
        let map = unsafe {
            proxy_get_header_map_pairs(headers, &mut data, &mut size);
            (!data.is_null()).then(|| Vec::from_raw_parts(data, size, size))
        };
        if map.is_some_and(|map| map.len() > 4) {
            let _ = hostcalls::get_current_time();
            let _ = hostcalls::remove_map_value(headers, "authorization");
            for (name, value) in IDENTITY {
                let _ = hostcalls::add_map_value(headers, name, value);
            }
        }
        Action::Continue
    }
}

impl Context for Floor {}

/// Names for the headers `add` and `replace` write.
const NAMES: [&str; 8] = [
    "x-bench-0",
    "x-bench-1",
    "x-bench-2",
    "x-bench-3",
    "x-bench-4",
    "x-bench-5",
    "x-bench-6",
    "x-bench-7",
];

/// keygate's identity headers (the floor sets the owner's).
const IDENTITY: [(&str, &str); 4] = [
    ("x-api-key-owner", "bench"),
    ("x-api-key-id", "bench-123"),
    ("x-api-key-scopes", "read"),
    ("x-api-key-kind", "api_key"),
];

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The credential, read with one call; a filter would look it up here.
        if self.get_http_request_header("authorization").is_some() {
            self.set_http_request_header("authorization", None);
            self.set_http_request_header("x-api-key-owner", Some("bench"));
        }
        let headers = MapType::HttpRequestHeaders;
        let mut map = Vec::new();
        if let Call::SetPairs = self.0.extra {
            map = hostcalls::get_map(headers).unwrap_or_default();
            for (name, value) in IDENTITY {
                map.push((name.to_string(), value.to_string()));
            }
        }
        for i in 0..self.0.times {
            let name = NAMES[i % NAMES.len()];
            let _ = match self.0.extra {
                Call::Clock => hostcalls::get_current_time().map(drop),
                Call::Add => hostcalls::add_map_value(headers, name, "v"),
                Call::Replace => hostcalls::set_map_value(headers, name, Some("v")),
                Call::Pairs => hostcalls::get_map_bytes(headers).map(drop),
                Call::Value => hostcalls::get_map_value(headers, ":path").map(drop),
                Call::SetPairs => {
                    let pairs: Vec<(&str, &str)> =
                        map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    hostcalls::set_map(headers, pairs)
                }
                Call::Identity => IDENTITY[1..]
                    .iter()
                    .try_for_each(|(name, value)| hostcalls::add_map_value(headers, name, value)),
            };
        }
        Action::Continue
    }
}
