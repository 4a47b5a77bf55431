//! The writer of a plain-TCP HTTP/1.1 connection that sends stored files with `sendfile(2)`.
//!
//! A response body made for the connection's [`ZeroCopySink`] yields placeholders instead of a
//! file's bytes (see `common::zero_copy`). hyper writes them like any body bytes; [`SendingFiles`]
//! recognises each by its address and sends the file stretch recorded for it from the page cache
//! straight to the socket: the bytes are neither read into the process nor copied into a body
//! buffer, and a connection sending a gigabyte holds no more memory than one sending a kilobyte.
//! Everything else (response heads, bodies from memory) is written as it is.
//!
//! hyper must hand body buffers over as they are, which it does when it writes vectored (its
//! `writev` mode, set on every connection this wraps); had it copied a placeholder into its own
//! buffer, the copy would not be recognised. A placeholder that matches no recorded stretch fails
//! the connection: its zeros are never sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::proxy::Prefixed;
use crate::common::zero_copy::{FileSpan, ZeroCopySink, is_placeholder};

/// A plain TCP connection whose placeholder writes are sent from files (see the module's
/// documentation).
pub(crate) struct SendingFiles {
    inner: Prefixed<TcpStream>,
    sink: ZeroCopySink,
    /// The stretch being sent: its offset and length advance as it goes.
    sending: Option<FileSpan>,
}

impl SendingFiles {
    pub(crate) fn new(inner: Prefixed<TcpStream>, sink: ZeroCopySink) -> SendingFiles {
        SendingFiles { inner, sink, sending: None }
    }

    /// Sends (part of) the file stretch `placeholder` stands for; returns how many of its bytes
    /// went, as a write of the placeholder would.
    fn poll_send_span(&mut self, context: &mut Context<'_>, placeholder: &[u8]) -> Poll<io::Result<usize>> {
        if self.sending.is_none() {
            self.sending = self.sink.take();
        }
        let Some(span) = self.sending.as_mut() else {
            return Poll::Ready(Err(io::Error::other("a zero-copy placeholder with no file stretch recorded for it")));
        };
        if !span.is_placeholder_of(placeholder) {
            return Poll::Ready(Err(io::Error::other("a zero-copy placeholder that is not the one recorded for the next file stretch")));
        }
        let socket = self.inner.get_ref();
        loop {
            ready!(socket.poll_write_ready(context))?;
            let mut offset = span.offset;
            let sent = socket.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(socket, &*span.file, Some(&mut offset), span.length).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stored file is shorter than its size"))),
                Ok(sent) => {
                    span.advance(sent);
                    if span.length == 0 {
                        self.sending = None;
                    }
                    return Poll::Ready(Ok(sent));
                }
                // The readiness was stale: wait for the next.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncRead for SendingFiles {
    pass_to_inner!(poll_read);
}

impl AsyncWrite for SendingFiles {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        if is_placeholder(bytes) {
            return self.poll_send_span(context, bytes);
        }
        Pin::new(&mut self.inner).poll_write(context, bytes)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffers: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // Written in order: the buffers before the first placeholder together, then the placeholder
        // alone (hyper comes back with the rest).
        let buffers = &buffers[buffers.iter().take_while(|buffer| buffer.is_empty()).count()..];
        match buffers.first() {
            Some(first) if is_placeholder(first) => self.poll_send_span(context, first),
            _ => {
                let plain = buffers.iter().take_while(|buffer| !is_placeholder(buffer)).count();
                Pin::new(&mut self.inner).poll_write_vectored(context, &buffers[..plain])
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    pass_to_inner!(poll_flush, poll_shutdown);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn connected() -> (SendingFiles, ZeroCopySink, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let sink = ZeroCopySink::default();
        (SendingFiles::new(Prefixed::new(Vec::new(), server), sink.clone()), sink, client)
    }

    fn file_of(bytes: &[u8]) -> Arc<std::fs::File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    #[tokio::test]
    async fn placeholders_go_out_as_their_file_stretches_between_plain_bytes() {
        let (mut writer, sink, mut client) = connected().await;
        let data: Vec<u8> = (0..3_000_000u32).map(|index| (index % 251) as u8).collect();
        let file = file_of(&data);
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let first = sink.push(FileSpan::new(file.clone(), 5, 1 << 20));
        let second = sink.push(FileSpan::new(file.clone(), 2_000_000, 999_000));
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        });
        // As hyper writes: the head and the first placeholder in one vectored write, then the rest.
        let mut pending: Vec<bytes::Bytes> = vec![head.clone().into(), first, b"|".to_vec().into(), second];
        while !pending.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = pending.iter().map(|bytes| io::IoSlice::new(bytes)).collect();
            let mut written = writer.write_vectored(&slices).await.unwrap();
            while written > 0 {
                let take = written.min(pending[0].len());
                let _ = pending[0].split_to(take);
                written -= take;
                if pending[0].is_empty() {
                    pending.remove(0);
                }
            }
        }
        writer.shutdown().await.unwrap();
        drop(writer);
        let mut expected = head;
        expected.extend_from_slice(&data[5..5 + (1 << 20)]);
        expected.push(b'|');
        expected.extend_from_slice(&data[2_000_000..2_999_000]);
        assert!(reader.await.unwrap() == expected, "the bytes sent are the head, the file stretches and the bytes between");
    }

    #[tokio::test]
    async fn a_placeholder_without_its_stretch_or_out_of_turn_fails_and_sends_no_zeros() {
        let (mut writer, sink, mut client) = connected().await;
        let other_sink = ZeroCopySink::default();
        let stray = other_sink.push(FileSpan::new(file_of(b"abc"), 0, 3));
        let error = writer.write(&stray).await.unwrap_err();
        assert!(error.to_string().contains("no file stretch"), "{error}");
        // Two spans recorded, the second's placeholder written first: refused.
        let _first = sink.push(FileSpan::new(file_of(b"abc"), 0, 3));
        let second = sink.push(FileSpan::new(file_of(b"xyz"), 0, 3));
        let error = writer.write(&second).await.unwrap_err();
        assert!(error.to_string().contains("not the one recorded"), "{error}");
        drop(writer);
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert!(received.is_empty());
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_stretch_fails_the_write() {
        let (mut writer, sink, _client) = connected().await;
        let body = sink.push(FileSpan::new(file_of(b"abc"), 0, 10));
        let mut sent = 0;
        let error = loop {
            match writer.write(&body[sent..]).await {
                Ok(count) => sent += count,
                Err(error) => break error,
            }
        };
        assert_eq!((sent, error.kind()), (3, io::ErrorKind::UnexpectedEof));
    }
}
