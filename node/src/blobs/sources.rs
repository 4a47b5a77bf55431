//! Where the bytes of a blob this node lacks come from.
//!
//! For a cold blob the sources are tried in placement order: the nodes ranked above this one are
//! asked as fill leaders (a leader that lacks the blob fetches it from upstream once, for everyone,
//! and streams it while it writes); the nodes ranked below are asked only for what they hold; then
//! upstream. Nodes the catalog's replica record names come first. A source that fails, even
//! mid-stream, is replaced by the next one from the byte reached.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use hfm_cluster::catalog::Catalog;
use hfm_cluster::peer::protocol::FillRequest;
use hfm_cluster::peer::{PeerAddress, PeerEndpoint};
use tracing::{debug, info};

use crate::peers::Peers;
use crate::store::{BlobSource, ByteStream, SourceError};
use crate::upstream::{Upstream, UpstreamBlob};

/// Builds the sources of blobs; a cheap handle.
#[derive(Clone)]
pub struct BlobSources {
    catalog: Arc<dyn Catalog>,
    upstream: Upstream,
    peers: Option<Peers>,
}

impl BlobSources {
    pub fn new(catalog: Arc<dyn Catalog>, upstream: Upstream, peers: Option<Peers>) -> BlobSources {
        BlobSources { catalog, upstream, peers }
    }

    /// Where a blob this node lacks comes from: in a cluster, the nodes the replica record names,
    /// then the placement's fill leaders and other nodes, then upstream (`origin`, a `/resolve/`
    /// path); alone, upstream.
    pub async fn blob_source(&self, etag: &str, size: u64, origin: &str) -> Arc<dyn BlobSource> {
        let upstream = Arc::new(UpstreamBlob::new(self.upstream.clone(), origin.to_owned()));
        match &self.peers {
            Some(peers) => cluster_source(peers, etag, size, origin, &self.replica_holders(etag).await, upstream),
            None => upstream,
        }
    }

    /// Where a range of a blob comes from when it cannot wait for the blob's fill: a node holding a
    /// complete copy, else upstream (a ranged request). Never a fill leader, which would only start
    /// the same sequential fill.
    pub async fn range_source(&self, etag: &str, size: u64, origin: &str) -> Arc<dyn BlobSource> {
        let upstream = Arc::new(UpstreamBlob::new(self.upstream.clone(), origin.to_owned()));
        match &self.peers {
            Some(peers) => holders_source(peers, etag, size, &self.replica_holders(etag).await, Some(upstream)),
            None => upstream,
        }
    }

    /// A source reading only from `holders` (never upstream): replication must not cost upstream
    /// traffic. Alone, there is no holder to read from.
    pub fn copy_source(&self, etag: &str, size: u64, holders: &[String]) -> Option<Arc<dyn BlobSource>> {
        self.peers.as_ref().map(|peers| holders_source(peers, etag, size, holders, None))
    }

    /// The cluster's sources with `holders` first, then the fill path, then upstream at `origin`.
    pub fn source_with_holders(&self, etag: &str, size: u64, origin: &str, holders: &[String]) -> Arc<dyn BlobSource> {
        let upstream = Arc::new(UpstreamBlob::new(self.upstream.clone(), origin.to_owned()));
        match &self.peers {
            Some(peers) => cluster_source(peers, etag, size, origin, holders, upstream),
            None => upstream,
        }
    }

