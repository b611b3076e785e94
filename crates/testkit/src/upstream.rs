//! An echo upstream that records what reached it.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the upstream received it. Header names are lowercase; every value of a
/// repeated header is kept, in order.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn values(&self, name: &str) -> Vec<&str> {
        crate::http1::values_of(&self.headers, name).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.values(name);
        assert!(
            values.len() <= 1,
            "{name} seen {} times upstream",
            values.len()
        );
        values.first().copied()
    }

    pub fn as_json(&self) -> Value {
        let headers: BTreeMap<&str, Value> = self
            .headers
            .iter()
            .map(|(n, _)| (n.as_str(), json!(self.values(n))))
            .collect();
        json!({"method": self.method, "path": self.target, "headers": headers})
    }
}

/// What a recording server shares with its thread: what it received, oldest first.
pub(crate) type Received<T> = Arc<Mutex<Vec<T>>>;

/// A server's thread, which records what it receives until told to stop: it is stopped,
/// and waited for, when dropped.
pub(crate) struct Recording<T> {
    seen: Received<T>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Recording<T> {
    /// Runs `serve(seen, stop)` on a thread of its own; it returns once `stop` is set.
    pub(crate) fn spawn(
        serve: impl FnOnce(Received<T>, Arc<AtomicBool>) + Send + 'static,
    ) -> Recording<T> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || serve(seen, stop))
        };
        Recording {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything received so far, oldest first, and forgets it.
    pub(crate) fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl<T> Drop for Recording<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP server on 127.0.0.1 that answers every request with 200 and a JSON echo of what
/// it received, and records it. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    recording: Recording<Seen>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0")
    }

    pub fn start_on(addr: &str) -> Upstream {
        Upstream::try_start_on(addr).unwrap()
    }

    /// As [`Upstream::start_on`], but an address that cannot be listened on is an error.
    pub fn try_start_on(addr: &str) -> Result<Upstream, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| e.to_string())?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr} is not an IP address"))?;
        let recording = Recording::spawn(move |seen, stop| {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let record = Seen {
                    method: request.method().as_str().to_string(),
                    target: request.url().to_string(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_string(),
                            )
                        })
                        .collect(),
                };
                let echo = serde_json::to_string_pretty(&record.as_json()).unwrap();
                // tiny_http hands an upgrade request's body over as the raw connection,
                // which ends only when Envoy gives up on it: drain only ordinary bodies,
                // and record the request before that so a test never races the drain.
                let upgrade = record.header("upgrade").is_some();
                seen.lock().unwrap().push(record);
                if !upgrade {
                    let _ = std::io::copy(request.as_reader(), &mut std::io::sink());
                }
                let content_type =
                    tiny_http::Header::from_bytes("content-type", "application/json").unwrap();
                let _ = request.respond(
                    tiny_http::Response::from_string(echo + "\n").with_header(content_type),
                );
            }
        });
        Ok(Upstream { addr, recording })
    }

    /// Everything received so far, oldest first, and forgets it.
    pub fn take(&self) -> Vec<Seen> {
        self.recording.take()
    }

    /// The one request received since the last `take`.
    pub fn take_one(&self) -> Seen {
        let mut seen = self.take();
        assert_eq!(seen.len(), 1, "upstream saw {seen:?}");
        seen.remove(0)
    }
}
