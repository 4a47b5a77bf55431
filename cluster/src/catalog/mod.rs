//! The catalog: what the mirror knows about the Hub, keyed by repository, revision and commit.
//!
//! Records are split by mutability, as design.md's identity table says: refs, repo policy and cached
//! documents are mutable and carry the time they were last checked upstream; manifests and repo info
//! are keyed by commit and never change once written.
//!
//! The node only talks to the [`Catalog`] trait. [`LocalCatalog`] implements it on one node's disk
//! (redb); the Raft catalog of the cluster will implement the same trait.

mod local;
mod manifest_view;
pub mod raft;
mod records;
mod reopening;

pub use local::LocalCatalog;
pub use manifest_view::{FoundEntry, ListStart, MANIFEST_PAGE_ENTRIES, ManifestHead, ManifestPages, ManifestView};
pub use records::{
    DocumentRecord, EntryKind, LfsPointer, Manifest, ManifestEntry, PinRecord, PolicyRecord, RefRecord, ReplicaRecord, RevisionFindings,
};

use crate::types::RepoKey;

/// The failure of a catalog operation.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The embedded store failed (I/O, corruption, a full disk).
    #[error("catalog storage error: {0}")]
    Storage(String),
    /// A stored record could not be decoded; the record is treated as absent by callers that can
    /// refetch it.
    #[error("catalog record is undecodable: {0}")]
    Codec(String),
    /// The catalog task is gone (shutdown in progress).
    #[error("catalog is shut down")]
    Closed,
    /// The replicated catalog cannot accept a write now (no leader, no quorum, a timeout). Callers
    /// serve what they fetched without recording it.
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
}

impl From<reopening::Unusable> for CatalogError {
    fn from(unusable: reopening::Unusable) -> CatalogError {
        CatalogError::Storage(unusable.to_string())
    }
}

/// The interface the node reads and writes the catalog through.
///
/// Reads are local and may lag behind other nodes; that is fine for a cache. Writes are durable
/// when they return.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Whether this node's catalog records writes now: false while its storage is failing (a full
    /// disk) and for a short while after. A node that cannot record should not answer for the
    /// cluster what it cannot keep.
    fn can_record(&self) -> bool {
        true
    }

    /// A number that changes whenever a ref or the policy of `repo` may have changed (a write, or
    /// tables replaced by a snapshot); it may also change for other repositories' writes. What was
    /// concluded from a repository's refs and policy stays true while it does not change (and the
    /// records stay fresh). `None`: this catalog cannot tell, so nothing may be concluded once.
    fn records_generation(&self, _repo: &RepoKey) -> Option<u64> {
        None
    }

    /// Returns the commit a branch or tag pointed to when it was last checked.
    async fn get_ref(&self, repo: &RepoKey, revision: &str) -> Result<Option<RefRecord>, CatalogError>;
    async fn put_ref(&self, repo: &RepoKey, revision: &str, record: RefRecord) -> Result<(), CatalogError>;

    /// Returns the recursive file list of a commit: whole when small, else read a page at a time
    /// (see [`ManifestView`]). Recording it returns how it is kept.
    async fn get_manifest(&self, repo: &RepoKey, commit: &str) -> Result<Option<ManifestView>, CatalogError>;
    async fn put_manifest(&self, repo: &RepoKey, commit: &str, manifest: Manifest) -> Result<ManifestView, CatalogError>;

    /// Returns the repo-info JSON of a commit, for one variant of the query (`blobs=true`, …).
    async fn get_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str) -> Result<Option<Vec<u8>>, CatalogError>;
    async fn put_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str, body: Vec<u8>) -> Result<(), CatalogError>;

    /// Records everything in `findings` about `repo`, as if by `put_repo_info`, `put_ref` and
    /// `put_policy`; a catalog that can make them one write (one transaction on one disk, one sync)
    /// does. The first error is returned; the other writes still happen.
    ///
    /// By default the repo info and the ref are written side by side (in a cluster, proposed together
    /// they share one replication round), then the policy: a node that learns the policy from this
    /// answer asks for the ref next, at its own copy or the ref's metadata leader, and entries are
    /// applied on the other nodes only once a later round tells them the entries were committed.
    /// Written a round before the policy, the ref has been applied everywhere by the time the policy
    /// is answered; written in the same round, it may not be yet, and the ref is fetched again.
    async fn put_revision_findings(&self, repo: &RepoKey, findings: RevisionFindings) -> Result<(), CatalogError> {
        let RevisionFindings { commit, infos, reference, policy } = findings;
        let commit = commit.as_str();
        let infos = futures_util::future::join_all(
            infos.into_iter().map(|(variant, body)| async move { self.put_repo_info(repo, commit, &variant, body).await }),
        );
        let reference = async {
            match reference {
                Some((revision, record)) => self.put_ref(repo, &revision, record).await,
                None => Ok(()),
            }
        };
        let policy = async {
            match policy {
                Some(record) => self.put_policy(repo, record).await,
                None => Ok(()),
            }
        };
        let (infos, reference) = futures_util::join!(infos, reference);
        let policy = policy.await;
        infos.into_iter().chain([reference, policy]).collect()
    }

    /// Returns whether a repository may be stored, and when that was last checked upstream.
    async fn get_policy(&self, repo: &RepoKey) -> Result<Option<PolicyRecord>, CatalogError>;
    async fn put_policy(&self, repo: &RepoKey, record: PolicyRecord) -> Result<(), CatalogError>;

    /// Returns a mutable cached document (a refs listing, …) under a caller-chosen key.
    async fn get_document(&self, key: &str) -> Result<Option<DocumentRecord>, CatalogError>;
    async fn put_document(&self, key: &str, record: DocumentRecord) -> Result<(), CatalogError>;

    /// Returns which nodes hold a verified copy of a blob.
    async fn get_replicas(&self, etag: &str) -> Result<Option<ReplicaRecord>, CatalogError>;
    /// Every blob's replica record, for the periodic catch-up.
    async fn list_replicas(&self) -> Result<Vec<(String, ReplicaRecord)>, CatalogError>;
    /// Records that `node` holds a verified copy of `etag` (of `size` bytes).
    async fn add_replica(&self, etag: &str, node: &str, size: u64) -> Result<(), CatalogError>;
    /// Records that `node` no longer holds `etag` (evicted, found corrupt); the record goes with its
    /// last holder.
    async fn remove_replica(&self, etag: &str, node: &str) -> Result<(), CatalogError>;

    /// Every repository's policy record, for the exported indexes.
    async fn list_policies(&self) -> Result<Vec<(RepoKey, PolicyRecord)>, CatalogError>;
    /// Every resolved branch or tag: (repository, revision, record), for the exported indexes.
    async fn list_refs(&self) -> Result<Vec<(RepoKey, String, RefRecord)>, CatalogError>;
    /// Every commit the catalog holds a manifest of, without decoding the manifests.
    async fn list_manifest_keys(&self) -> Result<Vec<(RepoKey, String)>, CatalogError>;

    /// Every pin: (repository, pin).
    async fn list_pins(&self) -> Result<Vec<(RepoKey, PinRecord)>, CatalogError>;
    /// Pins a repository (one pin per repository; a new one replaces the old).
    async fn put_pin(&self, repo: &RepoKey, record: PinRecord) -> Result<(), CatalogError>;
    async fn remove_pin(&self, repo: &RepoKey) -> Result<(), CatalogError>;
}
