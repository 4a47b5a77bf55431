//! Authoritative DNS for the mirror zone.
//!
//! This crate is a placeholder with no functionality yet.
//! It will own, once the cluster's membership exists (see the issue "Authoritative geo DNS on every
//! node"):
//!
//! - the zone built from `topology.toml` (SOA, NS, A/AAAA for every node name, the apex and the rsync
//!   name),
//! - geo-routing of the rsync name to the nearest ready node, from EDNS Client Subnet or the resolver's
//!   address, through the prefix table in `topology.toml` and an optional MaxMind database,
//! - the hickory-server listeners on UDP and TCP, started and stopped by the node.
//!
//! # Dependency rule
//!
//! `hfm-dns` may use only `hfm-cluster`'s topology and membership view; it never reads the catalog,
//! the peer transport or anything of `hfm-node`.
