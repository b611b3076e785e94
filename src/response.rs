//! The answer to a refused request (README "Responses"): status, `WWW-Authenticate` (RFC 6750 §3) and
//! a JSON body saying why. Never mentions the key itself.

use crate::decision::Denial;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// Renders a denial. `realm` has been checked at load to need no escaping.
pub fn render(realm: &str, denial: &Denial<'_>) -> LocalResponse {
    let scope_text;
    let (status, error, description, challenge_error, scope): (u32, _, &str, _, _) = match denial {
        Denial::BadRequest(why) => (400, "invalid_request", why, Some("invalid_request"), None),
        Denial::Missing => (401, "unauthorized", "API key required", None, None),
        Denial::UnknownKey => (
            401,
            "invalid_token",
            "unknown API key",
            Some("invalid_token"),
            None,
        ),
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
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(e) = challenge_error {
            challenge.push_str(&format!(", error=\"{e}\""));
        }
        if let Some(s) = scope {
            challenge.push_str(&format!(", scope=\"{s}\""));
        }
        headers.push(("www-authenticate", challenge));
    }
    let body = serde_json::to_string(&Body {
        error,
        error_description: description,
    })
    .unwrap_or_else(|_| format!("{{\"error\":\"{error}\"}}"));
    LocalResponse {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
