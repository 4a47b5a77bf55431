//! The QUIC endpoint every node runs for its peers: it serves blob fills from the node's
//! [`LocalBlobs`] and fetches from other nodes, one cached connection per peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::protocol::{FillRequest, FillResponse, FrameError, PEER_ALPN, PeerRequest, RpcResponse, read_frame, write_frame};
use super::tls::PeerTls;

/// A stream of blob bytes.
pub type BlobBytes = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How long a peer may take to connect or to answer a request's header before it counts as
/// unreachable; the caller then moves on to another source.
const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes per read on the receiving side.
const RECEIVE_CHUNK: usize = 1 << 20;

/// What a node offers its peers.
pub enum PeerOpen {
    Sending { size: u64, start: u64, bytes: BlobBytes },
    NotHere,
    Unavailable(String),
}

/// The node's side of peer fills: what it holds, is filling, or (as fill leader) will fetch.
#[async_trait::async_trait]
pub trait LocalBlobs: Send + Sync + 'static {
    async fn open_for_peer(&self, request: &FillRequest) -> PeerOpen;
}

/// The RPC services a node offers its peers, by name.
pub type RpcServices = HashMap<String, Arc<dyn RpcHandler>>;

/// Answers opaque RPCs from peers (the Raft catalog's messages, metadata requests). `caller` is the
/// topology name the calling node's certificate was issued to: a handler refuses a message that
/// claims to come from another node.
#[async_trait::async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    async fn handle(&self, caller: &str, request: Vec<u8>) -> Result<Vec<u8>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer endpoint: {0}")]
    Setup(String),
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("peer {peer} broke the protocol: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("peer {peer} does not have the blob")]
    NotHere { peer: String },
    #[error("peer {peer} cannot serve now: {reason}")]
    Unavailable { peer: String, reason: String },
    #[error("peer {peer} failed the call: {reason}")]
    Remote { peer: String, reason: String },
}

/// Where a peer is: its topology name (the TLS server name) and its QUIC address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    pub name: String,
    pub address: SocketAddr,
}

/// A cheap handle on the node's QUIC endpoint.
#[derive(Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    connections: Arc<Mutex<HashMap<PeerAddress, quinn::Connection>>>,
    /// Connections closed because their certificate named no member of the topology.
    refused: Arc<AtomicU64>,
}

/// The QUIC close code for a peer whose certificate names no member.
const NOT_A_MEMBER: u32 = 0x101;

/// The topology name the peer's certificate was issued to (the chain was verified against the
/// cluster CA during the handshake): its subject alternative name must be one of `members`.
fn peer_node_name<'a>(connection: &quinn::Connection, members: &'a [String]) -> Option<&'a str> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = rustls::server::ParsedCertificate::try_from(chain.first()?).ok()?;
    members
        .iter()
        .map(String::as_str)
        .find(|name| ServerName::try_from(*name).is_ok_and(|server_name| rustls::client::verify_server_name(&leaf, &server_name).is_ok()))
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(20)).expect("20 s is a valid idle timeout")));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    // Room for a fast LAN/WAN path: 16 MiB per stream, 64 MiB per connection in flight.
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    transport.receive_window(quinn::VarInt::from_u32(64 << 20));
    transport.send_window(64 << 20);
    Arc::new(transport)
}

impl PeerEndpoint {
    /// Binds the UDP socket and sets up both directions with the node's TLS identity.
    pub fn bind(address: SocketAddr, tls: &PeerTls) -> Result<PeerEndpoint, PeerError> {
        let socket = std::net::UdpSocket::bind(address).map_err(|error| PeerError::Setup(format!("binding {address}: {error}")))?;
        PeerEndpoint::on_socket(socket, tls)
    }

