//! The HTTP edge: one handler that routes on the raw path and answers every Hub route, either from
//! the mirror (cacheable repos) or by passing the request through to upstream (everything else).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hfm_cluster::catalog::EntryKind;
use hfm_cluster::types::RepoKey;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::access_log::{AccessLine, AccessLog};
use crate::hub::headers::{X_CACHE, X_LINKED_ETAG, X_LINKED_SIZE, X_REPO_COMMIT, content_type_for_path, forwardable_response_headers};
use crate::hub::json::{strip_xet_from_body, tree_entry_json};
use crate::hub::query::{flag, parse_pairs, values};
use crate::hub::range::parse_range;
use crate::hub::route::{Route, encode_segment, resolve_origin, route, validate_relative_path};
use crate::hub::{ErrorSource, HubError};
use crate::limits::{Admission, EdgeLimits, Refusal};
use crate::mirror::{Access, CacheStatus, Mirror, api_repo_path};
use crate::store::{BlobSource, ContentHasher, FillOutcome, is_valid_etag};
use crate::upstream::read_buffered;

/// The most header bytes a request may carry; beyond, 431 in the Hub's format.
const MAX_HEADER_BYTES: usize = 16 << 10;
/// The most body bytes of a request the mirror reads (paths-info, pass-through API calls).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Request headers forwarded on a pass-through, besides `Authorization`.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] =
    &[header::ACCEPT, header::CONTENT_TYPE, header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE];

#[derive(Clone)]
pub struct EdgeState {
    mirror: Mirror,
    limits: Arc<EdgeLimits>,
    /// Where heavy users are sent: the rsync modules of this mirror.
    rsync_hint: Arc<str>,
    access_log: Option<AccessLog>,
}

/// Builds the router of the edge; `limits` applies to every request, and every answer goes to
/// `access_log`.
pub fn router(mirror: Mirror, limits: Arc<EdgeLimits>, access_log: Option<AccessLog>) -> Router {
    let config = mirror.config();
    let rsync_hint: Arc<str> = match (&config.dns, &config.rsync) {
        (Some(dns), _) => format!("rsync://{}.{}/", dns.zone.rsync_label, dns.zone.apex.trim_end_matches('.')).into(),
        (None, Some(rsync)) => format!("the rsync modules of this mirror (port {})", rsync.listen.port()).into(),
        (None, None) => "the mirror's rsync modules".into(),
    };
    Router::new().fallback(handle).with_state(EdgeState { mirror, limits, rsync_hint, access_log })
}

/// Lets a request through the edge's limits (before any work is done for it), or answers 429 in the
/// Hub's format with `Retry-After`.
fn admit(state: &EdgeState, request: &Request) -> Result<Option<Admission>, HubError> {
    let Some(ConnectInfo(client)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else { return Ok(None) };
    state.limits.admit(client.ip()).map_err(|(refusal, retry)| {
        let message = match refusal {
            Refusal::Rate => "Too many requests from your address; slow down and retry after the delay in Retry-After".to_owned(),
            Refusal::Parallel => "Too many parallel requests from your network; retry after the delay in Retry-After".to_owned(),
            Refusal::DailyBytes => format!(
                "Your network downloaded more than its daily quota over HTTP in the last 24 hours. Bulk downloads go through rsync: {} (modules models, datasets, indexes)",
                state.rsync_hint
            ),
        };
        let mut error = HubError::new(StatusCode::TOO_MANY_REQUESTS, "RateLimited", message, ErrorSource::Client);
        error.retry_after = Some(retry.as_secs_f64().ceil().max(1.0).to_string());
        error
    })
}

/// A response body that holds its request's admission (a parallel slot) until it is sent or dropped.
struct AdmittedBody {
    inner: Body,
    _admission: Admission,
}

impl http_body::Body for AdmittedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn handle(State(state): State<EdgeState>, request: Request) -> Response {
    let started = Instant::now();
    let span = info_span!("request", method = %request.method(), path = %request.uri().path(), repo = field::Empty, rev = field::Empty, file = field::Empty);
    let is_get = request.method() == Method::GET;
    // What the access log keeps, taken before the request is consumed: never the query (it may
    // carry secrets), never a credential header.
    let logged = state.access_log.as_ref().map(|_| {
        let user_agent = request.headers().get(header::USER_AGENT).and_then(|value| value.to_str().ok()).unwrap_or("-").to_owned();
        let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        (request.method().to_string(), request.uri().path().to_owned(), user_agent, client)
    });
    let (response, admission, label, repo) = match admit(&state, &request) {
        Ok(admission) => {
            let (response, label, repo) = dispatch(&state, request).instrument(span.clone()).await;
            (response, admission, label, repo)
        }
        Err(refused) => (Err(refused), None, "refused", None),
    };
    let mut response = response.unwrap_or_else(|error| {
        if error.source == ErrorSource::Internal {
            span.in_scope(|| warn!(%error, "internal error"));
        }
        error.into_response()
    });
    let cache = response.headers().get(X_CACHE).and_then(|value| CacheStatus::parse(value.to_str().ok()?)).map_or("-", CacheStatus::as_str);
    span.in_scope(|| info!(status = response.status().as_u16(), cache, elapsed_ms = started.elapsed().as_millis() as u64, "answered"));
    crate::metrics::counters().request(label, response.status().as_u16(), cache);
    if let (Some(access_log), Some((method, path, user_agent, client))) = (&state.access_log, logged) {
        let bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok()).unwrap_or(0);
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        access_log.record(AccessLine::new(SystemTime::now(), &method, &path, status, bytes, elapsed, cache, &user_agent, client, repo));
    }
    if let Some(admission) = admission {
        let length = response.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let (true, Some(length)) = (is_get, length) {
            admission.record_bytes(length);
        }
        response = response.map(|inner| Body::new(AdmittedBody { inner, _admission: admission }));
    }
    response
}

