//! The scrubber: every stored blob read back from disk and checked against its chunk sums on a
//! schedule, the blobs of pinned repositories first (rsync serves those files as they are on disk,
//! with no check of its own). A damaged blob is removed at once: it leaves the rsync trees at their
//! next round (a repository is laid out only while every one of its blobs is in the store) and the
//! replica keeper, or the next request, fills it again, from a peer when one holds it.
//!
//! Reads are paced to `rate` bytes per second so that a pass never competes with clients for the
//! disk; between passes the scrubber sleeps for `interval`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::config::ScrubSettings;

use super::BlobStore;
use super::integrity::{CHUNK, sum_at};

/// What the scrubber did, for metrics.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    pub blobs: AtomicU64,
    pub bytes: AtomicU64,
    pub damaged: AtomicU64,
    pub passes: AtomicU64,
}

/// How checking one blob went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scrubbed {
    Clean,
    /// Damaged, and removed from the store.
    Removed,
    /// No longer held (evicted or removed meanwhile).
    Gone,
}

impl BlobStore {
    /// Reads one stored blob back from disk and checks every chunk against its sum (a blob without
    /// sums is checked against its etag); a damaged blob is removed. Reads at most `rate` bytes a
    /// second (0: unpaced) and adds what it read to `read`.
    pub async fn scrub_blob(&self, etag: &str, rate: u64, read_bytes: &AtomicU64) -> io::Result<Scrubbed> {
        // open_verified rehashes a blob without sums against its etag, and removes it if it fails.
        let Some(blob) = self.open_verified_unused(etag).await? else { return Ok(Scrubbed::Gone) };
        let checked_from = std::time::SystemTime::now();
        for (index, expected) in blob.sums.iter().copied().enumerate() {
            let offset = index as u64 * CHUNK;
            let length = CHUNK.min(blob.size - offset) as usize;
            let file = blob.file.clone();
            let read = tokio::task::spawn_blocking(move || sum_at(&file, offset, length)).await.map_err(io::Error::other)?;
            match read {
                Ok(sum) if sum == expected => {}
                Ok(_) => {
                    warn!(%etag, chunk = index, "scrub: a stored chunk does not match its sum; removing the blob so it is filled again");
                    self.remove(etag);
                    return Ok(Scrubbed::Removed);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound || error.kind() == io::ErrorKind::UnexpectedEof => {
                    if !self.contains(etag) {
                        return Ok(Scrubbed::Gone);
                    }
                    warn!(%etag, %error, "scrub: a stored blob is shorter than its size; removing it");
                    self.remove(etag);
                    return Ok(Scrubbed::Removed);
                }
                Err(error) => return Err(error),
            }
            read_bytes.fetch_add(length as u64, Ordering::Relaxed);
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(length as f64 / rate as f64)).await;
            }
        }
        // A blob being served keeps its check for another scrub interval.
        self.record_checked(etag, &blob, checked_from);
        Ok(Scrubbed::Clean)
    }

    /// The blobs in the order a pass checks them: protected (pinned) ones first, then the rest.
    pub(super) fn scrub_order(&self) -> Vec<String> {
        let protected = self.inner.protected.lock().expect("protected set poisoned").clone();
        let mut blobs = self.blobs();
        blobs.sort_by_key(|etag| (!protected.contains(etag), etag.clone()));
        blobs
    }
}

/// Runs passes over the store until `shutdown`, the first one after `interval`.
pub fn spawn_scrubber(
    store: BlobStore,
    settings: ScrubSettings,
    counters: std::sync::Arc<ScrubCounters>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(settings.interval) => {}
            }
            let (mut checked, mut removed) = (0u64, 0u64);
            for etag in store.scrub_order() {
                if shutdown.is_cancelled() {
                    return;
                }
                match store.scrub_blob(&etag, settings.rate, &counters.bytes).await {
                    Ok(Scrubbed::Clean) => checked += 1,
                    Ok(Scrubbed::Removed) => {
                        checked += 1;
                        removed += 1;
                        counters.damaged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Scrubbed::Gone) => {}
                    Err(error) => warn!(%etag, %error, "scrub: cannot read a stored blob"),
                }
                counters.blobs.fetch_add(1, Ordering::Relaxed);
            }
            counters.passes.fetch_add(1, Ordering::Relaxed);
            info!(checked, removed, "scrub pass done");
        }
    })
}

/// Exports what the scrubber did.
impl crate::telemetry::MetricSource for ScrubCounters {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let value = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        samples.counter("hfm_scrub_blobs", "Stored blobs the scrubber read back and checked", value(&self.blobs))?;
        samples.counter("hfm_scrub_bytes", "Bytes the scrubber read back from disk", value(&self.bytes))?;
        samples.counter("hfm_scrub_damaged", "Stored blobs the scrubber found damaged and removed", value(&self.damaged))?;
        samples.counter("hfm_scrub_passes", "Complete scrubber passes over the store", value(&self.passes))
    }
}
