//! Routing on the raw, undecoded request path (hub-api.md §1, T9), and the encodings used to build
//! upstream URLs again.
//!
//! The path is split on `/` first and each segment is percent-decoded afterwards, so that
//! `refs%2Fpr%2F1` stays one revision and `tree/main/sub%2Fdir` one tree path.

use std::borrow::Cow;

use hfm_cluster::types::{RepoKey, RepoType};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::error::HubError;

/// Python's `quote(text, safe="")`: everything but unreserved characters is encoded.
const ENCODE_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Python's `quote(path)`: like a segment, but `/` stays literal.
const ENCODE_PATH: &AsciiSet = &ENCODE_SEGMENT.remove(b'/');

/// Encodes a revision or tree path as one URL segment (`feature/x` → `feature%2Fx`).
pub fn encode_segment(text: &str) -> String {
    utf8_percent_encode(text, ENCODE_SEGMENT).to_string()
}

/// Encodes a file path for `/resolve/`, keeping `/` between its segments.
pub fn encode_path(text: &str) -> String {
    utf8_percent_encode(text, ENCODE_PATH).to_string()
}

/// The upstream API path of a repository: `/api/{t}s/{repo}`.
pub fn api_repo_path(repo: &RepoKey) -> String {
    format!("/api/{}/{}", repo.repo_type.api_plural(), repo.repo_id)
}

/// The upstream path of a file's bytes at a commit: `/{T}{repo}/resolve/{commit}/{path}`.
pub fn resolve_origin(repo: &RepoKey, commit: &str, path: &str) -> String {
    format!("/{}{}/resolve/{commit}/{}", repo.repo_type.url_prefix(), repo.repo_id, encode_path(path))
}

/// What a request asks for, with every part decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/{T}{repo}/resolve/{rev}/{path}`.
    Resolve { repo: RepoKey, revision: String, path: String },
    /// `/api/{t}s/{repo}` (no revision) and `/api/{t}s/{repo}/revision/{rev}`.
    RepoInfo { repo: RepoKey, revision: Option<String> },
    /// `/api/{t}s/{repo}/tree/{rev}[/{path}]`.
    Tree { repo: RepoKey, revision: String, path: String },
    /// `/api/{t}s/{repo}/paths-info/{rev}`.
    PathsInfo { repo: RepoKey, revision: String },
    /// `/api/{t}s/{repo}/refs`.
    Refs { repo: RepoKey },
    /// `/api/models`, `/api/datasets`, `/api/spaces`: listings, proxied.
    Listing,
    /// `/api/agent-harnesses`: answered 404 at once (hub-api.md T23).
    AgentHarnesses,
    /// `/api/{t}s/{repo}/xet-read-token/…` and `xet-write-token`: the mirror serves no Xet.
    XetToken,
    /// Any other `/api/` route, including routes of a known repo that the mirror does not model
    /// (commits, discussions, …): passed through to upstream.
    ApiPassthrough { repo: Option<RepoKey> },
    /// The node's own liveness probe (`/healthz`).
    Health,
    /// `/readyz`: whether the node takes traffic (not draining; in a cluster, live in gossip).
    Ready,
    /// `/metrics`: Prometheus text, for the node's own host (any host on the operator port).
    Metrics,
    /// The node's status for operators and `hf-mirror status` (JSON).
    Status,
    /// `POST`: takes the node out of placement and DNS, hands over catalog leadership and waits for
    /// its fills (`hf-mirror drain`); loopback callers only.
    Drain,
    /// `/_hfm/pins`: the pins (GET), pin (POST) or unpin (DELETE) a repository; changes from the
    /// node's own host only.
    Pins,
    /// `/_hfm/replicas/{etag}`: which nodes the catalog says hold a blob.
    Replicas { etag: String },
    /// `/`: the mirror's public page (HTML, or JSON on request).
    SiteHome,
    /// `/status`: the mirrors' public status page.
    SiteStatus,
}

impl Route {
    /// The repository the request names, if any.
    pub fn repo(&self) -> Option<&RepoKey> {
        match self {
            Route::Resolve { repo, .. }
            | Route::RepoInfo { repo, .. }
            | Route::Tree { repo, .. }
            | Route::PathsInfo { repo, .. }
            | Route::Refs { repo } => Some(repo),
            Route::ApiPassthrough { repo } => repo.as_ref(),
            _ => None,
        }
    }

