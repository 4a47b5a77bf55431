//! rustls configurations for peer QUIC: TLS 1.3 only, the ring provider, mutual authentication
//! against the cluster CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::{ca_cert_path, node_cert_path, node_key_path};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// The server and client halves of a node's peer TLS identity.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn pem_error(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), message: error.to_string() }
}

impl PeerTls {
    /// Loads `ca.pem`, `{node}.pem` and `{node}.key` from the certificates directory.
    pub fn load(directory: &Path, node: &str, alpn: &[&[u8]]) -> Result<PeerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_path = ca_cert_path(directory);
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&ca_path).map_err(|error| pem_error(&ca_path, error))? {
            roots.add(certificate.map_err(|error| pem_error(&ca_path, error))?)?;
        }
        let roots = Arc::new(roots);
        let cert_path = node_cert_path(directory, node);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|error| pem_error(&cert_path, error))?
            .collect::<Result<_, _>>()
            .map_err(|error| pem_error(&cert_path, error))?;
        let key_path = node_key_path(directory, node);
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| pem_error(&key_path, error))?;

        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(PeerTls { server: Arc::new(server), client: Arc::new(client) })
    }
}
