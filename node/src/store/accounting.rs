//! What the store holds, counted in memory that does not grow with the store.
//!
//! Every blob on disk is *counted* (its bytes are in `stored_bytes`, it is one of `num_blobs`), but
//! only the `capacity` most recently used ones are *indexed*: an exact LRU in memory (a hash map and a
//! tick-ordered tree, about 175 bytes a blob). A blob that falls out of the index is *cold*: its last
//! use is written into its file's access time, the one place that costs no memory, and it is found
//! again with one `stat` when asked for. Eviction takes cold blobs first, the oldest of a random sample
//! of files (see `BlobStore::cold_candidates`); everything in the index was used more recently than any
//! cold blob, so this is an LRU that is exact among the recently used and sampled beyond.
//!
//! The start-up listing counts the blobs shard by shard (`blobs/xx/`, one per first etag byte):
//! a blob is counted once, either because it is in the index (stored, or found on disk and used,
//! while the listing ran) or because its shard was listed. Until the whole store is listed nothing
//! leaves the index, so that rule holds throughout.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::verify::is_valid_etag;

/// How many recently used blobs the index holds by default: about 11 MiB of memory, and enough that
/// the blobs a node serves all day are looked up without touching the disk.
pub(super) const INDEX_ENTRIES: usize = 65_536;

/// An etag in binary: 20 bytes (a git blob sha1) or 32 (an LFS sha256) instead of a 64-byte string on
/// the heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct BlobKey {
    bytes: [u8; 32],
    long: bool,
}

impl BlobKey {
    /// `None` for anything but 40 or 64 lowercase hex digits.
    pub(super) fn parse(etag: &str) -> Option<BlobKey> {
        if !is_valid_etag(etag) {
            return None;
        }
        let mut bytes = [0u8; 32];
        let long = etag.len() == 64;
        hex::decode_to_slice(etag, &mut bytes[..etag.len() / 2]).ok()?;
        Some(BlobKey { bytes, long })
    }

    pub(super) fn etag(&self) -> String {
        hex::encode(&self.bytes[..if self.long { 32 } else { 20 }])
    }

    /// The shard directory the blob's files live in (`blobs/{etag[..2]}`), as a number.
    pub(super) fn shard(&self) -> u8 {
        self.bytes[0]
    }
}

impl std::fmt::Debug for BlobKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.etag())
    }
}

/// Seconds since the Unix epoch, the resolution of a blob's recorded last use.
pub(super) fn unix_seconds(time: std::time::SystemTime) -> u32 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs().min(u64::from(u32::MAX)) as u32)
}

#[derive(Clone, Copy)]
struct IndexEntry {
    size: u64,
    tick: u64,
    /// When it was last used, written to the file's access time when it leaves the index.
    used_at: u32,
}

/// A blob leaving the index, whose last use goes into its file's access time.
pub(super) struct Demoted {
    pub(super) key: BlobKey,
    pub(super) used_at: u32,
}

/// Ticks from here up are uses since start; the blobs the start-up listing indexes get the ticks
/// below, in the order of their recorded last use, so they are older than anything used since.
const FIRST_RUNTIME_TICK: u64 = 1 << 48;

pub(super) struct Accounting {
    index: HashMap<BlobKey, IndexEntry>,
    by_tick: BTreeMap<u64, BlobKey>,
    next_tick: u64,
    capacity: usize,
    /// Shards the start-up listing has counted (bit per shard); all set once listed.
    listed_shards: [u64; 4],
    pub(super) stored_bytes: u64,
    pub(super) num_blobs: usize,
    /// Bytes promised to fills in progress.
    pub(super) reserved_bytes: u64,
}

