//! Integrity of stored blobs: a fast checksum (xxh3-64) of every 1 MiB chunk, kept beside the blob
//! in `{etag}.sums`, checked before each chunk is sent. A blob's etag proves its bytes when it is
//! filled; the chunk sums catch what happens to them on disk afterwards (bit rot, a bad sector, a
//! stray write) without rehashing the whole file for every request.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::common::zero_copy::{FileSpan, ZeroCopySink};

/// Bytes covered by one checksum; also the unit stored blobs are read and sent in.
pub const CHUNK: u64 = 1 << 20;

/// Where a blob's chunk sums live.
pub fn sums_path(blob_path: &Path) -> PathBuf {
    let mut path = blob_path.as_os_str().to_owned();
    path.push(".sums");
    PathBuf::from(path)
}

/// Computes chunk sums incrementally as a blob's bytes go by, in order.
#[derive(Default)]
pub struct ChunkSummer {
    current: Xxh3,
    in_chunk: u64,
    sums: Vec<u64>,
}

impl ChunkSummer {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((CHUNK - self.in_chunk) as usize).min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == CHUNK {
                self.sums.push(self.current.digest());
                self.current = Xxh3::new();
                self.in_chunk = 0;
            }
        }
    }

    pub fn finish(mut self) -> Vec<u64> {
        if self.in_chunk > 0 {
            self.sums.push(self.current.digest());
        }
        self.sums
    }
}

pub fn encode_sums(sums: &[u64]) -> Vec<u8> {
    sums.iter().flat_map(|sum| sum.to_le_bytes()).collect()
}

/// Reads a sums file; `None` if it is missing or does not fit a blob of `size` bytes.
pub fn read_sums(path: &Path, size: u64) -> io::Result<Option<Vec<u64>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let expected = size.div_ceil(CHUNK) as usize;
    if bytes.len() != expected * 8 {
        return Ok(None);
    }
    Ok(Some(bytes.chunks_exact(8).map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes"))).collect()))
}

/// A stored blob opened for serving, with the sums its chunks must match.
pub struct VerifiedBlob {
    pub file: Arc<std::fs::File>,
    pub size: u64,
    pub sums: Arc<Vec<u64>>,
    /// What the open file was when it was opened.
    pub identity: FileIdentity,
    /// Every chunk of this very file was checked against its sums since it last changed, and the
    /// scrubber checks it again on its schedule: it may be sent without reading it first (see
    /// `ReadChecks::OnceWhileScrubbed`).
    pub checked: bool,
}

impl VerifiedBlob {
    /// The chunk `position` falls in: its index, first byte and length.
    fn chunk_at(&self, position: u64) -> (u64, u64, usize) {
        let index = position / CHUNK;
        let chunk_start = index * CHUNK;
        (index, chunk_start, CHUNK.min(self.size - chunk_start) as usize)
    }

    /// Reads chunk `index` on the blocking pool with `read` (which returns the chunk's sum and what
    /// the caller keeps of it) and checks the sum: a mismatch runs `on_corrupt` and is the error
    /// that ends the caller's stream.
    async fn checked_chunk<T: Send + 'static>(
        &self,
        index: u64,
        read: impl FnOnce(&std::fs::File, u64, usize) -> io::Result<(u64, T)> + Send + 'static,
        on_corrupt: &(dyn Fn() + Send + Sync),
    ) -> io::Result<T> {
        let (_, chunk_start, chunk_length) = self.chunk_at(index * CHUNK);
        let (file, expected) = (self.file.clone(), self.sums[index as usize]);
        let (sum, kept) = tokio::task::spawn_blocking(move || read(&file, chunk_start, chunk_length))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)))?;
        if sum != expected {
            on_corrupt();
            return Err(io::Error::other(format!("stored blob chunk {index} is corrupt")));
        }
        Ok(kept)
    }
}

