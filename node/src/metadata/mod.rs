//! Metadata read through the catalog: repo policy, revision → commit, manifests, repo info and refs
//! listings, each answered from the catalog when it can be and fetched once from upstream when not
//! (once per cluster, through the key's metadata leader), and served stale when upstream is down.
//!
//! # Layout
//!
//! - `read_through`: the pattern, written once ([`read_through::Kind`]).
//! - `kinds`: the five kinds of metadata.
//! - `leader`: asking the metadata leader, and answering peers that ask this node.
//! - `siblings`: a commit's files as its repo info lists them, so a cold download need not wait
//!   for the tree walk.

mod kinds;
pub mod leader;
mod read_through;
mod siblings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hfm_cluster::catalog::{Catalog, Manifest, ManifestEntry, ManifestView, PolicyRecord};
use hfm_cluster::types::{RepoKey, RepoType, is_commit_sha};

pub use self::kinds::REPO_TOO_LARGE;
use self::kinds::{ManifestOf, PolicyOf, RefsListingOf, RepoInfoOf, RevisionOf};
use self::leader::Forwarding;
pub use self::leader::{METADATA_SERVICE, MetadataAnswer, MetadataRequest, MetadataService};
use self::read_through::Flights;
pub use self::siblings::FILES_VARIANT;
use self::siblings::SiblingFiles;
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

/// How long an answer drawn from a repository's policy and a ref holds (see
/// [`Metadata::freshness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    stamp: u64,
    until_ms: u64,
}

#[cfg(test)]
impl Freshness {
    pub fn for_tests(stamp: u64, until_ms: u64) -> Freshness {
        Freshness { stamp, until_ms }
    }
}

/// How long mutable metadata is trusted, and how much of it one commit may be.
#[derive(Clone, Copy, Debug)]
pub struct MetadataSettings {
    /// A branch or tag → commit answer, and a refs listing.
    pub ref_ttl: Duration,
    /// "This repo is public and not gated".
    pub policy_ttl: Duration,
    /// The most files a commit's manifest may list; a bigger repo is passed through, not cached.
    pub max_manifest_files: usize,
}

/// How many non-cacheable policy answers a node remembers (see [`NegativePolicies`]).
const NEGATIVE_POLICIES: usize = 10_000;
/// How many query variants of one commit's repo info are recorded; more are answered unrecorded.
const VARIANTS_PER_COMMIT: usize = 8;
/// How many commits the variant budget tracks before it starts over.
const VARIANT_BUDGET_COMMITS: usize = 10_000;

/// Non-cacheable policy answers (private, gated, missing repos), kept on this node only, for
/// `policy_ttl`, in a bounded table: recording one per repo name an anonymous client invents would
/// grow the replicated catalog without bound. (A repo that turns private while the catalog says
/// public does get its negative record: see [`kinds::PolicyOf`].)
#[derive(Default)]
struct NegativePolicies {
    entries: Mutex<HashMap<RepoKey, (PolicyRecord, Instant)>>,
}

impl NegativePolicies {
    fn get(&self, repo: &RepoKey, ttl: Duration) -> Option<PolicyRecord> {
        let entries = self.entries.lock().expect("negative policies poisoned");
        entries.get(repo).filter(|(_, at)| at.elapsed() < ttl).map(|(record, _)| record.clone())
    }

    fn put(&self, repo: &RepoKey, record: PolicyRecord, ttl: Duration) {
        let mut entries = self.entries.lock().expect("negative policies poisoned");
        if entries.len() >= NEGATIVE_POLICIES && !entries.contains_key(repo) {
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= NEGATIVE_POLICIES {
                // Every entry is fresh: forget the oldest eighth at once.
                let mut ages: Vec<Instant> = entries.values().map(|(_, at)| *at).collect();
                let cut = (NEGATIVE_POLICIES / 8).min(ages.len() - 1);
                let (_, cutoff, _) = ages.select_nth_unstable(cut);
                let cutoff = *cutoff;
                entries.retain(|_, (_, at)| *at > cutoff);
            }
        }
        entries.insert(repo.clone(), (record, Instant::now()));
    }

    fn len(&self) -> usize {
        self.entries.lock().expect("negative policies poisoned").len()
    }
}

/// Which repo-info variants each recent commit has recorded, so a client inventing query strings
/// cannot make the catalog hold more than [`VARIANTS_PER_COMMIT`] of them per commit.
#[derive(Default)]
struct VariantBudget {
    recorded: Mutex<HashMap<(RepoKey, String), Vec<String>>>,
}

