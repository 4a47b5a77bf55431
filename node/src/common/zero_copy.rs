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

/// Each placeholder starts at one of this many places in the buffer, in turn, so that the writer
/// can tell that the placeholder it is given is the one recorded for the next span (a span that
/// was never written would otherwise shift every later one onto the wrong bytes).
const TAGS: usize = 1024;
const TAG_STRIDE: usize = 1024;

/// Never written and never read: the zeroed pages of a static buffer are not even mapped in until
/// touched, so placeholders cost no memory.
static PLACEHOLDER: [u8; SPAN_MAX + TAGS * TAG_STRIDE] = [0; SPAN_MAX + TAGS * TAG_STRIDE];

/// Whether `slice` lies inside the placeholder buffer (so it stands for file bytes).
pub fn is_placeholder(slice: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let address = slice.as_ptr() as usize;
    !slice.is_empty() && address >= start && address + slice.len() <= start + PLACEHOLDER.len()
}

/// `length` bytes of `file` from `offset`, to be sent where the placeholder recorded for it is
/// written.
pub struct FileSpan {
    pub file: Arc<File>,
    pub offset: u64,
    pub length: usize,
    /// Where in the placeholder buffer what is left of its placeholder starts.
    placeholder_at: usize,
}

impl FileSpan {
    pub fn new(file: Arc<File>, offset: u64, length: usize) -> FileSpan {
        FileSpan { file, offset, length, placeholder_at: 0 }
    }

    /// Whether `slice` is exactly what is left of this span's placeholder.
    pub fn is_placeholder_of(&self, slice: &[u8]) -> bool {
        slice.as_ptr() as usize == PLACEHOLDER.as_ptr() as usize + self.placeholder_at && slice.len() == self.length
    }

    /// `sent` bytes of the span went out.
    pub fn advance(&mut self, sent: usize) {
        assert!(sent <= self.length);
        self.offset += sent as u64;
        self.length -= sent;
        self.placeholder_at += sent;
    }
}

/// The spans a connection's pending placeholders stand for, oldest first. A cheap handle: the body
/// pushes, the connection's writer takes.
#[derive(Clone, Default)]
pub struct ZeroCopySink {
    queue: Arc<Mutex<SpanQueue>>,
}

#[derive(Default)]
struct SpanQueue {
    spans: VecDeque<FileSpan>,
    pushed: usize,
}

impl ZeroCopySink {
    /// Records `span` and returns the placeholder the body yields for it.
    pub fn push(&self, mut span: FileSpan) -> Bytes {
        assert!(span.length > 0 && span.length <= SPAN_MAX, "a span is 1..=SPAN_MAX bytes");
        let mut queue = self.queue.lock().expect("zero-copy spans poisoned");
        span.placeholder_at = queue.pushed % TAGS * TAG_STRIDE;
        queue.pushed += 1;
        let placeholder = Bytes::from_static(&PLACEHOLDER[span.placeholder_at..span.placeholder_at + span.length]);
        queue.spans.push_back(span);
        placeholder
    }

    /// The oldest span not yet taken.
    pub fn take(&self) -> Option<FileSpan> {
        self.queue.lock().expect("zero-copy spans poisoned").spans.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_told_apart_from_other_bytes_and_from_each_other_by_address() {
        let sink = ZeroCopySink::default();
        let file = Arc::new(tempfile::tempfile().unwrap());
        let first = sink.push(FileSpan::new(file.clone(), 7, 1000));
        let second = sink.push(FileSpan::new(file, 0, 1000));
        assert!(is_placeholder(&first) && is_placeholder(&first[10..20]) && is_placeholder(&second));
        // The same bytes anywhere else are body bytes.
        let copy = first.to_vec();
        assert!(!is_placeholder(&copy));
        assert!(!is_placeholder(&[]));
        let mut span = sink.take().unwrap();
        assert_eq!((span.offset, span.length), (7, 1000));
        assert!(span.is_placeholder_of(&first) && !span.is_placeholder_of(&second) && !span.is_placeholder_of(&first[..999]));
        span.advance(600);
        assert_eq!((span.offset, span.length), (607, 400));
        assert!(span.is_placeholder_of(&first[600..]));
        assert!(sink.take().unwrap().is_placeholder_of(&second));
        assert!(sink.take().is_none());
    }
}
