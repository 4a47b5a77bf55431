//! The cluster's failure scenarios, on real processes (see the harness crate doc). Each test starts its
//! own four-node cluster and fake Hub; they run one at a time (a cluster is four processes on a
//! two-core machine). Assertions are on counts, bytes and hashes; the durations printed as
//! `measure:` lines feed docs/benchmarks.md and are never asserted.

use std::time::{Duration, Instant};

use anyhow::Context;

use hfm_cluster_tests::{Cluster, ClusterOptions, HubFile, sha256_hex, wait_until};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const LFS_PATH: &str = "model.safetensors";

fn resolve_path(repo: &str, revision: &str, file: &str) -> String {
    match repo.strip_prefix("datasets/") {
        Some(dataset) => format!("/datasets/{dataset}/resolve/{revision}/{file}"),
        None => format!("/{repo}/resolve/{revision}/{file}"),
    }
}

/// Fetches a file through a node and checks its bytes against the Hub's etag.
async fn fetch_and_check(cluster: &Cluster, node: usize, repo: &str, file: &HubFile) -> anyhow::Result<()> {
    let answer = cluster.get(node, &resolve_path(repo, "main", &file.path)).await?;
    anyhow::ensure!(answer.status == 200, "{} answered {} for {repo}/{}", cluster.nodes[node].name, answer.status, file.path);
    anyhow::ensure!(answer.body.len() as u64 == file.size, "{}: {} bytes, expected {}", file.path, answer.body.len(), file.size);
    if file.etag.len() == 64 {
        anyhow::ensure!(sha256_hex(&answer.body) == file.etag, "{}: wrong bytes from {}", file.path, cluster.nodes[node].name);
    }
    Ok(())
}

/// Waits until `node`'s catalog applied at least as much of the log as `reference`'s had when the
/// wait began (under load the log keeps growing, so "as much as now" could be a moving target).
async fn wait_caught_up(cluster: &Cluster, node: usize, reference: usize) -> anyhow::Result<()> {
    let target = std::sync::Mutex::new(None);
    wait_until("the node's catalog caught up", Duration::from_secs(60), || async {
        let known = *target.lock().expect("target poisoned");
        let Some(theirs) = known.or(cluster.raft_progress(reference).await.map(|(_, applied)| applied)) else { return false };
        *target.lock().expect("target poisoned") = Some(theirs);
        cluster.raft_progress(node).await.is_some_and(|(_, mine)| mine >= theirs)
    })
    .await
}

/// Waits until every one of `nodes` holds the blob on disk.
async fn wait_held(cluster: &Cluster, nodes: &[usize], etag: &str) -> anyhow::Result<()> {
    wait_until("the nodes hold the blob", Duration::from_secs(60), || async { nodes.iter().all(|node| cluster.holds(*node, etag)) }).await
}

/// A HEAD through a node that must answer 200.
async fn head(cluster: &Cluster, node: usize, path: &str) -> anyhow::Result<()> {
    let answer = cluster.request(node, reqwest::Method::HEAD, path).await?;
    anyhow::ensure!(answer.status == 200, "{} answered {} for {path}", cluster.nodes[node].name, answer.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_four_nodes_times_eight_clients_on_one_cold_blob_fetch_it_once() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    // About three seconds per copy, so the 32 downloads overlap.
    cluster.hub.throttle(1 << 20).await?;
    cluster.hub.reset().await?;
    let path = resolve_path("org/model", "main", LFS_PATH);
    let downloads = (0..32).map(|client| {
        let (cluster, path) = (&cluster, &path);
        async move { cluster.get(client % 4, path).await }
    });
    let answers = futures_util::future::join_all(downloads).await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(answer.status, 200);
        assert_eq!(sha256_hex(&answer.body), blob.etag, "every node serves identical, correct bytes");
    }
    assert_eq!(cluster.hub.cdn_gets(&blob.etag).await?, 1, "one upstream fetch for 32 clients on 4 nodes");
    println!("measure: upstream bytes per blob for 4x8 cold clients = {} ({} byte blob)", blob.size, blob.size);
    cluster.hub.throttle(0).await?;
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_a_blob_fetched_through_each_node_in_turn_crosses_upstream_once_and_replicas_catch_up() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let preference = cluster.preference(&blob.etag);
    cluster.hub.reset().await?;
    // Start at the node placement ranks last: it is not a replica, so the copies on the first two
    // nodes come from the fill leader and from replication.
    let first = *preference.last().expect("four nodes");
    fetch_and_check(&cluster, first, "org/model", &blob).await?;
    let targets = [preference[0], preference[1]];
    wait_held(&cluster, &targets, &blob.etag).await?;
    for node in 0..4 {
        fetch_and_check(&cluster, node, "org/model", &blob).await?;
    }
    assert_eq!(cluster.hub.cdn_gets(&blob.etag).await?, 1, "the other nodes filled from peers");
    // The second replica got its copy by replication (no client asked it before it held the blob).
    let status = cluster.status(targets[1]).await?;
    assert!(status["replicas"]["copies_completed"].as_u64().unwrap_or(0) >= 1, "{status}");
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_a_replica_holder_killed_mid_transfer_does_not_fail_the_download_and_catches_up_after() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(ClusterOptions { big_size: 24 << 20, ..ClusterOptions::default() }).await?;
    let blob = cluster.hub.file("bench/big", "main", "big.bin").await?;
    let preference = cluster.preference(&blob.etag);
    let (leader, client_node) = (preference[0], preference[3]);
    cluster.hub.throttle(4 << 20).await?;
    cluster.hub.reset().await?;
    let url = format!("{}{}", cluster.nodes[client_node].url, resolve_path("bench/big", "main", "big.bin"));
    let response = cluster.client.get(&url).send().await?;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    let mut killed = false;
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk?);
        if !killed && received.len() >= 4 << 20 {
            // The fill leader, which streams to the client's node as it fetches, dies mid-transfer.
            cluster.kill(leader);
            killed = true;
        }
    }
    assert!(killed, "the download ended before the leader could be killed");
    assert_eq!(received.len() as u64, blob.size);
    assert_eq!(sha256_hex(&received), blob.etag, "the download completed from another source");
    cluster.hub.throttle(0).await?;
    // The leader comes back and catches up without help: the catalog by Raft, the blob by its
    // replica reconciliation.
    cluster.restart(leader).await?;
    cluster.wait_live_everywhere().await?;
    wait_until("the restarted leader holds the blob again", Duration::from_secs(90), || async { cluster.holds(leader, &blob.etag) })
        .await?;
    let other = preference[1];
    wait_caught_up(&cluster, leader, other).await?;
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2b_an_evicted_copy_leaves_the_replica_set_and_is_not_copied_back_over_what_clients_use() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Room for the 3 MiB model file or the 4 MiB big file, not both.
    let cluster = Cluster::start(ClusterOptions { big_size: 4 << 20, max_disk: Some("5MiB"), ..ClusterOptions::default() }).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let big = cluster.hub.file("bench/big", "main", "big.bin").await?;
    let preference = cluster.preference(&blob.etag);
    let (first, second) = (preference[0], preference[1]);
    fetch_and_check(&cluster, first, "org/model", &blob).await?;
    wait_held(&cluster, &[first, second], &blob.etag).await?;
    let names = |indexes: &[usize]| {
        let mut names: Vec<String> = indexes.iter().map(|index| cluster.nodes[*index].name.clone()).collect();
        names.sort();
        names
    };
    let observer = preference[3];
    wait_until("the record names both holders", Duration::from_secs(30), || async {
        cluster.replica_holders(observer, &blob.etag).await.unwrap_or_default() == names(&[first, second])
    })
    .await?;
    // A client of the first node needs the big file: the model file is evicted there.
    fetch_and_check(&cluster, first, "bench/big", &big).await?;
    assert!(!cluster.holds(first, &blob.etag), "the least recently used blob was evicted");
    wait_until("the evicted copy leaves the record", Duration::from_secs(30), || async {
        cluster.replica_holders(observer, &blob.etag).await.unwrap_or_default() == names(&[second])
    })
    .await?;
    // Two reconciliation rounds later the first node still holds what its client used: replication
    // does not evict to put the model file back.
    let rounds = cluster.status(first).await?["replicas"]["reconciliations"].as_u64().unwrap_or(0);
    wait_until("two more reconciliation rounds", Duration::from_secs(30), || async {
        cluster.status(first).await.ok().and_then(|status| status["replicas"]["reconciliations"].as_u64()).unwrap_or(0) >= rounds + 2
    })
    .await?;
    assert!(cluster.holds(first, &big.etag) && !cluster.holds(first, &blob.etag));
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3b_a_footer_of_a_cold_huge_blob_is_fetched_by_itself_and_the_whole_file_is_filled_when_asked() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions { big_size: 48 << 20, ..ClusterOptions::default() }).await?;
    let blob = cluster.hub.file("bench/big", "main", "big.bin").await?;
    let node = cluster.preference(&blob.etag)[3];
    // The whole file takes ~24 s at this rate: the footer must not wait for it.
    cluster.hub.throttle(2 << 20).await?;
    cluster.hub.reset().await?;
    let (start, end) = (blob.size - 100_000, blob.size - 1);
    let url = format!("{}{}", cluster.nodes[node].url, resolve_path("bench/big", "main", "big.bin"));
    let ranged = |url: String| {
        let client = cluster.client.clone();
        async move {
            let response = client.get(url).header("range", format!("bytes={start}-{end}")).send().await?;
            anyhow::ensure!(response.status() == 206, "answered {}", response.status());
            Ok::<_, anyhow::Error>(response.bytes().await?.to_vec())
        }
    };
    let footer = ranged(url.clone()).await?;
    assert_eq!(footer.len() as u64, end - start + 1);
    // A small range of a large cold file is one ranged request upstream and nothing else: one
    // byte asked for must not commit the node to fetching and storing the whole file.
    let ranges = cluster.hub.cdn_ranges(&blob.etag).await?;
    assert!(
        matches!(ranges.as_slice(), [Some(range)] if range.starts_with(&format!("bytes={start}-"))),
        "only the range was fetched: {ranges:?}"
    );
    assert!((0..4).all(|index| !cluster.holds(index, &blob.etag)), "a footer does not store the blob");
    // The whole file, asked for, is filled once; the same range from disk is identical.
    cluster.hub.throttle(0).await?;
    let whole = cluster.client.get(url.clone()).send().await?;
    anyhow::ensure!(whole.status() == 200, "the whole file answered {}", whole.status());
    assert_eq!(whole.bytes().await?.len() as u64, blob.size);
    wait_held(&cluster, &[node], &blob.etag).await?;
    assert_eq!(ranged(url).await?, footer, "the range answered ahead of the fill has the blob's bytes");
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_killing_the_raft_leader_elects_another_and_no_acknowledged_write_is_lost() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader_name = cluster.raft_leader_seen_by(0).await.expect("a catalog leader");
    let leader = cluster.index(&leader_name);
    let survivors: Vec<usize> = (0..4).filter(|node| *node != leader).collect();
    // Commits, not branches: a branch is re-checked upstream after the ref TTL, which would hide
    // whether the rest came from the catalog.
    let model_commit = cluster.hub.commit("org/model", "main").await?;
    let dataset_commit = cluster.hub.commit("datasets/org/dataset", "main").await?;
    let model_file = resolve_path("org/model", &model_commit, "config.json");
    let dataset_files = cluster.hub.files("datasets/org/dataset", "main").await?;
    let dataset_file = resolve_path("datasets/org/dataset", &dataset_commit, &dataset_files[0].path);
    // An acknowledged write: metadata recorded through one node and known to every node.
    head(&cluster, survivors[0], &model_file).await?;
    cluster.hub.reset().await?;
    for node in 0..4 {
        head(&cluster, node, &model_file).await?;
    }
    assert!(cluster.hub.api_requests().await?.is_empty(), "the write was not acknowledged everywhere");

    let killed_at = Instant::now();
    cluster.kill(leader);
    wait_until("a new catalog leader among the survivors", Duration::from_secs(60), || async {
        match cluster.raft_leader_seen_by(survivors[0]).await {
            Some(name) => name != leader_name,
            None => false,
        }
    })
    .await?;
    println!("measure: new catalog leader {} ms after kill -9 of the leader", killed_at.elapsed().as_millis());
    // Writes go on: metadata recorded through one survivor is known to the others.
    head(&cluster, survivors[1], &dataset_file).await?;
    cluster.hub.reset().await?;
    for &node in &survivors {
        head(&cluster, node, &model_file).await?;
        head(&cluster, node, &dataset_file).await?;
    }
    let api = cluster.hub.api_requests().await?;
    assert!(api.is_empty(), "every survivor knew both writes from the catalog: {api:?}");

    // The old leader restarts and has every acknowledged write, including those made without it.
    cluster.restart(leader).await?;
    cluster.wait_live_everywhere().await?;
    let reference = survivors[0];
    wait_caught_up(&cluster, leader, reference).await?;
    cluster.hub.reset().await?;
    head(&cluster, leader, &model_file).await?;
    head(&cluster, leader, &dataset_file).await?;
    let api = cluster.hub.api_requests().await?;
    assert!(api.is_empty(), "the restarted node knew every write: {api:?}");
    Ok(())
}