    /// The route's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Resolve { .. } => "resolve",
            Route::RepoInfo { .. } => "repo_info",
            Route::Tree { .. } => "tree",
            Route::PathsInfo { .. } => "paths_info",
            Route::Refs { .. } => "refs",
            Route::Listing => "listing",
            Route::AgentHarnesses => "agent_harnesses",
            Route::XetToken => "xet_token",
            Route::ApiPassthrough { .. } => "api_passthrough",
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Status => "status",
            Route::Drain => "drain",
            Route::Pins => "pins",
            Route::Replicas { .. } => "replicas",
            Route::SiteHome => "site_home",
            Route::SiteStatus => "site_status",
        }
    }
}

/// The sub-routes of `/api/{t}s/{repo}/…`; they tell a one-segment legacy repo id from a two-segment one.
const REPO_SUBROUTES: &[&str] = &[
    "revision",
    "tree",
    "paths-info",
    "refs",
    "commits",
    "commit",
    "discussions",
    "xet-read-token",
    "xet-write-token",
    "treesize",
    "preupload",
    "settings",
    "branch",
    "tag",
    "resolve-cache",
    "lfs-files",
    "likers",
    "parquet",
    "notebook",
];

/// Decodes one raw path segment strictly: every `%` must start a valid escape, the result must be
/// UTF-8 without NUL or other control characters, and `.`/`..` are refused (no traversal).
pub fn decode_segment(raw: &str) -> Result<Cow<'_, str>, HubError> {
    if !raw.contains('%') {
        // Nothing to decode (the common case): the raw text itself, checked the same way.
        if raw.chars().any(char::is_control) {
            return Err(HubError::bad_request("Path contains control characters"));
        }
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let escape = bytes.get(index + 1..index + 3).ok_or_else(|| HubError::bad_request("Invalid percent-encoding in path"))?;
            let text = std::str::from_utf8(escape).map_err(|_| HubError::bad_request("Invalid percent-encoding in path"))?;
            let value = u8::from_str_radix(text, 16).map_err(|_| HubError::bad_request("Invalid percent-encoding in path"))?;
            if !escape.iter().all(u8::is_ascii_hexdigit) {
                return Err(HubError::bad_request("Invalid percent-encoding in path"));
            }
            decoded.push(value);
            index += 3;
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| HubError::bad_request("Path is not valid UTF-8"))?;
    if text.chars().any(char::is_control) {
        return Err(HubError::bad_request("Path contains control characters"));
    }
    Ok(Cow::Owned(text))
}

/// Validates a decoded relative path (a file or tree path): no empty, `.` or `..` segment, no
/// backslash, not absolute.
pub fn validate_relative_path(path: &str) -> Result<(), HubError> {
    if path.starts_with('/') || path.contains('\\') {
        return Err(HubError::bad_request("Invalid path"));
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(HubError::bad_request("Invalid path: empty, '.' or '..' segment"));
    }
    Ok(())
}

fn validate_repo_segment(segment: &str) -> Result<(), HubError> {
    let valid_characters = segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if segment.is_empty() || segment.len() > 96 || !valid_characters || segment == "." || segment == ".." {
        return Err(HubError::bad_request(format!("Invalid repo id segment: {segment}")));
    }
    Ok(())
}

