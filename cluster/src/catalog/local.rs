//! The single-node catalog: every record in one redb file on the node's disk.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::reopening::ReopeningDatabase;
use super::{
    Catalog, CatalogError, DocumentRecord, MANIFEST_PAGE_ENTRIES, Manifest, ManifestHead, ManifestPages, ManifestView, PinRecord,
    PolicyRecord, RefRecord, ReplicaRecord, RevisionFindings,
};
use crate::types::RepoKey;

const REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("refs");
/// Manifests of at most [`MANIFEST_PAGE_ENTRIES`] entries, keyed by repository and commit; and the
/// pages of larger ones, keyed by repository, commit and page number.
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
/// The heads of manifests stored in pages, keyed by repository and commit.
const MANIFEST_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest_heads");
const REPO_INFO: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_info");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
/// Replica records, keyed by etag.
const REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("replicas");
/// Pins, keyed by repository; the value carries the repository too, for listing.
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");
/// The Raft state machine's own bookkeeping (last applied log id, membership, current snapshot).
const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
/// The parts of a catalog write too large for one Raft log entry, keyed by the whole write's
/// digest and the part's index, until the last part arrives (see `raft::parts`).
const COMMAND_PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("command_parts");
/// Every table whose rows a snapshot carries.
const DATA_TABLES: [(&str, TableDefinition<&str, &[u8]>); 9] = [
    ("refs", REFS),
    ("manifests", MANIFESTS),
    ("manifest_heads", MANIFEST_HEADS),
    ("repo_info", REPO_INFO),
    ("policies", POLICIES),
    ("documents", DOCUMENTS),
    ("replicas", REPLICAS),
    ("pins", PINS),
    ("command_parts", COMMAND_PARTS),
];

/// One row of a data table as a snapshot carries it: (table, key, value).
pub(crate) type Row = (String, String, Vec<u8>);

/// How much memory decoded manifests, manifest pages and heads may hold (estimated, see
/// [`manifest_bytes`]): a resolve request looks its path up in one, and should not decode it per
/// request — but a count of manifests alone would let a few large ones take gigabytes. Every kept
/// item is at most a page ([`MANIFEST_PAGE_ENTRIES`]) or a page head, far below this.
const MANIFEST_MEMORY_BYTES: usize = 64 << 20;

/// The memory a decoded manifest takes, roughly: its strings and the fixed part of each entry.
fn manifest_bytes(manifest: &Manifest) -> usize {
    manifest
        .entries()
        .iter()
        .map(|entry| {
            std::mem::size_of::<crate::catalog::ManifestEntry>()
                + entry.path.len()
                + entry.oid.len()
                + entry.lfs.as_ref().map_or(0, |pointer| pointer.sha256.len())
        })
        .sum::<usize>()
        + manifest.index_bytes()
        + 64
}

/// The catalog of one node, stored in a redb database.
#[derive(Clone)]
pub struct LocalCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    database: ReopeningDatabase,
    manifest_memory: Mutex<ManifestMemory>,
    /// Refs and policies as last read or written: every warm request reads both, and a read from
    /// memory needs no trip through the blocking pool.
    hot: HotRecords,
}

/// How many refs and policies [`HotRecords`] keeps; past it, it starts over (a cold read refills it).
const HOT_RECORD_SLOTS: usize = 65_536;

/// The small records every warm request reads, kept in memory as the database holds them. A write
/// updates the copy after it is committed; a read from the database fills it only if no write
/// happened meanwhile (`generation`), so a slow read can never put an older record back over a
/// newer one. Replacing the tables (a snapshot) empties it.
///
/// The generation is also what [`Catalog::records_generation`] answers, per group of repositories
/// (`repo_generations`, by a hash of the repository): a write of one repository's ref does not make
/// every other repository's conclusions look stale.
#[derive(Default)]
struct HotRecords {
    refs: std::sync::RwLock<HashMap<String, RefRecord>>,
    policies: std::sync::RwLock<HashMap<String, PolicyRecord>>,
    generation: std::sync::atomic::AtomicU64,
    repo_generations: RepoGenerations,
    /// Snapshots installed (tables replaced).
    snapshots: std::sync::atomic::AtomicU64,
}

/// How many groups of repositories [`HotRecords`] counts writes for.
const REPO_GENERATION_GROUPS: usize = 1024;

/// Writes counted per group of repositories.
struct RepoGenerations([std::sync::atomic::AtomicU64; REPO_GENERATION_GROUPS]);

impl Default for RepoGenerations {
    fn default() -> Self {
        RepoGenerations(std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)))
    }
}

impl RepoGenerations {
    /// The group of the repository a [`repo_key`] names: FNV-1a of `type\0id`, the key's start.
    fn group_of_key(key: &str) -> usize {
        let mut parts = key.splitn(3, '\0');
        let (repo_type, repo_id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        Self::group(repo_type, repo_id)
    }

    fn group(repo_type: &str, repo_id: &str) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in repo_type.bytes().chain(std::iter::once(0)).chain(repo_id.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        (hash % REPO_GENERATION_GROUPS as u64) as usize
    }
}

impl HotRecords {
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Changes with every snapshot and every write of `repo`'s group (both only grow).
    fn repo_generation(&self, repo: &RepoKey) -> u64 {
        let group = RepoGenerations::group(repo.repo_type.as_str(), &repo.repo_id);
        let written = self.repo_generations.0[group].load(std::sync::atomic::Ordering::Acquire);
        written.wrapping_add(self.snapshots.load(std::sync::atomic::Ordering::Acquire) << 40)
    }

