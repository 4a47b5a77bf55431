//! The records the catalog stores. They are the catalog's own types, encoded with postcard; the node
//! turns them into the Hub's JSON, never the other way round.

use serde::{Deserialize, Serialize};

/// A branch or tag resolved to a commit, with the time (unix milliseconds) it was checked upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    pub commit: String,
    pub checked_at_ms: u64,
}

/// Whether a repository may be stored and served to anyone (public, not gated), and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub cacheable: bool,
    /// Why, for logs and status: `public`, `private or missing`, `gated`, ….
    pub reason: String,
    pub checked_at_ms: u64,
}

/// A mutable document cached as the bytes the node will serve, with the time it was fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub body: Vec<u8>,
    pub checked_at_ms: u64,
}

/// Which nodes hold a verified copy of a blob, and its size. Kept so that nodes the placement names
/// can catch up from a holder, and so that an evicted copy stops being asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub size: u64,
    /// Node names, sorted, without duplicates.
    pub holders: Vec<String>,
}

impl ReplicaRecord {
    /// Adds a holder; false when it was already listed.
    pub fn add(&mut self, node: &str) -> bool {
        match self.holders.binary_search_by(|holder| holder.as_str().cmp(node)) {
            Ok(_) => false,
            Err(index) => {
                self.holders.insert(index, node.to_owned());
                true
            }
        }
    }

    /// Removes a holder; false when it was not listed.
    pub fn remove(&mut self, node: &str) -> bool {
        match self.holders.binary_search_by(|holder| holder.as_str().cmp(node)) {
            Ok(index) => {
                self.holders.remove(index);
                true
            }
            Err(_) => false,
        }
    }

    pub fn holds(&self, node: &str) -> bool {
        self.holders.binary_search_by(|holder| holder.as_str().cmp(node)).is_ok()
    }
}

/// A repository kept whole on every node at one revision: its files are never evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The revision as asked (a branch follows upstream; a commit stays).
    pub revision: String,
    /// The commit the pin currently stands on.
    pub commit: String,
    pub pinned_at_ms: u64,
    /// A newer commit of a followed branch, being filled; the pin moves to it once every live node
    /// holds all of its files, so a reader never sees a half-filled commit.
    pub next_commit: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Directory,
}

/// The LFS pointer of a file: the sha256 and size of the real bytes, and the pointer file's size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LfsPointer {
    pub sha256: String,
    pub size: u64,
    pub pointer_size: u64,
}

/// One file or directory of a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub kind: EntryKind,
    /// The real size of the bytes (for LFS files, the object's size, not the pointer's).
    pub size: u64,
    /// The git object id: the blob sha1 of a regular file or of an LFS pointer, or a tree sha1.
    pub oid: String,
    pub lfs: Option<LfsPointer>,
}

impl ManifestEntry {
    /// Returns the content address of the file's bytes: the LFS sha256, else the git blob sha1.
    pub fn etag(&self) -> &str {
        match &self.lfs {
            Some(pointer) => &pointer.sha256,
            None => &self.oid,
        }
    }
}

/// Every file and directory of one commit, sorted by path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
    /// A hash table from path to entry, built on the first lookup and never stored: a binary search
    /// over a manifest that is not in the CPU's caches touches a dozen lines (an entry and its path
    /// string per step); the table touches one slot, then the entry and its path.
    #[serde(skip)]
    by_path: std::sync::OnceLock<PathIndex>,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Manifest) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Manifest {}

/// Open addressing over the entries' positions (`position + 1`; 0 is an empty slot), at most half full.
#[derive(Clone, Debug, Default)]
struct PathIndex {
    slots: Box<[u32]>,
}

impl PathIndex {
    /// At most half full, a power of two (probing wraps with a mask).
    fn slot_count(entries: usize) -> usize {
        (entries * 2).next_power_of_two().max(2)
    }

    fn build(entries: &[ManifestEntry]) -> PathIndex {
        if entries.len() >= u32::MAX as usize / 2 {
            return PathIndex::default(); // never in practice (manifests are capped far below); binary search then
        }
        let mut slots = vec![0u32; PathIndex::slot_count(entries.len())].into_boxed_slice();
        let mask = slots.len() - 1;
        for (position, entry) in entries.iter().enumerate() {
            let mut slot = path_hash(&entry.path) as usize & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = position as u32 + 1;
        }
        PathIndex { slots }
    }
}

