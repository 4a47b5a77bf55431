//! The HTTP edge: routes each request on its raw path and answers every Hub route, either from the
//! mirror (cacheable repos) or by passing it through to upstream (everything else), plus the
//! operator's routes. It knows nothing of sockets, limits or logs: the transports around it admit
//! requests and write the access log; the edge tells them which route and repository each answer
//! was for ([`Answered`]).
//!
//! # Layout
//!
//! - `resolve`: file bytes and their headers; `api`: repo info, trees, paths-info, refs;
//!   `passthrough`: forwarding to upstream; `operator`: status, drain, pins, metrics, probes.

mod api;
pub mod fill_budget;
mod operator;
mod passthrough;
mod resolve;
pub mod site;
mod warm_files;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hfm_cluster::types::RepoKey;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tracing::{Instrument, info_span, warn};

pub use self::operator::{Operator, OperatorToken};
use crate::blobs::BlobSources;
use crate::common::zero_copy::ZeroCopySink;
use crate::hub::headers::{X_CACHE, url_path};
use crate::hub::route::{Route, route};
use crate::hub::{CacheStatus, ErrorSource, HubError};
use crate::metadata::{Access, Metadata};
use crate::store::BlobStore;
use crate::telemetry::AnswerCounters;
use crate::upstream::Upstream;

/// The most header bytes a request may carry; beyond, 431 in the Hub's format.
const MAX_HEADER_BYTES: usize = 16 << 10;
/// The most body bytes of a request the mirror reads (paths-info, pass-through API calls).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How the edge presents itself.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// The origin clients reach this node at, for absolute `Link` URLs; `None`: the `Host` header.
    pub public_url: Option<String>,
    /// The HTTP port's address (the fallback origin when `Host` is unusable).
    pub listen: SocketAddr,
    /// Entries per page of `/tree` answers.
    pub tree_page_size: usize,
}

impl EdgeSettings {
    /// The path every public route lives under: the path of `public_url` (`/hf` for
    /// `https://example.org/hf`), or empty.
    pub fn path_prefix(&self) -> &str {
        self.public_url.as_deref().map_or("", url_path)
    }
}

/// Takes the node's path prefix off a request (a proxy forwards the path as the client sent it):
/// `None` when the path is outside the prefix. The probes answer at the root too, for the load
/// balancer in front.
fn strip_path_prefix(request: &mut Request, prefix: &str) -> Option<()> {
    if prefix.is_empty() {
        return Some(());
    }
    let path = request.uri().path();
    let inner = match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ if matches!(path, "/healthz" | "/readyz") => return Some(()),
        _ => return None,
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{inner}?{query}"),
        None => inner.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    *request.uri_mut() = http::Uri::from_parts(parts).ok()?;
    Some(())
}

/// What the Hub's routes read: metadata, blobs and their sources, upstream for pass-through.
pub struct HubApi {
    pub metadata: Metadata,
    pub store: BlobStore,
    pub sources: BlobSources,
    pub upstream: Upstream,
    /// File downloads by cache result.
    pub answers: Arc<AnswerCounters>,
    /// Metadata answers (repo info, trees, paths-info, refs) by cache result.
    pub metadata_answers: Arc<AnswerCounters>,
    /// The cold fills clients may start.
    pub fill_budget: fill_budget::FillBudget,
    /// What warm `/resolve/` requests answer, while the metadata it came from holds.
    pub warm_files: warm_files::WarmFiles,
    pub settings: EdgeSettings,
}

/// What a response costs its client beyond its own length: a fill it started is charged whole.
#[derive(Clone, Copy, Debug)]
pub struct Charged(pub u64);

/// Which route an answer was for and the repository it named, returned with every response for the
/// front door's metrics and access log.
#[derive(Clone, Debug)]
pub struct Answered {
    pub route: &'static str,
    pub repo: Option<RepoKey>,
}

#[derive(Clone)]
struct EdgeState {
    hub: Arc<HubApi>,
    operator: Arc<Operator>,
    site: Arc<site::Site>,
}

/// The public HTTP port's routes, called directly by the transports: the edge routes every path
/// itself, so no router stands in between.
#[derive(Clone)]
pub struct Edge(EdgeState);

impl Edge {
    pub fn new(hub: Arc<HubApi>, operator: Arc<Operator>, site: Arc<site::Site>) -> Edge {
        Edge(EdgeState { hub, operator, site })
    }

    /// Answers one request of the public port, and says which route and repository it was for.
    pub async fn answer(&self, request: Request) -> (Response, Answered) {
        handle(&self.0, request).await
    }
}

