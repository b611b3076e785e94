//! `keygate check CONFIG` (README "Checking a configuration"): a plugin configuration, read
//! by the filter's own parser. CONFIG is a JSON configuration, `-` for stdin, or an Envoy
//! (or Kubernetes) YAML holding keygate's configuration: every keygate filter in it is
//! checked. A key file is recognized and named as such. `--emit-envoy` prints a checked
//! JSON configuration as the Envoy filter that loads it.

use crate::error::{Error, Result};
use keygate_core::config::{Config, KeySource};
use keygate_core::error::ConfigError;
use keygate_core::record::KeySetDoc;
use serde_yaml::Value as Yaml;
use std::io::Read;
use std::path::Path;

/// One keygate configuration found in the input, and where.
struct Found {
    /// Where in a YAML document the configuration is (empty for a JSON file).
    at: String,
    json: Vec<u8>,
}

/// On success one line per configuration, then its warnings; otherwise every problem on
/// stdout as `CONFIG: field: message` (the findings, like a compiler's), then the failure
/// on stderr.
pub fn run(path: &Path, emit_envoy: bool) -> Result<()> {
    let (name, bytes) = read(path)?;
    let shown = Path::new(&name);
    if emit_envoy {
        return emit(shown, &bytes);
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let found = match first {
        Some(b'{') | Some(b'[') | None => {
            if let Some(what) = key_file(&bytes) {
                return Err(key_file_error(shown, &bytes, what));
            }
            vec![Found {
                at: String::new(),
                json: bytes,
            }]
        }
        Some(_) => from_yaml(shown, &bytes)?,
    };
    let mut problems = 0;
    for config in &found {
        let prefix = if config.at.is_empty() {
            name.clone()
        } else {
            format!("{name}: {}", config.at)
        };
        match Config::parse(&config.json) {
            Ok(parsed) => {
                let jwt = parsed.jwt.as_ref().map_or(String::new(), |jwt| {
                    format!(
                        ", and JWTs verified by jwt_authn (metadata {}.{})",
                        jwt.metadata_namespace, jwt.payload_key
                    )
                });
                println!(
                    "{prefix}: ok: {}, {}{jwt}",
                    keys(&parsed),
                    count(parsed.rules.rules.len(), "rule")
                );
                for warning in parsed.rules.warnings() {
                    println!("{prefix}: warning: {warning}");
                }
            }
            Err(errors) => {
                problems += errors.len();
                for problem in &errors {
                    println!("{prefix}: {problem}");
                }
            }
        }
    }
    if problems == 0 {
        Ok(())
    } else {
        Err(Error::at(
            shown,
            format!(
                "{}: the filter would refuse this configuration",
                count(problems, "problem")
            ),
        ))
    }
}

fn read(path: &Path) -> Result<(String, Vec<u8>)> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::new(format!("stdin: cannot read: {e}")))?;
        return Ok(("stdin".to_string(), bytes));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::at(path, format!("cannot read: {e}")))?;
    Ok((path.display().to_string(), bytes))
}

fn keys(config: &Config) -> String {
    match &config.keys {
        KeySource::Inline(set) => count(set.len(), "key"),
        KeySource::KeySet(_) => "key set fetched over HTTP (key_set)".to_string(),
        KeySource::Lookup(_) => "keys looked up one by one (lookup)".to_string(),
    }
}

/// What a JSON document is, when it is a key file rather than a plugin configuration: a
/// key-set document (`{"version": ..., "keys": [...]}`, keys.json) or a list of records
/// (`keygate list --json`).
fn key_file(bytes: &[u8]) -> Option<&'static str> {
    match serde_json::from_slice::<serde_json::Value>(bytes).ok()? {
        serde_json::Value::Object(fields)
            if fields.contains_key("version") || fields.contains_key("epoch") =>
        {
            Some("a key file (a key-set document, as keys.json)")
        }
        serde_json::Value::Array(items)
            if items
                .iter()
                .all(|i| i.get("hash").is_some() && i.get("owner").is_some()) =>
        {
            Some("a list of key records (as `keygate list --json` prints)")
        }
        _ => None,
    }
}

