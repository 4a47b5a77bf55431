//! The composition root: opens the catalog and the store, builds the upstream client and the edge,
//! serves until the shutdown token is cancelled, then drains in order.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hfm_cluster::catalog::raft::{RAFT_SERVICE, RaftCatalog};
use hfm_cluster::catalog::{Catalog, LocalCatalog};
use hfm_cluster::membership::{Membership, MembershipConfig, keys};
use hfm_cluster::peer::{LocalBlobs, RpcServices};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{ClusterConfig, NodeConfig};
use crate::edge;
use crate::mirror::{ClusterRole, Mirror};
use crate::peers::{ClusterFill, METADATA_SERVICE, MetadataService, PeerService};
use crate::replicas::{REPLICA_SERVICE, ReplicaService, Replicas};
use crate::store::BlobStore;
use crate::upstream::Upstream;

/// Starts gossip for this node, publishing its version and addresses; it is not ready yet.
async fn join_gossip(config: &NodeConfig, cluster: &ClusterConfig, local_address: std::net::SocketAddr) -> anyhow::Result<Membership> {
    let own = cluster.peers.iter().find(|peer| peer.name == config.name).context("this node is not in the topology")?;
    let gossip_advertise = tokio::net::lookup_host(&own.gossip_address)
        .await
        .with_context(|| format!("resolving this node's gossip address {}", own.gossip_address))?
        .next()
        .context("the gossip address resolves to nothing")?;
    let http_url = config.public_url.clone().unwrap_or_else(|| format!("http://{local_address}"));
    let membership = Membership::join(MembershipConfig {
        node_name: config.name.clone(),
        cluster_id: cluster.cluster_name.clone(),
        gossip_listen: cluster.gossip_listen,
        gossip_advertise,
        seeds: cluster.peers.iter().filter(|peer| peer.name != config.name).map(|peer| peer.gossip_address.clone()).collect(),
        gossip_interval: cluster.gossip_interval,
        advertised: vec![
            (keys::VERSION.to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            (keys::HTTP_URL.to_owned(), http_url),
            (keys::PEER_ADDRESS.to_owned(), own.peer_address.clone()),
        ],
    })
    .await?;
    Ok(membership)
}

/// The SOA serial for this start: the start time in seconds, but always above the last one used
/// (kept in the data directory), so it never goes backwards even if the clock does.
fn next_zone_serial(data_dir: &std::path::Path, now: u32) -> anyhow::Result<u32> {
    let path = data_dir.join("dns-serial");
    let last: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|text| text.trim().parse().ok());
    let serial = match last {
        Some(last) if last >= now => last.wrapping_add(1).max(1),
        _ => now,
    };
    std::fs::write(&path, format!("{serial}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(serial)
}

/// How long in-flight requests may run after shutdown starts before they are cut.
const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Runs one node on an already-bound listener until `shutdown` is cancelled.
///
/// Prints `node NAME http://ADDR` on standard output once it accepts connections (after
/// `dns NAME ADDR:PORT` when it serves DNS); scripts and the test harnesses wait for that line.
///
/// `peer_socket` and `dns_sockets` are the QUIC peer endpoint's socket and the DNS server's pair when
/// they were handed over (see [`crate::sockets`]).
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    peer_socket: Option<std::net::UdpSocket>,
    dns_sockets: Option<crate::sockets::DnsSockets>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let catalog = LocalCatalog::open(&config.data_dir.join("catalog.redb")).context("opening the catalog")?;
    let store_shutdown = shutdown.child_token();
    let store = BlobStore::open(&config.data_dir, config.max_disk, config.min_free_disk, store_shutdown.clone())
        .context("opening the blob store")?;
    let upstream = Upstream::new(&config.upstream).context("building the upstream client")?;
    let local_address = listener.local_addr()?;
    let membership = match &config.cluster {
        Some(cluster_config) => Some(join_gossip(&config, cluster_config, local_address).await?),
        None => None,
    };
    let cluster = match (&config.cluster, &membership) {
        (Some(cluster_config), Some(membership)) => {
            Some(Arc::new(ClusterFill::start(cluster_config, &config.name, peer_socket, membership.view(), membership.state()).await?))
        }
        _ => None,
    };
    // In a cluster the catalog is replicated by Raft (reads stay local); alone, it is the local one.
    let raft_catalog = match (&config.cluster, &cluster) {
        (Some(cluster_config), Some(cluster)) => {
            let members = cluster.catalog_members(cluster_config);
            let self_id = members
                .iter()
                .find(|member| member.name == config.name)
                .map(|member| member.id)
                .context("this node is not a catalog member")?;
            Some(
                RaftCatalog::start(&config.data_dir, catalog.clone(), self_id, &members, cluster.endpoint().clone())
                    .await
                    .context("starting the Raft catalog")?,
            )
        }
        _ => None,
    };
    let shared_catalog: Arc<dyn Catalog> = match &raft_catalog {
        Some(raft_catalog) => Arc::new(raft_catalog.clone()),
        None => Arc::new(catalog),
    };
    let role = match (&config.cluster, cluster, raft_catalog) {
        (Some(cluster_config), Some(fill), Some(raft)) => {
            let replicas = Replicas::new(
                shared_catalog.clone(),
                store.clone(),
                fill.clone(),
                upstream.clone(),
                cluster_config.replicas,
                cluster_config.replica_check_interval,
            );
            Some(ClusterRole { fill, raft, replicas })
        }
        _ => None,
    };
    let mirror = Mirror::new(config.clone(), shared_catalog, upstream, store.clone(), role);
    let raft_catalog = mirror.raft().cloned();
    let replicas_shutdown = shutdown.child_token();
    let replica_keeper = mirror.replicas().map(|replicas| replicas.spawn(replicas_shutdown.clone()));
    let pin_follower = crate::pins::spawn_follower(mirror.clone(), replicas_shutdown.clone());
    // Alone, pinned files are filled and kept by a local keeper instead of the replica keeper.
    let local_pin_keeper = mirror
        .replicas()
        .is_none()
        .then(|| crate::pins::spawn_local_keeper(mirror.clone(), config.ref_ttl.max(Duration::from_secs(5)), replicas_shutdown.clone()));
    let peer_shutdown = shutdown.child_token();
    let peer_server = mirror.cluster().cloned().map(|cluster| {
        let service: Arc<dyn LocalBlobs> = Arc::new(PeerService::new(mirror.clone()));
        let token = peer_shutdown.clone();
        let mut services = RpcServices::new();
        if let Some(raft_catalog) = mirror.raft() {
            services.insert(RAFT_SERVICE.to_owned(), raft_catalog.rpc_handler());
        }
        services.insert(METADATA_SERVICE.to_owned(), Arc::new(MetadataService::new(mirror.clone())));
        if let Some(replicas) = mirror.replicas() {
            services.insert(REPLICA_SERVICE.to_owned(), Arc::new(ReplicaService::new(replicas.clone())));
        }
        tokio::spawn(async move { cluster.endpoint().serve(service, services, token).await })
    });
    let app_mirror = mirror.clone();
    let limits = Arc::new(crate::limits::EdgeLimits::new(config.limits.clone()));
    let access_log_shutdown = CancellationToken::new();
    let access_log = match config.access_log_dir() {
        Some(directory) => Some(
            crate::access_log::AccessLog::spawn(directory.clone(), access_log_shutdown.clone())
                .with_context(|| format!("opening the access log in {}", directory.display()))?,
        ),
        None => None,
    };
    // The operator port reads the access log's counters; it never writes lines.
    let operator_app = edge::operator_router(mirror.clone(), limits.clone(), access_log.as_ref().map(|(log, _)| log.clone()));
    let app = edge::router(mirror, limits, access_log.as_ref().map(|(log, _)| log.clone()));
    // TLS on the same port as cleartext, when configured; SIGHUP reads the files again.
    let tls = match &config.tls {
        Some(files) => Some(crate::http_server::TlsState::load(files.clone()).context("loading the TLS certificate")?),
        None => None,
    };
    // HTTP/3 on the same port number over UDP, with TLS only; advertised while it runs.
    #[cfg(feature = "http3")]
    let http3 = match &tls {
        Some(tls) => Some(crate::http3::Http3::start(local_address, tls, app.clone())?),
        None => None,
    };
    #[cfg(feature = "http3")]
    let alt_svc = http3.as_ref().map(|http3| {
        let port = http3.local_addr().map_or(local_address.port(), |address| address.port());
        http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).expect("an Alt-Svc value is a valid header")
    });
    #[cfg(not(feature = "http3"))]
    let alt_svc: Option<http::HeaderValue> = None;
    let tls_reloader = match &tls {
        Some(tls) => Some(crate::http_server::spawn_reloader(tls.clone(), shutdown.clone())?),
        None => None,
    };

    // Every node answers DNS for the zone, from the membership it sees.
    let dns_server = match (&config.dns, &membership) {
        (Some(dns), Some(membership)) => {
            let mut zone_config = dns.zone.clone();
            zone_config.serial = next_zone_serial(&config.data_dir, zone_config.serial)?;
            let zone = Arc::new(hfm_dns::Zone::new(&zone_config).context("building the DNS zone")?);
            let started = match dns_sockets {
                Some(sockets) => hfm_dns::DnsServer::start_on(zone, membership.view(), &dns.settings, sockets.udp, sockets.tcp),
                None => hfm_dns::DnsServer::start(zone, membership.view(), &dns.settings).await,
            };
            let server = started.with_context(|| format!("starting the DNS server on {}", dns.settings.listen))?;
            Some(server)
        }
        _ => None,
    };

    // The operator port (metrics and probes), when configured; it stops after the HTTP server.
    let operator_shutdown = CancellationToken::new();
    let operator = match config.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address).await.with_context(|| format!("binding the operator port {address}"))?;
            let bound = listener.local_addr()?;
            let token = operator_shutdown.clone();
            let server = axum::serve(listener, operator_app.into_make_service()).with_graceful_shutdown(token.cancelled_owned());
            Some((bound, tokio::spawn(async move { server.await })))
        }
        None => None,
    };

    info!(node = %config.name, address = %local_address, upstream = %config.upstream, data_dir = %config.data_dir.display(), "node ready");
    // Bulk users' rsync daemon, supervised; it stops with the node.
    let rsync_shutdown = shutdown.child_token();
    let rsync = match &config.rsync {
        Some(rsync_config) => {
            let modules = crate::trees::initial_module_dirs(&config.data_dir)?;
            Some(crate::rsyncd::Rsyncd::spawn(&config.data_dir, rsync_config, modules, rsync_shutdown.clone())?)
        }
        None => None,
    };
    // Its module trees (pinned repositories, indexes) follow the pins and the store.
    let trees = rsync.as_ref().zip(config.rsync.as_ref()).map(|((rsyncd, _), rsync_config)| {
        app_mirror.set_rsync(rsyncd.clone());
        crate::trees::spawn(app_mirror.clone(), rsyncd.clone(), rsync_config.index_interval, rsync_shutdown.clone())
    });
    {
        let mut stdout = std::io::stdout().lock();
        if let Some(rsync_config) = &config.rsync {
            writeln!(stdout, "rsync {} {}", config.name, rsync_config.listen)?;
        }
        if let Some(dns_server) = &dns_server {
            writeln!(stdout, "dns {} {}", config.name, dns_server.local_addr())?;
        }
        if let Some((address, _)) = &operator {
            writeln!(stdout, "metrics {} http://{address}/metrics", config.name)?;
        }
        writeln!(stdout, "node {} http://{local_address}", config.name)?;
        stdout.flush()?;
    }

    // Free disk goes into gossip every few seconds, for status and for placement decisions.
    let disk_reporter = membership.as_ref().map(|membership| {
        let state = membership.state();
        let data_dir = config.data_dir.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(stats) = rustix::fs::statvfs(&data_dir) {
                    state.set_free_disk(stats.f_bavail.saturating_mul(stats.f_frsize)).await;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        })
    });
    if let Some(membership) = &membership {
        membership.set_ready(true).await;
    }
    // Leave in order: out of gossip's ready set first, so peers stop choosing this node, then stop
    // accepting requests.
    let http_shutdown = CancellationToken::new();
    let leaving = {
        let http_shutdown = http_shutdown.clone();
        let shutdown = shutdown.clone();
        let membership_state = membership.as_ref().map(|membership| (membership.state(), membership.gossip_interval()));
        tokio::spawn(async move {
            shutdown.cancelled().await;
            if let Some((state, interval)) = membership_state {
                state.set_ready(false).await;
                tokio::time::sleep(interval * 2).await;
            }
            http_shutdown.cancel();
        })
    };
    crate::http_server::serve(listener, app, tls, alt_svc, http_shutdown, GRACE_PERIOD).await.context("serving HTTP")?;
    #[cfg(feature = "http3")]
    if let Some(http3) = http3 {
        http3.shutdown(Duration::from_secs(2)).await;
    }
    if let Some(reloader) = tls_reloader {
        reloader.abort();
    }
    operator_shutdown.cancel();
    // The last requests' lines are written before the node stops.
    access_log_shutdown.cancel();
    if let Some((_, writer)) = access_log {
        let _ = writer.await;
    }
    if let Some((_, operator_server)) = operator {
        let _ = operator_server.await;
    }
    if let Some(raft_catalog) = &raft_catalog {
        // Hand catalog leadership over first, so the others need no election timeout to go on.
        let voters: Vec<u64> = (1..=config.cluster.as_ref().map_or(0, |cluster| cluster.peers.len() as u64)).collect();
        if let Some(successor) = raft_catalog.step_down(&voters).await {
            info!(successor, "handed catalog leadership over");
        }
        raft_catalog.shutdown().await;
    }
    if let Some(dns_server) = dns_server {
        dns_server.shutdown().await;
    }
    rsync_shutdown.cancel();
    if let Some(trees) = trees {
        let _ = trees.await;
    }
    if let Some((_, rsync_task)) = rsync {
        let _ = rsync_task.await;
    }
    // Replica copies stop before the peer endpoint they read from.
    replicas_shutdown.cancel();
    if let Some(replica_keeper) = replica_keeper {
        let _ = replica_keeper.await;
    }
    let _ = pin_follower.await;
    if let Some(local_pin_keeper) = local_pin_keeper {
        let _ = local_pin_keeper.await;
    }
    peer_shutdown.cancel();
    if let Some(peer_server) = peer_server {
        let _ = peer_server.await;
    }
    store_shutdown.cancel();
    store.close().await;
    leaving.abort();
    if let Some(disk_reporter) = disk_reporter {
        let _ = disk_reporter.await;
    }
    if let Some(membership) = membership {
        membership.leave().await;
    }
    info!(node = %config.name, "node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_zone_serial_never_goes_backwards() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(super::next_zone_serial(directory.path(), 1000).unwrap(), 1000);
        assert_eq!(super::next_zone_serial(directory.path(), 1000).unwrap(), 1001, "same second: one more");
        assert_eq!(super::next_zone_serial(directory.path(), 500).unwrap(), 1002, "the clock went back: still one more");
        assert_eq!(super::next_zone_serial(directory.path(), 5000).unwrap(), 5000);
    }
}
