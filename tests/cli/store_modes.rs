//! README "Managing keys": every key command on its three targets (a key file, a key
//! service's database, a key service over HTTPS), with the same scenario and the same
//! outputs; and the command lines that name no target, or two.

use keygate_testkit::cli::{Run, Scratch};
use keygate_testkit::keygate_binary;
use keygate_testkit::keysvc::tls::Pki;
use keygate_testkit::keysvc::{admin_key, arg, db_path, Client, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Keys,
    Db,
    Server,
}

/// Where the commands of one run of the scenario go.
struct Mode {
    kind: Kind,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// `keygate ARGS` with `admin_key` as `KEYGATE_ADMIN_KEY` fails with one line on stderr
/// that says `why` and never repeats the admin key.
fn refused_without_echo(args: &[&str], admin_key: &str, why: &str) {
    let refused = run(args, &[], &[("KEYGATE_ADMIN_KEY", admin_key.to_string())]).failed();
    assert!(refused.stderr.contains(why), "{refused:?}");
    assert!(!refused.stderr.contains(admin_key));
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
}

fn run(args: &[&str], extra: &[String], env: &[(&'static str, String)]) -> Run {
    let mut command = Command::new(keygate_binary());
    command
        .args(args)
        .args(extra)
        .env_remove("KEYGATE_KEYS")
        .env_remove("KEYGATE_ADMIN_KEY");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

impl Mode {
    fn kg(&self, args: &[&str]) -> Run {
        run(args, &self.args, &self.env)
    }
}

fn issued(stdout: &str) -> (String, String) {
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let fields: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["api_key", "expires_at", "id"], "{stdout}");
    let key = v["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("kg_"), "{stdout}");
    (v["id"].as_str().unwrap().to_string(), key)
}

const HEADINGS: &str =
    "ID  OWNER  LABEL  SCOPES  CREATED  EXPIRES  STATUS  READ-ONLY  LAST USED  USES";

/// The table's rows as cells (cells hold no double spaces).
fn table(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(head.join("  "), HEADINGS);
    lines
        .map(|l| {
            l.split("  ")
                .filter(|c| !c.is_empty())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], id: &str) -> &'a [String] {
    rows.iter().find(|r| r[0] == id).unwrap()
}

fn scenario(mode: &Mode) {
    let kind = mode.kind;
    let new = |owner: &str| {
        issued(
            &mode
                .kg(&[
                    "new",
                    "--owner",
                    owner,
                    "--label",
                    "ci",
                    "--scopes",
                    "browse",
                    "--expires-in",
                    "7d",
                ])
                .ok()
                .stdout,
        )
    };
    let (a1, _) = new("alice");
    let (a2, _) = new("alice");
    let (b1, _) = new("bob");

    // list: the same columns and JSON fields on every target.
    let rows = table(&mode.kg(&["list"]).ok().stdout);
    assert_eq!(rows.len(), 3, "{kind:?}: {rows:?}");
    let r = row(&rows, &a1);
    assert_eq!(
        (
            &r[1][..],
            &r[2][..],
            &r[3][..],
            &r[6][..],
            &r[7][..],
            &r[8][..],
            &r[9][..]
        ),
        ("alice", "ci", "browse", "enabled", "no", "never", "0"),
        "{kind:?}"
    );
    let json: Value = serde_json::from_str(&mode.kg(&["list", "--json"]).ok().stdout).unwrap();
    let records = json.as_array().unwrap();
    assert_eq!(records.len(), 3);
    for field in [
        "id",
        "hash",
        "owner",
        "label",
        "scopes",
        "created_at",
        "expires_at",
        "status",
        "read_only",
        "last_used_at",
        "uses",
    ] {
        assert!(
            records[0].get(field).is_some(),
            "{kind:?}: {field} in {json}"
        );
    }
    assert_eq!(records[0]["uses"], 0);
    assert_eq!(records[0]["last_used_at"], Value::Null);
    let bobs = table(&mode.kg(&["list", "--owner", "bob"]).ok().stdout);
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0][0], b1);

    // disable / enable / revoke, by a unique start of the id.
    let short = &a1[..8];
    assert_eq!(
        mode.kg(&["disable", short]).ok().stdout,
        format!("disabled {a1}\n")
    );
    assert_eq!(
        mode.kg(&["disable", &a1]).ok().stdout,
        format!("{a1} is already disabled\n")
    );
    assert_eq!(
        row(&table(&mode.kg(&["list"]).ok().stdout), &a1)[6],
        "disabled"
    );
    let disabled = table(&mode.kg(&["list", "--status", "disabled"]).ok().stdout);
    assert_eq!(disabled.len(), 1);
    assert_eq!(
        mode.kg(&["enable", short]).ok().stdout,
        format!("enabled {a1}\n")
    );
    assert_eq!(
        mode.kg(&["revoke", short]).ok().stdout,
        format!("revoked {a1}\n")
    );
    let missing = mode.kg(&["disable", "ffffffff-no-such"]).failed();
    assert!(missing.stderr.contains("no key with id"), "{missing:?}");

    // rotate: a key service's; a key file says what to do instead.
    let rotated = mode.kg(&["rotate", &a2[..8], "--grace", "24h"]);
    let owner_count = if kind == Kind::Keys {
        let r = rotated.failed();
        assert!(r.stderr.contains("rotate needs a key service"), "{r:?}");
        1
    } else {
        let (a3, _) = issued(&rotated.ok().stdout);
        assert_ne!(a3, a2);
        let rows = table(&mode.kg(&["list"]).ok().stdout);
        let r = row(&rows, &a3);
        assert_eq!((&r[1][..], &r[2][..], &r[3][..]), ("alice", "ci", "browse"));
        assert_eq!(row(&rows, &a1)[6], "revoked");
        2
    };

    // revoke --owner: how many.
    assert_eq!(
        mode.kg(&["revoke", "--owner", "alice"]).ok().stdout,
        format!("revoked {owner_count} keys of alice\n").replace("1 keys", "1 key")
    );
    let left = table(&mode.kg(&["list", "--status", "enabled"]).ok().stdout);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0][0], b1);