fn key_file_error(shown: &Path, bytes: &[u8], what: &str) -> Error {
    let records = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(items)) => {
            format!("{{\"keys\": {}}}", serde_json::Value::Array(items))
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    match KeySetDoc::parse(records.as_bytes()) {
        Ok(doc) => println!(
            "{}: {what} with {}; its records are valid",
            shown.display(),
            count(doc.keys.len(), "key")
        ),
        Err(problems) => {
            for problem in &problems {
                println!("{}: {problem}", shown.display());
            }
        }
    }
    Error::at(
        shown,
        format!(
            "this is {what}, not a plugin configuration: put its records under \"keys\" \
             of a configuration, or serve it with `keygate serve` (README \"From keys.json \
             to the filter\")"
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Envoy and Kubernetes YAML

/// Every keygate configuration in a YAML stream: the `configuration` of a wasm filter whose
/// root id (or name) is `keygate` (a bootstrap, an ECDS resource, a ConfigMap holding one),
/// an Istio `WasmPlugin`'s `pluginConfig`, an Envoy Gateway `EnvoyExtensionPolicy`'s
/// `wasm[].config`.
fn from_yaml(shown: &Path, bytes: &[u8]) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    walk_stream(bytes, "", &mut found)
        .map_err(|e| Error::at(shown, format!("neither JSON nor YAML: {e}")))?;
    if found.is_empty() && bytes.windows(16).any(|w| w == b"config_discovery") {
        return Err(Error::at(
            shown,
            "no keygate configuration here: this Envoy takes filter configuration through \
             extension config discovery (ECDS); check the resource it is served \
             (as envoy/keygate-ecds-filter.yaml)",
        ));
    }
    if found.is_empty() {
        return Err(Error::at(
            shown,
            "no keygate configuration found: looked for an envoy.filters.http.wasm filter \
             with root_id keygate, an Istio WasmPlugin and an Envoy Gateway \
             EnvoyExtensionPolicy named keygate",
        ));
    }
    Ok(found)
}

fn walk_stream(
    bytes: &[u8],
    at: &str,
    found: &mut Vec<Found>,
) -> std::result::Result<(), serde_yaml::Error> {
    let documents: Vec<Yaml> = serde_yaml::Deserializer::from_slice(bytes)
        .map(serde::Deserialize::deserialize)
        .collect::<std::result::Result<_, _>>()?;
    let several = documents.len() > 1;
    // Text inside a document (a ConfigMap's file) starts a new path after `: `.
    let base = if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    };
    for (i, doc) in documents.iter().enumerate() {
        let here = if several {
            format!("{base}document {}: ", i + 1)
        } else {
            base.clone()
        };
        walk(doc, &here, found);
    }
    Ok(())
}

fn str_at<'v>(value: &'v Yaml, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Yaml::as_str)
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() || at.ends_with(": ") || key.starts_with('[') {
        format!("{at}{key}")
    } else {
        format!("{at}.{key}")
    }
}

