//! The Raft log, vote and committed index in a redb file of their own, encoded by `codec.rs`
//! (postcard; a log written as JSON by an earlier build still reads).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CatalogTypes, blocking, codec, io_error};
use crate::catalog::reopening::ReopeningDatabase;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The durable Raft log; a cheap handle (the log reader is the same handle).
#[derive(Clone)]
pub struct RedbLogStore {
    database: Arc<ReopeningDatabase>,
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value, true).map_err(io_error)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    codec::decode(bytes).map(|(value, _)| value).map_err(io_error)
}

impl RedbLogStore {
    pub fn open(path: &Path) -> io::Result<RedbLogStore> {
        let database = ReopeningDatabase::open(path, crate::catalog::reopening::LOG_CACHE_BYTES).map_err(io_error)?;
        database.run(|database| {
            let transaction = database.begin_write().map_err(io_error)?;
            transaction.open_table(LOG).map_err(io_error)?;
            transaction.open_table(META).map_err(io_error)?;
            transaction.commit().map_err(io_error)
        })?;
        Ok(RedbLogStore { database: Arc::new(database) })
    }

    async fn read_meta<T: DeserializeOwned + Send + 'static>(&self, key: &'static str) -> io::Result<Option<T>> {
        let database = self.database.clone();
        blocking(move || {
            database.run(|database| {
                let transaction = database.begin_read().map_err(io_error)?;
                let table = transaction.open_table(META).map_err(io_error)?;
                match table.get(key).map_err(io_error)? {
                    Some(bytes) => decode(bytes.value()).map(Some),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    /// Reads a meta row that holds an `Option` itself (postcard tags it, so it is read as one); an
    /// absent row is `None` too.
    async fn read_meta_option<T: DeserializeOwned + Send + 'static>(&self, key: &'static str) -> io::Result<Option<T>> {
        self.read_meta::<Option<T>>(key).await.map(Option::flatten)
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        let database = self.database.clone();
        blocking(move || {
            database.run(|database| {
                let transaction = database.begin_write().map_err(io_error)?;
                transaction.open_table(META).map_err(io_error)?.insert(key, bytes.as_slice()).map_err(io_error)?;
                transaction.commit().map_err(io_error)
            })
        })
        .await
    }
}

fn owned_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<CatalogTypes> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<CatalogTypes>>> {
        let bounds = owned_bounds(&range);
        let database = self.database.clone();
        blocking(move || {
            database.run(|database| {
                let transaction = database.begin_read().map_err(io_error)?;
                let table = transaction.open_table(LOG).map_err(io_error)?;
                let mut entries = Vec::new();
                for item in table.range::<u64>(bounds).map_err(io_error)? {
                    let (_, bytes) = item.map_err(io_error)?;
                    entries.push(decode(bytes.value())?);
                }
                Ok(entries)
            })
        })
        .await
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<CatalogTypes>>> {
        self.read_meta(VOTE).await
    }
}

impl RaftLogStorage<CatalogTypes> for RedbLogStore {
    type LogReader = RedbLogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<CatalogTypes>> {
        let last_purged: Option<LogIdOf<CatalogTypes>> = self.read_meta_option(LAST_PURGED).await?;
        let database = self.database.clone();
        let last_entry: Option<EntryOf<CatalogTypes>> = blocking(move || {
            database.run(|database| {
                let transaction = database.begin_read().map_err(io_error)?;
                let table = transaction.open_table(LOG).map_err(io_error)?;
                match table.last().map_err(io_error)? {
                    Some((_, bytes)) => decode(bytes.value()).map(Some),
                    None => Ok(None),
                }
            })
        })
        .await?;
        let last_log_id = last_entry.map(|entry| entry.log_id()).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<CatalogTypes>) -> io::Result<()> {
        self.write_meta(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<CatalogTypes>>) -> io::Result<()> {
        self.write_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<CatalogTypes>>> {
        // Written as an `Option` (postcard tags it; JSON writes `null` or the id), read as one.
        self.read_meta_option(COMMITTED).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<CatalogTypes>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<CatalogTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|entry| Ok((entry.index(), encode(&entry)?))).collect::<io::Result<_>>()?;
        let database = self.database.clone();
        // The commit is durable (redb fsyncs it) before the callback says the entries are flushed.
        let result = blocking(move || {
            database.run(|database| {
                let transaction = database.begin_write().map_err(io_error)?;
                {
                    let mut table = transaction.open_table(LOG).map_err(io_error)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice()).map_err(io_error)?;
                    }
                }
                transaction.commit().map_err(io_error)
            })
        })
        .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(io::Error::new(error.kind(), error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<CatalogTypes>>) -> io::Result<()> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index + 1);
        let database = self.database.clone();
        blocking(move || {
            database.run(|database| {
                let transaction = database.begin_write().map_err(io_error)?;
                transaction.open_table(LOG).map_err(io_error)?.retain(|index, _| index < first_removed).map_err(io_error)?;
                transaction.commit().map_err(io_error)
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<CatalogTypes>) -> io::Result<()> {
        let last_removed = log_id.index;
        let bytes = encode(&Some(log_id))?;
        let database = self.database.clone();
        blocking(move || {
            database.run(|database| {
                let transaction = database.begin_write().map_err(io_error)?;
                transaction.open_table(META).map_err(io_error)?.insert(LAST_PURGED, bytes.as_slice()).map_err(io_error)?;
                transaction.open_table(LOG).map_err(io_error)?.retain(|index, _| index > last_removed).map_err(io_error)?;
                transaction.commit().map_err(io_error)
            })
        })
        .await
    }
}
