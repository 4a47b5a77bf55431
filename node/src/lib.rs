//! hf-mirror node: a read-through mirror of the Hugging Face Hub.
//!
//! # Layout
//!
//! - `config`: `NodeConfig` from the embedded default, `topology.toml`, flags and environment.
//! - `serve`: the composition root; start-up and shutdown order.
//! - `cluster_up`: `hf-mirror cluster up`, the topology's nodes as local processes.
//! - `edge`: the HTTP handler; routes each request to the mirror or to a pass-through.
//! - `hub/`: the Hub's wire contract (routes, errors, headers, ranges, JSON). Only this module knows it.
//! - `mirror`: read-through of metadata (policy, refs, manifests, repo info), coalesced and stale-tolerant.
//! - `store/`: the content-addressed blob store with verified fills and LRU capacity.
//! - `upstream`: the upstream Hub client (manual redirects, anonymous blob fetches).
//! - `peers`: blob fills across the cluster: peers before upstream, and answering peers.
//! - `singleflight`: coalescing of identical concurrent work.
//! - `status`: `hf-mirror status`, a table of the cluster's nodes from their `/_hfm/status`.
//! - `pins`, `replicas`: pinned repositories and replica sets; `rsyncd`, `trees`, `indexes`: the rsync
//!   daemon, the module trees it serves and the Parquet snapshots of the catalog.
//!
//! # Dependency rule
//!
//! `hfm-node` depends on `hfm-cluster` (catalog interface and records), never the other way round.
//! The store knows no HTTP types; `hub` knows no storage.

pub mod access_log;
pub mod cluster_up;
pub mod config;
pub mod edge;
#[cfg(feature = "http3")]
pub mod http3;
pub mod http_server;
pub mod hub;
pub mod indexes;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod peers;
pub mod pins;
pub mod replicas;
pub mod rsyncd;
pub mod serve;
pub mod singleflight;
pub mod sockets;
pub mod status;
pub mod store;
pub mod trees;
pub mod upstream;
