//! An HTTP filter that lets every request through untouched: what any proxy-wasm filter
//! costs Envoy before it does any work (VM calls to create, run and delete the contexts).
//!
//! With the plugin configuration `floor` it is the **wasm job floor** instead (issue #24):
//! the host calls any API-key filter must make and nothing else. It reads `authorization`
//! with one call, removes it, and sets one identity header. The difference between this
//! floor and keygate is keygate's own work (BENCHMARKS.md).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { floor: false }) });
}}

struct Root {
    floor: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.floor = self.get_plugin_configuration().as_deref() == Some(b"floor".as_slice());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.floor {
            Some(Box::new(Floor))
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

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The credential, read with one call; a filter would look it up here.
        if self.get_http_request_header("authorization").is_some() {
            self.set_http_request_header("authorization", None);
            self.set_http_request_header("x-api-key-owner", Some("bench"));
        }
        Action::Continue
    }
}
