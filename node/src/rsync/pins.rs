//! Pins: repositories kept whole on every node at one revision (for rsync users and downstream
//! mirrors). A pin is a catalog record; in a cluster every node's replica keeper fills the pinned
//! files and never evicts them (see [`crate::blobs::replicas`]); a node running alone does the same
//! with its [local keeper](crate::blobs::pin_keeper). This module is the node's side of
//! `/_hfm/pins`, the follower of pinned branches, and the count of what each node holds of a commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hfm_cluster::catalog::raft::RaftCatalog;
use hfm_cluster::catalog::{Catalog, EntryKind, PinRecord};
use hfm_cluster::types::RepoKey;
use serde_json::{Value, json};

use crate::blobs::{PinWatch, Replicas};
use crate::common::time::now_ms;
use crate::hub::HubError;
use crate::metadata::{Access, Metadata};
use crate::peers::Peers;
use crate::store::{BlobStore, is_valid_etag};

/// The node's pins; a cheap handle.
#[derive(Clone)]
pub struct Pins {
    inner: Arc<PinsInner>,
}

struct PinsInner {
    node_name: String,
    catalog: Arc<dyn Catalog>,
    metadata: Metadata,
    store: BlobStore,
    /// In a cluster: the topology and who serves; the replica keeper; the Raft catalog (only its
    /// leader follows pinned branches).
    cluster: Option<(Peers, Replicas, RaftCatalog)>,
    pin_watch: PinWatch,
    /// The pins `topology.toml` declares: (repository, revision).
    declared: Vec<(RepoKey, String)>,
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

/// A pin change that the catalog cannot take now (no quorum): 503, try again.
fn catalog_unavailable(message: String) -> HubError {
    HubError::new(http::StatusCode::SERVICE_UNAVAILABLE, "CatalogUnavailable", message, crate::hub::error::ErrorSource::Internal)
}

impl Pins {
    pub fn new(
        node_name: String,
        catalog: Arc<dyn Catalog>,
        metadata: Metadata,
        store: BlobStore,
        cluster: Option<(Peers, Replicas, RaftCatalog)>,
        pin_watch: PinWatch,
        declared: Vec<(RepoKey, String)>,
    ) -> Pins {
        Pins { inner: Arc::new(PinsInner { node_name, catalog, metadata, store, cluster, pin_watch, declared }) }
    }

    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    pub fn watch(&self) -> &PinWatch {
        &self.inner.pin_watch
    }

    fn peers(&self) -> Option<&Peers> {
        self.inner.cluster.as_ref().map(|(peers, ..)| peers)
    }

    /// Tells every keeper that the pins changed: this node's (local keeper, rsync trees) and, in a
    /// cluster, every node's replica keeper.
    async fn pins_changed(&self) {
        self.inner.pin_watch.notify();
        if let Some((_, replicas, _)) = &self.inner.cluster {
            replicas.reconcile_everywhere().await;
        }
    }

    /// Pins `repo` at `revision`: checks it may be stored, resolves the revision to a commit, records the
    /// commit's manifest and the pin, and asks every node to start filling.
    pub async fn pin(&self, repo: &RepoKey, revision: &str) -> Result<Value, HubError> {
        let metadata = &self.inner.metadata;
        let (access, _) = metadata.policy(repo).await?;
        if access != Access::Cacheable {
            return Err(HubError::new(
                http::StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{repo} is not public and ungated; only public repositories are mirrored"),
                crate::hub::error::ErrorSource::Client,
            ));
        }
        let (commit, _) = metadata.resolve_revision(repo, revision).await?;
        let (manifest, _) = metadata.manifest(repo, &commit).await?;
        let record = PinRecord { revision: revision.to_owned(), commit: commit.clone(), pinned_at_ms: now_ms(), next_commit: None };
        self.inner.catalog.put_pin(repo, record).await.map_err(|error| catalog_unavailable(format!("cannot record the pin: {error}")))?;
        self.pins_changed().await;
        let (mut files, mut bytes) = (0u64, 0u64);
        for index in 0..manifest.page_count() {
            let page = manifest.page(index).await.map_err(HubError::internal)?;
            for entry in page.entries().iter().filter(|entry| entry.kind == EntryKind::File) {
                files += 1;
                bytes += entry.size;
            }
        }
        Ok(
            json!({"repo": repo.repo_id, "type": repo.repo_type.as_str(), "revision": revision, "commit": commit, "files": files, "bytes": bytes}),
        )
    }

    /// Removes a pin; its files become ordinary cached blobs again.
    pub async fn unpin(&self, repo: &RepoKey) -> Result<Value, HubError> {
        self.inner.catalog.remove_pin(repo).await.map_err(|error| catalog_unavailable(format!("cannot remove the pin: {error}")))?;
        self.pins_changed().await;
        Ok(json!({"repo": repo.repo_id, "type": repo.repo_type.as_str(), "unpinned": true}))
    }