/// Waits until every node applied the same catalog log and agrees on the leader.
async fn wait_catalogs_converged(cluster: &Cluster) -> anyhow::Result<()> {
    wait_until("the catalogs converged", Duration::from_secs(90), || async {
        let mut applied = Vec::new();
        let mut leaders = Vec::new();
        for node in 0..4 {
            let Some((_, last)) = cluster.raft_progress(node).await else { return false };
            applied.push(last);
            leaders.push(cluster.raft_leader_seen_by(node).await);
        }
        applied.windows(2).all(|pair| pair[0] == pair[1]) && leaders[0].is_some() && leaders.windows(2).all(|pair| pair[0] == pair[1])
    })
    .await
}

/// Built by root (as CI runs it) this runs, and fails saying why if the harness cannot make network
/// namespaces; built by anyone else it is reported as ignored with the reason (see build.rs), and
/// `--ignored` runs it, failing the same way. It never passes without having cut a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(hfm_root), ignore = "needs root: partitions are cut between network namespaces, which only root can make")]
async fn scenario_5_partitions_keep_every_side_serving_and_heal_into_one_catalog() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let options = ClusterOptions { needs_namespaces: Some("scenario 5 (partitions)"), ..ClusterOptions::default() };
    let cluster = Cluster::start(options).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let preference = cluster.preference(&blob.etag);
    fetch_and_check(&cluster, preference[0], "org/model", &blob).await?;
    wait_held(&cluster, &[preference[0], preference[1]], &blob.etag).await?;
    let mut cold: Vec<(String, HubFile)> = Vec::new();
    for repo in ["gpt2", "org/tiny-tokenizer", "datasets/org/dataset", "org/model"] {
        for file in cluster.hub.files(repo, "main").await? {
            if file.path != LFS_PATH {
                cold.push((repo.to_owned(), file));
            }
        }
    }
    let mut next_cold = cold.into_iter();

    // 1 | 3: a replica holder alone on its side; nobody else is reachable to it.
    let alone = preference[1];
    let rest: Vec<usize> = (0..4).filter(|node| *node != alone).collect();
    cluster.net.partition(&[&[alone], &rest])?;
    let cut_at = Instant::now();
    wait_until("the isolated node is dead to the others", Duration::from_secs(60), || async {
        !cluster.live_seen_by(rest[0]).await.unwrap_or_default().contains(&cluster.nodes[alone].name)
    })
    .await?;
    println!("measure: a cut-off node left the others' live set after {} ms", cut_at.elapsed().as_millis());
    fetch_and_check(&cluster, alone, "org/model", &blob).await?;
    let (repo, file) = next_cold.next().expect("cold files");
    fetch_and_check(&cluster, alone, &repo, &file).await?;
    let (majority_repo, majority_file) = next_cold.next().expect("cold files");
    for &node in &rest {
        fetch_and_check(&cluster, node, "org/model", &blob).await?;
        fetch_and_check(&cluster, node, &majority_repo, &majority_file).await?;
    }
    cluster.net.heal_all()?;
    cluster.wait_live_everywhere().await?;
    wait_catalogs_converged(&cluster).await?;
    // What the majority recorded during the partition reached the healed node.
    cluster.hub.reset().await?;
    let answer = cluster.request(alone, reqwest::Method::HEAD, &resolve_path(&majority_repo, "main", &majority_file.path)).await?;
    assert_eq!(answer.status, 200);
    let api = cluster.hub.api_requests().await?;
    assert!(!api.iter().any(|request| request.contains("/tree/") || request.contains("paths-info")), "healed node asked upstream: {api:?}");
    cluster.verify_disks()?;

    // 2 | 2: no side has a quorum (four voters need three); both keep serving.
    let (left, right) = ([preference[0], preference[2]], [preference[1], preference[3]]);
    cluster.net.partition(&[&left, &right])?;
    wait_until("the halves see each other dead", Duration::from_secs(60), || async {
        let seen = cluster.live_seen_by(left[0]).await.unwrap_or_default();
        !seen.contains(&cluster.nodes[right[0]].name) && !seen.contains(&cluster.nodes[right[1]].name)
    })
    .await?;
    for side in [left, right] {
        for node in side {
            fetch_and_check(&cluster, node, "org/model", &blob).await?;
            let (repo, file) = next_cold.next().expect("cold files");
            fetch_and_check(&cluster, node, &repo, &file).await?;
        }
    }
    cluster.net.heal_all()?;
    cluster.wait_live_everywhere().await?;
    wait_catalogs_converged(&cluster).await?;
    let checked = cluster.verify_disks()?;
    assert!(checked > 0);
    Ok(())
}

