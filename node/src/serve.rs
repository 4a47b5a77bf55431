//! The composition root: builds every part of a node from its configuration, in order, serves until
//! the shutdown token is cancelled, then stops the parts in the reverse of what depends on what.
//!
//! [`run`] reads top to bottom as that order; each step is a named function below it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hfm_cluster::catalog::raft::{RAFT_SERVICE, RaftCatalog};
use hfm_cluster::catalog::{Catalog, LocalCatalog};
use hfm_cluster::membership::{Membership, MembershipConfig, keys};
use hfm_cluster::peer::{LocalBlobs, RpcServices};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::blobs::{BlobSources, PeerFills, PinWatch, REPLICA_SERVICE, ReplicaService, Replicas};
use crate::config::{ClusterConfig, NodeConfig};
use crate::edge::{EdgeSettings, HubApi, Operator, OperatorToken};
use crate::metadata::{METADATA_SERVICE, Metadata, MetadataService, MetadataSettings};
use crate::peers::{GossipMetrics, Peers, RaftMetrics, catalog_membership};
use crate::rsync::daemon::Rsyncd;
use crate::rsync::pins::Pins;
use crate::store::scrub::{ScrubCounters, spawn_scrubber};
use crate::store::{BlobStore, ReadChecks};
use crate::telemetry::{AnswerCounters, AnswerMetric, Exposition};
use crate::transport::access_log::AccessLog;
use crate::transport::admission::{FrontDoor, PublicApp};
use crate::transport::connections::ConnectionLimits;
use crate::transport::http::ConnectionSettings;
use crate::transport::limits::EdgeLimits;
use crate::transport::proxy::TrustedProxies;
use crate::transport::sockets::DnsSockets;
use crate::upstream::Upstream;

/// How long in-flight requests may run after shutdown starts before they are cut.
const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// How often this node's free disk goes into gossip.
const DISK_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Runs one node on an already-bound listener until `shutdown` is cancelled.
///
/// Prints `node NAME http://ADDR` on standard output once it accepts connections (after
/// `rsync …`, `dns …` and `metrics …` lines for what it also serves); scripts and the test
/// harnesses wait for that line.
///
/// `peer_socket` and `dns_sockets` are the QUIC peer endpoint's socket and the DNS server's pair when
/// they were handed over (see [`crate::transport::sockets`]).
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    peer_socket: Option<std::net::UdpSocket>,
    dns_sockets: Option<DnsSockets>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local_address = listener.local_addr()?;
    let (local_catalog, store, store_shutdown) = open_storage(&config)?;
    let token = operator_token(&config)?;
    let operator_listener = bind_operator_port(&config).await?;
    let operator_address = operator_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let upstream = Upstream::new(&config.upstream).context("building the upstream client")?;
    let cluster = match &config.cluster {
        Some(cluster_config) => {
            Some(join_cluster(&config, cluster_config, local_address, operator_address, peer_socket, local_catalog.clone()).await?)
        }
        None => None,
    };
    // In a cluster the catalog is replicated by Raft (reads stay local); alone, it is the local one.
    let catalog: Arc<dyn Catalog> = match &cluster {
        Some(cluster) => Arc::new(cluster.raft.clone()),
        None => Arc::new(local_catalog),
    };
    let parts = build_parts(&config, catalog, store.clone(), upstream, cluster.as_ref());
    let keepers = spawn_keepers(&config, &parts, shutdown.child_token());
    let peer_server = cluster.as_ref().map(|cluster| serve_peers(cluster, &parts, shutdown.child_token()));
    let rsync = start_rsync(&config, &parts, shutdown.child_token())?;
    let dns_server = start_dns(&config, cluster.as_ref(), dns_sockets).await?;
    let access_log = open_access_log(&config)?;
    let limits = Arc::new(EdgeLimits::new(config.limits.clone()));
    let access_log_handle = access_log.as_ref().map(|(log, ..)| log.clone());
    let exposition = build_exposition(&parts, cluster.as_ref(), rsync.as_ref(), &limits, access_log_handle.as_ref());
    let connections = ConnectionLimits::new(config.limits.connections, config.limits.connections_per_client);
    let connection_settings = connection_settings(&config);
    let (app, operator_app) =
        build_edge(&config, &parts, cluster.as_ref(), rsync.as_ref(), exposition, limits, &connections, token, access_log_handle);
    let front_end = HttpFrontEnd::start(&config, local_address, &app, &connections, &connection_settings, shutdown.clone())?;
    let operator_port = operator_listener.map(|listener| serve_operator_port(listener, operator_app)).transpose()?;
    info!(node = %config.name, address = %local_address, upstream = %config.upstream, data_dir = %config.data_dir.display(), "node ready");
    announce(&config, local_address, dns_server.as_ref(), operator_port.as_ref())?;
    let disk_reporter =
        cluster.as_ref().map(|cluster| spawn_disk_reporter(cluster, &config.data_dir, &parts.store, &parts.file_answers, shutdown.clone()));
    if let Some(cluster) = &cluster {
        cluster.membership.set_ready(true).await;
    }

    serve_until_shutdown(listener, app, &front_end, connections, connection_settings, cluster.as_ref(), shutdown).await?;

    front_end.stop().await;
    stop_operator_port(operator_port).await;
    // The last requests' lines are written before the node stops.
    close_access_log(access_log).await;
    if let Some(cluster) = &cluster {
        hand_over_catalog(cluster).await;
    }
    if let Some(dns_server) = dns_server {
        dns_server.shutdown().await;
    }
    if let Some(rsync) = rsync {
        rsync.stop().await;
    }
    // Replica copies stop before the peer endpoint they read from.
    keepers.stop().await;
    if let Some((token, peer_server)) = peer_server {
        token.cancel();
        let _ = peer_server.await;
    }
    store_shutdown.cancel();
    store.close().await;
    if let Some(disk_reporter) = disk_reporter {
        let _ = disk_reporter.await;
    }
    if let Some(cluster) = cluster {
        cluster.membership.leave().await;
    }
    info!(node = %config.name, "node stopped");
    Ok(())
}

