//! The node's side of the cluster's blob fills: asking peers before upstream, and answering peers.
//!
//! For a cold blob the sources are tried in placement order: the nodes ranked above this one are
//! asked as fill leaders (a leader that lacks the blob fetches it from upstream once, for everyone,
//! and streams it while it writes); the nodes ranked below are asked only for what they hold; then
//! upstream. A source that fails, even mid-stream, is replaced by the next one from the byte reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use hfm_cluster::catalog::raft::CatalogMember;
use hfm_cluster::membership::{ClusterView, StateHandle};
use hfm_cluster::peer::protocol::FillRequest;
use hfm_cluster::peer::tls::PeerTls;
use hfm_cluster::peer::{LocalBlobs, PeerAddress, PeerEndpoint, PeerOpen, peer_alpn};
use hfm_cluster::placement::{Placement, WeightedNode};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::mirror::Mirror;
use crate::store::{BlobSource, ByteStream, FillOutcome, SourceError, is_valid_etag};
use crate::upstream::UpstreamBlob;

/// This node's membership in the cluster, for blob fills.
pub struct ClusterFill {
    endpoint: PeerEndpoint,
    /// Who is alive and serving, from gossip; dead and draining nodes are not asked.
    view: watch::Receiver<ClusterView>,
    /// This node's own gossip state (draining).
    state: StateHandle,
    placement: Placement,
    self_name: String,
    addresses: HashMap<String, PeerAddress>,
    /// Set once `drain` starts: the node leads no new fills.
    draining: std::sync::atomic::AtomicBool,
}

