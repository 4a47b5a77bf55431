//! Cluster plane of hf-mirror.
//!
//! Today this crate owns the catalog: the typed records every node keeps about the Hub (refs,
//! manifests, repo info, repo policy) and the [`catalog::Catalog`] interface the node reads and writes
//! them through, with a single-node implementation on redb ([`catalog::LocalCatalog`]).
//! With the issue "The four-node cluster" it also gets membership (chitchat), the Raft catalog
//! (openraft, behind the same interface), placement (weighted rendezvous hashing) and the QUIC peer
//! transport.
//!
//! # Layout
//!
//! - `types`: repository keys and commit shas, pure values.
//! - `catalog/`: the `Catalog` trait, its records and the redb-backed local implementation.
//! - `clock`: the cluster's wall clock (the median member's), measured over gossip.
//! - `placement`: weighted rendezvous hashing of keys over nodes; pure.
//! - `membership/`: gossip (chitchat): live, ready and draining nodes as a watched `ClusterView`.
//! - `peer/`: QUIC with mutual TLS between nodes (quinn): blob fills, the cluster CA.
//!
//! # Dependency rule
//!
//! `hfm-cluster` depends on no other workspace crate and knows nothing of HTTP or of the Hub's JSON:
//! it stores what the node gives it, keyed by repository, revision and commit.

pub mod catalog;
pub mod clock;
pub mod membership;
pub mod peer;
pub mod placement;
pub mod types;
