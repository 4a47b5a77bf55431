//! The client of the upstream Hub.
//!
//! Redirects are followed here, by hand, never by the HTTP library: a relative or same-origin
//! redirect (a renamed repo, `/api/resolve-cache/…`) keeps the caller's `Authorization`; a redirect
//! to another origin (the CDN) drops it (hub-api.md §12). The `X-Repo-Commit`/`X-Linked-*` metadata
//! of a `/resolve/` answer is taken from the first response that carries it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use reqwest::Url;
use tracing::debug;

use crate::hub::HubError;
use crate::hub::headers::{X_LINKED_ETAG, X_LINKED_SIZE, X_REPO_COMMIT};
use crate::store::{BlobSource, ByteStream, SourceError};

const MAX_REDIRECTS: usize = 8;
/// The most bytes of an API answer the mirror reads into memory.
pub const MAX_API_BODY: usize = 64 << 20;

/// The Hub as seen by this node: one HTTP client and the upstream origin.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    /// Origins whose absolute URLs in `Link` headers point at upstream and are rewritten to ours.
    origins: Arc<Vec<String>>,
}

/// An upstream answer read whole (API JSON, errors).
#[derive(Debug)]
pub struct BufferedReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a `/resolve/` chain said about a file before the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileMetadata {
    pub commit: Option<String>,
    pub etag: Option<String>,
    pub size: Option<u64>,
}

impl FileMetadata {
    fn absorb(&mut self, headers: &HeaderMap) {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
        if self.commit.is_none() {
            self.commit = text(X_REPO_COMMIT).map(str::to_owned);
        }
        if self.etag.is_none() {
            self.etag = text(X_LINKED_ETAG).or_else(|| text(header::ETAG.as_str())).map(normalize_etag);
        }
        if self.size.is_none() {
            self.size = text(X_LINKED_SIZE).and_then(|size| size.parse().ok());
        }
    }
}

/// Strips `W/` and quotes from an etag, as the clients do.
pub fn normalize_etag(raw: &str) -> String {
    raw.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase()
}

/// The final response of a redirect chain, with the metadata collected on the way.
pub struct ChainEnd {
    pub response: reqwest::Response,
    pub metadata: FileMetadata,
    /// The URL that answered; for a CDN this is the signed URL ranges can be re-requested from.
    pub final_url: Url,
    /// Whether `Authorization` was still being sent at the end of the chain.
    pub authorized: bool,
}

fn same_origin(left: &Url, right: &Url) -> bool {
    left.scheme() == right.scheme() && left.host_str() == right.host_str() && left.port_or_known_default() == right.port_or_known_default()
}