/// The local catalog (redb) and the blob store under the data directory; the store stops on its own
/// token, last.
fn open_storage(config: &NodeConfig) -> anyhow::Result<(LocalCatalog, BlobStore, CancellationToken)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let catalog = LocalCatalog::open(&config.data_dir.join("catalog.redb")).context("opening the catalog")?;
    let store_shutdown = CancellationToken::new();
    let read_checks = if config.checks_every_read() { ReadChecks::EveryRead } else { ReadChecks::OnceWhileScrubbed };
    let store = BlobStore::open(&config.data_dir, config.max_disk, config.min_free_disk, read_checks, store_shutdown.clone())
        .context("opening the blob store")?;
    Ok((catalog, store, store_shutdown))
}

/// What a node has beyond a single node: gossip membership, its peers over QUIC, the Raft catalog
/// and the keeper that makes the catalog's members follow the topology.
struct ClusterPlane {
    config: ClusterConfig,
    membership: Membership,
    peers: Peers,
    raft: RaftCatalog,
    /// The membership keeper's stop token and its task.
    membership_keeper: (CancellationToken, tokio_util::task::TaskTracker),
}

/// Joins gossip (not ready yet), opens the peer endpoint and starts the Raft catalog over the local
/// one.
async fn join_cluster(
    config: &NodeConfig,
    cluster_config: &ClusterConfig,
    local_address: SocketAddr,
    operator_address: Option<SocketAddr>,
    peer_socket: Option<std::net::UdpSocket>,
    local_catalog: LocalCatalog,
) -> anyhow::Result<ClusterPlane> {
    let digest = catalog_membership::topology_digest(cluster_config);
    let membership = join_gossip(config, cluster_config, local_address, operator_address, &digest).await?;
    let peers = Peers::start(cluster_config, &config.name, peer_socket, membership.view(), membership.state()).await?;
    let members = peers.catalog_members(cluster_config);
    let self_id =
        members.iter().find(|member| member.name == config.name).map(|member| member.id).context("this node is not a catalog member")?;
    // The topology's first node makes the first voters, once, on an empty catalog.
    let bootstrap =
        (cluster_config.peers.first().map(|peer| peer.name.as_str()) == Some(config.name.as_str())).then_some(members.as_slice());
    let raft = RaftCatalog::start(&config.data_dir, local_catalog, self_id, &members, bootstrap, peers.endpoint().clone())
        .await
        .context("starting the Raft catalog")?;
    let keeper_shutdown = CancellationToken::new();
    let keeper = tokio_util::task::TaskTracker::new();
    keeper.spawn(catalog_membership::run(raft.clone(), peers.clone(), members, digest, keeper_shutdown.clone()));
    keeper.close();
    Ok(ClusterPlane { config: cluster_config.clone(), membership, peers, raft, membership_keeper: (keeper_shutdown, keeper) })
}

