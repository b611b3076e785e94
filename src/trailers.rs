//! Request trailers (README "What the upstream sees"). HTTP/2 lets a client send header
//! fields after the body, and Envoy hands them to an HTTP/2 upstream: an identity or a
//! credential sent there would reach it past every check made on the headers. keygate
//! removes them, on every route, whatever the verdict on the headers.

use crate::config::Config;
use crate::credential::Source;
use crate::decision::reads_as;

/// The trailers among `names` (as Envoy lists them) that must not reach the upstream:
/// keygate's forward headers and the credential headers (`authorization`, whether or not
/// a source reads it, and every header source), in any letter case and spelled with `_`
/// for `-`, as the header rules treat them.
pub fn to_remove<'t>(config: &Config, names: impl IntoIterator<Item = &'t str>) -> Vec<&'t str> {
    let forward = config.forward.names();
    let credentials = config.sources.iter().filter_map(|source| match source {
        Source::Header(name) => Some(name.as_str()),
        Source::Authorization { .. } | Source::Query(_) => None,
    });
    let hostile: Vec<&str> = forward
        .iter()
        .map(|name| name.as_str())
        .chain(["authorization"])
        .chain(credentials)
        .collect();
    let mut out: Vec<&'t str> = Vec::new();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if hostile.iter().any(|h| reads_as(&lower, h)) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(doc: serde_json::Value) -> Config {
        match Config::parse(doc.to_string().as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn base() -> serde_json::Value {
        json!({
            "sources": [{"authorization": {"schemes": ["Bearer"]}}, {"header": "x-api-key"},
                        {"query": "api_key"}],
            "keys": [],
            "rules": [{"path_prefix": "/", "public": true}]
        })
    }

    #[test]
    fn identities_and_credentials_are_removed_in_every_spelling() {
        let c = config(base());
        // Each name, and whether it is removed (in the order sent, each name once).
        let names = [
            ("x-api-key-id", true),
            ("x_api_key_owner", true),
            ("X-Api-Key-Scopes", true),
            ("x-api_key-id", true),
            ("authorization", true),
            ("Authorization", true),
            ("x-api-key", true),
            ("x_api_key", true),
            ("x-api-key-id", false), // already listed
            ("grpc-status", false),
            ("x-api-key-idx", false),
            ("api_key", false),
            ("x-checksum", false),
        ];
        let removed: Vec<&str> = names.iter().filter(|(_, r)| *r).map(|(n, _)| *n).collect();
        assert_eq!(to_remove(&c, names.map(|(n, _)| n)), removed);
        assert!(to_remove(&c, ["grpc-status", "x-checksum"]).is_empty());
    }

    #[test]
    fn configured_names_are_the_ones_removed() {
        let mut doc = base();
        doc["forward"] = json!({"id": "x-caller", "owner": "x-caller-owner",
                                "scopes": "x-caller-scopes"});
        doc["sources"] = json!([{"header": "apikey"}]);
        let c = config(doc);
        assert_eq!(
            to_remove(
                &c,
                [
                    "x-caller",
                    "x_caller_scopes",
                    "apikey",
                    "authorization",
                    "x-api-key-id"
                ]
            ),
            ["x-caller", "x_caller_scopes", "apikey", "authorization"]
        );
    }
}
