//! The read-through logic of one node: repo policy, revision → commit, manifests, repo info and
//! refs, each answered from the catalog when it can be and fetched once from upstream when not.
//!
//! Every upstream fetch is coalesced per key ([`SingleFlight`]), and every mutable answer (policy,
//! refs) is served stale when upstream is down (unreachable, 5xx or 429).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hfm_cluster::catalog::raft::RaftCatalog;
use hfm_cluster::catalog::{Catalog, DocumentRecord, Manifest, ManifestEntry, PolicyRecord, RefRecord};
use hfm_cluster::types::{RepoKey, RepoType, is_commit_sha};
use serde_json::Value;
use tracing::{debug, warn};

use crate::config::NodeConfig;
use crate::hub::HubError;
use crate::hub::json::{parse_tree_entry, strip_xet_fields};
use crate::hub::route::encode_segment;
use crate::peers::ClusterFill;
use crate::replicas::Replicas;
use crate::singleflight::SingleFlight;
use crate::store::{BlobSource, BlobStore};
use crate::upstream::{BufferedReply, Upstream, UpstreamBlob};

/// The revision key under which the default branch of `/api/{t}s/{repo}` (no revision) is kept.
pub const DEFAULT_REVISION: &str = "@default";
/// Upper bound on tree pages fetched for one manifest (1000 entries each upstream).
const MAX_TREE_PAGES: usize = 10_000;

/// What an answer cost upstream; the `X-Cache` header. Ordered so that `max` combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheStatus {
    /// Nothing was asked of upstream.
    Hit,
    /// A stale ref or policy was re-checked upstream; the data came from the cluster.
    Revalidated,
    /// Upstream served data for this answer.
    Miss,
}

impl CacheStatus {
    /// Reads an `X-Cache` value back.
    pub fn parse(text: &str) -> Option<CacheStatus> {
        [CacheStatus::Hit, CacheStatus::Revalidated, CacheStatus::Miss].into_iter().find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Miss => "MISS",
        }
    }
}

/// Counts of answered requests by `X-Cache` result, for status and hit ratios.
#[derive(Default)]
pub struct AnswerCounters {
    hit: std::sync::atomic::AtomicU64,
    revalidated: std::sync::atomic::AtomicU64,
    miss: std::sync::atomic::AtomicU64,
}

impl AnswerCounters {
    pub fn record(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.hit,
            CacheStatus::Revalidated => &self.revalidated,
            CacheStatus::Miss => &self.miss,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (hits, revalidations, misses).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hit.load(Relaxed), self.revalidated.load(Relaxed), self.miss.load(Relaxed))
    }
}

/// Whether a metadata miss may be handed to the cluster's metadata leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forwarding {
    AskCluster,
    /// The question came from a peer: answer it here, so questions never travel in circles.
    Local,
}

/// How long a node waits for the metadata leader (a big repo's tree is many upstream pages).
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The name of the metadata service on the peer endpoint.
pub const METADATA_SERVICE: &str = "metadata";

/// A metadata question one node asks the node that leads its key.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum MetadataRequest {
    Policy { repo: RepoKey },
    Revision { repo: RepoKey, revision: String },
    Manifest { repo: RepoKey, commit: String },
}

impl MetadataRequest {
    /// The key placement assigns a leader for: one per repo policy, per ref, per commit.
    fn placement_key(&self) -> String {
        match self {
            MetadataRequest::Policy { repo } => format!("policy\0{repo}"),
            MetadataRequest::Revision { repo, revision } => format!("ref\0{repo}\0{revision}"),
            MetadataRequest::Manifest { repo, commit } => format!("manifest\0{repo}\0{commit}"),
        }
    }
}

/// The answer to a [`MetadataRequest`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum MetadataAnswer {
    Policy(PolicyRecord),
    Revision(String),
    Manifest(Manifest),
    Error { status: u16, code: Option<String>, message: String, repo_commit: Option<String> },
}

/// Whether a repository's content may be stored and shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Public and not gated: stored, served to anyone.
    Cacheable,
    /// Spaces, private, gated or unknown: forwarded with the caller's token, never stored.
    PassThrough,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn is_fresh(checked_at_ms: u64, ttl: Duration) -> bool {
    now_ms().saturating_sub(checked_at_ms) < ttl.as_millis() as u64
}

