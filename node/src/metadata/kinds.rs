//! The five kinds of metadata the node reads through: repo policy, revision → commit, manifests,
//! repo info and refs listings. Each says how it is keyed, read, asked and fetched; the
//! read-through itself is [`super::read_through`].

use std::sync::Arc;

use bytes::Bytes;
use hfm_cluster::catalog::{Catalog, DocumentRecord, Manifest, ManifestEntry, ManifestView, PolicyRecord, RefRecord, RevisionFindings};
use hfm_cluster::types::{RepoKey, is_commit_sha};
use serde_json::Value;
use tracing::debug;

use super::DEFAULT_REVISION;
use super::catalog_error;
use super::leader::{MetadataAnswer, MetadataRequest};
use super::read_through::{FetchContext, Flights, Kind, Recorded, note_unrecorded};
use super::siblings::{FILES_VARIANT, lists_indexable_files, strip_blob_fields};
use crate::common::singleflight::SingleFlight;
use crate::common::time::now_ms;
use crate::hub::HubError;
use crate::hub::json::{parse_tree_entry, strip_xet_fields};
use crate::hub::route::{api_repo_path, encode_segment};
use crate::upstream::{ANSWER_TOO_LARGE, BufferedReply, Upstream};

/// The error code of a commit with more files than a manifest may hold.
pub const REPO_TOO_LARGE: &str = "RepoTooLarge";

/// Whether a repo may be stored: only when an anonymous upstream repo-info says it is public and
/// not gated.
pub(super) struct PolicyOf {
    pub repo: RepoKey,
    /// The revision the request names, when it names one: its repo info says as much about the
    /// repo as the default branch's, and also gives the revision's commit, which is recorded — so a
    /// cold request asks upstream once for both (the policy's key stays the repo alone).
    pub revision: Option<String>,
}

impl Kind for PolicyOf {
    type Value = PolicyRecord;
    const WHAT: &'static str = "repo policy";

    fn flight_key(&self) -> String {
        MetadataRequest::Policy { repo: self.repo.clone() }.placement_key()
    }

    fn flights(flights: &Flights) -> &SingleFlight<Result<PolicyRecord, HubError>> {
        &flights.policies
    }

    async fn recorded(&self, catalog: &dyn Catalog) -> Result<Option<Recorded<PolicyRecord>>, HubError> {
        let record = catalog.get_policy(&self.repo).await.map_err(catalog_error)?;
        Ok(record.map(|record| {
            let checked_at_ms = record.checked_at_ms;
            Recorded::checked(record, checked_at_ms)
        }))
    }

    fn question(&self) -> Option<MetadataRequest> {
        Some(MetadataRequest::Policy { repo: self.repo.clone() })
    }

    fn from_answer(answer: MetadataAnswer) -> Option<PolicyRecord> {
        match answer {
            MetadataAnswer::Policy(record) => Some(record),
            _ => None,
        }
    }

    async fn fetch(&self, context: FetchContext<'_>) -> Result<PolicyRecord, HubError> {
        let repo = &self.repo;
        let mut asked = None;
        if let Some(revision) = self.revision.as_deref().filter(|revision| *revision != DEFAULT_REVISION) {
            let reply = ask_revision_info(context.upstream, repo, revision).await?;
            // Only a repo info, or an answer about the repo itself, decides: a revision that does not
            // exist (or any other refusal) says nothing about the repo, which is then asked for
            // itself — a request naming an invented branch must not make a public repo pass through.
            let about_the_repo = reply.status.is_success()
                || (matches!(reply.status.as_u16(), 401 | 403 | 404) && matches!(error_code(&reply), Some("RepoNotFound" | "GatedRepo")));
            if about_the_repo {
                asked = Some((revision, reply));
            }
        }
        let (revision, reply) = match asked {
            Some(asked) => asked,
            None => (DEFAULT_REVISION, ask_revision_info(context.upstream, repo, DEFAULT_REVISION).await?),
        };
        let (public_info, reason) = if reply.status.is_success() {
            let info: Value = serde_json::from_slice(&reply.body)
                .map_err(|error| HubError::upstream_invalid(format!("repo info is not JSON: {error}")))?;
            let private = info.get("private").and_then(Value::as_bool).unwrap_or(false);
            let gated = !matches!(info.get("gated"), None | Some(Value::Null) | Some(Value::Bool(false)));
            let disabled = info.get("disabled").and_then(Value::as_bool).unwrap_or(false);
            if private {
                (None, "private")
            } else if gated {
                (None, "gated")
            } else if disabled {
                (None, "disabled")
            } else {
                (Some(RevisionReply::parse(repo, info)?), "public")
            }
        } else if matches!(reply.status.as_u16(), 401 | 403 | 404 | 410) {
            (None, "private or missing")
        } else {
            return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
        };
        let cacheable = public_info.is_some();
        let record = PolicyRecord { cacheable, reason: reason.to_owned(), checked_at_ms: now_ms() };
        debug!(%repo, cacheable, reason, "repo policy checked");
        match public_info {
            // The answer is also the revision's repo info (the default branch's when none was
            // named): it is kept with the revision's commit, beside the policy.
            Some(public_info) => {
                public_info.record(context.catalog, repo, revision, Some(&record)).await;
            }
            // A negative answer is recorded only where it replaces a positive one (a repo turned
            // private or gated must never be served from the catalog again); the rest stay on this
            // node (see `NegativePolicies`), so invented repo names cannot grow the replicated catalog.
            None => {
                if matches!(context.catalog.get_policy(repo).await, Ok(Some(previous)) if previous.cacheable) {
                    note_unrecorded(context.catalog.put_policy(repo, record.clone()).await, Self::WHAT);
                }
            }
        }
        Ok(record)
    }
}

