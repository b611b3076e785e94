//! The answer to a refused request (README "Responses"): status, `WWW-Authenticate` (one
//! challenge per configured way to send a key, RFC 7235; Bearer's with RFC 6750 §3's
//! attributes) and a JSON body saying why. Never mentions the key itself.

use crate::config::Config;
use crate::credential::{Scheme, Source};
use crate::decision::Denial;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Renders a denial for a configuration reading keys from `sources`. `realm` has been
/// checked at load to need no escaping.
pub fn render(realm: &str, sources: &[Source], denial: &Denial<'_>) -> LocalResponse {
    render_with(realm, sources, false, denial)
}

/// Renders a denial for `config`: with `jwt`, the answer also names Bearer tokens (a
/// `Bearer` challenge, and `Authorization: Bearer (JWT)` among the ways accepted) when no
/// source reads Bearer keys.
pub fn render_for(config: &Config, denial: &Denial<'_>) -> LocalResponse {
    render_with(&config.realm, &config.sources, config.jwt.is_some(), denial)
}

fn render_with(
    realm: &str,
    sources: &[Source],
    tokens: bool,
    denial: &Denial<'_>,
) -> LocalResponse {
    // Bearer tokens the sources do not already name.
    let tokens = tokens && !reads_bearer(sources);
    let scope_text;
    let missing_text;
    let (status, error, description, challenge_error, scope): (u32, _, &str, _, _) = match denial {
        Denial::BadRequest(why) => (400, "invalid_request", why, Some("invalid_request"), None),
        Denial::Missing => {
            missing_text = format!("API key required; accepted: {}", accepted(sources, tokens));
            let desc: &str = &missing_text;
            (401, "unauthorized", desc, None, None)
        }
        Denial::UnknownKey => (
            401,
            "invalid_token",
            "unknown API key",
            Some("invalid_token"),
            None,
        ),
        Denial::MalformedKey => (
            401,
            "invalid_token",
            "malformed API key",
            Some("invalid_token"),
            None,
        ),
        Denial::InvalidToken(why) => (401, "invalid_token", why, Some("invalid_token"), None),
        Denial::Expired(_) => (
            401,
            "invalid_token",
            "API key expired",
            Some("invalid_token"),
            None,
        ),
        Denial::Disabled(_) => (
            401,
            "invalid_token",
            "API key disabled",
            Some("invalid_token"),
            None,
        ),
        Denial::MissingScope { needed, .. } => {
            let plural = if needed.contains(' ') {
                "scopes"
            } else {
                "scope"
            };
            scope_text = format!("requires {plural} {needed}");
            let desc: &str = &scope_text;
            (
                403,
                "insufficient_scope",
                desc,
                Some("insufficient_scope"),
                Some(*needed),
            )
        }
        Denial::ReadOnly(_) => (
            403,
            "insufficient_scope",
            "read-only API key may only use GET, HEAD and OPTIONS",
            Some("insufficient_scope"),
            None,
        ),
        Denial::ReadOnlyUpgrade(_) => (
            403,
            "insufficient_scope",
            "read-only API key may not upgrade the connection",
            Some("insufficient_scope"),
            None,
        ),
        Denial::MethodNotListed => (
            403,
            "insufficient_scope",
            "no rule allows this method on this path",
            Some("insufficient_scope"),
            None,
        ),
        Denial::NoRule => (
            403,
            "insufficient_scope",
            "no rule allows this route",
            Some("insufficient_scope"),
            None,
        ),
        Denial::Unavailable { .. } => (
            503,
            "temporarily_unavailable",
            "API keys are not available yet; retry later",
            None,
            None,
        ),
    };

    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    if let Denial::Unavailable {
        retry_after_seconds,
    } = denial
    {
        headers.push(("retry-after", retry_after_seconds.to_string()));
    } else {
        let challenge = challenges(realm, sources, tokens, challenge_error, scope);
        if !challenge.is_empty() {
            headers.push(("www-authenticate", challenge));
        }
    }
    let mut body = String::with_capacity(40 + error.len() + description.len());
    body.push_str("{\"error\":");
    crate::json::write_str(&mut body, error);
    body.push_str(",\"error_description\":");
    crate::json::write_str(&mut body, description);
    body.push('}');
    LocalResponse {
        status,
        headers,
        body,
    }
}

/// One challenge per way `sources` accept a key, in their order: `Bearer` (with RFC 6750's
/// `error` and `scope`), `ApiKey` and `Basic` for the Authorization schemes; for a key
/// header or query parameter, `ApiKey` with a `header` or `query` parameter naming it.
/// With `tokens`, a `Bearer` challenge for JWTs comes first.
fn challenges(
    realm: &str,
    sources: &[Source],
    tokens: bool,
    error: Option<&str>,
    scope: Option<&str>,
) -> String {
    let mut out = String::new();
    let mut add = |scheme: &str, params: &str| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(scheme);
        out.push_str(" realm=\"");
        out.push_str(realm);
        out.push('"');
        out.push_str(params);
    };
    let mut bearer_params = String::new();
    if let Some(e) = error {
        bearer_params.push_str(&format!(", error=\"{e}\""));
    }
    if let Some(s) = scope {
        bearer_params.push_str(&format!(", scope=\"{s}\""));
    }
    if tokens {
        add("Bearer", &bearer_params);
    }
    for source in sources {
        match source {
            Source::Authorization { schemes, .. } => {
                for scheme in schemes {
                    match scheme {
                        Scheme::Bearer => add("Bearer", &bearer_params),
                        Scheme::ApiKey | Scheme::Basic => add(scheme.name(), ""),
                    }
                }
            }
            Source::Header(name) => add("ApiKey", &format!(", header=\"{name}\"")),
            Source::Query(param) => add("ApiKey", &format!(", query={}", quoted(param))),
        }
    }
    out
}

/// Whether an `authorization` source takes the Bearer scheme.
fn reads_bearer(sources: &[Source]) -> bool {
    sources.iter().any(
        |s| matches!(s, Source::Authorization { schemes, .. } if schemes.contains(&Scheme::Bearer)),
    )
}

/// A quoted-string (RFC 9110 §5.6.4): `"` and `\` escaped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The ways `sources` accept a key, for a client that sent none of them:
/// `Authorization: Bearer, header x-api-key or query parameter api_key`.
fn accepted(sources: &[Source], tokens: bool) -> String {
    let mut ways: Vec<String> = Vec::new();
    for source in sources {
        match source {
            Source::Authorization {
                schemes,
                basic_username,
            } => {
                for scheme in schemes {
                    ways.push(match scheme {
                        Scheme::Basic => format!("Authorization: Basic (user {basic_username})"),
                        other => format!("Authorization: {}", other.name()),
                    });
                }
            }
            Source::Header(name) => ways.push(format!("header {name}")),
            Source::Query(param) => ways.push(format!("query parameter {param}")),
        }
    }
    if tokens {
        ways.push("Authorization: Bearer (JWT)".to_string());
    }
    match ways.split_last() {
        None => "none".to_string(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
