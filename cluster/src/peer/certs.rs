//! The cluster CA and node certificates for mutual TLS between peers (`hf-mirror cluster certs`).
//!
//! Every node certificate names the node (its topology name, which is also the TLS server name its
//! peers connect with) and is valid for both server and client authentication; a peer accepts only
//! certificates signed by the cluster CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

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

/// Creates a new cluster CA and a certificate for every node in `directory`, and the cluster's gossip
/// key (`gossip.key`, 32 random bytes in hex) when there is none yet. The CA's private key is written
/// too (`ca.key`), for the operator to keep offline; nodes never need it.
pub fn generate_cluster_certs(directory: &Path, cluster_name: &str, nodes: &[String]) -> Result<(), CertError> {
    std::fs::create_dir_all(directory).map_err(|source| CertError::Io { path: directory.to_path_buf(), source })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, format!("{cluster_name} cluster CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    write(ca_cert_path(directory), &ca.pem(), false)?;
    write(directory.join("ca.key"), &ca.key().serialize_pem(), true)?;
    for node in nodes {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node.clone()])?;
        params.distinguished_name.push(DnType::CommonName, node.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &*ca)?;
        write(node_cert_path(directory, node), &certificate.pem(), false)?;
        write(node_key_path(directory, node), &key.serialize_pem(), true)?;
    }
    let gossip_key = gossip_key_path(directory);
    if !gossip_key.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|error| CertError::Io { path: gossip_key.clone(), source: std::io::Error::other(error.to_string()) })?;
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        write(gossip_key, &hex, true)?;
    }
    Ok(())
}