/// Maps a transport failure to the Hub error the client sees.
fn unreachable(error: reqwest::Error) -> HubError {
    HubError::upstream_unreachable(error_chain(&error))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Upstream {
    /// Builds the client. `base` is the upstream origin (`https://huggingface.co`).
    pub fn new(base: &str) -> anyhow::Result<Upstream> {
        // reqwest is built without a default provider; ring is the one provider of the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hf-mirror/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut origins = vec![base.trim_end_matches('/').to_owned()];
        for hub in ["https://huggingface.co", "https://hf.co"] {
            if !origins.iter().any(|origin| origin == hub) {
                origins.push(hub.to_owned());
            }
        }
        Ok(Upstream { client, base: base.trim_end_matches('/').to_owned(), origins: Arc::new(origins) })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    fn url(&self, path_and_query: &str) -> Result<Url, HubError> {
        Url::parse(&format!("{}{}", self.base, path_and_query))
            .map_err(|error| HubError::bad_request(format!("cannot build upstream URL: {error}")))
    }

    /// Sends a request and follows redirects by hand. `body` is re-sent on a 307/308.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<ChainEnd, HubError> {
        let url = self.url(path_and_query)?;
        self.send_url(method, url, headers, authorization, body).await
    }

    async fn send_url(
        &self,
        method: Method,
        mut url: Url,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<ChainEnd, HubError> {
        let mut authorization = authorization.cloned();
        let mut metadata = FileMetadata::default();
        let mut method = method;
        let mut body = body;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.client.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            if let Some(bytes) = &body {
                request = request.body(bytes.clone());
            }
            let sent = request.send().await;
            let failed = sent
                .as_ref()
                .map_or(true, |response| response.status().is_server_error() || response.status() == StatusCode::TOO_MANY_REQUESTS);
            crate::telemetry::metrics().upstream_request(failed);
            let response = sent.map_err(unreachable)?;
            let status = response.status();
            let location = response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
            match (status.is_redirection(), location) {
                (true, Some(location)) => {
                    metadata.absorb(response.headers());
                    let next =
                        url.join(&location).map_err(|error| HubError::upstream_invalid(format!("bad redirect {location:?}: {error}")))?;
                    if !same_origin(&url, &next) {
                        // Never hand the caller's token to a CDN or any other origin.
                        authorization = None;
                    }
                    if matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER) && method == Method::POST
                    {
                        method = Method::GET;
                        body = None;
                    }
                    debug!(from = %url, to = %next, status = status.as_u16(), "following upstream redirect");
                    url = next;
                }
                _ => {
                    metadata.absorb(response.headers());
                    return Ok(ChainEnd { response, metadata, final_url: url, authorized: authorization.is_some() });
                }
            }
        }
        Err(HubError::upstream_invalid("too many redirects"))
    }

    /// Sends a GET and reads the whole answer, whatever its status.
    pub async fn get_buffered(&self, path_and_query: &str, authorization: Option<&HeaderValue>) -> Result<BufferedReply, HubError> {
        let end = self.send(Method::GET, path_and_query, &HeaderMap::new(), authorization, None).await?;
        read_buffered(end.response).await
    }

    /// Opens the bytes of `url` from `offset` on, anonymously.
    async fn open_bytes(&self, url: &Url, offset: u64) -> Result<ChainEnd, HubError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(header::RANGE, HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii range"));
        }
        self.send_url(Method::GET, url.clone(), &headers, None, None).await
    }
}

/// The error code of an upstream answer longer than [`MAX_API_BODY`].
pub const ANSWER_TOO_LARGE: &str = "UpstreamAnswerTooLarge";

fn answer_too_large() -> HubError {
    let message = format!("Upstream Hub answered something unexpected: an answer over {} MiB", MAX_API_BODY >> 20);
    HubError::new(StatusCode::BAD_GATEWAY, ANSWER_TOO_LARGE, message, crate::hub::ErrorSource::Upstream)
}

/// Reads a response whole, refusing bodies over [`MAX_API_BODY`].
pub async fn read_buffered(response: reqwest::Response) -> Result<BufferedReply, HubError> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreachable)?;
        if body.len() + chunk.len() > MAX_API_BODY {
            return Err(answer_too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(BufferedReply { status, headers, body: Bytes::from(body) })
}

/// A blob fetched from upstream's `/resolve/{commit}/{path}`, anonymously; after the first open the
/// final (CDN) URL is remembered so a resumption asks it for a range directly.
pub struct UpstreamBlob {
    upstream: Upstream,
    resolve_path: String,
    final_url: Mutex<Option<Url>>,
}

impl UpstreamBlob {
    pub fn new(upstream: Upstream, resolve_path: String) -> UpstreamBlob {
        UpstreamBlob { upstream, resolve_path, final_url: Mutex::new(None) }
    }
}

fn classify(status: StatusCode) -> fn(String) -> SourceError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
        SourceError::Transient
    } else {
        SourceError::Permanent
    }
}

