//! `--server URL`: the key commands through a key service's admin API (README "The key
//! service"), over HTTP or HTTPS (rustls; the system's roots plus `--ca-cert`). The admin
//! key is sent as a bearer token and never printed.

use crate::admin::{Admin, Audit, Create, Issued, Key};
use crate::error::{Error, Result};
use keygate_keyservice::secret;
use keygate_keyservice::store::{self, Status};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct Remote {
    base: String,
    admin_key: String,
    agent: ureq::Agent,
}

const NEEDS_ADMIN_KEY: &str = "set KEYGATE_ADMIN_KEY or give --admin-key-file FILE \
     (`keygate admin new --db PATH` on the key service's host makes one)";

fn read_admin_key(file: Option<&Path>) -> Result<String> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::at(path, format!("cannot read the admin key: {e}")))?,
        None => std::env::var("KEYGATE_ADMIN_KEY")
            .map_err(|_| Error::new(format!("--server needs an admin key: {NEEDS_ADMIN_KEY}")))?,
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(Error::new(format!(
            "the admin key is empty: {NEEDS_ADMIN_KEY}"
        )));
    }
    if key.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::new(format!(
            "the admin key holds spaces or control characters: {NEEDS_ADMIN_KEY}"
        )));
    }
    Ok(key)
}

fn tls_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots; one that cannot be read is skipped (a --ca-cert may be enough).
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::at(path, format!("cannot read the CA certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::at(path, "no PEM certificate in it"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::at(path, format!("not a usable CA certificate: {e}")))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| Error::new(format!("cannot set up TLS: {e}")))
}

#[derive(Deserialize)]
struct ApiError {
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
struct KeyPage {
    keys: Vec<Key>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct AuditPage {
    entries: Vec<Audit>,
}

#[derive(Deserialize)]
struct Revoked {
    revoked: u64,
}

/// Characters kept as they are in a query value or path segment.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether the authority of an `http://` URL (what follows the scheme) names this machine.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Remote {
    pub fn connect(
        url: &str,
        admin_key_file: Option<&Path>,
        ca_cert: Option<&Path>,
    ) -> Result<Remote> {
        let base = url.trim_end_matches('/').to_string();
        let has_host = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
        if !has_host {
            return Err(Error::new(format!(
                "--server {url:?}: give the key service's URL, such as \
                 https://keys.example.org:8081"
            )));
        }
        if let Some(rest) = base.strip_prefix("http://") {
            if !is_loopback(rest) {
                return Err(Error::new(format!(
                    "--server {url:?}: plain http would send the admin key across the network \
                     unencrypted; use https:// (plain http is for 127.0.0.1, localhost or [::1] \
                     only)"
                )));
            }
        }
        let admin_key = read_admin_key(admin_key_file)?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls_config(ca_cert)?))
            .timeout(Duration::from_secs(30))
            .build();
        Ok(Remote {
            base,
            admin_key,
            agent,
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.admin_key));
        let answer = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                return Err(self.refused(status, response))
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::new(format!(
                    "{}: cannot reach the key service: {t}",
                    self.base
                )))
            }
        };
        let text = response
            .into_string()
            .map_err(|e| Error::new(format!("{}: the answer could not be read: {e}", self.base)))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::new(format!(
                "{}: not a key service's answer ({e}): is this keygate serve --db?",
                self.base
            ))
        })
    }

    fn refused(&self, status: u16, response: ureq::Response) -> Error {
        let error: Option<ApiError> = response
            .into_string()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let base = &self.base;
        match (status, error) {
            (401, _) => Error::new(format!(
                "{base}: the admin key was refused (401): check KEYGATE_ADMIN_KEY or \
                 --admin-key-file (`keygate admin new --db PATH` on the key service's host \
                 makes one)"
            )),
            (404, Some(e)) if e.error_description.contains("--db only") => Error::new(format!(
                "{base}: this key service has no admin API (it serves a key file): change \
                 the keys with --keys FILE where they are kept, or serve them with --db"
            )),
            (404, None) => Error::new(format!(
                "{base}: no admin API there (404): is this keygate serve --db?"
            )),
            (_, Some(e)) => Error::new(format!(
                "{base}: {} ({status} {})",
                if e.error_description.is_empty() {
                    &e.error
                } else {
                    &e.error_description
                },
                e.error
            )),
            (_, None) => Error::new(format!("{base}: the key service answered {status}")),
        }
    }

    fn not_found(&self, id: &str) -> impl Fn(Error) -> Error + '_ {
        let id = id.to_string();
        move |e| {
            if e.lines.iter().any(|l| l.contains("(404 not_found)")) {
                Error::new(format!(
                    "{}: no key with id {id:?} (`keygate list {}` shows the ids)",
                    self.base,
                    self.option()
                ))
            } else {
                e
            }
        }
    }
}

