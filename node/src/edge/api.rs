//! The Hub's metadata routes for cacheable repos: repo info, tree listings, paths-info and refs,
//! answered from the catalog (read through to upstream); pass-through repos are forwarded.

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hfm_cluster::catalog::ListStart;
use hfm_cluster::types::RepoKey;
use http::{HeaderMap, Method, header};
use serde_json::Value;

use super::passthrough::{forward_request, pass_through};
use super::{HubApi, access, access_at, json_response, public_origin, read_body, set_header};
use crate::hub::HubError;
use crate::hub::json::tree_entry_json;
use crate::hub::query::{flag, parse_pairs, parse_tree_cursor, paths_info_request, tree_cursor, values};
use crate::hub::route::{api_repo_path, encode_segment, validate_relative_path};
use crate::metadata::Access;

/// The query parameters that change a repo-info answer, normalized into a cache variant.
fn repo_info_variant(query: &str) -> Option<String> {
    let pairs = parse_pairs(query);
    let mut parts = Vec::new();
    if flag(&pairs, "blobs") {
        parts.push("blobs=true".to_owned());
    }
    if flag(&pairs, "securityStatus") {
        parts.push("securityStatus=true".to_owned());
    }
    let mut expands: Vec<&str> = values(&pairs, "expand").collect();
    expands.sort_unstable();
    expands.dedup();
    if expands.len() > MAX_CACHED_EXPANDS || !expands.iter().all(|value| EXPAND_PROPERTIES.contains(value)) {
        return None;
    }
    parts.extend(expands.iter().map(|value| format!("expand={}", encode_segment(value))));
    Some(parts.join("&"))
}

/// The `expand` values of repo info (models, datasets and spaces, as `huggingface_hub` lists them); a
/// request with another value is passed through uncached, so invented values cannot grow the catalog.
const EXPAND_PROPERTIES: &[&str] = &[
    "author",
    "baseModels",
    "cardData",
    "childrenModelCount",
    "citation",
    "config",
    "createdAt",
    "datasets",
    "description",
    "disabled",
    "downloads",
    "downloadsAllTime",
    "gated",
    "gguf",
    "inference",
    "inferenceProviderMapping",
    "lastModified",
    "library_name",
    "likes",
    "mask_token",
    "model-index",
    "models",
    "paperswithcode_id",
    "pipeline_tag",
    "private",
    "resourceGroup",
    "runtime",
    "safetensors",
    "sdk",
    "securityRepoStatus",
    "sha",
    "siblings",
    "spaces",
    "subdomain",
    "tags",
    "transformersInfo",
    "trendingScore",
    "usedStorage",
    "widgetData",
    "xetEnabled",
];
/// The most `expand` values a cached variant may combine.
const MAX_CACHED_EXPANDS: usize = 6;

pub(super) async fn repo_info(hub: &HubApi, request: Request, repo: &RepoKey, revision: Option<&str>) -> Result<Response, HubError> {
    let (access, policy_status) = access_at(hub, repo, revision).await?;
    if access == Access::PassThrough {
        return forward_request(hub, request, None).await;
    }
    let Some(variant) = repo_info_variant(request.uri().query().unwrap_or_default()) else {
        // Unknown or too many `expand` values: asked of upstream anonymously (the repo is public),
        // never recorded.
        let (parts, _) = request.into_parts();
        return pass_through(hub, &parts, None, None, None).await;
    };
    let (body, _commit, status) = hub.metadata.repo_info(repo, revision, &variant).await?;
    Ok(json_response(request.method(), body, status.max(policy_status), HeaderMap::new()))
}