/// The same routes as a router (for tests that drive the edge without a transport).
#[cfg(test)]
pub fn router(hub: Arc<HubApi>, operator: Arc<Operator>, site: Arc<site::Site>) -> Router {
    let edge = Edge::new(hub, operator, site);
    Router::new().fallback(move |request: Request| {
        let edge = edge.clone();
        async move { edge.answer(request).await.0 }
    })
}

/// The operator port's router: `/metrics`, `/healthz` and `/readyz` for whoever reaches it (bind it
/// to an address only operators and Prometheus can reach), and the operator's routes (status, drain,
/// pins, replicas) for a bearer of the operator token.
pub fn operator_router(operator: Arc<Operator>) -> Router {
    async fn answer(State(operator): State<Arc<Operator>>, request: Request) -> Response {
        let method = request.method().clone();
        let answered = match route(request.uri().path()) {
            Ok(Route::Metrics) => Ok(operator.metrics()),
            Ok(Route::Ready) => operator.readiness(),
            Ok(Route::Health) => Ok((StatusCode::OK, "ok\n").into_response()),
            Ok(Route::Status) => operator.require_token(&request).map(|()| operator.status(&method)),
            Ok(Route::Drain) => match require_method(&method, &[Method::POST]).and_then(|()| operator.require_token(&request)) {
                Ok(()) => Ok(operator.drain(&method).await),
                Err(error) => Err(error),
            },
            Ok(Route::Pins) => match operator.require_token(&request) {
                Ok(()) => operator.pins(request, &method).await,
                Err(error) => Err(error),
            },
            Ok(Route::Replicas { etag }) => match operator.require_token(&request) {
                Ok(()) => operator.replicas(&method, &etag).await,
                Err(error) => Err(error),
            },
            Ok(_) => Err(HubError::route_not_found()),
            Err(error) => Err(error),
        };
        answered.unwrap_or_else(IntoResponse::into_response)
    }
    Router::new().fallback(answer).with_state(operator)
}

async fn handle(state: &EdgeState, mut request: Request) -> (Response, Answered) {
    let (answered, route_label, repo) = match strip_path_prefix(&mut request, state.hub.settings.path_prefix()) {
        Some(()) => dispatch(state, request).await,
        None => (Err(HubError::route_not_found()), "invalid", None),
    };
    (answered.unwrap_or_else(IntoResponse::into_response), Answered { route: route_label, repo })
}

pub(super) fn require_method(method: &Method, allowed: &[Method]) -> Result<(), HubError> {
    if allowed.contains(method) { Ok(()) } else { Err(HubError::method_not_allowed()) }
}

/// A Hub route is read (GET, HEAD); a write method gets the read-only answer, anything else 405.
fn require_read(method: &Method) -> Result<(), HubError> {
    match *method {
        Method::GET | Method::HEAD => Ok(()),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => Err(HubError::read_only()),
        _ => Err(HubError::method_not_allowed()),
    }
}

/// How a request reached this node, put on it by the transport (one extension, not one per fact:
/// each costs an allocation per request).
#[derive(Clone)]
pub struct Arrival {
    /// The client: the peer, or whom a trusted proxy named. Limits and fill budgets count by it.
    pub client: SocketAddr,
    /// `https` over TLS and HTTP/3, else `http` (or what a trusted proxy said); absolute links the
    /// node writes use it.
    pub scheme: &'static str,
    /// Where the connection's writer takes stored file stretches from (plain HTTP/1.1 only, see
    /// `common::zero_copy`).
    pub zero_copy: Option<ZeroCopySink>,
}

/// The request's span, made once its route is known: the repository, revision and file it names
/// (or its path), so that every line logged while answering it says what it was for. Made whole
/// in one go: fields recorded later would each be formatted again.
fn request_span(method: &Method, uri: &http::Uri, route: &Route) -> tracing::Span {
    match route {
        Route::Resolve { repo, revision, path } | Route::Tree { repo, revision, path } => {
            info_span!("request", %method, %repo, rev = %revision, file = %path)
        }
        Route::RepoInfo { repo, revision } => info_span!("request", %method, %repo, rev = revision.as_deref()),
        Route::PathsInfo { repo, revision } => info_span!("request", %method, %repo, rev = %revision),
        Route::Refs { repo } => info_span!("request", %method, %repo),
        _ => info_span!("request", %method, path = %uri.path()),
    }
}