impl Admin for Remote {
    fn place(&self) -> String {
        self.base.clone()
    }

    fn option(&self) -> String {
        format!("--server {}", self.base)
    }

    fn create(&self, new: &Create) -> Result<Issued> {
        if secret::prefix(new.prefix)
            .map(|p| p.as_str().to_string())
            .ok()
            .as_deref()
            != Some(secret::KEY_PREFIX)
        {
            return Err(Error::new(format!(
                "--prefix: the key service makes its keys with {:?}: leave --prefix out with \
                 --server",
                keygate_keyservice::secret::KEY_PREFIX
            )));
        }
        self.call(
            "POST",
            "/v1/admin/keys",
            Some(json!({
                "owner": new.owner,
                "label": new.label,
                "scopes": new.scopes,
                "expires_in": new.expires_in,
                "read_only": new.read_only,
            })),
        )
    }

    fn list(&self, owner: Option<&str>, status: Option<Status>) -> Result<Vec<Key>> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/v1/admin/keys?limit=1000".to_string();
            if let Some(owner) = owner {
                path.push_str(&format!("&owner={}", encode(owner)));
            }
            if let Some(status) = status {
                path.push_str(&format!("&status={}", status.as_str()));
            }
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={}", encode(cursor)));
            }
            let page: KeyPage = self.call("GET", &path, None)?;
            keys.extend(page.keys);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    fn set_status(&self, id: &str, status: Status) -> Result<Key> {
        self.call(
            "PATCH",
            &format!("/v1/admin/keys/{}", encode(id)),
            Some(json!({"status": status.as_str()})),
        )
        .map_err(self.not_found(id))
    }

    fn revoke(&self, id: &str) -> Result<Key> {
        self.call("DELETE", &format!("/v1/admin/keys/{}", encode(id)), None)
            .map_err(self.not_found(id))
    }

    fn revoke_owner(&self, owner: &str) -> Result<u64> {
        let answer: Revoked = self.call(
            "DELETE",
            &format!("/v1/admin/keys?owner={}", encode(owner)),
            None,
        )?;
        Ok(answer.revoked)
    }

    fn rotate(&self, id: &str, grace: Option<&str>) -> Result<Issued> {
        let body = match grace {
            Some(grace) => json!({"grace": grace}),
            None => json!({}),
        };
        self.call(
            "POST",
            &format!("/v1/admin/keys/{}/rotate", encode(id)),
            Some(body),
        )
        .map_err(self.not_found(id))
    }

    fn audit(&self, since: Option<i64>) -> Result<Vec<Audit>> {
        let mut path = "/v1/admin/audit?limit=10000".to_string();
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(&store::rfc3339(since))));
        }
        let page: AuditPage = self.call("GET", &path, None)?;
        Ok(page.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn plain_http_is_only_for_this_machine() {
        for ok in [
            "127.0.0.1:8091",
            "127.0.0.1",
            "localhost:8091/",
            "LOCALHOST",
            "[::1]:8091",
            "127.3.4.5:1/x",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for no in [
            "keys.example.org:8091",
            "10.0.0.1:8091",
            "[2001:db8::1]:80",
            "127.0.0.1.evil.org",
            "localhost.evil.org:80",
            "",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
