//! Where an HTTP/2 connection's streams run: inside the connection's own task, not as a task each.
//!
//! hyper hands every stream (the service call, then sending its body) to an executor. A tokio task
//! per stream costs an allocation, a trip through the scheduler and wake-ups between the stream and
//! the connection for every request; here the connection's task polls its streams itself, next to
//! the connection (see `http::drive`). The streams still run concurrently: one waiting for a fill or
//! for flow control does not hold up the others. They share the connection's core, as the frames
//! they send already did.
//!
//! It also batches writes: the streams made ready by one read of the socket run in the same turn of
//! the task, and the connection then writes their responses together — 6,252 `writev` calls for
//! 100,000 responses on one connection with 16 streams. (With a task per stream, each finished
//! stream woke the connection, which wrote that one response; a wrapper that held each small write
//! back one scheduler turn was needed to batch them, and is gone.)
//!
//! The number of streams is bounded by the connection's `max_concurrent_streams`; the queue between
//! the executor and the runner holds only streams hyper has just started.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper's HTTP/2 connection builder.
#[derive(Clone)]
pub(super) struct ConnectionStreams(UnboundedSender<StreamFuture>);

/// The streams of one connection, run by [`StreamRunner::run`].
pub(super) struct StreamRunner {
    arriving: UnboundedReceiver<StreamFuture>,
    running: FuturesUnordered<StreamFuture>,
}

impl ConnectionStreams {
    pub(super) fn new() -> (ConnectionStreams, StreamRunner) {
        let (sender, arriving) = unbounded_channel();
        (ConnectionStreams(sender), StreamRunner { arriving, running: FuturesUnordered::new() })
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for ConnectionStreams {
    fn execute(&self, stream: F) {
        // The runner lives as long as the connection that calls this; a stream started after it is
        // gone belongs to a connection that is being dropped anyway.
        let _ = self.0.send(Box::pin(stream));
    }
}

impl StreamRunner {
    /// Runs the streams as they arrive; never completes (the connection's end ends it).
    pub(super) fn run(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |context| self.poll_streams(context))
    }

    fn poll_streams(&mut self, context: &mut Context<'_>) -> Poll<()> {
        loop {
            while let Poll::Ready(Some(stream)) = self.arriving.poll_recv(context) {
                self.running.push(stream);
            }
            // Pending (or empty) when no stream can go on; a stream that finished may have let
            // hyper start another, so look at the queue again.
            match Pin::new(&mut self.running).poll_next(context) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
