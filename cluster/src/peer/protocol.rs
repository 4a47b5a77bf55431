//! The peer protocol, one QUIC bidirectional stream per request (ALPN `hfm-peer/1`). The first frame
//! says what the stream is for: a blob fill, or an opaque RPC (the Raft catalog's messages, which
//! this module does not interpret).
//!
//! ```text
//! client → server: u32 big-endian length ‖ postcard(PeerRequest::Fill(FillRequest)), then FIN
//! server → client: u32 big-endian length ‖ postcard(FillResponse), then (on `Sending`) the raw bytes
//!                  start..size of the blob, then FIN; a reset stream means the server failed mid-way
//! ```
//!
//! An RPC stream carries `PeerRequest::Rpc { service, body }` one way and `RpcResponse` the other.
//!
//! The receiver checks the byte count and the content hash itself (a fill verifies whatever its
//! source), so a lying or broken peer costs a retry, never a corrupt blob.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN of the peer protocol.
pub const PEER_ALPN: &[u8] = b"hfm-peer/1";
/// The largest frame either side accepts. Fill frames are tiny; RPC frames carry Raft entries and
/// snapshots of the catalog.
pub const MAX_FRAME: usize = 256 << 20;

/// What a stream is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    Fill(FillRequest),
    /// An RPC to one of the node's services (`raft`, `metadata`, …), with an opaque body.
    Rpc {
        service: String,
        body: Vec<u8>,
    },
}

/// The answer to an RPC: the handler's bytes, or why it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    Ok(Vec<u8>),
    Failed(String),
}

/// Asks a peer for a blob's bytes from `start` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillRequest {
    /// The content address (git blob sha1 or sha256).
    pub etag: String,
    /// The blob's size as the asker's catalog knows it.
    pub size: u64,
    pub start: u64,
    /// When set, the peer is asked as the blob's fill leader: if it does not hold the blob it
    /// fetches it from its own upstream at this opaque locator (and keeps it), streaming as it goes.
    /// When unset, the peer answers only from what it holds or is already filling.
    pub origin: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FillResponse {
    /// The bytes `start..size` follow.
    Sending { size: u64, start: u64 },
    /// The peer neither holds nor is filling the blob (and was not asked to fetch it).
    NotHere,
    /// The peer cannot serve now (shutting down, draining, out of capacity); try another source.
    Unavailable { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("frame is undecodable: {0}")]
    Codec(String),
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one length-prefixed postcard frame.
pub async fn write_frame<T: Serialize>(writer: &mut (impl AsyncWrite + Unpin), value: &T) -> Result<(), FrameError> {
    let bytes = postcard::to_stdvec(value).map_err(|error| FrameError::Codec(error.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    writer.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Reads one length-prefixed postcard frame, refusing anything over [`MAX_FRAME`] before reading it.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(reader: &mut (impl AsyncRead + Unpin)) -> Result<T, FrameError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    // Grow as bytes arrive rather than trusting the announced length with a large allocation.
    let mut bytes = Vec::with_capacity(length.min(1 << 20));
    let read = reader.take(length as u64).read_to_end(&mut bytes).await?;
    if read != length {
        return Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "frame cut short")));
    }
    // A frame is exactly one value: bytes left after it are refused, not dropped (they would be a
    // peer speaking another version of the protocol, or garbage).
    let (value, rest) = postcard::take_from_bytes(&bytes).map_err(|error| FrameError::Codec(error.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Codec(format!("{} bytes after the frame's value", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let request = FillRequest { etag: "a".repeat(64), size: 10, start: 3, origin: Some("/org/model/resolve/abc/x".into()) };
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &request).await.unwrap();
        let decoded: FillRequest = read_frame(&mut buffer.as_slice()).await.unwrap();
        assert_eq!(decoded, request);
    }

    #[tokio::test]
    async fn hostile_frames_are_refused() {
        // A length over the limit is refused before any allocation.
        let huge = (u32::MAX).to_be_bytes();
        assert!(matches!(read_frame::<FillRequest>(&mut huge.as_slice()).await, Err(FrameError::TooLarge(_))));
        // Truncated frames and garbage fail cleanly.
        let truncated = [0u8, 0, 0, 10, 1, 2];
        assert!(matches!(read_frame::<FillRequest>(&mut truncated.as_slice()).await, Err(FrameError::Io(_))));
        let garbage = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame::<FillResponse>(&mut garbage.as_slice()).await, Err(FrameError::Codec(_))));
        assert!(read_frame::<FillRequest>(&mut [].as_slice()).await.is_err());
        // A value followed by more bytes inside its announced length (found by tests/fuzz_frames.rs).
        let padded = [0u8, 0, 0, 2, 1, 0];
        assert!(matches!(read_frame::<FillResponse>(&mut padded.as_slice()).await, Err(FrameError::Codec(_))));
    }
}
