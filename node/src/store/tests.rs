//! Store tests: verification, resumption, coalescing, crash safety and eviction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;

/// A source serving fixed bytes, optionally corrupting them or cutting the first stream short.
struct MemorySource {
    bytes: Bytes,
    cut_first_stream_at: Option<usize>,
    corrupt: bool,
    hang: bool,
    opens: AtomicUsize,
}

impl MemorySource {
    fn new(bytes: &[u8]) -> MemorySource {
        MemorySource {
            bytes: Bytes::copy_from_slice(bytes),
            cut_first_stream_at: None,
            corrupt: false,
            hang: false,
            opens: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for MemorySource {
    async fn open(&self, offset: u64) -> Result<(u64, ByteStream), SourceError> {
        let open_number = self.opens.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut bytes = self.bytes.slice(offset as usize..).to_vec();
        if self.corrupt && !bytes.is_empty() {
            bytes[0] ^= 1;
        }
        let mut chunks: Vec<Result<Bytes, SourceError>> = bytes.chunks(7000).map(|chunk| Ok(Bytes::copy_from_slice(chunk))).collect();
        if let (0, Some(cut)) = (open_number, self.cut_first_stream_at) {
            let mut remaining = cut;
            let mut kept = Vec::new();
            for chunk in chunks {
                let chunk = chunk.unwrap();
                if remaining == 0 {
                    break;
                }
                let take = remaining.min(chunk.len());
                kept.push(Ok(chunk.slice(..take)));
                remaining -= take;
            }
            kept.push(Err(SourceError::Transient("connection reset".into())));
            chunks = kept;
        }
        Ok((offset, Box::pin(futures_util::stream::iter(chunks))))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = ContentHasher::for_etag(&"0".repeat(64), bytes.len() as u64).unwrap();
    hasher.update(bytes);
    hasher.finish()
}

fn test_bytes(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index * 31 % 251) as u8).collect()
}

async fn wait_done(fill: &Arc<Fill>) -> FillState {
    let mut reader = Box::pin(fill.reader(0, fill.size));
    while reader.next().await.is_some() {}
    loop {
        let state = fill.progress().state;
        if state != FillState::Running {
            return state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn read_all(stream: impl futures_util::Stream<Item = std::io::Result<Bytes>>) -> std::io::Result<Vec<u8>> {
    let mut stream = Box::pin(stream);
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        collected.extend_from_slice(&chunk?);
    }
    Ok(collected)
}

fn open_store(directory: &std::path::Path, max: Option<u64>) -> BlobStore {
    let store = BlobStore::open(directory, max, 0, ReadChecks::OnceWhileScrubbed, CancellationToken::new()).unwrap();
    store.wait_scanned();
    store
}

#[tokio::test]
async fn a_verified_fill_becomes_a_blob_and_readers_get_every_byte() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes(3 << 20);
    let etag = sha256_hex(&bytes);
    let source = Arc::new(MemorySource::new(&bytes));
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, source.clone()).unwrap() else {
        panic!("expected a fill")
    };
    // A second caller joins the same fill instead of opening the source again.
    let FillOutcome::Filling(joined) = store.fill_or_join(&etag, bytes.len() as u64, source.clone()).unwrap() else {
        panic!("expected a fill")
    };
    assert!(Arc::ptr_eq(&fill, &joined));
    let middle = read_all(joined.reader(1_000_000, 2_000_000)).await.unwrap();
    assert_eq!(middle, bytes[1_000_000..2_000_000]);
    assert_eq!(read_all(fill.reader(0, fill.size)).await.unwrap(), bytes);
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    assert_eq!(source.opens.load(Ordering::SeqCst), 1);
    let stored = store.get(&etag).unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), bytes);
    assert_eq!(store.usage().stored_bytes, bytes.len() as u64);
}

