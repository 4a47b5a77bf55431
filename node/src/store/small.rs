//! Small blobs kept in memory once verified: a warm request for a `config.json` is answered without
//! a trip through the blocking pool to open and read a file. Bounded in bytes; the oldest kept
//! blob goes first.
//!
//! The trade-off: a byte that rots on disk under a blob held here is not noticed when the blob is
//! served (the bytes in memory are the ones checked when they were read), only when it is read
//! from disk again — after this memory forgot it, after a restart, or by rsync (which the scrubber
//! of issue 14 is for). What goes out is never wrong.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

/// Blobs up to this size are kept (one chunk of the integrity sums at most).
pub const SMALL_BLOB_MAX: u64 = 256 << 10;
/// The most bytes all kept blobs take together.
pub const SMALL_BLOBS_BUDGET: usize = 64 << 20;

#[derive(Default)]
pub(super) struct SmallBlobs {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_etag: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl SmallBlobs {
    pub fn get(&self, etag: &str) -> Option<Bytes> {
        self.inner.lock().expect("small blobs poisoned").by_etag.get(etag).cloned()
    }

    pub fn keep(&self, etag: &str, bytes: Bytes) {
        if bytes.len() as u64 > SMALL_BLOB_MAX {
            return;
        }
        let mut kept = self.inner.lock().expect("small blobs poisoned");
        if kept.by_etag.contains_key(etag) {
            return;
        }
        kept.bytes += bytes.len();
        kept.by_etag.insert(etag.to_owned(), bytes);
        kept.order.push_back(etag.to_owned());
        while kept.bytes > SMALL_BLOBS_BUDGET {
            let Some(oldest) = kept.order.pop_front() else { break };
            if let Some(gone) = kept.by_etag.remove(&oldest) {
                kept.bytes -= gone.len();
            }
        }
    }

    pub fn forget(&self, etag: &str) {
        let mut kept = self.inner.lock().expect("small blobs poisoned");
        if let Some(gone) = kept.by_etag.remove(etag) {
            kept.bytes -= gone.len();
            kept.order.retain(|known| known != etag);
        }
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("small blobs poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_blobs_stay_within_the_budget_oldest_first() {
        let small = SmallBlobs::default();
        let blob = Bytes::from(vec![7u8; SMALL_BLOB_MAX as usize]);
        let count = SMALL_BLOBS_BUDGET / blob.len() + 3;
        for index in 0..count {
            small.keep(&format!("{index:064x}"), blob.clone());
        }
        assert!(small.bytes() <= SMALL_BLOBS_BUDGET);
        assert!(small.get(&format!("{:064x}", 0)).is_none(), "the oldest went first");
        assert!(small.get(&format!("{:064x}", count - 1)).is_some());
        small.forget(&format!("{:064x}", count - 1));
        assert!(small.get(&format!("{:064x}", count - 1)).is_none());
        small.keep("big", Bytes::from(vec![0u8; SMALL_BLOB_MAX as usize + 1]));
        assert!(small.get("big").is_none(), "only small blobs");
    }
}
