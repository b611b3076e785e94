//! `keygate serve --db` for the tests: the server as a child process (killable with
//! SIGKILL or stopped with SIGTERM), a blocking HTTP/1.1 client over plain TCP or TLS
//! (with or without a client certificate), and certificates made at test time ([`tls`]).

pub mod tls;

use crate::cli::HttpResponse;
use crate::keygate_binary;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// `keygate admin new --db PATH`: the admin key.
pub fn admin_key(db: &Path) -> String {
    let out = Command::new(keygate_binary())
        .args(["admin", "new", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["admin_key"].as_str().unwrap().to_string()
}

/// `keygate serve --db PATH` (or `--keys`, as `args` say). Killed when dropped.
/// A scratch directory `name`, a database in it, and the database's first admin key.
pub fn scratch_db(name: &str) -> (crate::cli::Scratch, PathBuf, String) {
    let dir = crate::cli::Scratch::new(name);
    let db = db_path(dir.path());
    let admin = admin_key(&db);
    (dir, db, admin)
}

/// A scratch directory with a test PKI, a database and its first admin key: where a test
/// of `keygate serve --db` over TLS starts.
pub struct TlsDb {
    pub dir: crate::cli::Scratch,
    pub pki: tls::Pki,
    pub db: PathBuf,
    pub admin: String,
}

impl TlsDb {
    pub fn new(name: &str) -> TlsDb {
        let (dir, db, admin) = scratch_db(name);
        let pki = tls::Pki::generate(dir.path());
        TlsDb {
            dir,
            pki,
            db,
            admin,
        }
    }

    /// `keygate serve --db` over mTLS, and a client of its admin API (no client
    /// certificate) with the admin key.
    pub fn serve_mtls(&self) -> (Server, Client) {
        let server = Server::start_tls(&self.db, &self.pki, true);
        let api = Client::tls(server.addr, &self.pki, false).with_bearer(&self.admin);
        (server, api)
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub https: bool,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `keygate serve ARGS --listen 127.0.0.1:0` and waits for its address.
    pub fn start(args: &[&str]) -> Server {
        Self::start_on(args.iter().map(|s| s.to_string()).collect(), "127.0.0.1:0")
    }

    /// `keygate serve --db DB` over TLS with `pki`'s server certificate; with
    /// `client_ca`, `--client-ca` too (mTLS: the gateway endpoints want a client
    /// certificate signed by `pki`'s CA).
    pub fn start_tls(db: &Path, pki: &tls::Pki, client_ca: bool) -> Server {
        let mut args = vec![
            "--db".to_string(),
            arg(db),
            "--tls-cert".to_string(),
            arg(&pki.server_cert),
            "--tls-key".to_string(),
            arg(&pki.server_key),
        ];
        if client_ca {
            args.extend(["--client-ca".to_string(), arg(&pki.ca)]);
        }
        Self::start_on(args, "127.0.0.1:0")
    }

    /// `keygate serve --db DB` over plain HTTP, and a client of its admin API with the
    /// admin key `admin`.
    pub fn start_db(db: &Path, admin: &str) -> (Server, Client) {
        let server = Server::start(&["--db", &arg(db)]);
        let api = Client::plain(server.addr).with_bearer(admin);
        (server, api)
    }

    fn start_on(args: Vec<String>, listen: &str) -> Server {
        let mut child = Command::new(keygate_binary())
            .arg("serve")
            .args(&args)
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (send, lines) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = send.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keygate serve did not start: {}", log.lock().unwrap());
            };
            let found = line
                .strip_prefix("keygate serve: listening on http://")
                .map(|rest| (rest, false))
                .or_else(|| {
                    line.strip_prefix("keygate serve: listening on https://")
                        .map(|rest| (rest, true))
                });
            if let Some((rest, https)) = found {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return Server {
                    child,
                    addr,
                    https,
                    args,
                    log,
                };
            }
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (up to 20 s) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same command again on the same address (after a kill).
    pub fn restart(&mut self) {
        let again = Self::start_on(self.args.clone(), &self.addr.to_string());
        let old = std::mem::replace(self, again);
        drop(old);
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 client, one connection per request.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub bearer: Option<String>,
}

impl Client {
    pub fn plain(addr: SocketAddr) -> Client {
        Client {
            addr,
            tls: None,
            bearer: None,
        }
    }

    /// Over TLS, trusting `pki`'s CA, presenting its client certificate if `client_cert`.
    pub fn tls(addr: SocketAddr, pki: &tls::Pki, client_cert: bool) -> Client {
        Client {
            addr,
            tls: Some(Arc::new(pki.client_config(client_cert))),
            bearer: None,
        }
    }

    /// Over TLS with a client certificate from a CA the server does not trust.
    pub fn stranger(addr: SocketAddr, pki: &tls::Pki) -> Client {
        Client {
            addr,
            tls: Some(Arc::new(pki.stranger_config())),
            bearer: None,
        }
    }

    /// Every request sends `Authorization: Bearer <key>`.
    pub fn with_bearer(mut self, key: &str) -> Client {
        self.bearer = Some(key.to_string());
        self
    }

    /// Creates a key for `owner` with the scope `browse`, living 7 days, through the admin
    /// API: its (id, api_key).
    pub fn create_browse_key(&self, owner: &str) -> (String, String) {
        let r = self.json(
            "POST",
            "/v1/admin/keys",
            &serde_json::json!({"owner": owner, "scopes": ["browse"], "expires_in": "7d"}),
        );
        assert_eq!(r.status, 201, "{r:?}");
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    }

    pub fn get(&self, target: &str) -> HttpResponse {
        self.send("GET", target, &[], None)
    }

    pub fn json(&self, method: &str, target: &str, body: &Value) -> HttpResponse {
        self.send(method, target, &[], Some(body.to_string().as_bytes()))
    }

    /// `DELETE target`, no headers, no body.
    pub fn delete(&self, target: &str) -> HttpResponse {
        self.send("DELETE", target, &[], None)
    }

    pub fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        self.try_send(method, target, headers, body).unwrap()
    }

    /// As [`Client::send`], but a failed connection or handshake is an error.
    pub fn try_send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<HttpResponse> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: keyservice\r\nConnection: close\r\n");
        if let Some(key) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        let raw = match &self.tls {
            None => exchange(tcp, &request)?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("keyservice")
                    .unwrap()
                    .to_owned();
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                exchange(rustls::StreamOwned::new(conn, tcp), &request)?
            }
        };
        parse(&raw)
    }
}

fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A signal to the test process, not the peer's doing.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A peer that closes without close_notify after a complete answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    if raw.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(raw)
}

fn parse(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {raw:?}")))?;
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
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers.iter().any(|(n, _)| n == "transfer-encoding"),
        "chunked answers are not expected here: {head}"
    );
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// A scratch path's string, for command lines.
pub fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Files under `dir`: a convenience for `--db dir/keys.db`.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("keys.db")
}
