//! The HTTP listener: HTTP/1.1 and HTTP/2 on one TCP port, in cleartext (HTTP/2 by prior
//! knowledge) and over TLS (ALPN `h2`, `http/1.1`) when a certificate is configured.
//!
//! What a connection speaks is decided from its first bytes, read under the header timeout: a PROXY
//! header first when the peer is a trusted proxy; then TLS when the first byte is a handshake record
//! (0x16, which no HTTP request starts with); then HTTP/2 when the bytes are its preface. A
//! connection that sends nothing decisive in time is closed, as is one whose headers do not arrive
//! in time, an HTTP/1.1 connection idle between requests, and an HTTP/2 connection with no request
//! in flight for the idle timeout. Connections are bounded per client network and in total.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::admission::PublicApp;
use super::connections::{ConnectionLimits, ConnectionSlot};
use super::h2_streams::{ConnectionStreams, StreamRunner};
use super::proxy::{Prefixed, ProxyStart, TrustedProxies, forwarded_for, forwarded_scheme, read_proxy_start};
use super::send_file::SendingFiles;
use super::tls::TlsState;
use crate::common::zero_copy::ZeroCopySink;
use crate::edge::Arrival;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// What an HTTP/2 connection by prior knowledge starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long clients may take and how much one connection may carry.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// To send a request's headers (and, for a new connection, to say what it speaks and finish its
    /// TLS handshake); also how long an HTTP/1.1 connection may sit idle between requests.
    pub header_timeout: Duration,
    /// How long an HTTP/2 connection may have no request in flight.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection (and HTTP/3 requests per connection).
    pub streams_per_connection: u32,
    /// Who may name the client (PROXY protocol, `X-Forwarded-For`).
    pub trusted_proxies: TrustedProxies,
}

/// What every connection of the listener shares.
pub struct Site {
    pub app: PublicApp,
    pub tls: Option<TlsState>,
    /// Added to every response (HTTP/3 advertised while it runs).
    pub alt_svc: Option<http::HeaderValue>,
    pub limits: ConnectionLimits,
    pub settings: ConnectionSettings,
}

struct Listener {
    site: Site,
    stop: CancellationToken,
}