    fn get<T: Clone>(map: &std::sync::RwLock<HashMap<String, T>>, key: &str) -> Option<T> {
        map.read().expect("hot records poisoned").get(key).cloned()
    }

    /// Keeps a record read from the database, unless a write came in since `generation`.
    fn fill<T>(&self, map: &std::sync::RwLock<HashMap<String, T>>, key: String, value: T, generation: u64) {
        let mut map = map.write().expect("hot records poisoned");
        if self.generation() != generation {
            return;
        }
        if map.len() >= HOT_RECORD_SLOTS {
            map.clear();
        }
        map.insert(key, value);
    }

    /// Keeps a record just written (the write is committed).
    fn written<T>(&self, map: &std::sync::RwLock<HashMap<String, T>>, key: String, value: T) {
        let mut map = map.write().expect("hot records poisoned");
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.repo_generations.0[RepoGenerations::group_of_key(&key)].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if map.len() >= HOT_RECORD_SLOTS {
            map.clear();
        }
        map.insert(key, value);
    }

    fn clear(&self) {
        let (mut refs, mut policies) =
            (self.refs.write().expect("hot records poisoned"), self.policies.write().expect("hot records poisoned"));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.snapshots.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        refs.clear();
        policies.clear();
    }
}

/// A manifest (or a page of one) or the head of a paged manifest, as [`ManifestMemory`] keeps it.
#[derive(Clone)]
enum Kept {
    Manifest(Arc<Manifest>),
    Head(Arc<ManifestHead>),
}

impl Kept {
    fn bytes(&self) -> usize {
        match self {
            Kept::Manifest(manifest) => manifest_bytes(manifest),
            Kept::Head(head) => head.bytes(),
        }
    }
}

#[derive(Default)]
struct ManifestMemory {
    /// Each kept item with its estimated size.
    by_key: HashMap<String, (Kept, usize)>,
    /// Oldest kept first.
    order: VecDeque<String>,
    bytes: usize,
}

impl ManifestMemory {
    fn get(&self, key: &str) -> Option<Kept> {
        self.by_key.get(key).map(|(kept, _)| kept.clone())
    }

    fn insert(&mut self, key: String, kept: Kept) {
        let size = kept.bytes();
        if size > MANIFEST_MEMORY_BYTES / 2 {
            return; // never for what the catalog stores (pages are bounded); a guard, not a policy
        }
        match self.by_key.insert(key.clone(), (kept, size)) {
            Some((_, replaced)) => self.bytes -= replaced,
            None => self.order.push_back(key),
        }
        self.bytes += size;
        while self.bytes > MANIFEST_MEMORY_BYTES {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some((_, size)) = self.by_key.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }
}

/// The key of page `index` of a paged manifest stored under `key`.
fn page_key(key: &str, index: usize) -> String {
    format!("{key}\0{index:06}")
}

/// The pages of one paged manifest, read from the catalog through its memory.
struct StoredPages {
    catalog: LocalCatalog,
    key: String,
}

#[async_trait::async_trait]
impl ManifestPages for StoredPages {
    async fn page(&self, index: usize) -> Result<Arc<Manifest>, CatalogError> {
        let key = page_key(&self.key, index);
        let memory = &self.catalog.inner.manifest_memory;
        if let Some(Kept::Manifest(page)) = memory.lock().expect("manifest memory poisoned").get(&key) {
            return Ok(page);
        }
        // Pages are written with their head in one transaction and never change, so a missing one
        // means the tables were replaced (a snapshot) since the head was read.
        let page = self
            .catalog
            .read_record::<Manifest>(MANIFESTS, key.clone())
            .await?
            .ok_or_else(|| CatalogError::Storage(format!("manifest page {index} of {:?} is missing", self.key)))?;
        let page = Arc::new(page);
        memory.lock().expect("manifest memory poisoned").insert(key, Kept::Manifest(page.clone()));
        Ok(page)
    }
}

fn storage_error(error: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(error.to_string())
}

fn repo_key(repo: &RepoKey, rest: &[&str]) -> String {
    let mut key = format!("{}\0{}", repo.repo_type.as_str(), repo.repo_id);
    for part in rest {
        key.push('\0');
        key.push_str(part);
    }
    key
}

/// Splits a key made by [`repo_key`] back into the repository and the rest; `None` for a key that
/// names no known repository type.
fn split_repo_key(key: &str) -> Option<(RepoKey, Vec<&str>)> {
    let mut parts = key.split('\0');
    let repo_type = crate::types::RepoType::parse(parts.next()?)?;
    let repo_id = parts.next()?;
    Some((RepoKey::new(repo_type, repo_id), parts.collect()))
}

impl LocalCatalog {
    /// Opens (or creates) the catalog file, creating every table so that reads never meet a missing
    /// table.
    pub fn open(path: &Path) -> Result<LocalCatalog, CatalogError> {
        let database = ReopeningDatabase::open(path, super::reopening::CATALOG_CACHE_BYTES).map_err(storage_error)?;
        database.run(|database| {
            let transaction = database.begin_write().map_err(storage_error)?;
            for table in [REFS, MANIFESTS, MANIFEST_HEADS, REPO_INFO, POLICIES, DOCUMENTS, REPLICAS, PINS, COMMAND_PARTS, RAFT_STATE] {
                transaction.open_table(table).map_err(storage_error)?;
            }
            transaction.commit().map_err(storage_error)
        })?;
        Ok(LocalCatalog {
            inner: Arc::new(Inner { database, manifest_memory: Mutex::new(ManifestMemory::default()), hot: HotRecords::default() }),
        })
    }