#[tokio::test]
async fn a_git_blob_is_verified_by_its_sha1() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let source = Arc::new(MemorySource::new(b"hello\n"));
    let FillOutcome::Filling(fill) = store.fill_or_join("ce013625030ba8dba906f756967f9e9ca394464a", 6, source).unwrap() else { panic!() };
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    assert!(store.get("ce013625030ba8dba906f756967f9e9ca394464a").is_some());
}

#[tokio::test]
async fn corrupt_bytes_are_never_stored_and_readers_fail() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes(100_000);
    let etag = sha256_hex(&bytes);
    let mut source = MemorySource::new(&bytes);
    source.corrupt = true;
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(source)).unwrap() else { panic!() };
    let result = read_all(fill.reader(0, fill.size)).await;
    assert!(result.is_err(), "a reader of a corrupt fill must not end cleanly");
    assert_eq!(wait_done(&fill).await, FillState::Failed);
    assert!(store.get(&etag).is_none());
    assert_eq!(std::fs::read_dir(directory.path().join("tmp")).unwrap().count(), 0, "the temp file is removed");
    assert_eq!(store.usage().reserved_bytes, 0);
}

#[tokio::test]
async fn an_interrupted_source_is_resumed_from_the_byte_reached() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes(2_500_000);
    let etag = sha256_hex(&bytes);
    let mut source = MemorySource::new(&bytes);
    source.cut_first_stream_at = Some(1_234_567);
    let source = Arc::new(source);
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, source.clone()).unwrap() else { panic!() };
    assert_eq!(read_all(fill.reader(0, fill.size)).await.unwrap(), bytes);
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    assert_eq!(source.opens.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_crash_mid_fill_leaves_no_complete_looking_blob() {
    let directory = tempfile::tempdir().unwrap();
    let bytes = test_bytes(10_000);
    let etag = sha256_hex(&bytes);
    {
        let shutdown = CancellationToken::new();
        let store = BlobStore::open(directory.path(), None, 0, ReadChecks::OnceWhileScrubbed, shutdown.clone()).unwrap();
        let mut source = MemorySource::new(&bytes);
        source.hang = true;
        let FillOutcome::Filling(_fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(source)).unwrap() else { panic!() };
        assert_eq!(std::fs::read_dir(directory.path().join("tmp")).unwrap().count(), 1);
        // Simulate a crash: a leftover temp file stays behind whatever happens to the task.
        std::fs::write(directory.path().join("tmp").join(format!("{etag}.1.partial")), &bytes[..5000]).unwrap();
    }
    let store = open_store(directory.path(), None);
    assert!(store.get(&etag).is_none());
    assert_eq!(std::fs::read_dir(directory.path().join("tmp")).unwrap().count(), 0, "start-up removes leftovers");
}

#[tokio::test]
async fn least_recently_used_blobs_are_evicted_when_full() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), Some(250_000));
    let mut etags = Vec::new();
    for seed in 0..3u8 {
        let bytes: Vec<u8> = test_bytes(100_000).into_iter().map(|byte| byte ^ seed).collect();
        let etag = sha256_hex(&bytes);
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!()
        };
        assert_eq!(wait_done(&fill).await, FillState::Complete);
        etags.push(etag);
        if seed == 1 {
            // Use the first blob, so the second becomes the least recently used.
            assert!(store.get(&etags[0]).is_some());
        }
    }
    assert!(store.get(&etags[0]).is_some());
    assert!(store.get(&etags[1]).is_none(), "the least recently used blob was evicted");
    assert!(store.get(&etags[2]).is_some());
    assert_eq!(store.usage().stored_bytes, 200_000);
    // A blob larger than the whole limit is streamed, not stored.
    let huge = test_bytes(300_000);
    let outcome = store.fill_or_join(&sha256_hex(&huge), huge.len() as u64, Arc::new(MemorySource::new(&huge))).unwrap();
    assert!(matches!(outcome, FillOutcome::NoRoom));
    // Reopening rebuilds the same accounting from disk.
    drop(store);
    let reopened = open_store(directory.path(), Some(250_000));
    assert_eq!(reopened.usage().stored_bytes, 200_000);
}