/// Starts gossip for this node, publishing its version and addresses; it is not ready yet.
async fn join_gossip(
    config: &NodeConfig,
    cluster: &ClusterConfig,
    local_address: SocketAddr,
    operator_address: Option<SocketAddr>,
    topology_digest: &str,
) -> anyhow::Result<Membership> {
    let own = cluster.peers.iter().find(|peer| peer.name == config.name).context("this node is not in the topology")?;
    let gossip_advertise = tokio::net::lookup_host(&own.gossip_address)
        .await
        .with_context(|| format!("resolving this node's gossip address {}", own.gossip_address))?
        .next()
        .context("the gossip address resolves to nothing")?;
    // A listener on a wildcard address is reached at the address the node gossips from.
    let reachable = |address: SocketAddr| {
        if address.ip().is_unspecified() { SocketAddr::new(gossip_advertise.ip(), address.port()) } else { address }
    };
    let http_url = config.public_url.clone().unwrap_or_else(|| format!("http://{}", reachable(local_address)));
    let mut advertised = vec![
        (keys::VERSION.to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        (keys::HTTP_URL.to_owned(), http_url),
        (keys::PEER_ADDRESS.to_owned(), own.peer_address.clone()),
        (keys::TOPOLOGY.to_owned(), topology_digest.to_owned()),
    ];
    // Where `hf-mirror status` asks this node for its details (with the operator token).
    if let Some(address) = operator_address {
        advertised.push((keys::OPERATOR_URL.to_owned(), format!("http://{}", reachable(address))));
    }
    let membership = Membership::join(MembershipConfig {
        node_name: config.name.clone(),
        cluster_id: cluster.cluster_name.clone(),
        gossip_listen: cluster.gossip_listen,
        gossip_advertise,
        seeds: cluster.peers.iter().filter(|peer| peer.name != config.name).map(|peer| peer.gossip_address.clone()).collect(),
        gossip_interval: cluster.gossip_interval,
        advertised,
        gossip_key: Some(hfm_cluster::peer::certs::read_gossip_key(&cluster.certs_dir).with_context(|| {
            format!("reading the cluster's gossip key in {} (`hf-mirror cluster certs` makes it)", cluster.certs_dir.display())
        })?),
    })
    .await?;
    Ok(membership)
}

/// The handles the node's subsystems share, each given only to the code that needs it.
struct Parts {
    catalog: Arc<dyn Catalog>,
    store: BlobStore,
    upstream: Upstream,
    metadata: Metadata,
    sources: BlobSources,
    replicas: Option<Replicas>,
    pins: Pins,
    file_answers: Arc<AnswerCounters>,
    metadata_answers: Arc<AnswerCounters>,
    scrub: Arc<ScrubCounters>,
}

fn build_parts(
    config: &NodeConfig,
    catalog: Arc<dyn Catalog>,
    store: BlobStore,
    upstream: Upstream,
    cluster: Option<&ClusterPlane>,
) -> Parts {
    let peers = cluster.map(|cluster| cluster.peers.clone());
    let settings =
        MetadataSettings { ref_ttl: config.ref_ttl, policy_ttl: config.policy_ttl, max_manifest_files: config.limits.max_manifest_files };
    let metadata = Metadata::new(catalog.clone(), upstream.clone(), peers.clone(), settings);
    let sources = BlobSources::new(catalog.clone(), upstream.clone(), peers);
    let replicas = cluster.map(|cluster| {
        let config = &cluster.config;
        Replicas::new(
            catalog.clone(),
            store.clone(),
            cluster.peers.clone(),
            sources.clone(),
            config.replicas,
            config.replica_check_interval,
        )
    });
    let pins = Pins::new(
        config.name.clone(),
        catalog.clone(),
        metadata.clone(),
        store.clone(),
        cluster.zip(replicas.clone()).map(|(cluster, replicas)| (cluster.peers.clone(), replicas, cluster.raft.clone())),
        PinWatch::default(),
        config.pins.clone(),
    );
    Parts {
        catalog,
        store,
        upstream,
        metadata,
        sources,
        replicas,
        pins,
        file_answers: Arc::default(),
        metadata_answers: Arc::default(),
        scrub: Arc::default(),
    }
}

/// Background work that keeps the store in line with the catalog: the replica keeper (cluster), the
/// follower of pinned branches, and a lone node's pin keeper.
struct Keepers {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Keepers {
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn spawn_keepers(config: &NodeConfig, parts: &Parts, shutdown: CancellationToken) -> Keepers {
    let mut tasks = Vec::new();
    match &parts.replicas {
        Some(replicas) => tasks.push(replicas.spawn(shutdown.clone())),
        // Alone, pinned files are filled and kept by a local keeper instead of the replica keeper.
        None => tasks.push(crate::blobs::pin_keeper::spawn_local_keeper(
            parts.catalog.clone(),
            parts.store.clone(),
            parts.sources.clone(),
            parts.pins.watch(),
            config.ref_ttl.max(Duration::from_secs(5)),
            shutdown.clone(),
        )),
    }
    tasks.push(parts.pins.spawn_follower(config.ref_ttl, shutdown.clone()));
    if let Some(settings) = config.scrub {
        tasks.push(spawn_scrubber(parts.store.clone(), settings, parts.scrub.clone(), shutdown.clone()));
    }
    Keepers { shutdown, tasks }
}

/// Answers peers on the QUIC endpoint: blob fills, Raft, metadata questions, replica offers.
fn serve_peers(cluster: &ClusterPlane, parts: &Parts, shutdown: CancellationToken) -> (CancellationToken, JoinHandle<()>) {
    let fills: Arc<dyn LocalBlobs> = Arc::new(PeerFills::new(parts.store.clone(), parts.sources.clone(), cluster.peers.clone()));
    let mut services = RpcServices::new();
    services.insert(RAFT_SERVICE.to_owned(), cluster.raft.rpc_handler());
    services.insert(METADATA_SERVICE.to_owned(), Arc::new(MetadataService::new(parts.metadata.clone())));
    if let Some(replicas) = &parts.replicas {
        services.insert(REPLICA_SERVICE.to_owned(), Arc::new(ReplicaService::new(replicas.clone())));
    }
    let endpoint = cluster.peers.endpoint().clone();
    let token = shutdown.clone();
    // Only the topology's nodes are served, each known by the name its certificate carries.
    let members = cluster.peers.topology_names();
    (shutdown, tokio::spawn(async move { endpoint.serve(fills, services, members, token).await }))
}

/// Bulk users' rsync daemon, supervised, and the keeper of its module trees (pins, indexes).
struct RsyncPlane {
    daemon: Rsyncd,
    shutdown: CancellationToken,
    daemon_task: JoinHandle<()>,
    trees: JoinHandle<()>,
}

impl RsyncPlane {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.trees.await;
        let _ = self.daemon_task.await;
    }
}

fn start_rsync(config: &NodeConfig, parts: &Parts, shutdown: CancellationToken) -> anyhow::Result<Option<RsyncPlane>> {
    let Some(rsync_config) = &config.rsync else { return Ok(None) };
    let modules = crate::rsync::trees::initial_module_dirs(&config.data_dir)?;
    let (daemon, daemon_task) = Rsyncd::spawn(&config.data_dir, rsync_config, modules, shutdown.clone())?;
    let trees = crate::rsync::trees::spawn(
        parts.pins.clone(),
        parts.store.clone(),
        config.name.clone(),
        &config.data_dir,
        daemon.clone(),
        rsync_config.index_interval,
        shutdown.clone(),
    );
    Ok(Some(RsyncPlane { daemon, shutdown, daemon_task, trees }))
}

/// Every node of a cluster with a `[dns]` section answers DNS for the zone, from the membership it
/// sees.
async fn start_dns(
    config: &NodeConfig,
    cluster: Option<&ClusterPlane>,
    sockets: Option<DnsSockets>,
) -> anyhow::Result<Option<hfm_dns::DnsServer>> {
    let (Some(dns), Some(cluster)) = (&config.dns, cluster) else { return Ok(None) };
    let mut zone_config = dns.zone.clone();
    zone_config.serial = next_zone_serial(&config.data_dir, zone_config.serial)?;
    let zone = Arc::new(hfm_dns::Zone::new(&zone_config).context("building the DNS zone")?);
    let view = cluster.membership.view();
    let started = match sockets {
        Some(sockets) => hfm_dns::DnsServer::start_on(zone, view, &dns.settings, sockets.udp, sockets.tcp),
        None => hfm_dns::DnsServer::start(zone, view, &dns.settings).await,
    };
    Ok(Some(started.with_context(|| format!("starting the DNS server on {}", dns.settings.listen))?))
}

/// The SOA serial for this start: the start time in seconds, but always above the last one used
/// (kept in the data directory), so it never goes backwards even if the clock does.
fn next_zone_serial(data_dir: &Path, now: u32) -> anyhow::Result<u32> {
    let path = data_dir.join("dns-serial");
    let last: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|text| text.trim().parse().ok());
    let serial = match last {
        Some(last) if last >= now => last.wrapping_add(1).max(1),
        _ => now,
    };
    std::fs::write(&path, format!("{serial}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(serial)
}

/// `/metrics`: the process-wide counters and every part with state worth exporting.
fn build_exposition(
    parts: &Parts,
    cluster: Option<&ClusterPlane>,
    rsync: Option<&RsyncPlane>,
    limits: &Arc<EdgeLimits>,
    access_log: Option<&AccessLog>,
) -> Exposition {
    let mut exposition = Exposition::new();
    exposition.add_source(AnswerMetric {
        counters: parts.file_answers.clone(),
        name: "hfm_file_answers",
        help: "File downloads by cache result",
    });
    exposition.add_source(parts.store.clone());
    exposition.add_source(parts.scrub.clone());
    exposition.add_source(parts.metadata.clone());
    if let Some(replicas) = &parts.replicas {
        exposition.add_source(replicas.clone());
    }
    if let Some(cluster) = cluster {
        exposition.add_source(cluster.peers.clone());
        exposition.add_source(RaftMetrics(cluster.raft.clone()));
        exposition.add_source(GossipMetrics(cluster.membership.rejections()));
    }
    if let Some(rsync) = rsync {
        exposition.add_source(rsync.daemon.clone());
    }
    exposition.add_source(limits.clone());
    if let Some(access_log) = access_log {
        exposition.add_source(access_log.clone());
    }
    exposition
}

/// The access log's writer, unless it is off.
fn open_access_log(config: &NodeConfig) -> anyhow::Result<Option<(AccessLog, JoinHandle<()>, CancellationToken)>> {
    let Some(directory) = config.access_log_dir() else { return Ok(None) };
    let shutdown = CancellationToken::new();
    let (log, writer) = AccessLog::spawn(directory.clone(), shutdown.clone())
        .with_context(|| format!("opening the access log in {}", directory.display()))?;
    Ok(Some((log, writer, shutdown)))
}

async fn close_access_log(access_log: Option<(AccessLog, JoinHandle<()>, CancellationToken)>) {
    if let Some((_, writer, shutdown)) = access_log {
        shutdown.cancel();
        let _ = writer.await;
    }
}

/// The public port's router (the edge behind the front door) and the operator port's.
fn build_edge(
    config: &NodeConfig,
    parts: &Parts,
    cluster: Option<&ClusterPlane>,
    rsync: Option<&RsyncPlane>,
    mut exposition: Exposition,
    limits: Arc<EdgeLimits>,
    connections: &ConnectionLimits,
    token: OperatorToken,
    access_log: Option<AccessLog>,
) -> (PublicApp, axum::Router) {
    exposition.add_source(connections.clone());
    let exposition = Arc::new(exposition);
    let settings = EdgeSettings { public_url: config.public_url.clone(), listen: config.listen, tree_page_size: config.tree_page_size };
    let hub = Arc::new(HubApi {
        metadata: parts.metadata.clone(),
        store: parts.store.clone(),
        sources: parts.sources.clone(),
        upstream: parts.upstream.clone(),
        answers: parts.file_answers.clone(),
        metadata_answers: parts.metadata_answers.clone(),
        fill_budget: crate::edge::fill_budget::FillBudget::new(config.limits.cold_fills, config.limits.cold_fills_per_client),
        warm_files: Default::default(),
        settings,
    });
    let operator = Arc::new(Operator {
        node_name: config.name.clone(),
        token,
        catalog: parts.catalog.clone(),
        store: parts.store.clone(),
        file_answers: parts.file_answers.clone(),
        metadata_answers: parts.metadata_answers.clone(),
        pins: parts.pins.clone(),
        exposition,
        cluster: cluster.zip(parts.replicas.clone()).map(|(cluster, replicas)| (cluster.peers.clone(), cluster.raft.clone(), replicas)),
        rsync: rsync.map(|rsync| rsync.daemon.clone()),
    });
    let site = Arc::new(crate::edge::site::Site::new(
        config.site.clone(),
        hub.settings.clone(),
        config.limits.clone(),
        config.tls.is_some(),
        config.rsync.is_some(),
        config.access_log_dir(),
        config.data_dir.clone(),
        operator.clone(),
    ));
    let front_door = FrontDoor { limits, access_log, rsync_hint: rsync_hint(config) };
    let app = PublicApp::new(front_door, crate::edge::Edge::new(hub, operator.clone(), site));
    (app, crate::edge::operator_router(operator))
}

/// Where heavy users are sent in a 429: this mirror's rsync modules.
fn rsync_hint(config: &NodeConfig) -> String {
    match (&config.dns, &config.rsync) {
        (Some(dns), _) => format!("rsync://{}.{}/", dns.zone.rsync_label, dns.zone.apex.trim_end_matches('.')),
        (None, Some(rsync)) => format!("the rsync modules of this mirror (port {})", rsync.listen.port()),
        (None, None) => "the mirror's rsync modules".into(),
    }
}

/// How long clients may take and how much a connection may carry, from `[limits]`.
fn connection_settings(config: &NodeConfig) -> ConnectionSettings {
    let limits = &config.limits;
    ConnectionSettings {
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
        streams_per_connection: limits.streams_per_connection,
        trusted_proxies: TrustedProxies(limits.trusted_proxies.clone()),
    }
}

/// TLS (on the same port as cleartext) with its SIGHUP reloader, and HTTP/3 on the same port number
/// over UDP, advertised with `Alt-Svc` while it runs.
struct HttpFrontEnd {
    tls: Option<crate::transport::tls::TlsState>,
    alt_svc: Option<http::HeaderValue>,
    #[cfg(feature = "http3")]
    http3: Option<crate::transport::http3::Http3>,
    tls_reloader: Option<JoinHandle<()>>,
}

impl HttpFrontEnd {
    fn start(
        config: &NodeConfig,
        local_address: SocketAddr,
        app: &PublicApp,
        connections: &ConnectionLimits,
        settings: &ConnectionSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<HttpFrontEnd> {
        let tls = match &config.tls {
            Some(files) => Some(crate::transport::tls::TlsState::load(files.clone()).context("loading the TLS certificate")?),
            None => None,
        };
        #[cfg(feature = "http3")]
        let http3 = match &tls {
            Some(tls) => {
                Some(crate::transport::http3::Http3::start(local_address, tls, app.clone(), connections.clone(), settings.clone())?)
            }
            None => None,
        };
        #[cfg(feature = "http3")]
        let alt_svc = http3.as_ref().map(|http3| {
            let port = http3.local_addr().map_or(local_address.port(), |address| address.port());
            http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).expect("an Alt-Svc value is a valid header")
        });
        #[cfg(not(feature = "http3"))]
        let alt_svc: Option<http::HeaderValue> = {
            let _ = (local_address, app, connections, settings);
            None
        };
        let tls_reloader = match &tls {
            Some(tls) => Some(crate::transport::tls::spawn_reloader(tls.clone(), shutdown)?),
            None => None,
        };
        Ok(HttpFrontEnd {
            tls,
            alt_svc,
            #[cfg(feature = "http3")]
            http3,
            tls_reloader,
        })
    }

    async fn stop(self) {
        #[cfg(feature = "http3")]
        if let Some(http3) = self.http3 {
            http3.shutdown(Duration::from_secs(2)).await;
        }
        if let Some(reloader) = self.tls_reloader {
            reloader.abort();
        }
    }
}

/// The operator token: read from its file, or made (32 random bytes, hex, mode 0600) when the file
/// does not exist yet. A cluster's nodes share one, distributed with their certificates.
fn operator_token(config: &NodeConfig) -> anyhow::Result<OperatorToken> {
    let path = config.operator_token_path();
    let text = crate::common::secret::ensure_token_file(&path).with_context(|| format!("reading the operator token {}", path.display()))?;
    OperatorToken::new(text).with_context(|| format!("{}: an operator token is at least 16 visible ASCII characters", path.display()))
}

/// The operator port's listener, bound before the node joins gossip (which names its address).
async fn bind_operator_port(config: &NodeConfig) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = config.metrics_listen else { return Ok(None) };
    Ok(Some(TcpListener::bind(address).await.with_context(|| format!("binding the operator port {address}"))?))
}

/// Serves the operator port (metrics, probes, the operator's routes); it stops after the HTTP server.
fn serve_operator_port(listener: TcpListener, app: axum::Router) -> anyhow::Result<(SocketAddr, CancellationToken, JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = axum::serve(listener, app.into_make_service()).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::warn!(%error, "the operator port stopped with an error");
        }
    });
    Ok((bound, shutdown, task))
}