/// The `X-Error-Code` of an upstream answer.
fn error_code(reply: &BufferedReply) -> Option<&str> {
    reply.headers.get(crate::hub::headers::X_ERROR_CODE)?.to_str().ok()
}

/// The upstream path of a revision's repo info (the default branch's: the repo's own).
fn revision_info_path(repo: &RepoKey, revision: &str) -> String {
    if revision == DEFAULT_REVISION {
        api_repo_path(repo)
    } else {
        format!("{}/revision/{}", api_repo_path(repo), encode_segment(revision))
    }
}

/// Asks upstream for a revision's repo info with `blobs=true`: the same answer plus each file's blob
/// id, size and LFS sha256, which a cold `/resolve/` needs and would otherwise walk the commit's
/// tree for (see `siblings`). A repo so large that this answer passes the size bound is asked again
/// without the blob fields.
async fn ask_revision_info(upstream: &Upstream, repo: &RepoKey, revision: &str) -> Result<BufferedReply, HubError> {
    let path = revision_info_path(repo, revision);
    match upstream.get_buffered(&format!("{path}?{FILES_VARIANT}"), None).await {
        Err(error) if error.code.as_deref() == Some(ANSWER_TOO_LARGE) => upstream.get_buffered(&path, None).await,
        answered => answered,
    }
}

/// The commit a branch or tag points to (`DEFAULT_REVISION`: the default branch).
pub(super) struct RevisionOf {
    pub repo: RepoKey,
    pub revision: String,
}

impl Kind for RevisionOf {
    type Value = String;
    const WHAT: &'static str = "ref";

    fn flight_key(&self) -> String {
        MetadataRequest::Revision { repo: self.repo.clone(), revision: self.revision.clone() }.placement_key()
    }

    fn flights(flights: &Flights) -> &SingleFlight<Result<String, HubError>> {
        &flights.commits
    }

    async fn recorded(&self, catalog: &dyn Catalog) -> Result<Option<Recorded<String>>, HubError> {
        let record = catalog.get_ref(&self.repo, &self.revision).await.map_err(catalog_error)?;
        Ok(record.map(|record| Recorded::checked(record.commit, record.checked_at_ms)))
    }

    fn question(&self) -> Option<MetadataRequest> {
        Some(MetadataRequest::Revision { repo: self.repo.clone(), revision: self.revision.clone() })
    }

    fn from_answer(answer: MetadataAnswer) -> Option<String> {
        match answer {
            MetadataAnswer::Revision(commit) if is_commit_sha(&commit) => Some(commit),
            _ => None,
        }
    }

    async fn fetch(&self, context: FetchContext<'_>) -> Result<String, HubError> {
        let reply = ask_revision_info(context.upstream, &self.repo, &self.revision).await?;
        if !reply.status.is_success() {
            return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
        }
        let info: Value =
            serde_json::from_slice(&reply.body).map_err(|error| HubError::upstream_invalid(format!("repo info is not JSON: {error}")))?;
        Ok(RevisionReply::parse(&self.repo, info)?.record(context.catalog, &self.repo, &self.revision, None).await)
    }
}

