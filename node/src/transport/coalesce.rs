//! Fewer, larger writes for an HTTP/2 connection.
//!
//! hyper runs each HTTP/2 stream as its own task, and the connection's task writes what the streams
//! produced. A stream that finishes its response wakes the connection's task, and tokio runs a task
//! woken that way next (its "LIFO slot"): the connection writes that one response, and the next
//! stream's response gets a write of its own. Measured with 64 streams on one connection: 47,509
//! `writev` calls for 50,000 responses, and a tenth of the core in the kernel waking the reader for
//! each. [`Coalescing`] makes each write wait one turn of the scheduler first (the task wakes itself
//! and returns `Pending`, which puts it at the back of the run queue): the streams that are ready run
//! meanwhile, and the connection then writes their responses together. A lone response waits one
//! turn of an otherwise idle scheduler — microseconds. A write of [`WRITE_NOW_FROM`] bytes or more
//! goes out at once: it is a large body's frame, and waiting would only add a turn per frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

/// Writes at least this large are not held back: batching helps small responses only.
const WRITE_NOW_FROM: usize = 16 << 10;

/// An I/O stream whose small writes each wait one scheduler turn (see the module's documentation).
pub(crate) struct Coalescing<T> {
    inner: T,
    /// Whether the write now asked for already waited its turn.
    waited: bool,
}

impl<T> Coalescing<T> {
    pub(crate) fn new(inner: T) -> Coalescing<T> {
        Coalescing { inner, waited: false }
    }

    /// `Ready` when the caller may write now; otherwise the task was woken to come back after the
    /// other ready tasks.
    fn wait_turn(&mut self, context: &mut Context<'_>, length: usize) -> Poll<()> {
        if self.waited || length >= WRITE_NOW_FROM {
            self.waited = false;
            return Poll::Ready(());
        }
        self.waited = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    pass_to_inner!(poll_read);
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(context, bytes.len()));
        let written = Pin::new(&mut self.inner).poll_write(context, bytes);
        if written.is_pending() {
            // The socket is full: the next attempt is woken by it, not by a turn.
            self.waited = true;
        }
        written
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffers: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(context, buffers.iter().map(|buffer| buffer.len()).sum()));
        let written = Pin::new(&mut self.inner).poll_write_vectored(context, buffers);
        if written.is_pending() {
            self.waited = true;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    pass_to_inner!(poll_flush, poll_shutdown);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes written through it arrive whole and in order, whether one write or many, and a full
    /// pipe (the reader slow) does not lose or repeat any.
    #[tokio::test]
    async fn writes_arrive_whole_and_in_order() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = Coalescing::new(server);
        let expected: Vec<u8> = (0..200_000u32).map(|index| (index % 251) as u8).collect();
        let sent = expected.clone();
        let writing = tokio::spawn(async move {
            for chunk in sent.chunks(777) {
                writer.write_all(chunk).await.unwrap();
            }
            let written = writer.write_vectored(&[io::IoSlice::new(b"ta"), io::IoSlice::new(b"il")]).await.unwrap();
            writer.write_all(&b"tail"[written..]).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        let mut reader = client;
        reader.read_to_end(&mut received).await.unwrap();
        writing.await.unwrap();
        assert_eq!(&received[..expected.len()], &expected[..]);
        assert_eq!(&received[expected.len()..], b"tail");
    }

    /// Which of a writing task and another ready task finishes first, the writer writing `length`
    /// bytes.
    async fn order_with_a_write_of(length: usize) -> Vec<&'static str> {
        let (mut client, server) = tokio::io::duplex(2 * WRITE_NOW_FROM);
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut writer = Coalescing::new(server);
        let (first, second) = (order.clone(), order.clone());
        let writing = tokio::spawn(async move {
            writer.write_all(&vec![7u8; length]).await.unwrap();
            first.lock().unwrap().push("written");
        });
        let other = tokio::spawn(async move { second.lock().unwrap().push("other ran") });
        writing.await.unwrap();
        other.await.unwrap();
        let mut received = vec![0u8; length];
        client.read_exact(&mut received).await.unwrap();
        let order = order.lock().unwrap().clone();
        order
    }

    /// A small write first yields once: a task that was ready meanwhile runs before the bytes go
    /// out. A large one goes out at once.
    #[tokio::test(flavor = "current_thread")]
    async fn a_small_write_lets_ready_tasks_run_first() {
        assert_eq!(order_with_a_write_of(1).await, ["other ran", "written"]);
        assert_eq!(order_with_a_write_of(WRITE_NOW_FROM - 1).await, ["other ran", "written"]);
        assert_eq!(order_with_a_write_of(WRITE_NOW_FROM).await, ["written", "other ran"]);
    }
}
