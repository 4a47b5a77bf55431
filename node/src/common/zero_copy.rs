//! Zero-copy bodies: a response body that names stretches of a file instead of carrying their bytes.
//!
//! hyper writes a response's body from the `Bytes` its body yields; to send a file's bytes with
//! `sendfile(2)` they must never enter the process at all. A body made for a [`ZeroCopySink`] yields
//! *placeholders* — slices of one static, never-written buffer ([`placeholder`]) — and records, in
//! the same order, the file stretch ([`FileSpan`]) each stands for. The connection's writer (in
//! `transport`), which owns the sink, recognises a placeholder by its address when hyper hands it
//! over and sends the next recorded span from the file in its place. hyper writes bodies in the order
//! they were yielded and an HTTP/1.1 connection sends one response at a time, so the n-th placeholder
//! written is the n-th span recorded. Placeholder bytes are never sent: a writer that cannot match one
//! to a span fails the connection instead.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The largest stretch one placeholder stands for.
pub const SPAN_MAX: usize = 1 << 20;

/// Never written and never read: the zeroed pages of a static buffer are not even mapped in until
/// touched, so placeholders cost no memory.
static PLACEHOLDER: [u8; SPAN_MAX] = [0; SPAN_MAX];

/// `length` bytes of placeholder (at most [`SPAN_MAX`]).
pub fn placeholder(length: usize) -> Bytes {
    Bytes::from_static(&PLACEHOLDER[..length])
}

/// Whether `slice` lies inside the placeholder buffer (so it stands for file bytes).
pub fn is_placeholder(slice: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let address = slice.as_ptr() as usize;
    !slice.is_empty() && address >= start && address + slice.len() <= start + SPAN_MAX
}

/// `length` bytes of `file` from `offset`, to be sent where a placeholder of that length is written.
pub struct FileSpan {
    pub file: Arc<File>,
    pub offset: u64,
    pub length: usize,
}

/// The spans a connection's pending placeholders stand for, oldest first. A cheap handle: the body
/// pushes, the connection's writer takes.
#[derive(Clone, Default)]
pub struct ZeroCopySink {
    spans: Arc<Mutex<VecDeque<FileSpan>>>,
}

impl ZeroCopySink {
    /// Records `span` and returns the placeholder the body yields for it.
    pub fn push(&self, span: FileSpan) -> Bytes {
        assert!(span.length > 0 && span.length <= SPAN_MAX, "a span is 1..=SPAN_MAX bytes");
        let length = span.length;
        self.spans.lock().expect("zero-copy spans poisoned").push_back(span);
        placeholder(length)
    }

    /// The oldest span not yet taken.
    pub fn take(&self) -> Option<FileSpan> {
        self.spans.lock().expect("zero-copy spans poisoned").pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_told_apart_from_other_bytes_by_address() {
        let sink = ZeroCopySink::default();
        let file = Arc::new(tempfile::tempfile().unwrap());
        let body = sink.push(FileSpan { file, offset: 7, length: 1000 });
        assert!(is_placeholder(&body) && is_placeholder(&body[10..20]));
        // The same bytes anywhere else are body bytes.
        let copy = body.to_vec();
        assert!(!is_placeholder(&copy));
        assert!(!is_placeholder(&[]));
        let span = sink.take().unwrap();
        assert_eq!((span.offset, span.length), (7, 1000));
        assert!(sink.take().is_none());
    }
}