    /// Serves and dials on a socket bound before (handed over by a supervisor or a test harness).
    pub fn on_socket(socket: std::net::UdpSocket, tls: &PeerTls) -> Result<PeerEndpoint, PeerError> {
        let server_crypto = QuicServerConfig::try_from(tls.server.clone()).map_err(|error| PeerError::Setup(error.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport_config());
        let client_crypto = QuicClientConfig::try_from(tls.client.clone()).map_err(|error| PeerError::Setup(error.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport_config());
        let runtime = quinn::default_runtime().ok_or_else(|| PeerError::Setup("no async runtime for QUIC".into()))?;
        let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
            .map_err(|error| PeerError::Setup(format!("opening the QUIC endpoint: {error}")))?;
        endpoint.set_default_client_config(client);
        Ok(PeerEndpoint { endpoint, connections: Arc::new(Mutex::new(HashMap::new())), refused: Arc::default() })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// How many connections were closed because their certificate named no member.
    pub fn refused_peers(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Serves peers until `shutdown`; every connection and stream task is owned by a tracker and
    /// awaited before returning. Only nodes of `members` are served, each knowing only as itself.
    pub async fn serve(&self, blobs: Arc<dyn LocalBlobs>, services: RpcServices, members: Vec<String>, shutdown: CancellationToken) {
        let rpc = Arc::new(services);
        let members = Arc::new(members);
        let tasks = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                () = shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let blobs = blobs.clone();
            let rpc = rpc.clone();
            let members = members.clone();
            let refused = self.refused.clone();
            let shutdown = shutdown.clone();
            let stream_tasks = tasks.clone();
            tasks.spawn(async move {
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(error) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        debug!(%error, "peer handshake failed");
                        return;
                    }
                };
                let remote = connection.remote_address();
                let Some(caller) = peer_node_name(&connection, &members).map(str::to_owned) else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, "a peer certificate names no member of the topology; closing");
                    connection.close(quinn::VarInt::from_u32(NOT_A_MEMBER), b"certificate names no member");
                    return;
                };
                loop {
                    let stream = tokio::select! {
                        stream = connection.accept_bi() => stream,
                        () = shutdown.cancelled() => break,
                    };
                    let Ok((send, receive)) = stream else { break };
                    let blobs = blobs.clone();
                    let rpc = rpc.clone();
                    let caller = caller.clone();
                    stream_tasks.spawn(async move {
                        if let Err(error) = serve_stream(blobs.as_ref(), &rpc, &caller, send, receive).await {
                            debug!(%remote, %error, "peer fill stream ended with an error");
                        }
                    });
                }
            });
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        tasks.close();
        tasks.wait().await;
        info!("peer endpoint stopped");
    }

    async fn connection(&self, peer: &PeerAddress) -> Result<quinn::Connection, PeerError> {
        if let Some(connection) = self.connections.lock().expect("connections poisoned").get(peer)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let unreachable = |reason: String| PeerError::Unreachable { peer: peer.name.clone(), reason };
        let connecting = self.endpoint.connect(peer.address, &peer.name).map_err(|error| unreachable(error.to_string()))?;
        let connection = tokio::time::timeout(PEER_ANSWER_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|error| unreachable(error.to_string()))?;
        self.connections.lock().expect("connections poisoned").insert(peer.clone(), connection.clone());
        Ok(connection)
    }

    /// Stops handing out `connection` for `peer` (it stays open for the streams already on it): the
    /// next call dials afresh. A connection on which a peer stopped answering may belong to a
    /// process that was killed and started again; QUIC would only notice at the idle timeout, while
    /// a new handshake reaches the new process at once (or fails fast if the peer is gone).
    fn forget(&self, peer: &PeerAddress, connection: &quinn::Connection) {
        let mut connections = self.connections.lock().expect("connections poisoned");
        if connections.get(peer).is_some_and(|cached| cached.stable_id() == connection.stable_id()) {
            connections.remove(peer);
        }
    }

    /// Sends an opaque RPC to a peer and returns its answer, within `timeout`.
    pub async fn call(&self, peer: &PeerAddress, service: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable { peer: peer.name.clone(), reason };
        let deadline = tokio::time::Instant::now() + timeout;
        let connection =
            tokio::time::timeout_at(deadline, self.connection(peer)).await.map_err(|_| unreachable("connect timed out".into()))??;
        let exchange = async {
            let (mut send, mut receive) = connection.open_bi().await.map_err(|error| unreachable(error.to_string()))?;
            write_frame(&mut send, &PeerRequest::Rpc { service: service.to_owned(), body: request })
                .await
                .map_err(|error| unreachable(error.to_string()))?;
            send.finish().map_err(|error| unreachable(error.to_string()))?;
            read_frame::<RpcResponse>(&mut receive).await.map_err(|error| unreachable(error.to_string()))
        };
        let Ok(answer) = tokio::time::timeout_at(deadline, exchange).await else {
            self.forget(peer, &connection);
            return Err(unreachable("no answer in time".into()));
        };
        match answer? {
            RpcResponse::Ok(bytes) => Ok(bytes),
            RpcResponse::Failed(reason) => Err(PeerError::Remote { peer: peer.name.clone(), reason }),
        }
    }

