//! `/resolve/`: a file's bytes and the Hub's headers about them. HEAD is answered from the catalog
//! alone; GET from disk, from a fill in progress, or by starting a fill (peers before upstream).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hfm_cluster::catalog::EntryKind;
use hfm_cluster::types::RepoKey;
use http::{HeaderValue, Method, StatusCode, header};
use tracing::{debug, warn};

use super::fill_budget::FillRefusal;
use super::passthrough::{forward_request, pass_through};
use super::warm_files::WarmFile;
use super::{Arrival, Charged, HubApi, access_at, set_header, with_cache_status};
use crate::common::zero_copy::ZeroCopySink;
use crate::hub::conditional;
use crate::hub::error::RateLimitFields;
use crate::hub::range::parse_range;
use crate::hub::route::resolve_origin;
use crate::hub::{CacheStatus, HubError};
use crate::metadata::{Access, REPO_TOO_LARGE};
use crate::store::{BlobSource, BlobStore, ContentHasher, Fill, FillOutcome, Room};

/// `/resolve/`: HEAD from the catalog alone; GET from disk, a fill in progress, or a new fill.
pub(super) async fn resolve(hub: &HubApi, request: Request, repo: &RepoKey, revision: &str, path: &str) -> Result<Response, HubError> {
    let (file, metadata_status) = match warm_file(hub, repo, revision, path) {
        // Answered from memory while the catalog's reads would give this very answer, all of it HIT.
        Some(file) => (file, CacheStatus::Hit),
        None => {
            let stamp = hub.metadata.records_stamp(repo);
            let (access, policy_status) = access_at(hub, repo, Some(revision)).await?;
            if access == Access::PassThrough {
                return forward_request(hub, request, Some(path)).await;
            }
            let (commit, ref_status) = hub.metadata.resolve_revision(repo, revision).await?;
            let (entry, manifest_status) = match hub.metadata.entry(repo, &commit, path).await {
                Ok(found) => found,
                // Too many files to cache: this answer and the next ones pass through (anonymously:
                // the repo is public).
                Err(error) if error.code.as_deref() == Some(REPO_TOO_LARGE) => {
                    let (parts, _) = request.into_parts();
                    return pass_through(hub, &parts, None, None, Some(path)).await;
                }
                Err(error) => return Err(error),
            };
            let entry = entry.filter(|entry| entry.kind == EntryKind::File).ok_or_else(|| HubError::entry_not_found(&commit))?;
            let file = WarmFile::new(repo, revision, path, commit, entry.etag().to_owned(), entry.size)
                .ok_or_else(|| HubError::internal("a commit or etag that cannot be a header value"))?;
            let file = Arc::new(file);
            if let Some(stamp) = stamp
                && let Some(freshness) = hub.metadata.freshness(repo, revision, stamp).await
            {
                hub.warm_files.keep(file.clone(), freshness);
            }
            (file, policy_status.max(ref_status).max(manifest_status))
        }
    };
    let wanted = wanted(&request, &file)?;
    if wanted.etag_held {
        return Ok(not_modified(hub, &file, metadata_status));
    }
    let arrival = request.extensions().get::<Arrival>();
    let asker =
        Asker { client: arrival.map(|arrival| arrival.client.ip()), zero_copy: arrival.and_then(|arrival| arrival.zero_copy.as_ref()) };
    let (commit, etag, size) = (file.commit.as_str(), file.etag.as_str(), file.size);
    let (start, end) = (wanted.start, wanted.end);
    let (body, cache, charged) = if request.method() == Method::HEAD || start == end {
        (Body::empty(), metadata_status, None)
    } else {
        let answer = blob_body(hub, &asker, repo, commit, path, etag, size, start, end, metadata_status).await?;
        (answer.body, answer.cache, answer.charged)
    };
    Ok(file_response(hub, &file, &wanted, body, cache, charged))
}

/// The answer to a warm `/resolve/` that needs nothing but memory — a HEAD, a `304`, the GET of a
/// small blob kept in memory (a `config.json`) — made without waiting for anything, so the edge
/// answers it without a request span (nothing on this path logs). `None`: the request needs the
/// catalog, the disk or a source ([`resolve`]), or its headers ask for an error ([`resolve`]
/// answers it).
pub(super) fn answer_from_memory(hub: &HubApi, request: &Request, repo: &RepoKey, revision: &str, path: &str) -> Option<Response> {
    let file = warm_file(hub, repo, revision, path)?;
    let wanted = wanted(request, &file).ok()?;
    if wanted.etag_held {
        return Some(not_modified(hub, &file, CacheStatus::Hit));
    }
    let body = if request.method() == Method::HEAD || wanted.start == wanted.end {
        Body::empty()
    } else {
        Body::from(small_part(&hub.store, &file.etag, file.size, wanted.start, wanted.end)?)
    };
    Some(file_response(hub, &file, &wanted, body, CacheStatus::Hit, None))
}

/// The file remembered for a warm `/resolve/`, while the policy and ref it rests on are fresh and
/// unwritten (so every part of its answer is a HIT).
fn warm_file(hub: &HubApi, repo: &RepoKey, revision: &str, path: &str) -> Option<Arc<WarmFile>> {
    let (file, freshness) = hub.warm_files.get(repo, revision, path)?;
    hub.metadata.still_fresh(repo, &freshness).then_some(file)
}

