//! The content-addressed blob store of one node.
//!
//! A blob lives at `blobs/{etag[..2]}/{etag}` and is there only once its bytes matched its etag and
//! were fsynced: fills write to `tmp/`, verify while streaming, then rename. Start-up deletes
//! whatever `tmp/` holds, so a crash at any moment leaves no blob that looks complete.
//!
//! Capacity is accounted continuously in memory ([`accounting`]: every blob counted, the recently
//! used ones indexed in an LRU of bounded size, the others found on disk when asked for); when a new
//! blob does not fit, the least recently used ones are evicted, and when it still does not fit the
//! caller streams without storing.

mod accounting;
mod fill;
mod integrity;
pub mod scrub;
mod small;
mod source;
mod verify;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use accounting::{Accounting, BlobKey, Demoted, unix_seconds};
pub use fill::{Fill, FillProgress, FillState};
pub use integrity::{VerifiedBlob, verified_range};

use crate::common::zero_copy::ZeroCopySink;
pub use source::{BlobSource, ByteStream, SourceError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
pub use verify::{ContentHasher, is_valid_etag};

/// Eviction of cold blobs (outside the in-memory index) takes the oldest of a sample: this many files,
/// at most this many from each shard read, and the oldest this many kept.
const COLD_SAMPLE_SIZE: usize = 64;
const COLD_SAMPLE_PER_SHARD: usize = 16;
const COLD_POOL_SIZE: usize = 32;
/// How many samples one reservation may take before it evicts from the index instead.
const COLD_SAMPLES_PER_RESERVATION: usize = 8;

/// How many blobs' chunk sums are kept in memory (8 bytes per MiB of blob each).
const SUMS_MEMORY_ENTRIES: usize = 4096;

/// When a stored blob's bytes are checked against their chunk sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadChecks {
    /// Every chunk, every time it is sent.
    EveryRead,
    /// Every chunk until all of them were checked once since the file last changed; after that the
    /// file is sent as it is (zero-copy where the connection allows) until it changes, and the
    /// scrubber checks it again on its schedule. Only sound while a scrubber runs.
    OnceWhileScrubbed,
}

/// What is remembered of a recently served blob: its chunk sums, and what its file was when every
/// chunk of it was last checked.
#[derive(Clone)]
struct Remembered {
    sums: Arc<Vec<u64>>,
    checked: Option<integrity::FileIdentity>,
}

/// A verified blob on disk.
#[derive(Clone, Debug)]
pub struct StoredBlob {
    pub path: PathBuf,
    pub size: u64,
}

/// What `fill_or_join` found or started.
pub enum FillOutcome {
    /// The blob is complete on disk (it finished while we looked).
    Stored(StoredBlob),
    /// A fill is running (started now or earlier); read from it.
    Filling(Arc<Fill>),
    /// There is no room to store it: stream it to this client without storing.
    NoRoom,
}

/// A change of what the store holds, for the cluster's replica records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// A verified blob was published.
    Stored { etag: String, size: u64 },
    /// A blob was removed (evicted, or found damaged).
    Removed { etag: String },
}

/// How many store events may wait for their consumer; beyond that they are dropped (the cluster's
/// periodic reconciliation repairs whatever a dropped event would have recorded).
const EVENT_BACKLOG: usize = 4096;

/// Whether making room for a new blob may evict others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    EvictIfNeeded,
    FreeOnly,
}

/// What the store may hold: bytes (`None`: what the disk allows), bytes left free on the file
/// system, and blobs indexed in memory.
#[derive(Clone, Copy)]
struct Limits {
    max_bytes: Option<u64>,
    min_free_bytes: u64,
    index_entries: usize,
    read_checks: ReadChecks,
}

/// The blob store; a cheap handle.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: Option<u64>,
    min_free_bytes: u64,
    accounting: Mutex<Accounting>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// Chunk sums of recently served blobs, so a hot blob's `.sums` file is not read per request,
    /// and whether the file was checked whole.
    sums_memory: Mutex<HashMap<String, Remembered>>,
    read_checks: ReadChecks,
    /// Small blobs, verified, in memory ([`small`]).
    small: small::SmallBlobs,
    /// The blobs removed lately, numbered, so that whoever links to blob files (the rsync trees)
    /// can tell that a file it linked is gone, even when the same blob was filled again since.
    removals: Mutex<Removals>,
    /// Blobs that are never evicted (the files of pinned repositories).
    protected: Mutex<Arc<HashSet<String>>>,
    events: Mutex<Option<tokio::sync::mpsc::Sender<StoreEvent>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// True once the blobs found on disk at start-up are all in `accounting` (see [`BlobStore::open`]).
    scanned: AtomicBool,
    /// The start-up scan's thread, joined by [`BlobStore::close`].
    scan: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Cold blobs sampled from disk for eviction, oldest last (see [`BlobStore::cold_victim`]).
    eviction_pool: Mutex<Vec<(u32, BlobKey, u64)>>,
}

/// How many removals [`Removals`] remembers.
const REMOVALS_REMEMBERED: usize = 4096;

/// The latest removals, numbered from 1.
#[derive(Default)]
struct Removals {
    last: u64,
    recent: std::collections::VecDeque<(u64, String)>,
}

