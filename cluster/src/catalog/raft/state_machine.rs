//! The Raft state machine: applies catalog commands to the node's catalog tables, and builds and
//! installs snapshots as files (`snapshot.rs`).

use std::io;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::snapshot::{SNAPSHOT_SUFFIX, SnapshotFile, SnapshotReader, SnapshotWriter, sync_dir, unique_name, write_rows};
use super::{CatalogCommand, CatalogResponse, CatalogTypes, blocking, io_error, parts};
use crate::catalog::local::Row;
use crate::catalog::{Catalog, LocalCatalog};

const APPLIED: &str = "applied";
/// The snapshot of an earlier build: its rows inside the record, as JSON. Read once, turned into a
/// file.
const LEGACY_SNAPSHOT: &str = "current_snapshot";
/// The last snapshot built or installed: its meta and the name of its file.
const SNAPSHOT_RECORD: &str = "snapshot_file";

/// What is persisted of the state machine besides the catalog rows.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<CatalogTypes>>,
    membership: StoredMembershipOf<CatalogTypes>,
}

/// The last snapshot built or installed, kept so a lagging follower can be sent it.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMetaOf<CatalogTypes>,
    file: String,
}

/// An earlier build's snapshot record.
#[derive(Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMetaOf<CatalogTypes>,
    data: Vec<u8>,
}

/// The state machine over a node's catalog; a cheap handle.
#[derive(Clone)]
pub struct CatalogStateMachine {
    catalog: LocalCatalog,
    /// Where snapshot files live (`raft-snapshots/` under the data directory).
    snapshots: PathBuf,
}

fn json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io_error)
}

impl CatalogStateMachine {
    /// The state machine over `catalog`, keeping snapshot files in `snapshots` (created here).
    pub fn new(catalog: LocalCatalog, snapshots: &Path) -> io::Result<CatalogStateMachine> {
        std::fs::create_dir_all(snapshots)?;
        // Files a crash left half built or half received are of no use.
        for entry in std::fs::read_dir(snapshots)? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(SNAPSHOT_SUFFIX) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(CatalogStateMachine { catalog, snapshots: snapshots.to_owned() })
    }

    /// Where a snapshot being received from the leader is written.
    pub(super) fn incoming_path(&self) -> PathBuf {
        self.snapshots.join(unique_name("incoming", ".part"))
    }

