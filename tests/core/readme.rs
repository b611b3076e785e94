//! The README's configuration examples are real: each block marked `keygate-config` is
//! accepted by the filter's own parser, and its example keys do what the text says.

use base64::Engine;
use keygate_core::config::{Config, KeySource};
use keygate_core::decision::{begin_with_token, decide, Step, Verdict};
use keygate_core::jwt::Claims;
use keygate_core::timestamp::Timestamp;

fn readme_configs() -> Vec<Config> {
    let readme = include_str!("../../README.md");
    let mut configs = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match &mut block {
            None if line.trim() == "```json keygate-config" => block = Some(String::new()),
            None => {}
            Some(text) if line.trim() == "```" => {
                match Config::parse(text.as_bytes()) {
                    Ok(config) => configs.push(config),
                    Err(errors) => panic!("README config refused: {errors:?}\n{text}"),
                }
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    configs
}

fn status(config: &Config, method: &str, path: &str, authorization: &str) -> u16 {
    let headers = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (
            "authorization".to_string(),
            authorization.as_bytes().to_vec(),
        ),
    ];
    let now = || Timestamp::parse_rfc3339("2026-11-23T12:00:00Z").unwrap();
    match decide(config, &headers, now) {
        Verdict::Allow(_) => 200,
        Verdict::Deny(denial) => {
            keygate_core::response::render(&config.realm, &config.sources, &denial).status as u16
        }
    }
}

/// A GET with one `Authorization` value and, maybe, the claims jwt_authn verified.
fn status_with_token(
    config: &Config,
    path: &str,
    authorization: &str,
    token: Option<Claims<'_>>,
) -> u16 {
    let headers = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (
            "authorization".to_string(),
            authorization.as_bytes().to_vec(),
        ),
    ];
    let verdict = match begin_with_token(config, &headers, token) {
        Step::Done(verdict) => verdict,
        Step::Key(check) => match &config.keys {
            KeySource::Inline(set) => {
                let record = set.get(&check.hash);
                check.finish(config, record, || {
                    Timestamp::parse_rfc3339("2026-11-23T12:00:00Z").unwrap()
                })
            }
            _ => check.unavailable(config),
        },
    };
    match verdict {
        Verdict::Allow(_) => 200,
        Verdict::Deny(denial) => {
            keygate_core::response::render(&config.realm, &config.sources, &denial).status as u16
        }
    }
}

#[test]
fn every_readme_config_parses_and_its_keys_work() {
    let configs = readme_configs();
    assert_eq!(
        configs.len(),
        8,
        "ImmPort, LabKey, IMMUNE, IMMUNE with JWTs, VSPC, key_set, lookup, usage"
    );
    let [immport, labkey, immune, immune_jwt, vspc, fetched, lookup, usage] = &configs[..] else {
        unreachable!()
    };
    assert!(matches!(fetched.keys, KeySource::KeySet(_)));
    assert!(matches!(lookup.keys, KeySource::Lookup(_)));
    assert!(usage.usage.is_some() && fetched.usage.is_none());
    // With no set to read, a protected route cannot be decided here: 503.
    assert_eq!(status(fetched, "GET", "/data/query/x", "Bearer k"), 503);
    assert_eq!(status(fetched, "GET", "/healthz", ""), 200);

    let browse = "Bearer kg_example_browse_key_replace_me";
    assert_eq!(
        status(
            immport,
            "GET",
            "/data/query/study?studyAccession=SDY1",
            browse
        ),
        200
    );
    assert_eq!(status(immport, "POST", "/data/upload/x", browse), 403);
    let upload = "Bearer kg_example_upload_key_replace_me";
    assert_eq!(status(immport, "PUT", "/data/upload/x", upload), 200);

    let netrc = base64::engine::general_purpose::STANDARD
        .encode("apikey:apikey|labkey_example_key_replace_me");
    let netrc = format!("Basic {netrc}");
    assert_eq!(
        status(labkey, "GET", "/labkey/query/home/selectRows.api", &netrc),
        200
    );
    let password = base64::engine::general_purpose::STANDARD.encode("alice:secret");
    assert_eq!(
        status(labkey, "GET", "/labkey/x", &format!("Basic {password}")),
        401
    );

    let immune_key = "ApiKey immune_example_key_replace_me";
    assert_eq!(status(immune, "GET", "/v1/sensors", immune_key), 200);
    assert_eq!(status(immune, "DELETE", "/v1/sensors", immune_key), 403);

    // IMMUNE with JWTs: the key as before; a token by its verified claims.
    assert!(immune.jwt.is_none() && immune_jwt.jwt.is_some());
    assert_eq!(status(immune_jwt, "GET", "/v1/sensors", immune_key), 200);
    let token = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2ln";
    let verified = |scope: &'static str| {
        Some(Claims {
            subject: b"user-1",
            scope: Some(scope.as_bytes()),
        })
    };
    let with_token = |scope| status_with_token(immune_jwt, "/v1/sensors", token, verified(scope));
    assert_eq!(with_token("openid sensors:read"), 200);
    assert_eq!(with_token("openid"), 403);
    assert_eq!(
        status_with_token(immune_jwt, "/v1/sensors", token, None),
        401
    );
    assert_eq!(
        status_with_token(
            immune_jwt,
            "/v1/sensors",
            immune_key,
            verified("sensors:read")
        ),
        400
    );

    let vspc_key = "Bearer vspc_example_key_replace_me";
    assert_eq!(status(vspc, "GET", "/api/v3/companies", vspc_key), 200);
    assert_eq!(status(vspc, "POST", "/api/v3/companies", vspc_key), 403);
}
