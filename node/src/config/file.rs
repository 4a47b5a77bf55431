//! `topology.toml` as written: the sections and fields operators edit, parsed strictly (an unknown
//! field is an error). [`super::resolve`] turns them into a [`super::NodeConfig`].

use std::path::PathBuf;

use serde::Deserialize;

/// Values given on the command line or in the environment; each overrides the file. They are the
/// same settings a node's section of `topology.toml` has.
pub type Overrides = NodeSettingsFile;

/// The part of `topology.toml` shared by every node, and per-node settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettingsFile {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub ref_ttl: Option<String>,
    pub policy_ttl: Option<String>,
    pub max_disk: Option<String>,
    pub min_free_disk: Option<String>,
    pub public_url: Option<String>,
    pub tree_page_size: Option<String>,
    /// The pause between two scrubber passes over the stored blobs (default `24h`; `0` turns it off).
    pub scrub_interval: Option<String>,
    /// Bytes per second the scrubber reads at most (default `50MB`).
    pub scrub_rate: Option<String>,
    /// Check a stored blob's chunk sums on every read (default `false`: once per change of the file,
    /// the scrubber re-checking on its schedule; always `true` while the scrubber is off).
    pub verify_every_read: Option<bool>,
    /// The UDP address the QUIC peer endpoint binds (default: all interfaces, the port of `peer_address`).
    pub peer_listen: Option<String>,
    /// The UDP address gossip binds (default: all interfaces, the port of `gossip_address`).
    pub gossip_listen: Option<String>,
    /// The UDP and TCP address the DNS server binds (default `[dns] listen`, else `0.0.0.0:53`).
    pub dns_listen: Option<String>,
    /// The TCP address the rsync daemon binds (default `[rsync] listen`, else `0.0.0.0:873`).
    pub rsync_listen: Option<String>,
    /// The operator port: `/metrics`, `/healthz`, `/readyz`, and with the operator token the
    /// operator's routes (status, drain, pins); none by default. Also spelled `operator_listen`.
    #[serde(alias = "operator_listen")]
    pub metrics_listen: Option<String>,
    /// The file holding the operator token (default `DATA/operator-token`, made at first start).
    pub operator_token_file: Option<PathBuf>,
    /// The access log's directory, or `off` (default `DATA/logs`).
    pub access_log: Option<String>,
    /// PEM certificate chain for TLS on the HTTP port (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the HTTP port (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
}

/// `topology.toml`: the cluster, its nodes, and the defaults they share.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub cluster: ClusterSection,
    /// The authoritative DNS every node serves for `cluster.zone`.
    #[serde(default)]
    pub dns: Option<DnsSection>,
    /// Repositories kept whole on every node (`hf-mirror mirror` does the same at run time).
    #[serde(default)]
    pub pins: Vec<PinEntry>,
    /// The rsync daemon every node runs for bulk users.
    #[serde(default)]
    pub rsync: Option<RsyncSection>,
    /// The edge's limits on anonymous clients.
    pub limits: Option<LimitsSection>,
    /// What the public pages (`/`, `/status`) say about who runs the mirror.
    #[serde(default)]
    pub site: Option<SiteSection>,
    #[serde(default)]
    pub defaults: NodeSettingsFile,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    /// The DNS zone the nodes are authoritative for (used by the DNS issue).
    pub zone: String,
    /// Where the cluster CA and node certificates are (`hf-mirror cluster certs --out DIR`).
    pub certs_dir: Option<PathBuf>,
    /// How many nodes keep each blob (default 2).
    pub replicas: Option<usize>,
    /// How often nodes gossip (default 500ms; a dead node is noticed after about ten rounds).
    pub gossip_interval: Option<String>,
    /// How often each node checks that it holds the blobs placement gives it (default 60s).
    pub replica_check_interval: Option<String>,
}

/// `[dns]`: how the nodes answer for the zone.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// TTL of every answer (default 30s).
    pub ttl: Option<String>,
    /// The UDP and TCP address each node's DNS server binds (default `0.0.0.0:53`).
    pub listen: Option<String>,
    /// The SOA's responsible mailbox as a name (default `hostmaster.ZONE`).
    pub hostmaster: Option<String>,
    /// The geo-routed name for rsync users (default `rsync`).
    pub rsync_name: Option<String>,
    /// How many nodes the rsync name answers, nearest first (default 1).
    pub rsync_answers: Option<usize>,
    /// Names answering every ready node; `@` is the apex (default `["@", "www"]`).
    pub http_names: Option<Vec<String>>,
    /// Nodes answered when none is ready (default: every node).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// The order for clients of unknown location (default: the topology's order).
    #[serde(default)]
    pub default_order: Vec<String>,
    /// UDP responses per second per client network, /24 or /56 (default 20; 0 turns limiting off).
    pub rate_limit: Option<u32>,
    /// A MaxMind-format City database consulted after the prefix table.
    pub geoip_database: Option<PathBuf>,
    /// Prefix → location: a node's place (`node`) or coordinates (`latitude`, `longitude`).
    #[serde(default)]
    pub prefixes: Vec<PrefixEntry>,
}