/// Logs a catalog write that did not happen. A cache never fails a download because it could not
/// record something (no Raft quorum, a full disk): the answer is served unrecorded.
fn note_unrecorded(result: Result<(), hfm_cluster::catalog::CatalogError>, what: &str) {
    if let Err(error) = result {
        warn!(%error, what, "serving without recording in the catalog");
    }
}

fn catalog_error(error: hfm_cluster::catalog::CatalogError) -> HubError {
    HubError::internal(error)
}

/// The read-through core; a cheap handle.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<MirrorInner>,
}

struct MirrorInner {
    config: NodeConfig,
    catalog: Arc<dyn Catalog>,
    upstream: Upstream,
    store: BlobStore,
    cluster: Option<ClusterRole>,
    answers: AnswerCounters,
    metadata_answers: AnswerCounters,
    /// The node's rsync daemon, once started.
    rsync: std::sync::OnceLock<crate::rsyncd::Rsyncd>,
    /// Bumped whenever this node changes a pin, so its pin keeper and rsync trees look at once
    /// (pins changed through other nodes are seen at their next round).
    pins_changed: tokio::sync::watch::Sender<u64>,
    policies: SingleFlight<PolicyRecord>,
    refs: SingleFlight<String>,
    manifests: SingleFlight<Arc<Manifest>>,
    documents: SingleFlight<Bytes>,
}

/// What a cluster node has beyond a single node: its peers, the replicated catalog, its replica keeper.
pub struct ClusterRole {
    pub fill: Arc<ClusterFill>,
    pub raft: RaftCatalog,
    pub replicas: Replicas,
}

/// The upstream API path of a repository: `/api/{t}s/{repo}`.
pub fn api_repo_path(repo: &RepoKey) -> String {
    format!("/api/{}/{}", repo.repo_type.api_plural(), repo.repo_id)
}

