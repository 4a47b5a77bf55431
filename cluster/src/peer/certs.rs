//! The cluster CA and node certificates for mutual TLS between peers (`hf-mirror cluster certs`).
//!
//! Every node certificate names the node (its topology name, which is also the TLS server name its
//! peers connect with) and is valid for both server and client authentication; a peer accepts only
//! certificates signed by the cluster CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The files of one node's identity inside a certificates directory.
pub fn node_cert_path(directory: &Path, node: &str) -> PathBuf {
    directory.join(format!("{node}.pem"))
}

pub fn node_key_path(directory: &Path, node: &str) -> PathBuf {
    directory.join(format!("{node}.key"))
}

pub fn ca_cert_path(directory: &Path) -> PathBuf {
    directory.join("ca.pem")
}

/// The cluster's gossip key: every gossip datagram carries a MAC under it.
pub fn gossip_key_path(directory: &Path) -> PathBuf {
    directory.join("gossip.key")
}

/// Reads the gossip key (its file's text, trimmed; at least 32 characters).
pub fn read_gossip_key(directory: &Path) -> Result<Vec<u8>, CertError> {
    let path = gossip_key_path(directory);
    let text = std::fs::read_to_string(&path).map_err(|source| CertError::Io { path: path.clone(), source })?;
    let key = text.trim().as_bytes().to_vec();
    if key.len() < 32 {
        return Err(CertError::Io { path, source: std::io::Error::other("a gossip key is at least 32 characters") });
    }
    Ok(key)
}

fn write(path: PathBuf, contents: &str, private: bool) -> Result<(), CertError> {
    std::fs::write(&path, contents).map_err(|source| CertError::Io { path: path.clone(), source })?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| CertError::Io { path, source })?;
    }
    Ok(())
}

/// What [`generate_cluster_certs`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertsWritten {
    /// A new cluster CA was made (there was none in the directory).
    pub new_ca: bool,
    /// The nodes that got a new certificate and key.
    pub issued: Vec<String>,
    /// The nodes whose certificate was already there and was kept.
    pub kept: Vec<String>,
}

/// Makes the cluster's certificates in `directory`: the cluster CA when there is none yet (its
/// private key `ca.key` is written for the operator to keep offline; nodes never need it), a
/// certificate for every node that has none or is named in `reissue`, and the gossip key
/// (`gossip.key`, 32 random bytes in hex) when there is none. Existing certificates are kept, so
/// adding a node to the topology issues exactly one new certificate under the same CA, and
/// reissuing one node's leaves every other node's as it was.
pub fn generate_cluster_certs(directory: &Path, cluster_name: &str, nodes: &[String]) -> Result<CertsWritten, CertError> {
    issue_cluster_certs(directory, cluster_name, nodes, &[])
}

/// [`generate_cluster_certs`], with a new certificate and key for the nodes in `reissue` even when
/// they have one.
pub fn issue_cluster_certs(directory: &Path, cluster_name: &str, nodes: &[String], reissue: &[String]) -> Result<CertsWritten, CertError> {
    std::fs::create_dir_all(directory).map_err(|source| CertError::Io { path: directory.to_path_buf(), source })?;
    let mut written = CertsWritten::default();
    let (ca_cert, ca_key) = (ca_cert_path(directory), directory.join("ca.key"));
    let issuer = if ca_cert.exists() {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source });
        let key = KeyPair::from_pem(&read(&ca_key)?)?;
        Issuer::from_ca_cert_pem(&read(&ca_cert)?, key)?
    } else {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.distinguished_name.push(DnType::CommonName, format!("{cluster_name} cluster CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let certificate = ca_params.self_signed(&key)?;
        write(ca_key.clone(), &key.serialize_pem(), true)?;
        write(ca_cert.clone(), &certificate.pem(), false)?;
        written.new_ca = true;
        Issuer::new(ca_params, key)
    };
    for node in nodes {
        let present = node_cert_path(directory, node).exists() && node_key_path(directory, node).exists();
        if present && !written.new_ca && !reissue.contains(node) {
            written.kept.push(node.clone());
            continue;
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node.clone()])?;
        params.distinguished_name.push(DnType::CommonName, node.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &issuer)?;
        write(node_key_path(directory, node), &key.serialize_pem(), true)?;
        write(node_cert_path(directory, node), &certificate.pem(), false)?;
        written.issued.push(node.clone());
    }
    let gossip_key = gossip_key_path(directory);
    if !gossip_key.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|error| CertError::Io { path: gossip_key.clone(), source: std::io::Error::other(error.to_string()) })?;
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        write(gossip_key, &hex, true)?;
    }
    Ok(written)
}