/// Needs no namespaces (a signal, not a cut link), so it runs wherever the harness does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5b_a_paused_node_is_declared_dead_and_catches_up_when_continued() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let preference = cluster.preference(&blob.etag);
    fetch_and_check(&cluster, preference[0], "org/model", &blob).await?;
    let (cold_repo, cold) = ("org/tiny-tokenizer", cluster.hub.files("org/tiny-tokenizer", "main").await?.remove(0));

    // SIGSTOP: the process keeps every socket open and answers nothing, like a node in a long pause.
    let paused = preference[3];
    cluster.pause(paused)?;
    let paused_at = Instant::now();
    wait_until("the paused node is dead to the others", Duration::from_secs(60), || async {
        !cluster.live_seen_by(preference[0]).await.unwrap_or_default().contains(&cluster.nodes[paused].name)
    })
    .await?;
    println!("measure: a paused node left the live set after {} ms", paused_at.elapsed().as_millis());
    // The others go on serving and recording without it.
    fetch_and_check(&cluster, preference[0], cold_repo, &cold).await?;
    fetch_and_check(&cluster, preference[1], "org/model", &blob).await?;

    cluster.resume(paused)?;
    cluster.wait_live_everywhere().await?;
    wait_catalogs_converged(&cluster).await?;
    // What was recorded while it was stopped reached it through the catalog, not from upstream.
    cluster.hub.reset().await?;
    let answer = cluster.request(paused, reqwest::Method::HEAD, &resolve_path(cold_repo, "main", &cold.path)).await?;
    assert_eq!(answer.status, 200);
    let api = cluster.hub.api_requests().await?;
    assert!(
        !api.iter().any(|request| request.contains("/tree/") || request.contains("paths-info")),
        "resumed node asked upstream: {api:?}"
    );
    fetch_and_check(&cluster, paused, "org/model", &blob).await?;
    let checked = cluster.verify_disks()?;
    assert!(checked > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_a_corrupted_blob_on_one_node_is_detected_and_refilled_from_a_replica() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let blob = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let preference = cluster.preference(&blob.etag);
    fetch_and_check(&cluster, preference[0], "org/model", &blob).await?;
    wait_held(&cluster, &[preference[0], preference[1]], &blob.etag).await?;
    let damaged = preference[1];
    let path = cluster.blob_path(damaged, &blob.etag);
    let mut bytes = std::fs::read(&path)?;
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    cluster.hub.reset().await?;
    // The damaged copy is never served as a clean response.
    // The damaged copy is never served as a clean, complete response; a cut response (an error
    // here) is what the client must see.
    if let Ok(answer) = cluster.get(damaged, &resolve_path("org/model", "main", LFS_PATH)).await {
        let complete = answer.status == 200 && answer.body.len() as u64 == blob.size;
        assert!(!complete || sha256_hex(&answer.body) == blob.etag, "corrupt bytes served as a clean response");
    }
    wait_until("the damaged node serves the right bytes again", Duration::from_secs(60), || async {
        fetch_and_check(&cluster, damaged, "org/model", &blob).await.is_ok()
    })
    .await?;
    assert_eq!(cluster.hub.cdn_gets(&blob.etag).await?, 0, "refilled from a replica, not upstream");
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_dns_answers_follow_membership_kill_restart_and_drain() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let ip = |index: usize| cluster.net.node_ip(index).to_string();
    let all: Vec<String> = {
        let mut all: Vec<String> = (0..4).map(ip).collect();
        all.sort();
        all
    };
    for node in 0..4 {
        assert_eq!(cluster.dns_answers(node, "www.hf-mirror.eu").await?, all, "every node answers every ready node");
    }
    // An rsync user resolves the rsync name through a node's DNS and reaches that node's daemon.
    let rsync_address = cluster.dns_answers(0, "rsync.hf-mirror.eu").await?;
    assert_eq!(rsync_address.len(), 1, "{rsync_address:?}");
    let listing = tokio::process::Command::new("rsync").arg(format!("rsync://{}:8873/", rsync_address[0])).output().await?;
    let modules = String::from_utf8_lossy(&listing.stdout);
    assert!(["models", "datasets", "indexes"].iter().all(|module| modules.contains(module)), "{modules}");
    let victim = 3;
    let others = [0, 1, 2];
    let victim_ip = ip(victim);
    cluster.kill(victim);
    let killed_at = Instant::now();
    wait_until("no node answers the dead node", Duration::from_secs(20), || async {
        let mut gone = true;
        for node in others {
            gone &= cluster
                .dns_answers(node, "www.hf-mirror.eu")
                .await
                .is_ok_and(|answers| !answers.contains(&victim_ip) && answers.len() == 3);
        }
        gone
    })
    .await?;
    println!("measure: a killed node left every DNS answer after {} ms", killed_at.elapsed().as_millis());
    // Its own name stays: operators and the rollout need it.
    assert_eq!(cluster.dns_answers(0, &format!("{}.hf-mirror.eu", cluster.nodes[victim].name)).await?, [victim_ip.clone()]);

    cluster.restart(victim).await?;
    wait_until("the restarted node is answered again", Duration::from_secs(30), || async {
        let mut back = true;
        for node in 0..4 {
            back &= cluster.dns_answers(node, "www.hf-mirror.eu").await.is_ok_and(|answers| answers == all);
        }
        back
    })
    .await?;

    // Draining takes the node out of the answers while it still runs and serves.
    cluster.drain(victim).await?;
    wait_until("the drained node leaves the answers", Duration::from_secs(20), || async {
        let mut gone = true;
        for node in 0..4 {
            gone &= cluster.dns_answers(node, "www.hf-mirror.eu").await.is_ok_and(|answers| !answers.contains(&victim_ip));
        }
        gone
    })
    .await?;
    assert!(cluster.nodes[victim].is_running());
    assert_eq!(cluster.get(victim, "/healthz").await?.status, 200, "a drained node still answers while it drains");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_9_a_repo_pinned_through_one_node_is_filled_onto_every_node() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let files = cluster.hub.files("org/model", "main").await?;
    let url = cluster.nodes[0].operator_url.clone();
    cluster.hub.reset().await?;
    // `hf-mirror mirror` returns once every live node holds every file.
    let output = cluster.run_operator_command(0, &["mirror", "--repo", "org/model", "--url", &url]).await?;
    assert!(output.contains("is on every live node"), "{output}");
    for node in 0..4 {
        for file in &files {
            assert!(cluster.holds(node, &file.etag), "{} lacks {}", cluster.nodes[node].name, file.path);
        }
    }
    for file in files.iter().filter(|file| file.etag.len() == 64) {
        assert_eq!(cluster.hub.cdn_gets(&file.etag).await?, 1, "{}: one upstream fetch for four copies", file.path);
    }
    let listing = cluster.run_operator_command(1, &["pins", "--url", &cluster.nodes[1].operator_url]).await?;
    assert!(listing.contains("model org/model@main") && listing.matches("complete").count() == 4, "{listing}");

    // Every node's rsync `models` module shows the repo once it is complete there, with upstream's
    // bytes; the times are the same on every node, so pulling from another node transfers nothing.
    let commit = cluster.hub.commit("org/model", "main").await?;
    let work = tempfile::tempdir()?;
    for node in 0..4 {
        let module = format!("rsync://{}:8873/models/org/model/", cluster.net.node_ip(node));
        wait_until("the pinned repo's tree on every node", Duration::from_secs(30), || async {
            rsync_pull(&[&format!("{module}.hf-mirror-trace"), &work.path().join("trace").display().to_string()])
                .await
                .is_ok_and(|_| std::fs::read_to_string(work.path().join("trace")).is_ok_and(|trace| trace.contains(&commit)))
        })
        .await?;
        let pulled = work.path().join(format!("node{node}"));
        rsync_pull(&["-a", &module, &pulled.display().to_string()]).await?;
        for file in &files {
            let bytes = std::fs::read(pulled.join(&file.path))?;
            assert_eq!(bytes, cluster.hub.content("org/model", &commit, &file.path).await?, "{} from node {node}", file.path);
        }
        let again = rsync_pull(&["-a", "--stats", &module, &pulled.display().to_string()]).await?;
        assert!(again.contains("Number of regular files transferred: 0"), "a second pull from node {node}: {again}");
        // Only the trace (it names the node and when it switched) differs from what node 0 gave.
        let across = rsync_pull(&["-a", "--itemize-changes", &module, &work.path().join("node0").display().to_string()]).await?;
        let sent: Vec<&str> = across.lines().filter(|line| line.starts_with(">f")).collect();
        assert!(sent.iter().all(|line| line.ends_with(" .hf-mirror-trace")), "node {node} after node 0: {across}");
    }
    // End to end: a resolver in Poznan asks any node for the rsync name and gets the nearest node,
    // Warsaw; the pull from the address it returned has the repo.
    let answered = cluster.dns_answers_for(0, "rsync.hf-mirror.eu", Some("150.254.7.0/24")).await?;
    assert_eq!(answered, [cluster.net.node_ip(2).to_string()], "Poznan is nearest to waw1");
    let via_dns = work.path().join("via-dns");
    rsync_pull(&["-a", &format!("rsync://{}:8873/models/org/model/", answered[0]), &via_dns.display().to_string()]).await?;
    assert_eq!(std::fs::read(via_dns.join("config.json"))?, cluster.hub.content("org/model", &commit, "config.json").await?);

    // The pinned branch moves upstream: its new commit is filled everywhere, then the pin switches.
    let new_commit = cluster.hub.move_branch("org/model", "main").await?;
    wait_until("the pin switched to the branch's new commit", Duration::from_secs(120), || async {
        cluster
            .run_operator_command(1, &["pins", "--url", &cluster.nodes[1].operator_url])
            .await
            .is_ok_and(|listing| listing.contains(&new_commit))
    })
    .await?;
    for file in cluster.hub.files("org/model", &new_commit).await? {
        for node in 0..4 {
            assert!(cluster.holds(node, &file.etag), "{} lacks {} of the new commit", cluster.nodes[node].name, file.path);
        }
    }
    // Pinning without the operator token is refused, whoever asks; the public port has no such route.
    let refused = cluster.client.post(format!("{url}/_hfm/pins?repo=org/model")).send().await?;
    assert_eq!(refused.status(), 401);
    let public = cluster.client.post(format!("{}/_hfm/pins?repo=org/model", cluster.nodes[0].url)).send().await?;
    assert_eq!(public.status(), 404);
    cluster.run_operator_command(0, &["mirror", "--repo", "org/model", "--unpin", "--url", &url]).await?;
    assert!(cluster.run_operator_command(0, &["pins", "--url", &url]).await?.contains("no pins"));
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_9b_pins_declared_in_the_topology_are_made_and_filled_without_a_command() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(ClusterOptions { pins: &[("org/tiny-tokenizer", "model")], ..ClusterOptions::default() }).await?;
    let files = cluster.hub.files("org/tiny-tokenizer", "main").await?;
    wait_until("every node holds the declared pin's files", Duration::from_secs(90), || async {
        (0..4).all(|node| files.iter().all(|file| cluster.holds(node, &file.etag)))
    })
    .await?;
    let listing = cluster.run_operator_command(2, &["pins", "--url", &cluster.nodes[2].operator_url]).await?;
    assert!(listing.contains("model org/tiny-tokenizer@main"), "{listing}");
    Ok(())
}

