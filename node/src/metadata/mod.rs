//! Metadata read through the catalog: repo policy, revision → commit, manifests, repo info and refs
//! listings, each answered from the catalog when it can be and fetched once from upstream when not
//! (once per cluster, through the key's metadata leader), and served stale when upstream is down.
//!
//! # Layout
//!
//! - `read_through`: the pattern, written once ([`read_through::Kind`]).
//! - `kinds`: the five kinds of metadata.
//! - `leader`: asking the metadata leader, and answering peers that ask this node.

mod kinds;
pub mod leader;
mod read_through;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hfm_cluster::catalog::{Catalog, Manifest, PolicyRecord};
use hfm_cluster::types::{RepoKey, RepoType, is_commit_sha};

use self::kinds::{ManifestOf, PolicyOf, RefsListingOf, RepoInfoOf, RevisionOf};
use self::leader::Forwarding;
pub use self::leader::{METADATA_SERVICE, MetadataAnswer, MetadataRequest, MetadataService};
use self::read_through::Flights;
use crate::common::time::now_ms;
use crate::hub::{CacheStatus, HubError};
use crate::peers::Peers;
use crate::upstream::Upstream;

/// The revision key under which the default branch of `/api/{t}s/{repo}` (no revision) is kept.
pub const DEFAULT_REVISION: &str = "@default";

/// Whether a repository's content may be stored and shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Public and not gated: stored, served to anyone.
    Cacheable,
    /// Spaces, private, gated or unknown: forwarded with the caller's token, never stored.
    PassThrough,
}

/// How long mutable metadata is trusted before it is checked upstream again.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// A branch or tag → commit answer, and a refs listing.
    pub ref_ttl: Duration,
    /// "This repo is public and not gated".
    pub policy_ttl: Duration,
}

/// A catalog read that failed is an internal error for the client.
fn catalog_error(error: hfm_cluster::catalog::CatalogError) -> HubError {
    HubError::internal(error)
}

/// The node's metadata; a cheap handle.
#[derive(Clone)]
pub struct Metadata {
    inner: Arc<MetadataInner>,
}

struct MetadataInner {
    catalog: Arc<dyn Catalog>,
    upstream: Upstream,
    /// In a cluster, who leads each key's misses.
    peers: Option<Peers>,
    freshness: Freshness,
    flights: Flights,
}

impl Metadata {
    pub fn new(catalog: Arc<dyn Catalog>, upstream: Upstream, peers: Option<Peers>, freshness: Freshness) -> Metadata {
        Metadata { inner: Arc::new(MetadataInner { catalog, upstream, peers, freshness, flights: Flights::default() }) }
    }

    /// Decides whether a repo may be cached: only when an anonymous upstream repo-info says it is
    /// public and not gated, re-checked every `policy_ttl`. Spaces and kernels always pass through.
    pub async fn policy(&self, repo: &RepoKey) -> Result<(Access, CacheStatus), HubError> {
        let (record, status) = self.policy_record(repo, Forwarding::AskCluster).await?;
        Ok((if record.cacheable { Access::Cacheable } else { Access::PassThrough }, status))
    }

    async fn policy_record(&self, repo: &RepoKey, forwarding: Forwarding) -> Result<(PolicyRecord, CacheStatus), HubError> {
        if matches!(repo.repo_type, RepoType::Space | RepoType::Kernel) {
            let record = PolicyRecord { cacheable: false, reason: format!("{}s pass through", repo.repo_type), checked_at_ms: now_ms() };
            return Ok((record, CacheStatus::Miss));
        }
        self.read_through(PolicyOf { repo: repo.clone() }, self.inner.freshness.policy_ttl, forwarding).await
    }

    /// Resolves a revision to a commit: a full sha is final; a branch or tag comes from the catalog
    /// while fresh, is revalidated upstream when stale, and is served stale when upstream is down.
    pub async fn resolve_revision(&self, repo: &RepoKey, revision: &str) -> Result<(String, CacheStatus), HubError> {
        self.resolve_revision_with(repo, revision, Forwarding::AskCluster).await
    }

    async fn resolve_revision_with(
        &self,
        repo: &RepoKey,
        revision: &str,
        forwarding: Forwarding,
    ) -> Result<(String, CacheStatus), HubError> {
        if is_commit_sha(revision) {
            return Ok((revision.to_owned(), CacheStatus::Hit));
        }
        let kind = RevisionOf { repo: repo.clone(), revision: revision.to_owned() };
        self.read_through(kind, self.inner.freshness.ref_ttl, forwarding).await
    }

    /// Returns the full file list of a commit, fetching every tree page once when it is not known.
    pub async fn manifest(&self, repo: &RepoKey, commit: &str) -> Result<(Arc<Manifest>, CacheStatus), HubError> {
        self.manifest_with(repo, commit, Forwarding::AskCluster).await
    }

    async fn manifest_with(&self, repo: &RepoKey, commit: &str, forwarding: Forwarding) -> Result<(Arc<Manifest>, CacheStatus), HubError> {
        debug_assert!(is_commit_sha(commit));
        self.read_through(ManifestOf { repo: repo.clone(), commit: commit.to_owned() }, Duration::MAX, forwarding).await
    }

    /// Returns the repo-info JSON of a revision (`None`: the default branch) for one query variant,
    /// with the commit it resolved to.
    pub async fn repo_info(&self, repo: &RepoKey, revision: Option<&str>, variant: &str) -> Result<(Bytes, String, CacheStatus), HubError> {
        let (commit, resolved) = self.resolve_revision(repo, revision.unwrap_or(DEFAULT_REVISION)).await?;
        let kind = RepoInfoOf { repo: repo.clone(), commit: commit.clone(), variant: variant.to_owned() };
        let (body, status) = self.read_through(kind, Duration::MAX, Forwarding::AskCluster).await?;
        Ok((body, commit, if status == CacheStatus::Hit { resolved } else { status }))
    }

    /// Returns the refs listing of a repo; mutable, so cached under the ref TTL and served stale
    /// when upstream is down.
    pub async fn refs_listing(&self, repo: &RepoKey, include_pull_requests: bool) -> Result<(Bytes, CacheStatus), HubError> {
        let kind = RefsListingOf { repo: repo.clone(), include_pull_requests };
        self.read_through(kind, self.inner.freshness.ref_ttl, Forwarding::AskCluster).await
    }
}
