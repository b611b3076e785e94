//! The `keygate` binary, run for real: every command, and every error it should give.

use keygate_testkit::cli as cli_support;

use cli_support::{
    check_fails, check_ok, key_file, keygate, keygate_on, keygate_with_stdin, new_key,
    new_scoped_key, read_json, record, records, Issued, Scratch,
};
use keygate_core::record::KeyHash;
use keygate_core::timestamp::Timestamp;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const SECOND: i128 = 1_000_000_000;
const DAY: i128 = 86_400 * SECOND;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

// ---------------------------------------------------------------------------------------
// new

#[test]
fn new_prints_the_key_once_and_stores_only_its_hash() {
    let (dir, keys) = key_file("new");
    let before = now();
    let issued = new_scoped_key(
        &keys,
        "alice",
        "browse,download",
        "90d",
        &["--label", "ci-runner"],
    );
    let after = now();

    assert!(is_uuid_v4(&issued.id), "{issued:?}");
    let bytes = random_part(&issued.api_key);
    assert_eq!(bytes.len(), 32);
    let body = &issued.api_key[3..];
    let prefixes = [keygate_core::key_format::Prefix::parse("kg").unwrap()];
    assert!(matches!(
        keygate_core::key_format::shape(&issued.api_key, &prefixes, true),
        keygate_core::key_format::Shape::WellFormed(_)
    ));

    let doc = read_json(&keys);
    assert_eq!(doc["version"], "1");
    let stored = records(&keys);
    assert_eq!(stored.len(), 1);
    let r = &stored[0];
    assert_eq!(r["id"], issued.id.as_str());
    assert_eq!(r["hash"], KeyHash::of_key(&issued.api_key).to_hex());
    assert_eq!(r["owner"], "alice");
    assert_eq!(r["label"], "ci-runner");
    assert_eq!(r["scopes"], json!(["browse", "download"]));
    assert_eq!(r["status"], "enabled");
    assert_eq!(r["read_only"], false);
    assert_eq!(r["expires_at"].as_str(), issued.expires_at.as_deref());

    // created_at is now (whole seconds, UTC), expires_at 90 days on.
    let created_text = r["created_at"].as_str().unwrap();
    assert!(
        created_text.ends_with('Z') && created_text.len() == 20,
        "{created_text}"
    );
    let created = at(created_text).unix_nanos();
    assert!(before.unix_nanos() - SECOND < created && created <= after.unix_nanos());
    let expires = at(issued.expires_at.as_deref().unwrap()).unix_nanos();
    assert_eq!(expires - created, 90 * DAY);

    // The key is nowhere but in that one line: not in the file, not in its lock.
    let text = std::fs::read_to_string(&keys).unwrap();
    assert!(!text.contains(body) && !text.contains(&body[..16]));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let content = std::fs::read(entry.unwrap().path()).unwrap();
        let content = String::from_utf8_lossy(&content);
        assert!(!content.contains(&body[..16]));
    }
}

#[test]
fn new_expiry_flags_prefix_and_permissions() {
    let (_dir, keys) = key_file("new-options");
    let week = new_key(&keys, &["--owner", "bob", "--expires-in", "7d"]);
    let never = new_key(
        &keys,
        &[
            "--owner",
            "vspc",
            "--expires-in",
            "never",
            "--read-only",
            "--prefix",
            "acme_",
        ],
    );
    let hours = new_key(&keys, &["--owner", "carol", "--expires-in", "12h"]);

    let r = record(&keys, &week.id).unwrap();
    let created = at(r["created_at"].as_str().unwrap()).unix_nanos();
    assert_eq!(
        at(r["expires_at"].as_str().unwrap()).unix_nanos() - created,
        7 * DAY
    );
    assert_eq!(r["scopes"], json!([]));
    assert!(r.get("label").is_none());

    assert_eq!(never.expires_at, None);
    let r = record(&keys, &never.id).unwrap();
    assert_eq!(r["expires_at"], Value::Null);
    assert_eq!(r["read_only"], true);
    assert!(never.api_key.starts_with("acme_") && never.api_key.len() == 5 + 43 + 1 + 6);

    let r = record(&keys, &hours.id).unwrap();
    let created = at(r["created_at"].as_str().unwrap()).unix_nanos();
    assert_eq!(
        at(r["expires_at"].as_str().unwrap()).unix_nanos() - created,
        12 * 3600 * SECOND
    );

    assert_eq!(read_json(&keys)["version"], "3");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A mode the operator chose survives rewrites.
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).unwrap();
        new_key(&keys, &["--owner", "dave", "--expires-in", "30d"]);
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}

