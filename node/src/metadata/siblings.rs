//! The files of a commit as its repo info asked with `blobs=true` lists them (the `siblings`, each
//! with its blob id, size and LFS sha256), kept in memory for the commits looked at last.
//!
//! The policy or ref check that resolves a commit asks upstream for that repo info anyway, so a cold
//! download learns its file's content address from it and does not wait for the commit's tree walk:
//! one upstream round trip fewer before the first byte. Siblings are files only (no directories,
//! no tree ids), so listings, paths-info and rsync keep using the manifest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hfm_cluster::catalog::Manifest;
use hfm_cluster::types::RepoKey;
use serde_json::Value;

use crate::hub::json::parse_sibling_entry;

/// How many files, over all the commits it holds, the index keeps (about 150 bytes each, so some
/// 10 MB at most); a commit that lists more is never indexed (its manifest answers instead).
pub(super) const SIBLING_INDEX_FILES: usize = 65_536;

/// The repo-info variant whose siblings carry each file's blob id, size and LFS sha256 (the edge's
/// normal form of `?blobs=true`).
pub const FILES_VARIANT: &str = "blobs=true";

/// The indexed commits, oldest first, and what each weighs.
#[derive(Default)]
pub(super) struct SiblingFiles {
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    commits: VecDeque<Indexed>,
    files: usize,
}

struct Indexed {
    repo: RepoKey,
    commit: String,
    /// `None`: the commit's repo info lists no usable siblings (remembered so it is not parsed again).
    files: Option<Arc<Manifest>>,
}

impl Indexed {
    /// A commit without usable siblings still takes a place.
    fn weight(&self) -> usize {
        self.files.as_ref().map_or(1, |files| files.entries().len().max(1))
    }
}

impl SiblingFiles {
    /// What the index knows of `commit`: `Some(None)` when its siblings were found unusable.
    pub(super) fn get(&self, repo: &RepoKey, commit: &str) -> Option<Option<Arc<Manifest>>> {
        let recent = self.recent.lock().expect("sibling index poisoned");
        recent.commits.iter().rev().find(|indexed| indexed.commit == commit && indexed.repo == *repo).map(|indexed| indexed.files.clone())
    }

    /// Keeps what `commit`'s repo info lists, forgetting the oldest commits beyond the bound.
    pub(super) fn insert(&self, repo: &RepoKey, commit: &str, files: Option<Arc<Manifest>>) {
        let indexed = Indexed { repo: repo.clone(), commit: commit.to_owned(), files };
        let mut recent = self.recent.lock().expect("sibling index poisoned");
        if let Some(position) = recent.commits.iter().position(|known| known.commit == commit && known.repo == *repo) {
            let replaced = recent.commits.remove(position).expect("position found");
            recent.files -= replaced.weight();
        }
        recent.files += indexed.weight();
        recent.commits.push_back(indexed);
        while recent.files > SIBLING_INDEX_FILES {
            let Some(oldest) = recent.commits.pop_front() else { break };
            recent.files -= oldest.weight();
        }
    }

    #[cfg(test)]
    fn files_held(&self) -> usize {
        self.recent.lock().unwrap().files
    }
}

/// The files a repo-info body lists with their blob ids. `None` when they cannot stand in for the
/// manifest's files: no siblings (or an empty list: the Hub leaves them out of some answers), a
/// sibling without a blob id or with a bad path or id, or more than `max_files` (or than the
/// index holds) — the manifest then answers, and refuses a repo too large to cache.
pub(super) fn files_of(body: &[u8], max_files: usize) -> Option<Manifest> {
    let info: Value = serde_json::from_slice(body).ok()?;
    let siblings = info.get("siblings")?.as_array()?;
    if siblings.is_empty() || siblings.len() > max_files.min(SIBLING_INDEX_FILES) {
        return None;
    }
    let entries = siblings.iter().map(parse_sibling_entry).collect::<Result<Vec<_>, _>>().ok()?;
    Some(Manifest::new(entries))
}

/// Whether a repo info lists its files with their blob ids (it was asked with `blobs=true`), few
/// enough for the index to hold them.
pub(super) fn lists_indexable_files(info: &Value) -> bool {
    info.get("siblings").and_then(Value::as_array).is_some_and(|siblings| {
        siblings.len() <= SIBLING_INDEX_FILES && siblings.first().is_some_and(|first| first.get("blobId").is_some())
    })
}

