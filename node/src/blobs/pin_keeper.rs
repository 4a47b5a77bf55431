//! The pin keeper of a node that runs alone (a cluster's replica keepers do this job there).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hfm_cluster::catalog::Catalog;
use tokio_util::sync::CancellationToken;

use super::pinned::{PinWatch, PinnedBlob, pinned_blobs};
use super::sources::BlobSources;
use crate::store::{BlobStore, FillOutcome, Room};

/// How many pinned files a node running alone fills at once.
const LOCAL_PARALLEL_FILLS: usize = 2;

/// The pin keeper of a node that runs alone (a cluster's replica keepers do this job there): keeps
/// the pinned files from eviction and fills the missing ones from upstream, when the pins change and
/// every `interval`, until `shutdown`.
pub fn spawn_local_keeper(
    catalog: Arc<dyn Catalog>,
    store: BlobStore,
    sources: BlobSources,
    pin_watch: &PinWatch,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut pins_changed = pin_watch.subscribe();
    tokio::spawn(async move {
        loop {
            let pinned = pinned_blobs(catalog.as_ref()).await;
            store.set_protected(pinned.keys().cloned().collect());
            let missing: Vec<(String, PinnedBlob)> = pinned.into_iter().filter(|(etag, _)| !store.contains(etag)).collect();
            if !missing.is_empty() {
                tracing::info!(files = missing.len(), "filling pinned files");
            }
            let fills = futures_util::stream::iter(missing)
                .map(|(etag, blob)| {
                    let (store, sources) = (&store, &sources);
                    async move { fill_pinned(store, sources, &etag, &blob).await }
                })
                .buffer_unordered(LOCAL_PARALLEL_FILLS)
                .collect::<Vec<()>>();
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = fills => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = pins_changed.changed() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Fills one pinned file into this node's store (a pinned file may evict unpinned ones).
async fn fill_pinned(store: &BlobStore, sources: &BlobSources, etag: &str, blob: &PinnedBlob) {
    let source = sources.blob_source(etag, blob.size, &blob.origin).await;
    match store.fill_or_join_with(etag, blob.size, source, Room::EvictIfNeeded) {
        Ok(FillOutcome::Filling(fill)) => {
            let state = fill.finished().await;
            tracing::debug!(%etag, ?state, "pinned file fill ended");
        }
        Ok(FillOutcome::Stored(_)) => {}
        Ok(FillOutcome::NoRoom) => tracing::warn!(%etag, size = blob.size, "no room for a pinned file"),
        Err(error) => tracing::warn!(%etag, %error, "cannot fill a pinned file"),
    }
}