/// Serves `site` on `listener` until `stop`; then lets open connections finish for up to `grace`.
pub async fn serve(listener: TcpListener, site: Site, stop: CancellationToken, grace: Duration) -> anyhow::Result<()> {
    let shared = Arc::new(Listener { site, stop: stop.clone() });
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A trusted proxy carries many clients: it is bounded per client once it names them.
        let trusted = shared.site.settings.trusted_proxies.contains(remote.ip());
        let Some(slot) = shared.site.limits.try_open((!trusted).then_some(remote.ip())) else {
            debug!(%remote, "connection over the bound; closed");
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            // Without TCP_NODELAY a body written after its headers waits for the client's delayed ACK.
            warn!(%error, "cannot set TCP_NODELAY");
        }
        let shared = shared.clone();
        connections.spawn(async move {
            if let Err(error) = serve_connection(stream, remote, trusted, slot, &shared).await {
                debug!(%remote, error = format!("{error:#}"), "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        warn!("grace period over; cutting open connections");
    }
    Ok(())
}

/// Who a connection's requests come from.
#[derive(Clone, Copy)]
struct Peer {
    /// The client: the TCP peer, or the one a PROXY header named.
    client: SocketAddr,
    /// The TCP peer is a trusted proxy that sent no PROXY header: its requests name their client in
    /// `X-Forwarded-For`.
    forwarded: bool,
    tls: bool,
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    trusted: bool,
    mut slot: ConnectionSlot,
    shared: &Listener,
) -> anyhow::Result<()> {
    let timeout = shared.site.settings.header_timeout;
    let mut stream = stream;
    let mut peer = Peer { client: remote, forwarded: false, tls: false };
    let mut prefix = Vec::new();
    if trusted {
        match tokio::time::timeout(timeout, read_proxy_start(&mut stream)).await.context("no PROXY header in time")?? {
            ProxyStart::Header(Some(client)) => {
                anyhow::ensure!(shared.site.limits.assign(&mut slot, client.ip()), "the proxied client is over its connection bound");
                peer.client = client;
            }
            // The proxy's own health check.
            ProxyStart::Header(None) => {}
            ProxyStart::Plain(read) => {
                peer.forwarded = true;
                prefix = read;
            }
        }
    }
    let mut stream = Prefixed::new(prefix, stream);
    if stream.prefix().is_empty() {
        tokio::time::timeout(timeout, stream.read_more()).await.context("no first byte in time")??;
    }
    match &shared.site.tls {
        Some(tls) if stream.prefix()[0] == TLS_HANDSHAKE => {
            let accepted = tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await.context("TLS handshake timed out")??;
            let is_h2 = accepted.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            peer.tls = true;
            serve_http(accepted, is_h2, peer, shared, None).await
        }
        _ => {
            let is_h2 = tokio::time::timeout(timeout, speaks_h2(&mut stream)).await.context("no request in time")??;
            if is_h2 {
                return serve_http(stream, true, peer, shared, None).await;
            }
            // Plain HTTP/1.1: stored files go out with sendfile.
            let sink = ZeroCopySink::default();
            serve_http(SendingFiles::new(stream, sink.clone()), false, peer, shared, Some(sink)).await
        }
    }
}

/// Reads until the bytes either are HTTP/2's preface or cannot be.
async fn speaks_h2<S: AsyncRead + Unpin>(stream: &mut Prefixed<S>) -> std::io::Result<bool> {
    loop {
        let seen = stream.prefix();
        let compared = seen.len().min(H2_PREFACE.len());
        if seen[..compared] != H2_PREFACE[..compared] {
            return Ok(false);
        }
        if compared == H2_PREFACE.len() {
            return Ok(true);
        }
        stream.read_more().await?;
    }
}

/// Requests in flight on a connection and when that last changed, for the idle timeout.
struct InFlight {
    count: AtomicUsize,
    since: std::sync::Mutex<tokio::time::Instant>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight { count: AtomicUsize::new(0), since: std::sync::Mutex::new(tokio::time::Instant::now()) }
    }
}

impl InFlight {
    fn start(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        *self.since.lock().expect("in-flight clock poisoned") = tokio::time::Instant::now();
        InFlightGuard(self.clone())
    }

    /// How long the connection has had nothing in flight (`None` while something is).
    fn idle(&self) -> Option<Duration> {
        let since = *self.since.lock().expect("in-flight clock poisoned");
        (self.count.load(Ordering::SeqCst) == 0).then(|| since.elapsed())
    }
}

/// Holds a request in flight until its response body is sent or dropped.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        *self.0.since.lock().expect("in-flight clock poisoned") = tokio::time::Instant::now();
        self.0.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves HTTP on `io`; `zero_copy`: the sink its writer sends file stretches from (plain HTTP/1.1).
async fn serve_http<I>(io: I, is_h2: bool, peer: Peer, shared: &Listener, zero_copy: Option<ZeroCopySink>) -> anyhow::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests in flight matter to the HTTP/2 idle timeout only (an HTTP/1.1 connection's idle time
    // is hyper's header timeout): HTTP/1.1 answers go out unwrapped.
    let in_flight = is_h2.then(|| Arc::new(InFlight::default()));
    let service = {
        let (app, alt_svc, trusted, in_flight) =
            (shared.site.app.clone(), shared.site.alt_svc.clone(), shared.site.settings.trusted_proxies.clone(), in_flight.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let mut client = peer.client;
            let mut scheme = if peer.tls { "https" } else { "http" };
            if peer.forwarded {
                if let Some(address) = forwarded_for(request.headers(), &trusted) {
                    client = SocketAddr::new(address, 0);
                }
                scheme = forwarded_scheme(request.headers()).unwrap_or(scheme);
            }
            request.extensions_mut().insert(Arrival { client, scheme, zero_copy: zero_copy.clone() });
            let (app, alt_svc) = (app.clone(), alt_svc.clone());
            let guard = in_flight.as_ref().map(InFlight::start);
            async move {
                let mut response = app.call(request.map(axum::body::Body::new)).await;
                if let Some(alt_svc) = alt_svc {
                    response.headers_mut().insert(http::header::ALT_SVC, alt_svc);
                }
                if let Some(guard) = guard {
                    response = response.map(|body| axum::body::Body::new(GuardedBody { inner: body, _guard: guard }));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let settings = &shared.site.settings;
    if is_h2 {
        let (streams, mut runner) = ConnectionStreams::new();
        let mut builder = hyper::server::conn::http2::Builder::new(streams);
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.streams_per_connection)
            // Rapid reset (CVE-2023-44487): streams a client opens and cancels are bounded.
            .max_pending_accept_reset_streams(20usize)
            .max_local_error_reset_streams(256usize)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_header_list_size(64 << 10);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        drive(connection, &shared.stop, in_flight.map(|in_flight| (in_flight, settings.idle_timeout)), Some(&mut runner)).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Armed at the start of every request's headers, including while the connection waits
            // for the next request: it is also the idle timeout of a kept-alive connection.
            .header_read_timeout(settings.header_timeout)
            // hyper's default bound on the header count (100) is kept: it parses into an array on
            // the stack, where any other bound costs a 4 KiB allocation per request.
            // Body buffers handed to the writer as they are: zero-copy placeholders must not be
            // copied (`send_file`).
            .writev(true)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        drive(connection, &shared.stop, None, None).await
    }
}

/// Runs a connection, and the streams of an HTTP/2 connection, until it ends; on `stop` (or after
/// `idle` with no request in flight) it is asked to finish what it serves and close. Streams still
/// running when the connection has ended are dropped with it: their client is gone.
async fn drive<C>(
    connection: C,
    stop: &CancellationToken,
    idle: Option<(Arc<InFlight>, Duration)>,
    streams: Option<&mut StreamRunner>,
) -> anyhow::Result<()>
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(connection);
    // Made once: the loop turns for every stream that starts or ends.
    let streams = async {
        match streams {
            Some(streams) => streams.run().await,
            None => std::future::pending().await,
        }
    };
    let stopped = stop.cancelled();
    let idled = idle_for(idle.as_ref());
    tokio::pin!(streams, stopped, idled);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result.map_err(|error| anyhow::anyhow!("{error}")),
            () = &mut streams => {}
            () = &mut stopped, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idled, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Completes once the connection had no request in flight for the whole idle period (never when
/// there is no idle timeout).
async fn idle_for(idle: Option<&(Arc<InFlight>, Duration)>) {
    let Some((in_flight, period)) = idle else { return std::future::pending().await };
    loop {
        match in_flight.idle() {
            Some(idle) if idle >= *period => return,
            Some(idle) => tokio::time::sleep(*period - idle).await,
            None => tokio::time::sleep(*period).await,
        }
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct GuardedBody {
    inner: axum::body::Body,
    _guard: InFlightGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    use super::*;

    /// An HTTP/2 connection served the way the listener serves one, over an in-memory pipe. `/held`
    /// answers `first ` at once and `last` only once `release` has a permit; any other path answers
    /// both at once.
    struct Served {
        client: h2::client::SendRequest<Bytes>,
        release: Arc<Semaphore>,
        server: JoinHandle<anyhow::Result<()>>,
        stop: CancellationToken,
    }

    async fn served(idle: Option<Duration>) -> Served {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let release = Arc::new(Semaphore::new(0));
        let stop = CancellationToken::new();
        let in_flight = idle.map(|_| Arc::new(InFlight::default()));
        let service = {
            let (release, in_flight) = (release.clone(), in_flight.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let held = request.uri().path() == "/held";
                let release = release.clone();
                let guard = in_flight.as_ref().map(InFlight::start);
                async move {
                    let parts = futures_util::stream::unfold(0, move |step| {
                        let release = release.clone();
                        async move {
                            match step {
                                0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first ")), 1)),
                                1 => {
                                    if held {
                                        release.acquire().await.expect("release closed").forget();
                                    }
                                    Some((Ok(Bytes::from_static(b"last")), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    let mut body = axum::body::Body::from_stream(parts);
                    if let Some(guard) = guard {
                        body = axum::body::Body::new(GuardedBody { inner: body, _guard: guard });
                    }
                    Ok::<_, Infallible>(hyper::Response::new(body))
                }
            })
        };
        let server = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (streams, mut runner) = ConnectionStreams::new();
                let connection = hyper::server::conn::http2::Builder::new(streams)
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(server_io), service);
                drive(connection, &stop, in_flight.zip(idle), Some(&mut runner)).await
            })
        };
        let (client, connection) = h2::client::handshake(client_io).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Served { client, release, server, stop }
    }

    /// Sends a GET and reads its first data frame.
    async fn started(client: &h2::client::SendRequest<Bytes>, path: &str) -> (Bytes, h2::RecvStream) {
        tokio::time::timeout(Duration::from_secs(10), start(client, path)).await.expect("an answer within 10 s")
    }

    async fn start(client: &h2::client::SendRequest<Bytes>, path: &str) -> (Bytes, h2::RecvStream) {
        let mut client = client.clone().ready().await.expect("connection ready");
        let request = http::Request::get(format!("http://mirror{path}")).body(()).expect("request");
        let (response, _) = client.send_request(request, true).expect("request sent");
        let mut body = response.await.expect("response").into_body();
        let first = body.data().await.expect("a first frame").expect("first frame");
        body.flow_control().release_capacity(first.len()).expect("capacity");
        (first, body)
    }

    async fn rest(body: h2::RecvStream) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), read_rest(body)).await.expect("the rest within 10 s")
    }

    async fn read_rest(mut body: h2::RecvStream) -> Vec<u8> {
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data frame");
            body.flow_control().release_capacity(chunk.len()).expect("capacity");
            text.extend_from_slice(&chunk);
        }
        text
    }

    async fn get(client: &h2::client::SendRequest<Bytes>, path: &str) -> Vec<u8> {
        let (first, body) = started(client, path).await;
        [first.to_vec(), rest(body).await].concat()
    }

    async fn ended(server: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("the connection ended").expect("server task")
    }

    #[tokio::test]
    async fn the_streams_of_one_http2_connection_run_side_by_side() {
        let served = served(None).await;
        let (first, held) = started(&served.client, "/held").await;
        assert_eq!(&first[..], b"first ");
        // A stream waiting on its body does not hold up the connection's other streams.
        for _ in 0..20 {
            assert_eq!(get(&served.client, "/quick").await, b"first last");
        }
        let answers: Vec<_> = futures_util::future::join_all((0..8).map(|_| get(&served.client, "/quick"))).await;
        assert!(answers.iter().all(|answer| answer == b"first last"), "{answers:?}");
        served.release.add_permits(1);
        assert_eq!(rest(held).await, b"last");
        assert!(!served.server.is_finished(), "the connection stays open while its client keeps it");
    }

    #[tokio::test]
    async fn a_stop_lets_the_streams_in_flight_finish_then_closes_the_connection() {
        let Served { client, release, server, stop } = served(None).await;
        let (_, held) = started(&client, "/held").await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!server.is_finished(), "a stream in flight keeps its connection through a graceful stop");
        release.add_permits(1);
        assert_eq!(rest(held).await, b"last", "the stream in flight is answered in full");
        ended(server).await.expect("the connection closes cleanly");
    }

    #[tokio::test]
    async fn the_idle_timeout_waits_for_the_streams_in_flight() {
        let idle = Duration::from_millis(150);
        let Served { client, release, server, .. } = served(Some(idle)).await;
        let (_, held) = started(&client, "/held").await;
        tokio::time::sleep(idle * 4).await;
        assert!(!server.is_finished(), "a stream in flight is not idle");
        release.add_permits(1);
        assert_eq!(rest(held).await, b"last");
        // Ended by the node (the client keeps its handle); the client's close after the GOAWAY may
        // make hyper call it a connection error.
        let _ = ended(server).await;
    }
}
