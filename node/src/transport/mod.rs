//! How requests reach the edge: the HTTP/1.1 and HTTP/2 listener (cleartext and TLS), HTTP/3 over
//! QUIC, sockets handed over by a supervisor, and the front door every request passes (limits,
//! request span, metrics, access log).
//!
//! # Layout
//!
//! - `http`: HTTP/1.1 + HTTP/2 on one TCP port, TLS by first byte, header and idle timeouts;
//!   `h2_streams`: an HTTP/2 connection's streams run in its own task (so the responses of the
//!   streams that are ready go out in one write); `send_file`: stored files sent with
//!   `sendfile` on plain HTTP/1.1 connections; `tls`: the certificate and its reloads;
//!   `proxy`: PROXY protocol and `X-Forwarded-For` from
//!   trusted proxies; `connections`: connections bounded per client network and in total.
//! - `http3`: HTTP/3 on the same port number over UDP (cargo feature `http3`).
//! - `sockets`: adopting sockets a supervisor bound (`HF_MIRROR_LISTEN_FDS`).
//! - `admission`: the front door; `limits`: the per-client quotas; `access_log`: the anonymised log.

/// The methods of an I/O wrapper that only pass the call on to its `inner` stream (the wrappers here
/// change how bytes are written, not how they are read, flushed or shut down).
macro_rules! pass_to_inner {
    (poll_read) => {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
            buffer: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(context, buffer)
        }
    };
    (poll_flush, poll_shutdown) => {
        fn poll_flush(mut self: std::pin::Pin<&mut Self>, context: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(context)
        }

        fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, context: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(context)
        }
    };
}

pub mod access_log;
pub mod admission;
pub mod connections;
mod h2_streams;
pub mod http;
#[cfg(feature = "http3")]
pub mod http3;
pub mod limits;
pub mod proxy;
mod send_file;
pub mod sockets;
pub mod tls;
