//! The HTTP listener: HTTP/1.1 and HTTP/2 on one TCP port, in cleartext (HTTP/2 by prior
//! knowledge) and over TLS (ALPN `h2`, `http/1.1`) when a certificate is configured. A connection
//! is TLS when its first byte is a TLS handshake record (0x16), which no HTTP request starts with.
//!
//! The certificate and key are read again on SIGHUP; connections already open keep the
//! configuration they were accepted with, new ones get the new one, and a file that does not load
//! leaves the old configuration in place.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::tls::TlsFiles;
use crate::edge::RequestScheme;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first byte (or finish its TLS handshake).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the files into a server configuration offering `h2` and `http/1.1`.
pub fn load_tls(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .with_context(|| format!("reading {}", files.certificate.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", files.certificate.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "{} holds no certificate", files.certificate.display());
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("reading the private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .context("the certificate and key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Called with each newly loaded TLS configuration (HTTP/3 swaps its QUIC configuration).
pub type ReloadHook = Box<dyn Fn(&rustls::ServerConfig) + Send + Sync>;

/// The TLS configuration new connections get; replaced on reload.
#[derive(Clone)]
pub struct TlsState {
    files: TlsFiles,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    hooks: Arc<std::sync::Mutex<Vec<ReloadHook>>>,
}

impl TlsState {
    pub fn load(files: TlsFiles) -> anyhow::Result<TlsState> {
        let config = load_tls(&files)?;
        Ok(TlsState { files, current: Arc::new(RwLock::new(config)), hooks: Arc::default() })
    }

    /// Reads the files again; on failure the old configuration stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = load_tls(&self.files)?;
        *self.current.write().expect("tls state poisoned") = config.clone();
        for hook in self.hooks.lock().expect("tls hooks poisoned").iter() {
            hook(&config);
        }
        Ok(())
    }

    /// Runs `hook` after every successful reload.
    pub fn on_reload(&self, hook: ReloadHook) {
        self.hooks.lock().expect("tls hooks poisoned").push(hook);
    }

    /// The configuration new connections get now.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().expect("tls state poisoned").clone()
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }

    pub fn files(&self) -> &Path {
        &self.files.certificate
    }
}

/// Reloads the certificate on every SIGHUP until `shutdown`.
pub fn spawn_reloader(tls: TlsState, shutdown: CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("listening for SIGHUP")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = hangups.recv() => if received.is_none() { break },
            }
            match tls.reload() {
                Ok(()) => info!(certificate = %tls.files().display(), "TLS certificate reloaded"),
                Err(error) => warn!(error = format!("{error:#}"), "TLS certificate not reloaded; the old one stays"),
            }
        }
    }))
}

/// Serves `app` on `listener` until `stop`; then lets open connections finish for up to `grace`.
/// `alt_svc` is added to every response (HTTP/3 advertised while it runs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsState>,
    alt_svc: Option<http::HeaderValue>,
    stop: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            // Without TCP_NODELAY a body written after its headers waits for the client's delayed ACK.
            warn!(%error, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let alt_svc = alt_svc.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, remote, app, &builder, tls, alt_svc, watcher).await {
                debug!(%remote, error = format!("{error:#}"), "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => warn!("grace period over; cutting open connections"),
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    tls: Option<TlsState>,
    alt_svc: Option<http::HeaderValue>,
    watcher: hyper_util::server::graceful::Watcher,
) -> anyhow::Result<()> {
    let service = |scheme: &'static str| {
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            request.extensions_mut().insert(RequestScheme(scheme));
            let app = app.clone();
            let alt_svc = alt_svc.clone();
            async move {
                let mut response = tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new)).await?;
                if let Some(alt_svc) = alt_svc {
                    response.headers_mut().insert(http::header::ALT_SVC, alt_svc);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.peek(&mut first)).await.context("no first byte")??;
    match tls {
        Some(tls) if peeked == 1 && first[0] == TLS_HANDSHAKE => {
            let stream =
                tokio::time::timeout(FIRST_BYTES_TIMEOUT, tls.acceptor().accept(stream)).await.context("TLS handshake timed out")??;
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service("https")).into_owned();
            watcher.watch(connection).await.map_err(|error| anyhow::anyhow!("{error}"))
        }
        _ => {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service("http")).into_owned();
            watcher.watch(connection).await.map_err(|error| anyhow::anyhow!("{error}"))
        }
    }
}