#[tokio::test]
async fn protected_blobs_are_never_evicted_and_every_change_is_an_event() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), Some(250_000));
    let mut events = store.subscribe();
    let mut etags = Vec::new();
    for seed in 0..3u8 {
        let bytes: Vec<u8> = test_bytes(100_000).into_iter().map(|byte| byte ^ seed).collect();
        let etag = sha256_hex(&bytes);
        if seed == 0 {
            // The oldest blob is pinned: the second goes instead.
            store.set_protected([etag.clone()].into_iter().collect());
        }
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!()
        };
        assert_eq!(fill.finished().await, FillState::Complete);
        etags.push(etag);
    }
    assert!(store.get(&etags[0]).is_some(), "the protected blob stayed although least recently used");
    assert!(store.get(&etags[1]).is_none());
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert_eq!(
        seen,
        [
            StoreEvent::Stored { etag: etags[0].clone(), size: 100_000 },
            StoreEvent::Stored { etag: etags[1].clone(), size: 100_000 },
            StoreEvent::Removed { etag: etags[1].clone() },
            StoreEvent::Stored { etag: etags[2].clone(), size: 100_000 },
        ]
    );
    // With everything protected there is no room, and the blob is streamed without storing.
    store.set_protected(etags.iter().cloned().collect());
    let other = test_bytes(100_001);
    let outcome = store.fill_or_join(&sha256_hex(&other), other.len() as u64, Arc::new(MemorySource::new(&other))).unwrap();
    assert!(matches!(outcome, FillOutcome::NoRoom));
}

#[tokio::test]
async fn a_corrupted_stored_chunk_is_never_sent_and_the_blob_is_dropped() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes(3 << 20);
    let etag = sha256_hex(&bytes);
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
        panic!()
    };
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    let size = bytes.len() as u64;
    let whole = read_all(store.stream_verified(&etag, size, 0, size, None).await.unwrap().unwrap()).await.unwrap();
    assert_eq!(whole, bytes);
    // Flip a byte in the second chunk.
    let path = store.get(&etag).unwrap().path;
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[1_500_000] ^= 0xff;
    std::fs::write(&path, &on_disk).unwrap();
    let mut stream = Box::pin(store.stream_verified(&etag, size, 0, size, None).await.unwrap().unwrap());
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, bytes[..1 << 20], "the good first chunk goes out");
    assert!(stream.next().await.unwrap().is_err(), "the corrupt chunk does not");
    assert!(store.get(&etag).is_none(), "the corrupt blob is dropped");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_blob_without_sums_is_checked_in_full_once() {
    let directory = tempfile::tempdir().unwrap();
    let bytes = test_bytes(2 << 20);
    let etag = sha256_hex(&bytes);
    {
        let store = open_store(directory.path(), None);
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!()
        };
        assert_eq!(wait_done(&fill).await, FillState::Complete);
        let path = store.get(&etag).unwrap().path;
        std::fs::remove_file(integrity::sums_path(&path)).unwrap();
        // And damage it, as a blob from before sums existed might be.
        let mut on_disk = std::fs::read(&path).unwrap();
        on_disk[10] ^= 1;
        std::fs::write(&path, &on_disk).unwrap();
    }
    let store = open_store(directory.path(), None);
    let size = bytes.len() as u64;
    assert!(store.stream_verified(&etag, size, 0, size, None).await.unwrap().is_none(), "a blob that fails its etag is not served");
    assert!(store.get(&etag).is_none());
}

