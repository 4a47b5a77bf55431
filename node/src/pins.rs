//! Pins: repositories kept whole on every node at one revision (for rsync users and downstream
//! mirrors). A pin is a catalog record; in a cluster every node's replica keeper fills the pinned
//! files and never evicts them (see [`crate::replicas`]); a node running alone does the same with
//! its [local keeper](spawn_local_keeper). This module is the node's side of `/_hfm/pins` and the
//! `hf-mirror mirror` / `hf-mirror pins` commands that drive it.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hfm_cluster::catalog::{Catalog, EntryKind, PinRecord};
use hfm_cluster::types::{RepoKey, RepoType};
use serde_json::{Value, json};

use crate::hub::HubError;
use crate::hub::route::resolve_origin;
use crate::mirror::{Access, Mirror, now_ms};
use crate::store::{FillOutcome, Room, is_valid_etag};

/// A pinned file: its size and where its bytes come from when nobody holds it.
pub struct PinnedBlob {
    pub size: u64,
    /// The `/resolve/` path upstream.
    pub origin: String,
}

/// The files of every pinned repository (whose manifest the catalog has), by etag: the commit each
/// pin stands on and the newer one of a followed branch being filled.
pub async fn pinned_blobs(catalog: &dyn Catalog) -> HashMap<String, PinnedBlob> {
    let mut pinned = HashMap::new();
    let pins = match catalog.list_pins().await {
        Ok(pins) => pins,
        Err(error) => {
            tracing::debug!(%error, "cannot list pins");
            return pinned;
        }
    };
    for (repo, pin) in pins {
        for commit in std::iter::once(&pin.commit).chain(pin.next_commit.as_ref()) {
            let Ok(Some(manifest)) = catalog.get_manifest(&repo, commit).await else {
                tracing::debug!(%repo, %commit, "pinned commit has no manifest yet");
                continue;
            };
            for entry in manifest.entries().iter().filter(|entry| entry.kind == EntryKind::File) {
                if is_valid_etag(entry.etag()) {
                    let origin = resolve_origin(&repo, commit, &entry.path);
                    pinned.entry(entry.etag().to_owned()).or_insert(PinnedBlob { size: entry.size, origin });
                }
            }
        }
    }
    pinned
}

/// How many pinned files a node running alone fills at once.
const LOCAL_PARALLEL_FILLS: usize = 2;