/// The last distinct warnings and errors of a node's log (a repeated one once), for a failure message.
fn errors_in_log(cluster: &Cluster, node: usize) -> String {
    let log = cluster.log(node);
    // Without the timestamp, the first 70 characters tell one message from another.
    let key = |line: &str| line.get(28..).unwrap_or(line).chars().take(70).collect::<String>();
    let mut seen = std::collections::HashSet::new();
    let mut distinct: Vec<&str> = log
        .lines()
        .rev()
        .filter(|line| line.contains(" ERROR ") || line.contains(" WARN "))
        .filter(|line| seen.insert(key(line)))
        .take(12)
        .collect();
    distinct.reverse();
    distinct.join("\n")
}

/// Starts a cluster and puts the fill leader of the big file on a 64 MiB tmpfs filled to the last
/// byte (a ballast file beside the store). Returns the cluster, the full node, and the big file.
async fn cluster_with_a_full_disk() -> anyhow::Result<(Cluster, usize, HubFile)> {
    let mut cluster = Cluster::start(ClusterOptions { big_size: 8 << 20, ..ClusterOptions::default() }).await?;
    let big = cluster.hub.file("bench/big", "main", "big.bin").await?;
    // The big file's fill leader: every cold fill of it goes there first.
    let full = cluster.preference(&big.etag)[0];
    // 1 MiB kept free rather than the harness's 1 GiB, so that the disk, not the reserve, runs out.
    cluster.move_to_small_disk(full, "64m", "1MiB").await?;
    cluster.wait_live_everywhere().await?;
    wait_catalogs_converged(&cluster).await?;
    let ballast = cluster.fill_disk(full)?;
    let free = cluster.free_bytes(full)?;
    println!("disk full: {} on a 64 MiB tmpfs, {ballast} bytes of ballast, {free} bytes free", cluster.nodes[full].name);
    anyhow::ensure!(free < 1 << 20, "{free} bytes are still free");
    Ok((cluster, full, big))
}

/// Issue 14, item 2. The store's "no room" path and everything around it; the catalog is checked
/// on disk by a restart (without one, see scenario 10b).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(hfm_root), ignore = "needs root: mounts a tmpfs as a node's data directory")]
async fn scenario_10_a_full_disk_on_one_node_streams_through_stores_nothing_and_caches_again_when_space_returns() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let (mut cluster, full, big) = cluster_with_a_full_disk().await?;
    let model = cluster.hub.file("org/model", "main", LFS_PATH).await?;
    let preference = cluster.preference(&big.etag);
    let others: Vec<usize> = (0..4).filter(|node| *node != full).collect();
    let held_before = cluster.blobs_on_disk(full);
    cluster.hub.reset().await?;

    // A cold file whose fill leader has no room streams through it, unstored; through a node that
    // asks that leader first, too.
    fetch_and_check(&cluster, full, "bench/big", &big).await?;
    fetch_and_check(&cluster, preference[3], "bench/big", &big).await?;
    let big_upstream = cluster.hub.cdn_gets(&big.etag).await?;
    assert!(big_upstream <= 2, "{big_upstream} upstream fetches for two downloads");
    // A file the others hold reaches the full node's clients from a peer, unstored there.
    fetch_and_check(&cluster, others[0], "org/model", &model).await?;
    let holder: Vec<usize> = cluster.preference(&model.etag).into_iter().filter(|node| *node != full).take(1).collect();
    wait_held(&cluster, &holder, &model.etag).await?;
    fetch_and_check(&cluster, full, "org/model", &model).await?;
    assert_eq!(cluster.hub.cdn_gets(&model.etag).await?, 1, "the model file crossed upstream once, then came from a peer");
    // Metadata and a small cold file through the full node are answered (recorded or not).
    let tiny = cluster.hub.files("org/tiny-tokenizer", "main").await?.remove(0);
    fetch_and_check(&cluster, full, "org/tiny-tokenizer", &tiny).await?;

    assert_eq!(cluster.exited(full)?, None, "the node with the full disk stays up:\n{}", errors_in_log(&cluster, full));
    assert_eq!(cluster.get(full, "/healthz").await?.status, 200);
    cluster.status(full).await?;
    assert_eq!(cluster.blobs_on_disk(full), held_before, "nothing was stored on the full disk");
    assert_eq!(cluster.temp_files(full), Vec::<std::path::PathBuf>::new(), "no fill left a temp file");
    println!("measure: disk full: {big_upstream} upstream fetches of the big file for 2 downloads through the full node and a non-replica");

    // Space returns (the tmpfs grows): the node caches again.
    cluster.resize_small_disk(full, "256m")?;
    fetch_and_check(&cluster, full, "bench/big", &big).await?;
    wait_held(&cluster, &[full], &big.etag).await?;
    assert_eq!(cluster.temp_files(full), Vec::<std::path::PathBuf>::new());
    // Its catalog on disk is intact: restarted on the same disk, it opens it and catches up.
    cluster.restart(full).await?;
    cluster.wait_live_everywhere().await?;
    if let Err(error) = wait_catalogs_converged(&cluster).await {
        anyhow::bail!("{error}; the restarted node's log:\n{}", errors_in_log(&cluster, full));
    }
    assert!(cluster.holds(full, &big.etag));
    assert!(cluster.verify_disks()? >= 3);
    Ok(())
}

