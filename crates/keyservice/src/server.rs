//! The server: TCP (or TLS, with optional client certificates) accept loop, per-connection
//! limits, and a clean stop on Ctrl-C or SIGTERM.

use crate::app::{router, App, Peer};
use crate::store::StoreError;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A client has this long to finish the TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// On a stop, open connections get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Gateway endpoints then need a client certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

pub struct Options {
    pub listen: String,
    pub tls: Option<Tls>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The rustls configuration for `--tls-cert`, `--tls-key` and `--client-ca`. With a
/// client CA, a certificate is asked for and verified if sent, but not required at the
/// handshake: the health and admin endpoints stay reachable without one, and the gateway
/// endpoints refuse requests without one (403).
pub fn tls_config(tls: &Tls) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: cannot read a private key: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves `app` until Ctrl-C or SIGTERM, then lets open requests finish (up to 10 s).
pub async fn serve(app: App, options: Options) -> Result<(), String> {
    let acceptor = match &options.tls {
        Some(tls) => Some(TlsAcceptor::from(Arc::new(tls_config(tls)?))),
        None => None,
    };
    let listener = TcpListener::bind(&options.listen)
        .await
        .map_err(|e| format!("--listen {}: cannot listen: {e}", options.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("--listen {}: {e}", options.listen))?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let mtls = if app.require_client_cert {
        "; gateway endpoints need a client certificate"
    } else {
        ""
    };
    let (describe, feed_version) = {
        let store = app.gateway.clone();
        tokio::task::spawn_blocking(move || (store.describe(), store.feed_version()))
            .await
            .unwrap_or_else(|e| (String::new(), Err(StoreError::Unavailable(e.to_string()))))
    };
    eprintln!(
        "keygate serve: listening on {scheme}://{address} ({describe}{mtls}); stop with Ctrl-C or SIGTERM"
    );
    match feed_version {
        Ok(version) => eprintln!(
            "keygate serve: change feed: epoch {}, version {version}",
            app.gateway.feed_epoch().as_str()
        ),
        Err(e) => eprintln!("keygate serve: change feed: {e}"),
    }
    let app = Arc::new(app);
    let router = router(app.clone());
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    let protocols = Arc::new((http1, http2));
    let graceful = GracefulShutdown::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("keygate serve: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let protocols = protocols.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // HTTP/1.1, whose header timeout also closes a connection that sends nothing;
            // h2 only when TLS negotiated it (ALPN), with pings that drop dead peers.
            let serve = |io, peer: Peer, h2: bool| {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    router.clone().oneshot(req)
                });
                async move {
                    let io = TokioIo::new(io);
                    if h2 {
                        let _ = watcher
                            .watch(protocols.1.serve_connection(io, service))
                            .await;
                    } else {
                        let _ = watcher
                            .watch(protocols.0.serve_connection(io, service))
                            .await;
                    }
                }
            };
            match acceptor {
                None => {
                    let peer = Peer {
                        addr,
                        client_cert: false,
                    };
                    serve(Box::new(tcp) as Box<dyn Io>, peer, false).await;
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            // A failed handshake is the client's business (rustls has said
                            // why to it); nothing to log per connection.
                            _ => return,
                        };
                    let session = tls.get_ref().1;
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
                    let peer = Peer { addr, client_cert };
                    serve(Box::new(tls) as Box<dyn Io>, peer, h2).await;
                }
            }
        });
    }
    drop(listener);
    eprintln!("keygate serve: stopping: finishing open requests");
    app.stop();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            eprintln!("keygate serve: some connections did not finish in time");
        }
    }
    eprintln!("keygate serve: stopped");
    Ok(())
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