/// Operator actions (drain, pins) are taken only from the node's own host: loopback, or the address
/// the node listens on (a node bound to one address, e.g. in its own network namespace, is asked from
/// that address).
fn require_own_host(state: &EdgeState, request: &Request, action: &str) -> Result<(), HubError> {
    let own_address = state.mirror.config().listen.ip();
    let from_own_host = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|info| info.0.ip().is_loopback() || (!own_address.is_unspecified() && info.0.ip() == own_address));
    if from_own_host {
        return Ok(());
    }
    Err(HubError::new(StatusCode::FORBIDDEN, "Forbidden", format!("{action} is for the node's own operators"), ErrorSource::Client))
}

fn require_method(method: &Method, allowed: &[Method]) -> Result<(), HubError> {
    if allowed.contains(method) { Ok(()) } else { Err(HubError::method_not_allowed()) }
}

fn record_span(repo: &RepoKey, revision: Option<&str>, path: Option<&str>) {
    let span = tracing::Span::current();
    span.record("repo", field::display(repo));
    if let Some(revision) = revision {
        span.record("rev", revision);
    }
    if let Some(path) = path {
        span.record("file", path);
    }
}

/// Answers one request; also says which route it took (for metrics) and the repository it named
/// (for the access log).
async fn dispatch(state: &EdgeState, request: Request) -> (Result<Response, HubError>, &'static str, Option<String>) {
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return (Err(HubError::headers_too_large(MAX_HEADER_BYTES)), "invalid", None);
    }
    let route = match route(request.uri().path()) {
        Ok(route) => route,
        Err(error) => return (Err(error), "invalid", None),
    };
    let label = route.label();
    let repo = route.repo().map(ToString::to_string);
    let method = request.method().clone();
    let is_metadata = matches!(route, Route::RepoInfo { .. } | Route::Tree { .. } | Route::PathsInfo { .. } | Route::Refs { .. });
    let answered = answer(state, request, route, method).await;
    if let Ok(response) = &answered {
        if is_metadata && response.status().is_success() {
            let cache = response.headers().get(X_CACHE).and_then(|value| CacheStatus::parse(value.to_str().ok()?));
            if let Some(cache) = cache {
                state.mirror.metadata_answers().record(cache);
            }
        }
    }
    (answered, label, repo)
}

/// Whether this node takes traffic: not draining and, in a cluster, live in its own gossip view.
fn is_ready(mirror: &Mirror) -> bool {
    match mirror.cluster() {
        Some(cluster) => cluster.serving_nodes().iter().any(|name| name == cluster.self_name()),
        None => true,
    }
}

