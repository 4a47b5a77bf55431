//! One blob being filled: written to a temp file while readers stream the part already written.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::source::{BlobSource, SourceError};
use super::verify::ContentHasher;

/// Bytes gathered before one write to the temp file; readers see progress in steps of this size.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes handed to a reader per read.
const READ_CHUNK: u64 = 256 << 10;
/// How often a fill reopens its source after an interruption before it gives up.
const MAX_SOURCE_ATTEMPTS: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillState {
    Running,
    /// Verified, fsynced and renamed into place.
    Complete,
    /// Aborted: readers must fail their response rather than end it cleanly.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillProgress {
    pub written: u64,
    pub state: FillState,
}

/// A fill in progress, shared by the task that writes it and every reader.
pub struct Fill {
    pub etag: String,
    pub size: u64,
    pub(super) temp_path: PathBuf,
    /// Opened read-write; readers `pread` from it, so they keep working after the rename.
    pub(super) file: Arc<std::fs::File>,
    progress: watch::Sender<FillProgress>,
}

impl Fill {
    pub(super) fn create(etag: String, size: u64, temp_path: PathBuf) -> io::Result<Fill> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&temp_path)?;
        let (progress, _) = watch::channel(FillProgress { written: 0, state: FillState::Running });
        Ok(Fill { etag, size, temp_path, file: Arc::new(file), progress })
    }

    pub(super) fn publish(&self, state: FillState) {
        self.progress.send_modify(|progress| progress.state = state);
    }

    fn advance(&self, written: u64) {
        self.progress.send_modify(|progress| progress.written = written);
    }

    pub fn progress(&self) -> FillProgress {
        *self.progress.borrow()
    }

    /// Streams `start..end` of the blob as the fill writes it. The stream ends with an error if the
    /// fill fails, so the client's connection is aborted instead of ending cleanly.
    pub fn reader(self: &Arc<Fill>, start: u64, end: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        debug_assert!(start <= end && end <= self.size);
        let receiver = self.progress.subscribe();
        futures_util::stream::unfold((self.clone(), receiver, start, false), move |(fill, mut receiver, position, failed)| async move {
            if failed || position >= end {
                return None;
            }
            loop {
                let progress = *receiver.borrow_and_update();
                if progress.state == FillState::Failed {
                    let error = io::Error::other(format!("fill of {} failed", fill.etag));
                    return Some((Err(error), (fill, receiver, position, true)));
                }
                let available = progress.written.min(end);
                if position < available {
                    let length = (available - position).min(READ_CHUNK) as usize;
                    let file = fill.file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buffer = vec![0u8; length];
                        file.read_exact_at(&mut buffer, position).map(|()| Bytes::from(buffer))
                    })
                    .await
                    .unwrap_or_else(|error| Err(io::Error::other(error)));
                    return match read {
                        Ok(bytes) => Some((Ok(bytes), (fill, receiver, position + length as u64, false))),
                        Err(error) => Some((Err(error), (fill, receiver, position, true))),
                    };
                }
                if receiver.changed().await.is_err() {
                    return Some((Err(io::Error::other("fill vanished")), (fill, receiver, position, true)));
                }
            }
        })
    }
}

async fn write_batch(fill: &Fill, batch: Vec<u8>, offset: u64) -> Result<(), String> {
    let file = fill.file.clone();
    tokio::task::spawn_blocking(move || file.write_all_at(&batch, offset))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("writing the temp file: {error}"))
}

/// Streams the blob from `source` into the fill's temp file, hashing as it goes, and reopening the
/// source at the byte reached when it is interrupted. Succeeds only if the length and hash match.
pub(super) async fn run(fill: &Fill, source: &dyn BlobSource) -> Result<(), String> {
    let mut hasher = ContentHasher::for_etag(&fill.etag, fill.size).ok_or("not an etag")?;
    let mut written: u64 = 0;
    let mut failures = 0u32;
    let mut last_error = String::new();
    while written < fill.size {
        if failures >= MAX_SOURCE_ATTEMPTS {
            return Err(format!("{} failed {failures} times, last: {last_error}", source.describe()));
        }
        if failures > 0 {
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(5)))).await;
        }
        let (stream_start, mut stream) = match source.open(written).await {
            Ok(opened) => opened,
            Err(SourceError::Permanent(reason)) => return Err(reason),
            Err(SourceError::Transient(reason)) => {
                failures += 1;
                warn!(etag = %fill.etag, offset = written, %reason, "blob source failed; retrying");
                last_error = reason;
                continue;
            }
        };
        if stream_start > written {
            return Err(format!("{} started at {stream_start}, past the {written} bytes written", source.describe()));
        }
        let mut skip = written - stream_start;
        let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let mut interrupted = None;
        while let Some(chunk) = stream.next().await {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    interrupted = Some(error.to_string());
                    break;
                }
            };
            if skip > 0 {
                let skipped = skip.min(chunk.len() as u64);
                chunk = chunk.slice(skipped as usize..);
                skip -= skipped;
            }
            if written + batch.len() as u64 + chunk.len() as u64 > fill.size {
                return Err(format!("{} sent more than the expected {} bytes", source.describe(), fill.size));
            }
            hasher.update(&chunk);
            batch.extend_from_slice(&chunk);
            if batch.len() >= WRITE_BATCH {
                let length = batch.len() as u64;
                write_batch(fill, std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH)), written).await?;
                written += length;
                fill.advance(written);
            }
        }
        // Whatever was hashed is written before any retry, so the hash and the file stay in step.
        if !batch.is_empty() {
            let length = batch.len() as u64;
            write_batch(fill, batch, written).await?;
            written += length;
            fill.advance(written);
        }
        if written < fill.size {
            failures += 1;
            last_error = interrupted.unwrap_or_else(|| "stream ended early".into());
            warn!(etag = %fill.etag, offset = written, reason = %last_error, "blob stream interrupted; resuming");
            continue;
        }
        break;
    }
    let digest = hasher.finish();
    if digest != fill.etag {
        return Err(format!("content hash {digest} does not match the etag (from {})", source.describe()));
    }
    debug!(etag = %fill.etag, size = fill.size, "fill verified");
    Ok(())
}
