//! Keeps the Raft catalog's members equal to the topology's nodes: a node added to `topology.toml`
//! joins as a learner and becomes a voter once it has caught up; a node removed leaves the voters.
//!
//! Only the catalog leader acts, one single-node change at a time, and only while every live node
//! gossips the same topology digest: during a rollout some nodes still run the old file, and a
//! leader with either file must not undo what a leader with the other did.

use std::time::Duration;

use hfm_cluster::catalog::raft::{CatalogMember, RaftCatalog};
use hfm_cluster::membership::ClusterView;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Peers;
use crate::config::ClusterConfig;

/// How often the leader compares the catalog's membership with the topology.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A digest of the topology's node list (names, addresses, weights, in file order): what two nodes
/// must agree on before the catalog's membership follows it.
pub fn topology_digest(config: &ClusterConfig) -> String {
    let mut hasher = Sha256::new();
    for peer in &config.peers {
        hasher.update(format!("{}\t{}\t{}\t{}\n", peer.name, peer.peer_address, peer.gossip_address, peer.weight));
    }
    hex::encode(&hasher.finalize()[..12])
}

/// Whether every live node gossips `digest` as its topology (a node that gossips none runs a build
/// that cannot tell, and counts as disagreeing).
pub fn topology_agreed(view: &ClusterView, digest: &str) -> bool {
    view.members.values().all(|member| member.topology.as_deref() == Some(digest))
}

/// The membership keeper: runs until `shutdown`.
pub async fn run(raft: RaftCatalog, peers: Peers, members: Vec<CatalogMember>, digest: String, shutdown: CancellationToken) {
    {
        let mut waiting_reported = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let view = peers.view();
            if !topology_agreed(&view, &digest) {
                if !waiting_reported && raft.status().leader == Some(raft.self_id()) {
                    let differing: Vec<&str> = view
                        .members
                        .values()
                        .filter(|member| member.topology.as_deref() != Some(digest.as_str()))
                        .map(|member| member.name.as_str())
                        .collect();
                    debug!(?differing, "live nodes run another topology; catalog membership waits");
                    waiting_reported = true;
                }
                continue;
            }
            waiting_reported = false;
            let self_name = peers.self_name().to_owned();
            let live = |name: &str| name == self_name || view.members.get(name).is_some_and(|member| member.ready);
            if let Err(error) = raft.reconcile_membership(&members, live).await {
                warn!(%error, "could not change the catalog membership; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hfm_cluster::membership::{ClusterView, Member};

    use super::topology_agreed;

    fn member(name: &str, topology: Option<&str>) -> Member {
        Member { name: name.into(), generation: 1, ready: true, topology: topology.map(str::to_owned), ..Member::default() }
    }

    #[test]
    fn membership_waits_while_any_live_node_runs_another_topology() {
        let view =
            |members: Vec<Member>| ClusterView { members: members.into_iter().map(|m| (m.name.clone(), m)).collect::<BTreeMap<_, _>>() };
        assert!(topology_agreed(&view(vec![member("a", Some("x")), member("b", Some("x"))]), "x"));
        assert!(!topology_agreed(&view(vec![member("a", Some("x")), member("b", Some("y"))]), "x"), "a rollout in progress");
        assert!(!topology_agreed(&view(vec![member("a", Some("x")), member("b", None)]), "x"), "an older build");
    }
}