/// `/readyz`: 200 when the node takes traffic, else 503 in the Hub's format.
fn readiness(mirror: &Mirror) -> Result<Response, HubError> {
    if is_ready(mirror) {
        return Ok((StatusCode::OK, "ready\n").into_response());
    }
    Err(HubError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "NotReady",
        "This node is not taking traffic (starting or draining)",
        ErrorSource::Internal,
    ))
}

/// `/metrics` in Prometheus' text format.
fn metrics_response(state: &EdgeState) -> Response {
    let mut response = crate::metrics::render(&state.mirror, &state.limits, state.access_log.as_ref()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// The operator port's router: `/metrics`, `/healthz` and `/readyz` for whoever reaches it (bind it
/// to an address only operators and Prometheus can reach).
pub fn operator_router(mirror: Mirror, limits: Arc<EdgeLimits>, access_log: Option<AccessLog>) -> Router {
    async fn operator(State(state): State<EdgeState>, request: Request) -> Response {
        let answered = match route(request.uri().path()) {
            Ok(Route::Metrics) => Ok(metrics_response(&state)),
            Ok(Route::Ready) => readiness(&state.mirror),
            Ok(Route::Health) => Ok((StatusCode::OK, "ok\n").into_response()),
            _ => Err(HubError::route_not_found()),
        };
        answered.unwrap_or_else(IntoResponse::into_response)
    }
    let rsync_hint: Arc<str> = Arc::from("");
    Router::new().fallback(operator).with_state(EdgeState { mirror, limits, rsync_hint, access_log })
}

async fn answer(state: &EdgeState, request: Request, route: Route, method: Method) -> Result<Response, HubError> {
    let reads = [Method::GET, Method::HEAD];
    match route {
        Route::Health => Ok((StatusCode::OK, "ok\n").into_response()),
        Route::Ready => readiness(&state.mirror),
        Route::Metrics => {
            require_own_host(state, &request, "Metrics")?;
            Ok(metrics_response(state))
        }
        Route::Status => Ok(json_response(&method, Bytes::from(status_json(&state.mirror)), CacheStatus::Hit, HeaderMap::new())),
        Route::Drain => {
            require_method(&method, &[Method::POST])?;
            require_own_host(state, &request, "Draining")?;
            Ok(json_response(&method, Bytes::from(drain(&state.mirror).await), CacheStatus::Hit, HeaderMap::new()))
        }
        Route::Pins => {
            require_method(&method, &[Method::GET, Method::HEAD, Method::POST, Method::DELETE])?;
            let mirror = &state.mirror;
            let answer = if method == Method::GET || method == Method::HEAD {
                crate::pins::pins_status(mirror).await?
            } else {
                require_own_host(state, &request, "Pinning")?;
                let (repo, revision) = crate::pins::pin_target(request.uri().query().unwrap_or(""))?;
                record_span(&repo, Some(&revision), None);
                if method == Method::POST {
                    crate::pins::pin(mirror, &repo, &revision).await?
                } else {
                    crate::pins::unpin(mirror, &repo).await?
                }
            };
            Ok(json_response(
                &method,
                Bytes::from(serde_json::to_vec_pretty(&answer).unwrap_or_default()),
                CacheStatus::Hit,
                HeaderMap::new(),
            ))
        }
        Route::Replicas { etag } => {
            require_method(&method, &reads)?;
            if !is_valid_etag(&etag) {
                return Err(HubError::bad_request("Not a blob etag"));
            }
            let record = state.mirror.catalog().get_replicas(&etag).await.map_err(HubError::internal)?;
            let body = serde_json::json!({
                "etag": etag,
                "size": record.as_ref().map(|record| record.size),
                "holders": record.map(|record| record.holders).unwrap_or_default(),
                "held_here": state.mirror.store().contains(&etag),
            });
            Ok(json_response(
                &method,
                Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default()),
                CacheStatus::Hit,
                HeaderMap::new(),
            ))
        }
        Route::AgentHarnesses => Err(HubError::route_not_found()),
        Route::Resolve { repo, revision, path } => {
            record_span(&repo, Some(&revision), Some(&path));
            require_method(&method, &reads)?;
            resolve(state, request, &repo, &revision, &path).await
        }
        Route::RepoInfo { repo, revision } => {
            record_span(&repo, revision.as_deref(), None);
            require_method(&method, &reads)?;
            repo_info(state, request, &repo, revision.as_deref()).await
        }
        Route::Tree { repo, revision, path } => {
            record_span(&repo, Some(&revision), Some(&path));
            require_method(&method, &reads)?;
            tree(state, request, &repo, &revision, &path).await
        }
        Route::PathsInfo { repo, revision } => {
            record_span(&repo, Some(&revision), None);
            require_method(&method, &[Method::POST])?;
            paths_info(state, request, &repo, &revision).await
        }
        Route::Refs { repo } => {
            record_span(&repo, None, None);
            require_method(&method, &reads)?;
            refs(state, request, &repo).await
        }
        Route::Listing | Route::ApiPassthrough { .. } => {
            let (parts, body) = request.into_parts();
            let body = read_body(&parts, body).await?;
            let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
            pass_through(state, &parts, body, authorization.as_ref(), None).await
        }
    }
}

/// Drains the node: gossip says draining (peers stop choosing it as leader; DNS will stop naming
/// it), catalog leadership moves to another voter, and the fills in progress finish.
async fn drain(mirror: &Mirror) -> Vec<u8> {
    const FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
    if let Some(cluster) = mirror.cluster() {
        cluster.start_draining().await;
    }
    let handed_to = match mirror.raft() {
        Some(raft) => {
            let voters: Vec<u64> = (1..=mirror.cluster().map_or(0, |cluster| cluster.topology_names().len() as u64)).collect();
            raft.step_down(&voters).await
        }
        None => None,
    };
    let started = Instant::now();
    while mirror.store().usage().reserved_bytes > 0 && started.elapsed() < FILL_WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let fills_left = mirror.store().usage().reserved_bytes > 0;
    info!(handed_to, fills_left, "node drained");
    serde_json::to_vec_pretty(&serde_json::json!({
        "node": mirror.config().name,
        "draining": true,
        "catalog_leadership_handed_to": handed_to,
        "fills_finished": !fills_left,
    }))
    .unwrap_or_default()
}

/// The node's own view: its store, and the cluster's members as gossip sees them.
fn status_json(mirror: &Mirror) -> Vec<u8> {
    let usage = mirror.store().usage();
    let (hits, revalidated, misses) = mirror.answers().snapshot();
    let (metadata_hits, metadata_revalidated, metadata_misses) = mirror.metadata_answers().snapshot();
    let mut status = serde_json::json!({
        "node": mirror.config().name,
        "version": env!("CARGO_PKG_VERSION"),
        "store": {"blobs": usage.num_blobs, "stored_bytes": usage.stored_bytes, "reserved_bytes": usage.reserved_bytes},
        "answers": {"hit": hits, "revalidated": revalidated, "miss": misses},
        "metadata_answers": {"hit": metadata_hits, "revalidated": metadata_revalidated, "miss": metadata_misses},
    });
    if let Some(replicas) = mirror.replicas() {
        status["replicas"] = serde_json::to_value(replicas.counters()).unwrap_or_default();
    }
    if let Some(rsync) = mirror.rsync() {
        status["rsync"] = serde_json::to_value(rsync.state()).unwrap_or_default();
    }
    if let Some(cluster) = mirror.cluster() {
        let view = cluster.view();
        let members: Vec<Value> = cluster
            .member_states()
            .into_iter()
            .map(|(name, state)| match view.members.get(&name) {
                Some(member) => serde_json::json!({
                    "name": name, "state": state,
                    "generation": member.generation, "free_disk": member.free_disk, "version": member.version, "http_url": member.http_url,
                }),
                None => serde_json::json!({"name": name, "state": state}),
            })
            .collect();
        status["members"] = Value::Array(members);
    }
    if let Some(raft) = mirror.raft() {
        let raft = raft.status();
        status["raft"] = serde_json::json!({"id": raft.id, "state": raft.state, "term": raft.term, "leader": raft.leader, "last_applied": raft.last_applied});
    }
    serde_json::to_vec_pretty(&status).unwrap_or_default()
}

/// Reads a request body for methods that carry one, bounded by [`MAX_BODY_BYTES`].
async fn read_body(parts: &Parts, body: Body) -> Result<Option<Bytes>, HubError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(None);
    }
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(HubError::payload_too_large(MAX_BODY_BYTES));
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map(Some).map_err(|_| HubError::payload_too_large(MAX_BODY_BYTES))
}