/// What a request asks of a known file: whether the client holds it already (`If-None-Match`),
/// and the bytes it wants (found from its headers alone: nothing is built until the answer is).
struct Wanted {
    etag_held: bool,
    partial: bool,
    start: u64,
    end: u64,
}

fn wanted(request: &Request, file: &WarmFile) -> Result<Wanted, HubError> {
    let (etag, size) = (file.etag.as_str(), file.size);
    let header_text = |name: header::HeaderName| request.headers().get(name).map(|value| value.to_str().unwrap_or(""));
    let etag_held = header_text(header::IF_NONE_MATCH).is_some_and(|value| conditional::none_match_hits(value, etag));
    let range_applies = conditional::range_still_applies(header_text(header::IF_RANGE), etag);
    let range = if request.method() == Method::GET && !etag_held && range_applies {
        let range_text = match request.headers().get(header::RANGE) {
            Some(value) => Some(value.to_str().map_err(|_| HubError::range_not_satisfiable(size))?),
            None => None,
        };
        parse_range(range_text, size)?
    } else {
        None
    };
    let (start, end) = range.map(|range| (range.start, range.end)).unwrap_or((0, size));
    Ok(Wanted { etag_held, partial: range.is_some(), start, end })
}

/// The client holds this very file (hub-api.md T24): the validators, no body. Content-Length stays
/// the 200's (RFC 9110 §8.6 allows only that value; without it hyper would say 0).
fn not_modified(hub: &HubApi, file: &WarmFile, metadata_status: CacheStatus) -> Response {
    let mut headers = file.headers.clone();
    for name in [header::CONTENT_TYPE, header::ACCEPT_RANGES] {
        headers.remove(name);
    }
    hub.answers.record(metadata_status);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = headers;
    with_cache_status(response, metadata_status)
}

/// A `200` or `206` with the wanted bytes, counted by where they came from.
fn file_response(hub: &HubApi, file: &WarmFile, wanted: &Wanted, body: Body, cache: CacheStatus, charged: Option<u64>) -> Response {
    let (start, end, size) = (wanted.start, wanted.end, file.size);
    let mut headers = file.headers.clone();
    if end - start != size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    if wanted.partial {
        set_header(&mut headers, "content-range", &format!("bytes {start}-{}/{size}", end - 1));
    }
    hub.answers.record(cache);
    let mut response = Response::new(body);
    if let Some(bytes) = charged {
        response.extensions_mut().insert(Charged(bytes));
    }
    *response.status_mut() = if wanted.partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    *response.headers_mut() = headers;
    with_cache_status(response, cache)
}

/// `start..end` of a small blob kept in memory, counted as bytes from disk; `None` when it is not
/// kept.
fn small_part(store: &BlobStore, etag: &str, size: u64, start: u64, end: u64) -> Option<Bytes> {
    let part = store.kept_small(etag, size)?.slice(start as usize..end as usize);
    crate::telemetry::metrics().bytes(crate::telemetry::ByteSource::Disk, part.len() as u64);
    Some(part)
}

/// Files up to this size are filled whole for any request: a range of them costs little more.
const WHOLE_FILE_BELOW: u64 = 8 << 20;

/// Whether a request for `start..end` of a cold blob of `size` bytes commits the node to a fill:
/// the whole file, a range of at least half of it, or a range that runs to its end from its first
/// half (a resumed download). A smaller range of a larger file (a Parquet footer, a tensor header)
/// is answered by a ranged request and not stored: a client asking for one byte must not make the
/// node fetch and store gigabytes.
fn wants_whole_file(size: u64, start: u64, end: u64) -> bool {
    size <= WHOLE_FILE_BELOW || end - start >= size / 2 || (end == size && start < size / 2)
}

/// Who asks for a blob's bytes: the client (its fills are bounded), and whether its connection sends
/// stored bytes from the file itself (plain HTTP/1.1, see `common::zero_copy`).
struct Asker<'a> {
    client: Option<IpAddr>,
    zero_copy: Option<&'a ZeroCopySink>,
}

/// How a blob's bytes reach the client, and what the client is charged for them (a fill it
/// starts is charged whole).
pub(super) struct BlobBody {
    body: Body,
    cache: CacheStatus,
    pub charged: Option<u64>,
}

