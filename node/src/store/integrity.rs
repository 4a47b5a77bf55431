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
}

/// Streams `start..end` of a stored blob, reading whole chunks and checking each against its sum
/// before any of its bytes go out. On a mismatch `on_corrupt` runs once and the stream ends with an
/// error, so the client's connection is aborted rather than handed bad bytes.
/// Reads `length` bytes at `offset` into a new buffer, without zeroing the buffer first (a chunk is
/// a megabyte, and every byte of it is overwritten by the read).
pub(super) fn read_at(file: &std::fs::File, offset: u64, length: usize) -> io::Result<Vec<u8>> {
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
            let index = position / CHUNK;
            let chunk_start = index * CHUNK;
            let chunk_length = CHUNK.min(blob.size - chunk_start) as usize;
            let (file, expected) = (blob.file.clone(), blob.sums[index as usize]);
            let read = tokio::task::spawn_blocking(move || read_at(&file, chunk_start, chunk_length))
                .await
                .unwrap_or_else(|error| Err(io::Error::other(error)));
            let chunk = match read {
                Ok(chunk) => chunk,
                Err(error) => return Some((Err(error), (blob, end))),
            };
            if xxh3_64(&chunk) != expected {
                on_corrupt();
                return Some((Err(io::Error::other(format!("stored blob chunk {index} is corrupt"))), (blob, end)));
            }
            let from = (position - chunk_start) as usize;
            let to = (end.min(chunk_start + chunk_length as u64) - chunk_start) as usize;
            let next = chunk_start + to as u64;
            Some((Ok(Bytes::from(chunk).slice(from..to)), (blob, next)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