    async fn read_raw(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_read().map_err(storage_error)?;
                let opened = transaction.open_table(table).map_err(storage_error)?;
                let value = opened.get(key.as_str()).map_err(storage_error)?;
                Ok(value.map(|guard| guard.value().to_vec()))
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    async fn write_raw(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), CatalogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                {
                    let mut opened = transaction.open_table(table).map_err(storage_error)?;
                    opened.insert(key.as_str(), value.as_slice()).map_err(storage_error)?;
                }
                transaction.commit().map_err(storage_error)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    /// Reads, changes and writes back (or deletes, when `change` leaves `None`) one record in a single
    /// write transaction, so concurrent updates of the same key cannot lose each other.
    async fn update_record<T: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
        change: impl FnOnce(&mut Option<T>) + Send + 'static,
    ) -> Result<(), CatalogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                {
                    let mut opened = transaction.open_table(table).map_err(storage_error)?;
                    let current: Option<Vec<u8>> =
                        redb::ReadableTable::get(&opened, key.as_str()).map_err(storage_error)?.map(|guard| guard.value().to_vec());
                    let mut record = match current {
                        // An undecodable record is replaced rather than blocking every later update.
                        Some(bytes) => postcard::from_bytes::<T>(&bytes).ok(),
                        None => None,
                    };
                    change(&mut record);
                    match record {
                        Some(record) => {
                            let bytes = postcard::to_stdvec(&record).map_err(|error| CatalogError::Codec(error.to_string()))?;
                            opened.insert(key.as_str(), bytes.as_slice()).map_err(storage_error)?;
                        }
                        None => {
                            opened.remove(key.as_str()).map_err(storage_error)?;
                        }
                    }
                }
                transaction.commit().map_err(storage_error)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    /// Every row of a table that `keep` turns into a value (from its key and its bytes).
    async fn scan_rows<T: Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        keep: fn(&str, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>, CatalogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_read().map_err(storage_error)?;
                let opened = transaction.open_table(table).map_err(storage_error)?;
                let mut rows = Vec::new();
                for item in redb::ReadableTable::iter(&opened).map_err(storage_error)? {
                    let (key, value) = item.map_err(storage_error)?;
                    rows.extend(keep(key.value(), value.value()));
                }
                Ok(rows)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    /// Every decodable record of a table with its key; undecodable rows are skipped.
    async fn scan_records<T: DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        self.scan_rows(table, |key, value| Some((key.to_owned(), postcard::from_bytes::<T>(value).ok()?))).await
    }

    /// Every key of a table (the values are not decoded).
    async fn scan_keys(&self, table: TableDefinition<'static, &'static str, &'static [u8]>) -> Result<Vec<String>, CatalogError> {
        self.scan_rows(table, |key, _| Some(key.to_owned())).await
    }

    /// Reads a row of the Raft state machine's bookkeeping.
    pub(crate) async fn read_raft_state(&self, key: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        self.read_raw(RAFT_STATE, key.to_owned()).await
    }

    pub(crate) async fn write_raft_state(&self, key: &str, value: Vec<u8>) -> Result<(), CatalogError> {
        self.write_raw(RAFT_STATE, key.to_owned(), value).await
    }

    /// Hands every row of every data table to `row`, from one read transaction, and returns the
    /// Raft state row `state_key` as that same view holds it: a snapshot's rows and the log position
    /// they stand for can never disagree. Blocking (runs on the caller's blocking thread); memory
    /// stays one row at a time.
    pub(crate) fn export_rows_blocking(
        &self,
        state_key: &str,
        mut row: impl FnMut(&str, &str, &[u8]) -> std::io::Result<()>,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        self.inner.database.run(|database| {
            let transaction = database.begin_read().map_err(storage_error)?;
            let state = transaction
                .open_table(RAFT_STATE)
                .map_err(storage_error)?
                .get(state_key)
                .map_err(storage_error)?
                .map(|guard| guard.value().to_vec());
            for (name, definition) in DATA_TABLES {
                let table = transaction.open_table(definition).map_err(storage_error)?;
                for item in redb::ReadableTable::iter(&table).map_err(storage_error)? {
                    let (key, value) = item.map_err(storage_error)?;
                    row(name, key.value(), value.value()).map_err(storage_error)?;
                }
            }
            Ok(state)
        })
    }

    /// Replaces every data table with `rows`, in one transaction that commits only when every row
    /// was read without error (a snapshot cut short or failing its checksum changes nothing), and
    /// writes the Raft state row `state` (the log position the rows stand for) in the same
    /// transaction. Blocking; memory stays one row at a time besides redb's own pages.
    pub(crate) fn import_rows_blocking(
        &self,
        rows: impl Iterator<Item = std::io::Result<Row>>,
        state: Option<(&str, Vec<u8>)>,
    ) -> Result<u64, CatalogError> {
        let count = self.inner.database.run(|database| {
            let transaction = database.begin_write().map_err(storage_error)?;
            let mut count = 0u64;
            if let Some((key, value)) = state {
                transaction.open_table(RAFT_STATE).map_err(storage_error)?.insert(key, value.as_slice()).map_err(storage_error)?;
            }
            {
                let mut tables = Vec::with_capacity(DATA_TABLES.len());
                for (name, definition) in DATA_TABLES {
                    let mut table = transaction.open_table(definition).map_err(storage_error)?;
                    table.retain(|_, _| false).map_err(storage_error)?;
                    tables.push((name, table));
                }
                for row in rows {
                    let (name, key, value) = row.map_err(storage_error)?;
                    let Some((_, table)) = tables.iter_mut().find(|(table, _)| *table == name) else {
                        return Err(CatalogError::Codec(format!("snapshot names an unknown table {name:?}")));
                    };
                    table.insert(key.as_str(), value.as_slice()).map_err(storage_error)?;
                    count += 1;
                }
            }
            transaction.commit().map_err(storage_error)?;
            Ok(count)
        })?;
        let mut memory = self.inner.manifest_memory.lock().expect("manifest memory poisoned");
        *memory = ManifestMemory::default();
        self.inner.hot.clear();
        Ok(count)
    }

