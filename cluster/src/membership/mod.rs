//! Membership: who is in the cluster, alive, ready and not draining, by gossip (chitchat over UDP).
//!
//! Each node publishes its addresses, readiness, draining flag, free disk and version under the keys
//! of [`keys`]; [`Membership::view`] turns chitchat's live set into a [`ClusterView`] on a watch
//! channel. A restarted node gossips under a new generation (its start time), so it is told apart
//! from its old self; the view keeps the newest generation of each node name.
//!
//! This is the only module of the crate that imports chitchat.

pub mod auth;
pub mod keys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How gossip runs. Defaults are tuned for four nodes across Europe: a dead node is noticed in about
/// 5 s, and a node that stalls for a second or two is not declared dead.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub node_name: String,
    pub cluster_id: String,
    pub gossip_listen: SocketAddr,
    pub gossip_advertise: SocketAddr,
    /// `host:port` of the other nodes' gossip endpoints.
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    /// What this node publishes at start (addresses, version); readiness starts false.
    pub advertised: Vec<(String, String)>,
    /// The cluster's gossip key; every datagram is authenticated under it ([`auth`]). `None` gossips
    /// in the clear, as chitchat does: for tests that show what the key prevents, never for a node.
    pub gossip_key: Option<Vec<u8>>,
}

/// One node as gossip sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Start time of the process that gossips for this node (tells a restart apart).
    pub generation: u64,
    pub ready: bool,
    pub draining: bool,
    pub free_disk: Option<u64>,
    pub version: Option<String>,
    pub http_url: Option<String>,
    pub operator_url: Option<String>,
    pub peer_address: Option<String>,
    /// The digest of the node list this node's topology file holds.
    pub topology: Option<String>,
    /// The node's public figures ([`keys::STATS`]), as it published them.
    pub stats: Option<String>,
}

impl Member {
    /// A node that may be given traffic and placement duties.
    pub fn is_serving(&self) -> bool {
        self.ready && !self.draining
    }
}

/// The live members, by name; a node absent from it is dead (or not yet seen).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub members: BTreeMap<String, Member>,
}

impl ClusterView {
    pub fn is_serving(&self, name: &str) -> bool {
        self.members.get(name).is_some_and(Member::is_serving)
    }
}

fn member_from_state(id: &ChitchatId, state: &NodeState) -> Member {
    let flag = |key: &str| state.get(key) == Some("true");
    Member {
        name: id.node_id.to_string(),
        generation: id.generation_id,
        ready: flag(keys::READY),
        draining: flag(keys::DRAINING),
        free_disk: state.get(keys::FREE_DISK).and_then(|value| value.parse().ok()),
        version: state.get(keys::VERSION).map(str::to_owned),
        http_url: state.get(keys::HTTP_URL).map(str::to_owned),
        operator_url: state.get(keys::OPERATOR_URL).map(str::to_owned),
        peer_address: state.get(keys::PEER_ADDRESS).map(str::to_owned),
        topology: state.get(keys::TOPOLOGY).map(str::to_owned),
        stats: state.get(keys::STATS).map(str::to_owned),
    }
}

/// Builds the view from chitchat's live set, keeping the newest generation of each name.
fn view_of(live: &BTreeMap<ChitchatId, NodeState>) -> ClusterView {
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in live {
        let member = member_from_state(id, state);
        match members.get(&member.name) {
            Some(known) if known.generation >= member.generation => {}
            _ => {
                members.insert(member.name.clone(), member);
            }
        }
    }
    ClusterView { members }
}

#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct MembershipError(String);

/// Publishes this node's state in gossip; a cheap clone, usable from any task.
#[derive(Clone)]
pub struct StateHandle {
    chitchat: std::sync::Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
}

impl StateHandle {
    async fn set(&self, key: &'static str, value: String) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    pub async fn set_ready(&self, ready: bool) {
        self.set(keys::READY, ready.to_string()).await;
    }

