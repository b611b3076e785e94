//! What the integration tests (and the `make run` demo) need around a real Envoy: an echo
//! upstream that records what reached it, an Envoy started from `.venv` with a generated
//! bootstrap on free ports, and a raw HTTP/1.1 client that sends exactly the bytes asked for.
// A harness: a failed step should stop the test (or the tool) loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod artifacts;
pub mod cli;
pub mod h2;
pub mod h2_upstream;
pub mod key_service;
pub mod usage_sink;

pub use artifacts::{envoy_binary, keygate_binary, repo_root, wasm_module};

pub use keygate_core::record::KeyHash;
use serde_json::{json, Value};

/// `hex(sha256(key))`, as a key record's `hash`.
pub fn hash_of(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

/// The raw key of benchmark record `i`.
pub fn bench_key(i: usize) -> String {
    format!("kg_bench_{i}")
}

/// `n` key records with scope `browse` as a JSON array, written directly (a million in
/// a few seconds): record `i` is `bench_key(i)`'s.
pub fn bench_records_json(n: usize, expires_at: Option<&str>) -> String {
    let expiry = expires_at.map_or(String::new(), |at| format!(",\"expires_at\":\"{at}\""));
    let mut out = String::with_capacity(n * (130 + expiry.len()) + 2);
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":\"bench-{i}\",\"hash\":\"{}\",\"owner\":\"owner-{}\",\"scopes\":[\"browse\"]{expiry}}}",
            hash_of(&bench_key(i)),
            i % 1000
        ));
    }
    out.push(']');
    out
}

/// A plugin configuration with every kind of key source (Bearer / ApiKey / Basic,
/// `x-api-key`, `api_key`), the ImmPort-like rules, unmatched routes denied, and `keys`.
pub fn immport_every_source(realm: &str, keys: Value) -> Value {
    json!({
        "realm": realm,
        "sources": [
            {"authorization": {"schemes": ["Bearer", "ApiKey", "Basic"]}},
            {"header": "x-api-key"},
            {"query": "api_key"}
        ],
        "keys": keys,
        "rules": immport_rules(),
        "unmatched": "deny"
    })
}

/// The README's example rules, shaped after ImmPort's scopes (browse, download, upload).
pub fn immport_rules() -> Value {
    json!([
        {"path_prefix": "/healthz", "public": true},
        {"path_prefix": "/data/query", "methods": ["GET", "HEAD"], "scopes": ["browse"]},
        {"path_prefix": "/data/download", "scopes": ["download"]},
        {"path_prefix": "/data/upload", "methods": ["POST", "PUT"], "scopes": ["upload"]},
        {"path": "/admin/keys", "scopes": ["admin"]}
    ])
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keygate-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Upstream

/// One request as the upstream received it. Header names are lowercase; every value of a
/// repeated header is kept, in order.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.values(name);
        assert!(
            values.len() <= 1,
            "{name} seen {} times upstream",
            values.len()
        );
        values.first().copied()
    }

    pub fn as_json(&self) -> Value {
        let headers: BTreeMap<&str, Value> = self
            .headers
            .iter()
            .map(|(n, _)| (n.as_str(), json!(self.values(n))))
            .collect();
        json!({"method": self.method, "path": self.target, "headers": headers})
    }
}