/// The origin clients reach us at, for absolute `Link` URLs (hub-api.md rule 4).
fn public_origin(mirror: &Mirror, headers: &HeaderMap) -> String {
    if let Some(url) = &mirror.config().public_url {
        return url.clone();
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let host_is_sane =
        !host.is_empty() && host.len() <= 255 && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-:[]_".contains(&byte));
    if host_is_sane { format!("http://{host}") } else { format!("http://{}", mirror.config().listen) }
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn with_cache_status(mut response: Response, cache: CacheStatus) -> Response {
    response.headers_mut().insert(X_CACHE, HeaderValue::from_static(cache.as_str()));
    response
}

fn json_response(method: &Method, body: Bytes, cache: CacheStatus, extra: HeaderMap) -> Response {
    let length = body.len();
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(body) };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.extend(extra);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    with_cache_status(response, cache)
}

/// Forwards a request to upstream as it came (raw path and query), streaming the answer back with
/// Xet signals removed and `Link` rewritten. For `/resolve/`, redirects are followed server-side
/// and the file metadata collected on the way is put on the answer.
async fn pass_through(
    state: &EdgeState,
    parts: &Parts,
    body: Option<Bytes>,
    authorization: Option<&HeaderValue>,
    resolve_path: Option<&str>,
) -> Result<Response, HubError> {
    let mirror = &state.mirror;
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    let path_and_query = parts.uri.path_and_query().map(|value| value.as_str()).unwrap_or("/");
    let end = mirror.upstream().send(parts.method.clone(), path_and_query, &headers, authorization, body).await?;
    let status = end.response.status();
    let origin = public_origin(mirror, &parts.headers);
    let mut response_headers = forwardable_response_headers(end.response.headers(), mirror.upstream().origins(), &origin);
    let upstream_length = end.response.headers().get(header::CONTENT_LENGTH).cloned();
    if let (Some(path), true) = (resolve_path, status.is_success()) {
        let metadata = &end.metadata;
        if let Some(commit) = &metadata.commit {
            set_header(&mut response_headers, X_REPO_COMMIT, commit);
        }
        if let Some(etag) = &metadata.etag {
            set_header(&mut response_headers, X_LINKED_ETAG, &format!("\"{etag}\""));
            set_header(&mut response_headers, "etag", &format!("\"{etag}\""));
        }
        if let Some(size) = metadata.size {
            set_header(&mut response_headers, X_LINKED_SIZE, &size.to_string());
        }
        response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for_path(path)));
        response_headers.remove(header::LOCATION);
    }
    let is_json = response_headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|text| text.starts_with("application/json"));
    let body = if parts.method == Method::HEAD {
        if let Some(length) = upstream_length {
            response_headers.insert(header::CONTENT_LENGTH, length);
        }
        Body::empty()
    } else if is_json && resolve_path.is_none() {
        let reply = read_buffered(end.response).await?;
        let stripped = strip_xet_from_body(&reply.body);
        response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stripped.len()));
        Body::from(stripped)
    } else {
        if let Some(length) = upstream_length {
            response_headers.insert(header::CONTENT_LENGTH, length);
        }
        Body::from_stream(end.response.bytes_stream())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(with_cache_status(response, CacheStatus::Miss))
}

