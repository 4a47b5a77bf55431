//! `[[pins]]` entries and pin requests: which repositories may be pinned, at which revision.

use hfm_cluster::types::{RepoKey, RepoType};

/// Checks what a pin names: `ORG/NAME`, a model or a dataset, a sane revision.
pub fn validate_pin(repo_id: &str, repo_type: &str, revision: &str) -> Result<(RepoKey, String), String> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let well_formed =
        |part: &str| !part.is_empty() && part.len() <= 96 && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if parts.len() != 2 || !parts.iter().all(|part| well_formed(part)) || parts.iter().any(|part| *part == "." || *part == "..") {
        return Err(format!("{repo_id:?} is not ORG/NAME"));
    }
    let repo_type = match repo_type {
        "model" => RepoType::Model,
        "dataset" => RepoType::Dataset,
        other => return Err(format!("type {other:?}: only models and datasets are mirrored")),
    };
    if revision.is_empty() || revision.len() > 256 || revision.contains("..") || revision.chars().any(char::is_control) {
        return Err(format!("invalid revision {revision:?}"));
    }
    Ok((RepoKey::new(repo_type, repo_id), revision.to_owned()))
}