#[test]
fn new_keys_look_random() {
    let (_dir, keys) = key_file("entropy");
    let issued: Vec<Issued> = (0..12)
        .map(|_| new_key(&keys, &["--owner", "o", "--expires-in", "1y"]))
        .collect();
    let distinct: HashSet<&str> = issued.iter().map(|i| i.api_key.as_str()).collect();
    assert_eq!(distinct.len(), issued.len());
    let ids: HashSet<&str> = issued.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), issued.len());
    // 12 × 256 bits: about half the bits set, and most base62 characters seen.
    let mut ones = 0;
    let mut chars = HashSet::new();
    for i in &issued {
        chars.extend(i.api_key[3..46].chars());
        ones += random_part(&i.api_key)
            .iter()
            .map(|b| b.count_ones())
            .sum::<u32>();
    }
    let bits = 12 * 256;
    assert!(
        (bits * 2 / 5..bits * 3 / 5).contains(&ones),
        "{ones} of {bits}"
    );
    assert!(chars.len() > 45, "{} distinct characters", chars.len());
}

/// The 256 random bits of a key `kg_<43 base62>_<checksum>` (README "Key format").
fn random_part(key: &str) -> Vec<u8> {
    let body = key.strip_prefix("kg_").unwrap();
    let (random, checksum) = body.split_once('_').unwrap();
    assert_eq!((random.len(), checksum.len()), (43, 6), "{key}");
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut number = [0u8; 33];
    for c in random.bytes() {
        let mut carry = digits.iter().position(|d| *d == c).unwrap() as u32;
        for byte in number.iter_mut().rev() {
            let v = u32::from(*byte) * 62 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    assert_eq!(number[0], 0, "more than 256 bits");
    number[1..].to_vec()
}

#[test]
fn new_refuses_bad_input_and_creates_nothing() {
    let (dir, keys) = key_file("new-errors");
    let try_new = |args: &[&str]| {
        let mut all = vec!["new", "--keys", p(&keys)];
        all.extend_from_slice(args);
        keygate(&all)
    };
    for bad in ["0d", "soon", "7", "7days", "-7d", "1mo", "101y", ""] {
        let run = try_new(&["--owner", "o", "--expires-in", bad]).failed();
        assert!(
            run.stderr.contains("--expires-in")
                && run.stderr.contains("never")
                && run.stderr.contains("90d"),
            "{bad}: {run:?}"
        );
    }
    let run = try_new(&[
        "--owner",
        "o",
        "--expires-in",
        "7d",
        "--scopes",
        "browse,up load",
    ])
    .failed();
    assert!(
        run.stderr
            .contains("--scopes: \"up load\" is not a valid scope"),
        "{run:?}"
    );
    try_new(&[
        "--owner",
        "o",
        "--expires-in",
        "7d",
        "--scopes",
        "browse,,upload",
    ])
    .failed();
    let run = try_new(&["--owner", " alice", "--expires-in", "7d"]).failed();
    assert!(run.stderr.starts_with("keygate: --owner: "), "{run:?}");
    try_new(&["--owner", "", "--expires-in", "7d"]).failed();
    let run = try_new(&["--owner", "a", "--label", "x\ny", "--expires-in", "7d"]).failed();
    assert!(run.stderr.contains("--label: "), "{run:?}");
    let run = try_new(&["--owner", "a", "--expires-in", "7d", "--prefix", "apikey|"]).failed();
    assert!(run.stderr.contains("--prefix"), "{run:?}");
    assert!(!keys.exists(), "nothing written on a refused command");

    // Usage errors are clap's: exit 2.
    assert_eq!(try_new(&["--expires-in", "7d"]).code, 2);
    assert_eq!(try_new(&["--owner", "o"]).code, 2);
    assert!(!keys.exists());

    let run = keygate(&[
        "new",
        "--owner",
        "o",
        "--expires-in",
        "7d",
        "--keys",
        p(&dir.join("no-such-dir/keys.json")),
    ])
    .failed();
    assert!(run.stderr.contains("no-such-dir/keys.json"), "{run:?}");
}

/// Records a command did not touch keep their exact text, nanoseconds and offsets included.
#[test]
fn rewrites_keep_other_records_as_written() {
    let (_dir, keys) = key_file("preserve");
    let immport = format!(
        r#"{{"id": "8c3e4394-10a9-46ef-8af9-b6401ba1400d", "hash": "{}", "owner": "alice", "expires_at": "2027-05-21T20:55:24.654328038Z"}}"#,
        KeyHash::of_key("one").to_hex()
    );
    let vspc = format!(
        r#"{{"id": "vspc", "owner": "op", "hash": "{}", "created_at": "2020-08-18T16:02:26.0136931+00:00", "read_only": true}}"#,
        KeyHash::of_key("two").to_hex()
    );
    std::fs::write(
        &keys,
        format!("{{\"version\": \"v7\", \"keys\": [\n{immport},\n{vspc}\n]}}"),
    )
    .unwrap();
    new_key(&keys, &["--owner", "new", "--expires-in", "7d"]);
    keygate(&["disable", "vspc", "--keys", p(&keys)]).ok();
    let text = std::fs::read_to_string(&keys).unwrap();
    assert!(text.contains(&immport), "{text}");
    // The edited record keeps its fields and their order; only status is added.
    assert!(
        text.contains(&format!(
            r#"{{"id":"vspc","hash":"{}","owner":"op","created_at":"2020-08-18T16:02:26.0136931+00:00","status":"disabled","read_only":true}}"#,
            KeyHash::of_key("two").to_hex()
        )),
        "{text}"
    );
    // A version that is not a counter restarts one.
    assert_eq!(read_json(&keys)["version"], "2");
}

/// 16 processes add a key at once: the lock keeps every record.
#[test]
fn concurrent_new_loses_no_record() {
    let (dir, keys) = key_file("concurrent");
    let children: Vec<_> = (0..16)
        .map(|i| {
            std::process::Command::new(keygate_testkit::keygate_binary())
                .args(["new", "--keys", p(&keys), "--expires-in", "30d", "--owner"])
                .arg(format!("owner{i}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let issued: Vec<Issued> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Issued::parse(&String::from_utf8(out.stdout).unwrap())
        })
        .collect();
    let stored = records(&keys);
    assert_eq!(stored.len(), 16);
    for i in &issued {
        let r = record(&keys, &i.id).unwrap();
        assert_eq!(r["hash"], KeyHash::of_key(&i.api_key).to_hex());
    }
    let owners: HashSet<&str> = stored
        .iter()
        .map(|r| r["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners.len(), 16);
    assert_eq!(read_json(&keys)["version"], "16");
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["keys.json", "keys.json.lock"]);
}

// ---------------------------------------------------------------------------------------
// list

fn handwritten(keys: &Path) {
    let doc = json!({"version": "5", "keys": [
        {"id": "k-active", "hash": KeyHash::of_key("a").to_hex(), "owner": "alice",
         "label": "laptop", "scopes": ["browse", "download"],
         "created_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z"},
        {"id": "k-expired", "hash": KeyHash::of_key("b").to_hex(), "owner": "bob",
         "scopes": ["browse"], "expires_at": "2020-01-01T00:00:00+01:00"},
        {"id": "k-disabled", "hash": KeyHash::of_key("c").to_hex(), "owner": "carol",
         "status": "disabled", "read_only": true}
    ]});
    std::fs::write(keys, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn list_as_a_table() {
    let (dir, keys) = key_file("list");
    handwritten(&keys);
    let out = keygate(&["list", "--keys", p(&keys)]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let cells = |line: &str| {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[0]),
        [
            "ID",
            "OWNER",
            "LABEL",
            "SCOPES",
            "CREATED",
            "EXPIRES",
            "STATUS",
            "READ-ONLY",
            "LAST USED",
            "USES"
        ]
    );
    assert_eq!(
        cells(lines[1]),
        [
            "k-active",
            "alice",
            "laptop",
            "browse,download",
            "2026-01-01T00:00:00Z",
            "2999-01-01T00:00:00Z",
            "enabled",
            "no",
            "never",
            "0"
        ]
    );
    assert_eq!(
        cells(lines[2]),
        [
            "k-expired",
            "bob",
            "-",
            "browse",
            "-",
            "2020-01-01T00:00:00+01:00 (expired)",
            "enabled",
            "no",
            "never",
            "0"
        ]
    );
    assert_eq!(
        cells(lines[3]),
        [
            "k-disabled",
            "carol",
            "-",
            "-",
            "-",
            "never",
            "disabled",
            "yes",
            "never",
            "0"
        ]
    );
    // Columns line up.
    let owner_at = lines[0].find("OWNER").unwrap();
    assert_eq!(lines[1].find("alice"), Some(owner_at));
    assert_eq!(lines[3].find("carol"), Some(owner_at));
    assert!(
        !out.contains(&KeyHash::of_key("a").to_hex()),
        "no hashes in the table"
    );

    let empty = dir.join("empty.json");
    std::fs::write(&empty, r#"{"keys": []}"#).unwrap();
    let out = keygate(&["list", "--keys", p(&empty)]).ok().stdout;
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn list_as_json() {
    let (dir, keys) = key_file("list-json");
    handwritten(&keys);
    let out = keygate(&["list", "--keys", p(&keys), "--json"]).ok().stdout;
    let listed: Value = serde_json::from_str(&out).unwrap();
    // The records as stored, with their usage (none yet: no usage file).
    let mut stored = read_json(&keys)["keys"].clone();
    for record in stored.as_array_mut().unwrap() {
        record["last_used_at"] = Value::Null;
        record["uses"] = json!(0);
    }
    assert_eq!(listed, stored);

    let empty = dir.join("empty.json");
    std::fs::write(&empty, r#"{"keys": []}"#).unwrap();
    let out = keygate(&["list", "--keys", p(&empty), "--json"])
        .ok()
        .stdout;
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
}

#[test]
fn commands_on_a_missing_file_fail_clearly() {
    let (_dir, keys) = key_file("missing");
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["disable", "x"],
        vec!["enable", "x"],
        vec!["revoke", "x"],
    ] {
        let run = keygate_on(&keys, &args).failed();
        assert!(
            run.stderr
                .starts_with(&format!("keygate: {}: no such file", keys.display())),
            "{args:?}: {run:?}"
        );
        assert!(!keys.exists(), "{args:?} created the file");
    }
}

// ---------------------------------------------------------------------------------------
// disable, enable, revoke

#[test]
fn disable_enable_revoke() {
    let (_dir, keys) = key_file("edit");
    let a = new_key(&keys, &["--owner", "alice", "--expires-in", "never"]);
    let b = new_key(&keys, &["--owner", "bob", "--expires-in", "7d"]);
    let status = |id: &str| record(&keys, id).unwrap()["status"].clone();

    let run = keygate(&["disable", &a.id, "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, format!("disabled {}\n", a.id));
    assert_eq!(status(&a.id), "disabled");
    assert_eq!(status(&b.id), "enabled");
    assert_eq!(read_json(&keys)["version"], "3");
    // A never-expiring key still says so.
    assert_eq!(record(&keys, &a.id).unwrap()["expires_at"], Value::Null);

    // Already so: nothing to write, not even a new version.
    let before = std::fs::read(&keys).unwrap();
    let run = keygate(&["disable", &a.id, "--keys", p(&keys)]).ok();
    assert!(run.stdout.contains("already disabled"), "{run:?}");
    assert_eq!(std::fs::read(&keys).unwrap(), before);

    keygate(&["enable", &a.id, "--keys", p(&keys)]).ok();
    assert_eq!(status(&a.id), "enabled");
    let run = keygate(&["enable", &a.id, "--keys", p(&keys)]).ok();
    assert!(run.stdout.contains("already enabled"), "{run:?}");

    let run = keygate(&["revoke", &b.id, "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, format!("revoked {}\n", b.id));
    assert!(record(&keys, &b.id).is_none());
    assert_eq!(records(&keys).len(), 1);
    assert_eq!(read_json(&keys)["version"], "5");

    // Unknown ids: a clear error, the file byte for byte as it was.
    let before = std::fs::read(&keys).unwrap();
    for command in ["disable", "enable", "revoke"] {
        let run = keygate(&[command, &b.id, "--keys", p(&keys)]).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {}: no key with id \"{}\", nor one whose id starts with it \
                 (`keygate list --keys {}` shows the ids)\n",
                keys.display(),
                b.id,
                keys.display()
            )
        );
        assert_eq!(run.stdout, "");
        assert_eq!(std::fs::read(&keys).unwrap(), before, "{command}");
    }
}

/// A key file the filter would refuse is never rewritten, whatever the command.
#[test]
fn a_corrupt_key_file_is_never_overwritten() {
    let (_dir, keys) = key_file("corrupt");
    let good = json!({"id": "a", "hash": KeyHash::of_key("a").to_hex(), "owner": "alice"});
    let cases: Vec<(String, &str)> = vec![
        ("{\"keys\": [".to_string(), "cut short: the JSON ends"),
        ("not json".to_string(), "not JSON: a key file is a JSON object"),
        (
            json!({"keys": [good, {"id": "b", "hash": "ABC", "owner": "bob"}]}).to_string(),
            "keys[1].hash: ",
        ),
        (
            json!({"keys": [good, {"id": "a", "hash": KeyHash::of_key("b").to_hex(), "owner": "bob"}]})
                .to_string(),
            "keys[1].id: duplicate id",
        ),
        (
            json!({"keys": [good, {"id": "b", "hash": KeyHash::of_key("b").to_hex(), "owner": "bob", "key": "raw"}]})
                .to_string(),
            "keys[1].key: unknown field `key`",
        ),
        (
            json!({"keys": [{"id": "a", "hash": KeyHash::of_key("a").to_hex(), "owner": "alice",
                             "expires_at": "tomorrow"}]})
            .to_string(),
            "keys[0].expires_at: ",
        ),
    ];
    for (content, problem) in cases {
        std::fs::write(&keys, &content).unwrap();
        for args in [
            vec!["new", "--owner", "o", "--expires-in", "7d"],
            vec!["disable", "a"],
            vec!["enable", "a"],
            vec!["revoke", "a"],
            vec!["list"],
            vec!["list", "--json"],
        ] {
            let run = keygate_on(&keys, &args).failed();
            assert_eq!(run.stdout, "", "{args:?}");
            let expected = format!("keygate: {}: ", keys.display());
            assert!(
                run.stderr.starts_with(&expected) && run.stderr.contains(problem),
                "{args:?} on {content}: {run:?}"
            );
            assert_eq!(std::fs::read_to_string(&keys).unwrap(), content, "{args:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// hash

#[test]
fn hash_reads_a_key_on_stdin() {
    let hash = |stdin: &[u8], args: &[&str]| {
        let mut all = vec!["hash"];
        all.extend_from_slice(args);
        keygate_with_stdin(&all, stdin)
    };
    assert_eq!(hash(b"abc", &[]).ok().stdout, format!("{ABC_SHA256}\n"));
    assert_eq!(hash(b"abc\n", &[]).ok().stdout, format!("{ABC_SHA256}\n"));
    assert_eq!(hash(b"abc\r\n", &[]).ok().stdout, format!("{ABC_SHA256}\n"));
    // The filter's default strip_prefixes: LabKey's legacy apikey| prefix.
    assert_eq!(
        hash(b"apikey|abc\n", &[]).ok().stdout,
        format!("{ABC_SHA256}\n")
    );
    assert_eq!(
        hash(b"apikey|abc\n", &["--no-strip"]).ok().stdout,
        format!("{}\n", KeyHash::of_key("apikey|abc").to_hex())
    );
    assert_eq!(
        hash(
            b"old:abc",
            &["--strip-prefix", "old:", "--strip-prefix", "x"]
        )
        .ok()
        .stdout,
        format!("{ABC_SHA256}\n")
    );
    let issued_like = "kg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    assert_eq!(
        hash(issued_like.as_bytes(), &[]).ok().stdout,
        format!("{}\n", KeyHash::of_key(issued_like).to_hex())
    );

    for bad in [
        &b""[..],
        b"\n",
        b"two words\n",
        b" abc\n",
        b"abc\n\n",
        b"a\tb",
    ] {
        let run = hash(bad, &[]).failed();
        assert_eq!(run.stdout, "", "{bad:?}");
    }
    assert!(hash(b"", &[]).failed().stderr.contains("no key on stdin"));
    let huge = "k".repeat(64 * 1024 + 1);
    assert!(hash(huge.as_bytes(), &[])
        .failed()
        .stderr
        .contains("give one key"));
    let largest = "k".repeat(64 * 1024);
    assert_eq!(
        hash(largest.as_bytes(), &[]).ok().stdout,
        format!("{}\n", KeyHash::of_key(&largest).to_hex())
    );
    assert_eq!(hash(b"abc", &["--no-strip", "--strip-prefix", "x"]).code, 2);
}

// ---------------------------------------------------------------------------------------
// check

fn write_config(dir: &Scratch, name: &str, config: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

#[test]
fn check_accepts_a_config_made_from_the_key_file() {
    let (dir, keys) = key_file("check");
    new_scoped_key(&keys, "alice", "browse", "30d", &[]);
    new_key(
        &keys,
        &["--owner", "bob", "--expires-in", "never", "--read-only"],
    );
    let config = json!({
        "keys": records(&keys),
        "rules": [
            {"path_prefix": "/healthz", "public": true},
            {"path_prefix": "/data/query", "scopes": ["browse"]}
        ]
    });
    let path = write_config(&dir, "config.json", &config);
    assert_eq!(check_ok(&path), "ok: 2 keys, 2 rules\n");
}

/// Configs that take their keys from `keygate serve` are checked the same way.
#[test]
fn check_accepts_key_service_configs() {
    let dir = Scratch::new("check-remote");
    let rules = json!([{"path_prefix": "/data", "scopes": ["browse"]}]);
    let key_set = json!({"key_set": {"cluster": "keyservice", "path": "/v1/keyset",
        "authority": "keyservice", "refresh_seconds": 30, "timeout_ms": 2000}, "rules": rules});
    let path = write_config(&dir, "key_set.json", &key_set);
    assert_eq!(
        check_ok(&path),
        "ok: key set fetched over HTTP (key_set), 1 rule\n"
    );
    let lookup = json!({"lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}",
        "authority": "keyservice", "cache_seconds": 60, "negative_cache_seconds": 10,
        "timeout_ms": 1000}, "rules": rules});
    let path = write_config(&dir, "lookup.json", &lookup);
    assert_eq!(
        check_ok(&path),
        "ok: keys looked up one by one (lookup), 1 rule\n"
    );
}

#[test]
fn check_names_every_problem_by_field() {
    let dir = Scratch::new("check-bad");
    let config = json!({
        "keys": [
            {"id": "a", "hash": KeyHash::of_key("a").to_hex(), "owner": "alice"},
            {"id": "a", "hash": KeyHash::of_key("b").to_hex(), "owner": "bob"}
        ],
        "rules": [{"path_prefix": "/data"}],
        "realm": "bad\"realm"
    });
    let path = write_config(&dir, "bad.json", &config);
    let run = check_fails(&path);
    let shown = path.display().to_string();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    for line in &lines {
        assert!(line.starts_with(&format!("{shown}: ")), "{line}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("{shown}: realm: "))));
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("{shown}: rules[0]: "))));
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("{shown}: keys[1].id: duplicate id"))));
    assert_eq!(
        run.stderr,
        format!("keygate: {shown}: 3 problems: the filter would refuse this configuration\n")
    );

    let unknown = write_config(&dir, "unknown.json", &json!({"keys": [], "rulez": []}));
    let run = check_fails(&unknown);
    assert!(run.stdout.contains("rulez"), "{run:?}");
    assert!(run.stderr.contains("1 problem: "), "{run:?}");

    let not_json = dir.join("not.json");
    std::fs::write(&not_json, "keys: []").unwrap();
    check_fails(&not_json);

    let missing = dir.join("missing.json");
    let run = check_fails(&missing);
    assert!(
        run.stderr
            .starts_with(&format!("keygate: {}: cannot read: ", missing.display())),
        "{run:?}"
    );
    assert_eq!(run.stdout, "");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(keygate(&[]).code, 2);
    assert_eq!(keygate(&["frobnicate"]).code, 2);
    assert_eq!(keygate(&["list", "--kyes", "k.json"]).code, 2);
    assert_eq!(keygate(&["revoke", "--keys", "k.json"]).code, 2);
    let help = keygate(&["--help"]).ok().stdout;
    for command in [
        "new", "list", "disable", "enable", "revoke", "hash", "check", "serve",
    ] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn check_key_tells_the_key_format_without_showing_the_key() {
    let (_dir, keys) = key_file("check-key");
    let issued = new_key(&keys, &["--owner", "o", "--expires-in", "7d"]);
    let line = |key: &str| format!("{key}\n").into_bytes();
    let good = keygate_with_stdin(&["check-key"], &line(&issued.api_key)).ok();
    assert_eq!(good.stdout, "well formed: prefix kg, checksum valid\n");

    let mut typo = issued.api_key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let bad = keygate_with_stdin(&["check-key"], &line(&typo)).failed();
    assert!(
        bad.stderr
            .contains("malformed: prefix kg, but the checksum does not match"),
        "{bad:?}"
    );
    let cut = keygate_with_stdin(&["check-key"], &line(&issued.api_key[..30])).failed();
    assert!(cut.stderr.contains("malformed: prefix kg"), "{cut:?}");
    let legacy = keygate_with_stdin(&["check-key"], b"apikey|0123456789abcdef\n").failed();
    assert!(
        legacy.stderr.contains("not of the key format"),
        "{legacy:?}"
    );
    // Other prefixes on demand; an issued key of another prefix is well formed under it.
    let acme = new_key(
        &keys,
        &["--owner", "o", "--expires-in", "7d", "--prefix", "acme"],
    );
    keygate_with_stdin(&["check-key", "--prefix", "acme"], &line(&acme.api_key)).ok();
    keygate_with_stdin(&["check-key"], &line(&acme.api_key)).failed();

    for run in [&bad, &cut, &legacy] {
        assert!(!run.stderr.contains(&typo) && !run.stdout.contains(&typo));
    }
    // A key given as an argument is refused, and not echoed.
    let run = keygate(&["check-key", &issued.api_key]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!run.stderr.contains(&issued.api_key), "{run:?}");
}
