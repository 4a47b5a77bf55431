//! The Hub's error format: a status, `X-Error-Code`, `X-Error-Message` and a `{"error": …}` body
//! (hub-api.md §7). Every error the edge answers goes through [`HubError`].

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::headers::{RATE_LIMIT, RATE_LIMIT_POLICY, X_CACHE, X_ERROR_CODE, X_ERROR_MESSAGE, X_REPO_COMMIT};

/// Where an error came from; it decides logging and whether a cached copy may stand in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself is wrong.
    Client,
    /// Upstream answered with an error or could not be reached.
    Upstream,
    /// Our own storage or a bug.
    Internal,
}

/// An error answered to the client in the Hub's format.
#[derive(Clone, Debug)]
pub struct HubError {
    pub status: StatusCode,
    /// The `X-Error-Code`; `None` only for upstream errors that carried none.
    pub code: Option<String>,
    pub message: String,
    pub source: ErrorSource,
    /// The commit a missing entry was looked up in, so clients can cache the absence.
    pub repo_commit: Option<String>,
    /// `Content-Range: bytes */L` of a 416.
    pub unsatisfied_length: Option<u64>,
    /// When to retry (429, 503): boxed, as most errors have none and every `Result` carries the size.
    pub backoff: Option<Box<Backoff>>,
}

/// When a client may retry: `Retry-After` and the IETF rate-limit fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// `Retry-After`, ours or upstream's as it came.
    pub retry_after: Option<String>,
    /// The IETF `RateLimit` and `RateLimit-Policy` fields of a 429 (hub-api.md T26).
    pub rate_limit: Option<RateLimitFields>,
}

/// The `RateLimit` and `RateLimit-Policy` fields of a 429, in the form huggingface.co uses
/// (`RateLimit: "api";r=0;t=55`, `RateLimit-Policy: "fixed window";"api";q=500;w=300`), which
/// `huggingface_hub` reads to know how long to wait. Upstream's are relayed as they came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitFields {
    pub limit: String,
    pub policy: Option<String>,
}

