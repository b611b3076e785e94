//! `keygate check` (README "Checking a configuration"): JSON, stdin, the shipped Envoy and
//! Kubernetes YAML files, key files named as such, every structural problem at once,
//! unreachable rules warned about, and `--emit-envoy`.

use keygate_testkit::cli as cli_support;

use cli_support::{check_fails, check_ok, keygate, keygate_with_stdin, new_key, records, Scratch};
use keygate_core::record::KeyHash;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("envoy")
        .join(name)
}

fn write(dir: &Scratch, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const FILTER_AT: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
     http_filters[0].typed_config.config.configuration.value";

#[test]
fn the_shipped_envoy_and_kubernetes_files_check() {
    let cases = [
        ("keygate.yaml", format!("{FILTER_AT}: ok: 2 keys, 4 rules")),
        (
            "keygate-key-set.yaml",
            format!("{FILTER_AT}: ok: key set fetched over HTTP (key_set), 4 rules"),
        ),
        (
            "keygate-lookup.yaml",
            format!("{FILTER_AT}: ok: keys looked up one by one (lookup), 4 rules"),
        ),
        (
            "keygate-jwt.yaml",
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
             http_filters[1].typed_config.config.configuration.value: ok: 1 key, 1 rule, \
             and JWTs verified by jwt_authn (metadata envoy.filters.http.jwt_authn.jwt_payload)"
                .to_string(),
        ),
        (
            "keygate-ecds-filter.yaml",
            "resources[0].typed_config.config.configuration.value: ok: 2 keys, 4 rules".to_string(),
        ),
        (
            "compose/envoy.yaml",
            format!("{FILTER_AT}: ok: key set fetched over HTTP (key_set), 4 rules"),
        ),
        (
            "k8s/overlays/envoy/envoy.yaml",
            format!(
                "document 1: data.envoy.yaml: {FILTER_AT}: ok: key set fetched over HTTP \
                 (key_set), 4 rules"
            ),
        ),
        (
            "k8s/overlays/istio/istio-wasmplugin.yaml",
            "spec.pluginConfig: ok: 2 keys, 4 rules".to_string(),
        ),
        (
            "k8s/overlays/envoy-gateway/envoy-gateway.yaml",
            "document 2: spec.wasm[0].config: ok: 2 keys, 4 rules".to_string(),
        ),
    ];
    for (name, want) in cases {
        let path = shipped(name);
        assert_eq!(check_ok(&path), format!("{want}\n"), "{name}");
    }
    // The ECDS bootstrap holds no configuration: it says where it comes from.
    let run = check_fails(&shipped("keygate-ecds.yaml"));
    assert!(run.stderr.contains("(ECDS)"), "{run:?}");
    assert!(run.stderr.contains("keygate-ecds-filter.yaml"), "{run:?}");
}

#[test]
fn a_broken_configuration_inside_envoy_yaml_is_named_by_place_and_field() {
    let dir = Scratch::new("check-yaml");
    let yaml = std::fs::read_to_string(shipped("keygate.yaml")).unwrap();
    // Break two fields of the embedded JSON at once.
    let broken = yaml
        .replacen("\"unmatched\": \"deny\"", "\"unmatched\": \"allow\"", 1)
        .replacen("\"realm\": \"immport\"", "\"realm\": 7", 1);
    assert_ne!(broken, yaml, "the shipped file changed: update this test");
    let path = write(&dir, "envoy.yaml", &broken);
    let run = check_fails(&path);
    let shown = path.display();
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            format!("{shown}: {FILTER_AT}: realm: invalid type: integer `7`, expected a string"),
            format!("{shown}: {FILTER_AT}: unmatched: unknown variant `allow`, expected `deny` or `authenticate`"),
        ],
        "{run:?}"
    );
    assert_eq!(
        run.stderr,
        format!("keygate: {shown}: 2 problems: the filter would refuse this configuration\n")
    );
    // YAML with no keygate filter in it.
    let path = write(&dir, "other.yaml", "static_resources:\n  listeners: []\n");
    let run = check_fails(&path);
    assert!(
        run.stderr.contains("no keygate configuration found"),
        "{run:?}"
    );
    // Neither JSON nor YAML.
    let path = write(&dir, "bad.yaml", "a: [1, 2\n");
    let run = check_fails(&path);
    assert!(run.stderr.contains("neither JSON nor YAML"), "{run:?}");
}

#[test]
fn every_structural_problem_is_reported_not_the_first() {
    let dir = Scratch::new("check-all");
    let config = json!({
        "keys": [
            {"id": "a", "hash": "ABC", "owner": "alice"},
            {"id": "b", "hash": KeyHash::of_key("b").to_hex()}
        ],
        "rulez": [],
        "rules": [{"path": "/a", "scopes": "browse"}],
        "hide_credentials": "yes"
    });
    let path = write(&dir, "c.json", &config.to_string());
    let run = check_fails(&path);
    let shown = path.display().to_string();
    let fields: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| {
            let rest = l.strip_prefix(&format!("{shown}: ")).unwrap();
            rest.split(':').next().unwrap()
        })
        .collect();
    assert_eq!(
        fields,
        [
            "hide_credentials",
            "keys[0].hash",
            "keys[1]",
            "rules[0].scopes",
            "rulez"
        ],
        "{run:?}"
    );
    assert!(run.stderr.contains("5 problems"), "{run:?}");
}

