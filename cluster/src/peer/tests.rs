//! Peer transport tests: two real QUIC endpoints on loopback with certificates from a fresh CA.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::certs::{generate_cluster_certs, issue_cluster_certs};
use super::protocol::FillRequest;
use super::tls::PeerTls;
use super::*;

/// Blobs held in memory; `broken` ones fail half-way through.
struct MemoryBlobs {
    blobs: HashMap<String, Bytes>,
    broken: bool,
}

#[async_trait::async_trait]
impl LocalBlobs for MemoryBlobs {
    async fn open_for_peer(&self, request: &FillRequest) -> PeerOpen {
        let Some(blob) = self.blobs.get(&request.etag).cloned() else { return PeerOpen::NotHere };
        let tail = blob.slice(request.start as usize..);
        let mut chunks: Vec<std::io::Result<Bytes>> = tail.chunks(100_000).map(|chunk| Ok(Bytes::copy_from_slice(chunk))).collect();
        if self.broken {
            chunks.truncate(chunks.len() / 2);
            chunks.push(Err(std::io::Error::other("disk read failed")));
        }
        PeerOpen::Sending { size: blob.len() as u64, start: request.start, bytes: Box::pin(futures_util::stream::iter(chunks)) }
    }
}

fn endpoint(directory: &std::path::Path, name: &str) -> PeerEndpoint {
    let tls = PeerTls::load(directory, name, &peer_alpn()).unwrap();
    PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &tls).unwrap()
}

async fn collect(mut bytes: BlobBytes) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    while let Some(chunk) = bytes.next().await {
        all.extend_from_slice(&chunk?);
    }
    Ok(all)
}

/// Serves `blobs` from `server` until the returned token is cancelled.
fn serve_in_background(
    server: &PeerEndpoint,
    name: &str,
    blobs: Arc<MemoryBlobs>,
) -> (PeerAddress, CancellationToken, tokio::task::JoinHandle<()>) {
    serve_with(server, name, blobs, RpcServices::new())
}

/// Like [`serve_in_background`], with RPC services.
fn serve_with(
    server: &PeerEndpoint,
    name: &str,
    blobs: Arc<MemoryBlobs>,
    services: RpcServices,
) -> (PeerAddress, CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let server = server.clone();
        let shutdown = shutdown.clone();
        async move { server.serve(blobs, services, vec!["a".into(), "b".into(), "c".into()], shutdown).await }
    });
    (PeerAddress { name: name.into(), address: server.local_addr().unwrap() }, shutdown, serving)
}

fn request(etag: &str, size: u64, start: u64) -> FillRequest {
    FillRequest { etag: etag.into(), size, start, origin: None }
}

#[tokio::test]
async fn a_peer_serves_ranges_of_what_it_holds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = tempfile::tempdir().unwrap();
    generate_cluster_certs(directory.path(), "test", &["a".into(), "b".into()]).unwrap();
    let (client, server) = (endpoint(directory.path(), "a"), endpoint(directory.path(), "b"));
    let blob: Bytes = (0..1_000_000u32).map(|index| (index % 251) as u8).collect::<Vec<_>>().into();
    let blobs = Arc::new(MemoryBlobs { blobs: HashMap::from([("e1".to_owned(), blob.clone())]), broken: false });
    let (peer, shutdown, serving) = serve_in_background(&server, "b", blobs);
    let (start, bytes) = client.fetch(&peer, &request("e1", blob.len() as u64, 0)).await.unwrap();
    assert_eq!(start, 0);
    assert_eq!(collect(bytes).await.unwrap(), blob);
    let (start, bytes) = client.fetch(&peer, &request("e1", blob.len() as u64, 654_321)).await.unwrap();
    assert_eq!(start, 654_321);
    assert_eq!(collect(bytes).await.unwrap(), blob[654_321..]);
    assert!(matches!(client.fetch(&peer, &request("missing", 5, 0)).await, Err(PeerError::NotHere { .. })));
    // A size that disagrees with the peer's is a protocol error, not bytes of another blob.
    assert!(matches!(client.fetch(&peer, &request("e1", 5, 0)).await, Err(PeerError::Protocol { .. })));
    shutdown.cancel();
    serving.await.unwrap();
}

#[tokio::test]
async fn a_peer_failing_mid_stream_is_an_error_not_a_short_blob() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = tempfile::tempdir().unwrap();
    generate_cluster_certs(directory.path(), "test", &["a".into(), "b".into()]).unwrap();
    let (client, server) = (endpoint(directory.path(), "a"), endpoint(directory.path(), "b"));
    let blob = Bytes::from(vec![7u8; 800_000]);
    let blobs = Arc::new(MemoryBlobs { blobs: HashMap::from([("e1".to_owned(), blob.clone())]), broken: true });
    let (peer, shutdown, serving) = serve_in_background(&server, "b", blobs);
    // The reset may overtake the header (then fetch fails) or cut the bytes (then the stream fails);
    // either way the caller never sees a clean end.
    match client.fetch(&peer, &request("e1", blob.len() as u64, 0)).await {
        Ok((_, bytes)) => assert!(collect(bytes).await.is_err()),
        Err(error) => assert!(matches!(error, PeerError::Unreachable { .. }), "{error}"),
    }
    shutdown.cancel();
    serving.await.unwrap();
}

