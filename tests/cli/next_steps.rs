//! What a new user runs into (issue #15): the key file's default, and errors that say what
//! to do next. Each checks the exact line on stderr.

use keygate_testkit::cli as cli_support;

use cli_support::{
    key_file, keygate, keygate_in, keygate_on, keygate_with_stdin, new_key, new_scoped_key, record,
    Run, Scratch,
};
use keygate_core::record::KeyHash;
use serde_json::json;
use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A command line that does not parse: exit 2, one `keygate: ` line.
fn usage_error(run: Run) -> String {
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.starts_with("keygate: "), "{run:?}");
    run.stderr
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Three records with ids chosen to share prefixes.
fn three_keys(keys: &Path) {
    let doc = json!({"keys": [
        {"id": "alpha-1", "hash": KeyHash::of_key("a").to_hex(), "owner": "alice"},
        {"id": "alpha-2", "hash": KeyHash::of_key("b").to_hex(), "owner": "bob"},
        {"id": "beta", "hash": KeyHash::of_key("c").to_hex(), "owner": "carol"}
    ]});
    std::fs::write(keys, doc.to_string()).unwrap();
}

// ---------------------------------------------------------------------------------------
// The key file: --keys, else KEYGATE_KEYS, else keys.json here

#[test]
fn keys_json_here_is_the_default() {
    let dir = Scratch::new("default-keys");
    let here = |args: &[&str]| keygate_in(dir.path(), None, args);
    let run = here(&["list"]).failed();
    assert_eq!(
        run.stderr,
        "keygate: keys.json: no such file: `keygate new --keys keys.json` creates it (--keys or \
         KEYGATE_KEYS names another)\n"
    );
    let run = here(&["new", "--owner", "alice", "--expires-in", "7d"]).ok();
    assert!(run.stdout.contains("\"api_key\""), "{run:?}");
    assert_eq!(names(dir.path()), ["keys.json", "keys.json.lock"]);
    let listed = here(&["list"]).ok().stdout;
    assert!(listed.lines().nth(1).unwrap().contains("alice"), "{listed}");
    let help = keygate(&["new", "--help"]).ok().stdout;
    assert!(
        help.contains("[env: KEYGATE_KEYS=") && help.contains("[default: keys.json]"),
        "{help}"
    );
}

#[test]
fn keygate_keys_names_the_file_and_keys_overrides_it() {
    let dir = Scratch::new("env-keys");
    let other = dir.join("other.json");
    let with_env = |args: &[&str]| keygate_in(dir.path(), Some(p(&other)), args);
    with_env(&["new", "--owner", "bob", "--expires-in", "never"]).ok();
    assert!(other.exists() && !dir.join("keys.json").exists());
    assert!(with_env(&["list"]).ok().stdout.contains("bob"));
    // --keys wins over the environment.
    let explicit = dir.join("explicit.json");
    with_env(&[
        "new",
        "--owner",
        "carol",
        "--expires-in",
        "7d",
        "--keys",
        p(&explicit),
    ])
    .ok();
    assert!(!with_env(&["list"]).ok().stdout.contains("carol"));
    assert!(keygate(&["list", "--keys", p(&explicit)])
        .ok()
        .stdout
        .contains("carol"));

    let run = keygate_in(dir.path(), Some(""), &["list"]);
    assert_eq!(
        usage_error(run),
        "keygate: KEYGATE_KEYS is set but empty: set it to the key file, or unset it to use \
         keys.json\n"
    );
}

// ---------------------------------------------------------------------------------------
// A file that is not a key file

#[test]
fn list_json_fed_back_as_a_key_file_is_named() {
    let (dir, keys) = key_file("list-json-back");
    new_key(&keys, &["--owner", "alice", "--expires-in", "7d"]);
    let listed = dir.join("listed.json");
    let out = keygate(&["list", "--json", "--keys", p(&keys)]).ok().stdout;
    std::fs::write(&listed, out).unwrap();
    for args in [
        vec!["list"],
        vec!["new", "--owner", "o", "--expires-in", "7d"],
    ] {
        let run = keygate_on(&listed, &args).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {}: a JSON list of records (what `keygate list --json` prints), not \
                 a key file: a key file is a JSON object, {{\"keys\": [...]}}; put the list in \
                 one as its \"keys\"\n",
                listed.display()
            ),
            "{args:?}"
        );
    }
}