fn repo_from_segments(repo_type: RepoType, segments: &[Cow<'_, str>]) -> Result<RepoKey, HubError> {
    for segment in segments {
        validate_repo_segment(segment)?;
    }
    Ok(RepoKey::new(repo_type, segments.join("/")))
}

fn validate_revision(revision: &str) -> Result<(), HubError> {
    if revision.is_empty() || revision.len() > 256 {
        return Err(HubError::bad_request("Invalid revision"));
    }
    validate_relative_path(revision)
}

/// Splits a repo-id part from what follows it: a two-segment id when the third segment is a known
/// keyword, else a one-segment (legacy) id when the second is.
fn split_repo(segments: &[Cow<'_, str>], keywords: &[&str]) -> Option<usize> {
    if segments.len() >= 3 && keywords.contains(&&*segments[2]) {
        return Some(2);
    }
    if segments.len() >= 2 && keywords.contains(&&*segments[1]) {
        return Some(1);
    }
    None
}

/// Routes a raw request path (without its query).
pub fn route(raw_path: &str) -> Result<Route, HubError> {
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Err(HubError::bad_request("Path must be absolute"));
    };
    match rest {
        "" => return Ok(Route::SiteHome),
        "status" => return Ok(Route::SiteStatus),
        "healthz" => return Ok(Route::Health),
        "readyz" => return Ok(Route::Ready),
        "metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    if rest == "_hfm/status" {
        return Ok(Route::Status);
    }
    if rest == "_hfm/drain" {
        return Ok(Route::Drain);
    }
    if rest == "_hfm/pins" {
        return Ok(Route::Pins);
    }
    if let Some(etag) = rest.strip_prefix("_hfm/replicas/") {
        return Ok(Route::Replicas { etag: etag.to_owned() });
    }
    let mut segments: Vec<Cow<'_, str>> = rest.split('/').map(decode_segment).collect::<Result<_, _>>()?;
    // A dot segment, plain or encoded, could climb out of the route once a URL library normalizes
    // the path (`/api/../whoami-v2` would reach upstream as `/whoami-v2`): refused before routing.
    if segments.iter().any(|segment| segment == "." || segment == "..") {
        return Err(HubError::bad_request("Invalid path: '.' or '..' segment"));
    }
    // A single trailing slash is harmless (`/api/models/org/model/tree/main/`).
    if segments.len() > 1 && segments.last().is_some_and(|segment| segment.is_empty()) {
        segments.pop();
    }
    if segments.first().map(|segment| &**segment) == Some("api") {
        return route_api(&segments[1..]);
    }
    route_resolve(&segments)
}

fn route_resolve(segments: &[Cow<'_, str>]) -> Result<Route, HubError> {
    let (repo_type, rest) = match segments.first().map(|segment| &**segment) {
        Some("datasets") => (RepoType::Dataset, &segments[1..]),
        Some("spaces") => (RepoType::Space, &segments[1..]),
        Some("kernels") => (RepoType::Kernel, &segments[1..]),
        _ => (RepoType::Model, segments),
    };
    let Some(repo_length) = split_repo(rest, &["resolve"]) else {
        return Err(HubError::route_not_found());
    };
    let repo = repo_from_segments(repo_type, &rest[..repo_length])?;
    let after = &rest[repo_length + 1..];
    if after.len() < 2 {
        return Err(HubError::route_not_found());
    }
    let revision = after[0].to_string();
    validate_revision(&revision)?;
    let path = after[1..].join("/");
    validate_relative_path(&path)?;
    Ok(Route::Resolve { repo, revision, path })
}

fn route_api(segments: &[Cow<'_, str>]) -> Result<Route, HubError> {
    let Some(first) = segments.first() else {
        return Ok(Route::ApiPassthrough { repo: None });
    };
    if first == "agent-harnesses" {
        return Ok(Route::AgentHarnesses);
    }
    let Some(repo_type) = RepoType::from_api_plural(first) else {
        return Ok(Route::ApiPassthrough { repo: None });
    };
    let rest = &segments[1..];
    if rest.is_empty() {
        return Ok(Route::Listing);
    }
    let (repo_length, subroute) = match split_repo(rest, REPO_SUBROUTES) {
        Some(length) => (length, &rest[length..]),
        None if rest.len() <= 2 => (rest.len(), &rest[rest.len()..]),
        None => return Ok(Route::ApiPassthrough { repo: None }),
    };
    let repo = repo_from_segments(repo_type, &rest[..repo_length])?;
    let keyword = subroute.first().map(|segment| &**segment);
    match (keyword, subroute.len()) {
        (None, _) => Ok(Route::RepoInfo { repo, revision: None }),
        (Some("revision"), 2) => {
            validate_revision(&subroute[1])?;
            Ok(Route::RepoInfo { repo, revision: Some(subroute[1].to_string()) })
        }
        (Some("tree"), length) if length >= 2 => {
            validate_revision(&subroute[1])?;
            let path = subroute[2..].join("/");
            if !path.is_empty() {
                validate_relative_path(&path)?;
            }
            Ok(Route::Tree { repo, revision: subroute[1].to_string(), path })
        }
        (Some("paths-info"), 2) => {
            validate_revision(&subroute[1])?;
            Ok(Route::PathsInfo { repo, revision: subroute[1].to_string() })
        }
        (Some("refs"), 1) => Ok(Route::Refs { repo }),
        (Some("xet-read-token" | "xet-write-token"), _) => Ok(Route::XetToken),
        _ => Ok(Route::ApiPassthrough { repo: Some(repo) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str) -> RepoKey {
        RepoKey::new(RepoType::Model, id)
    }

    #[test]
    fn resolve_routes_decode_after_splitting() {
        assert_eq!(
            route("/org/model/resolve/refs%2Fpr%2F1/sub/dir/we%20ird%23name%3F%2B%C3%A9.txt").unwrap(),
            Route::Resolve { repo: model("org/model"), revision: "refs/pr/1".into(), path: "sub/dir/we ird#name?+é.txt".into() }
        );
        assert_eq!(
            route("/gpt2/resolve/main/config.json").unwrap(),
            Route::Resolve { repo: model("gpt2"), revision: "main".into(), path: "config.json".into() }
        );
        assert_eq!(
            route("/datasets/org/data/resolve/feature%2Fx/a.csv").unwrap(),
            Route::Resolve { repo: RepoKey::new(RepoType::Dataset, "org/data"), revision: "feature/x".into(), path: "a.csv".into() }
        );
        assert_eq!(
            route("/spaces/org/space/resolve/main/app.py").unwrap(),
            Route::Resolve { repo: RepoKey::new(RepoType::Space, "org/space"), revision: "main".into(), path: "app.py".into() }
        );
    }

    #[test]
    fn api_routes_tell_legacy_ids_from_two_segment_ids() {
        assert_eq!(route("/api/models/org/model").unwrap(), Route::RepoInfo { repo: model("org/model"), revision: None });
        assert_eq!(route("/api/models/gpt2").unwrap(), Route::RepoInfo { repo: model("gpt2"), revision: None });
        assert_eq!(
            route("/api/models/gpt2/revision/main").unwrap(),
            Route::RepoInfo { repo: model("gpt2"), revision: Some("main".into()) }
        );
        assert_eq!(
            route("/api/models/org/model/tree/main/sub%2Fdir").unwrap(),
            Route::Tree { repo: model("org/model"), revision: "main".into(), path: "sub/dir".into() }
        );
        assert_eq!(
            route("/api/models/org/model/tree/main/").unwrap(),
            Route::Tree { repo: model("org/model"), revision: "main".into(), path: String::new() }
        );
        assert_eq!(
            route("/api/datasets/org/data/paths-info/main").unwrap(),
            Route::PathsInfo { repo: RepoKey::new(RepoType::Dataset, "org/data"), revision: "main".into() }
        );
        assert_eq!(route("/api/models/org/model/refs").unwrap(), Route::Refs { repo: model("org/model") });
        assert_eq!(route("/api/models").unwrap(), Route::Listing);
        assert_eq!(route("/api/agent-harnesses").unwrap(), Route::AgentHarnesses);
        assert_eq!(route("/api/whoami-v2").unwrap(), Route::ApiPassthrough { repo: None });
        assert_eq!(route("/api/models/org/model/commits/main").unwrap(), Route::ApiPassthrough { repo: Some(model("org/model")) });
        assert_eq!(route("/api/models/org/model/xet-read-token/abc").unwrap(), Route::XetToken);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for hostile in [
            "/org/model/resolve/main/../secret",
            "/org/model/resolve/main/%2E%2E/secret",
            "/org/model/resolve/main/a%00b",
            "/org/model/resolve/main/a%zzb",
            "/org/model/resolve/main/a%2",
            "/org/model/resolve/main/a%ff",
            "/org/model/resolve/main//double",
            "/org/model/resolve/..%2F..%2Fetc/passwd",
            "/org/model/resolve/main/a%5Cb",
            "/or%2Fg/model/resolve/main/file",
            "/api/models/org/model/tree/main/%2E%2E",
            "/api/../whoami-v2",
            "/api/%2e%2e/whoami-v2",
            "/api/models/../../whoami-v2",
            "/api/./models",
            "/./org/model/resolve/main/file",
            "relative",
        ] {
            assert!(route(hostile).is_err(), "{hostile} must be refused");
        }
        let error = route("/org/model/resolve/main/..").unwrap_err();
        assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
        assert_eq!(route("/favicon.ico").unwrap_err().status, http::StatusCode::NOT_FOUND);
        assert_eq!(route("/org/model/resolve/main").unwrap_err().status, http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn encodings_match_python_quote() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("feature/x"), "feature%2Fx");
        assert_eq!(encode_path("sub/we ird#name?+é.txt"), "sub/we%20ird%23name%3F%2B%C3%A9.txt");
        assert_eq!(encode_path("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn decode_then_encode_round_trips_every_byte() {
        let all: String = (1u8..128).filter(|byte| !byte.is_ascii_control()).map(char::from).chain("é漢🙂".chars()).collect();
        assert_eq!(decode_segment(&encode_segment(&all)).unwrap(), all);
    }
}