/// Issue 14, item 2: a catalog write that fails for lack of space must not stop the node's catalog
/// for good. openraft's core stops at the state machine's first failed apply (`catalog storage
/// error: ... No space left on device`) and redb refuses its database after a failed write; the
/// node reopens the database and starts its Raft core again, so once space returns it catches up
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(hfm_root), ignore = "needs root: mounts a tmpfs as a node's data directory")]
async fn scenario_10b_a_node_whose_catalog_write_failed_for_lack_of_space_catches_up_when_space_returns() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let (mut cluster, full, big) = cluster_with_a_full_disk().await?;
    // Catalog writes through the others reach the full node, which cannot apply them: the big
    // file, filled through a healthy node, is recorded with its holders (none of them the full node).
    let others: Vec<usize> = (0..4).filter(|node| *node != full).collect();
    fetch_and_check(&cluster, others[0], "bench/big", &big).await?;
    let tiny = cluster.hub.files("org/tiny-tokenizer", "main").await?.remove(0);
    fetch_and_check(&cluster, others[1], "org/tiny-tokenizer", &tiny).await?;
    // Metadata questions the full node leads are answered and recorded by the node that asked
    // (the full node cannot record them): a second node finds the manifest in its catalog.
    cluster.hub.reset().await?;
    head(&cluster, others[2], &resolve_path("org/tiny-tokenizer", "main", &tiny.path)).await?;
    let api = cluster.hub.api_requests().await?;
    assert!(
        !api.iter().any(|request| request.contains("/tree/")),
        "the manifest fetched while a node's disk was full was not recorded: {api:?}"
    );
    let holders_recorded = || async {
        let mut holders = cluster.replica_holders(others[0], &big.etag).await.unwrap_or_default();
        holders.sort();
        holders
    };
    wait_until("the big file's holders are recorded", Duration::from_secs(60), || async { !holders_recorded().await.is_empty() }).await?;
    let holders = holders_recorded().await;
    let behind = cluster.raft_progress(full).await.map(|(_, applied)| applied);
    let ahead = cluster.raft_progress(others[0]).await.map(|(_, applied)| applied);
    println!("disk full: the full node applied {behind:?} of {ahead:?} log entries; the big file's holders {holders:?}");
    assert!(behind < ahead, "the full node applied every entry ({behind:?} of {ahead:?}): its disk was not full for the catalog");

    cluster.resize_small_disk(full, "256m")?;
    if let Err(error) = wait_catalogs_converged(&cluster).await {
        anyhow::bail!("{error}; the full node's log:\n{}", errors_in_log(&cluster, full));
    }
    assert_eq!(cluster.exited(full)?, None, "the node restarted itself rather than its catalog");
    // What was recorded while it could not write is in its catalog now.
    let mut seen_by_full = cluster.replica_holders(full, &big.etag).await?;
    seen_by_full.sort();
    assert_eq!(seen_by_full, holders, "the full node's catalog disagrees with the others'");
    // And its catalog takes writes again: the big file it now stores is recorded as held by it,
    // in every node's catalog.
    fetch_and_check(&cluster, full, "bench/big", &big).await?;
    wait_held(&cluster, &[full], &big.etag).await?;
    let full_name = cluster.nodes[full].name.clone();
    for node in 0..4 {
        let seen = || async { cluster.replica_holders(node, &big.etag).await.unwrap_or_default().contains(&full_name) };
        wait_until("the full node's copy is recorded everywhere", Duration::from_secs(60), seen).await?;
    }
    assert!(cluster.verify_disks()? >= 3);
    Ok(())
}

/// A small seeded generator (splitmix64), so a failing crash loop can be run again exactly.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The seed of a randomized scenario: `HFM_SEED` when set (to repeat a run), else the clock.
fn scenario_seed() -> u64 {
    std::env::var("HFM_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64)
    })
}

/// What a client loop saw: downloads that ended with the right bytes, attempts it retried (a node
/// killed under it), answers that began (200) and were cut short, downloads it gave up on, and
/// bodies of full length with wrong bytes.
#[derive(Debug, Default)]
struct LoadReport {
    downloads: u64,
    retries: u64,
    cut_short: u64,
    gave_up: Vec<String>,
    wrong_bytes: Vec<String>,
}

impl LoadReport {
    fn add(&mut self, other: LoadReport) {
        self.downloads += other.downloads;
        self.retries += other.retries;
        self.cut_short += other.cut_short;
        self.gave_up.extend(other.gave_up);
        self.wrong_bytes.extend(other.wrong_bytes);
    }
}

/// The nodes a client may be sent to (as DNS would send it), shared with the test that changes it.
type Routable = std::sync::Arc<std::sync::Mutex<Vec<bool>>>;