    /// The nodes the catalog's replica record names for a blob (none when unknown or unreadable).
    async fn replica_holders(&self, etag: &str) -> Vec<String> {
        match self.catalog.get_replicas(etag).await {
            Ok(record) => record.map(|record| record.holders).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// A source that reads a blob from the nodes holding a complete copy (live ones, in the order
/// given), then from `then_upstream` if given. Replication passes no upstream (it must not cost
/// upstream traffic); a range answered ahead of a fill passes it.
fn holders_source(
    peers: &Peers,
    etag: &str,
    size: u64,
    holders: &[String],
    then_upstream: Option<Arc<UpstreamBlob>>,
) -> Arc<dyn BlobSource> {
    let (planner, holders) = (peers.clone(), holders.to_vec());
    let plan = move || {
        let view = planner.view();
        let mut candidates: Vec<Candidate> = holders
            .iter()
            .filter(|name| *name != planner.self_name() && view.members.contains_key(*name))
            .filter_map(|name| planner.peer_address(name))
            .map(|address| Candidate::Peer { address, origin: None })
            .collect();
        candidates.extend(then_upstream.clone().map(Candidate::Upstream));
        candidates
    };
    ClusterSource::new(peers, etag, size, Box::new(plan))
}

/// The sources of a blob, in the order they are tried (see the module doc). `holders` are the
/// nodes the catalog's replica record names; they are asked first.
fn cluster_source(
    peers: &Peers,
    etag: &str,
    size: u64,
    origin: &str,
    holders: &[String],
    upstream: Arc<UpstreamBlob>,
) -> Arc<dyn BlobSource> {
    let (planner, key, origin, holders) = (peers.clone(), etag.to_owned(), origin.to_owned(), holders.to_vec());
    let plan = move || {
        let preference = planner.preference_list(&key);
        let position = preference.iter().position(|name| *name == planner.self_name()).unwrap_or(preference.len());
        let view = planner.view();
        let mut first = Vec::new();
        let mut leaders = Vec::new();
        let mut below = Vec::new();
        for (rank, name) in preference.iter().enumerate() {
            let Some(address) = planner.peer_address(name) else { continue };
            if rank == position {
                continue;
            }
            // The first live, ready, not draining node above us is the fill leader; a dead node
            // would only cost a connection timeout. A draining node may still hand out what it holds.
            let usable = if rank < position { view.is_serving(name) } else { view.members.contains_key(*name) };
            if !usable {
                continue;
            }
            // Only nodes ranked above are asked as leaders (with the origin): a node below would
            // answer from a fill that may itself be fed by us.
            let origin = (rank < position).then(|| origin.clone());
            let candidate = Candidate::Peer { address, origin };
            if holders.iter().any(|holder| holder == name) {
                first.push(candidate);
            } else if rank < position {
                leaders.push(candidate);
            } else {
                below.push(candidate);
            }
        }
        let mut candidates = first;
        candidates.extend(leaders);
        candidates.extend(below);
        candidates.push(Candidate::Upstream(upstream.clone()));
        candidates
    };
    ClusterSource::new(peers, etag, size, Box::new(plan))
}

enum Candidate {
    Peer { address: PeerAddress, origin: Option<String> },
    Upstream(Arc<UpstreamBlob>),
}

/// Tries its candidates in order, staying with the one that last worked. When every candidate
/// failed (or there was none: a node just back from a pause sees no live peer yet), the next
/// attempt plans them again from the cluster's view as it is then, so a fill retried with backoff
/// finds the peers that came back.
struct ClusterSource {
    endpoint: PeerEndpoint,
    etag: String,
    size: u64,
    plan: Box<dyn Fn() -> Vec<Candidate> + Send + Sync>,
    /// The candidates planned last, and the one in use.
    state: Mutex<(Arc<Vec<Candidate>>, usize)>,
}

impl ClusterSource {
    fn new(peers: &Peers, etag: &str, size: u64, plan: Box<dyn Fn() -> Vec<Candidate> + Send + Sync>) -> Arc<dyn BlobSource> {
        let candidates = Arc::new(plan());
        Arc::new(ClusterSource {
            endpoint: peers.endpoint().clone(),
            etag: etag.to_owned(),
            size,
            plan,
            state: Mutex::new((candidates, 0)),
        })
    }
}

#[async_trait::async_trait]
impl BlobSource for ClusterSource {
    async fn open(&self, offset: u64) -> Result<(u64, ByteStream), SourceError> {
        let (candidates, first) = {
            let mut state = self.state.lock().expect("source state poisoned");
            if state.1 >= state.0.len() {
                *state = (Arc::new((self.plan)()), 0);
            }
            (state.0.clone(), state.1)
        };
        for index in first..candidates.len() {
            self.state.lock().expect("source state poisoned").1 = index;
            match &candidates[index] {
                Candidate::Peer { address, origin } => {
                    let request = FillRequest { etag: self.etag.clone(), size: self.size, start: offset, origin: origin.clone() };
                    match self.endpoint.fetch(address, &request).await {
                        Ok((start, bytes)) => {
                            debug!(etag = %self.etag, peer = %address.name, offset, "filling from a peer");
                            let bytes = bytes.map(|chunk| {
                                let chunk = chunk.map_err(|error| SourceError::Transient(error.to_string()))?;
                                crate::telemetry::metrics().bytes(crate::telemetry::ByteSource::Peer, chunk.len() as u64);
                                Ok(chunk)
                            });
                            return Ok((start, Box::pin(bytes)));
                        }
                        Err(error) => debug!(etag = %self.etag, %error, "peer cannot serve; trying the next source"),
                    }
                }
                Candidate::Upstream(upstream) => {
                    info!(etag = %self.etag, offset, "no peer has it; filling from upstream");
                    return upstream.open(offset).await;
                }
            }
        }
        // Every candidate failed: the next attempt plans again.
        self.state.lock().expect("source state poisoned").1 = candidates.len();
        Err(SourceError::Transient("no source left".into()))
    }

    fn describe(&self) -> String {
        let state = self.state.lock().expect("source state poisoned");
        match state.0.get(state.1) {
            Some(Candidate::Peer { address, .. }) => format!("peer {}", address.name),
            Some(Candidate::Upstream(upstream)) => upstream.describe(),
            None => "no source".into(),
        }
    }
}