    /// Stages part `index` of `count` of a large write whose encoding has SHA-256 `digest`; returns
    /// the whole encoding once every part is there. The parts stay until [`Self::drop_command_parts`]
    /// (after the write is applied), so a crash between assembling and applying loses nothing.
    pub(crate) async fn put_command_part(
        &self,
        digest: &str,
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let inner = self.inner.clone();
        let prefix = format!("{digest}\0");
        let end = format!("{digest}\u{1}");
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                let whole = {
                    let mut table = transaction.open_table(COMMAND_PARTS).map_err(storage_error)?;
                    table.insert(format!("{prefix}{index:010}").as_str(), bytes.as_slice()).map_err(storage_error)?;
                    let mut whole = Vec::new();
                    let mut present = 0u32;
                    for item in redb::ReadableTable::range(&table, prefix.as_str()..end.as_str()).map_err(storage_error)? {
                        let (_, value) = item.map_err(storage_error)?;
                        whole.extend_from_slice(value.value());
                        present += 1;
                    }
                    (present == count).then_some(whole)
                };
                transaction.commit().map_err(storage_error)?;
                Ok(whole)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    /// Removes the staged parts of the large write `digest` (it was applied).
    pub(crate) async fn drop_command_parts(&self, digest: &str) -> Result<(), CatalogError> {
        let inner = self.inner.clone();
        let (start, end) = (format!("{digest}\0"), format!("{digest}\u{1}"));
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                transaction
                    .open_table(COMMAND_PARTS)
                    .map_err(storage_error)?
                    .retain_in(start.as_str()..end.as_str(), |_, _| false)
                    .map_err(storage_error)?;
                transaction.commit().map_err(storage_error)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)?
    }

    /// The view of a manifest kept (or just read) under `key`.
    fn view_of(&self, key: String, kept: Kept) -> ManifestView {
        match kept {
            Kept::Manifest(manifest) => ManifestView::Whole(manifest),
            Kept::Head(head) => ManifestView::Paged { head, pages: Arc::new(StoredPages { catalog: self.clone(), key }) },
        }
    }

    /// Reads a record kept in [`HotRecords`]: from memory, else from the database (then kept).
    async fn read_hot<T: DeserializeOwned + Clone>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        map: fn(&HotRecords) -> &std::sync::RwLock<HashMap<String, T>>,
        key: String,
    ) -> Result<Option<T>, CatalogError> {
        let hot = &self.inner.hot;
        if let Some(record) = HotRecords::get(map(hot), &key) {
            return Ok(Some(record));
        }
        let generation = hot.generation();
        let record: Option<T> = self.read_record(table, key.clone()).await?;
        if let Some(record) = &record {
            hot.fill(map(hot), key, record.clone(), generation);
        }
        Ok(record)
    }

    async fn read_record<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
    ) -> Result<Option<T>, CatalogError> {
        match self.read_raw(table, key).await? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|error| CatalogError::Codec(error.to_string())),
        }
    }

    async fn write_record<T: Serialize>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
        record: &T,
    ) -> Result<(), CatalogError> {
        let bytes = postcard::to_stdvec(record).map_err(|error| CatalogError::Codec(error.to_string()))?;
        self.write_raw(table, key, bytes).await
    }
}

#[async_trait::async_trait]
impl Catalog for LocalCatalog {
    fn records_generation(&self, repo: &RepoKey) -> Option<u64> {
        Some(self.inner.hot.repo_generation(repo))
    }

    async fn get_ref(&self, repo: &RepoKey, revision: &str) -> Result<Option<RefRecord>, CatalogError> {
        self.read_hot(REFS, |hot| &hot.refs, repo_key(repo, &[revision])).await
    }

    async fn put_ref(&self, repo: &RepoKey, revision: &str, record: RefRecord) -> Result<(), CatalogError> {
        let key = repo_key(repo, &[revision]);
        self.write_record(REFS, key.clone(), &record).await?;
        self.inner.hot.written(&self.inner.hot.refs, key, record);
        Ok(())
    }

