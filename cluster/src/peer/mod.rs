//! The peer transport: QUIC (quinn) between nodes with mutual TLS from a cluster CA. It carries
//! blob fills, streamed from an offset, and opaque RPCs (the Raft catalog's messages).
//!
//! This is the only module of the crate that imports quinn.

pub mod certs;
mod endpoint;
pub mod protocol;
pub mod tls;

pub use endpoint::{BlobBytes, LocalBlobs, PeerAddress, PeerEndpoint, PeerError, PeerOpen, RpcHandler, RpcServices, peer_alpn};

#[cfg(test)]
mod tests;