#[test]
fn not_a_key_file_says_what_it_is_and_what_one_looks_like() {
    let (_dir, keys) = key_file("not-a-key-file");
    let shown = keys.display().to_string();
    let cases = [
        (
            "[]",
            "an empty JSON list, not a key file: a key file is a JSON object, {\"keys\": [...]}; \
             with no key: {\"keys\": []}"
                .to_string(),
        ),
        (
            "not json",
            "not JSON: a key file is a JSON object, {\"keys\": [...]}".to_string(),
        ),
        (
            "",
            format!(
                "empty: a key file is a JSON object, {{\"keys\": [...]}} ({{\"keys\": []}} holds \
                 no key yet); if a redirect such as `> {shown}` emptied it, restore it from a \
                 copy"
            ),
        ),
        (
            "\"keys\"",
            "a JSON string, not a key file: a key file is a JSON object, {\"keys\": [...]}"
                .to_string(),
        ),
        (
            "{\"keys\": [",
            "cut short: the JSON ends at line 1 column 10 before the document does".to_string(),
        ),
        (
            "{\"keys\": [1]}",
            "keys[0]: invalid type: integer `1`, expected a key record: an object with id, hash \
             and owner at line 1 column 11"
                .to_string(),
        ),
    ];
    for (content, problem) in cases {
        std::fs::write(&keys, content).unwrap();
        let run = keygate(&["list", "--keys", p(&keys)]).failed();
        assert_eq!(
            run.stderr,
            format!("keygate: {shown}: {problem}\n"),
            "{content}"
        );
        assert!(!run.stderr.contains("struct"), "{run:?}");
    }
}

#[test]
fn a_missing_directory_is_named_and_nothing_is_made() {
    let dir = Scratch::new("no-dir");
    let keys = dir.join("no-such-dir/keys.json");
    for args in [
        vec!["new", "--owner", "o", "--expires-in", "7d"],
        vec!["list"],
        vec!["disable", "x"],
        vec!["revoke", "x"],
    ] {
        let run = keygate_on(&keys, &args).failed();
        let missing = dir.join("no-such-dir");
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {}: no directory {}: create it (mkdir -p {}), or give another --keys\n",
                keys.display(),
                missing.display(),
                missing.display()
            ),
            "{args:?}"
        );
        assert!(names(dir.path()).is_empty(), "{args:?}");
    }
}

