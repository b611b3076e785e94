//! The one way the tests and the tools start the real `keygate serve` ([`keygate_binary`]):
//! a child on a free port of 127.0.0.1 whose stderr is kept (and, on demand, echoed), its
//! address read from the line `keygate serve: listening on http://ADDR` (or `https://`).
//! Killed when dropped.
//!
//! `Served::start(keys)` serves a key file; `Served::start_with(args)` passes any
//! arguments after `serve` (`--db PATH`, `--tls-cert ...`); [`Serve`] sets the rest (a
//! longer start for a large key file, the log echoed, an error instead of a panic).

use crate::cli::Run;
use crate::keygate_binary;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server prints once it accepts connections, before `http://ADDR` or
/// `https://ADDR`.
pub const LISTENING: &str = "keygate serve: listening on ";

/// A bound on the start (a million-key file takes seconds to load), not a wait: a server
/// that exits is seen at once.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start `keygate serve`.
#[derive(Clone, Debug)]
pub struct Serve {
    args: Vec<OsString>,
    timeout: Duration,
    echo: Option<String>,
}

impl Serve {
    /// `keygate serve ARGS`, with `--listen 127.0.0.1:0` added unless ARGS have `--listen`.
    pub fn new<I, S>(args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        if !args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == "--listen" || a.starts_with("--listen=")
        }) {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        Serve {
            args,
            timeout: START_TIMEOUT,
            echo: None,
        }
    }

    /// `keygate serve --keys KEYS --listen 127.0.0.1:0`.
    pub fn keys(keys: &Path) -> Serve {
        Serve::new([OsStr::new("--keys"), keys.as_os_str()])
    }

    /// How long it may take to print its address (120 s unless set).
    pub fn start_timeout(mut self, timeout: Duration) -> Serve {
        self.timeout = timeout;
        self
    }

    /// Copies each line the server writes on stderr to this process's stderr, after
    /// `prefix` (empty: as it is).
    pub fn echo(mut self, prefix: &str) -> Serve {
        self.echo = Some(prefix.to_string());
        self
    }

    fn spawn(&self) -> Result<Spawned, String> {
        let binary = keygate_binary();
        let mut child = Command::new(&binary)
            .arg("serve")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stderr = child.stderr.take().expect("stderr is piped");
            let log = log.clone();
            let echo = self.echo.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(prefix) = &echo {
                        eprintln!("{prefix}{line}");
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        Ok(Spawned { child, log, reader })
    }

    /// Starts the server and waits for its address; the error says why not, with its log.
    pub fn try_start(self) -> Result<Served, String> {
        let Spawned {
            mut child,
            log,
            reader,
        } = self.spawn()?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let text = log.lock().unwrap().clone();
            if let Some((url, addr)) = listening(&text) {
                return Ok(Served {
                    child,
                    addr,
                    url,
                    log,
                    _reader: reader,
                });
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                let log = log.lock().unwrap().clone();
                return Err(match exited {
                    Some(status) => format!("keygate serve exited ({status}):\n{log}"),
                    None => format!(
                        "keygate serve did not start within {:?}:\n{log}",
                        self.timeout
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server; panics if it does not start.
    pub fn start(self) -> Served {
        self.try_start()
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// Runs the server expecting it to refuse to start: its exit code and stderr.
    pub fn refused(self) -> Run {
        let Spawned {
            mut child,
            log,
            reader,
        } = self.spawn().unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + self.timeout;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keygate serve started: {}", log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader ends with the pipe, once it has every line.
        reader.join().unwrap();
        let stderr = log.lock().unwrap().clone();
        Run {
            code,
            stdout: String::new(),
            stderr,
        }
    }
}

/// The child, its stderr so far, and the thread that reads it (it ends with the pipe).
struct Spawned {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

/// The URL and address of the first `keygate serve: listening on SCHEME://ADDR` line.
fn listening(log: &str) -> Option<(String, SocketAddr)> {
    log.lines().find_map(|line| {
        let rest = line.split_once(LISTENING)?.1;
        let url = rest.split_whitespace().next()?;
        let addr = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))?;
        Some((url.to_string(), addr.parse().ok()?))
    })
}

/// A running `keygate serve`. Killed when dropped.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    /// `http://ADDR` or `https://ADDR`, as the server said.
    pub url: String,
    log: Arc<Mutex<String>>,
    _reader: JoinHandle<()>,
}

impl Served {
    /// `keygate serve --keys KEYS --listen 127.0.0.1:0`.
    pub fn start(keys: &Path) -> Served {
        Serve::keys(keys).start()
    }

    /// `keygate serve ARGS` (`--listen 127.0.0.1:0` added unless ARGS have `--listen`).
    pub fn start_with<I, S>(args: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Serve::new(args).start()
    }

    /// Everything the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (boundedly) for a stderr line containing `text`.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(text)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `keygate serve --keys KEYS` expecting it to refuse to start: its exit code and
/// stderr.
pub fn serve_refused(keys: &Path) -> Run {
    Serve::keys(keys).refused()
}

#[cfg(test)]
mod tests {
    use super::listening;

    #[test]
    fn reads_the_address_over_http_or_https() {
        let log = "keygate serve: loading\nkeygate serve: listening on http://127.0.0.1:4321 (k.json: 2 keys)\n";
        let (url, addr) = listening(log).unwrap();
        assert_eq!(url, "http://127.0.0.1:4321");
        assert_eq!(addr.port(), 4321);
        let tls = "2026-11-30T10:00:00Z keygate serve: listening on https://[::1]:8443\n";
        assert_eq!(listening(tls).unwrap().1.port(), 8443);
        assert!(listening("keygate serve: listening on unix:/tmp/s\n").is_none());
    }
}