impl ClusterFill {
    /// Loads the node's TLS identity, binds its QUIC endpoint and resolves every peer's address.
    pub async fn start(
        config: &ClusterConfig,
        self_name: &str,
        peer_socket: Option<std::net::UdpSocket>,
        view: watch::Receiver<ClusterView>,
        state: StateHandle,
    ) -> anyhow::Result<ClusterFill> {
        let tls = PeerTls::load(&config.certs_dir, self_name, &peer_alpn()).context("loading the peer certificates")?;
        let endpoint = match peer_socket {
            Some(socket) => PeerEndpoint::on_socket(socket, &tls)?,
            None => PeerEndpoint::bind(config.peer_listen, &tls)?,
        };
        let mut addresses = HashMap::new();
        for peer in &config.peers {
            let resolved = tokio::net::lookup_host(&peer.peer_address)
                .await
                .with_context(|| format!("resolving the peer address {} of {}", peer.peer_address, peer.name))?
                .next()
                .with_context(|| format!("{} resolves to no address", peer.peer_address))?;
            addresses.insert(peer.name.clone(), PeerAddress { name: peer.name.clone(), address: resolved });
        }
        let placement =
            Placement::new(config.peers.iter().map(|peer| WeightedNode { name: peer.name.clone(), weight: peer.weight }).collect())?;
        info!(node = self_name, peer_address = %endpoint.local_addr()?, peers = config.peers.len(), "peer endpoint ready");
        Ok(ClusterFill {
            endpoint,
            view,
            state,
            placement,
            self_name: self_name.to_owned(),
            addresses,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn endpoint(&self) -> &PeerEndpoint {
        &self.endpoint
    }

    /// The node that answers metadata misses for `key`: the first serving node of its placement.
    /// `None` when that is this node (or no node is serving), so the caller asks upstream itself.
    pub fn metadata_leader(&self, key: &str) -> Option<PeerAddress> {
        let view = self.view.borrow();
        let leader = self.placement.preference_list(key).into_iter().find(|name| *name == self.self_name || view.is_serving(name))?;
        if leader == self.self_name {
            return None;
        }
        self.addresses.get(leader).cloned()
    }

    /// This node's gossip state.
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// Starts draining: announced in gossip (peers stop choosing this node), and from now on the
    /// node leads no new fill for a peer, even one whose view still lags.
    pub async fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.set_draining(true).await;
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The latest gossip view of the cluster.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// The Raft catalog's members: every node of the topology, numbered from 1 in file order.
    pub fn catalog_members(&self, config: &ClusterConfig) -> Vec<CatalogMember> {
        config
            .peers
            .iter()
            .enumerate()
            .filter_map(|(index, peer)| {
                let address = self.addresses.get(&peer.name)?;
                Some(CatalogMember { id: index as u64 + 1, name: peer.name.clone(), peer: address.clone() })
            })
            .collect()
    }

    /// Every node of the topology, in file order.
    /// Every node of the topology with the state gossip shows it in: `live`, `draining`,
    /// `starting` (gossiping, not ready) or `dead` (not heard).
    pub fn member_states(&self) -> Vec<(String, &'static str)> {
        let view = self.view();
        self.topology_names()
            .into_iter()
            .map(|name| {
                let state = match view.members.get(&name) {
                    Some(member) if member.draining => "draining",
                    Some(member) if member.ready => "live",
                    Some(_) => "starting",
                    None => "dead",
                };
                (name, state)
            })
            .collect()
    }

    pub fn topology_names(&self) -> Vec<String> {
        self.placement.nodes().iter().map(|node| node.name.clone()).collect()
    }

    /// The nodes that should hold `etag`: the first `replicas` serving nodes of its placement
    /// (this node counts when it serves).
    pub fn replica_targets(&self, etag: &str, replicas: usize) -> Vec<String> {
        let view = self.view.borrow();
        self.placement.preference_list(etag).into_iter().filter(|name| view.is_serving(name)).take(replicas).map(str::to_owned).collect()
    }

    /// Every serving node: where a pinned blob belongs.
    pub fn serving_nodes(&self) -> Vec<String> {
        let view = self.view.borrow();
        self.placement.nodes().iter().map(|node| node.name.clone()).filter(|name| view.is_serving(name)).collect()
    }

    pub fn self_name(&self) -> &str {
        &self.self_name
    }

    pub fn peer_address(&self, name: &str) -> Option<PeerAddress> {
        self.addresses.get(name).cloned()
    }

    /// A source that reads a blob from the nodes holding a complete copy (live ones, in the order
    /// given), then from `then_upstream` if given. Replication passes no upstream (it must not cost
    /// upstream traffic); a range answered ahead of a fill passes it.
    pub fn holders_source(
        &self,
        etag: &str,
        size: u64,
        holders: &[String],
        then_upstream: Option<Arc<UpstreamBlob>>,
    ) -> Arc<dyn BlobSource> {
        let view = self.view.borrow();
        let mut candidates: Vec<Candidate> = holders
            .iter()
            .filter(|name| **name != self.self_name && view.members.contains_key(*name))
            .filter_map(|name| self.addresses.get(name))
            .map(|address| Candidate::Peer { address: address.clone(), origin: None })
            .collect();
        candidates.extend(then_upstream.map(Candidate::Upstream));
        Arc::new(ClusterSource { endpoint: self.endpoint.clone(), etag: etag.to_owned(), size, candidates, current: Mutex::new(0) })
    }

    /// The sources of a blob, in the order they are tried (see the module doc). `holders` are the
    /// nodes the catalog's replica record names; they are asked first.
    pub fn source_for(&self, etag: &str, size: u64, origin: &str, holders: &[String], upstream: Arc<UpstreamBlob>) -> Arc<dyn BlobSource> {
        let preference = self.placement.preference_list(etag);
        let position = preference.iter().position(|name| *name == self.self_name).unwrap_or(preference.len());
        let view = self.view.borrow();
        let mut first = Vec::new();
        let mut leaders = Vec::new();
        let mut below = Vec::new();
        for (rank, name) in preference.iter().enumerate() {
            let Some(address) = self.addresses.get(*name) else { continue };
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
            let origin = (rank < position).then(|| origin.to_owned());
            let candidate = Candidate::Peer { address: address.clone(), origin };
            if holders.iter().any(|holder| holder == name) {
                first.push(candidate);
            } else if rank < position {
                leaders.push(candidate);
            } else {
                below.push(candidate);
            }
        }
        drop(view);
        let mut candidates = first;
        candidates.extend(leaders);
        candidates.extend(below);
        candidates.push(Candidate::Upstream(upstream));
        Arc::new(ClusterSource { endpoint: self.endpoint.clone(), etag: etag.to_owned(), size, candidates, current: Mutex::new(0) })
    }
}

enum Candidate {
    Peer { address: PeerAddress, origin: Option<String> },
    Upstream(Arc<UpstreamBlob>),
}

/// Tries its candidates in order, staying with the one that last worked.
struct ClusterSource {
    endpoint: PeerEndpoint,
    etag: String,
    size: u64,
    candidates: Vec<Candidate>,
    current: Mutex<usize>,
}

#[async_trait::async_trait]
impl BlobSource for ClusterSource {
    async fn open(&self, offset: u64) -> Result<(u64, ByteStream), SourceError> {
        let first = *self.current.lock().expect("source index poisoned");
        for index in first..self.candidates.len() {
            *self.current.lock().expect("source index poisoned") = index;
            match &self.candidates[index] {
                Candidate::Peer { address, origin } => {
                    let request = FillRequest { etag: self.etag.clone(), size: self.size, start: offset, origin: origin.clone() };
                    match self.endpoint.fetch(address, &request).await {
                        Ok((start, bytes)) => {
                            debug!(etag = %self.etag, peer = %address.name, offset, "filling from a peer");
                            let bytes = bytes.map(|chunk| {
                                let chunk = chunk.map_err(|error| SourceError::Transient(error.to_string()))?;
                                crate::metrics::counters().bytes(crate::metrics::ByteSource::Peer, chunk.len() as u64);
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
        Err(SourceError::Transient("no source left".into()))
    }

    fn describe(&self) -> String {
        let index = *self.current.lock().expect("source index poisoned");
        match self.candidates.get(index) {
            Some(Candidate::Peer { address, .. }) => format!("peer {}", address.name),
            Some(Candidate::Upstream(upstream)) => upstream.describe(),
            None => "no source".into(),
        }
    }
}

/// Answers peers from this node's store, and fetches from upstream when asked as fill leader.
pub struct PeerService {
    mirror: Mirror,
}

impl PeerService {
    pub fn new(mirror: Mirror) -> PeerService {
        PeerService { mirror }
    }
}

/// An origin a peer may ask us to fetch: a `/resolve/` path of our upstream, nothing else.
fn is_acceptable_origin(origin: &str) -> bool {
    origin.starts_with('/') && origin.contains("/resolve/") && !origin.contains("..") && !origin.contains("//") && origin.len() < 4096
}

#[async_trait::async_trait]
impl LocalBlobs for PeerService {
    async fn open_for_peer(&self, request: &FillRequest) -> PeerOpen {
        if !is_valid_etag(&request.etag) {
            return PeerOpen::Unavailable("not an etag".into());
        }
        let store = self.mirror.store();
        let (start, size) = (request.start, request.size);
        match store.stream_verified(&request.etag, size, start, size).await {
            Ok(Some(bytes)) => return PeerOpen::Sending { size, start, bytes: Box::pin(bytes) },
            Ok(None) => {}
            Err(error) => return PeerOpen::Unavailable(error.to_string()),
        }
        // Only a node asked as fill leader shares a fill in progress. A node asked merely whether it
        // holds the blob (a node ranked below the asker) answers from complete blobs only: its own
        // fill may be fed by the asker, and sharing it would make the two wait on each other.
        let Some(origin) = &request.origin else { return PeerOpen::NotHere };
        if let Some(fill) = store.fill_in_progress(&request.etag) {
            if fill.size == size {
                return PeerOpen::Sending { size, start, bytes: Box::pin(fill.reader(start, size)) };
            }
        }
        // A draining node hands out what it has but starts nothing new: the asker's view of it lags.
        if self.mirror.cluster().is_some_and(|cluster| cluster.is_draining()) {
            return PeerOpen::NotHere;
        }
        if !is_acceptable_origin(origin) {
            warn!(etag = %request.etag, "a peer asked for an unacceptable origin");
            return PeerOpen::Unavailable("unacceptable origin".into());
        }
        // As fill leader: a node holding a complete copy comes before upstream. Only nodes ranked
        // above this one are asked to fetch (with the origin), so the chain of leaders only climbs.
        let source = self.mirror.blob_source(&request.etag, size, origin).await;
        match store.fill_or_join(&request.etag, size, source) {
            Ok(FillOutcome::Filling(fill)) => PeerOpen::Sending { size, start, bytes: Box::pin(fill.reader(start, size)) },
            Ok(FillOutcome::Stored(_)) => match store.stream_verified(&request.etag, size, start, size).await {
                Ok(Some(bytes)) => PeerOpen::Sending { size, start, bytes: Box::pin(bytes) },
                Ok(None) => PeerOpen::NotHere,
                Err(error) => PeerOpen::Unavailable(error.to_string()),
            },
            Ok(FillOutcome::NoRoom) => PeerOpen::Unavailable("no room to store".into()),
            Err(error) => PeerOpen::Unavailable(error.to_string()),
        }
    }
}

pub use crate::mirror::METADATA_SERVICE;

/// Answers the metadata questions of peers that found this node to lead the key.
pub struct MetadataService {
    mirror: Mirror,
}

impl MetadataService {
    pub fn new(mirror: Mirror) -> MetadataService {
        MetadataService { mirror }
    }
}

#[async_trait::async_trait]
impl hfm_cluster::peer::RpcHandler for MetadataService {
    async fn handle(&self, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let request: crate::mirror::MetadataRequest =
            serde_json::from_slice(&request).map_err(|error| format!("undecodable metadata request: {error}"))?;
        let answer = self.mirror.answer_peer(request).await;
        serde_json::to_vec(&answer).map_err(|error| error.to_string())
    }
}
