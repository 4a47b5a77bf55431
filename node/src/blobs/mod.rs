//! The node's part in the cluster's bytes: where a missing blob comes from (this node's peers before
//! upstream), answering peers' fill requests, keeping replica sets and pinned files.
//!
//! # Layout
//!
//! - `sources`: [`BlobSources`], the order sources of a blob are tried in.
//! - `peer_fills`: the answering side of peer fills ([`PeerFills`]).
//! - `replicas`: the replica keeper ([`Replicas`]) and its `replica` peer service.
//! - `pinned`: the pinned set and the [`PinWatch`]; `pin_keeper`: a lone node's keeper of it.

pub mod peer_fills;
pub mod pin_keeper;
pub mod pinned;
pub mod replicas;
pub mod sources;

pub use peer_fills::PeerFills;
pub use pinned::{PinWatch, PinnedBlob, pinned_blobs};
pub use replicas::{REPLICA_SERVICE, ReplicaService, Replicas};
pub use sources::BlobSources;