/// What says a file is the one that was checked: which file it is and when it last changed. Any
/// write to it, a truncation or a replacement changes one of these; the change time cannot be set
/// back by anyone but the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// A file changed less than this long ago is not recorded as checked: file times tick coarsely (a
/// few milliseconds), and a write within the same tick as the change before it would not show.
const SETTLED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl FileIdentity {
    pub fn of(file: &std::fs::File) -> io::Result<FileIdentity> {
        let stat = rustix::fs::fstat(file)?;
        Ok(FileIdentity {
            device: stat.st_dev as u64,
            inode: stat.st_ino as u64,
            size: stat.st_size as u64,
            modified: (stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            changed: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file had not changed for a while before `checked_from`, when its check began:
    /// only then does an unchanged identity prove unchanged bytes. Compared to the nanosecond (whole
    /// seconds would make "a while" anything from nothing to a second).
    pub fn settled_before(&self, checked_from: std::time::SystemTime) -> bool {
        let (seconds, nanoseconds) = self.changed;
        let changed = match (u64::try_from(seconds), u32::try_from(nanoseconds)) {
            (Ok(seconds), Ok(nanoseconds)) => std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanoseconds),
            // A change time before 1970: nothing to compare with, so never settled.
            _ => return false,
        };
        changed + SETTLED_AFTER <= checked_from
    }
}

/// Bytes read at a time to check a chunk: small enough to stay in the CPU's cache while hashed.
const CHECK_PIECE: usize = 64 << 10;

thread_local! {
    static CHECK_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; CHECK_PIECE]);
}

/// The sum of `length` bytes at `offset`, read a piece at a time into one buffer per thread (so a
/// check costs no allocation, and memory does not grow with the number of readers; blocking).
pub(super) fn sum_at(file: &std::fs::File, offset: u64, length: usize) -> io::Result<u64> {
    CHECK_BUFFER.with_borrow_mut(|buffer| {
        let mut summer = Xxh3::new();
        let mut done = 0;
        while done < length {
            let piece = (length - done).min(CHECK_PIECE);
            let read = rustix::io::pread(file, &mut buffer[..piece], offset + done as u64)?;
            if read == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob file is shorter than its size"));
            }
            summer.update(&buffer[..read]);
            done += read;
        }
        Ok(summer.digest())
    })
}

/// Reads `length` bytes at `offset` into a new buffer, without zeroing the buffer first (a chunk is
/// a megabyte, and every byte of it is overwritten by the read).
fn read_at(file: &std::fs::File, offset: u64, length: usize) -> io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(length);
    while buffer.len() < length {
        let position = offset + buffer.len() as u64;
        if rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), position)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob file is shorter than its size"));
        }
    }
    Ok(buffer)
}

/// Reads a whole blob and checks every chunk against its sum; a mismatch is `InvalidData`.
pub fn read_verified(blob: &VerifiedBlob) -> io::Result<Vec<u8>> {
    let bytes = read_at(&blob.file, 0, blob.size as usize)?;
    for (index, chunk) in bytes.chunks(CHUNK as usize).enumerate() {
        if blob.sums.get(index).is_none_or(|expected| xxh3_64(chunk) != *expected) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("stored blob chunk {index} is corrupt")));
        }
    }
    Ok(bytes)
}

/// Streams `start..end` of a stored blob, reading whole chunks and checking each against its sum
/// before any of its bytes go out (connections that cannot send from a file: TLS, HTTP/2, HTTP/3,
/// peers). On a mismatch `on_corrupt` runs once and the stream ends with an error, so the client's
/// connection is aborted rather than handed bad bytes.
pub fn verified_range(
    blob: VerifiedBlob,
    start: u64,
    end: u64,
    on_corrupt: impl Fn() + Send + Sync + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let on_corrupt = Arc::new(on_corrupt);
    futures_util::stream::unfold((blob, start), move |(blob, position)| {
        let on_corrupt = on_corrupt.clone();
        async move {
            if position >= end {
                return None;
            }
            let (index, chunk_start, chunk_length) = blob.chunk_at(position);
            let read = |file: &std::fs::File, offset, length| read_at(file, offset, length).map(|chunk| (xxh3_64(&chunk), chunk));
            let chunk = match blob.checked_chunk(index, read, &*on_corrupt).await {
                Ok(chunk) => chunk,
                Err(error) => return Some((Err(error), (blob, end))),
            };
            let from = (position - chunk_start) as usize;
            let to = (end.min(chunk_start + chunk_length as u64) - chunk_start) as usize;
            let next = chunk_start + to as u64;
            Some((Ok(Bytes::from(chunk).slice(from..to)), (blob, next)))
        }
    })
}

