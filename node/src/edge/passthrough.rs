//! Pass-through: a request forwarded to upstream as it came (raw path and query, the caller's token
//! where the route allows it), the answer streamed back with Xet signals removed and `Link`
//! rewritten to this mirror. Nothing passed through is stored.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::{HubApi, public_origin, read_body, set_header, with_cache_status};
use crate::hub::headers::{X_LINKED_ETAG, X_LINKED_SIZE, X_REPO_COMMIT, content_type_for_path, forwardable_response_headers};
use crate::hub::json::strip_xet_from_body;
use crate::hub::{CacheStatus, HubError};
use crate::upstream::read_buffered;

/// Request headers forwarded on a pass-through, besides `Authorization`.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] =
    &[header::ACCEPT, header::CONTENT_TYPE, header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE];

/// Forwards a request to upstream as it came (raw path and query), streaming the answer back with
/// Xet signals removed and `Link` rewritten. For `/resolve/`, redirects are followed server-side
/// and the file metadata collected on the way is put on the answer.
pub(super) async fn pass_through(
    hub: &HubApi,
    parts: &Parts,
    body: Option<Bytes>,
    authorization: Option<&HeaderValue>,
    resolve_path: Option<&str>,
) -> Result<Response, HubError> {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    let path_and_query = parts.uri.path_and_query().map(|value| value.as_str()).unwrap_or("/");
    let end = hub.upstream.send(parts.method.clone(), path_and_query, &headers, authorization, body).await?;
    let status = end.response.status();
    let origin = public_origin(&hub.settings, parts);
    let mut response_headers = forwardable_response_headers(end.response.headers(), hub.upstream.origins(), &origin);
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

pub(super) async fn forward_request(hub: &HubApi, request: Request, resolve_path: Option<&str>) -> Result<Response, HubError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts, body).await?;
    let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
    pass_through(hub, &parts, body, authorization.as_ref(), resolve_path).await
}
