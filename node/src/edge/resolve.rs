//! `/resolve/`: a file's bytes and the Hub's headers about them. HEAD is answered from the catalog
//! alone; GET from disk, from a fill in progress, or by starting a fill (peers before upstream).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hfm_cluster::catalog::EntryKind;
use hfm_cluster::types::RepoKey;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tracing::{debug, warn};

use super::passthrough::forward_request;
use super::{HubApi, access, set_header, with_cache_status};
use crate::hub::headers::{X_LINKED_ETAG, X_LINKED_SIZE, X_REPO_COMMIT, content_type_for_path};
use crate::hub::range::parse_range;
use crate::hub::route::resolve_origin;
use crate::hub::{CacheStatus, HubError};
use crate::metadata::Access;
use crate::store::{BlobSource, ContentHasher, FillOutcome};

/// `/resolve/`: HEAD from the catalog alone; GET from disk, a fill in progress, or a new fill.
pub(super) async fn resolve(hub: &HubApi, request: Request, repo: &RepoKey, revision: &str, path: &str) -> Result<Response, HubError> {
    let (access, policy_status) = access(hub, repo).await?;
    if access == Access::PassThrough {
        return forward_request(hub, request, Some(path)).await;
    }
    let (commit, ref_status) = hub.metadata.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = hub.metadata.manifest(repo, &commit).await?;
    let entry = manifest.find(path).filter(|entry| entry.kind == EntryKind::File).ok_or_else(|| HubError::entry_not_found(&commit))?;
    let (etag, size) = (entry.etag().to_owned(), entry.size);
    let metadata_status = policy_status.max(ref_status).max(manifest_status);

    let range = if request.method() == Method::GET {
        let header_text = match request.headers().get(header::RANGE) {
            Some(value) => Some(value.to_str().map_err(|_| HubError::range_not_satisfiable(size))?),
            None => None,
        };
        parse_range(header_text, size)?
    } else {
        None
    };
    let (start, end) = range.map(|range| (range.start, range.end)).unwrap_or((0, size));

    let mut headers = HeaderMap::new();
    set_header(&mut headers, X_REPO_COMMIT, &commit);
    set_header(&mut headers, "etag", &format!("\"{etag}\""));
    set_header(&mut headers, X_LINKED_ETAG, &format!("\"{etag}\""));
    set_header(&mut headers, X_LINKED_SIZE, &size.to_string());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for_path(path)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        set_header(&mut headers, "content-range", &format!("bytes {start}-{}/{size}", end - 1));
    }

    let (body, cache) = if request.method() == Method::HEAD || start == end {
        (Body::empty(), metadata_status)
    } else {
        blob_body(hub, repo, &commit, path, &etag, size, start, end, metadata_status).await?
    };
    hub.answers.record(cache);
    let mut response = Response::new(body);
    *response.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    *response.headers_mut() = headers;
    Ok(with_cache_status(response, cache))
}

/// Finds the bytes `start..end` of a blob: on disk, in a fill in progress, or by starting a fill.
#[allow(clippy::too_many_arguments)]
async fn blob_body(
    hub: &HubApi,
    repo: &RepoKey,
    commit: &str,
    path: &str,
    etag: &str,
    size: u64,
    start: u64,
    end: u64,
    metadata_status: CacheStatus,
) -> Result<(Body, CacheStatus), HubError> {
    let store = &hub.store;
    if let Some(stream) = store.stream_verified(etag, size, start, end).await.map_err(HubError::internal)? {
        return Ok((Body::from_stream(counted_from_disk(stream)), metadata_status));
    }
    let origin = resolve_origin(repo, commit, path);
    let source = hub.sources.blob_source(etag, size, &origin).await;
    match store.fill_or_join(etag, size, source.clone()).map_err(HubError::internal)? {
        FillOutcome::Stored(_) => match store.stream_verified(etag, size, start, end).await.map_err(HubError::internal)? {
            Some(stream) => Ok((Body::from_stream(counted_from_disk(stream)), metadata_status)),
            None => Err(HubError::internal("a blob vanished as it was stored; retry")),
        },
        FillOutcome::Filling(fill) => {
            // A range far beyond what the fill has written (a Parquet footer, a tensor at the end of
            // a huge file) is answered straight from a source, unstored, while the fill goes on:
            // clients give up when no byte comes for seconds.
            if start > fill.progress().written.saturating_add(RANGE_FIRST_GAP) {
                debug!(%etag, start, end, "range ahead of the fill; answering it from a source directly");
                let range_source = hub.sources.range_source(etag, size, &origin).await;
                return Ok((Body::from_stream(direct_stream(range_source, etag.to_owned(), size, start, end)), CacheStatus::Miss));
            }
            Ok((Body::from_stream(fill.reader(start, end)), CacheStatus::Miss))
        }
        FillOutcome::NoRoom => Ok((Body::from_stream(direct_stream(source, etag.to_owned(), size, start, end)), CacheStatus::Miss)),
    }
}

