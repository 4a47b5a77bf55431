//! The composition root: opens the catalog and the store, builds the upstream client and the edge,
//! serves until the shutdown token is cancelled, then drains in order.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hfm_cluster::catalog::LocalCatalog;
use hfm_cluster::peer::LocalBlobs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::edge;
use crate::mirror::Mirror;
use crate::peers::{ClusterFill, PeerService};
use crate::store::BlobStore;
use crate::upstream::Upstream;

/// How long in-flight requests may run after shutdown starts before they are cut.
const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Runs one node on an already-bound listener until `shutdown` is cancelled.
///
/// Prints `node NAME http://ADDR` on standard output once it accepts connections; scripts and the
/// test harnesses wait for that line.
pub async fn run(config: NodeConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let catalog = LocalCatalog::open(&config.data_dir.join("catalog.redb")).context("opening the catalog")?;
    let store_shutdown = shutdown.child_token();
    let store = BlobStore::open(&config.data_dir, config.max_disk, config.min_free_disk, store_shutdown.clone())
        .context("opening the blob store")?;
    let upstream = Upstream::new(&config.upstream).context("building the upstream client")?;
    let cluster = match &config.cluster {
        Some(cluster_config) => Some(Arc::new(ClusterFill::start(cluster_config, &config.name).await?)),
        None => None,
    };
    let mirror = Mirror::new(config.clone(), Arc::new(catalog), upstream, store.clone(), cluster.clone());
    let peer_shutdown = shutdown.child_token();
    let peer_server = cluster.map(|cluster| {
        let service: Arc<dyn LocalBlobs> = Arc::new(PeerService::new(mirror.clone()));
        let token = peer_shutdown.clone();
        tokio::spawn(async move { cluster.endpoint().serve(service, token).await })
    });
    let app = edge::router(mirror);

    let local_address = listener.local_addr()?;
    info!(node = %config.name, address = %local_address, upstream = %config.upstream, data_dir = %config.data_dir.display(), "node ready");
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "node {} http://{local_address}", config.name)?;
        stdout.flush()?;
    }

    let graceful = shutdown.clone();
    // Without TCP_NODELAY a body written after its headers waits for the client's delayed ACK
    // (~40 ms per small response).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { graceful.cancelled().await });
    let cut_off = async {
        shutdown.cancelled().await;
        tokio::time::sleep(GRACE_PERIOD).await;
    };
    tokio::select! {
        result = server => result.context("serving HTTP")?,
        () = cut_off => warn!("grace period over; cutting open connections"),
    }
    peer_shutdown.cancel();
    if let Some(peer_server) = peer_server {
        let _ = peer_server.await;
    }
    store_shutdown.cancel();
    store.close().await;
    info!(node = %config.name, "node stopped");
    Ok(())
}