impl VariantBudget {
    /// Whether `variant` of `commit` may be recorded (it already was, or there is room).
    fn allows(&self, repo: &RepoKey, commit: &str, variant: &str) -> bool {
        let mut recorded = self.recorded.lock().expect("variant budget poisoned");
        if recorded.len() >= VARIANT_BUDGET_COMMITS {
            recorded.clear();
        }
        let variants = recorded.entry((repo.clone(), commit.to_owned())).or_default();
        if variants.iter().any(|known| known == variant) {
            return true;
        }
        if variants.len() >= VARIANTS_PER_COMMIT {
            return false;
        }
        variants.push(variant.to_owned());
        true
    }
}

/// Exports the state anonymous traffic can grow, to show it stays bounded.
impl crate::telemetry::MetricSource for Metadata {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        samples.gauge(
            "hfm_negative_policies_remembered",
            "Repos upstream did not show anonymously, remembered on this node only (bounded, expiring)",
            self.inner.negative_policies.len() as i64,
        )?;
        samples.gauge(
            "hfm_metadata_fetches_in_progress",
            "Metadata fetches from upstream or a peer running now",
            self.inner.flights.in_progress() as i64,
        )
    }
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
    settings: MetadataSettings,
    flights: Flights,
    negative_policies: NegativePolicies,
    variant_budget: VariantBudget,
    sibling_files: SiblingFiles,
}

impl Metadata {
    pub fn new(catalog: Arc<dyn Catalog>, upstream: Upstream, peers: Option<Peers>, settings: MetadataSettings) -> Metadata {
        Metadata {
            inner: Arc::new(MetadataInner {
                catalog,
                upstream,
                peers,
                settings,
                flights: Flights::default(),
                negative_policies: NegativePolicies::default(),
                variant_budget: VariantBudget::default(),
                sibling_files: SiblingFiles::default(),
            }),
        }
    }

    /// Decides whether a repo may be cached: only when an anonymous upstream repo-info says it is
    /// public and not gated, re-checked every `policy_ttl`. Spaces and kernels always pass through.
    pub async fn policy(&self, repo: &RepoKey) -> Result<(Access, CacheStatus), HubError> {
        self.policy_at(repo, None).await
    }

    /// [`Metadata::policy`] for a request that names `revision`: when upstream must be asked, the
    /// revision's repo info is asked for, which also records the revision's commit (one round trip
    /// for both on a cold request).
    pub async fn policy_at(&self, repo: &RepoKey, revision: Option<&str>) -> Result<(Access, CacheStatus), HubError> {
        let (record, status) = self.policy_record(repo, revision, Forwarding::AskCluster).await?;
        Ok((if record.cacheable { Access::Cacheable } else { Access::PassThrough }, status))
    }

    async fn policy_record(
        &self,
        repo: &RepoKey,
        revision: Option<&str>,
        forwarding: Forwarding,
    ) -> Result<(PolicyRecord, CacheStatus), HubError> {
        if matches!(repo.repo_type, RepoType::Space | RepoType::Kernel) {
            let record = PolicyRecord { cacheable: false, reason: format!("{}s pass through", repo.repo_type), checked_at_ms: now_ms() };
            return Ok((record, CacheStatus::Miss));
        }
        let ttl = self.inner.settings.policy_ttl;
        if let Some(record) = self.inner.negative_policies.get(repo, ttl) {
            return Ok((record, CacheStatus::Hit));
        }
        let kind = PolicyOf { repo: repo.clone(), revision: revision.map(str::to_owned) };
        let (record, status) = self.read_through(kind, ttl, forwarding).await?;
        if !record.cacheable {
            self.inner.negative_policies.put(repo, record.clone(), ttl);
        }
        Ok((record, status))
    }

    /// How many non-cacheable policy answers this node remembers (bounded).
    pub fn remembered_negative_policies(&self) -> usize {
        self.inner.negative_policies.len()
    }

    /// The stamp to take before reading what a conclusion about `repo` rests on (its policy and
    /// refs), for [`Metadata::freshness`]; `None`: the catalog cannot tell when they change.
    pub fn records_stamp(&self, repo: &RepoKey) -> Option<u64> {
        self.inner.catalog.records_generation(repo)
    }

    /// How long an answer drawn from `repo`'s policy (cacheable) and `revision`'s commit, read after
    /// `stamp` was taken, stays the answer these reads would give: until the policy or the ref stops
    /// being fresh, and while no write touches them. `None`: not cacheable, not fresh, or written
    /// since `stamp`. A commit's manifest never changes, so what it says about a path needs no stamp.
    pub async fn freshness(&self, repo: &RepoKey, revision: &str, stamp: u64) -> Option<Freshness> {
        if matches!(repo.repo_type, RepoType::Space | RepoType::Kernel) {
            return None;
        }
        let (catalog, settings, now) = (self.inner.catalog.as_ref(), &self.inner.settings, now_ms());
        let policy = catalog.get_policy(repo).await.ok()??;
        if !policy.cacheable || self.inner.negative_policies.get(repo, settings.policy_ttl).is_some() {
            return None;
        }
        let mut until_ms = read_through::fresh_until(policy.checked_at_ms, now, settings.policy_ttl)?;
        if !is_commit_sha(revision) {
            let record = catalog.get_ref(repo, revision).await.ok()??;
            until_ms = until_ms.min(read_through::fresh_until(record.checked_at_ms, now, settings.ref_ttl)?);
        }
        (catalog.records_generation(repo)? == stamp).then_some(Freshness { stamp, until_ms })
    }