impl Removals {
    fn record(&mut self, etag: &str) {
        self.last += 1;
        self.recent.push_back((self.last, etag.to_owned()));
        if self.recent.len() > REMOVALS_REMEMBERED {
            self.recent.pop_front();
        }
    }

    fn since(&self, cursor: u64) -> (Option<Vec<String>>, u64) {
        let oldest_kept = self.recent.front().map_or(self.last + 1, |(number, _)| *number);
        if cursor + 1 < oldest_kept && cursor < self.last {
            return (None, self.last);
        }
        let removed = self.recent.iter().filter(|(number, _)| *number > cursor).map(|(_, etag)| etag.clone()).collect();
        (Some(removed), self.last)
    }
}

/// What the store holds now, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreUsage {
    pub num_blobs: usize,
    pub stored_bytes: u64,
    pub reserved_bytes: u64,
    /// Blobs in the in-memory index of recent uses (at most [`accounting::INDEX_ENTRIES`] once listed).
    pub indexed_blobs: usize,
}

fn free_bytes(path: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

impl BlobStore {
    /// Opens the store under `data_dir`: creates its directories and deletes fill leftovers, then
    /// serves at once. A thread of its own lists the blobs already on disk (a store of a million
    /// blobs takes seconds to minutes to list, and a node must not wait for that to answer): it counts
    /// them and indexes the most recently used. Until the listing is done, a blob not indexed is
    /// looked up on disk when asked for (as it is after, see [`accounting`]), reconcilers that need
    /// the whole list wait ([`BlobStore::is_scanned`]), and `max_disk` counts only what is listed so
    /// far (the free-space floor, read from the file system, holds throughout).
    pub fn open(
        data_dir: &Path,
        max_bytes: Option<u64>,
        min_free_bytes: u64,
        read_checks: ReadChecks,
        shutdown: CancellationToken,
    ) -> io::Result<BlobStore> {
        let limits = Limits { max_bytes, min_free_bytes, index_entries: accounting::INDEX_ENTRIES, read_checks };
        BlobStore::open_with(data_dir, limits, shutdown)
    }

    /// [`BlobStore::open`] with any limits (tests use a small index).
    fn open_with(data_dir: &Path, limits: Limits, shutdown: CancellationToken) -> io::Result<BlobStore> {
        let store = BlobStore::open_unlisted(data_dir, limits, shutdown)?;
        let scanning = store.clone();
        let thread = std::thread::Builder::new().name("blob-scan".into()).spawn(move || scanning.scan_existing())?;
        *store.inner.scan.lock().expect("scan poisoned") = Some(thread);
        Ok(store)
    }

    /// The store before its start-up listing (which [`BlobStore::open`] starts).
    fn open_unlisted(data_dir: &Path, limits: Limits, shutdown: CancellationToken) -> io::Result<BlobStore> {
        let blobs_dir = data_dir.join("blobs");
        let tmp_dir = data_dir.join("tmp");
        std::fs::create_dir_all(&blobs_dir)?;
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir)?;
        }
        std::fs::create_dir_all(&tmp_dir)?;
        let store = BlobStore {
            inner: Arc::new(StoreInner {
                blobs_dir,
                tmp_dir,
                max_bytes: limits.max_bytes,
                min_free_bytes: limits.min_free_bytes,
                accounting: Mutex::new(Accounting::new(limits.index_entries)),
                fills: Mutex::new(HashMap::new()),
                sums_memory: Mutex::new(HashMap::new()),
                read_checks: limits.read_checks,
                small: small::SmallBlobs::default(),
                removals: Mutex::new(Removals::default()),
                protected: Mutex::new(Arc::new(HashSet::new())),
                events: Mutex::new(None),
                tasks: TaskTracker::new(),
                shutdown,
                scanned: AtomicBool::new(false),
                scan: Mutex::new(None),
                eviction_pool: Mutex::new(Vec::new()),
            }),
        };
        Ok(store)
    }

    /// Lists the blobs on disk, shard by shard: counts them, and indexes the most recently used (see
    /// [`BlobStore::open`]). Memory: the index's capacity plus one shard's listing.
    fn scan_existing(&self) {
        let started = std::time::Instant::now();
        let capacity = self.inner.accounting.lock().expect("accounting poisoned").capacity();
        // The most recently used blobs found, as a min-heap on their last use.
        let mut recent: std::collections::BinaryHeap<std::cmp::Reverse<(u32, BlobKey, u64)>> = std::collections::BinaryHeap::new();
        for shard in 0..=u8::MAX {
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            let cursor = self.inner.removals.lock().expect("removals poisoned").last;
            let found = match self.list_shard(shard) {
                Ok(found) => found,
                Err(error) => {
                    warn!(%error, shard, "cannot list a shard of the stored blobs; its blobs are counted when asked for");
                    Vec::new()
                }
            };
            // Blobs removed while the shard was read were listed before they went: leave them out.
            let removed: Option<HashSet<String>> = self.removed_since(cursor).0.map(|removed| removed.into_iter().collect());
            let gone = |key: &BlobKey| match &removed {
                Some(removed) => removed.contains(&key.etag()),
                None => !self.blob_path(&key.etag()).exists(),
            };
            let counted = self.inner.accounting.lock().expect("accounting poisoned").count_listed_shard(shard, found, gone);
            for blob in counted {
                if recent.len() < capacity {
                    recent.push(std::cmp::Reverse(blob));
                } else if recent.peek().is_some_and(|oldest| oldest.0.0 < blob.0) {
                    recent.pop();
                    recent.push(std::cmp::Reverse(blob));
                }
            }
        }
        let recent: Vec<_> = recent.into_sorted_vec().into_iter().rev().map(|std::cmp::Reverse(blob)| blob).collect();
        let (demoted, usage) = {
            let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
            let demoted = accounting.listing_done(recent);
            (demoted, (accounting.num_blobs, accounting.stored_bytes, accounting.indexed()))
        };
        self.record_last_uses(demoted);
        self.inner.scanned.store(true, Ordering::Release);
        info!(
            num_blobs = usage.0,
            stored_bytes = usage.1,
            indexed = usage.2,
            took_ms = started.elapsed().as_millis() as u64,
            "blob store listed"
        );
    }

    /// The blob files of one shard: (last use, etag, size). Nothing for a shard that does not exist.
    fn list_shard(&self, shard: u8) -> io::Result<Vec<(u32, BlobKey, u64)>> {
        let mut found = Vec::new();
        for name in self.shard_blob_names(shard)? {
            let metadata = match std::fs::metadata(self.blob_path(&name)) {
                Ok(metadata) if metadata.is_file() => metadata,
                Ok(_) => continue,
                // Removed since the directory was read.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let Some(key) = BlobKey::parse(&name) else { continue };
            found.push((last_use(&metadata), key, metadata.len()));
        }
        Ok(found)
    }

    /// Whether every blob on disk at start-up is counted; until then [`BlobStore::usage`] is partial.
    pub fn is_scanned(&self) -> bool {
        self.inner.scanned.load(Ordering::Acquire)
    }

    /// Waits for the start-up listing (blocking; for tests and tools).
    pub fn wait_scanned(&self) {
        let thread = self.inner.scan.lock().expect("scan poisoned").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The size of a blob file on disk, if there is one.
    fn size_on_disk(&self, etag: &str) -> Option<u64> {
        std::fs::metadata(self.blob_path(etag)).ok().filter(std::fs::Metadata::is_file).map(|metadata| metadata.len())
    }

    /// Writes the last use of blobs leaving the index into their files' access times, where the
    /// listing after a restart and the eviction of cold blobs read it. Best effort: a blob whose time
    /// is not written looks as old as its last recorded use.
    fn record_last_uses(&self, demoted: Vec<Demoted>) {
        for Demoted { key, used_at } in demoted {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(used_at));
            let written = std::fs::File::open(self.blob_path(&key.etag()))
                .and_then(|file| file.set_times(std::fs::FileTimes::new().set_accessed(time)));
            if let Err(error) = written {
                debug!(etag = %key.etag(), %error, "cannot record a blob's last use");
            }
        }
    }

    fn blob_path(&self, etag: &str) -> PathBuf {
        debug_assert!(is_valid_etag(etag));
        self.inner.blobs_dir.join(&etag[..2]).join(etag)
    }

    /// Returns the verified blob if this node holds it, and marks it used.
    pub fn get(&self, etag: &str) -> Option<StoredBlob> {
        self.lookup(etag, true)
    }

    /// Returns the blob if this node holds it; marks it used when `used` (a scrub does not).
    fn lookup(&self, etag: &str, used: bool) -> Option<StoredBlob> {
        let size = self.held_size(etag, used)?;
        Some(StoredBlob { path: self.blob_path(etag), size })
    }

    /// The size of the blob if this node holds it; marks it used when `used`.
    fn held_size(&self, etag: &str, used: bool) -> Option<u64> {
        let key = BlobKey::parse(etag)?;
        let now = unix_seconds(std::time::SystemTime::now());
        let indexed = {
            let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
            if used { accounting.use_indexed(&key, now) } else { accounting.size_of(&key) }
        };
        let size = match indexed {
            Some(size) => size,
            None => {
                // Not among the recently used: one look on disk.
                let size = self.size_on_disk(etag)?;
                if used {
                    let demoted = self.inner.accounting.lock().expect("accounting poisoned").index_found(key, size, now);
                    self.record_last_uses(demoted);
                }
                size
            }
        };
        Some(size)
    }

    /// A small blob this node holds, from memory (read and checked whole when it was kept), and
    /// marks it used; `None` when it is not kept in memory (then [`BlobStore::stream_verified`]
    /// reads it).
    pub fn kept_small(&self, etag: &str, size: u64) -> Option<Bytes> {
        if size > small::SMALL_BLOB_MAX {
            return None;
        }
        let bytes = self.inner.small.get(etag).filter(|bytes| bytes.len() as u64 == size)?;
        self.held_size(etag, true).map(|_| bytes)
    }

    /// Streams `start..end` of a stored blob, every chunk checked against its sum first (or, under
    /// [`ReadChecks::OnceWhileScrubbed`], once); a corrupt chunk removes the blob (so it is filled
    /// again) and aborts the stream. With a `zero_copy` sink the stream yields placeholders and the
    /// connection sends the file's bytes itself (`common::zero_copy`). `Ok(None)`: not held, or held
    /// with another size than the catalog says (then it is dropped).
    pub async fn stream_verified(
        &self,
        etag: &str,
        size: u64,
        start: u64,
        end: u64,
        zero_copy: Option<&ZeroCopySink>,
    ) -> io::Result<Option<impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static>> {
        use futures_util::future::Either;
        let whole_in_memory =
            |bytes: Bytes| Either::Left(futures_util::stream::once(std::future::ready(Ok(bytes.slice(start as usize..end as usize)))));
        if let Some(bytes) = self.kept_small(etag, size) {
            return Ok(Some(whole_in_memory(bytes)));
        }
        let Some(blob) = self.open_verified(etag).await? else { return Ok(None) };
        if blob.size != size {
            warn!(%etag, stored = blob.size, expected = size, "stored blob has another size than the catalog says; dropping it");
            self.remove(etag);
            return Ok(None);
        }
        if size <= small::SMALL_BLOB_MAX && end > start {
            // Read and checked whole once, then kept: later requests need no file at all.
            let read = tokio::task::spawn_blocking(move || integrity::read_verified(&blob)).await.map_err(io::Error::other)?;
            return match read {
                Ok(bytes) => {
                    let bytes = Bytes::from(bytes);
                    self.inner.small.keep(etag, bytes.clone());
                    Ok(Some(whole_in_memory(bytes)))
                }
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    warn!(%etag, %error, "corrupt chunk in a stored blob; removing it so it is filled again");
                    self.remove(etag);
                    Ok(None)
                }
                Err(error) => Err(error),
            };
        }
        let store = self.clone();
        let etag_owned = etag.to_owned();
        let on_corrupt = move || {
            warn!(etag = %etag_owned, "corrupt chunk in a stored blob; removing it so it is filled again");
            store.remove(&etag_owned);
        };
        Ok(Some(Either::Right(match zero_copy {
            Some(sink) => {
                let (store, etag_owned) = (self.clone(), etag.to_owned());
                let checked_from = std::time::SystemTime::now();
                let on_checked_whole = move |blob: &VerifiedBlob| store.record_checked(&etag_owned, blob, checked_from);
                Either::Left(integrity::verified_spans(blob, start, end, sink.clone(), on_corrupt, on_checked_whole))
            }
            None => Either::Right(verified_range(blob, start, end, on_corrupt)),
        })))
    }

    /// Records that every chunk of `blob` was found matching its sum by a check that began at
    /// `checked_from`: while its file stays as it is now, later reads need not check
    /// it again ([`ReadChecks::OnceWhileScrubbed`]). Nothing is recorded when the file changed while
    /// it was checked, or too shortly before.
    fn record_checked(&self, etag: &str, blob: &VerifiedBlob, checked_from: std::time::SystemTime) {
        if self.inner.read_checks != ReadChecks::OnceWhileScrubbed || !blob.identity.settled_before(checked_from) {
            return;
        }
        match integrity::FileIdentity::of(&blob.file) {
            Ok(now) if now == blob.identity => {}
            _ => return,
        }
        let mut memory = self.inner.sums_memory.lock().expect("sums memory poisoned");
        if let Some(remembered) = memory.get_mut(etag).filter(|remembered| Arc::ptr_eq(&remembered.sums, &blob.sums)) {
            remembered.checked = Some(blob.identity);
        }
    }

    /// The blobs removed after `cursor` (0: from the start) and the cursor to pass next time.
    /// `None` instead of a list when more were removed than are remembered: assume any may be.
    pub fn removed_since(&self, cursor: u64) -> (Option<Vec<String>>, u64) {
        self.inner.removals.lock().expect("removals poisoned").since(cursor)
    }

    /// Bytes of small blobs kept in memory.
    pub fn small_blob_bytes(&self) -> usize {
        self.inner.small.bytes()
    }

    /// Returns the fill of `etag` in progress, if any.
    pub fn fill_in_progress(&self, etag: &str) -> Option<Arc<Fill>> {
        self.inner.fills.lock().expect("fills poisoned").get(etag).cloned()
    }

    /// Whether this node holds a verified blob (without marking it used).
    pub fn contains(&self, etag: &str) -> bool {
        self.lookup(etag, false).is_some()
    }

    /// Returns the usage numbers.
    pub fn usage(&self) -> StoreUsage {
        let accounting = self.inner.accounting.lock().expect("accounting poisoned");
        StoreUsage {
            num_blobs: accounting.num_blobs,
            stored_bytes: accounting.stored_bytes,
            reserved_bytes: accounting.reserved_bytes,
            indexed_blobs: accounting.indexed(),
        }
    }

    /// Removes a blob (it was found corrupt, or evicted).
    pub fn remove(&self, etag: &str) {
        let Some(key) = BlobKey::parse(etag) else { return };
        {
            // The file goes under the accounting lock, so that no reader finds it on disk after it
            // left the index (and indexes it again as counted), and only whoever deleted it uncounts it.
            let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
            let indexed = accounting.remove_indexed(&key);
            let cold_size = if indexed.is_none() { self.size_on_disk(etag) } else { None };
            let deleted = self.unlink_blob(etag);
            if let (Some(size), true) = (cold_size, deleted) {
                accounting.removed_cold(&key, size);
            }
        }
        self.delete_files(etag);
        self.emit(StoreEvent::Removed { etag: etag.to_owned() });
    }

    /// Every blob held, read from disk: the shard directories' listings, no `stat` per blob (the store
    /// keeps only the recently used in memory). Complete even while the start-up listing runs.
    pub fn blobs(&self) -> Vec<String> {
        let mut blobs = Vec::new();
        for shard in 0..=u8::MAX {
            match self.shard_blob_names(shard) {
                Ok(names) => blobs.extend(names),
                Err(error) => warn!(%error, shard, "cannot list a shard of the stored blobs"),
            }
        }
        blobs
    }

    /// The size of a stored blob (without marking it used).
    pub fn stored_size(&self, etag: &str) -> Option<u64> {
        self.lookup(etag, false).map(|blob| blob.size)
    }

    /// The names of the blob files in one shard directory (none when it does not exist).
    fn shard_blob_names(&self, shard: u8) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.inner.blobs_dir.join(hex::encode([shard]))) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string()
                && is_valid_etag(&name)
                && name.starts_with(&hex::encode([shard]))
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Replaces the set of blobs that eviction must leave alone.
    pub fn set_protected(&self, etags: HashSet<String>) {
        *self.inner.protected.lock().expect("protected set poisoned") = Arc::new(etags);
    }

    /// Returns the store's events from now on (blobs stored and removed). One subscriber: a second
    /// call replaces the first.
    pub fn subscribe(&self) -> tokio::sync::mpsc::Receiver<StoreEvent> {
        let (sender, receiver) = tokio::sync::mpsc::channel(EVENT_BACKLOG);
        *self.inner.events.lock().expect("events poisoned") = Some(sender);
        receiver
    }

    fn emit(&self, event: StoreEvent) {
        if let Some(sender) = self.inner.events.lock().expect("events poisoned").as_ref()
            && let Err(error) = sender.try_send(event)
        {
            debug!(%error, "store event dropped");
        }
    }

    /// Deletes a blob's file; the caller holds the accounting lock. The removal is recorded first, so
    /// that the start-up listing, which counts a shard under that lock, never counts a file it read
    /// just before it went. True when this call deleted it.
    fn unlink_blob(&self, etag: &str) -> bool {
        self.inner.removals.lock().expect("removals poisoned").record(etag);
        std::fs::remove_file(self.blob_path(etag)).is_ok()
    }

    /// Deletes what is left of a removed blob (its sums, and its file unless gone already) and forgets
    /// it in the memory caches.
    fn delete_files(&self, etag: &str) {
        self.inner.sums_memory.lock().expect("sums memory poisoned").remove(etag);
        self.inner.small.forget(etag);
        let path = self.blob_path(etag);
        for file in [integrity::sums_path(&path), path] {
            if let Err(error) = std::fs::remove_file(&file)
                && error.kind() != io::ErrorKind::NotFound
            {
                warn!(%etag, %error, path = %file.display(), "could not remove blob file");
            }
        }
    }

    /// Opens a stored blob for serving with its chunk sums. A blob stored before sums existed (or
    /// whose sums file is lost) is rehashed once in full against its etag first; one that fails is
    /// removed. `Ok(None)`: the node does not hold it.
    pub async fn open_verified(&self, etag: &str) -> io::Result<Option<VerifiedBlob>> {
        self.open_verified_as(etag, true).await
    }

    /// [`BlobStore::open_verified`] for a check, not a use: the blob keeps its place in the LRU and
    /// its file's access time (so a scrub pass does not make every blob look just used).
    pub async fn open_verified_unused(&self, etag: &str) -> io::Result<Option<VerifiedBlob>> {
        self.open_verified_as(etag, false).await
    }

    async fn open_verified_as(&self, etag: &str, used: bool) -> io::Result<Option<VerifiedBlob>> {
        let Some(stored) = self.lookup(etag, used) else { return Ok(None) };
        let (path, size, etag_owned) = (stored.path.clone(), stored.size, etag.to_owned());
        let remembered = self.inner.sums_memory.lock().expect("sums memory poisoned").get(etag).cloned();
        let trust_checked = self.inner.read_checks == ReadChecks::OnceWhileScrubbed;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<VerifiedBlob> {
            let file = if used { std::fs::File::open(&path)? } else { open_without_access_time(&path)? };
            let identity = integrity::FileIdentity::of(&file)?;
            if identity.size() != size {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("blob has {} bytes, expected {size}", identity.size())));
            }
            let sums_file = integrity::sums_path(&path);
            if let Some(remembered) = remembered.filter(|remembered| remembered.sums.len() as u64 == size.div_ceil(integrity::CHUNK)) {
                let checked = trust_checked && remembered.checked == Some(identity);
                return Ok(VerifiedBlob { file: std::sync::Arc::new(file), size, sums: remembered.sums, identity, checked });
            }
            let sums = match integrity::read_sums(&sums_file, size)? {
                Some(sums) => sums,
                None => {
                    let mut hasher = ContentHasher::for_etag(&etag_owned, size).ok_or_else(|| io::Error::other("not an etag"))?;
                    let mut summer = integrity::ChunkSummer::default();
                    let mut buffer = vec![0u8; integrity::CHUNK as usize];
                    let mut offset = 0u64;
                    while offset < size {
                        let length = integrity::CHUNK.min(size - offset) as usize;
                        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buffer[..length], offset)?;
                        hasher.update(&buffer[..length]);
                        summer.update(&buffer[..length]);
                        offset += length as u64;
                    }
                    if hasher.finish() != etag_owned {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "blob does not match its etag"));
                    }
                    let sums = summer.finish();
                    std::fs::write(&sums_file, integrity::encode_sums(&sums))?;
                    sums
                }
            };
            Ok(VerifiedBlob { file: std::sync::Arc::new(file), size, sums: std::sync::Arc::new(sums), identity, checked: false })
        })
        .await
        .map_err(io::Error::other)?;
        match opened {
            Ok(blob) => {
                let mut memory = self.inner.sums_memory.lock().expect("sums memory poisoned");
                // A scrub does not fill the memory with blobs nobody asked for.
                if !used && !memory.contains_key(etag) {
                    return Ok(Some(blob));
                }
                // A small bounded memory: forgetting everything at the bound is simpler than an LRU,
                // and a forgotten entry costs one small file read (and one more check of the blob).
                if memory.len() >= SUMS_MEMORY_ENTRIES && !memory.contains_key(etag) {
                    memory.clear();
                }
                // Sums read anew replace what was remembered, and what was recorded with them.
                if !memory.get(etag).is_some_and(|remembered| Arc::ptr_eq(&remembered.sums, &blob.sums)) {
                    memory.insert(etag.to_owned(), Remembered { sums: blob.sums.clone(), checked: None });
                }
                Ok(Some(blob))
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData || error.kind() == io::ErrorKind::NotFound => {
                warn!(%etag, %error, "stored blob is damaged; removing it so it is filled again");
                self.remove(etag);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Reserves room for `size` more bytes, evicting least recently used blobs if needed (cold ones,
    /// outside the index, first). Returns false when the blob cannot fit even with everything
    /// evicted, or the file system is too full.
    fn reserve(&self, size: u64, room: Room) -> bool {
        let mut free_on_disk = match free_bytes(&self.inner.tmp_dir) {
            Ok(free) => free,
            Err(error) => {
                warn!(%error, "cannot read free disk space; not storing");
                return false;
            }
        };
        let mut evicted = Vec::new();
        let protected = self.inner.protected.lock().expect("protected set poisoned").clone();
        // Samples of cold blobs taken from disk for this reservation; a bounded number, after which
        // eviction falls back to the index.
        let mut samples_left = COLD_SAMPLES_PER_RESERVATION;
        let reserved = loop {
            let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
            // Evict nothing for a blob that could not fit even in an empty store.
            let never_fits = self.inner.max_bytes.is_some_and(|max| size > max)
                || free_on_disk.saturating_add(accounting.stored_bytes) < size.saturating_add(self.inner.min_free_bytes);
            if never_fits {
                break false;
            }
            let within_limit = self.inner.max_bytes.is_none_or(|max| accounting.stored_bytes + accounting.reserved_bytes + size <= max);
            let within_disk = free_on_disk.saturating_sub(accounting.reserved_bytes) >= size.saturating_add(self.inner.min_free_bytes);
            if within_limit && within_disk {
                accounting.reserved_bytes += size;
                break true;
            }
            if room == Room::FreeOnly {
                break false;
            }
            if accounting.has_cold() && samples_left > 0 {
                match self.cold_victim(&accounting, &protected) {
                    Some((key, victim_size)) => {
                        // Deleted under the lock, so that it is uncounted exactly once.
                        if self.unlink_blob(&key.etag()) {
                            accounting.removed_cold(&key, victim_size);
                            free_on_disk = free_on_disk.saturating_add(victim_size);
                            evicted.push((key.etag(), victim_size));
                        }
                    }
                    None => {
                        drop(accounting);
                        samples_left -= 1;
                        self.sample_cold_blobs();
                    }
                }
                continue;
            }
            let Some(victim) = accounting.least_recently_used(&protected) else {
                break false;
            };
            let victim_size = accounting.remove_indexed(&victim).unwrap_or(0);
            // Deleted under the lock, as in `remove`.
            self.unlink_blob(&victim.etag());
            free_on_disk = free_on_disk.saturating_add(victim_size);
            evicted.push((victim.etag(), victim_size));
        };
        for (etag, victim_size) in evicted {
            info!(%etag, size = victim_size, "evicting least recently used blob");
            crate::telemetry::metrics().evicted();
            self.delete_files(&etag);
            self.emit(StoreEvent::Removed { etag });
        }
        if !reserved {
            warn!(size, "no room to store a blob; streaming it without storing");
        }
        reserved
    }

    /// The oldest sampled cold blob that is still cold and not protected, taken from the pool.
    fn cold_victim(&self, accounting: &Accounting, protected: &HashSet<String>) -> Option<(BlobKey, u64)> {
        let mut pool = self.inner.eviction_pool.lock().expect("eviction pool poisoned");
        while let Some((_, key, size)) = pool.pop() {
            if !accounting.is_indexed(&key) && !protected.contains(&key.etag()) {
                return Some((key, size));
            }
        }
        None
    }

    /// Refills the eviction pool: a few random blob files from each of a few shards,
    /// with their recorded last use; the pool keeps the oldest. Cheap next to the fill that needs the
    /// room (a directory listing and a few `stat`s), and no memory per stored blob.
    fn sample_cold_blobs(&self) {
        let seed = fastrand_seed();
        let mut sampled = Vec::new();
        // From a random shard on, until the sample is full (a small store is sampled whole).
        for round in 0..=usize::from(u8::MAX) {
            if sampled.len() >= COLD_SAMPLE_SIZE {
                break;
            }
            let shard = (seed as usize + round) as u8;
            let names = self.shard_blob_names(shard).unwrap_or_default();
            if names.is_empty() {
                continue;
            }
            let start = (seed.rotate_left(round as u32) as usize) % names.len();
            for name in names.iter().cycle().skip(start).take(COLD_SAMPLE_PER_SHARD.min(names.len())) {
                let (Some(key), Ok(metadata)) = (BlobKey::parse(name), std::fs::metadata(self.blob_path(name))) else { continue };
                sampled.push((last_use(&metadata), key, metadata.len()));
            }
        }
        let accounting = self.inner.accounting.lock().expect("accounting poisoned");
        sampled.retain(|(_, key, _)| !accounting.is_indexed(key));
        drop(accounting);
        let mut pool = self.inner.eviction_pool.lock().expect("eviction pool poisoned");
        pool.extend(sampled);
        // Newest first, so that `pop` takes the oldest; the newer half of a sample is not kept.
        pool.sort_by(|left, right| right.0.cmp(&left.0).then(right.1.cmp(&left.1)));
        pool.dedup_by_key(|(_, key, _)| *key);
        let keep = pool.len().min(COLD_POOL_SIZE);
        let excess = pool.len() - keep;
        pool.drain(..excess);
    }

    fn release(&self, size: u64) {
        let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
        accounting.reserved_bytes = accounting.reserved_bytes.saturating_sub(size);
    }

    /// Joins the fill of `etag` in progress, or starts one from `source`. The fill runs in its own
    /// task, so it goes on when the client that started it leaves.
    pub fn fill_or_join(&self, etag: &str, size: u64, source: Arc<dyn BlobSource>) -> io::Result<FillOutcome> {
        self.fill_or_join_with(etag, size, source, Room::EvictIfNeeded)
    }

    /// Like [`BlobStore::fill_or_join`], but a new fill may only use free room (`Room::FreeOnly`):
    /// background replication must not evict what clients use, or two blobs that do not both fit
    /// would push each other out forever.
    pub fn fill_or_join_with(&self, etag: &str, size: u64, source: Arc<dyn BlobSource>, room: Room) -> io::Result<FillOutcome> {
        let admitted = self.fill_or_join_admitted(etag, size, source, room, || Ok::<(), std::convert::Infallible>(()))?;
        Ok(match admitted {
            Ok((outcome, _)) => outcome,
        })
    }

    /// Like [`BlobStore::fill_or_join_with`], but a new fill starts only when `admit` allows it; what
    /// it returns goes back with the outcome (`Some` only when this call started the fill). Joining a
    /// fill in progress, or finding the blob stored, never asks: the check and the start are one step
    /// under the fills' lock, so concurrent callers of one cold blob are admitted once.
    pub fn fill_or_join_admitted<A, R>(
        &self,
        etag: &str,
        size: u64,
        source: Arc<dyn BlobSource>,
        room: Room,
        admit: impl FnOnce() -> Result<A, R>,
    ) -> io::Result<Result<(FillOutcome, Option<A>), R>> {
        if !is_valid_etag(etag) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an etag"));
        }
        let mut fills = self.inner.fills.lock().expect("fills poisoned");
        if let Some(fill) = fills.get(etag) {
            crate::telemetry::metrics().fill_joined();
            return Ok(Ok((FillOutcome::Filling(fill.clone()), None)));
        }
        // A fill may have completed between the caller's `get` and now.
        if let Some(stored) = self.get(etag) {
            return Ok(Ok((FillOutcome::Stored(stored), None)));
        }
        let admission = match admit() {
            Ok(admission) => admission,
            Err(refused) => return Ok(Err(refused)),
        };
        if !self.reserve(size, room) {
            return Ok(Ok((FillOutcome::NoRoom, None)));
        }
        let temp_path = self.inner.tmp_dir.join(format!("{etag}.{}.partial", std::process::id() as u64 ^ fastrand_seed()));
        let fill = match Fill::create(etag.to_owned(), size, temp_path) {
            Ok(fill) => Arc::new(fill),
            Err(error) => {
                self.release(size);
                return Err(error);
            }
        };
        fills.insert(etag.to_owned(), fill.clone());
        drop(fills);
        info!(%etag, size, source = %source.describe(), "fill started");
        let store = self.clone();
        let running = fill.clone();
        self.inner.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let cancelled = store.inner.shutdown.clone();
            let outcome = tokio::select! {
                outcome = fill::run(&running, source.as_ref()) => outcome,
                () = cancelled.cancelled() => Err("shutting down".to_owned()),
            };
            store.finish_fill(&running, outcome).await;
            crate::telemetry::metrics().fill(started.elapsed(), running.finished().await == FillState::Complete);
        });
        Ok(Ok((FillOutcome::Filling(fill), Some(admission))))
    }

    /// Publishes a verified fill as a blob (fsync, rename, fsync the directory) or discards it.
    async fn finish_fill(&self, fill: &Arc<Fill>, outcome: Result<Vec<u64>, String>) {
        let final_path = self.blob_path(&fill.etag);
        let published = match outcome {
            Ok(sums) => {
                let temp_path = fill.temp_path.clone();
                let file = fill.file.clone();
                let target = final_path.clone();
                let (store, etag, size) = (self.clone(), fill.etag.clone(), fill.size);
                tokio::task::spawn_blocking(move || -> io::Result<()> {
                    file.sync_all()?;
                    let shard = target.parent().expect("blob path has a shard directory");
                    std::fs::create_dir_all(shard)?;
                    // The sums go in place before the blob: a blob never appears without them.
                    let sums_temp = temp_path.with_extension("sums");
                    std::fs::write(&sums_temp, integrity::encode_sums(&sums))?;
                    std::fs::File::open(&sums_temp)?.sync_all()?;
                    std::fs::rename(&sums_temp, integrity::sums_path(&target))?;
                    store.publish(&temp_path, &target, &etag, size)?;
                    std::fs::File::open(shard)?.sync_all()
                })
                .await
                .map_err(|error| error.to_string())
                .and_then(|result| result.map_err(|error| error.to_string()))
            }
            Err(reason) => Err(reason),
        };
        self.release(fill.size);
        match published {
            Ok(()) => {
                info!(etag = %fill.etag, size = fill.size, "blob stored");
                fill.publish(FillState::Complete);
                self.emit(StoreEvent::Stored { etag: fill.etag.clone(), size: fill.size });
            }
            Err(reason) => {
                warn!(etag = %fill.etag, %reason, "fill failed; nothing stored");
                let _ = std::fs::remove_file(&fill.temp_path);
                fill.publish(FillState::Failed);
            }
        }
        self.inner.fills.lock().expect("fills poisoned").remove(&fill.etag);
    }

    /// Moves a verified blob into place and counts it, as one step under the accounting lock: a
    /// reader that finds the file on disk between the two would index it as a blob the listing had
    /// counted, and the start-up listing could count it once more (blocking: a rename).
    fn publish(&self, temp_path: &Path, target: &Path, etag: &str, size: u64) -> io::Result<()> {
        let key = BlobKey::parse(etag).ok_or_else(|| io::Error::other("not an etag"))?;
        let now = unix_seconds(std::time::SystemTime::now());
        let demoted = {
            let mut accounting = self.inner.accounting.lock().expect("accounting poisoned");
            std::fs::rename(temp_path, target)?;
            accounting.index_stored(key, size, now)
        };
        self.record_last_uses(demoted);
        Ok(())
    }

    /// Waits for every fill task to end (after the shutdown token was cancelled).
    pub async fn close(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // The listing stops at its next directory once shutdown was signalled.
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.wait_scanned();
            // The recent uses go to disk, where the next start finds them.
            let uses = store.inner.accounting.lock().expect("accounting poisoned").indexed_uses();
            store.record_last_uses(uses);
        })
        .await;
    }
}

