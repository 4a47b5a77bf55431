//! Header names of the Hub contract, and the rules for which upstream headers may reach a client.

use http::{HeaderMap, HeaderName, HeaderValue, header};

pub const X_REPO_COMMIT: &str = "x-repo-commit";
pub const X_LINKED_ETAG: &str = "x-linked-etag";
pub const X_LINKED_SIZE: &str = "x-linked-size";
pub const X_ERROR_CODE: &str = "x-error-code";
pub const X_ERROR_MESSAGE: &str = "x-error-message";
pub const X_CACHE: &str = "x-cache";
/// The IETF rate-limit fields huggingface.co sends on its 429s (hub-api.md T26).
pub const RATE_LIMIT: &str = "ratelimit";
pub const RATE_LIMIT_POLICY: &str = "ratelimit-policy";

/// Names every warm answer carries, parsed once (a name given as `&str` is parsed on every use).
pub mod parsed {
    use http::HeaderName;

    pub static X_REPO_COMMIT: HeaderName = HeaderName::from_static(super::X_REPO_COMMIT);
    pub static X_LINKED_ETAG: HeaderName = HeaderName::from_static(super::X_LINKED_ETAG);
    pub static X_LINKED_SIZE: HeaderName = HeaderName::from_static(super::X_LINKED_SIZE);
    pub static X_CACHE: HeaderName = HeaderName::from_static(super::X_CACHE);
}

/// Returns true for the Xet headers that make `hf_xet` bypass the mirror (hub-api.md §3).
pub fn is_xet_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-xet-")
}

/// Headers that describe one hop of a connection and must not be forwarded (RFC 9110 §7.6.1), plus
/// the ones a proxy recomputes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Rewrites one `Link` header value: drops the Xet relations, and points `next` links at the mirror's
/// own origin instead of upstream's (hub-api.md T8). Returns `None` when nothing is left.
pub fn rewrite_link(value: &str, upstream_origins: &[String], public_origin: &str) -> Option<String> {
    let kept: Vec<String> = split_link_values(value)
        .into_iter()
        .filter(|link| !link.contains("xet-auth") && !link.contains("xet-reconstruction-info"))
        .map(|link| {
            let mut link = link.trim().to_owned();
            for origin in upstream_origins {
                let needle = format!("<{origin}/");
                if link.starts_with(&needle) {
                    link = format!("<{public_origin}/{}", &link[needle.len()..]);
                    break;
                }
            }
            link
        })
        .collect();
    if kept.is_empty() { None } else { Some(kept.join(", ")) }
}

/// Points a redirect of upstream's at this mirror: an absolute URL at an upstream origin moves to the
/// public origin, a root-relative one gets the public origin's path prefix (`/hf`). Anything else
/// (a CDN URL, a relative path) is kept; `None` means keep it.
pub fn rewrite_location(value: &str, upstream_origins: &[String], public_origin: &str) -> Option<HeaderValue> {
    let moved = if let Some(rest) = upstream_origins.iter().find_map(|origin| value.strip_prefix(origin.as_str())) {
        if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
            return None;
        }
        format!("{public_origin}{rest}")
    } else if value.starts_with('/') && !value.starts_with("//") {
        let prefix = url_path(public_origin);
        if prefix.is_empty() {
            return None;
        }
        format!("{prefix}{value}")
    } else {
        return None;
    };
    HeaderValue::from_str(&moved).ok()
}

/// The path part of an absolute URL without a query (`https://h/a/b` → `/a/b`; `https://h` → ``).
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("", |index| &after_scheme[index..])
}