/// Decides how a repo is served; on pass-through, forwards the request with the caller's token.
async fn access(state: &EdgeState, repo: &RepoKey) -> Result<(Access, CacheStatus), HubError> {
    let (access, policy_status) = state.mirror.policy(repo).await?;
    // A policy re-check asked upstream something, but served nothing from it.
    Ok((access, policy_status.min(CacheStatus::Revalidated)))
}

async fn forward_request(state: &EdgeState, request: Request, resolve_path: Option<&str>) -> Result<Response, HubError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts, body).await?;
    let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
    pass_through(state, &parts, body, authorization.as_ref(), resolve_path).await
}

/// `/resolve/`: HEAD from the catalog alone; GET from disk, a fill in progress, or a new fill.
async fn resolve(state: &EdgeState, request: Request, repo: &RepoKey, revision: &str, path: &str) -> Result<Response, HubError> {
    let mirror = &state.mirror;
    let (access, policy_status) = access(state, repo).await?;
    if access == Access::PassThrough {
        return forward_request(state, request, Some(path)).await;
    }
    let (commit, ref_status) = mirror.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = mirror.manifest(repo, &commit).await?;
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
        blob_body(mirror, repo, &commit, path, &etag, size, start, end, metadata_status).await?
    };
    mirror.answers().record(cache);
    let mut response = Response::new(body);
    *response.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    *response.headers_mut() = headers;
    Ok(with_cache_status(response, cache))
}

