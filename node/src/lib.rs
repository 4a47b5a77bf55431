//! hf-mirror node: a read-through mirror of the Hugging Face Hub.
//!
//! # Layers
//!
//! Each module imports only modules listed above it (`tests/layers.rs` checks it):
//!
//! 1. `common`: helpers that know nothing of the node (time, sizes, prefixes, single-flight).
//! 2. `hub`: the Hub's wire contract (routes, errors, headers, ranges, JSON, `X-Cache`).
//! 3. `config`: `NodeConfig` from the embedded default, `topology.toml`, flags and environment.
//! 4. `telemetry`: process-wide counters, answer counters, the `/metrics` exposition.
//! 5. `store`: the content-addressed blob store with verified fills and LRU capacity.
//! 6. `upstream`: the upstream Hub client (manual redirects, anonymous blob fetches).
//! 7. `peers`: this node's view of its cluster (peer endpoint, gossip view, placement).
//! 8. `metadata`: the read-through of policy, refs, manifests, repo info and refs listings.
//! 9. `blobs`: where missing bytes come from, answering peers' fills, replicas, pinned files.
//! 10. `rsync`: pins, the rsync daemon, its module trees and the Parquet indexes.
//! 11. `edge`: the HTTP handlers of every Hub route and of the operator's routes.
//! 12. `transport`: listeners (HTTP/1–2, HTTP/3), handed-over sockets, limits, access log.
//! 13. `serve`: the composition root; start-up and shutdown order.
//! 14. `cli`: the operator commands (`status`, `drain`, `mirror`, `pins`, `cluster up`, `h3-get`).
//!
//! # Dependency rule
//!
//! `hfm-node` depends on `hfm-cluster` (catalog interface and records, membership, peer transport)
//! and `hfm-dns`, never the other way round. The store knows no HTTP types; `hub` knows no storage.

pub mod common;
pub mod hub;
pub mod config;
pub mod telemetry;
pub mod store;
pub mod upstream;
pub mod peers;
pub mod metadata;
pub mod blobs;
pub mod rsync;
pub mod edge;
pub mod transport;
pub mod serve;
pub mod cli;
