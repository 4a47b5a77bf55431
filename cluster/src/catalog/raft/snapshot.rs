//! Catalog snapshots as files: written row by row from one read view of the catalog, sealed with a
//! SHA-256 of everything before it, read back row by row. A snapshot never has to fit in memory,
//! in one Raft message or in one frame: it is built into a file, sent to a peer in bounded chunks
//! (`network.rs`), received into a file and imported from it in one transaction.
//!
//! Format: `HFMSNAP1`, then rows, each a little-endian u32 length and the postcard encoding of
//! `(table, key, value)`; a zero length ends the rows; then the row count (u64, little-endian)
//! and the SHA-256 of every byte before the digest.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::catalog::local::Row;

/// Where a node keeps its snapshot files, under its data directory.
pub const SNAPSHOT_DIR: &str = "raft-snapshots";
const MAGIC: &[u8; 8] = b"HFMSNAP1";
/// The largest row a snapshot may hold: a manifest of a few million files. A length above it is
/// a damaged or hostile file, refused before anything is allocated for it.
const MAX_ROW: u32 = 1 << 30;
/// What a finished snapshot file's name ends with; files being built or received end otherwise.
pub(super) const SNAPSHOT_SUFFIX: &str = ".snap";

/// A snapshot's rows in a file: openraft's snapshot data for the catalog.
#[derive(Debug)]
pub struct SnapshotFile {
    pub(super) path: PathBuf,
}

impl SnapshotFile {
    pub(super) fn new(path: PathBuf) -> SnapshotFile {
        SnapshotFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file name no other snapshot file of this process or an earlier one has: the time and a
/// counter.
pub(super) fn unique_name(prefix: &str, suffix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    format!("{prefix}-{nanos}-{}{suffix}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Writes a snapshot file row by row.
pub(super) struct SnapshotWriter {
    file: BufWriter<File>,
    digest: ring::digest::Context,
    rows: u64,
}

impl SnapshotWriter {
    pub(super) fn create(path: &Path) -> io::Result<SnapshotWriter> {
        let mut writer = SnapshotWriter {
            file: BufWriter::with_capacity(1 << 20, File::create(path)?),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            rows: 0,
        };
        writer.write_digested(MAGIC)?;
        Ok(writer)
    }

    fn write_digested(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.digest.update(bytes);
        self.file.write_all(bytes)
    }

    pub(super) fn row(&mut self, table: &str, key: &str, value: &[u8]) -> io::Result<()> {
        let encoded = postcard::to_stdvec(&(table, key, value)).map_err(io::Error::other)?;
        let length = u32::try_from(encoded.len()).ok().filter(|length| *length <= MAX_ROW).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("a catalog row of {} bytes is too large for a snapshot", encoded.len()))
        })?;
        self.write_digested(&length.to_le_bytes())?;
        self.write_digested(&encoded)?;
        self.rows += 1;
        Ok(())
    }

    /// Ends the rows, seals the file and makes it durable; returns the row count.
    pub(super) fn finish(mut self) -> io::Result<u64> {
        self.write_digested(&0u32.to_le_bytes())?;
        let rows = self.rows;
        self.write_digested(&rows.to_le_bytes())?;
        let digest = self.digest.clone().finish();
        self.file.write_all(digest.as_ref())?;
        let file = self.file.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        Ok(rows)
    }
}

/// Reads a snapshot file's rows in order; the last item is an error unless the count and the
/// digest at the end match what was read.
pub(super) struct SnapshotReader {
    file: BufReader<File>,
    digest: ring::digest::Context,
    rows: u64,
    done: bool,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

impl SnapshotReader {
    pub(super) fn open(path: &Path) -> io::Result<SnapshotReader> {
        let mut reader = SnapshotReader {
            file: BufReader::with_capacity(1 << 20, File::open(path)?),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            rows: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        reader.read_digested(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid(format!("{} is not a catalog snapshot", path.display())));
        }
        Ok(reader)
    }

    fn read_digested(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        self.file.read_exact(buffer)?;
        self.digest.update(buffer);
        Ok(())
    }

    fn next_row(&mut self) -> io::Result<Option<Row>> {
        let mut length = [0u8; 4];
        self.read_digested(&mut length)?;
        let length = u32::from_le_bytes(length);
        if length == 0 {
            let mut count = [0u8; 8];
            self.read_digested(&mut count)?;
            let expected = self.digest.clone().finish();
            let mut stored = [0u8; 32];
            self.file.read_exact(&mut stored)?;
            if u64::from_le_bytes(count) != self.rows {
                return Err(invalid(format!("snapshot says {} rows, holds {}", u64::from_le_bytes(count), self.rows)));
            }
            if expected.as_ref() != stored {
                return Err(invalid("snapshot checksum mismatch"));
            }
            return Ok(None);
        }
        if length > MAX_ROW {
            return Err(invalid(format!("snapshot row of {length} bytes")));
        }
        let mut encoded = vec![0u8; length as usize];
        self.read_digested(&mut encoded)?;
        let row: Row = postcard::from_bytes(&encoded).map_err(|error| invalid(format!("undecodable snapshot row: {error}")))?;
        self.rows += 1;
        Ok(Some(row))
    }
}

impl Iterator for SnapshotReader {
    type Item = io::Result<Row>;

    fn next(&mut self) -> Option<io::Result<Row>> {
        if self.done {
            return None;
        }
        match self.next_row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Writes `rows` as a snapshot file at `path` (a snapshot from a build that kept them in memory).
pub(super) fn write_rows(path: &Path, rows: impl IntoIterator<Item = Row>) -> io::Result<u64> {
    let mut writer = SnapshotWriter::create(path)?;
    for (table, key, value) in rows {
        writer.row(&table, &key, &value)?;
    }
    writer.finish()
}

/// Fsyncs a directory, so a rename or a new file in it survives a crash.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        (0..100).map(|index| ("manifests".to_owned(), format!("key{index}"), vec![index as u8; index])).collect()
    }

    #[test]
    fn rows_come_back_in_order_and_the_seal_is_checked() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("a.snap");
        assert_eq!(write_rows(&path, rows()).unwrap(), 100);
        let read: Vec<Row> = SnapshotReader::open(&path).unwrap().collect::<io::Result<_>>().unwrap();
        assert_eq!(read, rows());
    }

    #[test]
    fn a_damaged_or_cut_snapshot_ends_in_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("a.snap");
        write_rows(&path, rows()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        // A byte flipped in a value: every row decodes, the seal does not match.
        let mut flipped = whole.clone();
        flipped[whole.len() / 2] ^= 1;
        // Cut anywhere: the reader meets the end of the file.
        for (name, bytes) in [("flipped", flipped), ("cut", whole[..whole.len() - 40].to_vec()), ("short", whole[..5].to_vec())] {
            std::fs::write(&path, bytes).unwrap();
            let outcome = SnapshotReader::open(&path).and_then(|reader| reader.collect::<io::Result<Vec<Row>>>());
            assert!(outcome.is_err(), "{name} snapshot accepted");
        }
        // A length far beyond any row is refused before it is allocated.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, huge).unwrap();
        let error = SnapshotReader::open(&path).unwrap().next().unwrap().unwrap_err();
        assert!(error.to_string().contains("snapshot row of"), "{error}");
    }
}