/// `[site]`: the operator's texts on the public pages; each has a default.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The page title (default: the zone).
    pub title: Option<String>,
    /// Who runs the mirror (an association's name).
    pub operator: Option<String>,
    /// How to reach them: an e-mail address or a URL.
    pub contact: Option<String>,
    /// A paragraph about the mirror.
    pub about: Option<String>,
    /// Terms of use (default: a read-only mirror, as is, licences of each repository).
    pub terms: Option<String>,
    /// Privacy statement (default: what the access log keeps and for how long).
    pub privacy: Option<String>,
}

/// `[rsync]`: the read-only rsync daemon of every node.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RsyncSection {
    /// TCP address (default `0.0.0.0:873`); per node `rsync_listen`.
    pub listen: Option<String>,
    /// Concurrent clients per node (default 64).
    pub max_connections: Option<u32>,
    /// Seconds of silence before a client is dropped (default 600).
    pub timeout_secs: Option<u32>,
    /// How often the `indexes` module gets a new Parquet snapshot of the catalog (default `15m`).
    pub index_interval: Option<String>,
}

/// `[limits]`: what one anonymous client may do (requests per second with a burst, parallel requests
/// per IPv4 address or IPv6 /48, bytes per 24 hours; 0 is unlimited), and allow-listed prefixes.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub requests_per_second: Option<f64>,
    pub burst: Option<f64>,
    pub parallel: Option<u32>,
    /// A size (`1TB`), or `0` for unlimited.
    pub daily_bytes: Option<String>,
    /// How many clients each limit table remembers (default 100000).
    pub max_clients: Option<usize>,
    /// Cold fills (files fetched from upstream to be stored) a node runs at once (default 64).
    pub cold_fills: Option<usize>,
    /// Cold fills one client network may have running (default 16; `snapshot_download` runs 8 at once).
    pub cold_fills_per_client: Option<usize>,
    /// The most files one commit may have to be cached (default 300000); bigger repos pass through.
    pub max_manifest_files: Option<usize>,
    /// Client connections a node keeps open (default 16384).
    pub connections: Option<usize>,
    /// Client connections per IPv4 address or IPv6 /64 (default 256).
    pub connections_per_client: Option<usize>,
    /// Time to send a request's headers, and an HTTP/1.1 connection's idle time (default `20s`).
    pub header_timeout: Option<String>,
    /// Time an HTTP/2 or HTTP/3 connection may have no request in flight (default `120s`).
    pub idle_timeout: Option<String>,
    /// Concurrent requests per HTTP/2 or HTTP/3 connection (default 100).
    pub streams_per_connection: Option<u32>,
    /// Prefixes of reverse proxies whose PROXY protocol header or `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
}

/// `[[limits.allow]]`: a prefix (academic network, CI farm) with its own quota; fields left out keep
/// the default's value.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub prefix: String,
    pub requests_per_second: Option<f64>,
    pub burst: Option<f64>,
    pub parallel: Option<u32>,
    pub daily_bytes: Option<String>,
}

/// `[[pins]]`: a repository kept whole on every node.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinEntry {
    pub repo: String,
    #[serde(rename = "type", default = "default_pin_type")]
    pub repo_type: String,
    #[serde(default = "default_pin_revision")]
    pub revision: String,
}

fn default_pin_type() -> String {
    "model".into()
}

fn default_pin_revision() -> String {
    "main".into()
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixEntry {
    pub prefix: String,
    pub node: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// One peer of the cluster: where it is, what it has, and its own settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    pub city: String,
    pub country: String,
    pub operator: String,
    pub latitude: f64,
    pub longitude: f64,
    pub bandwidth_gbps: u32,
    /// Raw capacity, e.g. `1.8PB`; placement weights follow it.
    pub storage: String,
    /// `host:port` where the other nodes reach this node's QUIC peer endpoint.
    pub peer_address: Option<String>,
    /// `host:port` where the other nodes reach this node's gossip (UDP).
    pub gossip_address: Option<String>,
    /// The node's public IPv4 address, answered in DNS.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// The node's public IPv6 address, answered in DNS.
    pub ipv6: Option<std::net::Ipv6Addr>,
    #[serde(flatten)]
    pub settings: NodeSettingsFile,
}
