//! openraft's storage conformance suite against the redb log store and the catalog state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::*;
use crate::catalog::LocalCatalog;

/// Builds a fresh store in its own temporary directory each time, as the suite requires.
struct RedbStoreBuilder;

impl StoreBuilder<CatalogTypes, RedbLogStore, CatalogStateMachine, tempfile::TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, RedbLogStore, CatalogStateMachine), StorageError<CatalogTypes>> {
        let directory = tempfile::tempdir().expect("temp dir");
        let log = RedbLogStore::open(&directory.path().join("raft-log.redb")).expect("log store");
        let catalog = LocalCatalog::open(&directory.path().join("catalog.redb")).expect("catalog");
        let state_machine = CatalogStateMachine::new(catalog, &directory.path().join(SNAPSHOT_DIR)).expect("snapshot dir");
        Ok((directory, log, state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_passes_openraft_conformance_suite() {
    Suite::test_all(RedbStoreBuilder).await.unwrap();
}

mod cluster {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::catalog::raft::{CatalogMember, MembershipStep, RaftCatalog};
    use crate::catalog::{Catalog, LocalCatalog, RefRecord};
    use crate::peer::certs::generate_cluster_certs;
    use crate::peer::protocol::FillRequest;
    use crate::peer::tls::PeerTls;
    use crate::peer::{LocalBlobs, PeerAddress, PeerEndpoint, PeerOpen, peer_alpn};
    use crate::types::{RepoKey, RepoType};

    struct NoBlobs;

    #[async_trait::async_trait]
    impl LocalBlobs for NoBlobs {
        async fn open_for_peer(&self, _request: &FillRequest) -> PeerOpen {
            PeerOpen::NotHere
        }
    }

    struct TestNode {
        catalog: RaftCatalog,
        stop: CancellationToken,
        _directory: tempfile::TempDir,
    }

    async fn leader_of(nodes: &[&TestNode]) -> u64 {
        for _ in 0..200 {
            for node in nodes {
                if let Some(leader) = node.catalog.raft().current_leader().await {
                    return leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader elected");
    }

    async fn wait_for_ref(node: &TestNode, repo: &RepoKey, revision: &str, commit: &str) {
        for _ in 0..200 {
            if node.catalog.get_ref(repo, revision).await.unwrap().is_some_and(|record| record.commit == commit) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ref {revision} never reached {commit}");
    }

    /// Certificates, endpoints and catalog members for nodes `names` (ids 1, 2, … in order).
    fn prepare(names: &[&str]) -> (tempfile::TempDir, Vec<PeerEndpoint>, Vec<CatalogMember>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = tempfile::tempdir().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        generate_cluster_certs(certs.path(), "test", &names).unwrap();
        let endpoints: Vec<PeerEndpoint> = names
            .iter()
            .map(|name| {
                PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &PeerTls::load(certs.path(), name, &peer_alpn()).unwrap()).unwrap()
            })
            .collect();
        let members = names
            .iter()
            .zip(&endpoints)
            .enumerate()
            .map(|(index, (name, endpoint))| CatalogMember {
                id: index as u64 + 1,
                name: name.clone(),
                peer: PeerAddress { name: name.clone(), address: endpoint.local_addr().unwrap() },
            })
            .collect();
        (certs, endpoints, members)
    }

    /// Starts the catalog of member `index` and serves its Raft RPCs on its endpoint.
    async fn start_node(members: &[CatalogMember], endpoint: &PeerEndpoint, index: usize, bootstrap: Option<&[CatalogMember]>) -> TestNode {
        let directory = tempfile::tempdir().unwrap();
        let local = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
        let catalog = RaftCatalog::start(directory.path(), local, members[index].id, members, bootstrap, endpoint.clone()).await.unwrap();
        let stop = CancellationToken::new();
        let serving = endpoint.clone();
        let handler = catalog.rpc_handler();
        let token = stop.clone();
        let names: Vec<String> = members.iter().map(|member| member.name.clone()).collect();
        tokio::spawn(async move {
            serving.serve(Arc::new(NoBlobs), [(crate::catalog::raft::RAFT_SERVICE.to_owned(), handler)].into(), names, token).await
        });
        TestNode { catalog, stop, _directory: directory }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_voters_replicate_writes_and_survive_losing_the_leader() {
        let (_certs, endpoints, members) = prepare(&["n1", "n2", "n3"]);
        let mut nodes = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            nodes.push(start_node(&members, endpoint, index, (index == 0).then_some(members.as_slice())).await);
        }
        let repo = RepoKey::new(RepoType::Model, "org/model");
        let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
        // A write through a follower is forwarded to the leader and reaches every node.
        let follower_index = (0..3).find(|index| *index as u64 + 1 != leader).unwrap();
        nodes[follower_index].catalog.put_ref(&repo, "main", RefRecord { commit: "a".repeat(40), checked_at_ms: 1 }).await.unwrap();
        for node in &nodes {
            wait_for_ref(node, &repo, "main", &"a".repeat(40)).await;
        }
        // Losing the leader: the other two elect a new one and acknowledged writes stay.
        let old_leader = nodes.remove(leader as usize - 1);
        old_leader.catalog.shutdown().await;
        old_leader.stop.cancel();
        let remaining: Vec<&TestNode> = nodes.iter().collect();
        let mut new_leader = leader;
        for _ in 0..200 {
            new_leader = leader_of(&remaining).await;
            if new_leader != leader {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_ne!(new_leader, leader, "a new leader is elected");
        nodes[0].catalog.put_ref(&repo, "main", RefRecord { commit: "b".repeat(40), checked_at_ms: 2 }).await.unwrap();
        for node in &nodes {
            wait_for_ref(node, &repo, "main", &"b".repeat(40)).await;
        }
        // A node speaks for itself only: a vote request naming node 3 as candidate, sent by a
        // connection whose certificate is node 1's, is refused before Raft sees it.
        let survivor = &nodes[0].catalog;
        let names: Vec<String> = ["n1", "n2", "n3"].map(str::to_owned).to_vec();
        let (honest, impostor) = (names[0].as_str(), crate::catalog::raft::network::RaftRpc::Vote(vote_request(3)));
        let handler = survivor.rpc_handler();
        let refused = handler.handle(honest, serde_json::to_vec(&impostor).unwrap()).await;
        assert!(refused.is_err_and(|reason| reason.contains("may not speak for")), "a vote as another node");
        let own = crate::catalog::raft::network::RaftRpc::Vote(vote_request(1));
        // In JSON (an earlier build) and in the binary encoding alike.
        let answered = handler.handle(honest, serde_json::to_vec(&own).unwrap()).await;
        assert!(answered.is_ok(), "a node's own vote request is handled: {answered:?}");
        let answered = handler.handle(honest, crate::catalog::raft::codec::encode(&own, true).unwrap()).await;
        assert!(answered.is_ok(), "a node's own vote request is handled: {answered:?}");
        for node in &nodes {
            node.catalog.shutdown().await;
            node.stop.cancel();
        }
    }

    /// Steps the leader's membership towards `desired` until it has nothing left to do; the steps
    /// it took, in order.
    async fn reconcile_until_settled(leader: &RaftCatalog, desired: &[CatalogMember], live: &[&str]) -> Vec<MembershipStep> {
        let mut steps = Vec::new();
        for _ in 0..200 {
            match leader.reconcile_membership(desired, |name| live.contains(&name)).await.unwrap() {
                Some(step) => steps.push(step),
                None => {
                    let status = leader.status();
                    let voters: Vec<u64> = desired.iter().map(|member| member.id).filter(|id| status.voters.contains(id)).collect();
                    // Settled: every desired node votes and nothing else is a member (or the
                    // remaining learners are not live, so they wait).
                    let rest_waiting =
                        desired.iter().all(|member| status.voters.contains(&member.id) || !live.contains(&member.name.as_str()));
                    if voters.len() == status.voters.len()
                        && rest_waiting
                        && status.learners.iter().all(|id| desired.iter().any(|m| m.id == *id))
                    {
                        return steps;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the membership never settled; steps so far {steps:?}");
    }

    /// Starts the first three of `members` as the first voters; returns them, the leader's id and
    /// the leader.
    async fn start_first_three_voters(members: &[CatalogMember], endpoints: &[PeerEndpoint]) -> (Vec<TestNode>, u64, RaftCatalog) {
        let mut nodes = Vec::new();
        for index in 0..3 {
            nodes.push(start_node(members, &endpoints[index], index, (index == 0).then_some(&members[..3])).await);
        }
        let leader_id = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
        let leader = nodes[leader_id as usize - 1].catalog.clone();
        (nodes, leader_id, leader)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_follows_the_topology_one_node_at_a_time() {
        let (_certs, endpoints, members) = prepare(&["n1", "n2", "n3", "n4"]);
        // n1..n3 are the first voters; n4 is in the topology from the start but not yet running.
        let (mut nodes, leader_id, leader) = start_first_three_voters(&members, &endpoints).await;
        let repo = RepoKey::new(RepoType::Model, "org/model");
        leader.put_ref(&repo, "main", RefRecord { commit: "a".repeat(40), checked_at_ms: 1 }).await.unwrap();

        // n4 not live: it joins as a learner and waits there.
        let steps = reconcile_until_settled(&leader, &members, &["n1", "n2", "n3"]).await;
        assert_eq!(steps, vec![MembershipStep::AddedLearner("n4".into())]);
        assert_eq!(leader.status().learners, vec![4]);
        // n4 starts (an empty log, no bootstrap), catches up and is promoted.
        nodes.push(start_node(&members, &endpoints[3], 3, None).await);
        let steps = reconcile_until_settled(&leader, &members, &["n1", "n2", "n3", "n4"]).await;
        assert_eq!(steps, vec![MembershipStep::Promoted("n4".into())]);
        assert_eq!(leader.status().voters, vec![1, 2, 3, 4]);
        wait_for_ref(&nodes[3], &repo, "main", &"a".repeat(40)).await;
        assert_eq!(nodes[3].catalog.status().voters, vec![1, 2, 3, 4], "the new node knows it votes");

        // A node leaves the topology (not the leader: a leader never removes itself).
        let leaving = (1..=4).find(|id| *id != leader_id).unwrap();
        let remaining: Vec<CatalogMember> = members
            .iter()
            .filter(|member| member.id != leaving)
            .map(|member| CatalogMember { id: member.id, name: member.name.clone(), peer: member.peer.clone() })
            .collect();
        let live: Vec<&str> = remaining.iter().map(|member| member.name.as_str()).collect();
        let steps = reconcile_until_settled(&leader, &remaining, &live).await;
        assert_eq!(steps, vec![MembershipStep::RemovedVoter(format!("n{leaving}"))]);
        let voters: Vec<u64> = (1..=4).filter(|id| *id != leaving).collect();
        assert_eq!(leader.status().voters, voters);
        assert!(leader.status().learners.is_empty(), "removed, not kept as a learner");
        // The catalog goes on with the three voters left.
        leader.put_ref(&repo, "main", RefRecord { commit: "b".repeat(40), checked_at_ms: 2 }).await.unwrap();
        for node in nodes.iter().filter(|node| node.catalog.self_id() != leaving) {
            wait_for_ref(node, &repo, "main", &"b".repeat(40)).await;
        }
        for node in &nodes {
            node.catalog.shutdown().await;
            node.stop.cancel();
        }
    }

    /// The catalog at a real size: a 200,000-file manifest (about 20 MiB, so it travels as write
    /// parts) and a thousand small writes reach every voter; the leader snapshots and purges its
    /// log; a node with an empty data directory joins and gets all of it through a snapshot sent
    /// in chunks from a file, and serves the same manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_manifest_and_a_snapshot_reach_a_node_that_starts_empty() {
        use crate::catalog::{EntryKind, Manifest, ManifestEntry};
        let (_certs, endpoints, members) = prepare(&["n1", "n2", "n3", "n4"]);
        let (mut nodes, leader_id, leader) = start_first_three_voters(&members, &endpoints).await;
        let big = RepoKey::new(RepoType::Dataset, "org/many-files");
        let entries: Vec<ManifestEntry> = (0..200_000)
            .map(|index| ManifestEntry {
                path: format!("data/part-{index:06}/shard.parquet"),
                kind: EntryKind::File,
                size: index,
                oid: format!("{index:040x}"),
                lfs: None,
            })
            .collect();
        let manifest = Manifest::new(entries);
        let commit = "c".repeat(40);
        // Written through a follower: the parts are forwarded to the leader one by one.
        let follower = nodes.iter().find(|node| node.catalog.self_id() != leader_id).unwrap().catalog.clone();
        follower.put_manifest(&big, &commit, manifest.clone()).await.unwrap();
        let writes: Vec<_> = (0..1000)
            .map(|index| {
                let leader = leader.clone();
                async move {
                    let repo = RepoKey::new(RepoType::Model, format!("org/model-{index}"));
                    leader.put_ref(&repo, "main", RefRecord { commit: format!("{index:040}"), checked_at_ms: 1 }).await
                }
            })
            .collect();
        for outcome in futures_util::future::join_all(writes).await {
            outcome.unwrap();
        }
        for node in &nodes {
            let mut held = None;
            for _ in 0..400 {
                held = node.catalog.get_manifest(&big, &commit).await.unwrap();
                if held.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(held.as_deref(), Some(&manifest), "node {} holds the whole manifest", node.catalog.self_id());
        }
        // The leader snapshots and forgets its log, so a new node can only catch up by snapshot.
        leader.raft().trigger().snapshot().await.unwrap();
        let mut snapshot_index = None;
        for _ in 0..400 {
            use openraft::async_runtime::watch::WatchReceiver;
            snapshot_index = leader.raft().metrics().borrow_watched().snapshot.map(|log_id| log_id.index);
            if snapshot_index.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let snapshot_index = snapshot_index.expect("the leader built a snapshot");
        leader.raft().trigger().purge_log(snapshot_index).await.unwrap();

        nodes.push(start_node(&members, &endpoints[3], 3, None).await);
        let steps = reconcile_until_settled(&leader, &members, &["n1", "n2", "n3", "n4"]).await;
        assert!(steps.contains(&MembershipStep::Promoted("n4".into())), "{steps:?}");
        let newcomer = &nodes[3];
        wait_for_ref(newcomer, &RepoKey::new(RepoType::Model, "org/model-999"), "main", &format!("{:040}", 999)).await;
        assert_eq!(newcomer.catalog.get_manifest(&big, &commit).await.unwrap().as_deref(), Some(&manifest));
        let snapshots = std::fs::read_dir(newcomer._directory.path().join(crate::catalog::raft::SNAPSHOT_DIR)).unwrap();
        let names: Vec<String> = snapshots.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.len() == 1 && names[0].ends_with(".snap"), "the installed snapshot is kept as the only file: {names:?}");
        for node in &nodes {
            node.catalog.shutdown().await;
            node.stop.cancel();
        }
    }

    /// A vote request with `candidate` in an old term (it will not win anything).
    fn vote_request(candidate: u64) -> openraft::raft::VoteRequest<crate::catalog::raft::CatalogTypes> {
        use openraft::vote::RaftVote;
        let vote = <openraft::type_config::alias::VoteOf<crate::catalog::raft::CatalogTypes> as RaftVote>::from_leader_id(
            openraft::vote::RaftLeaderId::new(0, candidate),
            false,
        );
        openraft::raft::VoteRequest::new(vote, None)
    }
}
