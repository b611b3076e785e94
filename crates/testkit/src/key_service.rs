//! A key service the tests control (README "`keygate serve`"): serves a key-set document with an ETag and
//! single records by hash, or misbehaves on demand (an error status, garbage, an answer
//! slower than the filter waits), and counts the calls it gets. Stopping it leaves its
//! port closed, so the filter's calls are refused.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the service answers `/v1/keyset`.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    Serve,
    Status(u16),
    Garbage,
    /// Answers correctly, but only after this long.
    Slow(Duration),
}

#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub keyset: usize,
    pub keyset_not_modified: usize,
    /// The paths of `/v1/keys/...` calls, in order.
    pub lookups: Vec<String>,
}

struct State {
    doc: Value,
    behaviour: Behaviour,
    lookup_delay: Duration,
    calls: Calls,
}

pub struct KeyService {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The document's ETag: changes with its content.
fn etag_of(doc: &Value) -> String {
    format!(
        "\"{}\"",
        &keygate_core::record::KeyHash::of_key(&doc.to_string()).to_hex()[..16]
    )
}

impl KeyService {
    /// Serves `doc` on `addr` (`127.0.0.1:0` for any port).
    pub fn start_on(addr: &str, doc: Value) -> KeyService {
        let state = Arc::new(Mutex::new(State {
            doc,
            behaviour: Behaviour::Serve,
            lookup_delay: Duration::ZERO,
            calls: Calls::default(),
        }));
        KeyService::serve(addr, state)
    }

    fn serve(addr: &str, state: Arc<Mutex<State>>) -> KeyService {
        let server = Arc::new(tiny_http::Server::http(addr).unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // A few threads, so a slow answer does not hold up a lookup.
        let threads = (0..4)
            .map(|_| {
                let (server, state, stop) = (server.clone(), state.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50))
                        else {
                            continue;
                        };
                        answer(request, &state, &stop);
                    }
                })
            })
            .collect();
        KeyService {
            addr,
            state,
            stop,
            threads,
        }
    }

    pub fn set_doc(&self, doc: Value) {
        self.state.lock().unwrap().doc = doc;
    }

    /// Holds every `/v1/keys/...` answer this long.
    pub fn delay_lookups(&self, delay: Duration) {
        self.state.lock().unwrap().lookup_delay = delay;
    }

    pub fn behave(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    /// The calls so far.
    pub fn calls(&self) -> Calls {
        self.state.lock().unwrap().calls.clone()
    }

    /// Stops serving and closes the port; `restart` serves again on the same port.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        *self = KeyService::serve(&self.addr.to_string(), self.state.clone());
    }
}

fn answer(request: tiny_http::Request, state: &Mutex<State>, stop: &AtomicBool) {
    let url = request.url().to_string();
    let if_none_match = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("if-none-match"))
        .map(|h| h.value.as_str().to_string());
    let header = |name: &str, value: &str| tiny_http::Header::from_bytes(name, value).unwrap();
    let json_type = header("content-type", "application/json");
    if let Some(hash) = url.strip_prefix("/v1/keys/") {
        let (record, delay) = {
            let mut s = state.lock().unwrap();
            s.calls.lookups.push(url.clone());
            let record = s.doc["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["hash"] == json!(hash)).cloned());
            (record, s.lookup_delay)
        };
        std::thread::sleep(delay);
        let _ = match record {
            Some(record) => request.respond(
                tiny_http::Response::from_string(record.to_string()).with_header(json_type),
            ),
            None => request.respond(
                tiny_http::Response::from_string("{\"error\":\"not_found\"}")
                    .with_status_code(404)
                    .with_header(json_type),
            ),
        };
        return;
    }
    // As a file server does, it ignores the query (the incremental sync's `?wait=`).
    if url.split('?').next() != Some("/v1/keyset") {
        let _ = request.respond(tiny_http::Response::empty(404));
        return;
    }
    let (doc, behaviour) = {
        let mut s = state.lock().unwrap();
        s.calls.keyset += 1;
        (s.doc.clone(), s.behaviour.clone())
    };
    let etag = etag_of(&doc);
    match behaviour {
        Behaviour::Status(code) => {
            let _ =
                request.respond(tiny_http::Response::from_string("oops").with_status_code(code));
        }
        Behaviour::Garbage => {
            let _ = request.respond(
                tiny_http::Response::from_string("{\"keys\": [{\"id\": ").with_header(json_type),
            );
        }
        Behaviour::Slow(delay) => {
            let until = std::time::Instant::now() + delay;
            while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = request.respond(
                tiny_http::Response::from_string(doc.to_string())
                    .with_header(json_type)
                    .with_header(header("etag", &etag)),
            );
        }
        Behaviour::Serve if if_none_match.as_deref() == Some(etag.as_str()) => {
            state.lock().unwrap().calls.keyset_not_modified += 1;
            let _ =
                request.respond(tiny_http::Response::empty(304).with_header(header("etag", &etag)));
        }
        Behaviour::Serve => {
            let _ = request.respond(
                tiny_http::Response::from_string(doc.to_string())
                    .with_header(json_type)
                    .with_header(header("etag", &etag)),
            );
        }
    }
}

impl Drop for KeyService {
    fn drop(&mut self) {
        self.stop();
    }
}