    async fn get_manifest(&self, repo: &RepoKey, commit: &str) -> Result<Option<ManifestView>, CatalogError> {
        let key = repo_key(repo, &[commit]);
        let kept = self.inner.manifest_memory.lock().expect("manifest memory poisoned").get(&key);
        let kept = match kept {
            Some(kept) => kept,
            None => {
                let inner = self.inner.clone();
                let read_key = key.clone();
                // Both tables from one read transaction: a manifest is in exactly one of them.
                let (whole, head) = tokio::task::spawn_blocking(move || {
                    inner.database.run(|database| {
                        let transaction = database.begin_read().map_err(storage_error)?;
                        let mut found = Vec::with_capacity(2);
                        for table in [MANIFESTS, MANIFEST_HEADS] {
                            let opened = transaction.open_table(table).map_err(storage_error)?;
                            found.push(opened.get(read_key.as_str()).map_err(storage_error)?.map(|guard| guard.value().to_vec()));
                        }
                        let head = found.pop().flatten();
                        Ok::<_, CatalogError>((found.pop().flatten(), head))
                    })
                })
                .await
                .map_err(|_| CatalogError::Closed)??;
                let decode_error = |error: postcard::Error| CatalogError::Codec(error.to_string());
                let kept = match (whole, head) {
                    (Some(bytes), _) => Kept::Manifest(Arc::new(postcard::from_bytes(&bytes).map_err(decode_error)?)),
                    (None, Some(bytes)) => Kept::Head(Arc::new(postcard::from_bytes(&bytes).map_err(decode_error)?)),
                    (None, None) => return Ok(None),
                };
                self.inner.manifest_memory.lock().expect("manifest memory poisoned").insert(key.clone(), kept.clone());
                kept
            }
        };
        Ok(Some(self.view_of(key, kept)))
    }