impl Accounting {
    pub(super) fn new(capacity: usize) -> Accounting {
        Accounting {
            index: HashMap::new(),
            by_tick: BTreeMap::new(),
            next_tick: FIRST_RUNTIME_TICK,
            capacity: capacity.max(1),
            listed_shards: [0; 4],
            stored_bytes: 0,
            num_blobs: 0,
            reserved_bytes: 0,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn indexed(&self) -> usize {
        self.index.len()
    }

    fn shard_listed(&self, shard: u8) -> bool {
        self.listed_shards[usize::from(shard / 64)] & (1 << (shard % 64)) != 0
    }

    fn all_listed(&self) -> bool {
        self.listed_shards.iter().all(|bits| *bits == u64::MAX)
    }

    /// Whether the blob's bytes are in the totals already.
    fn counted(&self, key: &BlobKey) -> bool {
        self.index.contains_key(key) || self.shard_listed(key.shard())
    }

    /// Whether there are counted blobs outside the index, which eviction takes first.
    pub(super) fn has_cold(&self) -> bool {
        self.all_listed() && self.num_blobs > self.index.len()
    }

    pub(super) fn is_indexed(&self, key: &BlobKey) -> bool {
        self.index.contains_key(key)
    }

    /// The size of an indexed blob, without marking it used.
    pub(super) fn size_of(&self, key: &BlobKey) -> Option<u64> {
        self.index.get(key).map(|entry| entry.size)
    }

    /// The size of an indexed blob, marking it used. A blob among the most recently used eighth of the
    /// index keeps its place: moving it would not change what is evicted next, and moving costs two
    /// tree updates per request on the hottest path.
    pub(super) fn use_indexed(&mut self, key: &BlobKey, now: u32) -> Option<u64> {
        let recent_enough = (self.index.len() / 8) as u64;
        let entry = self.index.get_mut(key)?;
        entry.used_at = now;
        if self.next_tick - entry.tick > recent_enough {
            self.by_tick.remove(&entry.tick);
            entry.tick = self.next_tick;
            self.by_tick.insert(self.next_tick, *key);
            self.next_tick += 1;
        }
        Some(entry.size)
    }

    /// Indexes a blob just stored (it was not on disk before), and counts it.
    pub(super) fn index_stored(&mut self, key: BlobKey, size: u64, now: u32) -> Vec<Demoted> {
        self.remove_indexed(&key);
        self.stored_bytes += size;
        self.num_blobs += 1;
        self.index(key, size, now)
    }

    /// Indexes a blob found on disk and used; counts it unless it was counted.
    pub(super) fn index_found(&mut self, key: BlobKey, size: u64, now: u32) -> Vec<Demoted> {
        if !self.counted(&key) {
            self.stored_bytes += size;
            self.num_blobs += 1;
        } else if let Some(old) = self.index.remove(&key) {
            self.by_tick.remove(&old.tick);
            self.stored_bytes = self.stored_bytes.saturating_sub(old.size) + size;
        }
        self.index(key, size, now)
    }

    fn index(&mut self, key: BlobKey, size: u64, now: u32) -> Vec<Demoted> {
        let tick = self.next_tick;
        self.next_tick += 1;
        self.index.insert(key, IndexEntry { size, tick, used_at: now });
        self.by_tick.insert(tick, key);
        self.demote_over_capacity()
    }

    /// Takes an indexed blob out (its files are about to go). Its size, if it was indexed.
    pub(super) fn remove_indexed(&mut self, key: &BlobKey) -> Option<u64> {
        let entry = self.index.remove(key)?;
        self.by_tick.remove(&entry.tick);
        // Saturating: a miscount must never take the node down (it is repaired at the next start).
        self.stored_bytes = self.stored_bytes.saturating_sub(entry.size);
        self.num_blobs = self.num_blobs.saturating_sub(1);
        Some(entry.size)
    }

    /// A blob outside the index whose file this process just deleted: uncounts it if it was counted
    /// (a shard not listed yet does not have it in the totals, and will not find it).
    pub(super) fn removed_cold(&mut self, key: &BlobKey, size: u64) {
        if self.shard_listed(key.shard()) && !self.index.contains_key(key) {
            self.stored_bytes = self.stored_bytes.saturating_sub(size);
            self.num_blobs = self.num_blobs.saturating_sub(1);
        }
    }

    /// The least recently used indexed blob that is not protected.
    pub(super) fn least_recently_used(&self, protected: &HashSet<String>) -> Option<BlobKey> {
        self.by_tick.values().find(|key| !protected.contains(&key.etag())).copied()
    }

    /// Counts what the listing found in one shard: (last use, blob, size) of every blob file read.
    /// Leaves out what is indexed (counted when it was stored or found) and what was removed since the
    /// shard was read (`removed(key)`). Returns what it counted.
    pub(super) fn count_listed_shard(
        &mut self,
        shard: u8,
        found: Vec<(u32, BlobKey, u64)>,
        removed: impl Fn(&BlobKey) -> bool,
    ) -> Vec<(u32, BlobKey, u64)> {
        let counted: Vec<_> = found.into_iter().filter(|(_, key, _)| !self.index.contains_key(key) && !removed(key)).collect();
        for (_, _, size) in &counted {
            self.stored_bytes += size;
            self.num_blobs += 1;
        }
        self.listed_shards[usize::from(shard / 64)] |= 1 << (shard % 64);
        counted
    }

    /// Ends the listing: marks every shard listed (an empty or unreadable one holds nothing counted),
    /// indexes the most recently used of what it found (`recent`, oldest first) below every use since
    /// start, and returns what no longer fits.
    pub(super) fn listing_done(&mut self, recent: Vec<(u32, BlobKey, u64)>) -> Vec<Demoted> {
        self.listed_shards = [u64::MAX; 4];
        for (tick, (used_at, key, size)) in recent.into_iter().enumerate() {
            let tick = tick as u64;
            if self.index.contains_key(&key) || self.by_tick.contains_key(&tick) {
                continue;
            }
            self.index.insert(key, IndexEntry { size, tick, used_at });
            self.by_tick.insert(tick, key);
        }
        self.demote_over_capacity()
    }

    /// Once everything is listed, moves the least recently used out of the index until it fits.
    fn demote_over_capacity(&mut self) -> Vec<Demoted> {
        let mut demoted = Vec::new();
        if !self.all_listed() {
            return demoted;
        }
        while self.index.len() > self.capacity {
            let Some((_, key)) = self.by_tick.pop_first() else { break };
            if let Some(entry) = self.index.remove(&key) {
                demoted.push(Demoted { key, used_at: entry.used_at });
            }
        }
        demoted
    }

    /// Every indexed blob with its last use (to write down at shutdown).
    pub(super) fn indexed_uses(&self) -> Vec<Demoted> {
        self.index.iter().map(|(key, entry)| Demoted { key: *key, used_at: entry.used_at }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8, rest: u8) -> BlobKey {
        let mut etag = hex::encode([byte]);
        etag.push_str(&hex::encode([rest; 31]));
        BlobKey::parse(&etag).unwrap()
    }

    #[test]
    fn counts_each_blob_once_however_it_was_met_and_keeps_the_index_bounded() {
        let mut accounting = Accounting::new(2);
        // Used while the listing runs: indexed and counted; the index may exceed its capacity.
        assert!(accounting.index_stored(key(1, 1), 10, 100).is_empty());
        assert!(accounting.index_stored(key(1, 2), 20, 101).is_empty());
        assert!(accounting.index_found(key(2, 3), 30, 102).is_empty());
        // The listing meets those again, plus two cold ones and one removed meanwhile.
        let counted =
            accounting.count_listed_shard(1, vec![(5, key(1, 1), 10), (6, key(1, 4), 40), (7, key(1, 5), 50)], |found| *found == key(1, 5));
        assert_eq!(counted.len(), 1);
        assert!(!accounting.has_cold(), "nothing is cold before the whole store is listed");
        let demoted = accounting.listing_done(counted);
        assert_eq!((accounting.num_blobs, accounting.stored_bytes), (4, 100));
        // Over capacity: the listed blob (older than any use since start) and the oldest use leave.
        let demoted: Vec<_> = demoted.iter().map(|demoted| (demoted.key, demoted.used_at)).collect();
        assert_eq!(demoted, [(key(1, 4), 6), (key(1, 1), 100)]);
        assert!(accounting.has_cold());
        assert_eq!(accounting.indexed(), 2);
        // A cold blob used again comes back in without being counted twice; another one leaves.
        let demoted = accounting.index_found(key(1, 4), 40, 200);
        assert_eq!(demoted.iter().map(|demoted| demoted.key).collect::<Vec<_>>(), [key(1, 2)]);
        assert_eq!((accounting.num_blobs, accounting.stored_bytes), (4, 100));
        // Removing a cold blob uncounts it; removing an indexed one too.
        accounting.removed_cold(&key(1, 1), 10);
        assert_eq!(accounting.remove_indexed(&key(2, 3)), Some(30));
        assert_eq!((accounting.num_blobs, accounting.stored_bytes), (2, 60));
    }

    #[test]
    fn a_removal_in_a_shard_not_listed_yet_is_not_uncounted() {
        let mut accounting = Accounting::new(8);
        accounting.removed_cold(&key(9, 9), 10);
        assert_eq!((accounting.num_blobs, accounting.stored_bytes), (0, 0));
        accounting.count_listed_shard(9, vec![(1, key(9, 8), 5)], |_| false);
        accounting.removed_cold(&key(9, 8), 5);
        assert_eq!((accounting.num_blobs, accounting.stored_bytes), (0, 0));
    }

    #[test]
    fn the_most_recent_uses_keep_their_place() {
        let mut accounting = Accounting::new(64);
        accounting.listing_done(Vec::new());
        for rest in 0..16 {
            accounting.index_stored(key(3, rest), 1, 1);
        }
        // Used again while among the newest eighth: no move; the oldest is still the first one.
        accounting.use_indexed(&key(3, 15), 2);
        assert_eq!(accounting.least_recently_used(&HashSet::new()), Some(key(3, 0)));
        // The oldest used again moves to the front.
        accounting.use_indexed(&key(3, 0), 3);
        assert_eq!(accounting.least_recently_used(&HashSet::new()), Some(key(3, 1)));
        let protected: HashSet<String> = [key(3, 1).etag()].into_iter().collect();
        assert_eq!(accounting.least_recently_used(&protected), Some(key(3, 2)));
    }
}
