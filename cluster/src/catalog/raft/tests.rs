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
        // Up to two minutes: a learner is promoted once it caught up, which for a big catalog is a
        // snapshot transfer.
        for _ in 0..2400 {
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

    /// This process' resident memory now and at its peak since the last [`reset_peak_rss`], in bytes.
    fn rss() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts measuring the peak anew (`/proc/self/clear_refs`, 5: reset the peak RSS).
    fn reset_peak_rss() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// The catalog at a real size, through the write path the node uses: 10,000 repositories of 100
    /// files each (a ref and a manifest apiece: a million files) and one 200,000-file manifest (about
    /// 20 MiB, so it travels as write parts, written through a follower) reach every voter; the
    /// leader snapshots and purges its log; a node whose data directory is empty joins and gets all
    /// of it through a snapshot streamed in chunks from a file, and serves the same records. The
    /// newcomer's join must not grow the process by anything like the catalog's size: the snapshot is
    /// never whole in memory. `HFM_CATALOG_REPOS` scales the repository count (default 10,000).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measures this process' memory, so it runs alone: scripts/test-all.sh runs it with --ignored"]
    async fn a_million_files_and_a_large_manifest_reach_a_node_that_starts_empty() {
        use crate::catalog::{EntryKind, Manifest, ManifestEntry};
        let repos: usize = std::env::var("HFM_CATALOG_REPOS").ok().and_then(|text| text.parse().ok()).unwrap_or(10_000);
        const FILES_PER_REPO: usize = 100;
        let (_certs, endpoints, members) = prepare(&["n1", "n2", "n3", "n4"]);
        let (mut nodes, leader_id, leader) = start_first_three_voters(&members, &endpoints).await;
        fn entry(path: String, index: usize) -> ManifestEntry {
            ManifestEntry { path, kind: EntryKind::File, size: index as u64, oid: format!("{index:040x}"), lfs: None }
        }
        fn small_repo(index: usize) -> RepoKey {
            RepoKey::new(RepoType::Model, format!("org/model-{index:05}"))
        }
        fn small_manifest(index: usize) -> Manifest {
            Manifest::new(
                (0..FILES_PER_REPO)
                    .map(|file| entry(format!("shards/part-{file:03}-of-{FILES_PER_REPO:03}.safetensors"), index * FILES_PER_REPO + file))
                    .collect(),
            )
        }
        let big = RepoKey::new(RepoType::Dataset, "org/many-files");
        let manifest = Manifest::new((0..200_000).map(|index| entry(format!("data/part-{index:06}/shard.parquet"), index)).collect());
        let commit = "c".repeat(40);
        let started = std::time::Instant::now();
        // Written through a follower: the parts are forwarded to the leader one by one.
        let follower = nodes.iter().find(|node| node.catalog.self_id() != leader_id).unwrap().catalog.clone();
        follower.put_manifest(&big, &commit, manifest.clone()).await.unwrap();
        // The repositories, 32 writers at a time (as many nodes' clients would).
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = (0..32)
            .map(|_| {
                let (leader, next) = (leader.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if index >= repos {
                            return;
                        }
                        let (repo, commit) = (small_repo(index), format!("{index:040x}"));
                        leader.put_manifest(&repo, &commit, small_manifest(index)).await.unwrap();
                        leader.put_ref(&repo, "main", RefRecord { commit, checked_at_ms: 1 }).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let written = started.elapsed();
        let files = repos * FILES_PER_REPO + 200_000;
        println!(
            "measure: {files} files in {} manifests and {repos} refs written in {:.1} s ({:.0} records/s)",
            repos + 1,
            written.as_secs_f64(),
            (2 * repos + 1) as f64 / written.as_secs_f64()
        );
        let last = small_repo(repos - 1);
        for node in &nodes {
            wait_for_ref(node, &last, "main", &format!("{:040x}", repos - 1)).await;
            assert_eq!(
                node.catalog.get_manifest(&big, &commit).await.unwrap().unwrap().to_whole().await.unwrap().as_ref(),
                &manifest,
                "node {} holds the whole manifest",
                node.catalog.self_id()
            );
        }
        // The leader snapshots and forgets its log, so a new node can only catch up by snapshot.
        leader.raft().trigger().snapshot().await.unwrap();
        let mut snapshot_index = None;
        for _ in 0..1200 {
            use openraft::async_runtime::watch::WatchReceiver;
            snapshot_index = leader.raft().metrics().borrow_watched().snapshot.map(|log_id| log_id.index);
            if snapshot_index.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let snapshot_index = snapshot_index.expect("the leader built a snapshot");
        leader.raft().trigger().purge_log(snapshot_index).await.unwrap();
        let snapshot_bytes: u64 = std::fs::read_dir(
            nodes
                .iter()
                .find(|node| node.catalog.self_id() == leader_id)
                .unwrap()
                ._directory
                .path()
                .join(crate::catalog::raft::SNAPSHOT_DIR),
        )
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0);

        // A node with an empty data directory joins.
        let (rss_before, _) = rss();
        reset_peak_rss();
        let joined = std::time::Instant::now();
        nodes.push(start_node(&members, &endpoints[3], 3, None).await);
        let steps = reconcile_until_settled(&leader, &members, &["n1", "n2", "n3", "n4"]).await;
        assert!(steps.contains(&MembershipStep::Promoted("n4".into())), "{steps:?}");
        let newcomer = &nodes[3];
        wait_for_ref(newcomer, &last, "main", &format!("{:040x}", repos - 1)).await;
        let caught_up = joined.elapsed();
        let (_, peak) = rss();
        let grew = peak.saturating_sub(rss_before);
        println!(
            "measure: a node with an empty data directory got {files} files ({} MiB snapshot) in {:.1} s ({:.0} records/s); the process grew by {} MiB at most (from {} MiB)",
            snapshot_bytes >> 20,
            caught_up.as_secs_f64(),
            (2 * repos + 1) as f64 / caught_up.as_secs_f64(),
            grew >> 20,
            rss_before >> 20
        );
        assert_eq!(newcomer.catalog.get_manifest(&big, &commit).await.unwrap().unwrap().to_whole().await.unwrap().as_ref(), &manifest);
        for index in [0, repos / 2, repos - 1] {
            assert_eq!(
                newcomer
                    .catalog
                    .get_manifest(&small_repo(index), &format!("{index:040x}"))
                    .await
                    .unwrap()
                    .unwrap()
                    .to_whole()
                    .await
                    .unwrap()
                    .as_ref(),
                &small_manifest(index)
            );
        }
        // Sending and installing the snapshot is streamed: the process (sender and receiver both)
        // grows by the newcomer's database caches, filled as the rows pass through them, a few
        // copies of one 4 MiB chunk in flight (read, framed, sent, received), and what the allocator
        // keeps of what the install's threads freed (glibc's per-thread arenas; 101-192 MiB in all
        // over runs with a 73 MiB snapshot). Held whole, the snapshot and its decoded rows (each
        // entry a few times its encoded size) would add three or more copies of it on top.
        let caches = (crate::catalog::reopening::CATALOG_CACHE_BYTES + crate::catalog::reopening::LOG_CACHE_BYTES) as u64;
        let chunks = 8 * crate::catalog::raft::network::SNAPSHOT_CHUNK as u64;
        let bound = caches + chunks + 2 * snapshot_bytes;
        assert!(rss_before > 0, "no VmRSS in /proc/self/status");
        assert!(
            grew < bound,
            "joining grew the process by {grew} bytes; the bound is {bound} (caches {caches}, chunks {chunks}, twice the {snapshot_bytes}-byte snapshot)"
        );
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
