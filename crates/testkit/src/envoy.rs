//! A real Envoy from `.venv` (or `KEYGATE_ENVOY`), started from a generated bootstrap on
//! free ports, with its admin endpoint, stats and listener at hand. Killed when dropped.

use crate::bootstrap::{bootstrap, NATIVE_MODULE};
use crate::build::Build;
use crate::http1::{request, try_request, Request, Response};
use crate::{envoy_binary, native_module_dir, TempDir, Upstream};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HTTP filter that loads a dynamic module.
const DYNAMIC_MODULE_FILTER: &str = "envoy.filters.http.dynamic_modules";

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
    let (config, text) = match bootstrap {
        Bootstrap::Json(value) => {
            let config = dir.path().join("envoy.json");
            let text = serde_json::to_vec_pretty(value).unwrap();
            std::fs::write(&config, &text).unwrap();
            (config, text)
        }
        Bootstrap::Yaml(text) => {
            let config = dir.path().join("envoy.yaml");
            std::fs::write(&config, text).unwrap();
            (config, text.as_bytes().to_vec())
        }
    };
    // A bootstrap that loads keygate's native module (or another dynamic module put beside
    // it, as `make bench`'s empty one), or the native pass (whose listeners may come from a
    // file Envoy watches): Envoy finds the module in this folder.
    let mut command = Command::new(envoy_binary());
    let text = String::from_utf8_lossy(&text);
    if Build::current() == Build::Native
        || text.contains(NATIVE_MODULE)
        || text.contains(DYNAMIC_MODULE_FILTER)
    {
        command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir());
    }
    let admin_file = dir.path().join("admin-address");
    let log = dir.path().join("envoy.log");
    let child = command
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
        parse_stats(&self.admin_get(&format!("/stats?filter={filter}")))
    }

    /// As [`Envoy::stats`], but `None` when the admin does not answer 200 (a tool polling
    /// an Envoy that may be busy or gone).
    pub fn try_stats(&self, filter: &str) -> Option<BTreeMap<String, u64>> {
        let response = try_request(
            self.admin,
            &Request::get(&format!("/stats?filter={filter}")),
        )
        .ok()?;
        (response.status == 200).then(|| parse_stats(&response.text()))
    }

    /// One keygate stat by its name under `keygate.` (`fetch.ok`); 0 until it is defined.
    pub fn keygate_stat(&self, name: &str) -> u64 {
        keygate_stat_in(&self.keygate_stats(), name)
    }

    /// The wasm build: keygate's VM was never restarted (`wasm.keygate.vm_reload` is 0),
    /// so what a test saw came from the VM that loaded the configuration. The native
    /// build runs in Envoy's process, with no VM to restart: nothing to check.
    pub fn assert_no_vm_reload(&self) {
        if Build::current() == Build::Wasm {
            let stats = self.keygate_stats();
            assert_eq!(stats.get("wasm.keygate.vm_reload"), Some(&0), "{stats:?}");
        }
    }

    /// Sends a request to the listener.
    pub fn send(&self, request: &Request) -> Response {
        self::request(self.listener, request)
    }
}

fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// One keygate stat (`fetch.ok`) of stats read earlier, under the name of the build the
/// tests run, or else the other build's (a tool running both builds side by side, as
/// `make bench-memory` does); 0 when absent.
pub fn keygate_stat_in(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    let other = match Build::current() {
        Build::Wasm => Build::Native,
        Build::Native => Build::Wasm,
    };
    [Build::current(), other]
        .iter()
        .find_map(|build| stats.get(&format!("{}keygate.{name}", build.stat_prefix())))
        .copied()
        .unwrap_or(0)
}

/// The full name Envoy shows keygate's stat `name` (`allowed`, `fetch.ok`) under, for the
/// build the tests run: `wasmcustom.keygate.allowed`, `dynamicmodulescustom.keygate.allowed`.
pub fn keygate_stat_name(name: &str) -> String {
    format!("{}keygate.{name}", Build::current().stat_prefix())
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