/// The pin keeper of a node that runs alone (a cluster's replica keepers do this job there): keeps
/// the pinned files from eviction and fills the missing ones from upstream, when the pins change and
/// every `interval`, until `shutdown`.
pub fn spawn_local_keeper(
    mirror: Mirror,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pins_changed = mirror.watch_pins();
        loop {
            let pinned = pinned_blobs(mirror.catalog().as_ref()).await;
            let store = mirror.store();
            store.set_protected(pinned.keys().cloned().collect());
            let missing: Vec<(String, PinnedBlob)> = pinned.into_iter().filter(|(etag, _)| !store.contains(etag)).collect();
            if !missing.is_empty() {
                tracing::info!(files = missing.len(), "filling pinned files");
            }
            let fills = futures_util::stream::iter(missing)
                .map(|(etag, blob)| {
                    let mirror = mirror.clone();
                    async move { fill_pinned(&mirror, &etag, &blob).await }
                })
                .buffer_unordered(LOCAL_PARALLEL_FILLS)
                .collect::<Vec<()>>();
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = fills => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = pins_changed.changed() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Fills one pinned file into this node's store (a pinned file may evict unpinned ones).
async fn fill_pinned(mirror: &Mirror, etag: &str, blob: &PinnedBlob) {
    let source = mirror.blob_source(etag, blob.size, &blob.origin).await;
    match mirror.store().fill_or_join_with(etag, blob.size, source, Room::EvictIfNeeded) {
        Ok(FillOutcome::Filling(fill)) => {
            let state = fill.finished().await;
            tracing::debug!(%etag, ?state, "pinned file fill ended");
        }
        Ok(FillOutcome::Stored(_)) => {}
        Ok(FillOutcome::NoRoom) => tracing::warn!(%etag, size = blob.size, "no room for a pinned file"),
        Err(error) => tracing::warn!(%etag, %error, "cannot fill a pinned file"),
    }
}

/// Tells every keeper that the pins changed: this node's (local keeper, rsync trees) and, in a
/// cluster, every node's replica keeper.
async fn pins_changed(mirror: &Mirror) {
    mirror.notify_pins_changed();
    if let Some(replicas) = mirror.replicas() {
        replicas.reconcile_everywhere().await;
    }
}

/// Pins `repo` at `revision`: checks it may be stored, resolves the revision to a commit, records the
/// commit's manifest and the pin, and asks every node to start filling.
pub async fn pin(mirror: &Mirror, repo: &RepoKey, revision: &str) -> Result<Value, HubError> {
    let (access, _) = mirror.policy(repo).await?;
    if access != Access::Cacheable {
        return Err(HubError::new(
            http::StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{repo} is not public and ungated; only public repositories are mirrored"),
            crate::hub::error::ErrorSource::Client,
        ));
    }
    let (commit, _) = mirror.resolve_revision(repo, revision).await?;
    let (manifest, _) = mirror.manifest(repo, &commit).await?;
    let record = PinRecord { revision: revision.to_owned(), commit: commit.clone(), pinned_at_ms: now_ms(), next_commit: None };
    mirror.catalog().put_pin(repo, record).await.map_err(|error| catalog_unavailable(format!("cannot record the pin: {error}")))?;
    pins_changed(mirror).await;
    let files = manifest.entries().iter().filter(|entry| entry.kind == EntryKind::File).count();
    let bytes: u64 = manifest.entries().iter().filter(|entry| entry.kind == EntryKind::File).map(|entry| entry.size).sum();
    Ok(
        json!({"repo": repo.repo_id, "type": repo.repo_type.as_str(), "revision": revision, "commit": commit, "files": files, "bytes": bytes}),
    )
}

/// A pin change that the catalog cannot take now (no quorum): 503, try again.
fn catalog_unavailable(message: String) -> HubError {
    HubError::new(http::StatusCode::SERVICE_UNAVAILABLE, "CatalogUnavailable", message, crate::hub::error::ErrorSource::Internal)
}

/// Removes a pin; its files become ordinary cached blobs again.
pub async fn unpin(mirror: &Mirror, repo: &RepoKey) -> Result<Value, HubError> {
    mirror.catalog().remove_pin(repo).await.map_err(|error| catalog_unavailable(format!("cannot remove the pin: {error}")))?;
    pins_changed(mirror).await;
    Ok(json!({"repo": repo.repo_id, "type": repo.repo_type.as_str(), "unpinned": true}))
}

/// How much of a commit each node holds, by the catalog's replica records (alone: by the store).
pub(crate) struct Holdings {
    pub files: u64,
    pub bytes: u64,
    /// Per node of the topology: (files, bytes) held.
    pub per_node: BTreeMap<String, (u64, u64)>,
}

impl Holdings {
    pub fn complete(&self, node: &str) -> bool {
        self.per_node.get(node).is_some_and(|(files, _)| *files == self.files)
    }
}

/// Counts the storable files of `repo@commit` and what each node holds of them; `None` while the
/// catalog has no manifest for the commit.
pub(crate) async fn holdings(mirror: &Mirror, repo: &RepoKey, commit: &str) -> Result<Option<Holdings>, HubError> {
    let catalog = mirror.catalog();
    let Some(manifest) = catalog.get_manifest(repo, commit).await.map_err(HubError::internal)? else { return Ok(None) };
    let nodes = match mirror.cluster() {
        Some(cluster) => cluster.topology_names(),
        None => vec![mirror.config().name.clone()],
    };
    let mut held = Holdings { files: 0, bytes: 0, per_node: nodes.into_iter().map(|name| (name, (0, 0))).collect() };
    for entry in manifest.entries().iter().filter(|entry| entry.kind == EntryKind::File && is_valid_etag(entry.etag())) {
        held.files += 1;
        held.bytes += entry.size;
        let holders = match mirror.cluster() {
            Some(_) => {
                catalog.get_replicas(entry.etag()).await.map_err(HubError::internal)?.map(|record| record.holders).unwrap_or_default()
            }
            None if mirror.store().contains(entry.etag()) => vec![mirror.config().name.clone()],
            None => Vec::new(),
        };
        for holder in holders {
            if let Some(count) = held.per_node.get_mut(&holder) {
                count.0 += 1;
                count.1 += entry.size;
            }
        }
    }
    Ok(Some(held))
}

/// Every pin with its commit and, per node, how many of its files (and bytes) the catalog records
/// there.
pub async fn pins_status(mirror: &Mirror) -> Result<Value, HubError> {
    let mut listed = Vec::new();
    for (repo, pin) in mirror.catalog().list_pins().await.map_err(HubError::internal)? {
        let held = holdings(mirror, &repo, &pin.commit).await?;
        let (files, bytes) = held.as_ref().map_or((0, 0), |held| (held.files, held.bytes));
        let completeness: serde_json::Map<String, Value> = held
            .iter()
            .flat_map(|held| {
                held.per_node.iter().map(|(node, (held_files, held_bytes))| {
                    (node.clone(), json!({"files": held_files, "bytes": held_bytes, "complete": held.complete(node)}))
                })
            })
            .collect();
        listed.push(json!({
            "repo": repo.repo_id, "type": repo.repo_type.as_str(), "revision": pin.revision, "commit": pin.commit,
            "pinned_at_ms": pin.pinned_at_ms, "next_commit": pin.next_commit, "files": files, "bytes": bytes,
            "manifest_known": held.is_some(), "nodes": completeness,
        }));
    }
    Ok(json!({ "pins": listed }))
}

/// Whether every serving node (alone: this one) holds every file of `commit`.
async fn complete_everywhere(mirror: &Mirror, repo: &RepoKey, commit: &str) -> Result<bool, HubError> {
    let Some(held) = holdings(mirror, repo, commit).await? else { return Ok(false) };
    Ok(match mirror.cluster() {
        Some(cluster) => cluster.serving_nodes().iter().all(|node| held.complete(node)),
        None => held.complete(&mirror.config().name),
    })
}

/// One round of following pinned branches: a branch that moved upstream gets its new commit as
/// `next_commit` (filled everywhere by the replica keepers), and the pin switches to it once every
/// serving node holds all of it. In a cluster only the catalog leader runs it, so one node asks
/// upstream.
pub async fn follow_pinned_branches(mirror: &Mirror) -> Result<(), HubError> {
    if let Some(raft) = mirror.raft() {
        let status = raft.status();
        if status.leader != Some(status.id) {
            return Ok(());
        }
    }
    let catalog = mirror.catalog();
    // Pins declared in topology.toml are made (or moved to the declared revision) here.
    let existing = catalog.list_pins().await.map_err(HubError::internal)?;
    for (repo, revision) in &mirror.config().pins {
        if !existing.iter().any(|(known, pin)| known == repo && pin.revision == *revision) {
            tracing::info!(%repo, %revision, "pinning as topology.toml declares");
            pin(mirror, repo, revision).await?;
        }
    }
    for (repo, pin) in catalog.list_pins().await.map_err(HubError::internal)? {
        if hfm_cluster::types::is_commit_sha(&pin.revision) {
            continue;
        }
        let (latest, _) = mirror.resolve_revision(&repo, &pin.revision).await?;
        let record = if latest == pin.commit {
            if pin.next_commit.is_none() {
                continue;
            }
            // The branch moved back: drop the half-filled commit.
            PinRecord { next_commit: None, ..pin }
        } else if pin.next_commit.as_deref() == Some(latest.as_str()) {
            if !complete_everywhere(mirror, &repo, &latest).await? {
                continue;
            }
            tracing::info!(%repo, revision = %pin.revision, from = %pin.commit, to = %latest, "pinned branch switched to its new commit");
            PinRecord { commit: latest, next_commit: None, ..pin }
        } else {
            mirror.manifest(&repo, &latest).await?;
            tracing::info!(%repo, revision = %pin.revision, commit = %latest, "pinned branch moved upstream; filling its new commit");
            PinRecord { next_commit: Some(latest), ..pin }
        };
        catalog.put_pin(&repo, record).await.map_err(|error| catalog_unavailable(error.to_string()))?;
        pins_changed(mirror).await;
    }
    Ok(())
}

/// Makes the pins `topology.toml` declares and follows pinned branches, every `ref_ttl` (at least
/// every 5 s), until `shutdown`.
pub fn spawn_follower(mirror: Mirror, shutdown: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = mirror.config().ref_ttl.max(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(error) = follow_pinned_branches(&mirror).await {
                tracing::warn!(%error, "cannot follow pinned branches now");
            }
        }
    })
}