/// Turns a bytes response into the offset it starts at and its stream.
pub fn byte_stream(end: ChainEnd, offset: u64) -> Result<(u64, ByteStream), SourceError> {
    let status = end.response.status();
    let start = match status {
        StatusCode::OK => 0,
        StatusCode::PARTIAL_CONTENT => {
            let content_range = end.response.headers().get(header::CONTENT_RANGE).and_then(|value| value.to_str().ok()).unwrap_or_default();
            let start = content_range
                .strip_prefix("bytes ")
                .and_then(|rest| rest.split('-').next())
                .and_then(|start| start.parse::<u64>().ok())
                .ok_or_else(|| SourceError::Transient(format!("bad Content-Range {content_range:?}")))?;
            if start > offset {
                return Err(SourceError::Transient(format!("asked for byte {offset}, got {start}")));
            }
            start
        }
        other => {
            return Err(classify(other)(format!("upstream answered {}", other.as_u16())));
        }
    };
    let stream = end.response.bytes_stream().map(|chunk| {
        let chunk = chunk.map_err(|error| SourceError::Transient(error_chain(&error)))?;
        crate::telemetry::metrics().bytes(crate::telemetry::ByteSource::Upstream, chunk.len() as u64);
        Ok(chunk)
    });
    Ok((start, Box::pin(stream)))
}

#[async_trait::async_trait]
impl BlobSource for UpstreamBlob {
    async fn open(&self, offset: u64) -> Result<(u64, ByteStream), SourceError> {
        let remembered = self.final_url.lock().expect("url lock poisoned").clone();
        if let Some(url) = remembered {
            match self.upstream.open_bytes(&url, offset).await {
                Ok(end) if end.response.status().is_success() => return byte_stream(end, offset),
                // A signed URL may have expired: resolve again below.
                _ => *self.final_url.lock().expect("url lock poisoned") = None,
            }
        }
        let url = self.upstream.url(&self.resolve_path).map_err(|error| SourceError::Permanent(error.message))?;
        let end = self.upstream.open_bytes(&url, offset).await.map_err(|error| SourceError::Transient(error.message))?;
        if end.response.status().is_success() {
            *self.final_url.lock().expect("url lock poisoned") = Some(end.final_url.clone());
        }
        byte_stream(end, offset)
    }

    fn describe(&self) -> String {
        format!("upstream {}", self.resolve_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalized_like_the_clients_do() {
        assert_eq!(normalize_etag("W/\"ABC\""), "abc");
        assert_eq!(normalize_etag("\"508e2c52963056a69f522d16195123a92a55fa50\""), "508e2c52963056a69f522d16195123a92a55fa50");
    }

    #[test]
    fn metadata_comes_from_the_first_response_that_has_it() {
        let mut metadata = FileMetadata::default();
        let mut redirect = HeaderMap::new();
        redirect.insert(X_REPO_COMMIT, HeaderValue::from_static("c1"));
        redirect.insert(X_LINKED_ETAG, HeaderValue::from_static("\"sha\""));
        redirect.insert(header::ETAG, HeaderValue::from_static("\"not-the-sha\""));
        redirect.insert(X_LINKED_SIZE, HeaderValue::from_static("12"));
        metadata.absorb(&redirect);
        let mut cdn = HeaderMap::new();
        cdn.insert(header::ETAG, HeaderValue::from_static("\"cdn\""));
        metadata.absorb(&cdn);
        assert_eq!(metadata, FileMetadata { commit: Some("c1".into()), etag: Some("sha".into()), size: Some(12) });
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let hub = Url::parse("http://127.0.0.1:9000/a").unwrap();
        assert!(same_origin(&hub, &Url::parse("http://127.0.0.1:9000/b?x").unwrap()));
        assert!(!same_origin(&hub, &Url::parse("http://127.0.0.2:9000/a").unwrap()));
        assert!(!same_origin(&hub, &Url::parse("http://127.0.0.1:9001/a").unwrap()));
        assert!(!same_origin(&hub, &Url::parse("https://127.0.0.1:9000/a").unwrap()));
    }
}