/// A successful repo-info answer of a revision (asked with `blobs=true`), checked, in the two forms
/// upstream gives: with and without the siblings' blob fields.
struct RevisionReply {
    commit: String,
    plain: Vec<u8>,
    /// Kept only when it can stand in for the tree walk (see [`lists_indexable_files`]): the
    /// catalog does not hold a second copy of a huge repo's file list that nothing would read.
    with_blobs: Option<Vec<u8>>,
}

impl RevisionReply {
    fn parse(repo: &RepoKey, mut info: Value) -> Result<RevisionReply, HubError> {
        let commit = info.get("sha").and_then(Value::as_str).unwrap_or_default().to_owned();
        if !is_commit_sha(&commit) {
            return Err(HubError::upstream_invalid(format!("repo info of {repo} has no valid sha")));
        }
        strip_xet_fields(&mut info);
        let with_blobs = if lists_indexable_files(&info) { Some(serde_json::to_vec(&info).map_err(HubError::internal)?) } else { None };
        strip_blob_fields(&mut info);
        let plain = serde_json::to_vec(&info).map_err(HubError::internal)?;
        Ok(RevisionReply { commit, plain, with_blobs })
    }

    /// Records the commit as `revision`'s ref (unless the revision is the commit), its forms as the
    /// commit's repo info, and `policy` when given, all as one write where the catalog can (see
    /// [`Catalog::put_revision_findings`]: one transaction on a node alone, writes proposed together
    /// in a cluster). A write that fails is logged; the answer stands. Returns the commit.
    async fn record(self, catalog: &dyn Catalog, repo: &RepoKey, revision: &str, policy: Option<&PolicyRecord>) -> String {
        let RevisionReply { commit, plain, with_blobs } = self;
        let mut infos = vec![(String::new(), plain)];
        infos.extend(with_blobs.map(|body| (FILES_VARIANT.to_owned(), body)));
        let reference =
            (!is_commit_sha(revision)).then(|| (revision.to_owned(), RefRecord { commit: commit.clone(), checked_at_ms: now_ms() }));
        let findings = RevisionFindings { commit: commit.clone(), infos, reference, policy: policy.cloned() };
        note_unrecorded(catalog.put_revision_findings(repo, findings).await, "repo info, ref and policy");
        commit
    }
}

/// The full file list of a commit, every tree page fetched once.
pub(super) struct ManifestOf {
    pub repo: RepoKey,
    pub commit: String,
    /// Beyond this many entries the walk stops with [`REPO_TOO_LARGE`].
    pub max_files: usize,
}

impl Kind for ManifestOf {
    type Value = ManifestView;
    const WHAT: &'static str = "manifest";

    fn flight_key(&self) -> String {
        MetadataRequest::Manifest { repo: self.repo.clone(), commit: self.commit.clone() }.placement_key()
    }

    fn flights(flights: &Flights) -> &SingleFlight<Result<ManifestView, HubError>> {
        &flights.manifests
    }

    async fn recorded(&self, catalog: &dyn Catalog) -> Result<Option<Recorded<ManifestView>>, HubError> {
        Ok(catalog.get_manifest(&self.repo, &self.commit).await.map_err(catalog_error)?.map(Recorded::immutable))
    }

    fn question(&self) -> Option<MetadataRequest> {
        Some(MetadataRequest::Manifest { repo: self.repo.clone(), commit: self.commit.clone() })
    }

    fn from_answer(answer: MetadataAnswer) -> Option<ManifestView> {
        match answer {
            MetadataAnswer::Manifest(manifest) => Some(ManifestView::Whole(Arc::new(manifest))),
            _ => None,
        }
    }

    async fn fetch(&self, context: FetchContext<'_>) -> Result<ManifestView, HubError> {
        let (repo, commit) = (&self.repo, &self.commit);
        let mut path_and_query = format!("{}/tree/{commit}?recursive=true&expand=false", api_repo_path(repo));
        let mut entries: Vec<ManifestEntry> = Vec::new();
        loop {
            let reply = context.upstream.get_buffered(&path_and_query, None).await?;
            if !reply.status.is_success() {
                return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
            }
            let page: Vec<Value> = serde_json::from_slice(&reply.body)
                .map_err(|error| HubError::upstream_invalid(format!("tree page is not a JSON array: {error}")))?;
            for value in &page {
                entries.push(parse_tree_entry(value).map_err(HubError::upstream_invalid)?);
            }
            if entries.len() > self.max_files {
                return Err(HubError::new(
                    http::StatusCode::FORBIDDEN,
                    REPO_TOO_LARGE,
                    format!(
                        "{repo} has more than {} files at {commit}; the mirror passes it through instead of caching it",
                        self.max_files
                    ),
                    crate::hub::ErrorSource::Upstream,
                ));
            }
            match next_link_path(&reply.headers) {
                Some(next) => path_and_query = next,
                None => {
                    let manifest = Manifest::new(entries);
                    return match context.catalog.put_manifest(repo, commit, manifest.clone()).await {
                        Ok(recorded) => Ok(recorded),
                        Err(error) => {
                            note_unrecorded(Err(error), Self::WHAT);
                            Ok(ManifestView::Whole(Arc::new(manifest)))
                        }
                    };
                }
            }
        }
    }
}