/// Removes what `blobs=true` adds to each sibling of a repo info, leaving what upstream answers
/// without it (in place: a big repo's answer is not held twice).
pub(super) fn strip_blob_fields(info: &mut Value) {
    if let Some(siblings) = info.get_mut("siblings").and_then(Value::as_array_mut) {
        for sibling in siblings {
            if let Some(sibling) = sibling.as_object_mut() {
                sibling.retain(|key, _| key == "rfilename");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn repo() -> RepoKey {
        RepoKey::new(hfm_cluster::types::RepoType::Model, "org/model")
    }

    fn info(siblings: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": "org/model", "sha": "a".repeat(40), "siblings": siblings})).unwrap()
    }

    #[test]
    fn siblings_with_blobs_become_files() {
        let body = info(json!([
            {"rfilename": "config.json", "blobId": "1".repeat(40), "size": 42},
            {"rfilename": "model.safetensors", "blobId": "2".repeat(40), "size": 9, "lfs": {"sha256": "3".repeat(64), "size": 9, "pointerSize": 130}},
        ]));
        let files = files_of(&body, 1000).unwrap();
        assert_eq!(files.find("config.json").unwrap().etag(), "1".repeat(40));
        assert_eq!(files.find("model.safetensors").unwrap().etag(), "3".repeat(64));
        assert!(files.find("sub").is_none());
        assert!(files_of(&body, 1).is_none(), "more files than a manifest may hold: the manifest decides");
    }

    #[test]
    fn unusable_siblings_leave_it_to_the_manifest() {
        for body in [
            info(json!([{"rfilename": "config.json"}])),
            info(json!([])),
            info(json!("siblings")),
            info(json!([{"rfilename": "../config.json", "blobId": "1".repeat(40), "size": 1}])),
            b"{\"id\": \"org/model\"}".to_vec(),
            b"not json".to_vec(),
        ] {
            assert!(files_of(&body, 1000).is_none(), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn only_a_file_list_the_index_can_hold_is_kept() {
        let with = |count: usize| json!({"siblings": vec![json!({"rfilename": "a", "blobId": "1".repeat(40), "size": 1}); count]});
        assert!(lists_indexable_files(&with(3)));
        assert!(lists_indexable_files(&with(SIBLING_INDEX_FILES)));
        assert!(!lists_indexable_files(&with(SIBLING_INDEX_FILES + 1)), "too many for the index");
        assert!(!lists_indexable_files(&with(0)));
        assert!(!lists_indexable_files(&json!({"siblings": [{"rfilename": "a"}]})), "asked without blobs=true");
        assert!(!lists_indexable_files(&json!({"id": "org/model"})));
    }

    #[test]
    fn the_plain_answer_keeps_file_names_only() {
        let mut info =
            json!({"sha": "a", "siblings": [{"rfilename": "x", "blobId": "1", "size": 3, "lfs": {"sha256": "2"}}], "usedStorage": 3});
        strip_blob_fields(&mut info);
        assert_eq!(info, json!({"sha": "a", "siblings": [{"rfilename": "x"}], "usedStorage": 3}));
    }

    #[test]
    fn the_index_is_bounded_by_files_and_forgets_the_oldest() {
        let index = SiblingFiles::default();
        let files = |count: usize| {
            let entries = (0..count)
                .map(|n| hfm_cluster::catalog::ManifestEntry {
                    path: format!("f{n}"),
                    kind: hfm_cluster::catalog::EntryKind::File,
                    size: 1,
                    oid: "1".repeat(40),
                    lfs: None,
                })
                .collect();
            Some(Arc::new(Manifest::new(entries)))
        };
        let commit = |n: usize| format!("{n:040}");
        index.insert(&repo(), &commit(0), None);
        for n in 1..=4 {
            index.insert(&repo(), &commit(n), files(SIBLING_INDEX_FILES / 3));
        }
        assert!(index.files_held() <= SIBLING_INDEX_FILES);
        assert!(index.get(&repo(), &commit(0)).is_none() && index.get(&repo(), &commit(1)).is_none(), "the oldest are forgotten");
        assert!(index.get(&repo(), &commit(4)).unwrap().is_some());
        index.insert(&repo(), &commit(4), None);
        assert_eq!(index.get(&repo(), &commit(4)), Some(None), "a commit is indexed once");
    }
}
