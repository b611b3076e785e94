//! A usage endpoint the tests control (README "Usage (last used)"): takes the filter's
//! `POST /v1/usage` reports, keeps each request (headers that matter and the JSON body),
//! and answers with the status the test chose (204 by default).

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One report as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub authority: Option<String>,
    pub body: Value,
}

pub struct UsageSink {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UsageSink {
    /// Listens on a free port of 127.0.0.1 and answers every request `status`.
    pub fn start(status: u16) -> UsageSink {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (status, received, stop) = (status.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50))
                    else {
                        continue;
                    };
                    let header = |name: &'static str| {
                        request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.as_str().to_string())
                    };
                    let (content_type, authority) = (header("content-type"), header("host"));
                    let mut body = String::new();
                    let _ = request.as_reader().read_to_string(&mut body);
                    received.lock().unwrap().push(Received {
                        method: request.method().to_string(),
                        path: request.url().to_string(),
                        content_type,
                        authority,
                        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
                    });
                    let code = status.load(Ordering::Relaxed);
                    let _ = request.respond(tiny_http::Response::empty(code));
                }
            })
        };
        UsageSink {
            addr,
            status,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// The reports so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The sum of the counts reported for `hash` so far.
    pub fn count_of(&self, hash: &str) -> u64 {
        self.received()
            .iter()
            .flat_map(|r| r.body["reports"].as_array().cloned().unwrap_or_default())
            .filter(|entry| entry["hash"] == hash)
            .map(|entry| entry["count"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for UsageSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