    /// Whether what [`Metadata::freshness`] stamped still holds.
    pub fn still_fresh(&self, repo: &RepoKey, freshness: &Freshness) -> bool {
        now_ms() < freshness.until_ms && self.inner.catalog.records_generation(repo) == Some(freshness.stamp)
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
        self.read_through(kind, self.inner.settings.ref_ttl, forwarding).await
    }

    /// Returns the full file list of a commit, fetching every tree page once when it is not known.
    pub async fn manifest(&self, repo: &RepoKey, commit: &str) -> Result<(ManifestView, CacheStatus), HubError> {
        self.manifest_with(repo, commit, Forwarding::AskCluster).await
    }

    /// The entry at `path` of `commit` (`None`: there is none). From the commit's manifest when the
    /// catalog holds it; else from the files its repo info lists — asked with `blobs=true` by the
    /// policy or ref check that resolved the commit, so a cold download does not wait for the tree
    /// walk; else (a path the siblings lack, or no usable siblings) from the manifest, fetched now.
    pub async fn entry(&self, repo: &RepoKey, commit: &str, path: &str) -> Result<(Option<ManifestEntry>, CacheStatus), HubError> {
        let (manifest, status) = match self.inner.catalog.get_manifest(repo, commit).await.map_err(catalog_error)? {
            Some(manifest) => (manifest, CacheStatus::Hit),
            None => {
                if let Some(entry) = self.sibling_files(repo, commit).await.and_then(|files| files.find(path).cloned()) {
                    return Ok((Some(entry), CacheStatus::Hit));
                }
                self.manifest(repo, commit).await?
            }
        };
        let entry = manifest.find(path).await.map_err(HubError::internal)?;
        Ok((entry.map(|found| (*found).clone()), status))
    }

    /// The files `commit`'s recorded `blobs=true` repo info lists, parsed once and kept in a
    /// bounded index (`None`: not recorded here, or not usable in place of the manifest).
    async fn sibling_files(&self, repo: &RepoKey, commit: &str) -> Option<Arc<Manifest>> {
        if let Some(known) = self.inner.sibling_files.get(repo, commit) {
            return known;
        }
        let body = self.inner.catalog.get_repo_info(repo, commit, FILES_VARIANT).await.ok()??;
        let files = siblings::files_of(&body, self.inner.settings.max_manifest_files).map(Arc::new);
        self.inner.sibling_files.insert(repo, commit, files.clone());
        files
    }

    async fn manifest_with(&self, repo: &RepoKey, commit: &str, forwarding: Forwarding) -> Result<(ManifestView, CacheStatus), HubError> {
        debug_assert!(is_commit_sha(commit));
        let max_files = self.inner.settings.max_manifest_files;
        let fetched =
            self.read_through(ManifestOf { repo: repo.clone(), commit: commit.to_owned(), max_files }, Duration::MAX, forwarding).await;
        if let Err(error) = &fetched
            && error.code.as_deref() == Some(REPO_TOO_LARGE)
        {
            // From now on the repo passes through: its pages are not walked again for every request.
            let record = PolicyRecord { cacheable: false, reason: format!("more than {max_files} files"), checked_at_ms: now_ms() };
            if let Err(catalog_error) = self.inner.catalog.put_policy(repo, record.clone()).await {
                tracing::warn!(%repo, %catalog_error, "cannot record that the repo is too large to cache");
            }
            self.inner.negative_policies.put(repo, record, self.inner.settings.policy_ttl);
        }
        fetched
    }

    /// Returns the repo-info JSON of a revision (`None`: the default branch) for one query variant,
    /// with the commit it resolved to.
    pub async fn repo_info(&self, repo: &RepoKey, revision: Option<&str>, variant: &str) -> Result<(Bytes, String, CacheStatus), HubError> {
        let (commit, resolved) = self.resolve_revision(repo, revision.unwrap_or(DEFAULT_REVISION)).await?;
        let record = variant.is_empty() || self.inner.variant_budget.allows(repo, &commit, variant);
        let kind = RepoInfoOf { repo: repo.clone(), commit: commit.clone(), variant: variant.to_owned(), record };
        let (body, status) = self.read_through(kind, Duration::MAX, Forwarding::AskCluster).await?;
        Ok((body, commit, if status == CacheStatus::Hit { resolved } else { status }))
    }