impl RateLimitFields {
    /// The fields of one of the mirror's own limits: `policy` names it (a word: clients match
    /// `\w+`), `quota` units are allowed per `window_secs`, and none are left for `reset_secs`.
    pub fn own(policy: &'static str, quota: u64, window_secs: u64, reset_secs: u64) -> RateLimitFields {
        debug_assert!(policy.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_'));
        RateLimitFields {
            limit: format!("\"{policy}\";r=0;t={}", reset_secs.max(1)),
            policy: Some(format!("\"fixed window\";\"{policy}\";q={quota};w={}", window_secs.max(1))),
        }
    }
}

impl HubError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, source: ErrorSource) -> HubError {
        HubError {
            status,
            code: Some(code.to_owned()),
            message: message.into(),
            source,
            repo_commit: None,
            unsatisfied_length: None,
            backoff: None,
        }
    }

    /// A 429 of the mirror's own limits: `Retry-After` and the `RateLimit` fields say when to retry.
    pub fn rate_limited(message: impl Into<String>, fields: RateLimitFields, retry_after_secs: u64) -> HubError {
        let mut error = HubError::new(StatusCode::TOO_MANY_REQUESTS, "RateLimited", message, ErrorSource::Client);
        error.backoff = Some(Box::new(Backoff { retry_after: Some(retry_after_secs.max(1).to_string()), rate_limit: Some(fields) }));
        error
    }

    pub fn bad_request(message: impl Into<String>) -> HubError {
        HubError::new(StatusCode::BAD_REQUEST, "BadRequest", message, ErrorSource::Client)
    }

    pub fn route_not_found() -> HubError {
        HubError::new(StatusCode::NOT_FOUND, "NotFound", "Sorry, we can't find the page you are looking for.", ErrorSource::Client)
    }

    pub fn method_not_allowed() -> HubError {
        HubError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "Method not allowed on this route", ErrorSource::Client)
    }

    /// A write (create, upload, delete, settings) sent to the mirror: it is read-only.
    pub fn read_only() -> HubError {
        HubError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "ReadOnlyMirror",
            "This is a read-only mirror of the Hugging Face Hub: create, upload, change and delete on https://huggingface.co",
            ErrorSource::Client,
        )
    }

    /// A Xet route: the mirror serves files over plain HTTP only (hub-api.md rule 2).
    pub fn xet_not_served() -> HubError {
        HubError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "This mirror serves no Xet storage; files come over plain HTTP",
            ErrorSource::Client,
        )
    }

    pub fn revision_not_found(revision: &str) -> HubError {
        HubError::new(StatusCode::NOT_FOUND, "RevisionNotFound", format!("Invalid rev id: {revision}"), ErrorSource::Upstream)
    }

    pub fn entry_not_found(commit: &str) -> HubError {
        let mut error = HubError::new(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found", ErrorSource::Client);
        error.repo_commit = Some(commit.to_owned());
        error
    }

    pub fn range_not_satisfiable(length: u64) -> HubError {
        let mut error =
            HubError::new(StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable", "Requested range not satisfiable", ErrorSource::Client);
        error.unsatisfied_length = Some(length);
        error
    }

    pub fn payload_too_large(limit: usize) -> HubError {
        HubError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("Request body is larger than {limit} bytes"),
            ErrorSource::Client,
        )
    }

    pub fn headers_too_large(limit: usize) -> HubError {
        HubError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HeadersTooLarge",
            format!("Request headers are larger than {limit} bytes"),
            ErrorSource::Client,
        )
    }

    pub fn upstream_unreachable(detail: impl std::fmt::Display) -> HubError {
        HubError::new(
            StatusCode::BAD_GATEWAY,
            "UpstreamUnreachable",
            format!("Upstream Hub is unreachable: {detail}"),
            ErrorSource::Upstream,
        )
    }

    pub fn upstream_invalid(detail: impl std::fmt::Display) -> HubError {
        HubError::new(
            StatusCode::BAD_GATEWAY,
            "UpstreamInvalidResponse",
            format!("Upstream Hub answered something unexpected: {detail}"),
            ErrorSource::Upstream,
        )
    }

    pub fn internal(detail: impl std::fmt::Display) -> HubError {
        HubError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("Internal error: {detail}"), ErrorSource::Internal)
    }

    /// Builds the error upstream answered, keeping its status, code and message.
    pub fn from_upstream(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> HubError {
        let header_text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let message = header_text(X_ERROR_MESSAGE)
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|json| json.get("error").and_then(|error| error.as_str()).map(str::to_owned))
            })
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("Upstream error").to_owned());
        HubError {
            status,
            code: header_text(X_ERROR_CODE),
            message,
            source: ErrorSource::Upstream,
            repo_commit: header_text(X_REPO_COMMIT),
            unsatisfied_length: None,
            backoff: {
                let retry_after = header_text(header::RETRY_AFTER.as_str());
                let rate_limit = header_text(RATE_LIMIT).map(|limit| RateLimitFields { limit, policy: header_text(RATE_LIMIT_POLICY) });
                (retry_after.is_some() || rate_limit.is_some()).then(|| Box::new(Backoff { retry_after, rate_limit }))
            },
        }
    }

    /// Returns true when upstream failed in a way that a stale cached answer should cover: it could
    /// not be reached, it is overloaded (429) or it broke (5xx).
    pub fn is_upstream_outage(&self) -> bool {
        self.source == ErrorSource::Upstream && (self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error())
    }

    pub fn is_server_side(&self) -> bool {
        self.status.is_server_error()
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}: {}", self.status.as_u16(), self.code.as_deref().unwrap_or("-"), self.message)
    }
}

impl std::error::Error for HubError {}