/// Checks what a pin names: `ORG/NAME`, a model or a dataset, a sane revision.
pub fn validate_pin(repo_id: &str, repo_type: &str, revision: &str) -> Result<(RepoKey, String), String> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let well_formed =
        |part: &str| !part.is_empty() && part.len() <= 96 && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if parts.len() != 2 || !parts.iter().all(|part| well_formed(part)) || parts.iter().any(|part| *part == "." || *part == "..") {
        return Err(format!("{repo_id:?} is not ORG/NAME"));
    }
    let repo_type = match repo_type {
        "model" => RepoType::Model,
        "dataset" => RepoType::Dataset,
        other => return Err(format!("type {other:?}: only models and datasets are mirrored")),
    };
    if revision.is_empty() || revision.len() > 256 || revision.contains("..") || revision.chars().any(char::is_control) {
        return Err(format!("invalid revision {revision:?}"));
    }
    Ok((RepoKey::new(repo_type, repo_id), revision.to_owned()))
}

/// Reads `type` and `repo` (and `revision`) from a pin request's query.
pub fn pin_target(query: &str) -> Result<(RepoKey, String), HubError> {
    let pairs = crate::hub::query::parse_pairs(query);
    let get = |key: &str| pairs.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone());
    let repo_id = get("repo").ok_or_else(|| HubError::bad_request("repo=ORG/NAME is required"))?;
    validate_pin(&repo_id, get("type").as_deref().unwrap_or("model"), get("revision").as_deref().unwrap_or("main"))
        .map_err(HubError::bad_request)
}