    /// Returns the refs listing of a repo; mutable, so cached under the ref TTL and served stale
    /// when upstream is down.
    pub async fn refs_listing(&self, repo: &RepoKey, include_pull_requests: bool) -> Result<(Bytes, CacheStatus), HubError> {
        let kind = RefsListingOf { repo: repo.clone(), include_pull_requests };
        self.read_through(kind, self.inner.settings.ref_ttl, Forwarding::AskCluster).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use hfm_cluster::catalog::{EntryKind, LocalCatalog};

    use super::*;

    /// An upstream that knows one public repo, `org/public`, until `gone` is set; every other name
    /// is 404.
    async fn upstream(gone: Arc<AtomicBool>) -> String {
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let gone = gone.clone();
            async move {
                let public = request.uri().path() == "/api/models/org/public" && !gone.load(Ordering::SeqCst);
                if public {
                    let body = serde_json::json!({"id": "org/public", "sha": "a".repeat(40), "private": false, "gated": false});
                    (http::StatusCode::OK, [("content-type", "application/json")], body.to_string())
                } else {
                    (http::StatusCode::NOT_FOUND, [("content-type", "application/json")], r#"{"error":"Repository not found"}"#.to_owned())
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn metadata(directory: &std::path::Path, upstream_url: &str, policy_ttl: Duration) -> (Metadata, Arc<dyn Catalog>) {
        let catalog: Arc<dyn Catalog> = Arc::new(LocalCatalog::open(&directory.join("catalog.redb")).unwrap());
        let settings = MetadataSettings { ref_ttl: Duration::from_secs(60), policy_ttl, max_manifest_files: 1000 };
        (Metadata::new(catalog.clone(), Upstream::new(upstream_url).unwrap(), None, settings), catalog)
    }

    #[tokio::test]
    async fn a_conclusion_holds_while_its_policy_and_ref_are_fresh_and_unwritten() {
        use hfm_cluster::catalog::RefRecord;
        let directory = tempfile::tempdir().unwrap();
        let (metadata, catalog) = metadata(directory.path(), "http://127.0.0.1:9", Duration::from_secs(600));
        let repo = RepoKey::new(RepoType::Model, "org/model");
        let now = now_ms();
        let policy = |cacheable: bool, checked_at_ms: u64| PolicyRecord { cacheable, reason: String::new(), checked_at_ms };
        let reference = |commit: char, checked_at_ms: u64| RefRecord { commit: commit.to_string().repeat(40), checked_at_ms };
        let stamp = metadata.records_stamp(&repo).unwrap();
        assert_eq!(metadata.freshness(&repo, "main", stamp).await, None, "no policy recorded");
        catalog.put_policy(&repo, policy(true, now)).await.unwrap();
        catalog.put_ref(&repo, "main", reference('a', now - 10_000)).await.unwrap();
        assert_eq!(metadata.freshness(&repo, "main", stamp).await, None, "written since the stamp");
        let stamp = metadata.records_stamp(&repo).unwrap();
        let fresh = metadata.freshness(&repo, "main", stamp).await.expect("fresh and cacheable");
        // The ref (60 s TTL, checked 10 s ago) expires before the policy (600 s).
        assert_eq!(fresh.until_ms, now - 10_000 + 60_000);
        assert!(metadata.still_fresh(&repo, &fresh));
        let by_commit = metadata.freshness(&repo, &"b".repeat(40), stamp).await.unwrap();
        assert_eq!(by_commit.until_ms, now + 600_000, "a commit needs no ref");
        let mut touched = 0;
        for index in 0..50 {
            let before = metadata.records_stamp(&repo);
            let unrelated = RepoKey::new(RepoType::Model, format!("org/unrelated-{index}"));
            catalog.put_policy(&unrelated, policy(true, now)).await.unwrap();
            touched += usize::from(metadata.records_stamp(&repo) != before);
        }
        assert!(touched <= 3, "writes of other repositories leave a conclusion standing (but for a rare shared group): {touched}");
        catalog.put_ref(&repo, "main", reference('b', now)).await.unwrap();
        assert!(!metadata.still_fresh(&repo, &fresh), "a ref written ends it");
        assert!(!metadata.still_fresh(&repo, &Freshness { until_ms: now_ms(), ..fresh }), "so does its time");
        let stamp = metadata.records_stamp(&repo).unwrap();
        catalog.put_policy(&repo, policy(false, now)).await.unwrap();
        assert_eq!(metadata.freshness(&repo, "main", metadata.records_stamp(&repo).unwrap()).await, None, "not cacheable");
        assert_eq!(metadata.freshness(&repo, "main", stamp).await, None);
        catalog.put_policy(&repo, policy(true, now - 600_000)).await.unwrap();
        assert_eq!(metadata.freshness(&repo, "main", metadata.records_stamp(&repo).unwrap()).await, None, "a stale policy");
        catalog.put_policy(&repo, policy(true, now + 60_000)).await.unwrap();
        assert_eq!(metadata.freshness(&repo, "main", metadata.records_stamp(&repo).unwrap()).await, None, "checked in the future");
        let space = RepoKey::new(RepoType::Space, "org/space");
        catalog.put_policy(&space, policy(true, now)).await.unwrap();
        assert_eq!(metadata.freshness(&space, "main", metadata.records_stamp(&space).unwrap()).await, None, "spaces pass through");
    }

    #[tokio::test]
    async fn invented_repo_names_leave_nothing_in_the_catalog() {
        let directory = tempfile::tempdir().unwrap();
        let url = upstream(Arc::default()).await;
        let (metadata, catalog) = metadata(directory.path(), &url, Duration::from_secs(600));
        for index in 0..50 {
            let repo = RepoKey::new(RepoType::Model, format!("nobody/invented-{index}"));
            assert_eq!(metadata.policy(&repo).await.unwrap().0, Access::PassThrough);
            assert!(catalog.get_policy(&repo).await.unwrap().is_none(), "no replicated record for a repo that does not exist");
        }
        assert_eq!(catalog.list_policies().await.unwrap().len(), 0);
        assert_eq!(metadata.remembered_negative_policies(), 50);
        // Asked again within the TTL, the node answers from memory.
        let repo = RepoKey::new(RepoType::Model, "nobody/invented-0");
        assert_eq!(metadata.policy(&repo).await.unwrap(), (Access::PassThrough, CacheStatus::Hit));
    }

    #[tokio::test]
    async fn a_repo_that_turns_private_replaces_its_positive_record() {
        let directory = tempfile::tempdir().unwrap();
        let gone = Arc::new(AtomicBool::new(false));
        let url = upstream(gone.clone()).await;
        let (metadata, catalog) = metadata(directory.path(), &url, Duration::ZERO);
        let repo = RepoKey::new(RepoType::Model, "org/public");
        assert_eq!(metadata.policy(&repo).await.unwrap().0, Access::Cacheable);
        assert!(catalog.get_policy(&repo).await.unwrap().unwrap().cacheable);
        gone.store(true, Ordering::SeqCst);
        assert_eq!(metadata.policy(&repo).await.unwrap().0, Access::PassThrough);
        let record = catalog.get_policy(&repo).await.unwrap().unwrap();
        assert!(!record.cacheable, "the positive record must not outlive the repo's publicity: {record:?}");
    }

    /// An upstream with `org/public` (branch `main`: `config.json` and `sub/model.bin`), `org/gated`
    /// and the private `org/secret`, answering as the Hub does (hub-api.md §4, §5, §7), which records
    /// the paths and queries it was asked.
    async fn hub_like_upstream(asked: Arc<std::sync::Mutex<Vec<String>>>) -> String {
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let asked = asked.clone();
            async move {
                let path = request.uri().path().to_owned();
                asked.lock().unwrap().push(request.uri().path_and_query().unwrap().to_string());
                let blobs = request.uri().query() == Some("blobs=true");
                let info = |id: &str, gated: serde_json::Value| {
                    let siblings = if blobs {
                        serde_json::json!([{"rfilename": "config.json", "blobId": "1".repeat(40), "size": 42},
                            {"rfilename": "sub/model.bin", "blobId": "2".repeat(40), "size": 9,
                             "lfs": {"sha256": "3".repeat(64), "size": 9, "pointerSize": 130}}])
                    } else {
                        serde_json::json!([{"rfilename": "config.json"}, {"rfilename": "sub/model.bin"}])
                    };
                    let body = serde_json::json!({"id": id, "sha": "a".repeat(40), "private": false, "gated": gated, "siblings": siblings});
                    (http::StatusCode::OK, [("x-error-code", ""), ("content-type", "application/json")], body.to_string())
                };
                if path == format!("/api/models/org/public/tree/{}", "a".repeat(40)) {
                    let tree = serde_json::json!([
                        {"type": "file", "oid": "1".repeat(40), "size": 42, "path": "config.json"},
                        {"type": "directory", "oid": "4".repeat(40), "size": 0, "path": "sub"},
                        {"type": "file", "oid": "2".repeat(40), "size": 9, "path": "sub/model.bin",
                         "lfs": {"oid": "3".repeat(64), "size": 9, "pointerSize": 130}},
                    ]);
                    return (http::StatusCode::OK, [("x-error-code", ""), ("content-type", "application/json")], tree.to_string());
                }
                let refused = |status: u16, code: &'static str| {
                    let status = http::StatusCode::from_u16(status).unwrap();
                    (status, [("x-error-code", code), ("content-type", "application/json")], r#"{"error":"no"}"#.to_owned())
                };
                match path.as_str() {
                    "/api/models/org/public" | "/api/models/org/public/revision/main" => info("org/public", false.into()),
                    "/api/models/org/gated" | "/api/models/org/gated/revision/main" => info("org/gated", "auto".into()),
                    _ if path.starts_with("/api/models/org/public/revision/") => refused(404, "RevisionNotFound"),
                    _ => refused(401, "RepoNotFound"),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    /// The paths (and queries) an upstream was asked, in order.
    type Asked = Arc<std::sync::Mutex<Vec<String>>>;

    /// Those asked since the last call.
    fn take_asked(asked: &Asked) -> Vec<String> {
        std::mem::take(&mut *asked.lock().unwrap())
    }

    /// Metadata over a fresh catalog in `directory`, reading through [`hub_like_upstream`].
    async fn hub_like_metadata(directory: &std::path::Path) -> (Metadata, Arc<dyn Catalog>, Asked, String) {
        let asked = Asked::default();
        let url = hub_like_upstream(asked.clone()).await;
        let (metadata, catalog) = metadata(directory, &url, Duration::from_secs(600));
        (metadata, catalog, asked, url)
    }

    #[tokio::test]
    async fn a_request_naming_a_revision_learns_the_policy_and_the_ref_in_one_upstream_request() {
        let directory = tempfile::tempdir().unwrap();
        let (metadata, catalog, asked, url) = hub_like_metadata(directory.path()).await;
        let taken = || take_asked(&asked);

        let public = RepoKey::new(RepoType::Model, "org/public");
        assert_eq!(metadata.policy_at(&public, Some("main")).await.unwrap(), (Access::Cacheable, CacheStatus::Miss));
        assert_eq!(metadata.resolve_revision(&public, "main").await.unwrap(), ("a".repeat(40), CacheStatus::Hit));
        assert_eq!(taken(), ["/api/models/org/public/revision/main?blobs=true"], "one request for both");
        assert!(catalog.get_repo_info(&public, &"a".repeat(40), "").await.unwrap().is_some(), "the commit's repo info is kept");

        // An invented branch says nothing about the repo: it is asked for itself, and stays cacheable.
        let directory = tempfile::tempdir().unwrap();
        let (metadata, catalog) = self::metadata(directory.path(), &url, Duration::from_secs(600));
        assert_eq!(metadata.policy_at(&public, Some("no-such-branch")).await.unwrap().0, Access::Cacheable);
        assert_eq!(taken(), ["/api/models/org/public/revision/no-such-branch?blobs=true", "/api/models/org/public?blobs=true"]);

        // Private and gated repos are decided by the revision's answer alone, and nothing is kept.
        let (secret, gated) = (RepoKey::new(RepoType::Model, "org/secret"), RepoKey::new(RepoType::Model, "org/gated"));
        assert_eq!(metadata.policy_at(&secret, Some("main")).await.unwrap().0, Access::PassThrough);
        assert_eq!(metadata.policy_at(&gated, Some("main")).await.unwrap().0, Access::PassThrough);
        assert_eq!(taken(), ["/api/models/org/secret/revision/main?blobs=true", "/api/models/org/gated/revision/main?blobs=true"]);
        assert!(catalog.get_ref(&gated, "main").await.unwrap().is_none(), "no ref of a gated repo is recorded");
        assert!(catalog.get_repo_info(&gated, &"a".repeat(40), "").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_cold_file_is_found_in_the_policy_answer_without_walking_the_tree() {
        let directory = tempfile::tempdir().unwrap();
        let (metadata, _catalog, asked, _url) = hub_like_metadata(directory.path()).await;
        let taken = || take_asked(&asked);
        let (public, commit) = (RepoKey::new(RepoType::Model, "org/public"), "a".repeat(40));

        assert_eq!(metadata.policy_at(&public, Some("main")).await.unwrap(), (Access::Cacheable, CacheStatus::Miss));
        assert_eq!(taken(), ["/api/models/org/public/revision/main?blobs=true"]);
        let (entry, status) = metadata.entry(&public, &commit, "sub/model.bin").await.unwrap();
        let entry = entry.expect("listed by the siblings");
        assert_eq!((entry.kind, entry.etag(), entry.size, status), (EntryKind::File, "3".repeat(64).as_str(), 9, CacheStatus::Hit));
        assert!(taken().is_empty(), "no tree walk before a cold file's bytes");

        // Both answers upstream gives are kept: the plain one lists names only, as upstream's does.
        let (plain, _, status) = metadata.repo_info(&public, Some("main"), "").await.unwrap();
        let plain: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!((plain["siblings"][1].clone(), status), (serde_json::json!({"rfilename": "sub/model.bin"}), CacheStatus::Hit));
        let (with_blobs, _, status) = metadata.repo_info(&public, Some("main"), FILES_VARIANT).await.unwrap();
        let with_blobs: serde_json::Value = serde_json::from_slice(&with_blobs).unwrap();
        assert_eq!((with_blobs["siblings"][0]["blobId"].as_str(), status), (Some("1".repeat(40).as_str()), CacheStatus::Hit));
        assert!(taken().is_empty());

        // A path the siblings lack (a directory, or nothing) is the manifest's to answer, walked once.
        let (entry, status) = metadata.entry(&public, &commit, "sub").await.unwrap();
        assert_eq!((entry.map(|entry| entry.kind), status), (Some(EntryKind::Directory), CacheStatus::Miss));
        assert_eq!(taken(), [format!("/api/models/org/public/tree/{commit}?recursive=true&expand=false")]);
        assert_eq!(metadata.entry(&public, &commit, "missing.txt").await.unwrap(), (None, CacheStatus::Hit));
        let (entry, _) = metadata.entry(&public, &commit, "config.json").await.unwrap();
        assert_eq!(entry.unwrap().oid, "1".repeat(40), "the manifest and the siblings agree");
        assert!(taken().is_empty());
    }

    #[tokio::test]
    async fn a_repo_whose_file_list_passes_the_answer_bound_is_asked_again_without_it() {
        let directory = tempfile::tempdir().unwrap();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(request.uri().path_and_query().unwrap().to_string());
                if request.uri().query() == Some("blobs=true") {
                    // Longer than any answer the node reads whole.
                    return (http::StatusCode::OK, vec![b' '; crate::upstream::MAX_API_BODY + 1]);
                }
                let body = serde_json::json!({"id": "org/huge", "sha": "a".repeat(40), "private": false, "gated": false,
                    "siblings": [{"rfilename": "config.json"}]});
                (http::StatusCode::OK, body.to_string().into_bytes())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (metadata, catalog) = metadata(directory.path(), &url, Duration::from_secs(600));
        let huge = RepoKey::new(RepoType::Model, "org/huge");
        assert_eq!(metadata.policy_at(&huge, Some("main")).await.unwrap(), (Access::Cacheable, CacheStatus::Miss));
        assert_eq!(*asked.lock().unwrap(), ["/api/models/org/huge/revision/main?blobs=true", "/api/models/org/huge/revision/main"]);
        let commit = "a".repeat(40);
        assert!(catalog.get_repo_info(&huge, &commit, "").await.unwrap().is_some());
        assert!(catalog.get_repo_info(&huge, &commit, FILES_VARIANT).await.unwrap().is_none(), "no file list to keep");
    }

    /// A catalog whose writes take a while, which counts how many were in flight at once.
    struct SlowWrites {
        inner: LocalCatalog,
        in_flight: std::sync::atomic::AtomicUsize,
        most_at_once: std::sync::atomic::AtomicUsize,
        /// How many writes were in flight when the last policy write began.
        beside_policy: std::sync::atomic::AtomicUsize,
    }

    impl SlowWrites {
        async fn write<T>(&self, write: impl std::future::Future<Output = T>) -> T {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let written = write.await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            written
        }
    }

    type Written = Result<(), hfm_cluster::catalog::CatalogError>;

    #[async_trait::async_trait]
    impl Catalog for SlowWrites {
        async fn get_ref(
            &self,
            repo: &RepoKey,
            revision: &str,
        ) -> Result<Option<hfm_cluster::catalog::RefRecord>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_ref(repo, revision).await
        }
        async fn put_ref(&self, repo: &RepoKey, revision: &str, record: hfm_cluster::catalog::RefRecord) -> Written {
            self.write(self.inner.put_ref(repo, revision, record)).await
        }
        async fn get_manifest(&self, repo: &RepoKey, commit: &str) -> Result<Option<ManifestView>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_manifest(repo, commit).await
        }
        async fn put_manifest(
            &self,
            repo: &RepoKey,
            commit: &str,
            manifest: Manifest,
        ) -> Result<ManifestView, hfm_cluster::catalog::CatalogError> {
            self.write(self.inner.put_manifest(repo, commit, manifest)).await
        }
        async fn get_repo_info(
            &self,
            repo: &RepoKey,
            commit: &str,
            variant: &str,
        ) -> Result<Option<Vec<u8>>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_repo_info(repo, commit, variant).await
        }
        async fn put_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str, body: Vec<u8>) -> Written {
            self.write(self.inner.put_repo_info(repo, commit, variant, body)).await
        }
        async fn get_policy(&self, repo: &RepoKey) -> Result<Option<PolicyRecord>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_policy(repo).await
        }
        async fn put_policy(&self, repo: &RepoKey, record: PolicyRecord) -> Written {
            self.beside_policy.store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
            self.write(self.inner.put_policy(repo, record)).await
        }
        async fn get_document(
            &self,
            key: &str,
        ) -> Result<Option<hfm_cluster::catalog::DocumentRecord>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_document(key).await
        }
        async fn put_document(&self, key: &str, record: hfm_cluster::catalog::DocumentRecord) -> Written {
            self.write(self.inner.put_document(key, record)).await
        }
        async fn get_replicas(
            &self,
            etag: &str,
        ) -> Result<Option<hfm_cluster::catalog::ReplicaRecord>, hfm_cluster::catalog::CatalogError> {
            self.inner.get_replicas(etag).await
        }
        async fn list_replicas(&self) -> Result<Vec<(String, hfm_cluster::catalog::ReplicaRecord)>, hfm_cluster::catalog::CatalogError> {
            self.inner.list_replicas().await
        }
        async fn add_replica(&self, etag: &str, node: &str, size: u64) -> Written {
            self.write(self.inner.add_replica(etag, node, size)).await
        }
        async fn remove_replica(&self, etag: &str, node: &str) -> Written {
            self.write(self.inner.remove_replica(etag, node)).await
        }
        async fn list_policies(&self) -> Result<Vec<(RepoKey, PolicyRecord)>, hfm_cluster::catalog::CatalogError> {
            self.inner.list_policies().await
        }
        async fn list_refs(&self) -> Result<Vec<(RepoKey, String, hfm_cluster::catalog::RefRecord)>, hfm_cluster::catalog::CatalogError> {
            self.inner.list_refs().await
        }
        async fn list_manifest_keys(&self) -> Result<Vec<(RepoKey, String)>, hfm_cluster::catalog::CatalogError> {
            self.inner.list_manifest_keys().await
        }
        async fn list_pins(&self) -> Result<Vec<(RepoKey, hfm_cluster::catalog::PinRecord)>, hfm_cluster::catalog::CatalogError> {
            self.inner.list_pins().await
        }
        async fn put_pin(&self, repo: &RepoKey, record: hfm_cluster::catalog::PinRecord) -> Written {
            self.write(self.inner.put_pin(repo, record)).await
        }
        async fn remove_pin(&self, repo: &RepoKey) -> Written {
            self.write(self.inner.remove_pin(repo)).await
        }
    }

    #[tokio::test]
    async fn a_cold_policy_check_records_its_findings_side_by_side() {
        let directory = tempfile::tempdir().unwrap();
        let url = hub_like_upstream(Arc::default()).await;
        let catalog = Arc::new(SlowWrites {
            inner: LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap(),
            in_flight: Default::default(),
            most_at_once: Default::default(),
            beside_policy: Default::default(),
        });
        let settings =
            MetadataSettings { ref_ttl: Duration::from_secs(60), policy_ttl: Duration::from_secs(600), max_manifest_files: 1000 };
        let metadata = Metadata::new(catalog.clone(), Upstream::new(&url).unwrap(), None, settings);
        let public = RepoKey::new(RepoType::Model, "org/public");
        assert_eq!(metadata.policy_at(&public, Some("main")).await.unwrap(), (Access::Cacheable, CacheStatus::Miss));
        // The ref and the two forms of the repo info proposed together (in a cluster, one
        // replication round), then the policy (see `Catalog::put_revision_findings`).
        assert_eq!(catalog.most_at_once.load(Ordering::SeqCst), 3);
        assert_eq!(catalog.beside_policy.load(Ordering::SeqCst), 0, "the policy is written after the others");
        assert!(catalog.get_policy(&public).await.unwrap().unwrap().cacheable);
        assert_eq!(catalog.get_ref(&public, "main").await.unwrap().unwrap().commit, "a".repeat(40));
        assert!(catalog.get_repo_info(&public, &"a".repeat(40), FILES_VARIANT).await.unwrap().is_some());
    }

    #[test]
    fn negative_answers_stay_bounded_and_expire() {
        let negatives = NegativePolicies::default();
        let record = PolicyRecord { cacheable: false, reason: "missing".into(), checked_at_ms: 0 };
        for index in 0..NEGATIVE_POLICIES + 500 {
            negatives.put(&RepoKey::new(RepoType::Model, format!("x/{index}")), record.clone(), Duration::from_secs(600));
            assert!(negatives.len() <= NEGATIVE_POLICIES);
        }
        let last = RepoKey::new(RepoType::Model, format!("x/{}", NEGATIVE_POLICIES + 499));
        assert!(negatives.get(&last, Duration::from_secs(600)).is_some());
        assert!(negatives.get(&last, Duration::ZERO).is_none(), "expired");
    }

    #[test]
    fn a_commit_records_a_bounded_number_of_variants() {
        let budget = VariantBudget::default();
        let repo = RepoKey::new(RepoType::Model, "org/model");
        for index in 0..VARIANTS_PER_COMMIT {
            assert!(budget.allows(&repo, "c1", &format!("expand=v{index}")));
        }
        assert!(!budget.allows(&repo, "c1", "expand=one-more"));
        assert!(budget.allows(&repo, "c1", "expand=v0"), "a recorded variant stays allowed");
        assert!(budget.allows(&repo, "c2", "expand=one-more"), "another commit has its own budget");
    }
}
