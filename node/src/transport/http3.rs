//! HTTP/3 (QUIC, h3) on the HTTP port's number over UDP, serving the same router as HTTP/1.1 and
//! HTTP/2; runs only with TLS (QUIC has no cleartext), and the other protocols advertise it with
//! `Alt-Svc` only while it runs. Connections share the TCP listener's bounds: per client network and
//! in total, concurrent requests per connection, the header timeout and the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::admission::PublicApp;
use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::connections::ConnectionLimits;
use super::http::ConnectionSettings;

/// The most request-body bytes read (the same bound as the other protocols' pass-through bodies).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// Handshakes a node answers at once; beyond, new ones are refused until some complete.
const MAX_PENDING_HANDSHAKES: usize = 4096;

/// The QUIC server configuration for a TLS configuration: the same certificate, ALPN `h3`, and the
/// connection bounds.
fn quic_config(tls: &rustls::ServerConfig, settings: &ConnectionSettings) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("the TLS configuration does not suit QUIC")?;
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout).context("the idle timeout does not suit QUIC")?;
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(settings.streams_per_connection))
        // h3 needs three from the client: control, QPACK encoder and decoder.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(Some(idle));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport)).max_incoming(MAX_PENDING_HANDSHAKES);
    Ok(server)
}

/// A running HTTP/3 endpoint.
pub struct Http3 {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Http3 {
    /// Binds UDP `address` and serves `app` until [`Http3::shutdown`].
    pub fn start(
        address: SocketAddr,
        tls: &super::tls::TlsState,
        app: PublicApp,
        limits: ConnectionLimits,
        settings: ConnectionSettings,
    ) -> anyhow::Result<Http3> {
        let endpoint = quinn::Endpoint::server(quic_config(&tls.current(), &settings)?, address)
            .with_context(|| format!("binding UDP {address} for HTTP/3"))?;
        let reloaded = endpoint.clone();
        let reload_settings = settings.clone();
        tls.on_reload(Box::new(move |config| match quic_config(config, &reload_settings) {
            Ok(quic) => reloaded.set_server_config(Some(quic)),
            Err(error) => warn!(error = format!("{error:#}"), "HTTP/3 keeps its old certificate"),
        }));
        let accepting = endpoint.clone();
        let header_timeout = settings.header_timeout;
        let task = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Some(slot) = limits.try_open(Some(incoming.remote_address().ip())) else {
                    incoming.refuse();
                    continue;
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(error) = serve_connection(incoming, app, header_timeout).await {
                        debug!(error = format!("{error:#}"), "HTTP/3 connection ended with an error");
                    }
                });
            }
        });
        Ok(Http3 { endpoint, task })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection (after up to `grace` for them to go idle) and stops.
    pub async fn shutdown(self, grace: Duration) {
        self.endpoint.set_server_config(None);
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.endpoint.close(0u32.into(), b"shutting down");
        self.task.abort();
    }
}

async fn serve_connection(incoming: quinn::Incoming, app: PublicApp, header_timeout: Duration) -> anyhow::Result<()> {
    let connection = incoming.await?;
    let remote = connection.remote_address();
    let mut h3_connection: h3::server::Connection<h3_quinn::Connection, Bytes> =
        h3::server::Connection::new(h3_quinn::Connection::new(connection)).await?;
    loop {
        match h3_connection.accept().await {
            Ok(Some(resolver)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_request(resolver, remote, app, header_timeout).await {
                        debug!(%remote, error = format!("{error:#}"), "HTTP/3 request ended with an error");
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(error) if error.is_h3_no_error() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}

async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    remote: SocketAddr,
    app: PublicApp,
    header_timeout: Duration,
) -> anyhow::Result<()> {
    // The headers and the (small, bounded) body must arrive within the header timeout: h3 itself
    // waits for ever.
    let (request, mut stream, body) = tokio::time::timeout(header_timeout, async {
        let (request, mut stream) = resolver.resolve_request().await?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            anyhow::ensure!(body.len() + chunk.remaining() <= MAX_REQUEST_BODY, "request body over {MAX_REQUEST_BODY} bytes");
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok((request, stream, body))
    })
    .await
    .context("the request did not arrive in time")??;
    let (parts, ()) = request.into_parts();
    let mut request = http::Request::from_parts(parts, axum::body::Body::from(body.freeze()));
    request.extensions_mut().insert(crate::edge::Arrival { client: remote, scheme: "https", zero_copy: None });
    let response = app.call(request).await;
    let (parts, body) = response.into_parts();
    stream.send_response(http::Response::from_parts(parts, ())).await?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        stream.send_data(chunk?).await?;
    }
    stream.finish().await?;
    Ok(())
}
