//! The pinned set as the catalog records it: every file of every pinned commit, by etag, and the
//! watch that wakes this node's keepers when a pin changes here.

use std::collections::HashMap;

use hfm_cluster::catalog::{Catalog, EntryKind};

use crate::hub::route::resolve_origin;
use crate::store::is_valid_etag;

/// Bumped whenever this node changes a pin, so its pin keeper and rsync trees look at once (pins
/// changed through other nodes are seen at their next round); a cheap handle.
#[derive(Clone)]
pub struct PinWatch {
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for PinWatch {
    fn default() -> Self {
        PinWatch { changed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)) }
    }
}

impl PinWatch {
    /// Tells this node's keepers that the pins changed.
    pub fn notify(&self) {
        self.changed.send_modify(|count| *count += 1);
    }

    /// Wakes when [`PinWatch::notify`] is called.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A pinned file: its size and where its bytes come from when nobody holds it.
pub struct PinnedBlob {
    pub size: u64,
    /// The `/resolve/` path upstream.
    pub origin: String,
}

/// The files of every pinned repository (whose manifest the catalog has), by etag: the commit each
/// pin stands on and the newer one of a followed branch being filled.
pub async fn pinned_blobs(catalog: &dyn Catalog) -> HashMap<String, PinnedBlob> {
    let mut pinned = HashMap::new();
    let pins = match catalog.list_pins().await {
        Ok(pins) => pins,
        Err(error) => {
            tracing::debug!(%error, "cannot list pins");
            return pinned;
        }
    };
    for (repo, pin) in pins {
        for commit in std::iter::once(&pin.commit).chain(pin.next_commit.as_ref()) {
            let Ok(Some(manifest)) = catalog.get_manifest(&repo, commit).await else {
                tracing::debug!(%repo, %commit, "pinned commit has no manifest yet");
                continue;
            };
            for index in 0..manifest.page_count() {
                let page = match manifest.page(index).await {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::debug!(%repo, %commit, %error, "cannot read a page of a pinned commit's manifest");
                        break;
                    }
                };
                for entry in page.entries().iter().filter(|entry| entry.kind == EntryKind::File) {
                    if is_valid_etag(entry.etag()) {
                        let origin = resolve_origin(&repo, commit, &entry.path);
                        pinned.entry(entry.etag().to_owned()).or_insert(PinnedBlob { size: entry.size, origin });
                    }
                }
            }
        }
    }
    pinned
}