    async fn applied(&self) -> io::Result<Applied> {
        match self.catalog.read_raft_state(APPLIED).await.map_err(io_error)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io_error),
            None => Ok(Applied::default()),
        }
    }

    async fn save_applied(&self, applied: &Applied) -> io::Result<()> {
        self.catalog.write_raft_state(APPLIED, json(applied)?).await.map_err(io_error)
    }

    async fn execute(&self, command: CatalogCommand) -> io::Result<()> {
        let CatalogCommand::Part { digest, index, count, bytes } = command else {
            return self.execute_whole(command).await;
        };
        if index >= count {
            warn!(digest, index, count, "a catalog write part outside its count; ignored");
            return Ok(());
        }
        let Some(whole) = self.catalog.put_command_part(&digest, index, count, bytes).await.map_err(io_error)? else {
            return Ok(());
        };
        match parts::assemble(&digest, &whole) {
            Ok(command) => self.execute_whole(command).await?,
            // Deterministic on every node (same parts, same check): the write is dropped everywhere.
            Err(reason) => warn!(reason, "a catalog write in parts is dropped"),
        }
        // Dropped only after the write is applied: a crash in between applies it again.
        self.catalog.drop_command_parts(&digest).await.map_err(io_error)
    }

    async fn execute_whole(&self, command: CatalogCommand) -> io::Result<()> {
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
            CatalogCommand::Part { .. } => unreachable!("parts are assembled by execute"),
        };
        result.map_err(io_error)
    }

    /// Records `file` (in the snapshot directory) as the current snapshot and removes every older
    /// snapshot file. A peer still sending an older one keeps its open file until it is done.
    async fn set_current(&self, meta: &SnapshotMetaOf<CatalogTypes>, file: &str) -> io::Result<()> {
        let record = SnapshotRecord { meta: meta.clone(), file: file.to_owned() };
        self.catalog.write_raft_state(SNAPSHOT_RECORD, json(&record)?).await.map_err(io_error)?;
        let (directory, keep) = (self.snapshots.clone(), file.to_owned());
        blocking(move || {
            for entry in std::fs::read_dir(&directory)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(SNAPSHOT_SUFFIX) && name != keep {
                    std::fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Turns an earlier build's snapshot record into a file, once.
    async fn convert_legacy_snapshot(&self) -> io::Result<Option<SnapshotRecord>> {
        let Some(bytes) = self.catalog.read_raft_state(LEGACY_SNAPSHOT).await.map_err(io_error)? else {
            return Ok(None);
        };
        let Some(legacy) = serde_json::from_slice::<Option<LegacySnapshot>>(&bytes).map_err(io_error)? else {
            return Ok(None);
        };
        let rows: Vec<Row> = postcard::from_bytes(&legacy.data).map_err(io_error)?;
        let name = unique_name("snapshot", SNAPSHOT_SUFFIX);
        let (path, directory) = (self.snapshots.join(&name), self.snapshots.clone());
        blocking(move || {
            write_rows(&path, rows)?;
            sync_dir(&directory)
        })
        .await?;
        self.set_current(&legacy.meta, &name).await?;
        // The old record is emptied (redb keeps no value it need not).
        self.catalog.write_raft_state(LEGACY_SNAPSHOT, b"null".to_vec()).await.map_err(io_error)?;
        info!(file = name, "converted the catalog snapshot of an earlier build into a file");
        Ok(Some(SnapshotRecord { meta: legacy.meta, file: name }))
    }
}

impl RaftSnapshotBuilder<CatalogTypes> for CatalogStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<CatalogTypes, SnapshotFile>> {
        let (catalog, directory) = (self.catalog.clone(), self.snapshots.clone());
        let name = unique_name("snapshot", SNAPSHOT_SUFFIX);
        let file = name.clone();
        let (state, rows) = blocking(move || {
            let building = directory.join(format!("{file}.building"));
            let mut writer = SnapshotWriter::create(&building)?;
            // The rows and the log position they stand for come from one read view.
            let state = catalog.export_rows_blocking(APPLIED, |table, key, value| writer.row(table, key, value)).map_err(io_error)?;
            let rows = writer.finish()?;
            std::fs::rename(&building, directory.join(&file))?;
            sync_dir(&directory)?;
            Ok((state, rows))
        })
        .await?;
        let applied: Applied = match state {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io_error)?,
            None => Applied::default(),
        };
        let meta = SnapshotMetaOf::<CatalogTypes> { last_log_id: applied.last_applied, last_membership: applied.membership };
        self.set_current(&meta, &name).await?;
        info!(rows, file = name, "catalog snapshot built");
        Ok(SnapshotOf::<CatalogTypes, SnapshotFile> { meta, snapshot: SnapshotFile::new(self.snapshots.join(name)) })
    }
}

impl RaftStateMachine<CatalogTypes> for CatalogStateMachine {
    type SnapshotData = SnapshotFile;
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
        let mut unsaved = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            match entry.payload {
                EntryPayload::Blank => {}
                // Every command is idempotent (a put, or adding to / removing from a set), so applying a
                // suffix of the log twice after a crash is harmless.
                EntryPayload::Normal(command) => self.execute(command).await?,
                EntryPayload::Membership(membership) => applied.membership = StoredMembership::new(Some(entry.log_id), membership),
            }
            applied.last_applied = Some(entry.log_id);
            unsaved = true;
            // The write is already committed in the log on a quorum: answering before the applied
            // position is saved loses nothing (a crash re-applies from the saved position).
            if let Some(responder) = responder {
                responder.send(CatalogResponse);
            }
        }
        // Once per batch, not once per entry: half the commits (each an fsync) of applying.
        if unsaved {
            self.save_applied(&applied).await?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Imports the file's rows in one transaction (with the log position they stand for), then
    /// keeps the file as the current snapshot: moved into place when it was received here, copied
    /// when it lies elsewhere.
    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<CatalogTypes>, snapshot: SnapshotFile) -> io::Result<()> {
        let applied = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        let state = json(&applied)?;
        let (catalog, directory, source) = (self.catalog.clone(), self.snapshots.clone(), snapshot.path);
        let (name, rows) = blocking(move || {
            let rows = catalog.import_rows_blocking(SnapshotReader::open(&source)?, Some((APPLIED, state))).map_err(io_error)?;
            let name = source.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            if source.parent() == Some(directory.as_path()) && name.ends_with(SNAPSHOT_SUFFIX) {
                return Ok((name, rows));
            }
            let name = unique_name("snapshot", SNAPSHOT_SUFFIX);
            if source.parent() == Some(directory.as_path()) {
                std::fs::rename(&source, directory.join(&name))?;
            } else {
                std::fs::copy(&source, directory.join(&name))?;
            }
            sync_dir(&directory)?;
            Ok((name, rows))
        })
        .await?;
        info!(rows, file = name, "catalog snapshot installed");
        self.set_current(meta, &name).await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<CatalogTypes, SnapshotFile>>> {
        let record = match self.catalog.read_raft_state(SNAPSHOT_RECORD).await.map_err(io_error)? {
            Some(bytes) => serde_json::from_slice::<SnapshotRecord>(&bytes).map_err(io_error)?,
            None => match self.convert_legacy_snapshot().await? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        let path = self.snapshots.join(&record.file);
        if !path.exists() {
            warn!(file = record.file, "the current catalog snapshot's file is gone");
            return Ok(None);
        }
        Ok(Some(SnapshotOf::<CatalogTypes, SnapshotFile> { meta: record.meta, snapshot: SnapshotFile::new(path) }))
    }
}
