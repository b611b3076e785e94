//! Envoy bootstraps as JSON: keygate's filter entry, listeners, clusters, the admin
//! endpoint and an access log.

use crate::build::Build;
use crate::wasm_module;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

/// keygate's filter entry with `plugin_config`, for the build the tests run
/// (`KEYGATE_BUILD`, [`Build::current`]). Every bootstrap the tests and tools write takes
/// keygate from here.
pub fn keygate_filter(plugin_config: &Value) -> Value {
    filter_for(Build::current(), plugin_config)
}

/// keygate's filter entry for `build`: [`wasm_filter`] or [`native_filter`].
pub fn filter_for(build: Build, plugin_config: &Value) -> Value {
    match build {
        Build::Wasm => wasm_filter(plugin_config),
        Build::Native => native_filter(plugin_config),
    }
}

/// The `envoy.filters.http.wasm` entry that loads keygate with `plugin_config`.
pub fn wasm_filter(plugin_config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "keygate",
                "root_id": "keygate",
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": "keygate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_module()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config.to_string()
                }
            }
        }
    })
}

/// The `envoy.filters.http.dynamic_modules` entry that loads keygate's native build
/// (`libkeygate_native.so`, found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, which
/// [`crate::Envoy`] sets when a bootstrap names the module) with `plugin_config`.
pub fn native_filter(plugin_config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": NATIVE_MODULE},
            "filter_name": "keygate",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin_config.to_string()
            }
        }
    })
}

/// Puts keygate's native build in place of the wasm filter in every listener of a
/// bootstrap, with the same configuration (the tools run one bootstrap with either build).
pub fn wasm_to_native(bootstrap: &mut Value) {
    let Some(listeners) = bootstrap["static_resources"]["listeners"].as_array_mut() else {
        return;
    };
    for listener in listeners {
        let Some(chains) = listener["filter_chains"].as_array_mut() else {
            continue;
        };
        for chain in chains {
            let Some(filters) = chain["filters"].as_array_mut() else {
                continue;
            };
            for network_filter in filters {
                let Some(http_filters) =
                    network_filter["typed_config"]["http_filters"].as_array_mut()
                else {
                    continue;
                };
                for filter in http_filters {
                    if filter["name"] != "envoy.filters.http.wasm" {
                        continue;
                    }
                    let text = filter["typed_config"]["config"]["configuration"]["value"]
                        .as_str()
                        .unwrap_or("{}");
                    let config: Value = serde_json::from_str(text).unwrap();
                    *filter = native_filter(&config);
                }
            }
        }
    }
}

/// The name the native module is loaded by (`lib` + name + `.so`).
pub const NATIVE_MODULE: &str = "keygate_native";

/// The listener on 127.0.0.1:`port`: keygate then the router, every route to `upstream`.
pub fn listener(plugin_config: &Value, port: u16) -> Value {
    listener_for(Build::current(), plugin_config, port)
}

/// [`listener`] with `build`'s filter.
pub fn listener_for(build: Build, plugin_config: &Value, port: u16) -> Value {
    http_listener(
        "ingress",
        port,
        vec![filter_for(build, plugin_config)],
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]),
    )
}

/// A listener on 127.0.0.1:`port` (0: a free one) whose connection manager runs `filters`
/// then the router, over `routes` for any host.
pub fn http_listener(name: &str, port: u16, mut filters: Vec<Value>, routes: Value) -> Value {
    filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes
                }]},
                "http_filters": filters
            }
        }]}]
    })
}

/// One request per upstream connection. The test servers (tiny_http) hand each
/// connection to a thread of a pool that can leave a new connection queued behind idle
/// keep-alive ones; Envoy closing each connection after its answer frees the thread.
fn one_request_per_connection() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": 1},
        "explicit_http_config": {"http_protocol_options": {}}
    }})
}

/// The `upstream` cluster: one endpoint.
pub fn upstream_cluster(upstream: SocketAddr) -> Value {
    json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": one_request_per_connection(),
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": upstream.ip().to_string(), "port_value": upstream.port()}}}
        }]}]}
    })
}

/// The admin endpoint, on a free port of 127.0.0.1.
pub fn admin() -> Value {
    json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}})
}

/// A static bootstrap: admin, the listener and the upstream cluster.
pub fn bootstrap(plugin_config: &Value, upstream: SocketAddr, port: u16) -> Value {
    bootstrap_for(Build::current(), plugin_config, upstream, port)
}

/// [`bootstrap`] with `build`'s filter, whatever `KEYGATE_BUILD` says (a test comparing
/// both builds in one run).
pub fn bootstrap_for(
    build: Build,
    plugin_config: &Value,
    upstream: SocketAddr,
    port: u16,
) -> Value {
    json!({
        "admin": admin(),
        "static_resources": {
            "listeners": [listener_for(build, plugin_config, port)],
            "clusters": [upstream_cluster(upstream)]
        }
    })
}