#[tokio::test]
async fn a_small_blob_is_checked_once_then_served_from_memory_and_corruption_before_that_is_caught() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes(4096);
    let etag = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, size, Arc::new(MemorySource::new(&bytes))).unwrap() else { panic!() };
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    // Damaged on disk before it was ever served from there: caught, dropped, nothing served.
    let path = store.get(&etag).unwrap().path;
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[100] ^= 0xff;
    std::fs::write(&path, &on_disk).unwrap();
    assert!(store.stream_verified(&etag, size, 0, size, None).await.unwrap().is_none(), "a corrupt small blob is not served");
    assert!(store.get(&etag).is_none() && !path.exists(), "and is dropped");
    // Filled again, served (read and checked once), then answered from memory, ranges too.
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, size, Arc::new(MemorySource::new(&bytes))).unwrap() else { panic!() };
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    assert_eq!(read_all(store.stream_verified(&etag, size, 0, size, None).await.unwrap().unwrap()).await.unwrap(), bytes);
    assert_eq!(store.small_blob_bytes(), bytes.len());
    assert_eq!(read_all(store.stream_verified(&etag, size, 10, 20, None).await.unwrap().unwrap()).await.unwrap(), bytes[10..20]);
    // Removed from the store, it leaves memory too.
    store.remove(&etag);
    assert!(store.stream_verified(&etag, size, 0, size, None).await.unwrap().is_none());
    assert_eq!(store.small_blob_bytes(), 0);
}

#[tokio::test]
async fn the_scrubber_checks_protected_blobs_first_and_removes_a_damaged_one() {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::store::scrub::Scrubbed;
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let mut etags = Vec::new();
    for seed in 0..3u8 {
        let bytes: Vec<u8> = test_bytes(3 << 20).into_iter().map(|byte| byte ^ seed).collect();
        let etag = sha256_hex(&bytes);
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!()
        };
        assert_eq!(wait_done(&fill).await, FillState::Complete);
        etags.push(etag);
    }
    let last = etags.iter().max().unwrap().clone();
    store.set_protected([last.clone()].into_iter().collect());
    assert_eq!(store.scrub_order()[0], last, "pinned blobs first");
    // Flip one byte in the last chunk of one blob, as a bad sector would.
    let damaged = etags.iter().find(|etag| **etag != last).unwrap().clone();
    let path = store.get(&damaged).unwrap().path;
    let mut on_disk = std::fs::read(&path).unwrap();
    let at = on_disk.len() - 10;
    on_disk[at] ^= 0x01;
    std::fs::write(&path, &on_disk).unwrap();
    let read = AtomicU64::new(0);
    let mut results = Vec::new();
    for etag in store.scrub_order() {
        results.push((etag.clone(), store.scrub_blob(&etag, 0, &read).await.unwrap()));
    }
    for (etag, result) in &results {
        let expected = if *etag == damaged { Scrubbed::Removed } else { Scrubbed::Clean };
        assert_eq!(*result, expected, "{etag}");
    }
    assert!(store.get(&damaged).is_none() && !path.exists(), "the damaged blob is gone");
    assert_eq!(read.load(Ordering::Relaxed), 2 * (3 << 20) + (2 << 20), "every chunk read up to the bad one");
    assert_eq!(store.scrub_blob(&damaged, 0, &read).await.unwrap(), Scrubbed::Gone);
}

#[tokio::test]
async fn blobs_on_disk_are_served_before_the_start_up_listing_ends_and_counted_once_after() {
    let directory = tempfile::tempdir().unwrap();
    let (old, used) = (test_bytes(3_000), test_bytes(5_000));
    let (old_etag, used_etag) = (sha256_hex(&old), sha256_hex(&used));
    {
        let store = open_store(directory.path(), None);
        for (etag, bytes) in [(&old_etag, &old), (&used_etag, &used)] {
            let FillOutcome::Filling(fill) = store.fill_or_join(etag, bytes.len() as u64, Arc::new(MemorySource::new(bytes))).unwrap()
            else {
                panic!("a new blob is filled")
            };
            assert_eq!(wait_done(&fill).await, FillState::Complete);
        }
        store.close().await;
    }
    // A restart: the listing has not run yet.
    let store = BlobStore::open_unlisted(
        directory.path(),
        Limits { max_bytes: None, min_free_bytes: 0, index_entries: 16, read_checks: ReadChecks::OnceWhileScrubbed },
        CancellationToken::new(),
    )
    .unwrap();
    assert!(!store.is_scanned());
    assert_eq!(store.usage().num_blobs, 0);
    // Asked for, a blob on disk is found and served all the same.
    assert_eq!(store.get(&used_etag).map(|blob| blob.size), Some(5_000));
    assert!(store.contains(&old_etag));
    assert!(!store.contains(&sha256_hex(b"never stored")));
    // The listing then adds what was not asked for, without counting anything twice.
    store.scan_existing();
    assert!(store.is_scanned());
    let usage = store.usage();
    assert_eq!((usage.num_blobs, usage.stored_bytes), (2, 8_000));
    assert!(!store.contains(&sha256_hex(b"never stored")));
}

