//! This node's view of its peers: the QUIC peer endpoint, who is alive and serving (gossip), where
//! each peer is, and the placement that ranks them for a key. Pure lookups and RPC plumbing; what
//! travels over the endpoint (fills, metadata questions, replica offers) belongs to the layers above.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use hfm_cluster::catalog::raft::CatalogMember;
use hfm_cluster::membership::{ClusterView, StateHandle};
use hfm_cluster::peer::tls::PeerTls;
use hfm_cluster::peer::{PeerAddress, PeerEndpoint, peer_alpn};
use hfm_cluster::placement::{Placement, WeightedNode};
use tokio::sync::watch;
use tracing::info;

use crate::config::ClusterConfig;

pub mod catalog_membership;

/// This node's view of its peers; a cheap handle.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    endpoint: PeerEndpoint,
    /// Who is alive and serving, from gossip; dead and draining nodes are not asked.
    view: watch::Receiver<ClusterView>,
    /// This node's own gossip state (draining).
    state: StateHandle,
    placement: Placement,
    self_name: String,
    addresses: HashMap<String, PeerAddress>,
    /// Set once `drain` starts: the node leads no new fills.
    draining: AtomicBool,
}

impl Peers {
    /// Loads the node's TLS identity, binds its QUIC endpoint and resolves every peer's address.
    pub async fn start(
        config: &ClusterConfig,
        self_name: &str,
        peer_socket: Option<std::net::UdpSocket>,
        view: watch::Receiver<ClusterView>,
        state: StateHandle,
    ) -> anyhow::Result<Peers> {
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
        let inner =
            PeersInner { endpoint, view, state, placement, self_name: self_name.to_owned(), addresses, draining: AtomicBool::new(false) };
        Ok(Peers { inner: Arc::new(inner) })
    }

    pub fn endpoint(&self) -> &PeerEndpoint {
        &self.inner.endpoint
    }

    /// The node that answers metadata misses for `key`: the first serving node of its placement.
    /// `None` when that is this node (or no node is serving), so the caller asks upstream itself.
    pub fn metadata_leader(&self, key: &str) -> Option<PeerAddress> {
        let view = self.inner.view.borrow();
        let leader =
            self.inner.placement.preference_list(key).into_iter().find(|name| *name == self.inner.self_name || view.is_serving(name))?;
        if leader == self.inner.self_name {
            return None;
        }
        self.inner.addresses.get(leader).cloned()
    }

    /// This node's gossip state.
    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    /// Starts draining: announced in gossip (peers stop choosing this node), and from now on the
    /// node leads no new fill for a peer, even one whose view still lags.
    pub async fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.state.set_draining(true).await;
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The latest gossip view of the cluster.
    pub fn view(&self) -> ClusterView {
        self.inner.view.borrow().clone()
    }

    /// The Raft catalog's members: every node of the topology, in file order, numbered by name
    /// ([`hfm_cluster::catalog::raft::catalog_id`]).
    pub fn catalog_members(&self, config: &ClusterConfig) -> Vec<CatalogMember> {
        config
            .peers
            .iter()
            .filter_map(|peer| {
                let address = self.inner.addresses.get(&peer.name)?;
                Some(CatalogMember {
                    id: hfm_cluster::catalog::raft::catalog_id(&peer.name),
                    name: peer.name.clone(),
                    peer: address.clone(),
                })
            })
            .collect()
    }

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

    /// Every node of the topology, in file order.
    pub fn topology_names(&self) -> Vec<String> {
        self.inner.placement.nodes().iter().map(|node| node.name.clone()).collect()
    }

    /// The nodes that should hold `etag`: the first `replicas` serving nodes of its placement
    /// (this node counts when it serves).
    pub fn replica_targets(&self, etag: &str, replicas: usize) -> Vec<String> {
        let view = self.inner.view.borrow();
        self.inner
            .placement
            .preference_list(etag)
            .into_iter()
            .filter(|name| view.is_serving(name))
            .take(replicas)
            .map(str::to_owned)
            .collect()
    }

    /// Every serving node: where a pinned blob belongs.
    pub fn serving_nodes(&self) -> Vec<String> {
        let view = self.inner.view.borrow();
        self.inner.placement.nodes().iter().map(|node| node.name.clone()).filter(|name| view.is_serving(name)).collect()
    }

    /// The catalog ids of the other serving nodes: who may take catalog leadership from this one.
    pub fn catalog_successors(&self) -> Vec<u64> {
        self.serving_nodes()
            .iter()
            .filter(|name| *name != self.self_name())
            .map(|name| hfm_cluster::catalog::raft::catalog_id(name))
            .collect()
    }

    pub fn self_name(&self) -> &str {
        &self.inner.self_name
    }

    /// The nodes in the order placement ranks them for `key`.
    pub fn preference_list(&self, key: &str) -> Vec<&str> {
        self.inner.placement.preference_list(key)
    }

    pub fn peer_address(&self, name: &str) -> Option<PeerAddress> {
        self.inner.addresses.get(name).cloned()
    }
}

/// Exports what gossip shows of the topology's nodes.
impl crate::telemetry::MetricSource for Peers {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let mut states: Vec<(&str, i64)> = ["live", "draining", "starting", "dead"].iter().map(|state| (*state, 0)).collect();
        for (_, state) in self.member_states() {
            if let Some(count) = states.iter_mut().find(|(known, _)| *known == state) {
                count.1 += 1;
            }
        }
        samples.gauges("hfm_gossip_members", "Nodes of the topology by the state gossip sees", "state", &states)?;
        samples.counter(
            "hfm_peer_connections_refused",
            "Peer connections refused: a certificate not from the cluster CA, or naming no node of the topology",
            self.endpoint().refused_peers(),
        )
    }
}

/// Exports the Raft catalog's state as this node sees it.
pub struct RaftMetrics(pub hfm_cluster::catalog::raft::RaftCatalog);

impl crate::telemetry::MetricSource for RaftMetrics {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let status = self.0.status();
        samples.gauge("hfm_raft_term", "The catalog's current Raft term", status.term as i64)?;
        samples.gauge("hfm_raft_is_leader", "1 when this node leads the catalog", i64::from(status.leader == Some(status.id)))?;
        samples.gauge("hfm_raft_has_leader", "1 when this node knows a catalog leader", i64::from(status.leader.is_some()))?;
        samples.gauge("hfm_raft_last_applied", "Index of the last catalog entry applied here", status.last_applied.unwrap_or(0) as i64)
    }
}

/// Exports the gossip datagrams dropped before chitchat saw them, and the clock offset gossip measured.
pub struct GossipMetrics(pub Arc<hfm_cluster::membership::auth::GossipRejections>);

impl crate::telemetry::MetricSource for GossipMetrics {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let reasons = [("forged", load(&self.0.forged)), ("stale", load(&self.0.stale)), ("replayed", load(&self.0.replayed))];
        samples.counters(
            "hfm_gossip_rejected",
            "Gossip datagrams dropped unread: no valid MAC, too old, or seen before",
            "reason",
            &reasons,
        )?;
        samples.gauge(
            "hfm_clock_offset_ms",
            "The cluster's clock (the median member's) minus this machine's, in ms; 0 within a second",
            hfm_cluster::clock::offset_ms(),
        )
    }
}