/// Makes the listener of `bootstrap` write Envoy's access log to `path`, one line per
/// request in `format` (Envoy's format operators, e.g. `%REQ(:PATH)%`).
pub fn with_access_log(bootstrap: &mut Value, path: &Path, format: &str) {
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": format}}
        }
    }]);
}

/// A cluster named `name` with one endpoint, for keygate's calls to a key service.
pub fn key_service_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": one_request_per_connection(),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()}}}
        }]}]}
    })
}

/// [`bootstrap`] with a `keyservice` cluster at `key_service`.
pub fn bootstrap_with_key_service(
    plugin_config: &Value,
    upstream: SocketAddr,
    key_service: SocketAddr,
) -> Value {
    let mut doc = bootstrap(plugin_config, upstream, 0);
    doc["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(key_service_cluster("keyservice", key_service));
    doc
}

/// A port that was free a moment ago, for configs that must name one in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The module path the shipped configs under `envoy/` name (relative to the repository).
const SHIPPED_WASM: &str = "target/wasm32-wasip1/release/keygate.wasm";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const NATIVE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// A shipped config under `envoy/` (YAML, with keygate's wasm filter block), made to run
/// the build the tests run: for wasm, the module path made absolute; for native, each
/// wasm filter block (a listener's entry or an ECDS resource) rewritten into the dynamic
/// module's, its `configuration` (keygate's JSON) kept as `filter_config`.
pub fn shipped_for_build(yaml: &str) -> String {
    match Build::current() {
        Build::Wasm => yaml.replace(SHIPPED_WASM, &wasm_module().display().to_string()),
        Build::Native => wasm_blocks_to_native(yaml),
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Rewrites every `"@type": ...wasm.v3.Wasm` block: its `config.configuration` (a
/// StringValue) becomes `filter_config`, the VM's settings go.
fn wasm_blocks_to_native(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with("\"@type\":") && trimmed.ends_with(WASM_TYPE) {
            let at = indent_of(line);
            let pad = " ".repeat(at);
            out.push(format!("{pad}\"@type\": {NATIVE_TYPE}"));
            out.push(format!(
                "{pad}dynamic_module_config: {{ name: {NATIVE_MODULE} }}"
            ));
            out.push(format!("{pad}filter_name: keygate"));
            // The block: what follows at `at` or deeper (blank lines included).
            let mut end = i + 1;
            while end < lines.len() && (lines[end].trim().is_empty() || indent_of(lines[end]) >= at)
            {
                end += 1;
            }
            // Its `configuration:` and what is under it, two spaces shallower.
            let block = &lines[i + 1..end];
            let start = block
                .iter()
                .position(|l| l.trim() == "configuration:")
                .unwrap_or_else(|| panic!("a wasm filter block without `configuration:`"));
            let depth = indent_of(block[start]);
            out.push(format!("{pad}filter_config:"));
            for l in &block[start + 1..] {
                if !l.trim().is_empty() && indent_of(l) <= depth {
                    break;
                }
                out.push(l.get(2..).unwrap_or("").to_string());
            }
            i = end;
            continue;
        }
        out.push(
            line.replace(
                "name: envoy.filters.http.wasm",
                "name: envoy.filters.http.dynamic_modules",
            )
            .replace(WASM_TYPE, NATIVE_TYPE),
        );
        i += 1;
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shipped config with a wasm filter block comes out with the dynamic module's,
    /// keygate's JSON intact and nothing of the VM left.
    #[test]
    fn shipped_wasm_blocks_become_native_ones() {
        for name in [
            "keygate.yaml",
            "keygate-key-set.yaml",
            "keygate-lookup.yaml",
            "keygate-ecds.yaml",
            "keygate-ecds-filter.yaml",
        ] {
            let path = crate::repo_root().join("envoy").join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let native = wasm_blocks_to_native(&text);
            for gone in [
                "wasm.v3.Wasm",
                "vm_config",
                "failure_policy",
                "root_id",
                "envoy.filters.http.wasm",
            ] {
                assert!(!native.contains(gone), "{name}: {gone} left in:\n{native}");
            }
            // The JSON the wasm build reads is the JSON the native one reads, two spaces
            // shallower.
            let json = |yaml: &str, after: &str| -> Vec<String> {
                let mut lines = yaml
                    .lines()
                    .skip_while(|l| !l.trim_start().starts_with(after));
                let first = lines.next().unwrap_or_default();
                let depth = indent_of(first);
                lines
                    .take_while(|l| l.trim().is_empty() || indent_of(l) > depth)
                    .map(|l| l.trim().to_string())
                    .collect()
            };
            if text.contains(WASM_TYPE) && !name.ends_with("ecds.yaml") {
                assert!(native.contains(NATIVE_TYPE), "{name}:\n{native}");
                assert!(native.contains("filter_config:"), "{name}:\n{native}");
                assert_eq!(json(&native, "value: |"), json(&text, "value: |"), "{name}");
            }
        }
    }
}
