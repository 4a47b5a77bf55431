//! The gossip keys every node publishes about itself. Kept in one place so that every reader and
//! writer agrees on the spelling.

/// `true` once the node serves traffic; `false` while starting or leaving.
pub const READY: &str = "ready";
/// `true` while the node is being drained: out of placement and DNS, finishing its fills.
pub const DRAINING: &str = "draining";
/// Free bytes on the node's data file system.
pub const FREE_DISK: &str = "free_disk";
/// The node's build version.
pub const VERSION: &str = "version";
/// `http://host:port` of the node's Hub edge.
pub const HTTP_URL: &str = "http_url";
/// `http://host:port` of the node's operator port (status, drain, pins; a token is needed there).
pub const OPERATOR_URL: &str = "operator_url";
/// `host:port` of the node's QUIC peer endpoint.
pub const PEER_ADDRESS: &str = "peer_address";
/// A digest of the topology file's node list as this node read it. Catalog membership follows the
/// topology only while every live node reports the same digest (a rollout in progress waits).
pub const TOPOLOGY: &str = "topology";
/// The node's public figures as compact JSON (stored bytes, answers by cache result, bytes served by
/// source), for every node's public status page. Informational: no decision reads it.
pub const STATS: &str = "stats";
