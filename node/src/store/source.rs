//! Where a fill gets its bytes from. Upstream is one source; the cluster's peers will be others.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

/// A stream of a blob's bytes from some offset on.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>;

/// Why a source could not deliver.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    /// A failure worth retrying from the byte reached (a dropped connection, a timeout, a 5xx).
    #[error("source interrupted: {0}")]
    Transient(String),
    /// The source will not deliver this blob (it is not there, access is refused).
    #[error("source refused: {0}")]
    Permanent(String),
}

/// Something that can stream a blob's bytes starting at an offset.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync + 'static {
    /// Opens the blob at `offset`. Returns the offset the stream really starts at: a source that
    /// cannot seek returns 0 and the caller skips ahead.
    async fn open(&self, offset: u64) -> Result<(u64, ByteStream), SourceError>;

    /// Names the source in logs.
    fn describe(&self) -> String;
}