/// Finds the bytes `start..end` of a blob: on disk, in a fill in progress, or by starting a fill.
#[allow(clippy::too_many_arguments)]
async fn blob_body(
    mirror: &Mirror,
    repo: &RepoKey,
    commit: &str,
    path: &str,
    etag: &str,
    size: u64,
    start: u64,
    end: u64,
    metadata_status: CacheStatus,
) -> Result<(Body, CacheStatus), HubError> {
    let store = mirror.store();
    if let Some(stream) = store.stream_verified(etag, size, start, end).await.map_err(HubError::internal)? {
        return Ok((Body::from_stream(counted_from_disk(stream)), metadata_status));
    }
    let origin = resolve_origin(repo, commit, path);
    let source = mirror.blob_source(etag, size, &origin).await;
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
                let range_source = mirror.range_source(etag, size, &origin).await;
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
            crate::metrics::counters().bytes(crate::metrics::ByteSource::Disk, bytes.len() as u64);
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

/// The query parameters that change a repo-info answer, normalized into a cache variant.
fn repo_info_variant(query: &str) -> String {
    let pairs = parse_pairs(query);
    let mut parts = Vec::new();
    if flag(&pairs, "blobs") {
        parts.push("blobs=true".to_owned());
    }
    if flag(&pairs, "securityStatus") {
        parts.push("securityStatus=true".to_owned());
    }
    let mut expands: Vec<String> = values(&pairs, "expand").map(|value| format!("expand={}", encode_segment(value))).collect();
    expands.sort();
    expands.dedup();
    parts.extend(expands);
    parts.join("&")
}

async fn repo_info(state: &EdgeState, request: Request, repo: &RepoKey, revision: Option<&str>) -> Result<Response, HubError> {
    let (access, policy_status) = access(state, repo).await?;
    if access == Access::PassThrough {
        return forward_request(state, request, None).await;
    }
    let variant = repo_info_variant(request.uri().query().unwrap_or_default());
    let (body, _commit, status) = state.mirror.repo_info(repo, revision, &variant).await?;
    Ok(json_response(request.method(), body, status.max(policy_status), HeaderMap::new()))
}

async fn tree(state: &EdgeState, request: Request, repo: &RepoKey, revision: &str, path: &str) -> Result<Response, HubError> {
    let (access, policy_status) = access(state, repo).await?;
    if access == Access::PassThrough {
        return forward_request(state, request, None).await;
    }
    let pairs = parse_pairs(request.uri().query().unwrap_or_default());
    let recursive = flag(&pairs, "recursive");
    if flag(&pairs, "expand") {
        // Expanded entries (last commit, security scan) are not in the manifest; ask upstream,
        // anonymously: the repo is public.
        let (parts, _) = request.into_parts();
        return pass_through(state, &parts, None, None, None).await;
    }
    let cursor = match values(&pairs, "cursor").next() {
        Some(text) => text.parse::<usize>().map_err(|_| HubError::bad_request("Invalid cursor"))?,
        None => 0,
    };
    let mirror = &state.mirror;
    let (commit, ref_status) = mirror.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = mirror.manifest(repo, &commit).await?;
    let listed = manifest.list(path, recursive).ok_or_else(|| HubError::entry_not_found(&commit))?;
    let page_size = mirror.config().tree_page_size;
    let page: Vec<Value> = listed.iter().skip(cursor).take(page_size).map(|entry| tree_entry_json(entry)).collect();
    let mut extra = HeaderMap::new();
    let next = cursor.saturating_add(page_size);
    if next < listed.len() {
        // Later pages are pinned to the commit, so a branch moving mid-listing cannot mix commits.
        let origin = public_origin(mirror, request.headers());
        let path_part = if path.is_empty() { String::new() } else { format!("/{}", encode_segment(path)) };
        let link = format!(
            "<{origin}{}/tree/{commit}{path_part}?recursive={recursive}&expand=false&cursor={next}>; rel=\"next\"",
            api_repo_path(repo)
        );
        set_header(&mut extra, "link", &link);
    }
    let body = serde_json::to_vec(&page).map_err(HubError::internal)?;
    Ok(json_response(request.method(), Bytes::from(body), policy_status.max(ref_status).max(manifest_status), extra))
}

/// Reads the `paths` and `expand` of a paths-info body, form-encoded or JSON.
fn paths_info_request(content_type: &str, body: &[u8]) -> Result<(Vec<String>, bool), HubError> {
    if content_type.starts_with("application/json") {
        let value: Value = serde_json::from_slice(body).map_err(|_| HubError::bad_request("Body is not valid JSON"))?;
        let paths = match value.get("paths") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(single)) => vec![single.clone()],
            _ => return Err(HubError::bad_request("Body must have a 'paths' list")),
        };
        let expand = match value.get("expand") {
            Some(Value::Bool(expand)) => *expand,
            Some(Value::String(text)) => crate::hub::query::parse_bool(text),
            _ => false,
        };
        return Ok((paths, expand));
    }
    let text = std::str::from_utf8(body).map_err(|_| HubError::bad_request("Body is not UTF-8"))?;
    let pairs = parse_pairs(text);
    Ok((values(&pairs, "paths").map(str::to_owned).collect(), flag(&pairs, "expand")))
}

