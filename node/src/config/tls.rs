//! TLS on the HTTP port: where the certificate chain and key are.

use std::path::PathBuf;

/// Where the certificate chain and private key are (PEM files).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}
