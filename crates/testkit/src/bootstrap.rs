//! Envoy bootstraps as JSON: keygate's filter entry, listeners, clusters, the admin
//! endpoint and an access log.

use crate::wasm_module;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

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

/// [`bootstrap`] with the native module in place of the wasm filter.
pub fn bootstrap_native(plugin_config: &Value, upstream: SocketAddr, port: u16) -> Value {
    json!({
        "admin": admin(),
        "static_resources": {
            "listeners": [http_listener(
                "ingress",
                port,
                vec![native_filter(plugin_config)],
                json!([{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]),
            )],
            "clusters": [upstream_cluster(upstream)]
        }
    })
}

/// The listener on 127.0.0.1:`port`: keygate then the router, every route to `upstream`.
pub fn listener(plugin_config: &Value, port: u16) -> Value {
    http_listener(
        "ingress",
        port,
        vec![wasm_filter(plugin_config)],
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
    json!({
        "admin": admin(),
        "static_resources": {
            "listeners": [listener(plugin_config, port)],
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
