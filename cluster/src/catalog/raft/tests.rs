//! openraft's storage conformance suite against the redb log store and the catalog state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::*;
use crate::catalog::LocalCatalog;

/// Builds a fresh store in its own temporary directory each time, as the suite requires.
struct RedbStoreBuilder;

impl StoreBuilder<CatalogTypes, RedbLogStore, CatalogStateMachine, tempfile::TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, RedbLogStore, CatalogStateMachine), StorageError<CatalogTypes>> {
        let directory = tempfile::tempdir().expect("temp dir");
        let log = RedbLogStore::open(&directory.path().join("raft-log.redb")).expect("log store");
        let catalog = LocalCatalog::open(&directory.path().join("catalog.redb")).expect("catalog");
        Ok((directory, log, CatalogStateMachine::new(catalog)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_passes_openraft_conformance_suite() {
    Suite::test_all(RedbStoreBuilder).await.unwrap();
}