/// Answers one request; also says which route it took (for metrics) and the repository it named
/// (for the access log).
async fn dispatch(state: &EdgeState, request: Request) -> (Result<Response, HubError>, &'static str, Option<RepoKey>) {
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return (Err(HubError::headers_too_large(MAX_HEADER_BYTES)), "invalid", None);
    }
    let route = match route(request.uri().path()) {
        Ok(route) => route,
        Err(error) => return (Err(error), "invalid", None),
    };
    let label = route.label();
    let repo = route.repo().cloned();
    let method = request.method().clone();
    if let Route::Resolve { repo: named, revision, path } = &route
        && (method == Method::GET || method == Method::HEAD)
        && let Some(response) = resolve::answer_from_memory(&state.hub, &request, named, revision, path)
    {
        // Most requests a mirror gets: answered from memory, where nothing logs, so without a span.
        return (Ok(response), label, repo);
    }
    let is_metadata = matches!(route, Route::RepoInfo { .. } | Route::Tree { .. } | Route::PathsInfo { .. } | Route::Refs { .. });
    let span = request_span(&method, request.uri(), &route);
    let answered = async {
        let answered = answer(state, request, route, method).await;
        if let Err(error) = &answered
            && error.source == ErrorSource::Internal
        {
            warn!(%error, "internal error");
        }
        answered
    }
    .instrument(span)
    .await;
    if let Ok(response) = &answered
        && is_metadata
        && response.status().is_success()
        && let Some(cache) = response.headers().get(X_CACHE).and_then(|value| CacheStatus::parse(value.to_str().ok()?))
    {
        state.hub.metadata_answers.record(cache);
    }
    (answered, label, repo)
}

async fn answer(state: &EdgeState, request: Request, route: Route, method: Method) -> Result<Response, HubError> {
    let (hub, operator) = (state.hub.as_ref(), state.operator.as_ref());
    match route {
        Route::Health => Ok((StatusCode::OK, "ok\n").into_response()),
        Route::Ready => operator.readiness(),
        // The operator's routes live on the operator port only, behind its token.
        Route::Metrics | Route::Status | Route::Drain | Route::Pins | Route::Replicas { .. } => Err(HubError::route_not_found()),
        Route::AgentHarnesses => Err(HubError::route_not_found()),
        Route::SiteHome => state.site.home(&request.into_parts().0),
        Route::SiteStatus => state.site.status(&request.into_parts().0).await,
        Route::XetToken => Err(HubError::xet_not_served()),
        Route::Resolve { repo, revision, path } => {
            require_read(&method)?;
            resolve::resolve(hub, request, &repo, &revision, &path).await
        }
        Route::RepoInfo { repo, revision } => {
            require_read(&method)?;
            api::repo_info(hub, request, &repo, revision.as_deref()).await
        }
        Route::Tree { repo, revision, path } => {
            require_read(&method)?;
            api::tree(hub, request, &repo, &revision, &path).await
        }
        Route::PathsInfo { repo, revision } => {
            require_method(&method, &[Method::POST])?;
            api::paths_info(hub, request, &repo, &revision).await
        }
        Route::Refs { repo } => {
            require_read(&method)?;
            api::refs(hub, request, &repo).await
        }
        // The other read routes of the Hub, with the caller's token; writes never leave the mirror.
        Route::Listing | Route::ApiPassthrough { .. } => {
            require_read(&method)?;
            let (parts, _) = request.into_parts();
            let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
            passthrough::pass_through(hub, &parts, None, authorization.as_ref(), None).await
        }
    }
}

/// Reads a request body for methods that carry one, bounded by [`MAX_BODY_BYTES`].
pub(super) async fn read_body(parts: &Parts, body: Body) -> Result<Option<Bytes>, HubError> {
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

/// The origin clients reach us at, for absolute `Link` URLs (hub-api.md rule 4): `public_url`, else
/// the request's scheme and `Host` (HTTP/2 and HTTP/3 carry it as `:authority`, which hyper puts in
/// the URI).
pub(super) fn public_origin(settings: &EdgeSettings, parts: &Parts) -> String {
    if let Some(url) = &settings.public_url {
        return url.clone();
    }
    let scheme = parts.extensions.get::<Arrival>().map_or("http", |arrival| arrival.scheme);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()))
        .unwrap_or_default();
    let host_is_sane =
        !host.is_empty() && host.len() <= 255 && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-:[]_".contains(&byte));
    if host_is_sane { format!("{scheme}://{host}") } else { format!("{scheme}://{}", settings.listen) }
}

pub(super) fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

pub(super) fn with_cache_status(mut response: Response, cache: CacheStatus) -> Response {
    response.headers_mut().insert(&crate::hub::headers::parsed::X_CACHE, HeaderValue::from_static(cache.as_str()));
    response
}

pub(super) fn json_response(method: &Method, body: Bytes, cache: CacheStatus, extra: HeaderMap) -> Response {
    let length = body.len();
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(body) };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.extend(extra);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    with_cache_status(response, cache)
}

/// Decides how a repo is served; on pass-through, forwards the request with the caller's token.
pub(super) async fn access(hub: &HubApi, repo: &RepoKey) -> Result<(Access, CacheStatus), HubError> {
    access_at(hub, repo, None).await
}

