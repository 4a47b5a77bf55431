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

use super::integrity::ChunkSummer;
use super::source::{BlobSource, SourceError};
use super::verify::ContentHasher;
use crate::common::zero_copy::{FileSpan, ZeroCopySink};

/// Bytes gathered before one write to the temp file; readers see progress in steps of this size.
const WRITE_BATCH: usize = 512 << 10;
/// The first batch of a fill's stream: small, so its readers' first bytes do not wait for half a
/// megabyte; each next batch doubles, up to [`WRITE_BATCH`].
const FIRST_BATCH: usize = 64 << 10;
/// Bytes handed to a reader per read.
const READ_CHUNK: u64 = 1 << 20;
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

    /// Waits until the fill is complete or has failed.
    pub async fn finished(&self) -> FillState {
        let mut receiver = self.progress.subscribe();
        loop {
            let state = receiver.borrow_and_update().state;
            if state != FillState::Running {
                return state;
            }
            if receiver.changed().await.is_err() {
                return FillState::Failed;
            }
        }
    }

    /// Streams `start..end` of the blob as the fill writes it. The stream ends with an error if the
    /// fill fails, so the client's connection is aborted instead of ending cleanly.
    pub fn reader(self: &Arc<Fill>, start: u64, end: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        self.follow(start, end, None)
    }

    /// [`Fill::reader`], yielding zero-copy placeholders for `zero_copy` when given (the connection
    /// sends the bytes from the temp file itself, see `common::zero_copy`) instead of reading them.
    pub fn follow(
        self: &Arc<Fill>,
        start: u64,
        end: u64,
        zero_copy: Option<ZeroCopySink>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        debug_assert!(start <= end && end <= self.size);
        let receiver = self.progress.subscribe();
        futures_util::stream::unfold((self.clone(), receiver, start), move |(fill, mut receiver, position)| {
            let zero_copy = zero_copy.clone();
            async move {
                if position >= end {
                    return None;
                }
                loop {
                    let progress = *receiver.borrow_and_update();
                    if progress.state == FillState::Failed {
                        let error = io::Error::other(format!("fill of {} failed", fill.etag));
                        return Some((Err(error), (fill, receiver, end)));
                    }
                    let available = progress.written.min(end);
                    // The chunk that would end a response reaching the last byte of the blob is held back
                    // until the hash is checked: a client must never see a clean end of a corrupt file.
                    let reaches_the_end = end == fill.size && position + READ_CHUNK >= end;
                    if position < available && !(reaches_the_end && progress.state == FillState::Running) {
                        let until = available.min(position + READ_CHUNK);
                        if let Some(sink) = &zero_copy {
                            let span = FileSpan::new(fill.file.clone(), position, (until - position) as usize);
                            return Some((Ok(sink.push(span)), (fill, receiver, until)));
                        }
                        let mut chunk = Box::pin(read_range(fill.file.clone(), position, until));
                        return match chunk.next().await {
                            Some(Ok(bytes)) => {
                                let next = position + bytes.len() as u64;
                                Some((Ok(bytes), (fill, receiver, next)))
                            }
                            Some(Err(error)) => Some((Err(error), (fill, receiver, end))),
                            None => Some((Err(io::Error::other("empty read")), (fill, receiver, end))),
                        };
                    }
                    if receiver.changed().await.is_err() {
                        return Some((Err(io::Error::other("fill vanished")), (fill, receiver, end)));
                    }
                }
            }
        })
    }
}

/// Streams `start..end` of an open file in chunks read off the runtime, for as long as `available`
/// says the bytes are there. Shared by fills in progress and stored blobs.
pub fn read_range(file: Arc<std::fs::File>, start: u64, end: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold((file, start), move |(file, position)| async move {
        if position >= end {
            return None;
        }
        let length = (end - position).min(READ_CHUNK) as usize;
        let reader = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; length];
            reader.read_exact_at(&mut buffer, position).map(|()| Bytes::from(buffer))
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)));
        match read {
            Ok(bytes) => Some((Ok(bytes), (file, position + length as u64))),
            // End the stream after the error: the position is pushed past the end.
            Err(error) => Some((Err(error), (file, end))),
        }
    })
}

/// Writes the batches it receives, in order, on a blocking thread, so the network side of a fill
/// never waits for the disk; readers see each batch once it is written.
fn write_batches(fill: Arc<Fill>, mut batches: tokio::sync::mpsc::Receiver<Bytes>) -> Result<Vec<u64>, String> {
    let mut written: u64 = 0;
    // The chunk sums ride along with the write: the bytes are in the cache already, and xxh3 costs
    // a small fraction of the copy.
    let mut summer = ChunkSummer::default();
    while let Some(batch) = batches.blocking_recv() {
        fill.file.write_all_at(&batch, written).map_err(|error| format!("writing the temp file: {error}"))?;
        summer.update(&batch);
        written += batch.len() as u64;
        fill.advance(written);
    }
    Ok(summer.finish())
}