/// Fills `count` blobs of `size` bytes (distinct by seed) and returns their etags, oldest first.
async fn fill_blobs(store: &BlobStore, count: u8, size: usize) -> Vec<String> {
    let mut etags = Vec::new();
    for seed in 0..count {
        let bytes: Vec<u8> = test_bytes(size).into_iter().map(|byte| byte ^ seed).collect();
        let etag = sha256_hex(&bytes);
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!("a new blob is filled")
        };
        assert_eq!(wait_done(&fill).await, FillState::Complete);
        etags.push(etag);
    }
    etags
}

#[tokio::test]
async fn the_index_stays_bounded_and_cold_blobs_are_found_counted_and_evicted_oldest_first() {
    let directory = tempfile::tempdir().unwrap();
    let open = |max| {
        let store = BlobStore::open_with(
            directory.path(),
            Limits { max_bytes: max, min_free_bytes: 0, index_entries: 3, read_checks: ReadChecks::OnceWhileScrubbed },
            CancellationToken::new(),
        )
        .unwrap();
        store.wait_scanned();
        store
    };
    let store = open(Some(10_000));
    let etags = fill_blobs(&store, 8, 1_000).await;
    let usage = store.usage();
    assert_eq!((usage.num_blobs, usage.stored_bytes, usage.indexed_blobs), (8, 8_000, 3), "only the 3 newest are in memory");
    // The cold ones are found on disk, and a use brings one back without counting it twice.
    assert!(etags.iter().all(|etag| store.contains(etag)));
    assert_eq!(store.get(&etags[0]).map(|blob| blob.size), Some(1_000));
    assert_eq!(store.usage().stored_bytes, 8_000);
    assert_eq!(store.blobs().len(), 8, "the full list comes from disk");
    assert_eq!(store.stored_size(&etags[5]), Some(1_000));
    // Give the blobs distinct recorded last uses (the recorded resolution is a second): the file
    // times say blob 1 is the oldest, then 2, ….
    for (age, etag) in etags.iter().enumerate().skip(1) {
        let time = std::time::SystemTime::now() - std::time::Duration::from_secs(10_000 - age as u64 * 100);
        std::fs::File::open(store.blob_path(etag)).unwrap().set_times(std::fs::FileTimes::new().set_accessed(time)).unwrap();
    }
    store.close().await;
    drop(store);
    // After a restart the listing counts everything and indexes the most recently used; a new blob
    // that needs room evicts cold blobs, the oldest of the sample (with 8 blobs, all of them).
    let store = open(Some(10_000));
    let usage = store.usage();
    assert_eq!((usage.num_blobs, usage.stored_bytes, usage.indexed_blobs), (8, 8_000, 3));
    let newcomers = {
        let mut bytes = test_bytes(3_000);
        bytes[0] ^= 0xff;
        let etag = sha256_hex(&bytes);
        let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
            panic!("a new blob is filled")
        };
        assert_eq!(wait_done(&fill).await, FillState::Complete);
        etag
    };
    assert!(store.contains(&newcomers));
    let gone: Vec<usize> = (0..8).filter(|index| !store.contains(&etags[*index])).collect();
    assert_eq!(gone, [1], "the oldest recorded use went first ({gone:?})");
    let usage = store.usage();
    assert_eq!((usage.num_blobs, usage.stored_bytes), (8, 10_000));
    assert!(usage.indexed_blobs <= 3);
    // Removing a cold blob uncounts it once, however often it is asked.
    let cold = (2..8).find(|index| !store.inner.accounting.lock().unwrap().is_indexed(&BlobKey::parse(&etags[*index]).unwrap())).unwrap();
    store.remove(&etags[cold]);
    store.remove(&etags[cold]);
    assert_eq!(store.usage().stored_bytes, 9_000);
}