async fn paths_info(state: &EdgeState, request: Request, repo: &RepoKey, revision: &str) -> Result<Response, HubError> {
    // The body is bounded and read first, so an oversized one is refused before any upstream work.
    let (parts, body) = request.into_parts();
    let body = read_body(&parts, body).await?.unwrap_or_default();
    let (access, policy_status) = access(state, repo).await?;
    if access == Access::PassThrough {
        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        return pass_through(state, &parts, Some(body), authorization.as_ref(), None).await;
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let (paths, expand) = paths_info_request(content_type, &body)?;
    if expand {
        return pass_through(state, &parts, Some(body), None, None).await;
    }
    let mirror = &state.mirror;
    let (commit, ref_status) = mirror.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = mirror.manifest(repo, &commit).await?;
    let mut seen = std::collections::HashSet::new();
    let found: Vec<Value> = paths
        .iter()
        .map(|path| path.trim_matches('/'))
        .filter(|path| validate_relative_path(path).is_ok() && seen.insert(path.to_string()))
        .filter_map(|path| manifest.find(path))
        .map(tree_entry_json)
        .collect();
    let body = serde_json::to_vec(&found).map_err(HubError::internal)?;
    Ok(json_response(&Method::GET, Bytes::from(body), policy_status.max(ref_status).max(manifest_status), HeaderMap::new()))
}

async fn refs(state: &EdgeState, request: Request, repo: &RepoKey) -> Result<Response, HubError> {
    let (access, policy_status) = access(state, repo).await?;
    if access == Access::PassThrough {
        return forward_request(state, request, None).await;
    }
    let include_pull_requests = flag(&parse_pairs(request.uri().query().unwrap_or_default()), "include_prs");
    let (body, status) = state.mirror.refs_listing(repo, include_pull_requests).await?;
    Ok(json_response(request.method(), body, status.max(policy_status), HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::config::NodeConfig;
    use crate::store::BlobStore;
    use crate::upstream::Upstream;

    /// A node whose upstream is a closed port: every answer here must come from the edge itself.
    fn offline_router(directory: &std::path::Path) -> Router {
        let mut config = NodeConfig::embedded_default();
        config.data_dir = directory.to_path_buf();
        config.upstream = "http://127.0.0.1:9".into();
        let catalog = hfm_cluster::catalog::LocalCatalog::open(&directory.join("catalog.redb")).unwrap();
        let store = BlobStore::open(directory, None, 0, tokio_util::sync::CancellationToken::new()).unwrap();
        let upstream = Upstream::new(&config.upstream).unwrap();
        let limits = Arc::new(EdgeLimits::new(config.limits.clone()));
        router(Mirror::new(config, Arc::new(catalog), upstream, store, None), limits, None)
    }

    async fn send(router: &Router, request: http::Request<Body>) -> Response {
        router.clone().oneshot(request).await.unwrap()
    }

    fn get(uri: &str) -> http::Request<Body> {
        http::Request::get(uri).body(Body::empty()).unwrap()
    }

    fn error_code(response: &Response) -> &str {
        response.headers().get("x-error-code").and_then(|value| value.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn hostile_requests_get_hub_errors() {
        let directory = tempfile::tempdir().unwrap();
        let router = offline_router(directory.path());
        for (uri, status, code) in [
            ("/org/model/resolve/main/../secret", 400, "BadRequest"),
            ("/org/model/resolve/main/a%00b", 400, "BadRequest"),
            ("/org/model/resolve/main/%zz", 400, "BadRequest"),
            ("/org/model/resolve/main/a%C3", 400, "BadRequest"),
            ("/unknown/route", 404, "NotFound"),
            ("/api/agent-harnesses", 404, "NotFound"),
            ("/api/models/org/model/tree/main/..", 400, "BadRequest"),
        ] {
            let response = send(&router, get(uri)).await;
            assert_eq!(response.status().as_u16(), status, "{uri}");
            assert_eq!(error_code(&response), code, "{uri}");
            assert!(response.headers().contains_key("x-error-message"));
            assert!(response.headers().contains_key(X_CACHE));
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let json: Value = serde_json::from_slice(&body).unwrap();
            assert!(json["error"].is_string(), "{uri}");
        }
        let huge =
            http::Request::get("/org/model/resolve/main/config.json").header("x-big", "a".repeat(64 << 10)).body(Body::empty()).unwrap();
        let response = send(&router, huge).await;
        assert_eq!(response.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(error_code(&response), "HeadersTooLarge");
        let post = http::Request::post("/org/model/resolve/main/config.json").body(Body::empty()).unwrap();
        assert_eq!(send(&router, post).await.status(), StatusCode::METHOD_NOT_ALLOWED);
        let oversized = http::Request::post("/api/models/org/model/paths-info/main")
            .header("content-type", "application/json")
            .body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]))
            .unwrap();
        let response = send(&router, oversized).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&response), "PayloadTooLarge");
        // Draining is for the node's own operators: a caller that is not on loopback is refused.
        let drain = http::Request::post("/_hfm/drain").body(Body::empty()).unwrap();
        let response = send(&router, drain).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_code(&response), "Forbidden");
        // The node keeps answering after all of that.
        assert_eq!(send(&router, get("/healthz")).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_with_nothing_cached_is_a_502() {
        let directory = tempfile::tempdir().unwrap();
        let router = offline_router(directory.path());
        let response = send(&router, get("/org/model/resolve/main/config.json")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(error_code(&response), "UpstreamUnreachable");
        assert_eq!(response.headers()[X_CACHE], "MISS");
    }

    #[test]
    fn repo_info_variants_are_normalized() {
        assert_eq!(repo_info_variant(""), "");
        assert_eq!(repo_info_variant("blobs=True"), "blobs=true");
        assert_eq!(repo_info_variant("blobs=false&unknown=1"), "");
        assert_eq!(repo_info_variant("expand=siblings&expand=sha&expand=sha"), "expand=sha&expand=siblings");
        assert_eq!(repo_info_variant("expand[]=a%20b&securityStatus=1"), "securityStatus=true&expand=a%20b");
    }

    #[test]
    fn paths_info_accepts_form_and_json_bodies() {
        let (paths, expand) = paths_info_request("application/x-www-form-urlencoded", b"paths=config.json&paths=sub&expand=False").unwrap();
        assert_eq!((paths, expand), (vec!["config.json".to_owned(), "sub".to_owned()], false));
        let (paths, expand) = paths_info_request("application/json", br#"{"paths":["a","b"],"expand":true}"#).unwrap();
        assert_eq!((paths, expand), (vec!["a".to_owned(), "b".to_owned()], true));
        assert!(paths_info_request("application/json", b"{not json").is_err());
        assert!(paths_info_request("application/json", br#"{"paths": 3}"#).is_err());
        assert!(paths_info_request("", &[0xff, 0xfe]).is_err());
    }
}