fn walk(value: &Yaml, at: &str, found: &mut Vec<Found>) {
    match value {
        Yaml::Mapping(map) => {
            if let Some(config) = keygate_configuration(value, at) {
                found.push(config);
                return;
            }
            let is_config_map = str_at(value, &["kind"]) == Some("ConfigMap");
            for (key, child) in map {
                let key = key.as_str().unwrap_or("?");
                let here = join(at, key);
                match child {
                    // A ConfigMap's data holds whole files: an Envoy bootstrap as text.
                    Yaml::String(text)
                        if key.ends_with(".yaml") || key.ends_with(".yml") || is_config_map =>
                    {
                        let _ = walk_stream(text.as_bytes(), &here, found);
                    }
                    _ => walk(child, &here, found),
                }
            }
        }
        Yaml::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &join(at, &format!("[{i}]")), found);
            }
        }
        Yaml::Tagged(tagged) => walk(&tagged.value, at, found),
        _ => {}
    }
}

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn keygate_configuration(value: &Yaml, at: &str) -> Option<Found> {
    // An Envoy wasm filter (its typed_config) loading keygate.
    if str_at(value, &["@type"]) == Some(WASM_FILTER) {
        let config = value.get("config")?;
        let named = [&["root_id"][..], &["name"], &["vm_config", "vm_id"]]
            .iter()
            .any(|p| str_at(config, p) == Some("keygate"));
        if !named {
            return None;
        }
        // Without a configuration the filter reads an empty one; the parser says so.
        let json = str_at(config, &["configuration", "value"]).unwrap_or_default();
        return Some(Found {
            at: join(at, "config.configuration.value"),
            json: json.as_bytes().to_vec(),
        });
    }
    match str_at(value, &["kind"]) {
        Some("WasmPlugin") if str_at(value, &["spec", "pluginName"]) == Some("keygate") => {
            let config = value.get("spec")?.get("pluginConfig");
            Some(Found {
                at: join(at, "spec.pluginConfig"),
                json: to_json(config),
            })
        }
        Some("EnvoyExtensionPolicy") => {
            let wasm = value.get("spec")?.get("wasm")?.as_sequence()?;
            let i = wasm.iter().position(|w| {
                str_at(w, &["rootID"]) == Some("keygate") || str_at(w, &["name"]) == Some("keygate")
            })?;
            Some(Found {
                at: join(at, &format!("spec.wasm[{i}].config")),
                json: to_json(wasm.get(i)?.get("config")),
            })
        }
        _ => None,
    }
}

/// A YAML configuration as the JSON the filter receives (Istio and Envoy Gateway convert it
/// so); a value JSON cannot hold becomes text the parser refuses.
fn to_json(config: Option<&Yaml>) -> Vec<u8> {
    match config {
        None => Vec::new(),
        Some(yaml) => serde_json::to_value(yaml)
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_else(|e| format!("not JSON: {e}").into_bytes()),
    }
}

// ---------------------------------------------------------------------------------------
// --emit-envoy

/// Prints a checked JSON configuration, as written, in the `http_filters` entry that loads
/// keygate with it (before the router), as envoy/keygate.yaml writes it.
fn emit(shown: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(what) = key_file(bytes) {
        return Err(key_file_error(shown, bytes, what));
    }
    if let Err(problems) = Config::parse(bytes) {
        return Err(refused(shown, &problems));
    }
    // The text as written (the parser accepted it, so it is UTF-8 JSON), in its layout.
    let text = String::from_utf8_lossy(bytes).replace('\r', "");
    let mut out = String::from(
        "# keygate in an HttpConnectionManager's http_filters, before envoy.filters.http.router\n\
         # (made by `keygate check --emit-envoy`; the configuration passed `keygate check`).\n\
         - name: envoy.filters.http.wasm\n  typed_config:\n",
    );
    out.push_str(&format!("    \"@type\": {WASM_FILTER}\n"));
    out.push_str(
        "    config:\n      name: keygate\n      root_id: keygate\n\
         \x20     # A filter that cannot load refuses traffic rather than letting it through.\n\
         \x20     failure_policy: FAIL_CLOSED\n      vm_config:\n        vm_id: keygate\n\
         \x20       runtime: envoy.wasm.runtime.v8\n        code:\n\
         \x20         local: { filename: target/wasm32-wasip1/release/keygate.wasm }\n\
         \x20     configuration:\n\
         \x20       \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20       value: |\n",
    );
    for line in text.trim().lines() {
        out.push_str("          ");
        out.push_str(line);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn refused(shown: &Path, problems: &[ConfigError]) -> Error {
    for problem in problems {
        println!("{}: {problem}", shown.display());
    }
    Error::at(
        shown,
        format!(
            "{}: the filter would refuse this configuration",
            count(problems.len(), "problem")
        ),
    )
}

fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}