/// Answers with the name of the node that called.
struct WhoCalled;

#[async_trait::async_trait]
impl RpcHandler for WhoCalled {
    async fn handle(&self, caller: &str, _request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(caller.as_bytes().to_vec())
    }
}

fn who_called() -> RpcServices {
    [("who".to_owned(), Arc::new(WhoCalled) as Arc<dyn RpcHandler>)].into()
}

#[tokio::test]
async fn the_server_names_its_caller_from_the_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = tempfile::tempdir().unwrap();
    generate_cluster_certs(directory.path(), "test", &["a".into(), "b".into()]).unwrap();
    let (client, server) = (endpoint(directory.path(), "a"), endpoint(directory.path(), "b"));
    let blobs = Arc::new(MemoryBlobs { blobs: HashMap::new(), broken: false });
    let (peer, shutdown, serving) = serve_with(&server, "b", blobs, who_called());
    let answer = client.call(&peer, "who", Vec::new(), std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, b"a");
    assert_eq!(server.refused_peers(), 0);
    shutdown.cancel();
    serving.await.unwrap();
}

#[tokio::test]
async fn the_server_refuses_a_foreign_ca_and_a_name_outside_the_topology() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    generate_cluster_certs(ours.path(), "ours", &["a".into(), "b".into(), "mallory".into()]).unwrap();
    generate_cluster_certs(theirs.path(), "theirs", &["a".into()]).unwrap();
    // The intruders trust our CA, so their side of the handshake accepts the server: whatever fails
    // is the server's refusal.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::copy(ours.path().join("ca.pem"), foreign.path().join("ca.pem")).unwrap();
    std::fs::copy(theirs.path().join("a.pem"), foreign.path().join("a.pem")).unwrap();
    std::fs::copy(theirs.path().join("a.key"), foreign.path().join("a.key")).unwrap();
    let server = endpoint(ours.path(), "b");
    let blobs = Arc::new(MemoryBlobs { blobs: HashMap::from([("e1".to_owned(), Bytes::from_static(b"secret"))]), broken: false });
    let (peer, shutdown, serving) = serve_with(&server, "b", blobs, who_called());
    // Another cluster's certificate for a member's name: refused in the handshake.
    let foreign_client = endpoint(foreign.path(), "a");
    assert!(foreign_client.fetch(&peer, &request("e1", 6, 0)).await.is_err());
    assert_eq!(server.refused_peers(), 1, "the server refused the foreign CA");
    // Our CA's certificate for a name that is no member of the topology the server serves.
    let outsider = endpoint(ours.path(), "mallory");
    assert!(outsider.call(&peer, "who", Vec::new(), std::time::Duration::from_secs(5)).await.is_err());
    assert!(outsider.fetch(&peer, &request("e1", 6, 0)).await.is_err());
    assert!(server.refused_peers() >= 2, "the server refused the outsider: {}", server.refused_peers());
    shutdown.cancel();
    serving.await.unwrap();
}

#[tokio::test]
async fn certificates_are_issued_under_the_existing_ca_and_kept_unless_reissued() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = tempfile::tempdir().unwrap();
    let read = |name: &str| std::fs::read(directory.path().join(name)).unwrap();
    let first = generate_cluster_certs(directory.path(), "test", &["a".into(), "b".into()]).unwrap();
    assert!(first.new_ca && first.issued == ["a", "b"]);
    let (ca, a_cert, b_cert, gossip) = (read("ca.pem"), read("a.pem"), read("b.pem"), read("gossip.key"));
    // A node added to the topology: one new certificate, under the same CA; nothing else changes.
    let added = generate_cluster_certs(directory.path(), "test", &["a".into(), "b".into(), "c".into()]).unwrap();
    assert!(!added.new_ca && added.issued == ["c"] && added.kept == ["a", "b"], "{added:?}");
    assert_eq!((read("ca.pem"), read("a.pem"), read("b.pem"), read("gossip.key")), (ca.clone(), a_cert.clone(), b_cert.clone(), gossip));
    let server = endpoint(directory.path(), "b");
    let (peer, shutdown, serving) = serve_with(&server, "b", Arc::new(MemoryBlobs { blobs: HashMap::new(), broken: false }), who_called());
    let newcomer = endpoint(directory.path(), "c");
    assert_eq!(newcomer.call(&peer, "who", Vec::new(), std::time::Duration::from_secs(5)).await.unwrap(), b"c");
    // One node's certificate reissued: only its files change, and the others still accept it.
    let reissued = issue_cluster_certs(directory.path(), "test", &["a".into(), "b".into(), "c".into()], &["a".into()]).unwrap();
    assert!(reissued.issued == ["a"] && reissued.kept == ["b", "c"], "{reissued:?}");
    assert_ne!(read("a.pem"), a_cert);
    assert_eq!((read("ca.pem"), read("b.pem")), (ca, b_cert));
    let renewed = endpoint(directory.path(), "a");
    assert_eq!(renewed.call(&peer, "who", Vec::new(), std::time::Duration::from_secs(5)).await.unwrap(), b"a");
    shutdown.cancel();
    serving.await.unwrap();
}
