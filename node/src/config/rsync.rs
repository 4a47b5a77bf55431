//! `[rsync]` resolved: how a node's rsync daemon listens and how often its indexes are written.

use std::net::SocketAddr;
use std::time::Duration;

/// How the daemon runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RsyncConfig {
    /// TCP address (port 873 in production).
    pub listen: SocketAddr,
    pub max_connections: u32,
    /// Seconds of I/O silence before a client is dropped.
    pub timeout_secs: u32,
    /// How often the `indexes` module gets a new catalog snapshot.
    pub index_interval: Duration,
}