#[test]
fn a_directory_as_the_key_file_leaves_no_lock_behind() {
    let dir = Scratch::new("dir-as-keys");
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    for args in [
        vec!["new", "--owner", "o", "--expires-in", "7d"],
        vec!["list"],
        vec!["enable", "x"],
    ] {
        let run = keygate_on(&keys, &args).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {}: a directory, not a key file: name the file, e.g. --keys {}\n",
                keys.display(),
                keys.join("keys.json").display()
            ),
            "{args:?}"
        );
        assert_eq!(names(dir.path()), ["keys"], "{args:?}");
        assert!(names(&keys).is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Ids: whole, or a unique prefix

#[test]
fn a_unique_prefix_names_a_key() {
    let (_dir, keys) = key_file("prefix");
    three_keys(&keys);
    let run = keygate(&["disable", "alpha-2", "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, "disabled alpha-2\n");
    let run = keygate(&["revoke", "be", "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, "revoked beta\n");
    assert!(record(&keys, "beta").is_none());
    let run = keygate(&["enable", "alpha-2", "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, "enabled alpha-2\n");

    // And with the UUIDs `keygate new` makes: eight characters are plenty.
    let issued = new_key(&keys, &["--owner", "dave", "--expires-in", "7d"]);
    let run = keygate(&["disable", &issued.id[..8], "--keys", p(&keys)]).ok();
    assert_eq!(run.stdout, format!("disabled {}\n", issued.id));
    assert_eq!(record(&keys, &issued.id).unwrap()["status"], "disabled");
}

#[test]
fn an_ambiguous_or_unknown_id_points_to_list() {
    let (_dir, keys) = key_file("prefix-errors");
    three_keys(&keys);
    let before = std::fs::read(&keys).unwrap();
    let shown = keys.display().to_string();
    for command in ["disable", "enable", "revoke"] {
        let run = keygate(&[command, "alpha", "--keys", p(&keys)]).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {shown}: 2 keys have an id starting with \"alpha\" (alpha-1, alpha-2): \
                 give more of the id (`keygate list --keys {shown}` shows the ids)\n"
            ),
            "{command}"
        );
        let run = keygate(&[command, "gamma", "--keys", p(&keys)]).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: {shown}: no key with id \"gamma\", nor one whose id starts with it \
                 (`keygate list --keys {shown}` shows the ids)\n"
            ),
            "{command}"
        );
        let run = keygate(&[command, "", "--keys", p(&keys)]).failed();
        assert_eq!(
            run.stderr,
            format!(
                "keygate: no id given: name the key by its id, or the start of it (`keygate \
                 list --keys {shown}` shows the ids)\n"
            ),
            "{command}"
        );
        assert_eq!(std::fs::read(&keys).unwrap(), before, "{command}");
    }
}

// ---------------------------------------------------------------------------------------
// Arguments

#[test]
fn scopes_with_spaces_after_commas_are_trimmed() {
    let (_dir, keys) = key_file("scopes-trimmed");
    let issued = new_scoped_key(&keys, "alice", "browse, download", "7d", &[]);
    assert_eq!(
        record(&keys, &issued.id).unwrap()["scopes"],
        json!(["browse", "download"])
    );
}

#[test]
fn hash_given_a_key_as_an_argument_points_to_stdin_without_echoing_it() {
    for args in [
        vec!["hash", "kg_s3cret"],
        vec!["hash", "--no-strip", "kg_s3cret"],
        vec!["hash", "-kg_s3cret"],
    ] {
        let run = keygate_with_stdin(&args, b"abc\n");
        let line = usage_error(run);
        assert_eq!(
            line,
            "keygate: hash reads the key on stdin, not from the command line: keygate hash < \
             key.txt, or printf '%s\\n' \"$KEY\" | keygate hash\n",
            "{args:?}"
        );
        assert!(!line.contains("s3cret"));
    }
    // A mistyped option is not a key: it is named.
    assert_eq!(
        usage_error(keygate_with_stdin(&["hash", "--no-stirp"], b"abc\n")),
        "keygate: unexpected argument '--no-stirp' found: hash takes --strip-prefix PREFIX or \
         --no-strip, and reads the key on stdin (see keygate hash --help)\n"
    );
}

#[test]
fn listen_given_a_bare_port_asks_for_host_and_port() {
    let (_dir, keys) = key_file("listen-port");
    std::fs::write(&keys, r#"{"keys": []}"#).unwrap();
    for (given, port) in [("8081", 8081), (":9000", 9000)] {
        let run = keygate(&["serve", "--keys", p(&keys), "--listen", given]);
        assert_eq!(
            usage_error(run),
            format!(
                "keygate: invalid value '{given}' for '--listen <ADDR>': give HOST:PORT, e.g. \
                 127.0.0.1:{port} (this machine only) or 0.0.0.0:{port} (every interface); see \
                 keygate serve --help\n"
            )
        );
    }
}

#[test]
fn usage_errors_are_one_keygate_line() {
    assert_eq!(
        usage_error(keygate(&["frobnicate"])),
        "keygate: unrecognized subcommand 'frobnicate' (a similar subcommand exists: 'rotate'); usage: keygate <COMMAND> (see keygate \
         --help)\n"
    );
    assert_eq!(
        usage_error(keygate(&["new", "--owner", "o"])),
        "keygate: the following required arguments were not provided: --expires-in \
         <DURATION>; usage: keygate new --owner <OWNER> --expires-in <DURATION> (see keygate \
         new --help)\n"
    );
    assert_eq!(
        usage_error(keygate(&["list", "--kyes", "k.json"])),
        "keygate: unexpected argument '--kyes' found (a similar argument exists: '--keys'); \
         usage: keygate list --keys <FILE> (see keygate list --help)\n"
    );
    assert_eq!(
        usage_error(keygate(&["revoke"])),
        "keygate: the following required arguments were not provided: <ID>; usage: keygate \
         revoke <ID> (see keygate revoke --help)\n"
    );
    usage_error(keygate(&["serve", "--threads", "0"]));
    usage_error(keygate(&["hash", "--no-strip", "--strip-prefix", "x"]));
}