/// [`access`] for a request that names `revision` (see `Metadata::policy_at`).
pub(super) async fn access_at(hub: &HubApi, repo: &RepoKey, revision: Option<&str>) -> Result<(Access, CacheStatus), HubError> {
    let (access, policy_status) = hub.metadata.policy_at(repo, revision).await?;
    // A policy re-check asked upstream something, but served nothing from it.
    Ok((access, policy_status.min(CacheStatus::Revalidated)))
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::blobs::PinWatch;
    use crate::metadata::MetadataSettings;
    use crate::rsync::pins::Pins;
    use crate::telemetry::Exposition;

    /// A node whose upstream is a closed port: every answer here must come from the edge itself.
    fn offline_router(directory: &std::path::Path) -> Router {
        offline_routers(directory).0
    }

    /// The public and the operator router of such a node.
    fn offline_routers(directory: &std::path::Path) -> (Router, Router) {
        let catalog: Arc<dyn hfm_cluster::catalog::Catalog> =
            Arc::new(hfm_cluster::catalog::LocalCatalog::open(&directory.join("catalog.redb")).unwrap());
        let store =
            BlobStore::open(directory, None, 0, crate::store::ReadChecks::EveryRead, tokio_util::sync::CancellationToken::new()).unwrap();
        let upstream = Upstream::new("http://127.0.0.1:9").unwrap();
        let settings = MetadataSettings {
            ref_ttl: std::time::Duration::from_secs(60),
            policy_ttl: std::time::Duration::from_secs(600),
            max_manifest_files: 1000,
        };
        let metadata = Metadata::new(catalog.clone(), upstream.clone(), None, settings);
        let (answers, metadata_answers) = (Arc::new(AnswerCounters::default()), Arc::new(AnswerCounters::default()));
        let settings = EdgeSettings { public_url: None, listen: "127.0.0.1:8080".parse().unwrap(), tree_page_size: 1000 };
        let hub = Arc::new(HubApi {
            metadata: metadata.clone(),
            store: store.clone(),
            sources: BlobSources::new(catalog.clone(), upstream.clone(), None),
            upstream,
            answers: answers.clone(),
            metadata_answers: metadata_answers.clone(),
            fill_budget: fill_budget::FillBudget::new(64, 4),
            warm_files: Default::default(),
            settings: settings.clone(),
        });
        let pins = Pins::new("local".into(), catalog.clone(), metadata, store.clone(), None, PinWatch::default(), Vec::new());
        let operator = Arc::new(Operator {
            node_name: "local".into(),
            token: OperatorToken::new("t".repeat(32)).unwrap(),
            catalog,
            store,
            file_answers: answers,
            metadata_answers,
            pins,
            exposition: Arc::new(Exposition::new()),
            cluster: None,
            rsync: None,
        });
        let site = Arc::new(site::Site::new(
            crate::config::SiteConfig::standalone("local"),
            settings,
            crate::config::LimitsConfig::default(),
            false,
            false,
            None,
            directory.to_owned(),
            operator.clone(),
        ));
        (router(hub, operator.clone(), site), operator_router(operator))
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
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
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
        // The operator's routes are not on the public port at all.
        for (method, uri) in [("POST", "/_hfm/drain"), ("GET", "/_hfm/status"), ("POST", "/_hfm/pins?repo=org/model"), ("GET", "/metrics")]
        {
            let request = http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
            let response = send(&router, request).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {uri}");
        }
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

    #[tokio::test]
    async fn the_operator_routes_need_the_token_whoever_asks() {
        let directory = tempfile::tempdir().unwrap();
        let (_, operator) = offline_routers(directory.path());
        let with = |authorization: Option<&str>| {
            let mut request = http::Request::get("/_hfm/status");
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            request.body(Body::empty()).unwrap()
        };
        for refused in [None, Some("Bearer wrong"), Some(&format!("Bearer {}", "t".repeat(31))[..]), Some("t")] {
            let response = send(&operator, with(refused)).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
            assert_eq!(error_code(&response), "Unauthorized");
        }
        let token = format!("Bearer {}", "t".repeat(32));
        assert_eq!(send(&operator, with(Some(&token))).await.status(), StatusCode::OK);
        let drain = http::Request::post("/_hfm/drain").body(Body::empty()).unwrap();
        assert_eq!(send(&operator, drain).await.status(), StatusCode::UNAUTHORIZED);
        // Probes and metrics stay open on the operator port (bind it where only operators reach).
        assert_eq!(send(&operator, get("/metrics")).await.status(), StatusCode::OK);
        assert_eq!(send(&operator, get("/readyz")).await.status(), StatusCode::OK);
    }
}