async fn stop_operator_port(operator_port: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>) {
    if let Some((_, shutdown, task)) = operator_port {
        shutdown.cancel();
        let _ = task.await;
    }
}

/// Prints what the node serves, the `node` line last: scripts wait for it.
fn announce(
    config: &NodeConfig,
    local_address: SocketAddr,
    dns_server: Option<&hfm_dns::DnsServer>,
    operator_port: Option<&(SocketAddr, CancellationToken, JoinHandle<()>)>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if let Some(rsync_config) = &config.rsync {
        writeln!(stdout, "rsync {} {}", config.name, rsync_config.listen)?;
    }
    if let Some(dns_server) = dns_server {
        writeln!(stdout, "dns {} {}", config.name, dns_server.local_addr())?;
    }
    if let Some((address, ..)) = operator_port {
        writeln!(stdout, "metrics {} http://{address}/metrics", config.name)?;
        writeln!(stdout, "operator {} http://{address}", config.name)?;
    }
    writeln!(stdout, "node {} http://{local_address}", config.name)?;
    stdout.flush()?;
    Ok(())
}

/// Free disk and the node's public figures go into gossip every few seconds, for status, the
/// public status page and placement decisions.
fn spawn_disk_reporter(
    cluster: &ClusterPlane,
    data_dir: &Path,
    store: &BlobStore,
    answers: &Arc<AnswerCounters>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let state = cluster.membership.state();
    let (data_dir, store, answers) = (data_dir.to_owned(), store.clone(), answers.clone());
    tokio::spawn(async move {
        loop {
            if let Ok(stats) = rustix::fs::statvfs(&data_dir) {
                state.set_free_disk(stats.f_bavail.saturating_mul(stats.f_frsize)).await;
            }
            let figures = crate::edge::site::Figures::of(&store, &answers);
            if let Ok(json) = serde_json::to_string(&figures) {
                state.set_stats(json).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(DISK_REPORT_INTERVAL) => {}
            }
        }
    })
}