#[test]
fn etags_are_kept_in_binary_and_read_back_the_same() {
    for etag in ["ce013625030ba8dba906f756967f9e9ca394464a".to_owned(), sha256_hex(b"bytes")] {
        assert_eq!(BlobKey::parse(&etag).map(|key| key.etag()), Some(etag));
    }
    for bad in ["", "CE013625030BA8DBA906F756967F9E9CA394464A", "ce01", "../../etc/passwd"] {
        assert!(BlobKey::parse(bad).is_none(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_fills_never_make_the_store_miscount() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let mut tasks = Vec::new();
    for seed in 0..40u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let bytes: Vec<u8> = test_bytes(2_000 + usize::from(seed)).into_iter().map(|byte| byte ^ seed).collect();
            let etag = sha256_hex(&bytes);
            // A reader asks for the blob over and over while it is filled, as clients joining a fill do.
            let reader = {
                let (store, etag) = (store.clone(), etag.clone());
                tokio::spawn(async move {
                    while store.get(&etag).is_none() {
                        tokio::task::yield_now().await;
                    }
                })
            };
            let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap()
            else {
                panic!("a new blob is filled")
            };
            assert_eq!(wait_done(&fill).await, FillState::Complete);
            reader.await.unwrap();
            bytes.len() as u64
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let usage = store.usage();
    assert_eq!((usage.num_blobs, usage.stored_bytes), (40, total));
}

/// Reads a zero-copy stream the way its connection would: every item must be a placeholder, and
/// the bytes are those of the file stretch recorded for it.
async fn read_zero_copy(
    stream: impl futures_util::Stream<Item = std::io::Result<Bytes>>,
    sink: &crate::common::zero_copy::ZeroCopySink,
) -> std::io::Result<Vec<u8>> {
    let mut stream = Box::pin(stream);
    let mut collected = Vec::new();
    while let Some(placeholder) = stream.next().await {
        let placeholder = placeholder?;
        assert!(crate::common::zero_copy::is_placeholder(&placeholder), "a zero-copy stream yields placeholders only");
        let span = sink.take().expect("a stretch recorded for each placeholder");
        assert!(span.is_placeholder_of(&placeholder));
        let mut bytes = vec![0; span.length];
        std::os::unix::fs::FileExt::read_exact_at(&*span.file, &mut bytes, span.offset)?;
        collected.extend_from_slice(&bytes);
    }
    assert!(sink.take().is_none(), "no stretch without its placeholder");
    Ok(collected)
}

async fn stored_blob(store: &BlobStore, bytes: &[u8]) -> String {
    let etag = sha256_hex(bytes);
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(bytes))).unwrap() else {
        panic!()
    };
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    etag
}

#[tokio::test]
async fn zero_copy_reads_check_every_chunk_until_the_file_was_checked_whole_and_again_once_it_changes() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes((3 << 20) + 1234);
    let (etag, size) = (stored_blob(&store, &bytes).await, bytes.len() as u64);
    let sink = crate::common::zero_copy::ZeroCopySink::default();
    // Just written: checked on every read, and not trusted after, since its change time is too fresh
    // to tell a later write apart.
    assert_eq!(
        read_zero_copy(store.stream_verified(&etag, size, 0, size, Some(&sink)).await.unwrap().unwrap(), &sink).await.unwrap(),
        bytes
    );
    assert!(!store.open_verified(&etag).await.unwrap().unwrap().checked);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A range checks only its chunks and makes nothing trusted.
    let range = store.stream_verified(&etag, size, 1_500_000, 2_600_000, Some(&sink)).await.unwrap().unwrap();
    assert_eq!(read_zero_copy(range, &sink).await.unwrap(), bytes[1_500_000..2_600_000]);
    assert!(!store.open_verified(&etag).await.unwrap().unwrap().checked);
    // A whole read of the settled file checks every chunk, and the file is then trusted as it is.
    assert_eq!(
        read_zero_copy(store.stream_verified(&etag, size, 0, size, Some(&sink)).await.unwrap().unwrap(), &sink).await.unwrap(),
        bytes
    );
    assert!(store.open_verified(&etag).await.unwrap().unwrap().checked);
    assert_eq!(
        read_zero_copy(store.stream_verified(&etag, size, 100, size, Some(&sink)).await.unwrap().unwrap(), &sink).await.unwrap(),
        bytes[100..]
    );
    // Any write to the file ends the trust: the corrupt third chunk is found before it goes out.
    let path = store.get(&etag).unwrap().path;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[2_200_000] ^ 1], 2_200_000).unwrap();
    let blob = store.open_verified(&etag).await.unwrap().unwrap();
    assert!(!blob.checked, "a file written to since its check is checked again");
    drop(blob);
    let mut stream = Box::pin(store.stream_verified(&etag, size, 0, size, Some(&sink)).await.unwrap().unwrap());
    for _ in 0..2 {
        assert!(stream.next().await.unwrap().is_ok(), "the good chunks go out");
    }
    assert!(stream.next().await.unwrap().is_err(), "the corrupt one does not");
    assert!(store.get(&etag).is_none() && !path.exists(), "and the blob is dropped");
}