#[test]
fn stdin_is_read_for_dash() {
    let good = json!({"keys": [], "rules": [{"path_prefix": "/a", "scopes": ["x"]}]});
    let run = keygate_with_stdin(&["check", "-"], good.to_string().as_bytes()).ok();
    assert_eq!(run.stdout, "stdin: ok: 0 keys, 1 rule\n");
    let yaml = std::fs::read(shipped("keygate.yaml")).unwrap();
    let run = keygate_with_stdin(&["check", "-"], &yaml).ok();
    assert_eq!(
        run.stdout,
        format!("stdin: {FILTER_AT}: ok: 2 keys, 4 rules\n")
    );
    let run = keygate_with_stdin(&["check", "-"], b"{\"keys\": [], \"bogus\": 1}").failed();
    assert!(
        run.stdout.starts_with("stdin: bogus: unknown field"),
        "{run:?}"
    );
    assert!(
        run.stderr.starts_with("keygate: stdin: 1 problem: "),
        "{run:?}"
    );
}

#[test]
fn a_key_file_is_recognized_and_named() {
    let dir = Scratch::new("check-keys");
    let keys = dir.join("keys.json");
    new_key(&keys, &["--owner", "alice", "--expires-in", "never"]);
    let run = check_fails(&keys);
    assert_eq!(
        run.stdout,
        format!(
            "{}: a key file (a key-set document, as keys.json) with 1 key; its records are valid\n",
            keys.display()
        )
    );
    assert!(run.stderr.contains("not a plugin configuration"), "{run:?}");
    assert!(run.stderr.contains("\"keys\""), "{run:?}");

    let list = write(
        &dir,
        "records.json",
        &Value::Array(records(&keys)).to_string(),
    );
    let run = check_fails(&list);
    assert!(run.stdout.contains("a list of key records"), "{run:?}");

    // A key file with a bad record: the record's problem is named too.
    let bad = write(
        &dir,
        "bad-keys.json",
        r#"{"version": "3", "keys": [{"id": "a", "hash": "ABC", "owner": "o"}]}"#,
    );
    let run = check_fails(&bad);
    assert!(run.stdout.contains(": keys[0].hash: "), "{run:?}");
    assert!(run.stderr.contains("a key file"), "{run:?}");
}

#[test]
fn an_unreachable_rule_is_warned_about_but_accepted() {
    let dir = Scratch::new("check-warn");
    let config = json!({
        "keys": [],
        "rules": [
            {"path_prefix": "/admin", "scopes": ["admin"]},
            {"path": "/admin/users", "methods": ["GET"], "scopes": ["browse"]}
        ]
    });
    let path = write(&dir, "c.json", &config.to_string());
    assert_eq!(
        check_ok(&path),
        "ok: 0 keys, 2 rules\nwarning: rules[1]: is unreachable: rules[0] matches every \
         request it matches (path \"/admin/users\", methods GET) first\n"
    );
}

#[test]
fn emit_envoy_renders_a_checked_configuration_that_checks_again() {
    let dir = Scratch::new("check-emit");
    let text = "{\n  \"realm\": \"immune\",\n  \"sources\": [{\"authorization\": {\"schemes\": [\"ApiKey\"]}}],\n  \"keys\": [],\n  \"rules\": [{\"path_prefix\": \"/v1/sensors\", \"methods\": [\"GET\"], \"scopes\": [\"sensors:read\"]}]\n}\n";
    let path = write(&dir, "immune.json", text);
    let yaml = keygate(&["check", "--emit-envoy", p(&path)]).ok().stdout;
    assert!(yaml.contains("- name: envoy.filters.http.wasm\n"), "{yaml}");
    assert!(yaml.contains("root_id: keygate\n"), "{yaml}");
    assert!(yaml.contains("failure_policy: FAIL_CLOSED\n"), "{yaml}");
    // The configuration as written, as a block scalar.
    let block: String = text.lines().map(|l| format!("          {l}\n")).collect();
    assert!(
        yaml.ends_with(&format!("        value: |\n{block}")),
        "{yaml}"
    );
    let emitted = write(&dir, "filter.yaml", &yaml);
    assert_eq!(
        check_ok(&emitted),
        "[0].typed_config.config.configuration.value: ok: 0 keys, 1 rule\n"
    );
    // A configuration the filter would refuse is not rendered.
    let bad = write(
        &dir,
        "bad.json",
        "{\"keys\": [], \"rules\": [{\"path\": \"/a\"}]}",
    );
    let run = keygate(&["check", "--emit-envoy", p(&bad)]).failed();
    assert!(!run.stdout.contains("envoy.filters.http.wasm"), "{run:?}");
    assert!(run.stdout.contains("rules[0]: has no scopes"), "{run:?}");
}