/// Splits a `Link` header on the commas that separate links, not those inside `<…>` or quotes.
fn split_link_values(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth_angle = false;
    let mut in_quotes = false;
    let mut start = 0;
    for (index, character) in value.char_indices() {
        match character {
            '<' if !in_quotes => depth_angle = true,
            '>' if !in_quotes => depth_angle = false,
            '"' => in_quotes = !in_quotes,
            ',' if !depth_angle && !in_quotes => {
                parts.push(&value[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|part| !part.trim().is_empty()).collect()
}

/// Copies the headers of an upstream response that may reach the client of a pass-through: no
/// hop-by-hop headers, no Xet signals, no cookies, and `Link` rewritten.
pub fn forwardable_response_headers(upstream: &HeaderMap, upstream_origins: &[String], public_origin: &str) -> HeaderMap {
    let mut forwarded = HeaderMap::new();
    for (name, value) in upstream {
        if is_hop_by_hop(name) || is_xet_header(name) || name == header::SET_COOKIE || name == header::CONTENT_LENGTH {
            continue;
        }
        if name == header::LOCATION
            && let Some(moved) = value.to_str().ok().and_then(|text| rewrite_location(text, upstream_origins, public_origin))
        {
            forwarded.append(header::LOCATION, moved);
            continue;
        }
        if name == header::LINK {
            let Some(rewritten) = value.to_str().ok().and_then(|text| rewrite_link(text, upstream_origins, public_origin)) else {
                continue;
            };
            if let Ok(value) = HeaderValue::from_str(&rewritten) {
                forwarded.append(header::LINK, value);
            }
            continue;
        }
        forwarded.append(name.clone(), value.clone());
    }
    forwarded
}

/// The content type of a file, decided from its name alone so that it is the same whether the bytes
/// came from upstream, from disk or from a peer.
pub fn content_type_for_path(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "json" => "application/json",
        "txt" | "md" | "py" | "jinja" | "csv" | "tsv" | "yaml" | "yml" | "jsonl" | "gitattributes" | "model_card" => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rewrite_drops_xet_and_moves_next_to_our_origin() {
        let upstream = vec!["https://huggingface.co".to_owned(), "http://127.0.0.1:9000".to_owned()];
        let value = r#"<https://huggingface.co/api/models/org/model/xet-read-token/abc>; rel="xet-auth", <https://cas.example/v1/reconstructions/x>; rel="xet-reconstruction-info""#;
        assert_eq!(rewrite_link(value, &upstream, "http://mirror:8080"), None);
        let next = r#"<http://127.0.0.1:9000/api/models?search=a&cursor=b,c>; rel="next""#;
        assert_eq!(
            rewrite_link(next, &upstream, "http://mirror:8080").unwrap(),
            r#"<http://mirror:8080/api/models?search=a&cursor=b,c>; rel="next""#
        );
    }

    #[test]
    fn redirects_point_at_the_mirror_under_its_prefix() {
        let upstream = vec!["https://huggingface.co".to_owned()];
        let moved = |value: &str, origin: &str| rewrite_location(value, &upstream, origin).map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(
            moved("/api/models/openai-community/gpt2", "https://m.example/hf").as_deref(),
            Some("/hf/api/models/openai-community/gpt2")
        );
        assert_eq!(moved("/api/models/a/b", "https://m.example"), None, "no prefix: a relative redirect stays");
        assert_eq!(moved("https://huggingface.co/a/b?x=1", "https://m.example/hf").as_deref(), Some("https://m.example/hf/a/b?x=1"));
        assert_eq!(moved("https://huggingface.co.evil/a", "https://m.example/hf"), None);
        assert_eq!(moved("https://cdn-lfs.hf.co/x", "https://m.example/hf"), None);
        assert_eq!(moved("//evil.example/x", "https://m.example/hf"), None);
    }

    #[test]
    fn forwarded_headers_never_carry_xet_or_hop_by_hop() {
        let mut upstream = HeaderMap::new();
        upstream.insert("x-xet-hash", HeaderValue::from_static("abc"));
        upstream.insert("x-xet-refresh-route", HeaderValue::from_static("/x"));
        upstream.insert("connection", HeaderValue::from_static("close"));
        upstream.insert("set-cookie", HeaderValue::from_static("token=secret"));
        upstream.insert("x-repo-commit", HeaderValue::from_static("c"));
        let forwarded = forwardable_response_headers(&upstream, &[], "http://m");
        assert_eq!(forwarded.len(), 1);
        assert!(forwarded.contains_key("x-repo-commit"));
    }

    #[test]
    fn content_type_depends_on_the_name_only() {
        assert_eq!(content_type_for_path("config.json"), "application/json");
        assert_eq!(content_type_for_path("sub/dir/file.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type_for_path("model.safetensors"), "application/octet-stream");
        assert_eq!(content_type_for_path("noextension"), "application/octet-stream");
    }
}