/// Counts the bytes of a stored blob sent to a client.
fn counted_from_disk(
    stream: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    stream.inspect(|chunk| {
        if let Ok(bytes) = chunk {
            crate::telemetry::metrics().bytes(crate::telemetry::ByteSource::Disk, bytes.len() as u64);
        }
    })
}

/// How far ahead of a fill's progress a range may start and still wait for the fill (at tens of
/// MB/s from upstream, well under a second).
const RANGE_FIRST_GAP: u64 = 16 << 20;

/// Streams a blob straight from its source to one client, without storing it (no room on disk, or a
/// range far ahead of the fill).
/// A whole-file answer is still verified: its last chunk goes out only if the hash matched.
fn direct_stream(
    source: Arc<dyn BlobSource>,
    etag: String,
    size: u64,
    start: u64,
    end: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    struct Direct {
        source: Arc<dyn BlobSource>,
        stream: Option<crate::store::ByteStream>,
        skip: u64,
        remaining: u64,
        hasher: Option<ContentHasher>,
        etag: String,
    }
    let hasher = if start == 0 && end == size { ContentHasher::for_etag(&etag, size) } else { None };
    let state = Direct { source, stream: None, skip: 0, remaining: end - start, hasher, etag };
    futures_util::stream::unfold(state, move |mut state| async move {
        if state.remaining == 0 {
            return None;
        }
        if state.stream.is_none() {
            match state.source.open(start).await {
                Ok((stream_start, stream)) => {
                    state.skip = start - stream_start.min(start);
                    state.stream = Some(stream);
                }
                Err(error) => {
                    state.remaining = 0;
                    return Some((Err(std::io::Error::other(error)), state));
                }
            }
        }
        loop {
            let next = state.stream.as_mut().expect("opened above").next().await;
            let mut bytes = match next {
                Some(Ok(bytes)) => bytes,
                Some(Err(error)) => {
                    state.remaining = 0;
                    return Some((Err(std::io::Error::other(error)), state));
                }
                None => {
                    state.remaining = 0;
                    return Some((Err(std::io::Error::other("upstream ended early")), state));
                }
            };
            let skipped = state.skip.min(bytes.len() as u64);
            bytes = bytes.slice(skipped as usize..);
            state.skip -= skipped;
            let kept = state.remaining.min(bytes.len() as u64);
            if kept == 0 {
                continue;
            }
            bytes = bytes.slice(..kept as usize);
            state.remaining -= kept;
            if let Some(hasher) = state.hasher.as_mut() {
                hasher.update(&bytes);
            }
            if state.remaining == 0 {
                if let Some(hasher) = state.hasher.take() {
                    let digest = hasher.finish();
                    if digest != state.etag {
                        warn!(etag = %state.etag, %digest, "upstream bytes do not match the etag; aborting the response");
                        return Some((Err(std::io::Error::other("content hash mismatch")), state));
                    }
                }
            }
            return Some((Ok(bytes), state));
        }
    })
}
