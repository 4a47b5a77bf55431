//! Where the bytes of a blob this node lacks come from.
//!
//! For a cold blob the sources are tried in placement order: the nodes ranked above this one are
//! asked as fill leaders (a leader that lacks the blob fetches it from upstream once, for everyone,
//! and streams it while it writes); the nodes ranked below are asked only for what they hold; then
//! upstream. Nodes the catalog's replica record names come first. A source that fails, even
//! mid-stream, is replaced by the next one from the byte reached; a peer slow to start is raced
//! against the next holder, and one that stalls mid-stream is left (see [`HEDGE_AFTER`]).

use std::sync::{Arc, Mutex};

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hfm_cluster::catalog::Catalog;
use hfm_cluster::peer::protocol::FillRequest;
use hfm_cluster::peer::{PeerAddress, PeerEndpoint};
use tracing::{debug, info};

use crate::peers::Peers;
use crate::store::{BlobSource, ByteStream, SourceError};
use crate::telemetry::Reroute;
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
            .map(|address| Candidate::Peer { address, origin: None, holds: true })
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
            let holds = holders.iter().any(|holder| holder == name);
            let candidate = Candidate::Peer { address, origin, holds };
            if holds {
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
    /// `holds`: the catalog names it a holder. `origin`: it is asked as a fill leader (it fetches
    /// from upstream for everyone when it lacks the blob).
    Peer {
        address: PeerAddress,
        origin: Option<String>,
        holds: bool,
    },
    Upstream(Arc<UpstreamBlob>),
}

impl Candidate {
    /// Whether asking this one beside a slow peer costs nothing but a request: it holds the blob or
    /// is asked only for what it holds. A second fill leader would start a second upstream fetch, and
    /// upstream itself is asked only when no peer could answer.
    fn may_hedge(&self) -> bool {
        matches!(self, Candidate::Peer { holds: true, .. } | Candidate::Peer { origin: None, .. })
    }
}

/// How long a peer may take to start sending a blob before the next peer that holds it is asked too
/// (the first to answer is used, the other request is dropped). An answer on a healthy link takes a
/// few milliseconds; one from a peer behind a 300 ms link, or too busy to answer, takes longer. A
/// hedge only ever asks a node for what it holds, so a spurious one costs a request, not upstream.
const HEDGE_AFTER: Duration = Duration::from_millis(250);
/// How long a peer's blob stream may go without a byte before the fill goes on from the next source
/// (from the byte reached). QUIC itself would wait for its 20 s idle timeout.
const STALL_AFTER: Duration = Duration::from_secs(5);

/// Tries its candidates in order, staying with the one that last worked; a peer slow to answer gets
/// the next holder asked beside it ([`HEDGE_AFTER`]), a stalled one is left ([`STALL_AFTER`]). When
/// every candidate failed (or there was none: a node just back from a pause sees no live peer yet),
/// the next attempt plans them again from the cluster's view as it is then, so a fill retried with
/// backoff finds the peers that came back.
struct ClusterSource {
    endpoint: PeerEndpoint,
    etag: String,
    size: u64,
    plan: Box<dyn Fn() -> Vec<Candidate> + Send + Sync>,
    /// The candidates planned last, and the one in use.
    state: Arc<Mutex<(Arc<Vec<Candidate>>, usize)>>,
}

type PeerAnswer = (usize, Result<(u64, hfm_cluster::peer::BlobBytes), hfm_cluster::peer::PeerError>);

impl ClusterSource {
    fn new(peers: &Peers, etag: &str, size: u64, plan: Box<dyn Fn() -> Vec<Candidate> + Send + Sync>) -> Arc<dyn BlobSource> {
        let candidates = Arc::new(plan());
        Arc::new(ClusterSource {
            endpoint: peers.endpoint().clone(),
            etag: etag.to_owned(),
            size,
            plan,
            state: Arc::new(Mutex::new((candidates, 0))),
        })
    }

    fn use_candidate(&self, index: usize) {
        self.state.lock().expect("source state poisoned").1 = index;
    }

    /// Asks peer candidate `index` for the blob from `offset`.
    fn ask(&self, candidates: &[Candidate], index: usize, offset: u64) -> impl Future<Output = PeerAnswer> + Send + 'static {
        let Candidate::Peer { address, origin, .. } = &candidates[index] else { unreachable!("only peers are asked") };
        let (endpoint, address) = (self.endpoint.clone(), address.clone());
        let request = FillRequest { etag: self.etag.clone(), size: self.size, start: offset, origin: origin.clone() };
        async move { (index, endpoint.fetch(&address, &request).await) }
    }

    /// A peer's bytes, counted, and cut with an error when they stall; the stalled peer is then
    /// skipped when the fill opens the source again.
    fn watched(&self, index: usize, peer: String, bytes: hfm_cluster::peer::BlobBytes) -> ByteStream {
        let (state, etag) = (self.state.clone(), self.etag.clone());
        let stream = futures_util::stream::unfold(Some(bytes), move |bytes| {
            let (state, etag, peer) = (state.clone(), etag.clone(), peer.clone());
            async move {
                let mut bytes = bytes?;
                match tokio::time::timeout(STALL_AFTER, bytes.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        crate::telemetry::metrics().bytes(crate::telemetry::ByteSource::Peer, chunk.len() as u64);
                        Some((Ok(chunk), Some(bytes)))
                    }
                    Ok(Some(Err(error))) => Some((Err(SourceError::Transient(error.to_string())), None)),
                    Ok(None) => None,
                    Err(_) => {
                        info!(%etag, %peer, "peer stalled; going on from the next source");
                        crate::telemetry::metrics().rerouted(Reroute::FillStalled);
                        let mut state = state.lock().expect("source state poisoned");
                        if state.1 == index {
                            state.1 = index + 1;
                        }
                        Some((Err(SourceError::Transient(format!("peer {peer} sent nothing for {STALL_AFTER:?}"))), None))
                    }
                }
            }
        });
        Box::pin(stream)
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
        let mut asked = FuturesUnordered::new();
        let mut next = first;
        loop {
            if asked.is_empty() {
                match candidates.get(next) {
                    None => break,
                    Some(Candidate::Upstream(upstream)) => {
                        self.use_candidate(next);
                        info!(etag = %self.etag, offset, "no peer has it; filling from upstream");
                        return upstream.open(offset).await;
                    }
                    Some(Candidate::Peer { .. }) => {
                        self.use_candidate(next);
                        asked.push(self.ask(&candidates, next, offset));
                        next += 1;
                        continue;
                    }
                }
            }
            let hedge = candidates.get(next).is_some_and(Candidate::may_hedge);
            tokio::select! {
                Some((index, answer)) = asked.next() => match answer {
                    Ok((start, bytes)) => {
                        self.use_candidate(index);
                        let Candidate::Peer { address, .. } = &candidates[index] else { unreachable!("only peers are asked") };
                        debug!(etag = %self.etag, peer = %address.name, offset, "filling from a peer");
                        return Ok((start, self.watched(index, address.name.clone(), bytes)));
                    }
                    Err(error) => debug!(etag = %self.etag, %error, "peer cannot serve; trying the next source"),
                },
                () = tokio::time::sleep(HEDGE_AFTER), if hedge => {
                    info!(etag = %self.etag, offset, "a peer is slow to answer; asking the next holder too");
                    crate::telemetry::metrics().rerouted(Reroute::FillHedged);
                    asked.push(self.ask(&candidates, next, offset));
                    next += 1;
                }
            }
        }
        // Every candidate failed: the next attempt plans again.
        self.use_candidate(candidates.len());
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