/// Hashes the batches it receives on another blocking thread: on a memory-bound machine the page
/// cache copy and the hash each cost about as much as the transfer, so they run side by side.
fn hash_batches(etag: String, size: u64, mut batches: tokio::sync::mpsc::Receiver<Bytes>) -> Result<String, String> {
    let mut hasher = ContentHasher::for_etag(&etag, size).ok_or("not an etag")?;
    while let Some(batch) = batches.blocking_recv() {
        hasher.update(&batch);
    }
    Ok(hasher.finish())
}

/// Streams the blob from `source` into the fill's temp file, reopening the source at the byte
/// reached when it is interrupted. Succeeds only if the length and hash match the etag.
pub(super) async fn run(fill: &Arc<Fill>, source: &dyn BlobSource) -> Result<Vec<u64>, String> {
    let (write_tx, write_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let (hash_tx, hash_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer_fill = fill.clone();
    let writer = tokio::task::spawn_blocking(move || write_batches(writer_fill, write_rx));
    let (etag, size) = (fill.etag.clone(), fill.size);
    let hasher = tokio::task::spawn_blocking(move || hash_batches(etag, size, hash_rx));
    let received = receive(fill, source, [write_tx, hash_tx]).await;
    // Both threads end once the senders are dropped (by `receive` returning); a writer error
    // explains a failed send, so it is looked at first.
    let sums = writer.await.map_err(|error| error.to_string())??;
    let digest = hasher.await.map_err(|error| error.to_string())??;
    received?;
    if digest != fill.etag {
        return Err(format!("content hash {digest} does not match the etag (from {})", source.describe()));
    }
    debug!(etag = %fill.etag, size = fill.size, "fill verified");
    Ok(sums)
}

/// Hands one batch to the writer and the hasher.
async fn hand_over(consumers: &[tokio::sync::mpsc::Sender<Bytes>; 2], batch: Bytes) -> Result<(), String> {
    for consumer in consumers {
        consumer.send(batch.clone()).await.map_err(|_| "the writer stopped".to_owned())?;
    }
    Ok(())
}

/// Pulls the bytes from the source into the writer, retrying from the byte reached.
async fn receive(fill: &Fill, source: &dyn BlobSource, consumers: [tokio::sync::mpsc::Sender<Bytes>; 2]) -> Result<(), String> {
    let mut received: u64 = 0;
    let mut failures = 0u32;
    let mut last_error = String::new();
    while received < fill.size {
        if failures >= MAX_SOURCE_ATTEMPTS {
            return Err(format!("{} failed {failures} times, last: {last_error}", source.describe()));
        }
        if failures > 0 {
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(5)))).await;
        }
        let (stream_start, mut stream) = match source.open(received).await {
            Ok(opened) => opened,
            Err(SourceError::Permanent(reason)) => return Err(reason),
            Err(SourceError::Transient(reason)) => {
                failures += 1;
                warn!(etag = %fill.etag, offset = received, %reason, "blob source failed; retrying");
                last_error = reason;
                continue;
            }
        };
        if stream_start > received {
            return Err(format!("{} started at {stream_start}, past the {received} bytes received", source.describe()));
        }
        let mut skip = received - stream_start;
        let mut interrupted = None;
        // Network chunks are small (often 8–16 KiB); handing each to the writer thread would cost a
        // thread wake-up per chunk, so they are gathered into batches first.
        let mut batch = bytes::BytesMut::with_capacity(WRITE_BATCH);
        let mut batch_target = FIRST_BATCH;
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
            if chunk.is_empty() {
                continue;
            }
            if received + chunk.len() as u64 > fill.size {
                return Err(format!("{} sent more than the expected {} bytes", source.describe(), fill.size));
            }
            received += chunk.len() as u64;
            batch.extend_from_slice(&chunk);
            if batch.len() >= batch_target {
                hand_over(&consumers, batch.split().freeze()).await?;
                if batch_target < WRITE_BATCH {
                    batch_target *= 2;
                    // While upstream keeps the socket full this loop never waits, and on a node with
                    // one core its readers would not send the first bytes until tokio's cooperative
                    // budget ran out, megabytes later: while the batches grow, they get their turn
                    // after each. (After each batch for the whole stream costs a cold download of
                    // 1 GiB some 14 % more time: readers then send in smaller pieces.)
                    tokio::task::yield_now().await;
                }
            }
        }
        // What was received is handed over before any retry, so the writer stays in step.
        if !batch.is_empty() {
            hand_over(&consumers, batch.split().freeze()).await?;
        }
        if received < fill.size {
            failures += 1;
            last_error = interrupted.unwrap_or_else(|| "stream ended early".into());
            warn!(etag = %fill.etag, offset = received, reason = %last_error, "blob stream interrupted; resuming");
        }
    }
    Ok(())
}