impl Mirror {
    pub fn new(
        config: NodeConfig,
        catalog: Arc<dyn Catalog>,
        upstream: Upstream,
        store: BlobStore,
        cluster: Option<ClusterRole>,
    ) -> Mirror {
        Mirror {
            inner: Arc::new(MirrorInner {
                config,
                catalog,
                upstream,
                store,
                cluster,
                answers: AnswerCounters::default(),
                metadata_answers: AnswerCounters::default(),
                rsync: std::sync::OnceLock::new(),
                pins_changed: tokio::sync::watch::Sender::new(0),
                policies: SingleFlight::default(),
                refs: SingleFlight::default(),
                manifests: SingleFlight::default(),
                documents: SingleFlight::default(),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// How many file downloads were hits, revalidations and misses since start.
    pub fn answers(&self) -> &AnswerCounters {
        &self.inner.answers
    }

    /// How many metadata answers (repo info, trees, paths-info, refs) were hits, revalidations and
    /// misses since start.
    pub fn metadata_answers(&self) -> &AnswerCounters {
        &self.inner.metadata_answers
    }

    /// The Raft catalog of the cluster, if this node is part of one.
    pub fn raft(&self) -> Option<&RaftCatalog> {
        self.inner.cluster.as_ref().map(|role| &role.raft)
    }

    /// The cluster this node fills blobs with, if it is part of one.
    pub fn cluster(&self) -> Option<&Arc<ClusterFill>> {
        self.inner.cluster.as_ref().map(|role| &role.fill)
    }

    /// Records the node's rsync daemon, for status.
    pub fn set_rsync(&self, rsync: crate::rsyncd::Rsyncd) {
        let _ = self.inner.rsync.set(rsync);
    }

    pub fn rsync(&self) -> Option<&crate::rsyncd::Rsyncd> {
        self.inner.rsync.get()
    }

    /// Tells this node's pin keeper and rsync trees that the pins changed.
    pub fn notify_pins_changed(&self) {
        self.inner.pins_changed.send_modify(|count| *count += 1);
    }

    /// Wakes when [`Mirror::notify_pins_changed`] is called.
    pub fn watch_pins(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.pins_changed.subscribe()
    }

    /// The replica keeper, if this node is part of a cluster.
    pub fn replicas(&self) -> Option<&Replicas> {
        self.inner.cluster.as_ref().map(|role| &role.replicas)
    }

    /// Where a blob this node lacks comes from: in a cluster, the nodes the replica record names,
    /// then the placement's fill leaders and other nodes, then upstream (`origin`, a `/resolve/`
    /// path); alone, upstream.
    pub async fn blob_source(&self, etag: &str, size: u64, origin: &str) -> Arc<dyn BlobSource> {
        let upstream = Arc::new(UpstreamBlob::new(self.upstream().clone(), origin.to_owned()));
        match self.cluster() {
            Some(cluster) => cluster.source_for(etag, size, origin, &self.replica_holders(etag).await, upstream),
            None => upstream,
        }
    }

    /// Where a range of a blob comes from when it cannot wait for the blob's fill: a node holding a
    /// complete copy, else upstream (a ranged request). Never a fill leader, which would only start
    /// the same sequential fill.
    pub async fn range_source(&self, etag: &str, size: u64, origin: &str) -> Arc<dyn BlobSource> {
        let upstream = Arc::new(UpstreamBlob::new(self.upstream().clone(), origin.to_owned()));
        match self.cluster() {
            Some(cluster) => cluster.holders_source(etag, size, &self.replica_holders(etag).await, Some(upstream)),
            None => upstream,
        }
    }

    /// The nodes the catalog's replica record names for a blob (none when unknown or unreadable).
    async fn replica_holders(&self, etag: &str) -> Vec<String> {
        match self.catalog().get_replicas(etag).await {
            Ok(record) => record.map(|record| record.holders).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The catalog (replicated in a cluster).
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    /// Decides whether a repo may be cached: only when an anonymous upstream repo-info says it is
    /// public and not gated, re-checked every `policy_ttl`. Spaces and kernels always pass through.
    pub async fn policy(&self, repo: &RepoKey) -> Result<(Access, CacheStatus), HubError> {
        self.policy_with(repo, Forwarding::AskCluster).await
    }

    async fn policy_with(&self, repo: &RepoKey, forwarding: Forwarding) -> Result<(Access, CacheStatus), HubError> {
        let (record, status) = self.policy_record(repo, forwarding).await?;
        Ok((if record.cacheable { Access::Cacheable } else { Access::PassThrough }, status))
    }

    async fn policy_record(&self, repo: &RepoKey, forwarding: Forwarding) -> Result<(PolicyRecord, CacheStatus), HubError> {
        if matches!(repo.repo_type, RepoType::Space | RepoType::Kernel) {
            let record = PolicyRecord { cacheable: false, reason: format!("{}s pass through", repo.repo_type), checked_at_ms: now_ms() };
            return Ok((record, CacheStatus::Miss));
        }
        let cached = self.inner.catalog.get_policy(repo).await.map_err(catalog_error)?;
        if let Some(record) = &cached {
            if is_fresh(record.checked_at_ms, self.inner.config.policy_ttl) {
                return Ok((record.clone(), CacheStatus::Hit));
            }
        }
        let mirror = self.clone();
        let key = format!("policy\0{repo}");
        let repo_owned = repo.clone();
        let (fetched, _) = self.inner.policies.run(key, async move { mirror.fetch_policy(&repo_owned, forwarding).await }).await;
        match (fetched, cached) {
            (Ok(record), _) => Ok((record, CacheStatus::Revalidated)),
            (Err(error), Some(stale)) if error.is_upstream_outage() => {
                warn!(%repo, %error, "upstream down; using the stale repo policy");
                Ok((stale, CacheStatus::Hit))
            }
            (Err(error), _) => Err(error),
        }
    }

    async fn fetch_policy(&self, repo: &RepoKey, forwarding: Forwarding) -> Result<PolicyRecord, HubError> {
        // A flight that finished between our caller's catalog read and the start of this one has
        // already done the work.
        if let Some(record) = self.inner.catalog.get_policy(repo).await.map_err(catalog_error)? {
            if is_fresh(record.checked_at_ms, self.inner.config.policy_ttl) {
                return Ok(record);
            }
        }
        if let Some(answer) = self.ask_cluster(forwarding, MetadataRequest::Policy { repo: repo.clone() }).await {
            match answer? {
                MetadataAnswer::Policy(record) => return Ok(record),
                _ => return Err(HubError::internal("the metadata leader answered another question")),
            }
        }
        let reply = self.inner.upstream.get_buffered(&api_repo_path(repo), None).await?;
        let (cacheable, reason) = if reply.status.is_success() {
            let info: Value = serde_json::from_slice(&reply.body)
                .map_err(|error| HubError::upstream_invalid(format!("repo info is not JSON: {error}")))?;
            let private = info.get("private").and_then(Value::as_bool).unwrap_or(false);
            let gated = !matches!(info.get("gated"), None | Some(Value::Null) | Some(Value::Bool(false)));
            let disabled = info.get("disabled").and_then(Value::as_bool).unwrap_or(false);
            if private {
                (false, "private")
            } else if gated {
                (false, "gated")
            } else if disabled {
                (false, "disabled")
            } else {
                // The answer is also the default branch's repo info: keep it.
                self.record_revision_reply(repo, DEFAULT_REVISION, &reply).await?;
                (true, "public")
            }
        } else if matches!(reply.status.as_u16(), 401 | 403 | 404 | 410) {
            (false, "private or missing")
        } else {
            return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
        };
        let record = PolicyRecord { cacheable, reason: reason.to_owned(), checked_at_ms: now_ms() };
        debug!(%repo, cacheable, reason, "repo policy checked");
        note_unrecorded(self.inner.catalog.put_policy(repo, record.clone()).await, "repo policy");
        Ok(record)
    }

    /// Stores a successful repo-info answer of a revision: its commit as the ref, and its body as the
    /// commit's repo info. Returns the commit.
    async fn record_revision_reply(&self, repo: &RepoKey, revision: &str, reply: &BufferedReply) -> Result<String, HubError> {
        let mut info: Value =
            serde_json::from_slice(&reply.body).map_err(|error| HubError::upstream_invalid(format!("repo info is not JSON: {error}")))?;
        let commit = info.get("sha").and_then(Value::as_str).unwrap_or_default().to_owned();
        if !is_commit_sha(&commit) {
            return Err(HubError::upstream_invalid(format!("repo info of {repo} has no valid sha")));
        }
        strip_xet_fields(&mut info);
        let body = serde_json::to_vec(&info).map_err(HubError::internal)?;
        let catalog = &self.inner.catalog;
        note_unrecorded(catalog.put_repo_info(repo, &commit, "", body).await, "repo info");
        if !is_commit_sha(revision) {
            note_unrecorded(catalog.put_ref(repo, revision, RefRecord { commit: commit.clone(), checked_at_ms: now_ms() }).await, "ref");
        }
        Ok(commit)
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
        let cached = self.inner.catalog.get_ref(repo, revision).await.map_err(catalog_error)?;
        if let Some(record) = &cached {
            if is_fresh(record.checked_at_ms, self.inner.config.ref_ttl) {
                return Ok((record.commit.clone(), CacheStatus::Hit));
            }
        }
        let mirror = self.clone();
        let key = format!("ref\0{repo}\0{revision}");
        let (repo_owned, revision_owned) = (repo.clone(), revision.to_owned());
        let (fetched, _) = self
            .inner
            .refs
            .run(key, async move {
                let catalog = &mirror.inner.catalog;
                if let Some(record) = catalog.get_ref(&repo_owned, &revision_owned).await.map_err(catalog_error)? {
                    if is_fresh(record.checked_at_ms, mirror.inner.config.ref_ttl) {
                        return Ok(record.commit);
                    }
                }
                let question = MetadataRequest::Revision { repo: repo_owned.clone(), revision: revision_owned.clone() };
                if let Some(answer) = mirror.ask_cluster(forwarding, question).await {
                    match answer? {
                        MetadataAnswer::Revision(commit) if is_commit_sha(&commit) => return Ok(commit),
                        _ => return Err(HubError::internal("the metadata leader answered another question")),
                    }
                }
                let path = if revision_owned == DEFAULT_REVISION {
                    api_repo_path(&repo_owned)
                } else {
                    format!("{}/revision/{}", api_repo_path(&repo_owned), encode_segment(&revision_owned))
                };
                let reply = mirror.inner.upstream.get_buffered(&path, None).await?;
                if !reply.status.is_success() {
                    return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
                }
                mirror.record_revision_reply(&repo_owned, &revision_owned, &reply).await
            })
            .await;
        match (fetched, cached) {
            (Ok(commit), Some(_)) => Ok((commit, CacheStatus::Revalidated)),
            (Ok(commit), None) => Ok((commit, CacheStatus::Miss)),
            (Err(error), Some(stale)) if error.is_upstream_outage() => {
                warn!(%repo, %revision, %error, "upstream down; serving the stale ref");
                Ok((stale.commit, CacheStatus::Hit))
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Returns the full file list of a commit, fetching every tree page once when it is not known.
    pub async fn manifest(&self, repo: &RepoKey, commit: &str) -> Result<(Arc<Manifest>, CacheStatus), HubError> {
        self.manifest_with(repo, commit, Forwarding::AskCluster).await
    }

    async fn manifest_with(&self, repo: &RepoKey, commit: &str, forwarding: Forwarding) -> Result<(Arc<Manifest>, CacheStatus), HubError> {
        debug_assert!(is_commit_sha(commit));
        if let Some(manifest) = self.inner.catalog.get_manifest(repo, commit).await.map_err(catalog_error)? {
            return Ok((manifest, CacheStatus::Hit));
        }
        let mirror = self.clone();
        let key = format!("manifest\0{repo}\0{commit}");
        let (repo_owned, commit_owned) = (repo.clone(), commit.to_owned());
        let (fetched, _) =
            self.inner.manifests.run(key, async move { mirror.fetch_manifest(&repo_owned, &commit_owned, forwarding).await }).await;
        fetched.map(|manifest| (manifest, CacheStatus::Miss))
    }

    async fn fetch_manifest(&self, repo: &RepoKey, commit: &str, forwarding: Forwarding) -> Result<Arc<Manifest>, HubError> {
        if let Some(manifest) = self.inner.catalog.get_manifest(repo, commit).await.map_err(catalog_error)? {
            return Ok(manifest);
        }
        if let Some(answer) =
            self.ask_cluster(forwarding, MetadataRequest::Manifest { repo: repo.clone(), commit: commit.to_owned() }).await
        {
            match answer? {
                MetadataAnswer::Manifest(manifest) => return Ok(Arc::new(manifest)),
                _ => return Err(HubError::internal("the metadata leader answered another question")),
            }
        }
        let mut path_and_query = format!("{}/tree/{commit}?recursive=true&expand=false", api_repo_path(repo));
        let mut entries: Vec<ManifestEntry> = Vec::new();
        for _ in 0..MAX_TREE_PAGES {
            let reply = self.inner.upstream.get_buffered(&path_and_query, None).await?;
            if !reply.status.is_success() {
                return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
            }
            let page: Vec<Value> = serde_json::from_slice(&reply.body)
                .map_err(|error| HubError::upstream_invalid(format!("tree page is not a JSON array: {error}")))?;
            for value in &page {
                entries.push(parse_tree_entry(value).map_err(HubError::upstream_invalid)?);
            }
            match next_link_path(&reply.headers) {
                Some(next) => path_and_query = next,
                None => {
                    let manifest = Manifest::new(entries);
                    return match self.inner.catalog.put_manifest(repo, commit, manifest.clone()).await {
                        Ok(recorded) => Ok(recorded),
                        Err(error) => {
                            note_unrecorded(Err(error), "manifest");
                            Ok(Arc::new(manifest))
                        }
                    };
                }
            }
        }
        Err(HubError::upstream_invalid("tree has too many pages"))
    }

    /// Asks the cluster's metadata leader for this key (the first serving node of its placement), so
    /// that a cold repo or commit is fetched from upstream once for the whole cluster. `None` when this
    /// node is the leader, has no cluster, was itself asked by a peer, or the leader cannot be reached
    /// (then the caller fetches from upstream itself).
    async fn ask_cluster(&self, forwarding: Forwarding, request: MetadataRequest) -> Option<Result<MetadataAnswer, HubError>> {
        if forwarding == Forwarding::Local {
            return None;
        }
        let cluster = self.cluster()?;
        let leader = cluster.metadata_leader(&request.placement_key())?;
        let body = serde_json::to_vec(&request).ok()?;
        match cluster.endpoint().call(&leader, METADATA_SERVICE, body, METADATA_TIMEOUT).await {
            Ok(answer) => match serde_json::from_slice::<MetadataAnswer>(&answer) {
                Ok(MetadataAnswer::Error { status, code, message, repo_commit }) => {
                    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                    let mut error =
                        HubError::new(status, code.as_deref().unwrap_or("UpstreamError"), message, crate::hub::ErrorSource::Upstream);
                    error.code = code;
                    error.repo_commit = repo_commit;
                    Some(Err(error))
                }
                Ok(answer) => Some(Ok(answer)),
                Err(error) => {
                    warn!(leader = %leader.name, %error, "undecodable metadata answer; asking upstream");
                    None
                }
            },
            Err(error) => {
                debug!(leader = %leader.name, %error, "metadata leader unreachable; asking upstream");
                None
            }
        }
    }

    /// Answers a peer's metadata question from this node's catalog or upstream, never forwarding it.
    pub async fn answer_peer(&self, request: MetadataRequest) -> MetadataAnswer {
        let result = match request {
            MetadataRequest::Policy { repo } => {
                self.policy_record(&repo, Forwarding::Local).await.map(|(record, _)| MetadataAnswer::Policy(record))
            }
            MetadataRequest::Revision { repo, revision } => {
                self.resolve_revision_with(&repo, &revision, Forwarding::Local).await.map(|(commit, _)| MetadataAnswer::Revision(commit))
            }
            MetadataRequest::Manifest { repo, commit } => self
                .manifest_with(&repo, &commit, Forwarding::Local)
                .await
                .map(|(manifest, _)| MetadataAnswer::Manifest((*manifest).clone())),
        };
        result.unwrap_or_else(|error| MetadataAnswer::Error {
            status: error.status.as_u16(),
            code: error.code,
            message: error.message,
            repo_commit: error.repo_commit,
        })
    }

    /// Returns the repo-info JSON of a revision (`None`: the default branch) for one query variant.
    pub async fn repo_info(&self, repo: &RepoKey, revision: Option<&str>, variant: &str) -> Result<(Bytes, String, CacheStatus), HubError> {
        let (commit, resolved) = self.resolve_revision(repo, revision.unwrap_or(DEFAULT_REVISION)).await?;
        if let Some(body) = self.inner.catalog.get_repo_info(repo, &commit, variant).await.map_err(catalog_error)? {
            return Ok((Bytes::from(body), commit, resolved));
        }
        let mirror = self.clone();
        let key = format!("info\0{repo}\0{commit}\0{variant}");
        let (repo_owned, commit_owned, variant_owned) = (repo.clone(), commit.clone(), variant.to_owned());
        let (fetched, _) = self
            .inner
            .documents
            .run(key, async move {
                if let Some(body) =
                    mirror.inner.catalog.get_repo_info(&repo_owned, &commit_owned, &variant_owned).await.map_err(catalog_error)?
                {
                    return Ok(Bytes::from(body));
                }
                let mut path = format!("{}/revision/{commit_owned}", api_repo_path(&repo_owned));
                if !variant_owned.is_empty() {
                    path = format!("{path}?{variant_owned}");
                }
                let body = mirror.fetch_stripped_json(&path, "repo info").await?;
                note_unrecorded(
                    mirror.inner.catalog.put_repo_info(&repo_owned, &commit_owned, &variant_owned, body.clone()).await,
                    "repo info",
                );
                Ok(Bytes::from(body))
            })
            .await;
        fetched.map(|body| (body, commit, CacheStatus::Miss))
    }

    /// Fetches a JSON document from upstream anonymously and returns it with every Xet field removed;
    /// an upstream error answer becomes the same error for the client.
    async fn fetch_stripped_json(&self, path: &str, what: &str) -> Result<Vec<u8>, HubError> {
        let reply = self.inner.upstream.get_buffered(path, None).await?;
        if !reply.status.is_success() {
            return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
        }
        let mut document: Value =
            serde_json::from_slice(&reply.body).map_err(|error| HubError::upstream_invalid(format!("{what} is not JSON: {error}")))?;
        strip_xet_fields(&mut document);
        serde_json::to_vec(&document).map_err(HubError::internal)
    }

    /// Returns the refs listing of a repo; mutable, so cached under the ref TTL and served stale
    /// when upstream is down.
    pub async fn refs_listing(&self, repo: &RepoKey, include_pull_requests: bool) -> Result<(Bytes, CacheStatus), HubError> {
        let key = format!("refs\0{repo}\0{include_pull_requests}");
        let cached = self.inner.catalog.get_document(&key).await.map_err(catalog_error)?;
        if let Some(record) = &cached {
            if is_fresh(record.checked_at_ms, self.inner.config.ref_ttl) {
                return Ok((Bytes::from(record.body.clone()), CacheStatus::Hit));
            }
        }
        let mirror = self.clone();
        let (repo_owned, key_owned) = (repo.clone(), key.clone());
        let (fetched, _) = self
            .inner
            .documents
            .run(key, async move {
                if let Some(record) = mirror.inner.catalog.get_document(&key_owned).await.map_err(catalog_error)? {
                    if is_fresh(record.checked_at_ms, mirror.inner.config.ref_ttl) {
                        return Ok(Bytes::from(record.body));
                    }
                }
                let mut path = format!("{}/refs", api_repo_path(&repo_owned));
                if include_pull_requests {
                    path.push_str("?include_prs=1");
                }
                let body = mirror.fetch_stripped_json(&path, "refs listing").await?;
                let record = DocumentRecord { body: body.clone(), checked_at_ms: now_ms() };
                note_unrecorded(mirror.inner.catalog.put_document(&key_owned, record).await, "refs listing");
                Ok(Bytes::from(body))
            })
            .await;
        match (fetched, cached) {
            (Ok(body), Some(_)) => Ok((body, CacheStatus::Revalidated)),
            (Ok(body), None) => Ok((body, CacheStatus::Miss)),
            (Err(error), Some(stale)) if error.is_upstream_outage() => {
                warn!(%repo, %error, "upstream down; serving the stale refs listing");
                Ok((Bytes::from(stale.body), CacheStatus::Hit))
            }
            (Err(error), _) => Err(error),
        }
    }
}

/// Returns the path and query of the `rel="next"` link of an upstream page. The link is absolute
/// on upstream's origin; only its path and query are kept, so it is always fetched from our upstream.
fn next_link_path(headers: &http::HeaderMap) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        for link in text.split(',') {
            if !link.contains("rel=\"next\"") && !link.contains("rel=next") {
                continue;
            }
            let url = link.split('<').nth(1)?.split('>').next()?;
            let parsed = reqwest::Url::parse(url).ok()?;
            let mut path = parsed.path().to_owned();
            if let Some(query) = parsed.query() {
                path.push('?');
                path.push_str(query);
            }
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_statuses_combine_to_the_most_upstream_work() {
        assert_eq!(CacheStatus::Hit.max(CacheStatus::Revalidated), CacheStatus::Revalidated);
        assert_eq!(CacheStatus::Revalidated.max(CacheStatus::Miss), CacheStatus::Miss);
        assert_eq!(CacheStatus::Hit.max(CacheStatus::Hit).as_str(), "HIT");
    }

    #[test]
    fn next_link_keeps_path_and_query_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LINK,
            http::HeaderValue::from_static(
                "<https://huggingface.co/api/models/org/model/tree/abc?recursive=true&expand=false&cursor=ZXlK>; rel=\"next\"",
            ),
        );
        assert_eq!(next_link_path(&headers).unwrap(), "/api/models/org/model/tree/abc?recursive=true&expand=false&cursor=ZXlK");
        assert!(next_link_path(&http::HeaderMap::new()).is_none());
    }
}
