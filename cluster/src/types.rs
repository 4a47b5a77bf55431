//! Repository keys and commit shas shared by the catalog and the node.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of repository on the Hub; it selects the URL prefix and the `/api/{kind}s/` family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RepoType {
    Model,
    Dataset,
    Space,
    Kernel,
}

impl RepoType {
    /// Returns the singular name used in keys and logs (`model`, `dataset`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
            RepoType::Space => "space",
            RepoType::Kernel => "kernel",
        }
    }

    /// Returns the plural used by the Hub's `/api/{plural}/` routes.
    pub fn api_plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
            RepoType::Kernel => "kernels",
        }
    }

    /// Returns the prefix of `/resolve/` URLs: empty for models, `datasets/` for datasets, and so on.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
            RepoType::Space => "spaces/",
            RepoType::Kernel => "kernels/",
        }
    }

    /// Parses the singular name [`RepoType::as_str`] gives.
    pub fn parse(name: &str) -> Option<RepoType> {
        [RepoType::Model, RepoType::Dataset, RepoType::Space, RepoType::Kernel].into_iter().find(|kind| kind.as_str() == name)
    }

    /// Parses the plural form of `/api/{plural}/`.
    pub fn from_api_plural(plural: &str) -> Option<RepoType> {
        match plural {
            "models" => Some(RepoType::Model),
            "datasets" => Some(RepoType::Dataset),
            "spaces" => Some(RepoType::Space),
            "kernels" => Some(RepoType::Kernel),
            _ => None,
        }
    }
}

impl fmt::Display for RepoType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A repository on the Hub: its kind and its id (`org/name`, or a legacy single segment).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepoKey {
    pub repo_type: RepoType,
    pub repo_id: String,
}

impl RepoKey {
    pub fn new(repo_type: RepoType, repo_id: impl Into<String>) -> RepoKey {
        RepoKey { repo_type, repo_id: repo_id.into() }
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.repo_type, self.repo_id)
    }
}

/// Returns true for a full, lowercase, 40-hex git commit sha — the only revision that is immutable.
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_sha_must_be_full_lowercase_hex() {
        assert!(is_commit_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_sha("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_commit_sha("aaaaaaa"));
        assert!(!is_commit_sha("main"));
        assert!(!is_commit_sha("0123456789abcdef0123456789abcdef012345678"));
    }

    #[test]
    fn api_plural_round_trips() {
        for repo_type in [RepoType::Model, RepoType::Dataset, RepoType::Space, RepoType::Kernel] {
            assert_eq!(RepoType::from_api_plural(repo_type.api_plural()), Some(repo_type));
        }
        assert_eq!(RepoType::from_api_plural("model"), None);
        for repo_type in [RepoType::Model, RepoType::Dataset, RepoType::Space, RepoType::Kernel] {
            assert_eq!(RepoType::parse(repo_type.as_str()), Some(repo_type));
        }
        assert_eq!(RepoType::parse("models"), None);
    }
}
