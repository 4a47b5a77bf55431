//! What a warm `/resolve/` answers, remembered per (repository, revision, path): the commit, the
//! blob and its size, and the headers of the whole file's answer made from them. A remembered file is used only while
//! the metadata it was drawn from would still give the same answer ([`Metadata::still_fresh`]: the
//! policy and the ref are fresh and were not written since), so `X-Cache` stays what the catalog
//! reads would say, and a ref that moves or a repository that turns private is seen at once. The
//! blob itself is looked up in the store on every request, as before.
//!
//! Bounded: past [`WARM_FILE_SLOTS`] files it starts over (the next requests read the catalog).
//!
//! [`Metadata::still_fresh`]: crate::metadata::Metadata::still_fresh

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use hfm_cluster::types::RepoKey;
use http::{HeaderMap, HeaderValue, header};

use crate::hub::CacheStatus;
use crate::hub::headers::{content_type_for_path, parsed};
use crate::metadata::Freshness;

/// How many files are remembered at most.
pub const WARM_FILE_SLOTS: usize = 8192;

/// A file of a commit, as `/resolve/` answers it.
pub(super) struct WarmFile {
    key: (RepoKey, String, String),
    pub commit: String,
    pub etag: String,
    pub size: u64,
    /// The headers of a `200` with the whole file: `X-Repo-Commit`, `ETag`, `X-Linked-Etag`,
    /// `X-Linked-Size`, `Accept-Ranges`, `Content-Type`, `Content-Length`, and `X-Cache: HIT` (a
    /// request that finds its blob elsewhere sets its own); other answers adjust a copy.
    pub headers: HeaderMap,
}

impl WarmFile {
    /// `None` when the commit or etag cannot be a header value (then nothing is remembered).
    pub fn new(repo: &RepoKey, revision: &str, path: &str, commit: String, etag: String, size: u64) -> Option<WarmFile> {
        let quoted_etag = HeaderValue::from_str(&format!("\"{etag}\"")).ok()?;
        let size_value = HeaderValue::from(size);
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(&parsed::X_REPO_COMMIT, HeaderValue::from_str(&commit).ok()?);
        headers.insert(header::ETAG, quoted_etag.clone());
        headers.insert(&parsed::X_LINKED_ETAG, quoted_etag);
        headers.insert(&parsed::X_LINKED_SIZE, size_value.clone());
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for_path(path)));
        headers.insert(header::CONTENT_LENGTH, size_value);
        headers.insert(&parsed::X_CACHE, HeaderValue::from_static(CacheStatus::Hit.as_str()));
        let key = (repo.clone(), revision.to_owned(), path.to_owned());
        Some(WarmFile { key, commit, etag, size, headers })
    }

    fn is(&self, repo: &RepoKey, revision: &str, path: &str) -> bool {
        self.key.0 == *repo && self.key.1 == revision && self.key.2 == path
    }
}

/// The remembered files, by a hash of their key (a collision only replaces an entry).
#[derive(Default)]
pub struct WarmFiles {
    files: RwLock<HashMap<u64, (Arc<WarmFile>, Freshness)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl WarmFiles {
    fn slot(&self, repo: &RepoKey, revision: &str, path: &str) -> u64 {
        self.hasher.hash_one((repo, revision, path))
    }

    /// The file remembered for the key, with what its answer rests on.
    pub(super) fn get(&self, repo: &RepoKey, revision: &str, path: &str) -> Option<(Arc<WarmFile>, Freshness)> {
        let files = self.files.read().expect("warm files poisoned");
        let (file, freshness) = files.get(&self.slot(repo, revision, path))?;
        file.is(repo, revision, path).then(|| (file.clone(), *freshness))
    }

    pub(super) fn keep(&self, file: Arc<WarmFile>, freshness: Freshness) {
        let slot = {
            let (repo, revision, path) = &file.key;
            self.slot(repo, revision, path)
        };
        let mut files = self.files.write().expect("warm files poisoned");
        if files.len() >= WARM_FILE_SLOTS {
            files.clear();
        }
        files.insert(slot, (file, freshness));
    }

    /// How many files are remembered now.
    pub fn len(&self) -> usize {
        self.files.read().expect("warm files poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use hfm_cluster::types::RepoType;

    use super::*;

    #[test]
    fn files_are_found_by_their_whole_key_and_stay_bounded() {
        let warm = WarmFiles::default();
        let repo = RepoKey::new(RepoType::Model, "org/model");
        let freshness = Freshness::for_tests(1, u64::MAX);
        let file = |path: &str| Arc::new(WarmFile::new(&repo, "main", path, "c".repeat(40), "e".repeat(64), 7).unwrap());
        warm.keep(file("config.json"), freshness);
        let (found, kept) = warm.get(&repo, "main", "config.json").unwrap();
        assert_eq!((found.size, kept), (7, freshness));
        let header = |name: &str| found.headers.get(name).map(|value| value.to_str().unwrap().to_owned());
        let quoted_etag = format!("\"{}\"", "e".repeat(64));
        assert_eq!(header("etag").as_ref(), Some(&quoted_etag));
        assert_eq!(header("x-linked-etag").as_ref(), Some(&quoted_etag));
        assert_eq!(header("x-repo-commit"), Some("c".repeat(40)));
        assert_eq!((header("x-linked-size"), header("content-length")), (Some("7".into()), Some("7".into())));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("accept-ranges").as_deref(), Some("bytes"));
        assert_eq!(found.headers.len(), 8, "and X-Cache, nothing else: {:?}", found.headers);
        assert!(warm.get(&repo, "v1", "config.json").is_none(), "another revision");
        assert!(warm.get(&RepoKey::new(RepoType::Dataset, "org/model"), "main", "config.json").is_none(), "another kind of repo");
        assert!(WarmFile::new(&repo, "main", "x", "bad\ncommit".into(), "e".into(), 1).is_none(), "not a header value");
        for index in 0..WARM_FILE_SLOTS + 10 {
            warm.keep(file(&format!("f{index}")), freshness);
        }
        assert!(warm.len() <= WARM_FILE_SLOTS);
    }
}
