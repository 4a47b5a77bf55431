//! A small HTTP/3 client (`hf-mirror h3-get`), since Debian's curl has no HTTP/3.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};

/// A client connection: its request sender, and what must live as long as it.
struct ClientConnection {
    sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    endpoint: quinn::Endpoint,
    driving: tokio::task::JoinHandle<()>,
    uri: http::Uri,
}

impl ClientConnection {
    async fn open(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<ClientConnection> {
        let uri: http::Uri = url.parse().context("not a URL")?;
        anyhow::ensure!(uri.scheme_str() == Some("https"), "HTTP/3 needs an https:// URL");
        let host = uri.host().context("the URL has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let address = tokio::net::lookup_host((host.as_str(), port)).await?.next().context("the host resolves to nothing")?;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            use rustls::pki_types::pem::PemObject;
            for certificate in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
                roots.add(certificate?)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let bind: SocketAddr = if address.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?)));
        let connection = endpoint.connect(address, &host)?.await.context("QUIC handshake")?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
        let driving = tokio::spawn(async move {
            let _ = std::future::poll_fn(|context| driver.poll_close(context)).await;
        });
        Ok(ClientConnection { sender, endpoint, driving, uri })
    }

    /// Sends one request on the connection: (status, headers, body).
    async fn request(
        sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        uri: &http::Uri,
        headers: &[(String, String)],
        head: bool,
    ) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
        let mut request = http::Request::builder().method(if head { http::Method::HEAD } else { http::Method::GET }).uri(uri.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut stream = sender.send_request(request.body(())?).await?;
        stream.finish().await?;
        let response = stream.recv_response().await?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let (parts, ()) = response.into_parts();
        Ok((parts.status, parts.headers, body.freeze()))
    }

    fn close(self) {
        drop(self.sender);
        self.driving.abort();
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// One HTTP/3 GET (or HEAD): (status, headers, body).
pub async fn get(
    url: &str,
    ca: Option<&std::path::Path>,
    headers: &[(String, String)],
    head: bool,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    let mut connection = ClientConnection::open(url, ca).await?;
    let answer = ClientConnection::request(&mut connection.sender, &connection.uri, headers, head).await;
    connection.close();
    answer
}

/// `requests` GETs of `url` on one connection, `concurrency` streams at a time (a benchmark):
/// (successful answers, failures, time taken).
pub async fn load(url: &str, ca: Option<&std::path::Path>, requests: u64, concurrency: u64) -> anyhow::Result<(u64, u64, Duration)> {
    let connection = ClientConnection::open(url, ca).await?;
    let started = std::time::Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut sender, uri, next) = (connection.sender.clone(), connection.uri.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                match ClientConnection::request(&mut sender, &uri, &[], false).await {
                    Ok((status, ..)) if status.is_success() => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (worker_ok, worker_failed) = worker.await?;
        ok += worker_ok;
        failed += worker_failed;
    }
    let took = started.elapsed();
    connection.close();
    Ok((ok, failed, took))
}