/// Makes arbitrary text safe for a header value: visible ASCII and spaces only, bounded in length.
pub fn header_safe_text(text: &str) -> HeaderValue {
    let cleaned: String =
        text.chars().map(|character| if character == ' ' || character.is_ascii_graphic() { character } else { '?' }).take(300).collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&serde_json::json!({ "error": self.message })).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if let Some(code) = &self.code {
            headers.insert(X_ERROR_CODE, header_safe_text(code));
        }
        headers.insert(X_ERROR_MESSAGE, header_safe_text(&self.message));
        if let Some(commit) = &self.repo_commit {
            headers.insert(X_REPO_COMMIT, header_safe_text(commit));
        }
        if let Some(length) = self.unsatisfied_length {
            headers.insert(header::CONTENT_RANGE, header_safe_text(&format!("bytes */{length}")));
        }
        if let Some(retry_after) = self.backoff.as_ref().and_then(|backoff| backoff.retry_after.as_ref()) {
            headers.insert(header::RETRY_AFTER, header_safe_text(retry_after));
        }
        if let Some(fields) = self.backoff.as_ref().and_then(|backoff| backoff.rate_limit.as_ref()) {
            headers.insert(RATE_LIMIT, header_safe_text(&fields.limit));
            if let Some(policy) = &fields.policy {
                headers.insert(RATE_LIMIT_POLICY, header_safe_text(policy));
            }
        }
        if !headers.contains_key(X_CACHE) {
            let cache = if self.source == ErrorSource::Upstream { "MISS" } else { "HIT" };
            headers.insert(X_CACHE, HeaderValue::from_static(cache));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_code_message_and_json_body() {
        let response = HubError::entry_not_found("0123456789abcdef0123456789abcdef01234567").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[X_ERROR_CODE], "EntryNotFound");
        assert_eq!(response.headers()[X_ERROR_MESSAGE], "Entry not found");
        assert_eq!(response.headers()[X_REPO_COMMIT], "0123456789abcdef0123456789abcdef01234567");
        assert!(response.headers().contains_key(X_CACHE));
    }

    #[test]
    fn own_429s_carry_the_ietf_fields_in_the_hubs_form() {
        let response = HubError::rate_limited("slow down", RateLimitFields::own("requests", 40, 4, 2), 2).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[RATE_LIMIT], "\"requests\";r=0;t=2");
        assert_eq!(response.headers()[RATE_LIMIT_POLICY], "\"fixed window\";\"requests\";q=40;w=4");
    }

    #[test]
    fn upstreams_rate_limit_fields_are_relayed_unchanged() {
        let mut headers = HeaderMap::new();
        headers.insert(RATE_LIMIT, HeaderValue::from_static("\"resolvers\";r=0;t=87"));
        headers.insert(RATE_LIMIT_POLICY, HeaderValue::from_static("\"fixed window\";\"resolvers\";q=3000;w=300"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("87"));
        let response = HubError::from_upstream(StatusCode::TOO_MANY_REQUESTS, &headers, b"{}").into_response();
        assert_eq!(response.headers()[RATE_LIMIT], "\"resolvers\";r=0;t=87");
        assert_eq!(response.headers()[RATE_LIMIT_POLICY], "\"fixed window\";\"resolvers\";q=3000;w=300");
        assert_eq!(response.headers()[header::RETRY_AFTER], "87");
    }

    #[test]
    fn hostile_text_never_breaks_a_header() {
        let value = header_safe_text("bad\r\nInjected: yes\0é");
        assert_eq!(value.to_str().unwrap(), "bad??Injected: yes??");
    }

    #[test]
    fn upstream_error_keeps_its_code_and_message() {
        let mut headers = HeaderMap::new();
        headers.insert(X_ERROR_CODE, HeaderValue::from_static("RevisionNotFound"));
        let error = HubError::from_upstream(StatusCode::NOT_FOUND, &headers, br#"{"error":"Invalid rev id: x"}"#);
        assert_eq!(error.code.as_deref(), Some("RevisionNotFound"));
        assert_eq!(error.message, "Invalid rev id: x");
        assert!(!error.is_upstream_outage());
        let outage = HubError::from_upstream(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"down");
        assert!(outage.is_upstream_outage());
        assert_eq!(outage.message, "Service Unavailable");
    }
}
