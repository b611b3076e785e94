//! An HTTP/2 (h2c, prior knowledge) upstream that records what it receives, trailers
//! included, and a client that sends request trailers: what HTTP/1.1 upstreams and the
//! echo [`crate::Upstream`] cannot show.

use crate::upstream::Recording;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Header fields as received, names lowercase.
pub type Fields = Vec<(String, Vec<u8>)>;

/// One request as the upstream received it.
#[derive(Clone, Debug, Default)]
pub struct H2Seen {
    pub method: String,
    pub path: String,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub trailers: Fields,
}

impl H2Seen {
    /// Trailer names, in order.
    pub fn trailer_names(&self) -> Vec<&str> {
        self.trailers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// An HTTP/2-only server on 127.0.0.1 answering every request with 200 `ok`. Stops when
/// dropped.
pub struct H2Upstream {
    pub addr: SocketAddr,
    recording: Recording<H2Seen>,
}

impl H2Upstream {
    pub fn start() -> H2Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let recording = Recording::spawn(move |seen, stop| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    if let Ok(Ok((tcp, _))) = accepted {
                        tokio::spawn(serve(tcp, seen.clone()));
                    }
                }
            });
        });
        H2Upstream { addr, recording }
    }

    /// Everything received so far, oldest first, and forgets it.
    pub fn take(&self) -> Vec<H2Seen> {
        self.recording.take()
    }

    /// The `upstream` cluster for Envoy, speaking HTTP/2 to this server.
    pub fn cluster(&self) -> serde_json::Value {
        serde_json::json!({
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "2s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {
                    "address": self.addr.ip().to_string(), "port_value": self.addr.port()}}}
            }]}]}
        })
    }
}

fn fields(map: &http::HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

async fn serve(tcp: tokio::net::TcpStream, seen: Arc<Mutex<Vec<H2Seen>>>) {
    let Ok(mut connection) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let mut record = H2Seen {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                headers: fields(&parts.headers),
                ..H2Seen::default()
            };
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                record.body.extend_from_slice(&chunk);
            }
            if let Ok(Some(trailers)) = body.trailers().await {
                record.trailers = fields(&trailers);
            }
            seen.lock().unwrap().push(record);
            let response = http::Response::builder().status(200).body(()).unwrap();
            if let Ok(mut stream) = respond.send_response(response, false) {
                let _ = stream.send_data(bytes::Bytes::from_static(b"ok"), true);
            }
        });
    }
}

/// Sends `method target` with `headers`, `body` and then `trailers` over h2c (prior
/// knowledge); returns the response's status.
pub fn send_with_trailers(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> u16 {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://keygate.test{target}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).unwrap();
    let mut trailer_map = http::HeaderMap::new();
    for (name, value) in trailers {
        trailer_map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let body = bytes::Bytes::copy_from_slice(body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            let driver = tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let (response, mut stream) = client.send_request(request, false).unwrap();
            stream.send_data(body, false).unwrap();
            stream.send_trailers(trailer_map).unwrap();
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            drop(client);
            driver.abort();
            status
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("h2: no answer within 20 s")
    })
}