/// Finds the bytes `start..end` of a blob: on disk, in a fill in progress, by starting a fill (within
/// the fill budget), or by a ranged request for a small part of a cold large file.
#[allow(clippy::too_many_arguments)]
async fn blob_body(
    hub: &HubApi,
    asker: &Asker<'_>,
    repo: &RepoKey,
    commit: &str,
    path: &str,
    etag: &str,
    size: u64,
    start: u64,
    end: u64,
    metadata_status: CacheStatus,
) -> Result<BlobBody, HubError> {
    let store = &hub.store;
    if let Some(part) = small_part(store, etag, size, start, end) {
        // The common warm answer (a config.json): whole in memory, no stream to drive.
        return Ok(BlobBody { body: Body::from(part), cache: metadata_status, charged: None });
    }
    let from_disk = |stream| BlobBody { body: Body::from_stream(counted_from_disk(stream)), cache: metadata_status, charged: None };
    if let Some(stream) = store.stream_verified(etag, size, start, end, asker.zero_copy).await.map_err(HubError::internal)? {
        return Ok(from_disk(stream));
    }
    let origin = resolve_origin(repo, commit, path);
    if let Some(fill) = store.fill_in_progress(etag).filter(|fill| fill.size == size) {
        return Ok(join_fill(hub, asker, &fill, start, end, &origin).await);
    }
    if !wants_whole_file(size, start, end) {
        debug!(%etag, start, end, size, "a small range of a cold file; answering it by a ranged request, unstored");
        let range_source = hub.sources.range_source(etag, size, &origin).await;
        let body = Body::from_stream(direct_stream(range_source, etag.to_owned(), size, start, end));
        return Ok(BlobBody { body, cache: CacheStatus::Miss, charged: None });
    }
    let source = hub.sources.blob_source(etag, size, &origin).await;
    let admit = || hub.fill_budget.try_start(asker.client);
    let (outcome, slot) = store
        .fill_or_join_admitted(etag, size, source.clone(), Room::EvictIfNeeded, admit)
        .map_err(HubError::internal)?
        .map_err(|refusal| fill_refused(&hub.fill_budget, refusal))?;
    match outcome {
        FillOutcome::Stored(_) => match store.stream_verified(etag, size, start, end, asker.zero_copy).await.map_err(HubError::internal)? {
            Some(stream) => Ok(from_disk(stream)),
            None => Err(HubError::internal("a blob vanished as it was stored; retry")),
        },
        FillOutcome::Filling(fill) => {
            let started = slot.is_some();
            if let Some(slot) = slot {
                // The slot is held until the fill ends, even if this client leaves first.
                let running = fill.clone();
                tokio::spawn(async move {
                    running.finished().await;
                    drop(slot);
                });
            }
            let mut answer = join_fill(hub, asker, &fill, start, end, &origin).await;
            if started {
                answer.charged = Some(size.max(end - start));
            }
            Ok(answer)
        }
        FillOutcome::NoRoom => {
            let body = Body::from_stream(direct_stream(source, etag.to_owned(), size, start, end));
            Ok(BlobBody { body, cache: CacheStatus::Miss, charged: None })
        }
    }
}

/// Reads `start..end` from a fill in progress. A range far beyond what the fill has written (a
/// Parquet footer, a tensor at the end of a huge file) is answered straight from a source, unstored,
/// while the fill goes on: clients give up when no byte comes for seconds.
async fn join_fill(hub: &HubApi, asker: &Asker<'_>, fill: &Arc<Fill>, start: u64, end: u64, origin: &str) -> BlobBody {
    let (etag, size) = (fill.etag.as_str(), fill.size);
    if start > fill.progress().written.saturating_add(RANGE_FIRST_GAP) {
        debug!(%etag, start, end, "range ahead of the fill; answering it from a source directly");
        let range_source = hub.sources.range_source(etag, size, origin).await;
        let body = Body::from_stream(direct_stream(range_source, etag.to_owned(), size, start, end));
        return BlobBody { body, cache: CacheStatus::Miss, charged: None };
    }
    let body = Body::from_stream(fill.follow(start, end, asker.zero_copy.cloned()));
    BlobBody { body, cache: CacheStatus::Miss, charged: None }
}

/// How long a client refused a cold fill waits before asking again.
const FILL_RETRY_SECS: u64 = 5;

/// A fill that may not start now: 429 in the Hub's format; the client retries after a few seconds.
fn fill_refused(budget: &super::fill_budget::FillBudget, refusal: FillRefusal) -> HubError {
    let message = match refusal {
        FillRefusal::Client => {
            "Too many downloads of files this mirror does not hold yet are running for your network; retry after the delay in Retry-After"
        }
        FillRefusal::Total => "This mirror is fetching as many new files as it can; retry after the delay in Retry-After",
    };
    // The quota is concurrent fills: "per window" is the retry delay, the closest the IETF form has.
    let fields = RateLimitFields::own("fills", budget.bound(refusal) as u64, FILL_RETRY_SECS, FILL_RETRY_SECS);
    HubError::rate_limited(message, fields, FILL_RETRY_SECS)
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

#[cfg(test)]
mod tests {
    use super::wants_whole_file;

    #[test]
    fn only_a_large_part_of_a_large_cold_file_starts_a_fill() {
        let huge = 40 << 20;
        assert!(wants_whole_file(huge, 0, huge), "the whole file");
        assert!(!wants_whole_file(huge, 0, 1), "one byte of a cold 40 MiB file");
        assert!(!wants_whole_file(huge, huge - 65_536, huge), "a footer");
        assert!(wants_whole_file(huge, 1 << 20, huge), "a resumed download");
        assert!(wants_whole_file(huge, 0, huge / 2), "half of it");
        assert!(wants_whole_file(1 << 20, 0, 1), "a small file is filled whole");
    }
}
