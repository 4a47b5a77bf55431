//! The Raft catalog's storage: the replicated log and the state machine, both on redb (openraft).
//!
//! The state machine applies [`CatalogCommand`]s to the same tables [`LocalCatalog`] reads, so a
//! node's reads stay local while its writes go through the log. Snapshots are the whole catalog,
//! built into a file and sent in chunks (`snapshot.rs`); messages and log entries are postcard
//! (`codec.rs`); a write too large for one entry travels in parts (`parts.rs`).
//! This is the only module of the crate that imports openraft.
//!
//! `RaftCatalog` is the `Catalog` a cluster node uses: reads come from its own tables, writes are
//! proposed to the leader (forwarded over the peer endpoint when this node follows).
//!
//! [`LocalCatalog`]: super::LocalCatalog

mod codec;
mod log_store;
mod network;
mod node;
mod parts;
mod snapshot;
mod state_machine;

use std::fmt;

pub use log_store::RedbLogStore;
pub use network::{CatalogNetwork, RAFT_SERVICE};
pub use node::{CatalogMember, MembershipStep, RaftCatalog, RaftStatus};
use serde::{Deserialize, Serialize};
pub use snapshot::{SNAPSHOT_DIR, SnapshotFile};
pub use state_machine::CatalogStateMachine;

use super::{DocumentRecord, Manifest, PinRecord, PolicyRecord, RefRecord};
use crate::types::RepoKey;

/// A write to the catalog, as it travels through the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CatalogCommand {
    PutRef {
        repo: RepoKey,
        revision: String,
        record: RefRecord,
    },
    PutManifest {
        repo: RepoKey,
        commit: String,
        manifest: Manifest,
    },
    PutRepoInfo {
        repo: RepoKey,
        commit: String,
        variant: String,
        body: Vec<u8>,
    },
    PutPolicy {
        repo: RepoKey,
        record: PolicyRecord,
    },
    PutDocument {
        key: String,
        record: DocumentRecord,
    },
    AddReplica {
        etag: String,
        node: String,
        size: u64,
    },
    RemoveReplica {
        etag: String,
        node: String,
    },
    PutPin {
        repo: RepoKey,
        record: PinRecord,
    },
    RemovePin {
        repo: RepoKey,
    },
    /// Part `index` of `count` of a write whose postcard encoding is larger than one log entry may
    /// be; `digest` is the SHA-256 (hex) of the whole encoding. Applied when the last part is in.
    Part {
        digest: String,
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    },
}

impl fmt::Display for CatalogCommand {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogCommand::PutRef { repo, revision, record } => write!(formatter, "ref {repo}@{revision} -> {}", record.commit),
            CatalogCommand::PutManifest { repo, commit, manifest } => {
                write!(formatter, "manifest {repo}@{commit} ({} entries)", manifest.entries().len())
            }
            CatalogCommand::PutRepoInfo { repo, commit, variant, .. } => write!(formatter, "repo info {repo}@{commit} [{variant}]"),
            CatalogCommand::PutPolicy { repo, record } => write!(formatter, "policy {repo}: {}", record.reason),
            CatalogCommand::PutDocument { key, .. } => write!(formatter, "document {}", key.replace('\0', "/")),
            CatalogCommand::AddReplica { etag, node, .. } => write!(formatter, "replica of {etag} on {node}"),
            CatalogCommand::RemoveReplica { etag, node } => write!(formatter, "no replica of {etag} on {node}"),
            CatalogCommand::PutPin { repo, record } => write!(formatter, "pin {repo}@{} ({})", record.revision, record.commit),
            CatalogCommand::RemovePin { repo } => write!(formatter, "unpin {repo}"),
            CatalogCommand::Part { digest, index, count, bytes } => {
                write!(formatter, "part {} of {count} ({} bytes) of write {}", index + 1, bytes.len(), &digest[..digest.len().min(12)])
            }
        }
    }
}

/// What applying a command answers; writes carry no result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogResponse;

/// The catalog id of the node named `name`: derived from the name alone, so a node keeps its id
/// whatever its place in the topology file, and removing a node renumbers nobody.
pub fn catalog_id(name: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // Below 2^53, so the id survives JSON readers that hold numbers as doubles; never 0.
    (u64::from_be_bytes(first) >> 11).max(1)
}

openraft::declare_raft_types!(
    /// The openraft types of the catalog: node ids are [`catalog_id`]s of the node names.
    pub CatalogTypes:
        D = CatalogCommand,
        R = CatalogResponse,
);

fn io_error(error: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// Runs blocking redb work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io_error)?
}

#[cfg(test)]
mod tests;
