//! HTTP/3 (QUIC, h3) on the HTTP port's number over UDP, serving the same router as HTTP/1.1 and
//! HTTP/2; runs only with TLS (QUIC has no cleartext), and the other protocols advertise it with
//! `Alt-Svc` only while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tracing::{debug, warn};

/// The most request-body bytes read (the same bound as the other protocols' pass-through bodies).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// The QUIC server configuration for a TLS configuration: the same certificate, ALPN `h3`.
fn quic_config(tls: &rustls::ServerConfig) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("the TLS configuration does not suit QUIC")?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A running HTTP/3 endpoint.
pub struct Http3 {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Http3 {
    /// Binds UDP `address` and serves `app` until [`Http3::shutdown`].
    pub fn start(address: SocketAddr, tls: &super::http::TlsState, app: Router) -> anyhow::Result<Http3> {
        let endpoint =
            quinn::Endpoint::server(quic_config(&tls.current())?, address).with_context(|| format!("binding UDP {address} for HTTP/3"))?;
        let reloaded = endpoint.clone();
        tls.on_reload(Box::new(move |config| match quic_config(config) {
            Ok(quic) => reloaded.set_server_config(Some(quic)),
            Err(error) => warn!(error = format!("{error:#}"), "HTTP/3 keeps its old certificate"),
        }));
        let accepting = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(incoming, app).await {
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

async fn serve_connection(incoming: quinn::Incoming, app: Router) -> anyhow::Result<()> {
    let connection = incoming.await?;
    let remote = connection.remote_address();
    let mut h3_connection: h3::server::Connection<h3_quinn::Connection, Bytes> =
        h3::server::Connection::new(h3_quinn::Connection::new(connection)).await?;
    loop {
        match h3_connection.accept().await {
            Ok(Some(resolver)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_request(resolver, remote, app).await {
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
    app: Router,
) -> anyhow::Result<()> {
    let (request, mut stream) = resolver.resolve_request().await?;
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        anyhow::ensure!(body.len() + chunk.remaining() <= MAX_REQUEST_BODY, "request body over {MAX_REQUEST_BODY} bytes");
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let (parts, ()) = request.into_parts();
    let mut request = http::Request::from_parts(parts, axum::body::Body::from(body.freeze()));
    request.extensions_mut().insert(ConnectInfo(remote));
    request.extensions_mut().insert(crate::edge::RequestScheme("https"));
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap_or_else(|never| match never {});
    let (parts, body) = response.into_parts();
    stream.send_response(http::Response::from_parts(parts, ())).await?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        stream.send_data(chunk?).await?;
    }
    stream.finish().await?;
    Ok(())
}