#[tokio::test]
async fn a_store_that_checks_every_read_never_trusts_a_file() {
    let directory = tempfile::tempdir().unwrap();
    let store = BlobStore::open(directory.path(), None, 0, ReadChecks::EveryRead, CancellationToken::new()).unwrap();
    let bytes = test_bytes(2 << 20);
    let (etag, size) = (stored_blob(&store, &bytes).await, bytes.len() as u64);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sink = crate::common::zero_copy::ZeroCopySink::default();
    for _ in 0..2 {
        assert_eq!(
            read_zero_copy(store.stream_verified(&etag, size, 0, size, Some(&sink)).await.unwrap().unwrap(), &sink).await.unwrap(),
            bytes
        );
    }
    assert!(!store.open_verified(&etag).await.unwrap().unwrap().checked);
}

#[tokio::test]
async fn zero_copy_readers_of_a_fill_get_every_byte_and_never_a_clean_end_of_a_corrupt_one() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(directory.path(), None);
    let bytes = test_bytes((2 << 20) + 77);
    let etag = sha256_hex(&bytes);
    let sink = crate::common::zero_copy::ZeroCopySink::default();
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bytes.len() as u64, Arc::new(MemorySource::new(&bytes))).unwrap() else {
        panic!()
    };
    assert_eq!(read_zero_copy(fill.follow(0, fill.size, Some(sink.clone())), &sink).await.unwrap(), bytes);
    assert_eq!(wait_done(&fill).await, FillState::Complete);
    // A corrupt source: the readers' streams end in an error, never cleanly.
    let bad = test_bytes(3 << 20);
    let mut source = MemorySource::new(&bad);
    source.corrupt = true;
    let etag = sha256_hex(&bad);
    let FillOutcome::Filling(fill) = store.fill_or_join(&etag, bad.len() as u64, Arc::new(source)).unwrap() else { panic!() };
    assert!(read_zero_copy(fill.follow(0, fill.size, Some(sink.clone())), &sink).await.is_err());
}