/// FNV-1a: paths are short, and the table only needs them spread, not protected against collisions
/// chosen by an attacker (the paths of a manifest come from the Hub, and a collision costs a probe).
fn path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

impl Manifest {
    /// Builds a manifest, sorting the entries by path and dropping duplicate paths.
    pub fn new(mut entries: Vec<ManifestEntry>) -> Manifest {
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        entries.dedup_by(|right, left| left.path == right.path);
        Manifest { entries, by_path: std::sync::OnceLock::new() }
    }

    /// The memory the path index takes once built (for the catalog's cache budget).
    pub fn index_bytes(&self) -> usize {
        PathIndex::slot_count(self.entries.len()) * std::mem::size_of::<u32>()
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// Returns the entry at exactly this path.
    pub fn find(&self, path: &str) -> Option<&ManifestEntry> {
        self.position_of(path).map(|position| &self.entries[position])
    }

    /// Returns where the entry at exactly this path is in [`Self::entries`].
    pub fn position_of(&self, path: &str) -> Option<usize> {
        let index = self.by_path.get_or_init(|| PathIndex::build(&self.entries));
        if index.slots.is_empty() {
            return self.entries.binary_search_by(|entry| entry.path.as_str().cmp(path)).ok();
        }
        let mask = index.slots.len() - 1;
        let mut slot = path_hash(path) as usize & mask;
        loop {
            let position = index.slots[slot].checked_sub(1)? as usize;
            if self.entries[position].path == path {
                return Some(position);
            }
            slot = (slot + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> ManifestEntry {
        ManifestEntry { path: path.into(), kind: EntryKind::File, size: 1, oid: "0".repeat(40), lfs: None }
    }

    #[test]
    fn finds_every_path_and_no_other_through_the_index() {
        let entries: Vec<ManifestEntry> = (0..1000).map(|number| file(&format!("dir-{}/file-{number}.bin", number % 7))).collect();
        let manifest = Manifest::new(entries.clone());
        for entry in &entries {
            assert_eq!(manifest.find(&entry.path), Some(entry));
        }
        for missing in ["", "dir-0", "dir-0/file-1000.bin", "dir-1/file-0.bin", "\u{0}"] {
            assert!(manifest.find(missing).is_none(), "{missing:?}");
        }
        assert!(Manifest::default().find("x").is_none());
        // The index is not part of the record: encoding, decoding and comparing ignore it.
        let decoded: Manifest = postcard::from_bytes(&postcard::to_allocvec(&manifest).unwrap()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.find("dir-3/file-10.bin").unwrap().path, "dir-3/file-10.bin");
    }

    #[test]
    fn replica_holders_stay_sorted_and_unique() {
        let mut record = ReplicaRecord { size: 3, holders: Vec::new() };
        assert!(record.add("waw1"));
        assert!(record.add("ams1"));
        assert!(!record.add("waw1"));
        assert_eq!(record.holders, ["ams1", "waw1"]);
        assert!(record.holds("ams1") && !record.holds("fra1"));
        assert!(record.remove("ams1"));
        assert!(!record.remove("ams1"));
        assert_eq!(record.holders, ["waw1"]);
    }

    #[test]
    fn etag_prefers_the_lfs_sha256() {
        let mut entry = file("model.safetensors");
        assert_eq!(entry.etag(), "0".repeat(40));
        entry.lfs = Some(LfsPointer { sha256: "a".repeat(64), size: 5, pointer_size: 134 });
        assert_eq!(entry.etag(), "a".repeat(64));
    }
}

/// What one upstream answer about a revision says, recorded together: its commit's repo info in one
/// or more query variants, the ref that named the commit, and the repository's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionFindings {
    pub commit: String,
    /// `(variant, body)`: the repo-info JSON of `commit` per query variant (`""` is the plain one).
    pub infos: Vec<(String, Vec<u8>)>,
    /// `(revision, record)`: the branch or tag that resolved to `commit`.
    pub reference: Option<(String, RefRecord)>,
    pub policy: Option<PolicyRecord>,
}
