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
        Ok((directory, log, CatalogStateMachine::new(catalog)))
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

    use crate::catalog::raft::{CatalogMember, RaftCatalog};
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_voters_replicate_writes_and_survive_losing_the_leader() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        generate_cluster_certs(certs.path(), "test", &names).unwrap();
        let endpoints: Vec<PeerEndpoint> = names
            .iter()
            .map(|name| {
                PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &PeerTls::load(certs.path(), name, &peer_alpn()).unwrap()).unwrap()
            })
            .collect();
        let members: Vec<CatalogMember> = names
            .iter()
            .zip(&endpoints)
            .enumerate()
            .map(|(index, (name, endpoint))| CatalogMember {
                id: index as u64 + 1,
                name: name.clone(),
                peer: PeerAddress { name: name.clone(), address: endpoint.local_addr().unwrap() },
            })
            .collect();
        let mut nodes = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let directory = tempfile::tempdir().unwrap();
            let local = LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap();
            let catalog = RaftCatalog::start(directory.path(), local, index as u64 + 1, &members, endpoint.clone()).await.unwrap();
            let stop = CancellationToken::new();
            let serving = endpoint.clone();
            let handler = catalog.rpc_handler();
            let token = stop.clone();
            let names: Vec<String> = members.iter().map(|member| member.name.clone()).collect();
            tokio::spawn(async move {
                serving.serve(Arc::new(NoBlobs), [(crate::catalog::raft::RAFT_SERVICE.to_owned(), handler)].into(), names, token).await
            });
            nodes.push(TestNode { catalog, stop, _directory: directory });
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
        let answered = handler.handle(honest, serde_json::to_vec(&own).unwrap()).await;
        assert!(answered.is_ok(), "a node's own vote request is handled: {answered:?}");
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