/// Serves HTTP until `shutdown`, then leaves in order: out of gossip's ready set first (peers stop
/// choosing this node), two gossip rounds later stop accepting, then let open requests finish for
/// up to [`GRACE_PERIOD`].
async fn serve_until_shutdown(
    listener: TcpListener,
    app: PublicApp,
    front_end: &HttpFrontEnd,
    connections: ConnectionLimits,
    settings: ConnectionSettings,
    cluster: Option<&ClusterPlane>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http_shutdown = CancellationToken::new();
    let leaving = {
        let http_shutdown = http_shutdown.clone();
        let membership_state = cluster.map(|cluster| (cluster.membership.state(), cluster.membership.gossip_interval()));
        tokio::spawn(async move {
            shutdown.cancelled().await;
            if let Some((state, interval)) = membership_state {
                state.set_ready(false).await;
                tokio::time::sleep(interval * 2).await;
            }
            http_shutdown.cancel();
        })
    };
    let (tls, alt_svc) = (front_end.tls.clone(), front_end.alt_svc.clone());
    let site = crate::transport::http::Site { app, tls, alt_svc, limits: connections, settings };
    let served = crate::transport::http::serve(listener, site, http_shutdown, GRACE_PERIOD).await.context("serving HTTP");
    leaving.abort();
    served
}

/// Hands catalog leadership over first, so the others need no election timeout to go on, then stops
/// the Raft catalog.
async fn hand_over_catalog(cluster: &ClusterPlane) {
    let (keeper_shutdown, keeper) = &cluster.membership_keeper;
    keeper_shutdown.cancel();
    keeper.wait().await;
    if let Some(successor) = cluster.raft.step_down(&cluster.peers.catalog_successors()).await {
        info!(successor, "handed catalog leadership over");
    }
    cluster.raft.shutdown().await;
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
