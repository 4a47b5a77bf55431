//! Answering peers' fill requests: from this node's verified blobs, from a fill in progress (as fill
//! leader), or by starting a fill from the sources ranked above this node.

use hfm_cluster::peer::protocol::FillRequest;
use hfm_cluster::peer::{LocalBlobs, PeerOpen};
use tracing::warn;

use super::sources::BlobSources;
use crate::peers::Peers;
use crate::store::{BlobStore, FillOutcome, is_valid_etag};

/// Answers peers from this node's store, and fetches from upstream when asked as fill leader.
pub struct PeerFills {
    store: BlobStore,
    sources: BlobSources,
    peers: Peers,
}

impl PeerFills {
    pub fn new(store: BlobStore, sources: BlobSources, peers: Peers) -> PeerFills {
        PeerFills { store, sources, peers }
    }
}

/// An origin a peer may ask us to fetch: a `/resolve/` path of our upstream, nothing else.
fn is_acceptable_origin(origin: &str) -> bool {
    origin.starts_with('/') && origin.contains("/resolve/") && !origin.contains("..") && !origin.contains("//") && origin.len() < 4096
}

#[async_trait::async_trait]
impl LocalBlobs for PeerFills {
    async fn open_for_peer(&self, request: &FillRequest) -> PeerOpen {
        if !is_valid_etag(&request.etag) {
            return PeerOpen::Unavailable("not an etag".into());
        }
        let store = &self.store;
        let (start, size) = (request.start, request.size);
        match store.stream_verified(&request.etag, size, start, size, None).await {
            Ok(Some(bytes)) => return PeerOpen::Sending { size, start, bytes: Box::pin(bytes) },
            Ok(None) => {}
            Err(error) => return PeerOpen::Unavailable(error.to_string()),
        }
        // Only a node asked as fill leader shares a fill in progress. A node asked merely whether it
        // holds the blob (a node ranked below the asker) answers from complete blobs only: its own
        // fill may be fed by the asker, and sharing it would make the two wait on each other.
        let Some(origin) = &request.origin else { return PeerOpen::NotHere };
        if let Some(fill) = store.fill_in_progress(&request.etag).filter(|fill| fill.size == size) {
            return PeerOpen::Sending { size, start, bytes: Box::pin(fill.reader(start, size)) };
        }
        // A draining node hands out what it has but starts nothing new: the asker's view of it lags.
        if self.peers.is_draining() {
            return PeerOpen::NotHere;
        }
        if !is_acceptable_origin(origin) {
            warn!(etag = %request.etag, "a peer asked for an unacceptable origin");
            return PeerOpen::Unavailable("unacceptable origin".into());
        }
        // As fill leader: a node holding a complete copy comes before upstream. Only nodes ranked
        // above this one are asked to fetch (with the origin), so the chain of leaders only climbs.
        let source = self.sources.blob_source(&request.etag, size, origin).await;
        match store.fill_or_join(&request.etag, size, source) {
            Ok(FillOutcome::Filling(fill)) => PeerOpen::Sending { size, start, bytes: Box::pin(fill.reader(start, size)) },
            Ok(FillOutcome::Stored(_)) => match store.stream_verified(&request.etag, size, start, size, None).await {
                Ok(Some(bytes)) => PeerOpen::Sending { size, start, bytes: Box::pin(bytes) },
                Ok(None) => PeerOpen::NotHere,
                Err(error) => PeerOpen::Unavailable(error.to_string()),
            },
            Ok(FillOutcome::NoRoom) => PeerOpen::Unavailable("no room to store".into()),
            Err(error) => PeerOpen::Unavailable(error.to_string()),
        }
    }
}