pub(super) async fn tree(hub: &HubApi, request: Request, repo: &RepoKey, revision: &str, path: &str) -> Result<Response, HubError> {
    let (access, policy_status) = access_at(hub, repo, Some(revision)).await?;
    if access == Access::PassThrough {
        return forward_request(hub, request, None).await;
    }
    let (parts, _) = request.into_parts();
    let pairs = parse_pairs(parts.uri.query().unwrap_or_default());
    let recursive = flag(&pairs, "recursive");
    if flag(&pairs, "expand") {
        // Expanded entries (last commit, security scan) are not in the manifest; ask upstream,
        // anonymously: the repo is public.
        return pass_through(hub, &parts, None, None, None).await;
    }
    let start = match values(&pairs, "cursor").next() {
        Some(text) => parse_tree_cursor(text).ok_or_else(|| HubError::bad_request("Invalid cursor"))?,
        None => ListStart::First,
    };
    let (commit, ref_status) = hub.metadata.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = hub.metadata.manifest(repo, &commit).await?;
    // One page is built (never the whole listing) from the manifest's pages it spans.
    let mut page: Vec<Value> = Vec::new();
    let mut last_path = String::new();
    let more = manifest
        .list(path, recursive, &start, hub.settings.tree_page_size, |entry| {
            page.push(tree_entry_json(entry));
            last_path.clone_from(&entry.path);
        })
        .await
        .map_err(HubError::internal)?
        .ok_or_else(|| HubError::entry_not_found(&commit))?;
    let mut extra = HeaderMap::new();
    if more {
        // Later pages are pinned to the commit, so a branch moving mid-listing cannot mix commits.
        let origin = public_origin(&hub.settings, &parts);
        let path_part = if path.is_empty() { String::new() } else { format!("/{}", encode_segment(path)) };
        let link = format!(
            "<{origin}{}/tree/{commit}{path_part}?recursive={recursive}&expand=false&cursor={}>; rel=\"next\"",
            api_repo_path(repo),
            tree_cursor(&last_path)
        );
        set_header(&mut extra, "link", &link);
    }
    let body = serde_json::to_vec(&page).map_err(HubError::internal)?;
    Ok(json_response(&parts.method, Bytes::from(body), policy_status.max(ref_status).max(manifest_status), extra))
}

pub(super) async fn paths_info(hub: &HubApi, request: Request, repo: &RepoKey, revision: &str) -> Result<Response, HubError> {
    // The body is bounded and read first, so an oversized one is refused before any upstream work.
    let (parts, body) = request.into_parts();
    let body = read_body(&parts, body).await?.unwrap_or_default();
    let (access, policy_status) = access_at(hub, repo, Some(revision)).await?;
    if access == Access::PassThrough {
        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        return pass_through(hub, &parts, Some(body), authorization.as_ref(), None).await;
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let (paths, expand) = paths_info_request(content_type, &body)?;
    if expand {
        return pass_through(hub, &parts, Some(body), None, None).await;
    }
    let (commit, ref_status) = hub.metadata.resolve_revision(repo, revision).await?;
    let (manifest, manifest_status) = hub.metadata.manifest(repo, &commit).await?;
    let mut seen = std::collections::HashSet::new();
    let mut found: Vec<Value> = Vec::new();
    for path in paths.iter().map(|path| path.trim_matches('/')) {
        if validate_relative_path(path).is_ok()
            && seen.insert(path)
            && let Some(entry) = manifest.find(path).await.map_err(HubError::internal)?
        {
            found.push(tree_entry_json(&entry));
        }
    }
    let body = serde_json::to_vec(&found).map_err(HubError::internal)?;
    Ok(json_response(&Method::GET, Bytes::from(body), policy_status.max(ref_status).max(manifest_status), HeaderMap::new()))
}

pub(super) async fn refs(hub: &HubApi, request: Request, repo: &RepoKey) -> Result<Response, HubError> {
    let (access, policy_status) = access(hub, repo).await?;
    if access == Access::PassThrough {
        return forward_request(hub, request, None).await;
    }
    let include_pull_requests = flag(&parse_pairs(request.uri().query().unwrap_or_default()), "include_prs");
    let (body, status) = hub.metadata.refs_listing(repo, include_pull_requests).await?;
    Ok(json_response(request.method(), body, status.max(policy_status), HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_info_variants_are_normalized() {
        let variant = |query: &str| repo_info_variant(query).unwrap();
        assert_eq!(variant(""), "");
        assert_eq!(variant("blobs=True"), crate::metadata::FILES_VARIANT, "the variant the policy check records");
        assert_eq!(variant("blobs=false&unknown=1"), "");
        assert_eq!(variant("expand=siblings&expand=sha&expand=sha"), "expand=sha&expand=siblings");
        assert_eq!(variant("expand[]=model-index&securityStatus=1"), "securityStatus=true&expand=model-index");
        assert_eq!(repo_info_variant("expand=a%20b"), None, "an unknown property is not cached");
        assert_eq!(repo_info_variant("expand=sha&expand=author&expand=tags&expand=likes&expand=gated&expand=private&expand=sdk"), None);
    }
}
