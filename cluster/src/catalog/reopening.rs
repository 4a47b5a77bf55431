//! A redb database that is closed and opened again after a failed write.
//!
//! redb latches an I/O failure: once a write to its file failed (a full disk, say), every later
//! transaction on that `Database` is refused (`PreviousIo`, or "allocator state discarded" after a
//! failed commit) until it is closed and opened again, which repairs it from the last good commit.
//! Without a reopen, one `ENOSPC` would stop a node's catalog until the process restarts. Every
//! transaction of the catalog and of the Raft log goes through [`ReopeningDatabase::run`]; after an
//! error it asks redb whether the database is still usable, and if not the next `run` reopens it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, StorageError, TransactionError};
use tracing::{info, warn};

/// How long a reopen waits for the transactions still holding the failed database to end (they
/// fail fast on a latched database; a long snapshot read is the slow case). Past it the reopen is
/// tried again at the next use.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The database could not be (re)opened, or is being reopened; the operation was not done.
#[derive(Debug)]
pub(crate) struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "the database is unusable until reopened: {}", self.0)
    }
}

impl From<Unusable> for std::io::Error {
    fn from(unusable: Unusable) -> std::io::Error {
        std::io::Error::other(unusable.to_string())
    }
}

pub(crate) struct ReopeningDatabase {
    path: PathBuf,
    cache_bytes: usize,
    slot: Mutex<Slot>,
}

struct Slot {
    /// `None` after a reopen that failed (it is tried again at the next use).
    database: Option<Arc<Database>>,
    /// A write failed and redb latched it: reopen before the next use.
    failed: bool,
}

/// redb's page cache for the catalog (its default is 1 GiB for every database), so a node's memory for
/// it stays bounded whatever the catalog's size; pages beyond it are read from the OS page cache.
pub const CATALOG_CACHE_BYTES: usize = 64 << 20;
/// The Raft log's: entries are read back only to replicate and apply them, soon after they are written.
pub const LOG_CACHE_BYTES: usize = 16 << 20;

fn create(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new().set_cache_size(cache_bytes).create(path)
}

impl ReopeningDatabase {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<ReopeningDatabase, redb::DatabaseError> {
        let database = create(path, cache_bytes)?;
        Ok(ReopeningDatabase {
            path: path.to_owned(),
            cache_bytes,
            slot: Mutex::new(Slot { database: Some(Arc::new(database)), failed: false }),
        })
    }

    /// Runs `work` on the database (reopened first if an earlier write failed). Blocking: call it
    /// from a blocking thread.
    pub(crate) fn run<T, E: From<Unusable>>(&self, work: impl FnOnce(&Database) -> Result<T, E>) -> Result<T, E> {
        let database = self.current()?;
        let outcome = work(&database);
        if outcome.is_err() && latched(&database) {
            warn!(path = %self.path.display(), "a write to the database failed; it is reopened before its next use");
            let mut slot = self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.database.as_ref().is_some_and(|current| Arc::ptr_eq(current, &database)) {
                slot.failed = true;
            }
        }
        outcome
    }

    /// The open database; reopened when it failed.
    fn current(&self) -> Result<Arc<Database>, Unusable> {
        let mut slot = self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &slot.database {
            Some(database) if !slot.failed => return Ok(database.clone()),
            _ => {}
        }
        // The file stays locked while any handle lives: wait for every other user to let go.
        if let Some(mut held) = slot.database.take() {
            let deadline = Instant::now() + RELEASE_WAIT;
            loop {
                match Arc::try_unwrap(held) {
                    Ok(database) => {
                        drop(database);
                        break;
                    }
                    Err(still_held) if Instant::now() < deadline => {
                        held = still_held;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still_held) => {
                        slot.database = Some(still_held);
                        return Err(Unusable("the failed database is still in use".into()));
                    }
                }
            }
        }
        let database = Arc::new(create(&self.path, self.cache_bytes).map_err(|error| Unusable(error.to_string()))?);
        info!(path = %self.path.display(), "database reopened after a failed write");
        slot.database = Some(database.clone());
        slot.failed = false;
        Ok(database)
    }
}

/// Whether redb refuses further transactions on `database` until it is reopened.
fn latched(database: &Database) -> bool {
    match database.try_begin_write() {
        Ok(transaction) => {
            let _ = transaction.abort();
            false
        }
        Err(TransactionError::Storage(StorageError::PreviousIo | StorageError::Corrupted(_))) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("t");

    /// Commits the row `k` = `v` through `database`.
    fn write_row(database: &ReopeningDatabase) {
        database
            .run(|handle| {
                let transaction = handle.begin_write().map_err(std::io::Error::other)?;
                transaction
                    .open_table(TABLE)
                    .map_err(std::io::Error::other)?
                    .insert("k", b"v".as_slice())
                    .map_err(std::io::Error::other)?;
                transaction.commit().map_err(std::io::Error::other)
            })
            .unwrap();
    }

    #[test]
    fn a_healthy_database_is_kept_and_an_error_of_the_work_itself_does_not_reopen_it() {
        let directory = tempfile::tempdir().unwrap();
        let database = ReopeningDatabase::open(&directory.path().join("db.redb"), LOG_CACHE_BYTES).unwrap();
        let first = database.current().unwrap();
        let outcome: Result<(), std::io::Error> = database.run(|_| Err(std::io::Error::other("not redb's")));
        assert!(outcome.is_err());
        assert!(Arc::ptr_eq(&first, &database.current().unwrap()), "the database was reopened for an error that was not its own");
        write_row(&database);
    }

    #[test]
    fn a_database_marked_failed_is_reopened_with_its_committed_rows_once_its_users_let_go() {
        let directory = tempfile::tempdir().unwrap();
        let database = ReopeningDatabase::open(&directory.path().join("db.redb"), LOG_CACHE_BYTES).unwrap();
        write_row(&database);
        let first = database.current().unwrap();
        database.slot.lock().unwrap().failed = true;
        // A user still holds the failed handle for a while; the reopen waits for it.
        let holder = first.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(holder);
        });
        drop(first);
        let reopened = database.current().unwrap();
        releaser.join().unwrap();
        let value = database
            .run(|handle| {
                use redb::ReadableDatabase;
                let transaction = handle.begin_read().map_err(std::io::Error::other)?;
                let table = transaction.open_table(TABLE).map_err(std::io::Error::other)?;
                let value = table.get("k").map_err(std::io::Error::other)?.map(|guard| guard.value().to_vec());
                Ok::<_, std::io::Error>(value)
            })
            .unwrap();
        assert_eq!(value.as_deref(), Some(b"v".as_slice()));
        assert!(Arc::ptr_eq(&reopened, &database.current().unwrap()));
    }
}