    pub async fn set_draining(&self, draining: bool) {
        self.set(keys::DRAINING, draining.to_string()).await;
    }

    pub async fn set_free_disk(&self, bytes: u64) {
        self.set(keys::FREE_DISK, bytes.to_string()).await;
    }

    /// Publishes the node's public figures ([`keys::STATS`]).
    pub async fn set_stats(&self, json: String) {
        self.set(keys::STATS, json).await;
    }
}

/// This node's gossip: a handle to publish its state, and the view of the others.
pub struct Membership {
    handle: ChitchatHandle,
    view_rx: watch::Receiver<ClusterView>,
    gossip_interval: Duration,
    watcher_stop: CancellationToken,
    rejections: Arc<auth::GossipRejections>,
}

impl Membership {
    /// Starts gossiping; the node is published as not ready until [`Membership::set_ready`].
    pub async fn join(config: MembershipConfig) -> Result<Membership, MembershipError> {
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: 8.0,
            initial_interval: config.gossip_interval * 2,
            max_interval: config.gossip_interval * 10,
            // A dead node's state is forgotten after a day; a restart gets a new generation anyway.
            dead_node_grace_period: Duration::from_secs(24 * 3600),
            ..FailureDetectorConfig::default()
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_name.clone(), generation, config.gossip_advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut initial = config.advertised.clone();
        initial.push((keys::READY.to_owned(), "false".to_owned()));
        initial.push((keys::DRAINING.to_owned(), "false".to_owned()));
        let rejections = Arc::new(auth::GossipRejections::default());
        let spawned = match &config.gossip_key {
            Some(key) => spawn_chitchat(chitchat_config, initial, &auth::AuthenticatedUdp::new(key, rejections.clone())).await,
            None => spawn_chitchat(chitchat_config, initial, &UdpTransport).await,
        };
        let handle = spawned.map_err(|error| MembershipError(format!("{error:#}")))?;
        let mut live_rx = handle.with_chitchat(|chitchat| chitchat.live_nodes_watcher()).await;
        let (view_tx, view_rx) = watch::channel(view_of(&live_rx.borrow_and_update()));
        let watcher_stop = CancellationToken::new();
        let stop = watcher_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = live_rx.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
                let view = view_of(&live_rx.borrow_and_update());
                view_tx.send_if_modified(|current| {
                    if *current == view {
                        return false;
                    }
                    *current = view;
                    true
                });
            }
        });
        info!(node = %config.node_name, gossip = %config.gossip_listen, seeds = config.seeds.len(), "gossip started");
        Ok(Membership { handle, view_rx, gossip_interval: config.gossip_interval, watcher_stop, rejections })
    }

    /// The live members, updated as gossip learns of joins, leaves and state changes.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.view_rx.clone()
    }

    /// A handle to publish this node's state from other tasks.
    pub fn state(&self) -> StateHandle {
        StateHandle { chitchat: self.handle.chitchat() }
    }

    pub async fn set_ready(&self, ready: bool) {
        self.state().set_ready(ready).await;
    }

    pub async fn set_draining(&self, draining: bool) {
        self.state().set_draining(draining).await;
    }

    pub fn gossip_interval(&self) -> Duration {
        self.gossip_interval
    }

    /// The datagrams dropped as forged, stale or replayed since start.
    pub fn rejections(&self) -> Arc<auth::GossipRejections> {
        self.rejections.clone()
    }

    /// Leaves gracefully: not ready first, for two gossip rounds so peers hear it, then stops.
    pub async fn leave(self) {
        self.set_ready(false).await;
        tokio::time::sleep(self.gossip_interval * 2).await;
        self.watcher_stop.cancel();
        if let Err(error) = self.handle.shutdown().await {
            warn!(error = %format!("{error:#}"), "gossip did not stop cleanly");
        }
    }
}

#[cfg(test)]
mod tests;