fn admin_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?)
}

async fn read_json(response: reqwest::Response, url: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(serde_json::from_slice(&body)?)
}

fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// `hf-mirror mirror`: pins a repository through a node and follows the fill until every live node
/// holds every file (a progress bar on a terminal, plain lines otherwise). Interrupting it stops only
/// the watching; the nodes go on, and running it again picks up where they are.
pub async fn mirror_command(url: &str, repo: &str, repo_type: &str, revision: &str, unpin_it: bool) -> anyhow::Result<()> {
    let client = admin_client()?;
    let base = url.trim_end_matches('/');
    let query = format!("repo={}&type={}&revision={}", urlencode(repo), urlencode(repo_type), urlencode(revision));
    if unpin_it {
        let response = client.delete(format!("{base}/_hfm/pins?{query}")).send().await.with_context(|| format!("asking {url}"))?;
        read_json(response, url).await?;
        println!("unpinned {repo_type} {repo}");
        return Ok(());
    }
    let response = client.post(format!("{base}/_hfm/pins?{query}")).send().await.with_context(|| format!("asking {url}"))?;
    let pinned = read_json(response, url).await?;
    let commit = pinned["commit"].as_str().unwrap_or("?").to_owned();
    let (files, bytes) = (pinned["files"].as_u64().unwrap_or(0), pinned["bytes"].as_u64().unwrap_or(0));
    println!("pinned {repo_type} {repo}@{revision} = {commit}: {files} files, {}", human_bytes(bytes as f64));
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let status = read_json(client.get(format!("{base}/_hfm/pins")).send().await?, url).await?;
        let live = live_nodes(&client, base).await.unwrap_or_default();
        let pin = status["pins"]
            .as_array()
            .and_then(|pins| pins.iter().find(|pin| pin["repo"] == repo && pin["type"] == repo_type).cloned())
            .context("the pin is gone (unpinned meanwhile?)")?;
        let nodes = pin["nodes"].as_object().cloned().unwrap_or_default();
        let watched: Vec<(&String, &Value)> = nodes.iter().filter(|(name, _)| live.is_empty() || live.contains(*name)).collect();
        let held_bytes: u64 = watched.iter().map(|(_, node)| node["bytes"].as_u64().unwrap_or(0)).sum();
        let wanted_bytes = bytes.saturating_mul(watched.len() as u64).max(1);
        let complete = watched.iter().filter(|(_, node)| node["complete"] == true).count();
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let rate = held_bytes as f64 / elapsed;
        let eta = if rate > 0.0 { format!("{:.0}s", (wanted_bytes.saturating_sub(held_bytes)) as f64 / rate) } else { "?".into() };
        let line = format!(
            "{complete}/{} nodes complete, {} of {} ({:.0}%), {}/s, ETA {eta}",
            watched.len(),
            human_bytes(held_bytes as f64),
            human_bytes(wanted_bytes as f64),
            100.0 * held_bytes as f64 / wanted_bytes as f64,
            human_bytes(rate)
        );
        let done = !watched.is_empty() && complete == watched.len();
        if terminal {
            print!("\r{line}\x1b[K");
            use std::io::Write;
            std::io::stdout().flush()?;
        } else if done || last_line.elapsed() >= Duration::from_secs(5) {
            println!("{line}");
            last_line = Instant::now();
        }
        if done {
            if terminal {
                println!();
            }
            println!("{repo_type} {repo}@{commit} is on every live node");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn live_nodes(client: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let status = read_json(client.get(format!("{base}/_hfm/status")).send().await?, base).await?;
    Ok(crate::status::live_members(&status))
}

/// `hf-mirror pins`: every pin with its commit and per-node completeness.
pub async fn print_pins(url: &str) -> anyhow::Result<()> {
    let client = admin_client()?;
    let base = url.trim_end_matches('/');
    let status = read_json(client.get(format!("{base}/_hfm/pins")).send().await.with_context(|| format!("asking {url}"))?, url).await?;
    let pins = status["pins"].as_array().cloned().unwrap_or_default();
    if pins.is_empty() {
        println!("no pins");
    }
    for pin in pins {
        println!(
            "{} {}@{} = {} ({} files, {})",
            pin["type"].as_str().unwrap_or("?"),
            pin["repo"].as_str().unwrap_or("?"),
            pin["revision"].as_str().unwrap_or("?"),
            pin["commit"].as_str().unwrap_or("?"),
            pin["files"].as_u64().unwrap_or(0),
            human_bytes(pin["bytes"].as_u64().unwrap_or(0) as f64)
        );
        for (node, held) in pin["nodes"].as_object().into_iter().flatten() {
            println!(
                "  {node:<8} {:>6}/{} files  {}{}",
                held["files"].as_u64().unwrap_or(0),
                pin["files"].as_u64().unwrap_or(0),
                human_bytes(held["bytes"].as_u64().unwrap_or(0) as f64),
                if held["complete"] == true { "  complete" } else { "" }
            );
        }
    }
    Ok(())
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_targets_are_parsed_strictly() {
        let (repo, revision) = pin_target("repo=org%2Fmodel&type=dataset&revision=v1.0").unwrap();
        assert_eq!((repo.repo_type, repo.repo_id.as_str(), revision.as_str()), (RepoType::Dataset, "org/model", "v1.0"));
        assert_eq!(pin_target("repo=gpt2/x").unwrap().1, "main");
        for hostile in
            ["", "repo=", "repo=a", "repo=a/b/c", "repo=../x", "repo=a/..", "repo=a/b&type=space", "repo=a/b&revision=", "repo=a%00/b"]
        {
            assert!(pin_target(hostile).is_err(), "{hostile:?}");
        }
    }
}
