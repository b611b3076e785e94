//! Running the real `keygate` binary in tests: one-shot commands, key files, and
//! `keygate serve` ([`crate::serve`]) with a small HTTP client for it.

use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use crate::serve::{serve_refused, Serve, Served};
use crate::{keygate_binary, Request, Response, TempDir};

/// A fresh directory under the system temp dir, removed on drop (the test kit's
/// [`TempDir`], by the name the CLI tests know it).
pub type Scratch = TempDir;

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

/// Runs `keygate args... --keys FILE`.
pub fn keygate_on(keys: &Path, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--keys", keys.to_str().unwrap()]);
    keygate(&all)
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

/// A scratch folder for a test and the key file `keys.json` in it (`keygate new` makes it).
pub fn key_file(label: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new(label);
    let keys = dir.join("keys.json");
    (dir, keys)
}

/// A scratch folder with a key file holding a key of alice's and one of bob's (7 days
/// each), and `keygate serve` serving it.
pub fn alice_and_bob_served(label: &str) -> (Scratch, PathBuf, Issued, Issued, crate::Served) {
    let (dir, keys) = key_file(label);
    let alice = new_key(&keys, &["--owner", "alice", "--expires-in", "7d"]);
    let bob = new_key(&keys, &["--owner", "bob", "--expires-in", "7d"]);
    let server = crate::Served::start(&keys);
    (dir, keys, alice, bob, server)
}

/// `keygate new --keys FILE --owner OWNER --scopes SCOPES --expires-in EXPIRES_IN extra...`,
/// which must succeed: the usual key of a test, holding `scopes` (comma-separated).
pub fn new_scoped_key(
    keys: &Path,
    owner: &str,
    scopes: &str,
    expires_in: &str,
    extra: &[&str],
) -> Issued {
    let mut args = vec![
        "--owner",
        owner,
        "--scopes",
        scopes,
        "--expires-in",
        expires_in,
    ];
    args.extend_from_slice(extra);
    new_key(keys, &args)
}

/// `keygate check FILE`, which must succeed: what it printed, each line without the
/// `FILE: ` every line starts with.
pub fn check_ok(path: &Path) -> String {
    let run = keygate(&["check", path.to_str().unwrap()]).ok();
    let prefix = format!("{}: ", path.display());
    run.stdout
        .lines()
        .map(|line| match line.strip_prefix(&prefix) {
            Some(said) => format!("{said}\n"),
            None => panic!("a line of keygate check not about {prefix:?}: {run:?}"),
        })
        .collect()
}

/// `keygate check FILE`, which must fail.
pub fn check_fails(path: &Path) -> Run {
    keygate(&["check", path.to_str().unwrap()]).failed()
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

/// An HTTP answer as a client got it (the test kit's HTTP/1.1 [`Response`]).
pub type HttpResponse = Response;

/// One HTTP/1.1 request on a new connection (closed after the answer).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let request = headers
        .iter()
        .fold(Request::new(method, target), |r, (name, value)| {
            r.header(name, value)
        });
    crate::request(addr, &request)
}

pub fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    http(addr, "GET", target, &[])
}