    async fn put_manifest(&self, repo: &RepoKey, commit: &str, manifest: Manifest) -> Result<ManifestView, CatalogError> {
        let key = repo_key(repo, &[commit]);
        if manifest.entries().len() <= MANIFEST_PAGE_ENTRIES {
            self.write_record(MANIFESTS, key.clone(), &manifest).await?;
            let kept = Kept::Manifest(Arc::new(manifest));
            self.inner.manifest_memory.lock().expect("manifest memory poisoned").insert(key.clone(), kept.clone());
            return Ok(self.view_of(key, kept));
        }
        let (head, pages) = ManifestHead::paginate(&manifest);
        drop(manifest);
        let mut rows = Vec::with_capacity(pages.len() + 1);
        for (index, page) in pages.iter().enumerate() {
            rows.push((page_key(&key, index), postcard::to_stdvec(page).map_err(|error| CatalogError::Codec(error.to_string()))?));
        }
        drop(pages);
        let head_bytes = postcard::to_stdvec(&head).map_err(|error| CatalogError::Codec(error.to_string()))?;
        let inner = self.inner.clone();
        let head_key = key.clone();
        // The head and its pages in one transaction: a reader that finds the head finds every page.
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                {
                    let mut manifests = transaction.open_table(MANIFESTS).map_err(storage_error)?;
                    for (key, bytes) in &rows {
                        manifests.insert(key.as_str(), bytes.as_slice()).map_err(storage_error)?;
                    }
                    let mut heads = transaction.open_table(MANIFEST_HEADS).map_err(storage_error)?;
                    heads.insert(head_key.as_str(), head_bytes.as_slice()).map_err(storage_error)?;
                }
                transaction.commit().map_err(storage_error)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)??;
        let kept = Kept::Head(Arc::new(head));
        self.inner.manifest_memory.lock().expect("manifest memory poisoned").insert(key.clone(), kept.clone());
        Ok(self.view_of(key, kept))
    }

    async fn get_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        self.read_raw(REPO_INFO, repo_key(repo, &[commit, variant])).await
    }

    async fn put_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str, body: Vec<u8>) -> Result<(), CatalogError> {
        self.write_raw(REPO_INFO, repo_key(repo, &[commit, variant]), body).await
    }

    async fn get_policy(&self, repo: &RepoKey) -> Result<Option<PolicyRecord>, CatalogError> {
        self.read_hot(POLICIES, |hot| &hot.policies, repo_key(repo, &[])).await
    }

    async fn put_policy(&self, repo: &RepoKey, record: PolicyRecord) -> Result<(), CatalogError> {
        let key = repo_key(repo, &[]);
        self.write_record(POLICIES, key.clone(), &record).await?;
        self.inner.hot.written(&self.inner.hot.policies, key, record);
        Ok(())
    }

    /// One write transaction (one sync) for all of it.
    async fn put_revision_findings(&self, repo: &RepoKey, findings: RevisionFindings) -> Result<(), CatalogError> {
        let codec = |error: postcard::Error| CatalogError::Codec(error.to_string());
        let mut rows: Vec<(TableDefinition<'static, &'static str, &'static [u8]>, String, Vec<u8>)> =
            findings.infos.into_iter().map(|(variant, body)| (REPO_INFO, repo_key(repo, &[&findings.commit, &variant]), body)).collect();
        let reference = findings.reference.map(|(revision, record)| (repo_key(repo, &[&revision]), record));
        if let Some((key, record)) = &reference {
            rows.push((REFS, key.clone(), postcard::to_stdvec(record).map_err(codec)?));
        }
        let policy = findings.policy.map(|record| (repo_key(repo, &[]), record));
        if let Some((key, record)) = &policy {
            rows.push((POLICIES, key.clone(), postcard::to_stdvec(record).map_err(codec)?));
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.database.run(|database| {
                let transaction = database.begin_write().map_err(storage_error)?;
                for (table, key, value) in &rows {
                    let mut opened = transaction.open_table(*table).map_err(storage_error)?;
                    opened.insert(key.as_str(), value.as_slice()).map_err(storage_error)?;
                }
                transaction.commit().map_err(storage_error)
            })
        })
        .await
        .map_err(|_| CatalogError::Closed)??;
        if let Some((key, record)) = reference {
            self.inner.hot.written(&self.inner.hot.refs, key, record);
        }
        if let Some((key, record)) = policy {
            self.inner.hot.written(&self.inner.hot.policies, key, record);
        }
        Ok(())
    }

    async fn get_document(&self, key: &str) -> Result<Option<DocumentRecord>, CatalogError> {
        self.read_record(DOCUMENTS, key.to_owned()).await
    }

    async fn put_document(&self, key: &str, record: DocumentRecord) -> Result<(), CatalogError> {
        self.write_record(DOCUMENTS, key.to_owned(), &record).await
    }

    async fn get_replicas(&self, etag: &str) -> Result<Option<ReplicaRecord>, CatalogError> {
        self.read_record(REPLICAS, etag.to_owned()).await
    }

    async fn list_replicas(&self) -> Result<Vec<(String, ReplicaRecord)>, CatalogError> {
        self.scan_records(REPLICAS).await
    }

    async fn add_replica(&self, etag: &str, node: &str, size: u64) -> Result<(), CatalogError> {
        let node = node.to_owned();
        self.update_record(REPLICAS, etag.to_owned(), move |record: &mut Option<ReplicaRecord>| {
            let record = record.get_or_insert_with(ReplicaRecord::default);
            record.size = size;
            record.add(&node);
        })
        .await
    }

    async fn remove_replica(&self, etag: &str, node: &str) -> Result<(), CatalogError> {
        let node = node.to_owned();
        self.update_record(REPLICAS, etag.to_owned(), move |record: &mut Option<ReplicaRecord>| {
            if let Some(current) = record {
                current.remove(&node);
                if current.holders.is_empty() {
                    *record = None;
                }
            }
        })
        .await
    }

    async fn list_policies(&self) -> Result<Vec<(RepoKey, PolicyRecord)>, CatalogError> {
        let records = self.scan_records::<PolicyRecord>(POLICIES).await?;
        Ok(records.into_iter().filter_map(|(key, record)| Some((split_repo_key(&key)?.0, record))).collect())
    }

    async fn list_refs(&self) -> Result<Vec<(RepoKey, String, RefRecord)>, CatalogError> {
        let records = self.scan_records::<RefRecord>(REFS).await?;
        Ok(records
            .into_iter()
            .filter_map(|(key, record)| {
                let (repo, rest) = split_repo_key(&key)?;
                let [revision] = rest.as_slice() else { return None };
                Some((repo, (*revision).to_owned(), record))
            })
            .collect())
    }

    async fn list_manifest_keys(&self) -> Result<Vec<(RepoKey, String)>, CatalogError> {
        // Whole manifests and the heads of paged ones; a page's key has one part more and is left out.
        let mut keys = self.scan_keys(MANIFESTS).await?;
        keys.extend(self.scan_keys(MANIFEST_HEADS).await?);
        Ok(keys
            .iter()
            .filter_map(|key| {
                let (repo, rest) = split_repo_key(key)?;
                let [commit] = rest.as_slice() else { return None };
                Some((repo, (*commit).to_owned()))
            })
            .collect())
    }

    async fn list_pins(&self) -> Result<Vec<(RepoKey, PinRecord)>, CatalogError> {
        Ok(self.scan_records::<(RepoKey, PinRecord)>(PINS).await?.into_iter().map(|(_, pin)| pin).collect())
    }

    async fn put_pin(&self, repo: &RepoKey, record: PinRecord) -> Result<(), CatalogError> {
        self.write_record(PINS, repo_key(repo, &[]), &(repo.clone(), record)).await
    }

    async fn remove_pin(&self, repo: &RepoKey) -> Result<(), CatalogError> {
        self.update_record(PINS, repo_key(repo, &[]), |record: &mut Option<(RepoKey, PinRecord)>| *record = None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{EntryKind, ManifestEntry};
    use crate::types::RepoType;

    /// Every row a snapshot of `catalog` would carry.
    fn snapshot_rows(catalog: &LocalCatalog) -> Vec<Row> {
        let mut rows = Vec::new();
        catalog
            .export_rows_blocking("none", |table, key, value| {
                rows.push((table.to_owned(), key.to_owned(), value.to_vec()));
                Ok(())
            })
            .unwrap();
        rows
    }

    fn manifest_of(files: usize) -> Arc<Manifest> {
        Arc::new(Manifest::new(
            (0..files)
                .map(|index| ManifestEntry {
                    path: format!("data/file-{index:07}.bin"),
                    kind: EntryKind::File,
                    size: 1,
                    oid: "a".repeat(40),
                    lfs: None,
                })
                .collect(),
        ))
    }

    #[test]
    fn decoded_manifests_are_kept_within_a_byte_budget() {
        let mut memory = ManifestMemory::default();
        let small = manifest_of(100);
        let per_manifest = manifest_bytes(&small);
        let fitting = MANIFEST_MEMORY_BYTES / per_manifest;
        for index in 0..fitting + 100 {
            memory.insert(format!("small-{index}"), Kept::Manifest(small.clone()));
        }
        assert!(memory.bytes <= MANIFEST_MEMORY_BYTES);
        assert_eq!(memory.by_key.len(), fitting, "as many as fit, the oldest gone first");
        assert!(memory.get("small-0").is_none() && memory.get(&format!("small-{}", fitting + 99)).is_some());
        // One item bigger than half the budget is not kept at all.
        let huge = manifest_of(MANIFEST_MEMORY_BYTES / 2 / 60);
        assert!(manifest_bytes(&huge) > MANIFEST_MEMORY_BYTES / 2);
        memory.insert("huge".into(), Kept::Manifest(huge));
        assert!(memory.get("huge").is_none());
        assert_eq!(memory.by_key.len(), fitting);
    }

    /// A manifest with more entries than a page is stored in pages: found, listed and counted the
    /// same after a reopen and through a snapshot, with only pages and heads in memory.
    #[tokio::test]
    async fn revision_findings_are_one_write_read_back_like_single_puts() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("catalog.redb");
        let repo = RepoKey::new(RepoType::Model, "org/model");
        let commit = "c".repeat(40);
        let reference = RefRecord { commit: commit.clone(), checked_at_ms: 7 };
        let policy = PolicyRecord { cacheable: true, reason: "public".into(), checked_at_ms: 8 };
        let findings = RevisionFindings {
            commit: commit.clone(),
            infos: vec![(String::new(), b"{\"plain\":1}".to_vec()), ("blobs=true".into(), b"{\"blobs\":1}".to_vec())],
            reference: Some(("main".into(), reference.clone())),
            policy: Some(policy.clone()),
        };
        {
            let catalog = LocalCatalog::open(&path).unwrap();
            let generation = catalog.records_generation(&repo).unwrap();
            catalog.put_revision_findings(&repo, findings).await.unwrap();
            assert_ne!(catalog.records_generation(&repo).unwrap(), generation, "a conclusion drawn before is no longer fresh");
            // Read back through the in-memory copies the request path reads.
            assert_eq!(catalog.get_ref(&repo, "main").await.unwrap(), Some(reference.clone()));
            assert_eq!(catalog.get_policy(&repo).await.unwrap(), Some(policy.clone()));
        }
        // And from disk.
        let catalog = LocalCatalog::open(&path).unwrap();
        assert_eq!(catalog.get_ref(&repo, "main").await.unwrap(), Some(reference));
        assert_eq!(catalog.get_policy(&repo).await.unwrap(), Some(policy));
        assert_eq!(catalog.get_repo_info(&repo, &commit, "").await.unwrap().unwrap(), b"{\"plain\":1}");
        assert_eq!(catalog.get_repo_info(&repo, &commit, "blobs=true").await.unwrap().unwrap(), b"{\"blobs\":1}");
    }

    #[tokio::test]
    async fn a_large_manifest_is_stored_and_read_in_pages() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("catalog.redb");
        let repo = RepoKey::new(RepoType::Dataset, "org/big");
        let commit = "1".repeat(40);
        let files = MANIFEST_PAGE_ENTRIES * 19 / 2;
        let manifest = manifest_of(files);
        let mut with_directory = manifest.entries().to_vec();
        with_directory.push(ManifestEntry { path: "data".into(), kind: EntryKind::Directory, size: 0, oid: "d".repeat(40), lfs: None });
        let manifest = Manifest::new(with_directory);
        {
            let catalog = LocalCatalog::open(&path).unwrap();
            let stored = catalog.put_manifest(&repo, &commit, manifest.clone()).await.unwrap();
            assert!(matches!(&stored, ManifestView::Paged { head, .. } if head.first_paths.len() == 10), "{stored:?}");
        }
        let catalog = LocalCatalog::open(&path).unwrap();
        let view = catalog.get_manifest(&repo, &commit).await.unwrap().unwrap();
        assert_eq!((view.len(), view.page_count()), (files as u64 + 1, 10));
        let last = format!("data/file-{:07}.bin", files - 1);
        assert_eq!(view.find(&last).await.unwrap().unwrap().path, last);
        assert!(view.find("data/file-9999999.bin").await.unwrap().is_none());
        let mut listed = Vec::new();
        let more = view
            .list("data", false, &crate::catalog::ListStart::After("data/file-0001000.bin".into()), 50, |entry| {
                listed.push(entry.path.clone())
            })
            .await
            .unwrap();
        assert_eq!((listed.len(), more), (50, Some(true)));
        assert_eq!(listed[0], "data/file-0001001.bin");
        assert_eq!(catalog.list_manifest_keys().await.unwrap(), [(repo.clone(), commit.clone())], "pages are not manifests of their own");
        {
            let memory = catalog.inner.manifest_memory.lock().unwrap();
            // The head, the first page (the directory and the listing) and the last (the lookup): two of ten.
            assert!(memory.bytes < manifest_bytes(&manifest) / 3, "a lookup and a listing kept {} bytes", memory.bytes);
        }
        let snapshot = snapshot_rows(&catalog);
        let other = LocalCatalog::open(&directory.path().join("other.redb")).unwrap();
        other.import_rows_blocking(snapshot.into_iter().map(Ok), None).unwrap();
        let copied = other.get_manifest(&repo, &commit).await.unwrap().unwrap();
        assert_eq!(copied.to_whole().await.unwrap().as_ref(), &manifest);
    }

    #[tokio::test]
    async fn records_survive_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("catalog.redb");
        let repo = RepoKey::new(RepoType::Model, "org/model");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        {
            let catalog = LocalCatalog::open(&path).unwrap();
            catalog.put_ref(&repo, "main", RefRecord { commit: commit.into(), checked_at_ms: 7 }).await.unwrap();
            let entry = ManifestEntry { path: "config.json".into(), kind: EntryKind::File, size: 42, oid: "5".repeat(40), lfs: None };
            catalog.put_manifest(&repo, commit, Manifest::new(vec![entry])).await.unwrap();
            catalog.put_repo_info(&repo, commit, "", b"{}".to_vec()).await.unwrap();
            catalog.put_policy(&repo, PolicyRecord { cacheable: true, reason: "public".into(), checked_at_ms: 9 }).await.unwrap();
        }
        let catalog = LocalCatalog::open(&path).unwrap();
        assert_eq!(catalog.get_ref(&repo, "main").await.unwrap().unwrap().commit, commit);
        assert!(catalog.get_ref(&repo, "other").await.unwrap().is_none());
        let manifest = catalog.get_manifest(&repo, commit).await.unwrap().unwrap();
        assert_eq!(manifest.find("config.json").await.unwrap().unwrap().size, 42);
        assert_eq!(catalog.get_repo_info(&repo, commit, "").await.unwrap().unwrap(), b"{}");
        assert!(catalog.get_repo_info(&repo, commit, "blobs=true").await.unwrap().is_none());
        assert!(catalog.get_policy(&repo).await.unwrap().unwrap().cacheable);
        let dataset = RepoKey::new(RepoType::Dataset, "org/model");
        assert!(catalog.get_ref(&dataset, "main").await.unwrap().is_none(), "repo types are separate keys");
        // The listings the exported indexes read give the same records back with their keys.
        assert_eq!(
            catalog.list_refs().await.unwrap(),
            [(repo.clone(), "main".to_owned(), RefRecord { commit: commit.into(), checked_at_ms: 7 })]
        );
        assert_eq!(catalog.list_manifest_keys().await.unwrap(), [(repo.clone(), commit.to_owned())]);
        let policies = catalog.list_policies().await.unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].0, repo);
    }

    #[tokio::test]
    async fn replica_records_follow_adds_and_removes() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
        let etag = "a".repeat(64);
        catalog.add_replica(&etag, "fra1", 10).await.unwrap();
        catalog.add_replica(&etag, "ams1", 10).await.unwrap();
        catalog.add_replica(&etag, "fra1", 10).await.unwrap();
        assert_eq!(catalog.get_replicas(&etag).await.unwrap().unwrap().holders, ["ams1", "fra1"]);
        catalog.remove_replica(&etag, "fra1").await.unwrap();
        catalog.remove_replica(&"b".repeat(64), "fra1").await.unwrap();
        assert_eq!(catalog.list_replicas().await.unwrap(), [(etag.clone(), ReplicaRecord { size: 10, holders: vec!["ams1".into()] })]);
        catalog.remove_replica(&etag, "ams1").await.unwrap();
        assert!(catalog.get_replicas(&etag).await.unwrap().is_none(), "the record goes with its last holder");

        let repo = RepoKey::new(RepoType::Dataset, "org/data");
        let pin = PinRecord { revision: "main".into(), commit: "c".repeat(40), pinned_at_ms: 1, next_commit: None };
        catalog.put_pin(&repo, pin.clone()).await.unwrap();
        assert_eq!(catalog.list_pins().await.unwrap(), [(repo.clone(), pin)]);
        catalog.remove_pin(&repo).await.unwrap();
        assert!(catalog.list_pins().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_undecodable_record_is_a_codec_error() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
        let repo = RepoKey::new(RepoType::Model, "org/model");
        catalog.write_raw(REFS, repo_key(&repo, &["main"]), vec![0xff; 3]).await.unwrap();
        assert!(matches!(catalog.get_ref(&repo, "main").await, Err(CatalogError::Codec(_))));
    }

    #[tokio::test]
    async fn refs_and_policies_kept_in_memory_follow_every_write_and_a_snapshot() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
        let repo = RepoKey::new(RepoType::Model, "org/model");
        // The generation conclusions about the repository are stamped with: every write and every
        // snapshot changes it; reads do not.
        let generations = std::cell::RefCell::new(vec![catalog.records_generation(&repo).unwrap()]);
        let changed = |what: &str| {
            let now = catalog.records_generation(&repo).unwrap();
            assert!(!generations.borrow().contains(&now), "{what} must change the generation");
            generations.borrow_mut().push(now);
        };
        let record = |commit: char, at: u64| RefRecord { commit: commit.to_string().repeat(40), checked_at_ms: at };
        catalog.put_ref(&repo, "main", record('a', 1)).await.unwrap();
        changed("a first ref");
        assert_eq!(catalog.get_ref(&repo, "main").await.unwrap(), Some(record('a', 1)));
        catalog.put_ref(&repo, "main", record('b', 2)).await.unwrap();
        changed("a ref's new commit");
        assert_eq!(catalog.get_ref(&repo, "main").await.unwrap(), Some(record('b', 2)), "a write replaces the kept copy");
        let policy = |cacheable: bool| PolicyRecord { cacheable, reason: "r".into(), checked_at_ms: 3 };
        catalog.put_policy(&repo, policy(true)).await.unwrap();
        changed("a policy");
        assert!(catalog.get_policy(&repo).await.unwrap().unwrap().cacheable);
        assert_eq!(catalog.records_generation(&repo), generations.borrow().last().copied(), "reads leave it");
        let snapshot = snapshot_rows(&catalog);
        catalog.put_ref(&repo, "main", record('c', 4)).await.unwrap();
        catalog.put_policy(&repo, policy(false)).await.unwrap();
        changed("a ref and a policy");
        catalog.import_rows_blocking(snapshot.into_iter().map(Ok), None).unwrap();
        changed("a snapshot");
        assert_eq!(catalog.get_ref(&repo, "main").await.unwrap(), Some(record('b', 2)), "a snapshot empties the kept copies");
        assert!(catalog.get_policy(&repo).await.unwrap().unwrap().cacheable);
        // A reopened catalog reads what was written last, from disk.
        drop(catalog);
        let reopened = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
        assert_eq!(reopened.get_ref(&repo, "main").await.unwrap(), Some(record('b', 2)));
    }
}