    /// Asks a peer for a blob. Returns the offset the bytes start at and the bytes.
    pub async fn fetch(&self, peer: &PeerAddress, request: &FillRequest) -> Result<(u64, BlobBytes), PeerError> {
        let connection = self.connection(peer).await?;
        let protocol = |reason: String| PeerError::Protocol { peer: peer.name.clone(), reason };
        let exchange = async {
            let (mut send, mut receive) = connection
                .open_bi()
                .await
                .map_err(|error| PeerError::Unreachable { peer: peer.name.clone(), reason: error.to_string() })?;
            write_frame(&mut send, &PeerRequest::Fill(request.clone())).await.map_err(|error| protocol(error.to_string()))?;
            send.finish().map_err(|error| protocol(error.to_string()))?;
            let response: FillResponse = read_frame(&mut receive).await.map_err(|error| match error {
                FrameError::Io(io) => PeerError::Unreachable { peer: peer.name.clone(), reason: io.to_string() },
                other => protocol(other.to_string()),
            })?;
            Ok::<_, PeerError>((response, receive))
        };
        let Ok(answer) = tokio::time::timeout(PEER_ANSWER_TIMEOUT, exchange).await else {
            self.forget(peer, &connection);
            return Err(PeerError::Unreachable { peer: peer.name.clone(), reason: "no answer in time".into() });
        };
        let (response, receive) = answer?;
        match response {
            FillResponse::Sending { size, start } => {
                if size != request.size || start > request.start {
                    return Err(protocol(format!("offered bytes {start}.. of {size}, asked {}.. of {}", request.start, request.size)));
                }
                let bytes = futures_util::stream::unfold(receive, |mut receive| async move {
                    match receive.read_chunk(RECEIVE_CHUNK, true).await {
                        Ok(Some(chunk)) => Some((Ok(chunk.bytes), receive)),
                        Ok(None) => None,
                        Err(error) => Some((Err(std::io::Error::other(error)), receive)),
                    }
                });
                Ok((start, Box::pin(bytes)))
            }
            FillResponse::NotHere => Err(PeerError::NotHere { peer: peer.name.clone() }),
            FillResponse::Unavailable { reason } => Err(PeerError::Unavailable { peer: peer.name.clone(), reason }),
        }
    }
}

/// Answers one request on its stream.
async fn serve_stream(
    blobs: &dyn LocalBlobs,
    rpc: &RpcServices,
    caller: &str,
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
) -> Result<(), String> {
    let request = match read_frame::<PeerRequest>(&mut receive).await.map_err(|error| error.to_string())? {
        PeerRequest::Fill(request) => request,
        PeerRequest::Rpc { service, body } => {
            let response = match rpc.get(&service) {
                Some(handler) => match handler.handle(caller, body).await {
                    Ok(answer) => RpcResponse::Ok(answer),
                    Err(reason) => RpcResponse::Failed(reason),
                },
                None => RpcResponse::Failed(format!("this node has no {service:?} service")),
            };
            write_frame(&mut send, &response).await.map_err(|error| error.to_string())?;
            return send.finish().map_err(|error| error.to_string());
        }
    };
    if request.start > request.size {
        write_frame(&mut send, &FillResponse::Unavailable { reason: "start past the end".into() })
            .await
            .map_err(|error| error.to_string())?;
        return send.finish().map_err(|error| error.to_string());
    }
    match blobs.open_for_peer(&request).await {
        PeerOpen::Sending { size, start, mut bytes } => {
            write_frame(&mut send, &FillResponse::Sending { size, start }).await.map_err(|error| error.to_string())?;
            while let Some(chunk) = bytes.next().await {
                match chunk {
                    Ok(chunk) => send.write_chunk(chunk).await.map_err(|error| error.to_string())?,
                    Err(error) => {
                        // A reset, not a clean end: the receiver must not take a short blob as whole.
                        warn!(etag = %request.etag, %error, "local source failed while serving a peer");
                        let _ = send.reset(1u32.into());
                        return Err(error.to_string());
                    }
                }
            }
            send.finish().map_err(|error| error.to_string())
        }
        PeerOpen::NotHere => {
            write_frame(&mut send, &FillResponse::NotHere).await.map_err(|error| error.to_string())?;
            send.finish().map_err(|error| error.to_string())
        }
        PeerOpen::Unavailable(reason) => {
            write_frame(&mut send, &FillResponse::Unavailable { reason }).await.map_err(|error| error.to_string())?;
            send.finish().map_err(|error| error.to_string())
        }
    }
}

/// The ALPN list of the peer endpoint.
pub fn peer_alpn() -> Vec<&'static [u8]> {
    vec![PEER_ALPN]
}