    // audit: a key service's trail.
    let audit = mode.kg(&["audit"]);
    if kind == Kind::Keys {
        assert!(audit.failed().stderr.contains("audit needs a key service"));
        return;
    }
    let text = audit.ok().stdout;
    assert!(text.starts_with("AT "), "{text}");
    let actor = if kind == Kind::Db { "cli:" } else { "admin:" };
    let entries: Value = serde_json::from_str(&mode.kg(&["audit", "--json"]).ok().stdout).unwrap();
    let entries = entries.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["create", "update", "revoke", "rotate"] {
        assert!(actions.contains(&action), "{kind:?}: {actions:?}");
    }
    // (Making the admin key is the local user's doing in both.)
    assert!(entries
        .iter()
        .filter(|e| e["key_id"].is_string())
        .all(|e| e["actor"].as_str().unwrap().starts_with(actor)));
    assert!(entries.iter().any(|e| e["key_id"] == a1.as_str()));
    let later: Value = serde_json::from_str(
        &mode
            .kg(&["audit", "--json", "--since", "2100-01-01T00:00:00Z"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(later, Value::Array(vec![]));
}

#[test]
fn the_same_scenario_on_a_key_file_a_database_and_a_key_service() {
    let dir = Scratch::new("store-modes");
    let keys = dir.path().join("keys.json");
    scenario(&Mode {
        kind: Kind::Keys,
        args: vec!["--keys".into(), arg(&keys)],
        env: vec![],
    });

    let db = dir.path().join("direct.db");
    scenario(&Mode {
        kind: Kind::Db,
        args: vec!["--db".into(), arg(&db)],
        // A key file named by the environment is only a default: --db wins.
        env: vec![("KEYGATE_KEYS", arg(&keys))],
    });

    let pki = Pki::generate(dir.path());
    let served = db_path(dir.path());
    let admin = admin_key(&served);
    let server = Server::start(&[
        "--db",
        &arg(&served),
        "--tls-cert",
        &arg(&pki.server_cert),
        "--tls-key",
        &arg(&pki.server_key),
    ]);
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    scenario(&Mode {
        kind: Kind::Server,
        args: vec![
            "--server".into(),
            url.clone(),
            "--ca-cert".into(),
            arg(&pki.ca),
        ],
        env: vec![("KEYGATE_ADMIN_KEY", admin.clone())],
    });

    // LAST USED and USES come from the store, through the service and directly.
    let listed: Value = serde_json::from_str(
        &run(
            &[
                "list",
                "--json",
                "--status",
                "enabled",
                "--server",
                &url,
                "--ca-cert",
                &arg(&pki.ca),
            ],
            &[],
            &[("KEYGATE_ADMIN_KEY", admin.clone())],
        )
        .ok()
        .stdout,
    )
    .unwrap();
    let bob = &listed[0];
    let report = json!({"reports": [{"hash": bob["hash"], "count": 3, "last_used_at": "2026-11-30T10:00:00Z"}]});
    let used = Client::tls(server.addr, &pki, false).json("POST", "/v1/usage", &report);
    assert_eq!(used.status, 204, "{used:?}");
    let direct = run(
        &["list", "--db", &arg(&served), "--status", "enabled"],
        &[],
        &[],
    )
    .ok();
    let rows = table(&direct.stdout);
    assert_eq!(
        (&rows[0][8][..], &rows[0][9][..]),
        ("2026-11-30T10:00:00Z", "3")
    );

    // The admin key from a file does as well.
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{admin}\n")).unwrap();
    let listed = run(
        &[
            "list",
            "--server",
            &url,
            "--ca-cert",
            &arg(&pki.ca),
            "--admin-key-file",
            &arg(&key_file),
        ],
        &[],
        &[],
    )
    .ok();
    assert_eq!(table(&listed.stdout).len(), 4);

    // Refusals, each one clean line: a wrong admin key (never echoed), no admin key,
    // a server whose certificate is not trusted.
    let wrong = "kga_not-the-admin-key";
    refused_without_echo(
        &["list", "--server", &url, "--ca-cert", &arg(&pki.ca)],
        wrong,
        "the admin key was refused",
    );
    let none = run(&["revoke", "x", "--server", &url], &[], &[]).failed();
    assert!(none.stderr.contains("KEYGATE_ADMIN_KEY"), "{none:?}");
    refused_without_echo(
        &["list", "--server", &url],
        &admin,
        "cannot reach the key service",
    );
    drop(server);

    // A key service that serves a key file has no admin API: said so.
    let file_server = Server::start(&["--keys", &arg(&keys)]);
    let plain = format!("http://127.0.0.1:{}", file_server.addr.port());
    let no_api = run(
        &["list", "--server", &plain],
        &[],
        &[("KEYGATE_ADMIN_KEY", admin.clone())],
    )
    .failed();
    assert!(no_api.stderr.contains("has no admin API"), "{no_api:?}");
}

#[test]
fn one_place_for_the_keys() {
    let dir = Scratch::new("store-modes-bad");
    let db = arg(&dir.path().join("k.db"));
    let keys = arg(&dir.path().join("keys.json"));
    let failed = |args: &[&str], says: &str| {
        let r = run(args, &[], &[]).failed();
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    };
    failed(
        &["list", "--db", &db, "--keys", &keys],
        "--keys and --db given together",
    );
    failed(
        &[
            "revoke",
            "x",
            "--db",
            &db,
            "--server",
            "https://127.0.0.1:1",
        ],
        "--db and --server given together",
    );
    failed(
        &["list", "--db", &db, "--ca-cert", &keys],
        "--ca-cert is for --server URL only",
    );
    failed(&["list", "--db", &db], "no such database");
    failed(&["audit", "--keys", &keys], "audit needs a key service");
    failed(
        &["list", "--server", "keys.example.org"],
        "give the key service's URL",
    );
    assert!(!Path::new(&db).exists());
}
