//! The Raft state machine: applies catalog commands to the node's catalog tables.

use std::io::{self, Cursor};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{CatalogCommand, CatalogResponse, CatalogTypes, io_error};
use crate::catalog::{Catalog, LocalCatalog};

const APPLIED: &str = "applied";
const CURRENT_SNAPSHOT: &str = "current_snapshot";

/// What is persisted of the state machine besides the catalog rows.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<CatalogTypes>>,
    membership: StoredMembershipOf<CatalogTypes>,
}

/// The last snapshot built or installed, kept so a lagging follower can be sent it.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<CatalogTypes>,
    data: Vec<u8>,
}

/// The state machine over a node's catalog; a cheap handle.
#[derive(Clone)]
pub struct CatalogStateMachine {
    catalog: LocalCatalog,
}

impl CatalogStateMachine {
    pub fn new(catalog: LocalCatalog) -> CatalogStateMachine {
        CatalogStateMachine { catalog }
    }

    async fn applied(&self) -> io::Result<Applied> {
        match self.catalog.read_raft_state(APPLIED).await.map_err(io_error)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io_error),
            None => Ok(Applied::default()),
        }
    }

    async fn save_applied(&self, applied: &Applied) -> io::Result<()> {
        let bytes = serde_json::to_vec(applied).map_err(io_error)?;
        self.catalog.write_raft_state(APPLIED, bytes).await.map_err(io_error)
    }

    async fn execute(&self, command: CatalogCommand) -> io::Result<()> {
        let catalog = &self.catalog;
        let result = match command {
            CatalogCommand::PutRef { repo, revision, record } => catalog.put_ref(&repo, &revision, record).await,
            CatalogCommand::PutManifest { repo, commit, manifest } => catalog.put_manifest(&repo, &commit, manifest).await.map(|_| ()),
            CatalogCommand::PutRepoInfo { repo, commit, variant, body } => catalog.put_repo_info(&repo, &commit, &variant, body).await,
            CatalogCommand::PutPolicy { repo, record } => catalog.put_policy(&repo, record).await,
            CatalogCommand::PutDocument { key, record } => catalog.put_document(&key, record).await,
            CatalogCommand::AddReplica { etag, node, size } => catalog.add_replica(&etag, &node, size).await,
            CatalogCommand::RemoveReplica { etag, node } => catalog.remove_replica(&etag, &node).await,
            CatalogCommand::PutPin { repo, record } => catalog.put_pin(&repo, record).await,
            CatalogCommand::RemovePin { repo } => catalog.remove_pin(&repo).await,
        };
        result.map_err(io_error)
    }
}

impl RaftSnapshotBuilder<CatalogTypes> for CatalogStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<CatalogTypes, Cursor<Vec<u8>>>> {
        let applied = self.applied().await?;
        let rows = self.catalog.export_rows().await.map_err(io_error)?;
        let data = postcard::to_stdvec(&rows).map_err(io_error)?;
        let meta = SnapshotMetaOf::<CatalogTypes> { last_log_id: applied.last_applied, last_membership: applied.membership };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        self.catalog.write_raft_state(CURRENT_SNAPSHOT, serde_json::to_vec(&stored).map_err(io_error)?).await.map_err(io_error)?;
        Ok(SnapshotOf::<CatalogTypes, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<CatalogTypes> for CatalogStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = CatalogStateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<CatalogTypes>>, StoredMembershipOf<CatalogTypes>)> {
        let applied = self.applied().await?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<CatalogTypes>>> + Unpin + OptionalSend,
    {
        let mut applied = self.applied().await?;
        while let Some((entry, responder)) = entries.try_next().await? {
            match entry.payload {
                EntryPayload::Blank => {}
                // Every command is idempotent (a put, or adding to / removing from a set), so applying a
                // suffix of the log twice after a crash is harmless.
                EntryPayload::Normal(command) => self.execute(command).await?,
                EntryPayload::Membership(membership) => applied.membership = StoredMembership::new(Some(entry.log_id), membership),
            }
            applied.last_applied = Some(entry.log_id);
            self.save_applied(&applied).await?;
            if let Some(responder) = responder {
                responder.send(CatalogResponse);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<CatalogTypes>, snapshot: Self::SnapshotData) -> io::Result<()> {
        let data = snapshot.into_inner();
        let rows: Vec<(String, String, Vec<u8>)> = postcard::from_bytes(&data).map_err(io_error)?;
        self.catalog.import_rows(rows).await.map_err(io_error)?;
        let applied = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        self.save_applied(&applied).await?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.catalog.write_raft_state(CURRENT_SNAPSHOT, serde_json::to_vec(&stored).map_err(io_error)?).await.map_err(io_error)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<CatalogTypes, Self::SnapshotData>>> {
        let Some(bytes) = self.catalog.read_raft_state(CURRENT_SNAPSHOT).await.map_err(io_error)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(io_error)?;
        Ok(Some(SnapshotOf::<CatalogTypes, Cursor<Vec<u8>>> { meta: stored.meta, snapshot: Cursor::new(stored.data) }))
    }
}