    /// Counts the storable files of `repo@commit` and what each node holds of them; `None` while the
    /// catalog has no manifest for the commit.
    pub(crate) async fn holdings(&self, repo: &RepoKey, commit: &str) -> Result<Option<Holdings>, HubError> {
        let catalog = &self.inner.catalog;
        let Some(manifest) = catalog.get_manifest(repo, commit).await.map_err(HubError::internal)? else { return Ok(None) };
        let nodes = match self.peers() {
            Some(peers) => peers.topology_names(),
            None => vec![self.inner.node_name.clone()],
        };
        let mut held = Holdings { files: 0, bytes: 0, per_node: nodes.into_iter().map(|name| (name, (0, 0))).collect() };
        for index in 0..manifest.page_count() {
            let page = manifest.page(index).await.map_err(HubError::internal)?;
            for entry in page.entries().iter().filter(|entry| entry.kind == EntryKind::File && is_valid_etag(entry.etag())) {
                held.files += 1;
                held.bytes += entry.size;
                let holders = match self.peers() {
                    Some(_) => catalog
                        .get_replicas(entry.etag())
                        .await
                        .map_err(HubError::internal)?
                        .map(|record| record.holders)
                        .unwrap_or_default(),
                    None if self.inner.store.contains(entry.etag()) => vec![self.inner.node_name.clone()],
                    None => Vec::new(),
                };
                for holder in holders {
                    if let Some(count) = held.per_node.get_mut(&holder) {
                        count.0 += 1;
                        count.1 += entry.size;
                    }
                }
            }
        }
        Ok(Some(held))
    }

    /// Every pin with its commit and, per node, how many of its files (and bytes) the catalog records
    /// there.
    pub async fn status(&self) -> Result<Value, HubError> {
        let mut listed = Vec::new();
        for (repo, pin) in self.inner.catalog.list_pins().await.map_err(HubError::internal)? {
            let held = self.holdings(&repo, &pin.commit).await?;
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
    async fn complete_everywhere(&self, repo: &RepoKey, commit: &str) -> Result<bool, HubError> {
        let Some(held) = self.holdings(repo, commit).await? else { return Ok(false) };
        Ok(match self.peers() {
            Some(peers) => peers.serving_nodes().iter().all(|node| held.complete(node)),
            None => held.complete(&self.inner.node_name),
        })
    }

    /// One round of following pinned branches: a branch that moved upstream gets its new commit as
    /// `next_commit` (filled everywhere by the replica keepers), and the pin switches to it once every
    /// serving node holds all of it. In a cluster only the catalog leader runs it, so one node asks
    /// upstream.
    pub async fn follow_pinned_branches(&self) -> Result<(), HubError> {
        if let Some((_, _, raft)) = &self.inner.cluster {
            let status = raft.status();
            if status.leader != Some(status.id) {
                return Ok(());
            }
        }
        let catalog = &self.inner.catalog;
        // Pins declared in topology.toml are made (or moved to the declared revision) here.
        let existing = catalog.list_pins().await.map_err(HubError::internal)?;
        for (repo, revision) in &self.inner.declared {
            if !existing.iter().any(|(known, pin)| known == repo && pin.revision == *revision) {
                tracing::info!(%repo, %revision, "pinning as topology.toml declares");
                self.pin(repo, revision).await?;
            }
        }
        for (repo, pin) in catalog.list_pins().await.map_err(HubError::internal)? {
            if hfm_cluster::types::is_commit_sha(&pin.revision) {
                continue;
            }
            let (latest, _) = self.inner.metadata.resolve_revision(&repo, &pin.revision).await?;
            let record = if latest == pin.commit {
                if pin.next_commit.is_none() {
                    continue;
                }
                // The branch moved back: drop the half-filled commit.
                PinRecord { next_commit: None, ..pin }
            } else if pin.next_commit.as_deref() == Some(latest.as_str()) {
                if !self.complete_everywhere(&repo, &latest).await? {
                    continue;
                }
                tracing::info!(%repo, revision = %pin.revision, from = %pin.commit, to = %latest, "pinned branch switched to its new commit");
                PinRecord { commit: latest, next_commit: None, ..pin }
            } else {
                self.inner.metadata.manifest(&repo, &latest).await?;
                tracing::info!(%repo, revision = %pin.revision, commit = %latest, "pinned branch moved upstream; filling its new commit");
                PinRecord { next_commit: Some(latest), ..pin }
            };
            catalog.put_pin(&repo, record).await.map_err(|error| catalog_unavailable(error.to_string()))?;
            self.pins_changed().await;
        }
        Ok(())
    }

    /// Makes the pins `topology.toml` declares and follows pinned branches, every `ref_ttl` (at least
    /// every 5 s), until `shutdown`.
    pub fn spawn_follower(&self, ref_ttl: Duration, shutdown: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let pins = self.clone();
        tokio::spawn(async move {
            let interval = ref_ttl.max(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
                if let Err(error) = pins.follow_pinned_branches().await {
                    tracing::warn!(%error, "cannot follow pinned branches now");
                }
            }
        })
    }
}

/// Reads `type` and `repo` (and `revision`) from a pin request's query.
pub fn pin_target(query: &str) -> Result<(RepoKey, String), HubError> {
    let pairs = crate::hub::query::parse_pairs(query);
    let get = |key: &str| pairs.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone());
    let repo_id = get("repo").ok_or_else(|| HubError::bad_request("repo=ORG/NAME is required"))?;
    crate::config::pins::validate_pin(&repo_id, get("type").as_deref().unwrap_or("model"), get("revision").as_deref().unwrap_or("main"))
        .map_err(HubError::bad_request)
}

#[cfg(test)]
mod tests {
    use hfm_cluster::types::RepoType;

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