/// The repo-info JSON of a commit for one query variant (`blobs=true`, …), Xet fields removed.
pub(super) struct RepoInfoOf {
    pub repo: RepoKey,
    pub commit: String,
    pub variant: String,
    /// Whether the answer is recorded (a commit's variants are bounded).
    pub record: bool,
}

impl Kind for RepoInfoOf {
    type Value = Bytes;
    const WHAT: &'static str = "repo info";

    fn flight_key(&self) -> String {
        format!("info\0{}\0{}\0{}", self.repo, self.commit, self.variant)
    }

    fn flights(flights: &Flights) -> &SingleFlight<Result<Bytes, HubError>> {
        &flights.documents
    }

    async fn recorded(&self, catalog: &dyn Catalog) -> Result<Option<Recorded<Bytes>>, HubError> {
        let body = catalog.get_repo_info(&self.repo, &self.commit, &self.variant).await.map_err(catalog_error)?;
        Ok(body.map(|body| Recorded::immutable(Bytes::from(body))))
    }

    async fn fetch(&self, context: FetchContext<'_>) -> Result<Bytes, HubError> {
        let mut path = format!("{}/revision/{}", api_repo_path(&self.repo), self.commit);
        if !self.variant.is_empty() {
            path = format!("{path}?{}", self.variant);
        }
        let body = fetch_stripped_json(context.upstream, &path, Self::WHAT).await?;
        if self.record {
            note_unrecorded(context.catalog.put_repo_info(&self.repo, &self.commit, &self.variant, body.clone()).await, Self::WHAT);
        }
        Ok(Bytes::from(body))
    }
}

/// The refs listing of a repo (branches, tags, optionally pull requests); mutable.
pub(super) struct RefsListingOf {
    pub repo: RepoKey,
    pub include_pull_requests: bool,
}

impl RefsListingOf {
    fn document_key(&self) -> String {
        format!("refs\0{}\0{}", self.repo, self.include_pull_requests)
    }
}

impl Kind for RefsListingOf {
    type Value = Bytes;
    const WHAT: &'static str = "refs listing";

    fn flight_key(&self) -> String {
        self.document_key()
    }

    fn flights(flights: &Flights) -> &SingleFlight<Result<Bytes, HubError>> {
        &flights.documents
    }

    async fn recorded(&self, catalog: &dyn Catalog) -> Result<Option<Recorded<Bytes>>, HubError> {
        let record = catalog.get_document(&self.document_key()).await.map_err(catalog_error)?;
        Ok(record.map(|record| Recorded::checked(Bytes::from(record.body), record.checked_at_ms)))
    }

    async fn fetch(&self, context: FetchContext<'_>) -> Result<Bytes, HubError> {
        let mut path = format!("{}/refs", api_repo_path(&self.repo));
        if self.include_pull_requests {
            path.push_str("?include_prs=1");
        }
        let body = fetch_stripped_json(context.upstream, &path, Self::WHAT).await?;
        let record = DocumentRecord { body: body.clone(), checked_at_ms: now_ms() };
        note_unrecorded(context.catalog.put_document(&self.document_key(), record).await, Self::WHAT);
        Ok(Bytes::from(body))
    }
}

/// Fetches a JSON document from upstream anonymously and returns it with every Xet field removed;
/// an upstream error answer becomes the same error for the client.
async fn fetch_stripped_json(upstream: &Upstream, path: &str, what: &str) -> Result<Vec<u8>, HubError> {
    let reply = upstream.get_buffered(path, None).await?;
    if !reply.status.is_success() {
        return Err(HubError::from_upstream(reply.status, &reply.headers, &reply.body));
    }
    let mut document: Value =
        serde_json::from_slice(&reply.body).map_err(|error| HubError::upstream_invalid(format!("{what} is not JSON: {error}")))?;
    strip_xet_fields(&mut document);
    serde_json::to_vec(&document).map_err(HubError::internal)
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