/// An HTTP server on 127.0.0.1 that answers every request with 200 and a JSON echo of what
/// it received, and records it. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0")
    }

    pub fn start_on(addr: &str) -> Upstream {
        let server = tiny_http::Server::http(addr).unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50))
                    else {
                        continue;
                    };
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    let record = Seen {
                        method: request.method().as_str().to_string(),
                        target: request.url().to_string(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect(),
                    };
                    let echo = serde_json::to_string_pretty(&record.as_json()).unwrap();
                    seen.lock().unwrap().push(record);
                    let content_type =
                        tiny_http::Header::from_bytes("content-type", "application/json").unwrap();
                    let _ = request.respond(
                        tiny_http::Response::from_string(echo + "\n").with_header(content_type),
                    );
                }
            })
        };
        Upstream {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything received so far, oldest first, and forgets it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// The one request received since the last `take`.
    pub fn take_one(&self) -> Seen {
        let mut seen = self.take();
        assert_eq!(seen.len(), 1, "upstream saw {seen:?}");
        seen.remove(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The key service, as shipped

/// The real `keygate serve` ([`keygate_binary`]) on a free port of 127.0.0.1,
/// serving `keys`; its log goes to `dir/serve.log`. Killed when dropped.
pub struct KeygateServe {
    child: Child,
    pub addr: SocketAddr,
}

impl KeygateServe {
    pub fn start(keys: &Path, dir: &Path) -> KeygateServe {
        let binary = keygate_binary();
        let log = dir.join("serve.log");
        let mut child = Command::new(&binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--keys"])
            .arg(keys)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let addr = text.lines().find_map(|line| {
                let rest = line.split_once("listening on http://")?.1;
                rest.split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = addr {
                return KeygateServe { child, addr };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("keygate serve exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "keygate serve did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KeygateServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Envoy

/// How to start Envoy.
pub struct EnvoyOptions {
    pub concurrency: u32,
    /// Listener port; 0 picks a free one.
    pub port: u16,
    pub log_level: &'static str,
    /// More command-line arguments for Envoy.
    pub extra_args: Vec<&'static str>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            port: 0,
            log_level: "info",
            extra_args: Vec::new(),
        }
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

/// Polls `check` every 50 ms until it holds or `within` has passed; true if it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago, for configs that must name one in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A running Envoy. Killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

/// An Envoy that refused to start.
pub struct Refused {
    pub exit_code: Option<i32>,
    pub log: String,
}

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A bootstrap as Envoy reads it from a file: JSON, or the YAML of a config under `envoy/`.
pub enum Bootstrap<'a> {
    Json(&'a Value),
    Yaml(&'a str),
}

fn spawn(
    bootstrap: Bootstrap<'_>,
    options: &EnvoyOptions,
    dir: &TempDir,
) -> (Child, PathBuf, PathBuf) {
    let config = match bootstrap {
        Bootstrap::Json(value) => {
            let config = dir.path().join("envoy.json");
            std::fs::write(&config, serde_json::to_vec_pretty(value).unwrap()).unwrap();
            config
        }
        Bootstrap::Yaml(text) => {
            let config = dir.path().join("envoy.yaml");
            std::fs::write(&config, text).unwrap();
            config
        }
    };
    let admin_file = dir.path().join("admin-address");
    let log = dir.path().join("envoy.log");
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&config)
        .arg("--disable-hot-restart")
        .args(["--concurrency", &options.concurrency.to_string()])
        .args(["--log-level", options.log_level])
        .arg("--admin-address-path")
        .arg(&admin_file)
        .arg("--log-path")
        .arg(&log)
        .args(&options.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, admin_file, log)
}

impl Envoy {
    /// Starts Envoy with keygate configured by `plugin_config`, in front of `upstream`.
    pub fn start(plugin_config: &Value, upstream: &Upstream) -> Envoy {
        Envoy::start_with(plugin_config, upstream, EnvoyOptions::default())
    }

    pub fn start_with(plugin_config: &Value, upstream: &Upstream, options: EnvoyOptions) -> Envoy {
        Envoy::start_bootstrap(
            &bootstrap(plugin_config, upstream.addr, options.port),
            options,
        )
    }

    pub fn start_bootstrap(bootstrap: &Value, options: EnvoyOptions) -> Envoy {
        Envoy::start_from(Bootstrap::Json(bootstrap), options)
    }

    pub fn start_from(bootstrap: Bootstrap<'_>, options: EnvoyOptions) -> Envoy {
        match Envoy::try_start_from(bootstrap, options) {
            Ok(envoy) => envoy,
            Err(refused) => panic!(
                "Envoy did not start (exit {:?}):\n{}",
                refused.exit_code, refused.log
            ),
        }
    }

    /// Starts Envoy and waits until it serves, or until it exits.
    pub fn try_start(bootstrap: &Value, options: EnvoyOptions) -> Result<Envoy, Refused> {
        Envoy::try_start_from(Bootstrap::Json(bootstrap), options)
    }

    pub fn try_start_from(
        bootstrap: Bootstrap<'_>,
        options: EnvoyOptions,
    ) -> Result<Envoy, Refused> {
        let dir = TempDir::new("envoy");
        let (mut child, admin_file, log) = spawn(bootstrap, &options, &dir);
        let deadline = Instant::now() + START_TIMEOUT;
        let refused = |child: &mut Child, exit_code| {
            let _ = child.kill();
            let _ = child.wait();
            Err(Refused {
                exit_code,
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            })
        };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return refused(&mut child, status.code());
            }
            if Instant::now() > deadline {
                return refused(&mut child, None);
            }
            if let Some(admin) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                if let Some(listener) = ready_listener(admin) {
                    return Ok(Envoy {
                        child,
                        admin,
                        listener,
                        log,
                        _dir: dir,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts Envoy expecting it to refuse the configuration; returns its exit and log.
    pub fn refuse(plugin_config: &Value, upstream: &Upstream) -> Refused {
        match Envoy::try_start(
            &bootstrap(plugin_config, upstream.addr, 0),
            EnvoyOptions::default(),
        ) {
            Ok(envoy) => panic!(
                "Envoy started with a configuration it should refuse:\n{}",
                envoy.log()
            ),
            Err(refused) => refused,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Envoy's process id (`.venv/bin/envoy` execs the binary, so it is the one spawned).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An admin endpoint's body.
    pub fn admin_get(&self, path: &str) -> String {
        let response = request(self.admin, &Request::get(path));
        assert_eq!(response.status, 200, "admin {path}: {}", response.text());
        response.text()
    }

    /// Waits until keygate's counts so far have reached Envoy: each VM hands them over on
    /// its tick, every 500 ms.
    pub fn await_stats_flush(&self) {
        std::thread::sleep(Duration::from_millis(1100));
    }

    /// The `keygate` stats from `/stats`, by name as Envoy shows them.
    pub fn keygate_stats(&self) -> BTreeMap<String, u64> {
        self.stats("keygate")
    }

    /// The numeric stats whose names match `filter` (a regex, as `/stats?filter=` takes it).
    pub fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        self.admin_get(&format!("/stats?filter={filter}"))
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One keygate stat by its name under `keygate.` (`fetch.ok`); 0 until it is defined.
    pub fn keygate_stat(&self, name: &str) -> u64 {
        self.keygate_stats()
            .get(&format!("wasmcustom.keygate.{name}"))
            .copied()
            .unwrap_or(0)
    }

    /// Sends a request to the listener.
    pub fn send(&self, request: &Request) -> Response {
        self::request(self.listener, request)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listener's address once the server is LIVE (static listeners are then accepting).
fn ready_listener(admin: SocketAddr) -> Option<SocketAddr> {
    let ready = try_request(admin, &Request::get("/ready")).ok()?;
    if ready.status != 200 {
        return None;
    }
    let listeners = try_request(admin, &Request::get("/listeners?format=json")).ok()?;
    let doc: Value = serde_json::from_slice(&listeners.body).ok()?;
    let socket = &doc["listener_statuses"][0]["local_address"]["socket_address"];
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    let ip = socket["address"].as_str()?.parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------------------
// Client

/// A request as written on the wire: the target and header lines are sent byte for byte.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.as_bytes().to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn bearer(self, key: &str) -> Request {
        self.header("Authorization", format!("Bearer {key}"))
    }

    pub fn body(mut self, body: &str) -> Request {
        self.body = body.as_bytes().to_vec();
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: keygate.test\r\nConnection: close\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response as the client got it. Header names are lowercase.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request on a new connection and reads the whole response.
pub fn request(addr: SocketAddr, request: &Request) -> Response {
    try_request(addr, request).unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

pub fn try_request(addr: SocketAddr, request: &Request) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(&request.to_bytes())?;
    // Read until the response is complete, not until the connection closes: after a local
    // reply Envoy closes only after its delayed-close timeout (1 s).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head = request.method == "HEAD";
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if response_complete(&raw, head) {
            break;
        }
    }
    parse_response(&raw, head).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

/// Whether `raw` holds a whole response: headers, then the body its framing announces.
fn response_complete(raw: &[u8], head: bool) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head_text = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if head || head_text.starts_with("http/1.1 304") || head_text.starts_with("http/1.1 204") {
        return true;
    }
    for line in head_text.split("\r\n") {
        if let Some(len) = line.strip_prefix("content-length:") {
            return len
                .trim()
                .parse::<usize>()
                .is_ok_and(|len| body.len() >= len);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return dechunk(body).is_some();
        }
    }
    false
}

fn parse_response(raw: &[u8], head: bool) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head_text = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head_text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