/// A blob's recorded last use: its file's access time (see [`accounting`]).
fn last_use(metadata: &std::fs::Metadata) -> u32 {
    unix_seconds(metadata.accessed().or_else(|_| metadata.modified()).unwrap_or(std::time::UNIX_EPOCH))
}

/// Opens a file for reading without updating its access time (which records a blob's last use);
/// falls back to a plain open where `O_NOATIME` is refused (a file this process does not own).
fn open_without_access_time(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let no_access_time = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new().read(true).custom_flags(no_access_time).open(path) {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => std::fs::File::open(path),
        opened => opened,
    }
}

/// A cheap per-fill nonce so two processes (or a restarted one) never share a temp name.
fn fastrand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Exports the store's use and the data file system's free space.
impl crate::telemetry::MetricSource for BlobStore {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let usage = self.usage();
        samples.gauge("hfm_store_blobs", "Verified blobs on this node's disk", usage.num_blobs as i64)?;
        samples.gauge("hfm_store_bytes", "Bytes of verified blobs on this node's disk", usage.stored_bytes as i64)?;
        samples.gauge("hfm_store_reserved_bytes", "Bytes promised to fills in progress", usage.reserved_bytes as i64)?;
        samples.gauge(
            "hfm_store_indexed_blobs",
            "Blobs in the in-memory index of recent uses (the others are found on disk)",
            usage.indexed_blobs as i64,
        )?;
        if let Ok(free) = free_bytes(&self.inner.blobs_dir) {
            samples.gauge("hfm_disk_free_bytes", "Free bytes of the data directory's file system", free as i64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod removal_tests {
    use super::{REMOVALS_REMEMBERED, Removals};

    #[test]
    fn removals_are_told_since_a_cursor_or_as_too_many() {
        let mut removals = Removals::default();
        assert_eq!(removals.since(0), (Some(vec![]), 0));
        removals.record("a");
        removals.record("b");
        assert_eq!(removals.since(0), (Some(vec!["a".into(), "b".into()]), 2));
        assert_eq!(removals.since(1), (Some(vec!["b".into()]), 2));
        assert_eq!(removals.since(2), (Some(vec![]), 2));
        for index in 0..REMOVALS_REMEMBERED {
            removals.record(&index.to_string());
        }
        assert_eq!(removals.since(1).0, None, "forgotten removals: assume any");
        assert_eq!(removals.since(2).0.unwrap().len(), REMOVALS_REMEMBERED);
    }
}
