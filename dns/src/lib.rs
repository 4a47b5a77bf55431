//! Authoritative DNS for the mirror zone, answered by every node (hickory-server).
//!
//! - [`zone`]: the zone built from `topology.toml` (SOA, NS, A/AAAA for every node name, the apex and
//!   HTTP names answering every ready node, the rsync name answering the nearest ready node(s)), as a
//!   pure function from a question, a client location and the live set to an answer;
//! - [`geo`]: prefixes → locations (the operator's table, then an optional MaxMind database) and
//!   great-circle ranking of the nodes;
//! - [`rrl`]: per-client response rate limiting (no amplification);
//! - [`server`]: the hickory-server request handler (EDNS, Client Subnet, BADVERS, NOTIMP, REFUSED,
//!   truncation) and the UDP and TCP listeners the node starts and stops.
//!
//! # Dependency rule
//!
//! `hfm-dns` uses only `hfm-cluster`'s membership view; it never reads the catalog, the peer
//! transport or anything of `hfm-node`.

pub mod geo;
pub mod rrl;
pub mod server;
pub mod zone;

pub use server::{DnsServer, DnsSettings};
pub use zone::{Zone, ZoneConfig, ZoneError, ZoneNode};