/// How far ahead of sending a checked blob the kernel is asked to read its file, so that `sendfile`
/// finds the pages in memory rather than waiting for the disk on the connection's thread.
const READ_AHEAD: u64 = 8 << 20;

/// Streams `start..end` of a stored blob as zero-copy placeholders for `sink` (see
/// `common::zero_copy`): the connection sends the file's bytes with `sendfile`, and they never enter
/// the process. Unless the blob is `checked`, each chunk is checked against its sum before its
/// placeholder is yielded (the check reads it into the page cache, from where it is then sent); on
/// a mismatch `on_corrupt` runs and the stream ends with an error, so the connection is cut before
/// the chunk. A stream that checked every chunk of the blob calls `on_checked_whole` with it as it
/// yields the last one.
pub fn verified_spans(
    blob: VerifiedBlob,
    start: u64,
    end: u64,
    sink: ZeroCopySink,
    on_corrupt: impl Fn() + Send + Sync + 'static,
    on_checked_whole: impl FnOnce(&VerifiedBlob) + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct Spans<F> {
        blob: VerifiedBlob,
        position: u64,
        read_ahead_to: u64,
        on_checked_whole: Option<F>,
    }
    let checks_whole = !blob.checked && start == 0 && end == blob.size;
    let on_corrupt = Arc::new(on_corrupt);
    let state = Spans { blob, position: start, read_ahead_to: start, on_checked_whole: checks_whole.then_some(on_checked_whole) };
    futures_util::stream::unfold(Some(state), move |state| {
        let (sink, on_corrupt) = (sink.clone(), on_corrupt.clone());
        async move {
            let mut state = state.filter(|state| state.position < end)?;
            let blob = &state.blob;
            let (index, chunk_start, chunk_length) = blob.chunk_at(state.position);
            if blob.checked {
                if state.position >= state.read_ahead_to {
                    let (file, from) = (blob.file.clone(), state.position);
                    let length = std::num::NonZeroU64::new(READ_AHEAD.min(end - from));
                    // Advice only: a failure costs a wait on the disk later, nothing else.
                    let _ =
                        tokio::task::spawn_blocking(move || rustix::fs::fadvise(&*file, from, length, rustix::fs::Advice::WillNeed)).await;
                    state.read_ahead_to = from + READ_AHEAD;
                }
            } else {
                let sum = |file: &std::fs::File, offset, length| sum_at(file, offset, length).map(|sum| (sum, ()));
                if let Err(error) = blob.checked_chunk(index, sum, &*on_corrupt).await {
                    return Some((Err(error), None));
                }
            }
            let to = end.min(chunk_start + chunk_length as u64);
            let placeholder = sink.push(FileSpan::new(blob.file.clone(), state.position, (to - state.position) as usize));
            state.position = to;
            if to == end
                && let Some(on_checked_whole) = state.on_checked_whole.take()
            {
                on_checked_whole(&state.blob);
            }
            Some((Ok(placeholder), Some(state)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_settles_a_whole_second_later_to_the_nanosecond() {
        let identity = FileIdentity { device: 1, inode: 2, size: 3, modified: (100, 999_000_000), changed: (100, 999_000_000) };
        let at = |seconds, nanoseconds| std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanoseconds);
        assert!(!identity.settled_before(at(101, 1_000_000)), "2 ms later, in the next second: not settled");
        assert!(!identity.settled_before(at(101, 998_999_999)));
        assert!(identity.settled_before(at(101, 999_000_000)));
        let before_1970 = FileIdentity { changed: (-5, 0), ..identity };
        assert!(!before_1970.settled_before(at(200, 0)));
    }

    #[test]
    fn chunk_sums_do_not_depend_on_how_bytes_arrive() {
        let data: Vec<u8> = (0..(CHUNK as usize * 2 + 12345)).map(|index| (index % 253) as u8).collect();
        let mut whole = ChunkSummer::default();
        whole.update(&data);
        let mut pieces = ChunkSummer::default();
        for piece in data.chunks(7919) {
            pieces.update(piece);
        }
        let sums = whole.finish();
        assert_eq!(sums.len(), 3);
        assert_eq!(sums, pieces.finish());
        assert_eq!(sums[2], xxh3_64(&data[2 * CHUNK as usize..]));
        assert!(ChunkSummer::default().finish().is_empty());
    }
}
