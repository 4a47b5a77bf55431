//! TLS on the HTTP port: the certificate and key loaded into a rustls configuration (ring), read
//! again on SIGHUP. Connections already open keep the configuration they were accepted with, new ones
//! get the new one, and a file that does not load leaves the old configuration in place.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::tls::TlsFiles;

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

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
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
