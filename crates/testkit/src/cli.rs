//! Running the real `keygate` binary in tests: one-shot commands, and `keygate serve` as a
//! child that is killed when dropped.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::keygate_binary;

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keygate-cli-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Exit 0 and nothing on stderr.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        assert_eq!(self.stderr, "", "{self:?}");
        self
    }

    /// Exit 1, nothing on stdout unless asked, every stderr line a `keygate: ` error.
    pub fn failed(self) -> Run {
        assert_eq!(self.code, 1, "{self:?}");
        assert!(!self.stderr.is_empty(), "{self:?}");
        for line in self.stderr.lines() {
            assert!(line.starts_with("keygate: "), "{self:?}");
        }
        self
    }
}

/// Runs `keygate args...` with `stdin` (none: empty).
pub fn keygate_with_stdin(args: &[&str], stdin: &[u8]) -> Run {
    let mut command = Command::new(keygate_binary());
    command.args(args);
    run(command, stdin)
}

/// Runs `keygate args...` in `dir`, with `KEYGATE_KEYS` set to `keygate_keys` (`None`:
/// unset, whatever the environment says), for the key file's defaults.
pub fn keygate_in(dir: &Path, keygate_keys: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(keygate_binary());
    command.args(args).current_dir(dir);
    match keygate_keys {
        Some(keys) => command.env("KEYGATE_KEYS", keys),
        None => command.env_remove("KEYGATE_KEYS"),
    };
    run(command, b"")
}

fn run(mut command: Command, stdin: &[u8]) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before it reads stdin closes the pipe: not an error here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub fn keygate(args: &[&str]) -> Run {
    keygate_with_stdin(args, b"")
}

/// What `keygate new` printed.
#[derive(Debug, Clone)]
pub struct Issued {
    pub id: String,
    pub api_key: String,
    pub expires_at: Option<String>,
}

impl Issued {
    pub fn parse(stdout: &str) -> Issued {
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
        let v: Value = serde_json::from_str(stdout).unwrap();
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = fields.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["api_key", "expires_at", "id"], "{stdout}");
        Issued {
            id: v["id"].as_str().unwrap().to_string(),
            api_key: v["api_key"].as_str().unwrap().to_string(),
            expires_at: v["expires_at"].as_str().map(str::to_string),
        }
    }
}

/// `keygate new --keys FILE args...`, which must succeed.
pub fn new_key(keys: &Path, args: &[&str]) -> Issued {
    let mut all = vec!["new", "--keys", keys.to_str().unwrap()];
    all.extend_from_slice(args);
    Issued::parse(&keygate(&all).ok().stdout)
}

/// The key file as JSON.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The records of a key file.
pub fn records(path: &Path) -> Vec<Value> {
    read_json(path)["keys"].as_array().unwrap().clone()
}

/// The record with this id.
pub fn record(path: &Path, id: &str) -> Option<Value> {
    records(path).into_iter().find(|r| r["id"] == id)
}

/// Replaces a file as `keygate` does (write aside, rename), so a reader never sees half.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("test-tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `keygate serve` on a free port of 127.0.0.1. Killed when dropped.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the child and collects its stderr; each complete line also goes to `lines`.
fn spawn_serve(
    keys: &Path,
) -> (
    Child,
    Arc<Mutex<String>>,
    mpsc::Receiver<String>,
    JoinHandle<()>,
) {
    let mut child = Command::new(keygate_binary())
        .args([
            "serve",
            "--keys",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (send, lines) = mpsc::channel();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                log.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = send.send(line);
            }
        })
    };
    (child, log, lines, reader)
}

impl Served {
    pub fn start(keys: &Path) -> Served {
        let (mut child, log, lines, _reader) = spawn_serve(keys);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let Some(rest) = line.strip_prefix("keygate serve: listening on http://")
                    else {
                        continue;
                    };
                    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    return Served { child, addr, log };
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("keygate serve did not start: {}", log.lock().unwrap());
                }
            }
        }
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
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `keygate serve` expecting it to refuse to start: its exit code and stderr.
pub fn serve_refused(keys: &Path) -> Run {
    let (mut child, log, _lines, reader) = spawn_serve(keys);
    let deadline = Instant::now() + START_TIMEOUT;
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

/// An HTTP answer as a client got it. Header names are lowercase.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a new connection (closed after the answer).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: keyservice\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

pub fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    http(addr, "GET", target, &[])
}