/// Downloads `files` through random routable nodes of `urls` until `stop`, as a client with
/// retries would: a failed attempt (refused connection, 5xx, a body cut short) is retried on
/// another node, up to 8 attempts. Every body of full length is checked against the file's sha256.
async fn client_load(
    urls: Vec<String>,
    routable: Routable,
    files: Vec<(String, HubFile)>,
    seed: u64,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoadReport {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let mut random = Seeded(seed);
    let mut report = LoadReport::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (path, file) = &files[random.below(files.len() as u64) as usize];
        let mut attempts = 0;
        loop {
            attempts += 1;
            let choices: Vec<usize> = {
                let routable = routable.lock().expect("routable poisoned");
                (0..urls.len()).filter(|node| routable[*node]).collect()
            };
            let url = format!("{}{path}", urls[choices[random.below(choices.len() as u64) as usize]]);
            let body = match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => {
                    let body = response.bytes().await.ok().filter(|body| body.len() as u64 == file.size);
                    report.cut_short += u64::from(body.is_none());
                    body
                }
                _ => None,
            };
            match body {
                Some(body) => {
                    if sha256_hex(&body) == file.etag {
                        report.downloads += 1;
                    } else {
                        report.wrong_bytes.push(url);
                    }
                    tokio::time::sleep(pause).await;
                    break;
                }
                None if attempts >= 8 => {
                    report.gave_up.push(url);
                    break;
                }
                None => {
                    report.retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    report
}

/// Starts `clients` download loops over the LFS files of `org/model` and `bench/big`, each pausing
/// `pause` after a download; returns the stop flag and their tasks.
async fn start_load(
    cluster: &Cluster,
    routable: &Routable,
    clients: u64,
    pause: Duration,
    seed: u64,
) -> anyhow::Result<(std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<tokio::task::JoinHandle<LoadReport>>)> {
    let files = vec![
        (resolve_path("org/model", "main", LFS_PATH), cluster.hub.file("org/model", "main", LFS_PATH).await?),
        (resolve_path("bench/big", "main", "big.bin"), cluster.hub.file("bench/big", "main", "big.bin").await?),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = cluster.nodes.iter().map(|node| node.url.clone()).collect();
    let tasks = (0..clients)
        .map(|client| tokio::spawn(client_load(urls.clone(), routable.clone(), files.clone(), seed ^ client, pause, stop.clone())))
        .collect();
    Ok((stop, tasks))
}

/// Stops the download loops and adds up what they saw.
async fn stop_load(
    (stop, tasks): (std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<tokio::task::JoinHandle<LoadReport>>),
) -> anyhow::Result<LoadReport> {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut report = LoadReport::default();
    for task in tasks {
        report.add(task.await?);
    }
    Ok(report)
}

/// POSTs (pin) or DELETEs (unpin) `repo` on a node's operator port; `Ok` only when it answered 200.
async fn set_pin(client: reqwest::Client, operator_url: String, token: String, repo: &'static str, pinned: bool) -> anyhow::Result<()> {
    let url = format!("{operator_url}/_hfm/pins?repo={repo}");
    let request = if pinned { client.post(url) } else { client.delete(url) };
    let response = request.bearer_auth(token).timeout(Duration::from_secs(20)).send().await?;
    anyhow::ensure!(response.status() == 200, "answered {}", response.status());
    Ok(())
}

/// The repositories node `index`'s catalog lists as pinned.
async fn pinned_repos(cluster: &Cluster, index: usize) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/_hfm/pins", cluster.nodes[index].operator_url);
    let body = cluster.client.get(url).bearer_auth(&cluster.token).send().await?.bytes().await?;
    let listing: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(listing["pins"]
        .as_array()
        .map(|pins| pins.iter().filter_map(|pin| pin["repo"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

/// The pause of each crash-loop client between downloads: every download through a store that
/// must evict to fill is two catalog writes, and clients in a tight loop would make the test about
/// a two-core machine's fsync rate rather than about crashes.
const CRASH_LOAD_PAUSE: Duration = Duration::from_millis(100);

/// Issue 14, item 3: kill -9, fifty times in a row (`HFM_CRASH_ROUNDS`), at seeded random moments,
/// while clients download through every node and the store's limit keeps evicting and refilling
/// blobs (fills under way at every kill), and while catalog writes are made: a pin or an unpin
/// issued just before each kill, which may be of the Raft leader. After every round the node is
/// back and caught up, and every node's catalog shows the last acknowledged pin state; at the end
/// no blob on any disk has a wrong hash, no temp file is left, no client received a wrong byte,
/// and every failed attempt was one a retry turned into a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_11_fifty_kill_9s_under_load_leave_no_bad_blob_and_lose_no_acknowledged_write() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = scenario_seed();
    let rounds: u64 = std::env::var("HFM_CRASH_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(50);
    println!("crash loop: seed {seed} (HFM_SEED={seed} repeats it), {rounds} rounds");
    let mut random = Seeded(seed);
    // Room for the 3 MiB model file or the 4 MiB big file, not both: downloads of both through
    // every node keep each store evicting one and filling the other.
    let mut cluster = Cluster::start(ClusterOptions { big_size: 4 << 20, max_disk: Some("5MiB"), ..ClusterOptions::default() }).await?;
    let load = start_load(&cluster, &std::sync::Arc::new(std::sync::Mutex::new(vec![true; 4])), 2, CRASH_LOAD_PAUSE, seed).await?;

    const PINNED: &str = "org/tiny-tokenizer";
    let mut leader_kills = 0;
    let mut write_retries = 0;
    let (mut round_time, mut restart_time, mut catch_up_time, mut check_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let victim = random.below(4) as usize;
        let pinned = round % 2 == 0;
        let leader = cluster.raft_leader_seen_by((victim + 1) % 4).await;
        if leader.as_deref() == Some(cluster.nodes[victim].name.as_str()) {
            leader_kills += 1;
        }
        // The write goes to a random node (the victim too: then it is lost with it, unacknowledged
        // or not) and the kill lands while it is under way, or just after.
        let via = random.below(4) as usize;
        let write =
            tokio::spawn(set_pin(cluster.client.clone(), cluster.nodes[via].operator_url.clone(), cluster.token.clone(), PINNED, pinned));
        let round_started = Instant::now();
        tokio::time::sleep(Duration::from_millis(random.below(400))).await;
        cluster.kill(victim);
        // Not acknowledged: written again (pins and unpins are idempotent) through the others.
        if write.await?.is_err() {
            write_retries += 1 + set_pin_until_acknowledged(&cluster, victim, PINNED, pinned).await?;
        }
        let step = Instant::now();
        cluster.restart(victim).await?;
        restart_time += step.elapsed();
        let step = Instant::now();
        wait_caught_up(&cluster, victim, (victim + 1) % 4).await?;
        catch_up_time += step.elapsed();
        let step = Instant::now();
        for node in 0..4 {
            let shows = || async { pinned_repos(&cluster, node).await.is_ok_and(|repos| repos.contains(&PINNED.to_owned()) == pinned) };
            if wait_until("the acknowledged pin state", Duration::from_secs(30), shows).await.is_err() {
                anyhow::bail!(
                    "round {round} (seed {seed}): {} lost the acknowledged {} of {PINNED}; its log:\n{}",
                    cluster.nodes[node].name,
                    if pinned { "pin" } else { "unpin" },
                    errors_in_log(&cluster, node)
                );
            }
        }
        check_time += step.elapsed();
        round_time += round_started.elapsed();
    }
    println!(
        "measure: crash loop: per round {} ms: restart {} ms, catch-up {} ms, pin check {} ms",
        round_time.as_millis() / u128::from(rounds.max(1)),
        restart_time.as_millis() / u128::from(rounds.max(1)),
        catch_up_time.as_millis() / u128::from(rounds.max(1)),
        check_time.as_millis() / u128::from(rounds.max(1))
    );
    let report = stop_load(load).await?;
    println!(
        "measure: crash loop: {rounds} kill -9s ({leader_kills} of the Raft leader), {} downloads, {} client retries ({} answers cut short), {} pin writes retried",
        report.downloads, report.retries, report.cut_short, write_retries
    );
    assert!(report.wrong_bytes.is_empty(), "clients received wrong bytes (seed {seed}): {:?}", report.wrong_bytes);
    assert!(report.gave_up.is_empty(), "downloads failed after 8 attempts (seed {seed}): {:?}", report.gave_up);
    assert!(report.downloads >= rounds, "the load hardly ran: {report:?}");
    wait_catalogs_converged(&cluster).await?;
    // Fills still under way finish (or fail) before the disks are checked.
    wait_until("no fill under way", Duration::from_secs(60), || async { (0..4).all(|node| cluster.temp_files(node).is_empty()) }).await?;
    let checked = cluster.verify_disks()?;
    assert!(checked >= 4, "only {checked} blobs on the disks");
    for node in 0..4 {
        assert_eq!(cluster.exited(node)?, None, "{} exited by itself:\n{}", cluster.nodes[node].name, errors_in_log(&cluster, node));
    }
    Ok(())
}

/// Issue 14, item 7: the four nodes restarted one at a time, as a rolling upgrade does, while
/// clients download through every node that DNS would send them to. Each node is drained first
/// (DNS stops answering it, its leadership of the catalog is handed over, its fills finish), then
/// stopped with SIGTERM and started again: no download fails or is cut short, not even once before
/// a retry, and the catalog keeps its leader on a node that is not stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_12_a_rolling_restart_under_load_fails_no_download_and_hands_leadership_over() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = scenario_seed();
    println!("rolling restart: seed {seed}");
    let mut cluster = Cluster::start(ClusterOptions { big_size: 4 << 20, ..ClusterOptions::default() }).await?;
    let routable: Routable = std::sync::Arc::new(std::sync::Mutex::new(vec![true; 4]));
    let load = start_load(&cluster, &routable, 2, Duration::ZERO, seed).await?;
    let mut handovers = 0;
    for node in 0..4 {
        let name = cluster.nodes[node].name.clone();
        let other = (node + 1) % 4;
        let led = cluster.raft_leader_seen_by(other).await.as_deref() == Some(name.as_str());
        // DNS stops sending clients to a draining node; so does the load.
        routable.lock().expect("routable poisoned")[node] = false;
        let step = Instant::now();
        cluster.drain(node).await?;
        let drained = step.elapsed();
        if led {
            wait_until("the catalog leadership moved off the drained node", Duration::from_secs(30), || async {
                cluster.raft_leader_seen_by(other).await.is_some_and(|leader| leader != name)
            })
            .await?;
            handovers += 1;
        }
        // Requests routed before the drain finish on the node; none is sent after.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let step = Instant::now();
        let status = cluster.stop(node).await?;
        let stopped = step.elapsed();
        assert!(status.success(), "{name} exited with {status} on SIGTERM:\n{}", errors_in_log(&cluster, node));
        let step = Instant::now();
        cluster.restart(node).await?;
        cluster.wait_live_everywhere().await?;
        wait_caught_up(&cluster, node, other).await?;
        routable.lock().expect("routable poisoned")[node] = true;
        println!(
            "measure: rolling restart: {name} drained in {} ms, stopped in {} ms, back and caught up in {} ms",
            drained.as_millis(),
            stopped.as_millis(),
            step.elapsed().as_millis()
        );
    }
    let report = stop_load(load).await?;
    println!(
        "measure: rolling restart: 4 nodes restarted ({handovers} leadership handovers), {} downloads, {} client retries",
        report.downloads, report.retries
    );
    assert!(report.wrong_bytes.is_empty(), "clients received wrong bytes: {:?}", report.wrong_bytes);
    assert_eq!((report.retries, report.cut_short), (0, 0), "downloads failed during the rolling restart: {report:?}");
    assert!(report.downloads >= 8, "the load hardly ran: {report:?}");
    assert!(cluster.raft_leader_seen_by(0).await.is_some());
    wait_catalogs_converged(&cluster).await?;
    cluster.verify_disks()?;
    Ok(())
}

/// Makes `pinned` the pin state of `repo` through any node but `avoid`, retrying until a node
/// acknowledges it (pins and unpins are idempotent). Returns how many attempts were retried.
async fn set_pin_until_acknowledged(cluster: &Cluster, avoid: usize, repo: &'static str, pinned: bool) -> anyhow::Result<u64> {
    for attempt in 0..30u64 {
        let through = (avoid + 1 + attempt as usize % 3) % 4;
        let node = &cluster.nodes[through];
        if set_pin(cluster.client.clone(), node.operator_url.clone(), cluster.token.clone(), repo, pinned).await.is_ok() {
            return Ok(attempt);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("three nodes did not take a pin change of {repo} in 30 attempts")
}

/// Issue 14, item 8: a bounded chaos soak. Two clients download through every node while a seeded
/// nemesis (`HFM_SEED`) injects `HFM_SOAK_FAULTS` faults (12 by default, and no more than `HFM_SOAK_SECONDS`,
/// 60 by default, allow), one node at a time: kill -9 and start again, SIGSTOP and SIGCONT, or cut the
/// node off from the others and heal; a pin change is written while each fault lasts. At the end
/// every node's catalog has applied the same log and shows the last acknowledged pin state, every
/// stored blob's hash is right, no client received a wrong byte, and every failed attempt was one
/// a retry turned into a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(hfm_root), ignore = "needs root: partitions are cut between network namespaces, which only root can make")]
async fn scenario_13_a_seeded_chaos_soak_ends_with_one_catalog_right_blobs_and_no_wrong_byte() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = scenario_seed();
    let faults: u64 = std::env::var("HFM_SOAK_FAULTS").ok().and_then(|text| text.parse().ok()).unwrap_or(12);
    // Bounded so the whole test command stays within its budget; HFM_SOAK_SECONDS (and
    // HFM_SOAK_FAULTS) run longer soaks.
    let cap = Duration::from_secs(std::env::var("HFM_SOAK_SECONDS").ok().and_then(|text| text.parse().ok()).unwrap_or(60));
    println!("chaos soak: seed {seed} (HFM_SEED={seed} repeats it), up to {faults} faults or {} s", cap.as_secs());
    let mut random = Seeded(seed);
    let options = ClusterOptions {
        big_size: 4 << 20,
        max_disk: Some("5MiB"),
        needs_namespaces: Some("scenario 13 (partitions in the soak)"),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).await?;
    let load = start_load(&cluster, &std::sync::Arc::new(std::sync::Mutex::new(vec![true; 4])), 2, CRASH_LOAD_PAUSE, seed).await?;
    const PINNED: &str = "org/tiny-tokenizer";
    let started = Instant::now();
    let (mut kills, mut pauses, mut partitions, mut write_retries) = (0u64, 0u64, 0u64, 0u64);
    let mut pinned = false;
    let mut injected = 0;
    while injected < faults && started.elapsed() < cap {
        injected += 1;
        let victim = random.below(4) as usize;
        let lasting = Duration::from_millis(500 + random.below(2000));
        pinned = !pinned;
        match random.below(3) {
            0 => {
                kills += 1;
                cluster.kill(victim);
                write_retries += set_pin_until_acknowledged(&cluster, victim, PINNED, pinned).await?;
                tokio::time::sleep(lasting).await;
                cluster.restart(victim).await?;
            }
            1 => {
                pauses += 1;
                cluster.pause(victim)?;
                write_retries += set_pin_until_acknowledged(&cluster, victim, PINNED, pinned).await?;
                tokio::time::sleep(lasting).await;
                cluster.resume(victim)?;
            }
            _ => {
                partitions += 1;
                let rest: Vec<usize> = (0..4).filter(|node| *node != victim).collect();
                cluster.net.partition(&[&[victim], &rest])?;
                write_retries += set_pin_until_acknowledged(&cluster, victim, PINNED, pinned).await?;
                tokio::time::sleep(lasting).await;
                cluster.net.heal_all()?;
            }
        }
        // One fault at a time: the next waits until every node is live and the victim caught up.
        cluster.wait_live_everywhere().await?;
        wait_caught_up(&cluster, victim, (victim + 1) % 4).await?;
    }
    let report = stop_load(load).await?;
    println!(
        "measure: chaos soak: {injected} faults in {} s ({kills} kill -9, {pauses} SIGSTOP, {partitions} partitions), {} downloads, {} client retries ({} bodies cut short), {write_retries} pin writes retried",
        started.elapsed().as_secs(),
        report.downloads,
        report.retries,
        report.cut_short
    );
    assert!(report.wrong_bytes.is_empty(), "clients received wrong bytes (seed {seed}): {:?}", report.wrong_bytes);
    assert!(report.gave_up.is_empty(), "downloads failed after 8 attempts (seed {seed}): {:?}", report.gave_up);
    assert!(injected >= faults.min(4), "only {injected} faults in {} s", cap.as_secs());
    wait_catalogs_converged(&cluster).await?;
    for node in 0..4 {
        let shows = || async { pinned_repos(&cluster, node).await.is_ok_and(|repos| repos.contains(&PINNED.to_owned()) == pinned) };
        if wait_until("the acknowledged pin state", Duration::from_secs(30), shows).await.is_err() {
            anyhow::bail!("seed {seed}: {} does not show the last acknowledged pin state", cluster.nodes[node].name);
        }
        assert_eq!(cluster.exited(node)?, None, "{} exited by itself:\n{}", cluster.nodes[node].name, errors_in_log(&cluster, node));
    }
    wait_until("no fill under way", Duration::from_secs(60), || async { (0..4).all(|node| cluster.temp_files(node).is_empty()) }).await?;
    assert!(cluster.verify_disks()? >= 4);
    Ok(())
}

/// Runs the real rsync client; its standard output, or an error with its standard error.
async fn rsync_pull(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("rsync").args(args).output().await?;
    anyhow::ensure!(output.status.success(), "rsync {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Not a test: the peer fill benchmark of docs/benchmarks.md (`bench/cluster.sh` runs it with the
/// release binary). Prints the time to stream one big blob from local disk and through a peer fill.
/// The commit a node answers for `repo`'s `main` (`/api/{models|datasets}/…/revision/main`).
async fn main_commit_seen_by(cluster: &Cluster, node: usize, repo: &str) -> anyhow::Result<String> {
    let api = match repo.strip_prefix("datasets/") {
        Some(dataset) => format!("/api/datasets/{dataset}/revision/main"),
        None => format!("/api/models/{repo}/revision/main"),
    };
    let answer = cluster.get(node, &api).await?;
    anyhow::ensure!(answer.status == 200, "{} answered {} for {api}", cluster.nodes[node].name, answer.status);
    let info: serde_json::Value = serde_json::from_slice(&answer.body)?;
    info["sha"].as_str().map(str::to_owned).context("no sha in the revision info")
}

/// The node that records `repo`'s `main` ref for the cluster (its metadata leader), as placement ranks.
fn ref_leader(cluster: &Cluster, repo: &str) -> usize {
    let key = match repo.strip_prefix("datasets/") {
        Some(dataset) => format!("ref\0dataset:{dataset}\0main"),
        None => format!("ref\0model:{repo}\0main"),
    };
    cluster.preference(&key)[0]
}

/// A node's SOA serial, asked with dig.
async fn soa_serial(cluster: &Cluster, node: usize) -> anyhow::Result<u64> {
    let server = cluster.nodes[node].addresses.dns;
    let output = tokio::process::Command::new("dig")
        .args([&format!("@{}", server.ip()), "-p", &server.port().to_string(), "hf-mirror.eu", "SOA", "+short", "+time=2", "+tries=3"])
        .output()
        .await
        .context("running dig")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().nth(2).and_then(|serial| serial.parse().ok()).with_context(|| format!("no SOA serial in {text:?}"))
}

/// Two of four clocks jump five minutes, one ahead and one behind, while the nodes run (libfaketime;
/// monotonic time stays real, as when NTP steps a clock). Membership keeps all four, the catalog keeps
/// replicating, every node measures the cluster's (the majority's) time, and a ref recorded by a node
/// whose clock is wrong expires neither early nor late on the others; a node restarted with its clock
/// behind still gives out a larger SOA serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_14_clocks_five_minutes_off_neither_split_the_cluster_nor_move_ref_expiry() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    const TTL: Duration = Duration::from_secs(15);
    let mut cluster = Cluster::start(ClusterOptions { ref_ttl: "15s", fake_clocks: true, ..ClusterOptions::default() }).await?;
    // The node ahead records org/model's main; the node behind records another repo's.
    let model = "org/model";
    let ahead = ref_leader(&cluster, model);
    let other = ["datasets/org/dataset", "org/tiny-tokenizer", "gpt2"]
        .into_iter()
        .find(|repo| ref_leader(&cluster, repo) != ahead)
        .expect("some repo's ref is recorded by another node");
    let behind = ref_leader(&cluster, other);
    let right: Vec<usize> = (0..4).filter(|node| *node != ahead && *node != behind).collect();
    println!("clocks: {} +5 min, {} -5 min, {other} recorded by the one behind", cluster.nodes[ahead].name, cluster.nodes[behind].name);
    let dns_serial_before = soa_serial(&cluster, behind).await?;
    cluster.set_clock(ahead, "+5m")?;
    cluster.set_clock(behind, "-5m")?;

    // Every node measures the majority's time: the wrong clocks are told how far off they are, the
    // right ones are not moved.
    let near = |value: f64, expected: f64| (value - expected).abs() < 5_000.0;
    wait_until("every node measured the cluster's clock", Duration::from_secs(60), || async {
        let mut all = true;
        for node in 0..4 {
            let expected = if node == ahead {
                -300_000.0
            } else if node == behind {
                300_000.0
            } else {
                0.0
            };
            all &= cluster.metric(node, "hfm_clock_offset_ms").await.is_ok_and(|offset| near(offset, expected));
        }
        all
    })
    .await?;
    // Membership: nobody was dropped for its clock, and no datagram was refused as stale.
    cluster.wait_live_everywhere().await?;
    for node in 0..4 {
        assert_eq!(cluster.metric(node, "hfm_gossip_rejected_total{reason=\"stale\"}").await?, 0.0);
    }

    // Not early: the node behind records a ref, then stops; the node that records it next (with a
    // right clock) finds the record fresh and does not ask upstream again within the TTL.
    cluster.hub.reset().await?;
    let other_commit = main_commit_seen_by(&cluster, behind, other).await?;
    let fetched = cluster.hub.api_requests().await?;
    assert!(!fetched.is_empty(), "the ref was fetched from upstream");
    let recorded_at = Instant::now();
    cluster.stop(behind).await?;
    let stopped_name = cluster.nodes[behind].name.clone();
    for &node in &right {
        wait_until("the stopped node left every view", Duration::from_secs(30), || async {
            cluster.live_seen_by(node).await.is_ok_and(|live| !live.contains(&stopped_name))
        })
        .await?;
    }
    for node in (0..4).filter(|node| *node != behind) {
        assert_eq!(main_commit_seen_by(&cluster, node, other).await?, other_commit);
    }
    assert!(recorded_at.elapsed() < TTL, "the reads came after the TTL; the check proves nothing (a slow machine)");
    let api = cluster.hub.api_requests().await?;
    assert_eq!(api, fetched, "a ref recorded by the node whose clock is behind expired early");

    // The node behind restarts with its clock still behind: it rejoins, measures the cluster's clock
    // again, and its SOA serial still grows.
    cluster.restart(behind).await?;
    cluster.wait_live_everywhere().await?;
    wait_until("the restarted node measured the cluster's clock", Duration::from_secs(60), || async {
        cluster.metric(behind, "hfm_clock_offset_ms").await.is_ok_and(|offset| near(offset, 300_000.0))
    })
    .await?;
    let dns_serial_after = soa_serial(&cluster, behind).await?;
    assert!(dns_serial_after > dns_serial_before, "SOA serial went from {dns_serial_before} to {dns_serial_after}");

    // Not late: the node ahead records org/model's main, the branch moves upstream, and once the TTL
    // has passed every node answers the new commit (a record stamped five minutes ahead would keep the
    // old one for five more minutes).
    let old_commit = main_commit_seen_by(&cluster, ahead, model).await?;
    for node in 0..4 {
        assert_eq!(main_commit_seen_by(&cluster, node, model).await?, old_commit);
    }
    let new_commit = cluster.hub.move_branch(model, "main").await?;
    assert_ne!(new_commit, old_commit);
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    // The node ahead last: asked first, it would check upstream by its own clock and record the new
    // commit for everyone, hiding what the others make of its record.
    for node in right.iter().copied().chain([behind, ahead]) {
        let seen = main_commit_seen_by(&cluster, node, model).await?;
        assert_eq!(seen, new_commit, "{} still answers the old commit after the TTL", cluster.nodes[node].name);
    }
    // Raft kept replicating through all of it: every node applied the same log.
    wait_catalogs_converged(&cluster).await?;
    Ok(())
}

/// Whether every running node but `node` sees `node` live.
async fn live_everywhere_else(cluster: &Cluster, node: usize) -> anyhow::Result<bool> {
    let name = &cluster.nodes[node].name;
    for other in (0..4).filter(|other| *other != node) {
        if !cluster.live_seen_by(other).await?.contains(name) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One node's link gets 300 ms of delay and 5 % loss on everything it sends (the harness's delay
/// line: this kernel has no netem). It stays a member; nodes filling a blob it holds race it against
/// the other holder after a quarter second and finish from the other; metadata questions it leads
/// are answered; no client download fails, through it or through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(hfm_root), ignore = "needs root: the slow link is a TUN device and routes in a node's network namespace")]
async fn scenario_15_a_slow_peer_stays_a_member_and_fills_and_questions_go_around_it() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = scenario_seed();
    let cluster = Cluster::start(ClusterOptions {
        big_size: 4 << 20,
        needs_namespaces: Some("slowing one node's link"),
        ..ClusterOptions::default()
    })
    .await?;
    let blob = cluster.hub.file("bench/big", "main", "big.bin").await?;
    let preference = cluster.preference(&blob.etag);
    let slow = preference[0];
    // Before its link slows, the slow node fills the blob and one more node copies it.
    fetch_and_check(&cluster, slow, "bench/big", &blob).await?;
    wait_until("the blob has two holders", Duration::from_secs(60), || async {
        cluster.replica_holders(slow, &blob.etag).await.is_ok_and(|holders| holders.len() >= 2)
    })
    .await?;
    let holders = cluster.replica_holders(slow, &blob.etag).await?;
    let fillers: Vec<usize> = (0..4).filter(|node| !holders.contains(&cluster.nodes[*node].name)).collect();
    wait_held(&cluster, &(0..4).filter(|node| !fillers.contains(node)).collect::<Vec<_>>(), &blob.etag).await?;
    // A metadata key the slow node leads, not yet known to anyone.
    let led = ["org/model", "org/tiny-tokenizer", "gpt2", "datasets/org/dataset"]
        .into_iter()
        .find(|repo| ref_leader(&cluster, repo) == slow)
        .context("no repo's main ref is led by the slow node; pick another repo")?;
    println!("slow node {}, holders {holders:?}, metadata led by it: {led}'s main", cluster.nodes[slow].name);

    let link = cluster.net.slow_link(slow, 300, 0.05, seed)?;
    let slowed_at = Instant::now();
    let hedged_before: f64 = {
        let mut total = 0.0;
        for &node in &fillers {
            total += cluster.metric(node, "hfm_slow_peer_reroutes_total{kind=\"fill_hedged\"}").await.unwrap_or(0.0);
        }
        total
    };
    // Fills: each node without the blob downloads it; the slow holder is asked first (it is first
    // in placement) and raced against the other holder.
    for &node in &fillers {
        fetch_and_check(&cluster, node, "bench/big", &blob).await?;
        assert!(live_everywhere_else(&cluster, slow).await?, "the slow node was declared dead");
    }
    let mut hedged = 0.0;
    for &node in &fillers {
        hedged += cluster.metric(node, "hfm_slow_peer_reroutes_total{kind=\"fill_hedged\"}").await?;
    }
    println!(
        "measure: {} fills around the slow peer, {} hedged, {} ms after the link slowed",
        fillers.len(),
        hedged - hedged_before,
        slowed_at.elapsed().as_millis()
    );
    assert!(hedged - hedged_before >= fillers.len() as f64, "a fill waited for the slow peer instead of asking the other holder");

    // Metadata: a ref the slow node leads, asked through every other node, is answered right.
    let expected = cluster.hub.commit(led, "main").await?;
    let asked_at = Instant::now();
    for node in (0..4).filter(|node| *node != slow) {
        assert_eq!(main_commit_seen_by(&cluster, node, led).await?, expected);
    }
    let mut metadata_hedged = 0.0;
    for node in (0..4).filter(|node| *node != slow) {
        metadata_hedged += cluster.metric(node, "hfm_slow_peer_reroutes_total{kind=\"metadata_hedged\"}").await.unwrap_or(0.0);
    }
    println!(
        "measure: metadata the slow peer leads answered through 3 nodes in {} ms ({metadata_hedged} asked upstream themselves)",
        asked_at.elapsed().as_millis()
    );

    // Clients: downloads through every node, the slow one included, for a bounded count of rounds.
    let files = cluster.hub.files("org/model", "main").await?;
    let mut downloads = 0;
    for round in 0..3 {
        for node in 0..4 {
            let file = &files[(round + node) % files.len()];
            fetch_and_check(&cluster, node, "org/model", file).await?;
            downloads += 1;
        }
        assert!(live_everywhere_else(&cluster, slow).await?, "the slow node was declared dead");
    }
    println!("measure: {downloads} client downloads during the slow link, 0 failed; delay line: {}", link.restore()?);
    // The link is fast again: the slow node is still one of the cluster, with the same catalog.
    wait_catalogs_converged(&cluster).await?;
    cluster.verify_disks()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by bench/cluster.sh"]
async fn bench_peer_fill_versus_local_disk() -> anyhow::Result<()> {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let size: u64 = std::env::var("HFM_BENCH_SIZE").ok().and_then(|text| text.parse().ok()).unwrap_or(256 << 20);
    let cluster = Cluster::start(ClusterOptions { big_size: size, replica_check_interval: "1h", ..ClusterOptions::default() }).await?;
    let blob = cluster.hub.file("bench/big", "main", "big.bin").await?;
    let preference = cluster.preference(&blob.etag);
    let path = resolve_path("bench/big", "main", "big.bin");
    let timed = |node: usize| {
        let (cluster, path, blob) = (&cluster, &path, &blob);
        async move {
            let started = Instant::now();
            let answer = cluster.get(node, path).await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(answer.status == 200 && answer.body.len() as u64 == blob.size, "bad answer");
            Ok::<_, anyhow::Error>(elapsed)
        }
    };
    let cold = timed(preference[0]).await?;
    let disk = timed(preference[0]).await?;
    // The last-ranked node is no replica: it fills from the leader over QUIC while it serves.
    let peer = timed(preference[3]).await?;
    let rate = |elapsed: Duration| size as f64 / elapsed.as_secs_f64() / (1 << 20) as f64;
    println!("measure: {size} byte blob: cold from upstream {:.0} MiB/s", rate(cold));
    println!(
        "measure: local disk {:.0} MiB/s, peer QUIC fill {:.0} MiB/s, ratio {:.2}",
        rate(disk),
        rate(peer),
        disk.as_secs_f64() / peer.as_secs_f64()
    );
    Ok(())
}
