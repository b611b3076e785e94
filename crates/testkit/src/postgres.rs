//! A throwaway PostgreSQL server for the tests of `keygate serve --db postgres://...`
//! (README "Replicas on PostgreSQL"): Debian's postgresql-15 (`make test` installs it),
//! `initdb` into a temp dir, listening on 127.0.0.1 only (a free port, trust
//! authentication: nothing but this machine reaches it) with its socket in the temp dir.
//!
//! Root may not run PostgreSQL: as root, the cluster belongs to `nobody` and the server
//! runs as `nobody`. The server is stopped (fast shutdown) when dropped; only the process
//! this kit started is ever signalled.

use crate::temp::TempDir;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role the tests connect as (made by initdb, superuser of the throwaway cluster).
pub const USER: &str = "keygate";
/// `nobody`: who runs the server when the tests run as root.
const NOBODY: u32 = 65534;

/// Where the server's binaries are: Debian's postgresql-15 (or, on a later Debian, the
/// newest /usr/lib/postgresql/N), or `$PATH`.
fn bin_dir() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("postgres").is_file() {
        return debian;
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .filter(|(_, dir)| dir.join("bin/postgres").is_file())
        .max();
    if let Some((_, dir)) = newest {
        return dir.join("bin");
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
                return dir;
            }
        }
    }
    panic!(
        "PostgreSQL is not installed (no postgres and initdb in /usr/lib/postgresql/15/bin \
         or on PATH): `make test` installs Debian's postgresql-15, or run \
         `apt-get install postgresql-15`"
    );
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A running PostgreSQL server. Stopped when dropped.
pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    next_db: u32,
    /// `-c ssl=on ...` when started with TLS.
    tls_args: Vec<String>,
    /// The CA that signed the server's certificate (PEM), when started with TLS.
    pub ca: Option<PathBuf>,
}

impl Postgres {
    /// A new cluster, started; panics (with the server's log) if it does not start.
    pub fn start() -> Postgres {
        Self::start_inner(false)
    }

    /// As [`Postgres::start`], and offering TLS with a certificate for 127.0.0.1 and
    /// localhost from a CA made here ([`Postgres::ca`]).
    pub fn start_tls() -> Postgres {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Postgres {
        let bin = bin_dir();
        let dir = TempDir::new("pg");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.join("socket")).unwrap();
        if running_as_root() {
            for path in [dir.path().to_path_buf(), data.clone(), dir.join("socket")] {
                std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        let out = as_owner(Command::new(bin.join("initdb")))
            .args([
                "--auth=trust",
                "--username",
                USER,
                "--no-sync",
                "--encoding=UTF8",
            ])
            .arg("--pgdata")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut tls_args, mut ca) = (Vec::new(), None);
        if tls {
            let tls_dir = dir.join("tls");
            std::fs::create_dir_all(&tls_dir).unwrap();
            let pki = crate::keysvc::tls::Pki::generate(&tls_dir);
            // PostgreSQL wants its key readable by its user only.
            std::fs::set_permissions(
                &pki.server_key,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            if running_as_root() {
                for path in [&pki.server_cert, &pki.server_key] {
                    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
                }
            }
            tls_args = vec![
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", pki.server_cert.display()),
                "-c".into(),
                format!("ssl_key_file={}", pki.server_key.display()),
            ];
            ca = Some(pki.ca);
        }
        let mut pg = Postgres {
            bin,
            dir,
            port: crate::free_port(),
            child: None,
            next_db: 0,
            tls_args,
            ca,
        };
        pg.start_again();
        pg
    }

    /// Starts the server (again, after [`Postgres::stop`]) on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is running already");
        let log = std::fs::File::create(self.dir.join("postgres.log")).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(self.dir.join("postgres.log"), Some(NOBODY), None).unwrap();
        }
        let child = as_owner(Command::new(self.bin.join("postgres")))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.join("socket"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                // The cluster is thrown away: its durability is not what is tested (the
                // tests stop it cleanly; `kill -9` is for the key service).
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .args(&self.tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("postgres exited ({status}):\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are cut, as in a restart).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `sql` in `db` with psql; its output, or its error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args([
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// A new empty database; its DSN.
    pub fn new_database(&mut self) -> String {
        self.next_db += 1;
        let name = format!("keygate_{}", self.next_db);
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.dsn(&name)
    }

    /// `postgres://keygate@127.0.0.1:PORT/DB`.
    pub fn dsn(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// As `nobody` when root (PostgreSQL refuses root), else as this user.
fn as_owner(mut command: Command) -> Command {
    if running_as_root() {
        command.uid(NOBODY).gid(NOBODY);
        // initdb and postgres read no home directory, but a root HOME is no use to nobody.
        command.env("HOME", "/tmp");
    }
    command
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
