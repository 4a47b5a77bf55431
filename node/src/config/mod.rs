//! The node's configuration: the embedded single-node default, `topology.toml`, and the overrides
//! given as flags or environment variables, merged and validated once at start-up.
//!
//! Precedence, highest first: a flag or its environment variable, the node's `[[nodes]]` entry, the
//! file's `[defaults]`, the embedded default. Every error names the field it is about.
//!
//! Configuration is plain data: each section owns its types (`limits`, `rsync`, `tls`, `pins`), and
//! validating a section never calls into the subsystem that will use it.

pub mod file;
pub mod limits;
pub mod pins;
pub mod rsync;
pub mod site;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{
    AllowEntry, ClusterSection, DnsSection, LimitsSection, NodeEntry, NodeSettingsFile, Overrides, PinEntry, PrefixEntry, RsyncSection,
    TopologyFile,
};
pub use limits::{LimitsConfig, Quota};
pub use rsync::RsyncConfig;
pub use site::SiteConfig;
pub use tls::TlsFiles;

use crate::common::net::Prefix;
use crate::common::units::{parse_duration, parse_size};

/// Everything one node needs to serve, fully resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The Hub we mirror, without a trailing slash.
    pub upstream: String,
    /// How long a branch or tag → commit answer is used before it is checked upstream again.
    pub ref_ttl: Duration,
    /// How long "this repo is public and not gated" is trusted before it is checked again.
    pub policy_ttl: Duration,
    /// The most bytes of blobs the node keeps; `None` means the file system's size.
    pub max_disk: Option<u64>,
    /// Free space the store always leaves on the file system.
    pub min_free_disk: u64,
    /// The origin clients reach this node at, for absolute `Link` URLs; `None` means the request's
    /// `Host` header over plain HTTP.
    pub public_url: Option<String>,
    /// Entries per page of `/tree` answers.
    pub tree_page_size: usize,
    /// How the scrubber checks stored blobs against their sums; `None`: off.
    pub scrub: Option<ScrubSettings>,
    /// Whether a stored blob's chunk sums are checked on every read rather than once per change of
    /// its file (see [`NodeConfig::checks_every_read`]).
    pub verify_every_read: bool,
    /// The cluster this node belongs to; `None` for a single node.
    pub cluster: Option<ClusterConfig>,
    /// The zone this node answers DNS for, when the topology has a `[dns]` section (cluster only).
    pub dns: Option<DnsConfig>,
    /// Repositories `topology.toml` pins: (repository, revision).
    pub pins: Vec<(hfm_cluster::types::RepoKey, String)>,
    /// The node's rsync daemon, when the topology has an `[rsync]` section.
    pub rsync: Option<RsyncConfig>,
    /// The operator port: `/metrics`, `/healthz` and `/readyz` for anyone reaching it, the operator's
    /// routes (status, drain, pins) for a bearer of the operator token.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the operator token is; `None`: `DATA/operator-token`.
    pub operator_token_file: Option<PathBuf>,
    /// Where the access log goes.
    pub access_log: AccessLogTarget,
    /// The certificate and key TLS connections on the HTTP port use (none: cleartext only).
    pub tls: Option<TlsFiles>,
    /// The edge's limits on anonymous clients (`[limits]`; the published policy by default).
    pub limits: LimitsConfig,
    /// What the public pages say (`[site]` and the topology's nodes).
    pub site: SiteConfig,
}

/// How the store's scrubber runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSettings {
    /// The pause between two passes over the stored blobs.
    pub interval: Duration,
    /// Bytes read per second at most.
    pub rate: u64,
}

/// A node's authoritative DNS: the zone and how its server listens.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    pub zone: hfm_dns::ZoneConfig,
    pub settings: hfm_dns::DnsSettings,
}

/// Where a node writes its access log.
#[derive(Clone, Debug, PartialEq)]
pub enum AccessLogTarget {
    /// `DATA/logs` (the default).
    DataDir,
    Off,
    Directory(PathBuf),
}

impl NodeConfig {
    /// Whether stored blobs are checked on every read: when asked for, and always while no scrubber
    /// runs (a blob checked once is trusted only while the scrubber checks it again).
    pub fn checks_every_read(&self) -> bool {
        self.verify_every_read || self.scrub.is_none()
    }

    /// The file holding the operator token.
    pub fn operator_token_path(&self) -> PathBuf {
        self.operator_token_file.clone().unwrap_or_else(|| self.data_dir.join("operator-token"))
    }

    /// The access log's directory, unless it is off.
    pub fn access_log_dir(&self) -> Option<PathBuf> {
        match &self.access_log {
            AccessLogTarget::DataDir => Some(self.data_dir.join("logs")),
            AccessLogTarget::Off => None,
            AccessLogTarget::Directory(directory) => Some(directory.clone()),
        }
    }
}

/// What a node of a multi-node topology needs to reach its peers.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's name; gossip ignores nodes of another cluster.
    pub cluster_name: String,
    /// The cluster CA and this node's certificate and key (`hf-mirror cluster certs`).
    pub certs_dir: PathBuf,
    /// The UDP address the node's QUIC peer endpoint binds.
    pub peer_listen: SocketAddr,
    /// How many nodes keep each blob.
    pub replicas: usize,
    /// Every node of the topology, this one included, in file order.
    pub peers: Vec<PeerConfig>,
    /// The UDP address gossip binds.
    pub gossip_listen: SocketAddr,
    /// How often a node gossips with its peers.
    pub gossip_interval: Duration,
    /// How often a node compares the catalog's replica records with its store and catches up.
    pub replica_check_interval: Duration,
}

/// A node as its peers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub name: String,
    /// `host:port` of its QUIC endpoint.
    pub peer_address: String,
    /// `host:port` of its gossip endpoint (UDP).
    pub gossip_address: String,
    /// Its placement weight: its raw storage in bytes.
    pub weight: f64,
}

impl NodeConfig {
    /// The embedded default: one node on loopback, data in `./hf-mirror-data`, upstream huggingface.co.
    pub fn embedded_default() -> NodeConfig {
        NodeConfig {
            name: "local".into(),
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("./hf-mirror-data"),
            upstream: "https://huggingface.co".into(),
            ref_ttl: Duration::from_secs(60),
            policy_ttl: Duration::from_secs(600),
            max_disk: None,
            min_free_disk: 1 << 30,
            public_url: None,
            tree_page_size: 1000,
            scrub: Some(ScrubSettings { interval: Duration::from_secs(24 * 3600), rate: 50_000_000 }),
            verify_every_read: false,
            cluster: None,
            dns: None,
            pins: Vec::new(),
            rsync: None,
            // The embedded default listens on loopback only: its clients are this host's own, and an
            // allow rule leaves them unlimited. A topology's nodes get the published policy.
            limits: LimitsConfig::for_local_use(),
            metrics_listen: None,
            operator_token_file: None,
            access_log: AccessLogTarget::DataDir,
            tls: None,
            site: SiteConfig::standalone("local"),
        }
    }
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct ConfigError {
    /// Where the value came from: the file's path, or `flag or environment`.
    pub origin: String,
    pub field: String,
    pub message: String,
}

fn parse_upstream(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| format!("invalid URL {text:?} (expected http:// or https://)"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!("invalid URL {text:?} (expected scheme://host[:port] without a path)"));
    }
    Ok(trimmed.to_owned())
}

/// A public URL: like an upstream URL, and it may carry a path prefix (`https://example.org/hf`), under
/// which every route, link and redirect of the node then lives (a node behind a shared reverse proxy).
fn parse_public_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or("", |(_, rest)| rest);
    let (origin_part, prefix) = match after_scheme.find('/') {
        Some(index) => (&trimmed[..trimmed.len() - after_scheme.len() + index], &after_scheme[index..]),
        None => (trimmed, ""),
    };
    parse_upstream(origin_part)?;
    let sane_segment = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
    };
    if !prefix.is_empty() && !prefix[1..].split('/').all(sane_segment) {
        return Err(format!("invalid path prefix in {text:?} (segments of letters, digits, '-', '.', '_', '~')"));
    }
    Ok(trimmed.to_owned())
}

/// Applies one layer of settings on top of `config`.
fn apply_layer(config: &mut NodeConfig, layer: &NodeSettingsFile, origin: &str, field_prefix: &str) -> Result<(), ConfigError> {
    let fail = |field: &str, message: String| {
        // Flags are spelled with dashes, file keys with underscores.
        let field = if field_prefix == "--" { field.replace('_', "-") } else { field.to_owned() };
        ConfigError { origin: origin.to_owned(), field: format!("{field_prefix}{field}"), message }
    };
    if let Some(listen) = &layer.listen {
        config.listen =
            listen.parse().map_err(|_| fail("listen", format!("invalid socket address {listen:?} (expected e.g. 127.0.0.1:8080)")))?;
    }
    if let Some(data_dir) = &layer.data_dir {
        if data_dir.as_os_str().is_empty() {
            return Err(fail("data_dir", "must not be empty".into()));
        }
        config.data_dir = data_dir.clone();
    }
    if let Some(upstream) = &layer.upstream {
        config.upstream = parse_upstream(upstream).map_err(|message| fail("upstream", message))?;
    }
    if let Some(ref_ttl) = &layer.ref_ttl {
        config.ref_ttl = parse_duration(ref_ttl).map_err(|message| fail("ref_ttl", message))?;
    }
    if let Some(policy_ttl) = &layer.policy_ttl {
        config.policy_ttl = parse_duration(policy_ttl).map_err(|message| fail("policy_ttl", message))?;
    }
    if let Some(max_disk) = &layer.max_disk {
        config.max_disk = Some(parse_size(max_disk).map_err(|message| fail("max_disk", message))?);
    }
    if let Some(min_free_disk) = &layer.min_free_disk {
        config.min_free_disk = parse_size(min_free_disk).map_err(|message| fail("min_free_disk", message))?;
    }
    match (&layer.tls_cert, &layer.tls_key) {
        (Some(certificate), Some(key)) => {
            config.tls = Some(TlsFiles { certificate: certificate.clone(), key: key.clone() });
        }
        (Some(_), None) => return Err(fail("tls_key", "tls_cert needs tls_key".into())),
        (None, Some(_)) => return Err(fail("tls_cert", "tls_key needs tls_cert".into())),
        (None, None) => {}
    }
    if let Some(target) = &layer.access_log {
        config.access_log = match target.trim() {
            "" => return Err(fail("access_log", "must not be empty (a directory, or off)".into())),
            "off" => AccessLogTarget::Off,
            directory => AccessLogTarget::Directory(PathBuf::from(directory)),
        };
    }
    if let Some(path) = &layer.operator_token_file {
        config.operator_token_file = Some(path.clone());
    }
    if let Some(listen) = &layer.metrics_listen {
        config.metrics_listen = Some(listen.parse().map_err(|_| fail("metrics_listen", format!("invalid socket address {listen:?}")))?);
    }
    if let Some(public_url) = &layer.public_url {
        config.public_url = Some(parse_public_url(public_url).map_err(|message| fail("public_url", message))?);
    }
    if let Some(interval) = &layer.scrub_interval {
        let interval = parse_duration(interval).map_err(|message| fail("scrub_interval", message))?;
        let rate = config.scrub.map_or(50_000_000, |scrub| scrub.rate);
        config.scrub = (!interval.is_zero()).then_some(ScrubSettings { interval, rate });
    }
    if let Some(every_read) = layer.verify_every_read {
        config.verify_every_read = every_read;
    }
    if let Some(rate) = &layer.scrub_rate {
        let rate = parse_size(rate).map_err(|message| fail("scrub_rate", message))?;
        if rate == 0 {
            return Err(fail("scrub_rate", "must be more than 0 (turn the scrubber off with scrub_interval = \"0\")".into()));
        }
        if let Some(scrub) = &mut config.scrub {
            scrub.rate = rate;
        }
    }
    if let Some(page_size) = &layer.tree_page_size {
        let size: usize = page_size.trim().parse().map_err(|_| fail("tree_page_size", format!("invalid number {page_size:?}")))?;
        if size == 0 || size > 10_000 {
            return Err(fail("tree_page_size", "must be between 1 and 10000".into()));
        }
        config.tree_page_size = size;
    }
    Ok(())
}

/// Reads and parses `topology.toml`.
pub fn read_topology(path: &Path) -> Result<TopologyFile, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        origin: origin.clone(),
        field: "(file)".into(),
        message: error.to_string(),
    })?;
    parse_topology(&text, &origin)
}

/// Parses the text of `topology.toml`; errors name the offending key.
pub fn parse_topology(text: &str, origin: &str) -> Result<TopologyFile, ConfigError> {
    let topology: TopologyFile = toml::from_str(text).map_err(|error| {
        let message = error.message().to_owned();
        let field = error
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| format!("line {}", before.lines().count().max(1)))
            .unwrap_or_else(|| "(file)".into());
        ConfigError { origin: origin.to_owned(), field, message }
    })?;
    let mut names = std::collections::HashSet::new();
    for (index, node) in topology.nodes.iter().enumerate() {
        let fail =
            |field: &str, message: String| ConfigError { origin: origin.to_owned(), field: format!("nodes[{index}].{field}"), message };
        if node.name.is_empty() || !node.name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-') {
            return Err(fail("name", format!("invalid node name {:?} (letters, digits and '-')", node.name)));
        }
        if !names.insert(node.name.clone()) {
            return Err(fail("name", format!("duplicate node name {:?}", node.name)));
        }
        if !(-90.0..=90.0).contains(&node.latitude) {
            return Err(fail("latitude", format!("{} is not a latitude", node.latitude)));
        }
        if !(-180.0..=180.0).contains(&node.longitude) {
            return Err(fail("longitude", format!("{} is not a longitude", node.longitude)));
        }
        parse_size(&node.storage).map_err(|message| fail("storage", message))?;
    }
    // Validate every node's settings now, so a typo in any node fails every node's start-up.
    for (index, node) in topology.nodes.iter().enumerate() {
        let mut scratch = NodeConfig::embedded_default();
        apply_layer(&mut scratch, &topology.defaults, origin, "defaults.")?;
        apply_layer(&mut scratch, &node.settings, origin, &format!("nodes[{index}]."))?;
    }
    Ok(topology)
}

/// Resolves the configuration of one node from the optional topology file and the overrides.
pub fn resolve(topology: Option<(&TopologyFile, &str)>, node_name: Option<&str>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
    let mut config = NodeConfig::embedded_default();
    if let Some((topology, origin)) = topology {
        apply_layer(&mut config, &topology.defaults, origin, "defaults.")?;
        let node_index = match node_name {
            Some(name) => topology.nodes.iter().position(|node| node.name == name).ok_or_else(|| ConfigError {
                origin: origin.to_owned(),
                field: "nodes".into(),
                message: format!(
                    "no node named {name:?} (known: {})",
                    topology.nodes.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })?,
            None if topology.nodes.len() == 1 => 0,
            None => {
                return Err(ConfigError {
                    origin: "flag or environment".into(),
                    field: "--node".into(),
                    message: format!("the topology has {} nodes; choose one with --node NAME", topology.nodes.len()),
                });
            }
        };
        let node = &topology.nodes[node_index];
        config.name = node.name.clone();
        apply_layer(&mut config, &node.settings, origin, &format!("nodes[{node_index}]."))?;
        config.cluster = resolve_cluster(topology, origin, node_index)?;
        if config.cluster.is_some() {
            config.dns = resolve_dns(topology, origin, node_index, overrides)?;
        }
        let node_listen = topology.nodes[node_index].settings.rsync_listen.as_ref().map(|text| (text, node_index));
        config.rsync = resolve_rsync(topology.rsync.as_ref(), node_listen, overrides, origin)?;
        config.limits = match &topology.limits {
            Some(section) => resolve_limits(section, origin)?,
            None => LimitsConfig::default(),
        };
        let rsync_name = config
            .dns
            .as_ref()
            .filter(|_| config.rsync.is_some())
            .map(|dns| format!("{}.{}", dns.zone.rsync_label, dns.zone.apex.trim_end_matches('.')));
        config.site = SiteConfig::resolve(topology.site.as_ref(), &topology.cluster.zone, &topology.nodes, rsync_name);
        for (index, entry) in topology.pins.iter().enumerate() {
            let pin = pins::validate_pin(&entry.repo, &entry.repo_type, &entry.revision).map_err(|message| ConfigError {
                origin: origin.to_owned(),
                field: format!("pins[{index}]"),
                message,
            })?;
            config.pins.push(pin);
        }
    } else {
        if let Some(name) = node_name {
            config.name = name.to_owned();
        }
        config.site = SiteConfig::standalone(&config.name);
        config.rsync = resolve_rsync(None, None, overrides, "flag or environment")?;
    }
    apply_layer(&mut config, overrides, "flag or environment", "--")?;
    // Loopback's allow rule is for a node only its own host reaches. Listening anywhere else, its
    // loopback clients may be a reverse proxy carrying the whole Internet: the published policy.
    if topology.is_none() && !config.listen.ip().is_loopback() {
        config.limits = LimitsConfig::default();
    }
    Ok(config)
}

/// Applies the fields a quota entry sets over `base`.
fn apply_quota(
    base: Quota,
    entry: (Option<f64>, Option<f64>, Option<u32>, Option<&String>),
    field: &str,
    origin: &str,
) -> Result<Quota, ConfigError> {
    let fail = |name: &str, message: String| ConfigError { origin: origin.to_owned(), field: format!("{field}{name}"), message };
    let (requests_per_second, burst, parallel, daily_bytes) = entry;
    let mut quota = base;
    if let Some(rate) = requests_per_second {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(fail("requests_per_second", format!("{rate} is not a rate")));
        }
        quota.requests_per_second = rate;
    }
    if let Some(burst) = burst {
        if !(burst.is_finite() && burst >= 0.0) {
            return Err(fail("burst", format!("{burst} is not a burst")));
        }
        quota.burst = burst;
    }
    if let Some(parallel) = parallel {
        quota.parallel = parallel;
    }
    if let Some(text) = daily_bytes {
        quota.daily_bytes = parse_size(text).map_err(|message| fail("daily_bytes", message))?;
    }
    Ok(quota)
}

/// Resolves `[limits]` over the published defaults.
fn resolve_limits(section: &LimitsSection, origin: &str) -> Result<LimitsConfig, ConfigError> {
    let mut limits = LimitsConfig::default();
    let entry = (section.requests_per_second, section.burst, section.parallel, section.daily_bytes.as_ref());
    limits.default = apply_quota(limits.default, entry, "limits.", origin)?;
    if let Some(max_clients) = section.max_clients {
        limits.max_clients = max_clients.max(1);
    }
    if let Some(cold_fills) = section.cold_fills {
        limits.cold_fills = cold_fills;
    }
    if let Some(per_client) = section.cold_fills_per_client {
        limits.cold_fills_per_client = per_client;
    }
    if let Some(max_files) = section.max_manifest_files {
        if max_files == 0 {
            return Err(ConfigError {
                origin: origin.to_owned(),
                field: "limits.max_manifest_files".into(),
                message: "must be at least 1".into(),
            });
        }
        limits.max_manifest_files = max_files;
    }
    if let Some(connections) = section.connections {
        limits.connections = connections;
    }
    if let Some(per_client) = section.connections_per_client {
        limits.connections_per_client = per_client;
    }
    let duration = |field: &str, text: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        let Some(text) = text else { return Ok(default) };
        let value =
            parse_duration(text).map_err(|message| ConfigError { origin: origin.to_owned(), field: format!("limits.{field}"), message })?;
        if value.is_zero() {
            return Err(ConfigError { origin: origin.to_owned(), field: format!("limits.{field}"), message: "must be above zero".into() });
        }
        Ok(value)
    };
    limits.header_timeout = duration("header_timeout", &section.header_timeout, limits.header_timeout)?;
    limits.idle_timeout = duration("idle_timeout", &section.idle_timeout, limits.idle_timeout)?;
    if let Some(streams) = section.streams_per_connection {
        limits.streams_per_connection = streams.max(1);
    }
    for (index, text) in section.trusted_proxies.iter().enumerate() {
        let prefix = Prefix::parse(text).map_err(|message| ConfigError {
            origin: origin.to_owned(),
            field: format!("limits.trusted_proxies[{index}]"),
            message,
        })?;
        limits.trusted_proxies.push(prefix);
    }
    for (index, rule) in section.allow.iter().enumerate() {
        let field = format!("limits.allow[{index}].");
        let prefix = Prefix::parse(&rule.prefix).map_err(|message| ConfigError {
            origin: origin.to_owned(),
            field: format!("{field}prefix"),
            message,
        })?;
        let quota =
            apply_quota(limits.default, (rule.requests_per_second, rule.burst, rule.parallel, rule.daily_bytes.as_ref()), &field, origin)?;
        limits.allow.push((prefix, quota));
    }
    Ok(limits)
}

/// Resolves a node's rsync daemon from `[rsync]` and the node's `rsync_listen` (with its index); a
/// `--rsync-listen` flag runs the daemon with the defaults even without an `[rsync]` section.
fn resolve_rsync(
    section: Option<&RsyncSection>,
    node_listen: Option<(&String, usize)>,
    overrides: &Overrides,
    origin: &str,
) -> Result<Option<RsyncConfig>, ConfigError> {
    let flagged = overrides.rsync_listen.as_ref().map(|_| RsyncSection::default());
    let Some(section) = section.or(flagged.as_ref()) else { return Ok(None) };
    let (text, field) = match (&overrides.rsync_listen, node_listen, &section.listen) {
        (Some(text), ..) => (text.clone(), "--rsync-listen".to_owned()),
        (None, Some((text, node_index)), _) => (text.clone(), format!("nodes[{node_index}].rsync_listen")),
        (None, None, Some(text)) => (text.clone(), "rsync.listen".to_owned()),
        (None, None, None) => ("0.0.0.0:873".to_owned(), "rsync.listen".to_owned()),
    };
    let fail = |field: String, message: String| ConfigError { origin: origin.to_owned(), field, message };
    let listen = text.parse().map_err(|_| fail(field, format!("invalid socket address {text:?}")))?;
    let index_interval = match &section.index_interval {
        Some(text) => parse_duration(text).map_err(|message| fail("rsync.index_interval".into(), message))?,
        None => Duration::from_secs(15 * 60),
    };
    Ok(Some(RsyncConfig {
        listen,
        max_connections: section.max_connections.unwrap_or(64),
        timeout_secs: section.timeout_secs.unwrap_or(600),
        index_interval,
    }))
}

/// Resolves a node's DNS server from `[dns]` (none without that section).
fn resolve_dns(topology: &TopologyFile, origin: &str, node_index: usize, overrides: &Overrides) -> Result<Option<DnsConfig>, ConfigError> {
    let Some(section) = &topology.dns else { return Ok(None) };
    let fail = |field: String, message: String| ConfigError { origin: origin.to_owned(), field, message };
    let ttl = match &section.ttl {
        Some(text) => parse_duration(text).map_err(|message| fail("dns.ttl".into(), message))?,
        None => Duration::from_secs(30),
    };
    let ttl = u32::try_from(ttl.as_secs()).map_err(|_| fail("dns.ttl".into(), "too long".into()))?;
    let node_settings = &topology.nodes[node_index].settings;
    let (listen_text, listen_field) =
        match (&overrides.dns_listen, &node_settings.dns_listen, &topology.defaults.dns_listen, &section.listen) {
            (Some(text), ..) => (text.clone(), "--dns-listen".to_owned()),
            (None, Some(text), ..) => (text.clone(), format!("nodes[{node_index}].dns_listen")),
            (None, None, Some(text), _) => (text.clone(), "defaults.dns_listen".to_owned()),
            (None, None, None, Some(text)) => (text.clone(), "dns.listen".to_owned()),
            (None, None, None, None) => ("0.0.0.0:53".to_owned(), "dns.listen".to_owned()),
        };
    let listen: SocketAddr = listen_text.parse().map_err(|_| fail(listen_field, format!("invalid socket address {listen_text:?}")))?;
    let location_of = |name: &str| topology.nodes.iter().find(|node| node.name == name).map(|node| (node.latitude, node.longitude));
    let mut prefixes = Vec::new();
    for (index, entry) in section.prefixes.iter().enumerate() {
        let field = |key: &str| format!("dns.prefixes[{index}].{key}");
        let prefix = hfm_dns::geo::Prefix::parse(&entry.prefix).map_err(|error| fail(field("prefix"), error.to_string()))?;
        let (latitude, longitude) = match (&entry.node, entry.latitude, entry.longitude) {
            (Some(node), None, None) => {
                location_of(node).ok_or_else(|| fail(field("node"), format!("{node:?} is not a node of the topology")))?
            }
            (None, Some(latitude), Some(longitude)) if (-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude) => {
                (latitude, longitude)
            }
            _ => return Err(fail(field("location"), "give either node = NAME or latitude and longitude (degrees)".into())),
        };
        prefixes.push((prefix, hfm_dns::geo::Location { latitude, longitude }));
    }
    let mut nodes = Vec::new();
    for (index, node) in topology.nodes.iter().enumerate() {
        let weight = parse_size(&node.storage).map_err(|message| fail(format!("nodes[{index}].storage"), message))?;
        nodes.push(hfm_dns::ZoneNode {
            name: node.name.clone(),
            ipv4: node.ipv4,
            ipv6: node.ipv6,
            location: hfm_dns::geo::Location { latitude: node.latitude, longitude: node.longitude },
            weight,
        });
    }
    let zone = hfm_dns::ZoneConfig {
        apex: topology.cluster.zone.clone(),
        ttl,
        hostmaster: section.hostmaster.clone().unwrap_or_else(|| format!("hostmaster.{}", topology.cluster.zone)),
        // The start time: a later start never has a smaller serial (valid until 2106).
        serial: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_secs() as u32),
        nodes,
        rsync_label: section.rsync_name.clone().unwrap_or_else(|| "rsync".into()),
        rsync_answers: section.rsync_answers.unwrap_or(1),
        http_labels: section.http_names.clone().unwrap_or_else(|| vec!["@".into(), "www".into()]),
        fallback: section.fallback.clone(),
        default_order: section.default_order.clone(),
        prefixes,
        geoip_database: section.geoip_database.clone(),
    };
    // Names, fallback and default order are checked by building the zone once now.
    hfm_dns::Zone::new(&zone).map_err(|error| fail("dns".into(), error.to_string()))?;
    let settings = hfm_dns::DnsSettings { listen, rate_limit: section.rate_limit.unwrap_or(20), slip: 2 };
    Ok(Some(DnsConfig { zone, settings }))
}

/// Resolves the cluster part of a node's configuration: only for topologies of more than one node.
fn resolve_cluster(topology: &TopologyFile, origin: &str, node_index: usize) -> Result<Option<ClusterConfig>, ConfigError> {
    if topology.nodes.len() < 2 {
        return Ok(None);
    }
    let fail = |field: String, message: String| ConfigError { origin: origin.to_owned(), field, message };
    let certs_dir = topology
        .cluster
        .certs_dir
        .clone()
        .ok_or_else(|| fail("cluster.certs_dir".into(), "a topology of several nodes needs the peer certificates' directory".into()))?;
    let replicas = topology.cluster.replicas.unwrap_or(2);
    if replicas == 0 || replicas > topology.nodes.len() {
        return Err(fail("cluster.replicas".into(), format!("must be between 1 and the number of nodes ({})", topology.nodes.len())));
    }
    let mut peers = Vec::new();
    for (index, node) in topology.nodes.iter().enumerate() {
        let host_port = |value: &Option<String>, key: &str| -> Result<String, ConfigError> {
            let field = format!("nodes[{index}].{key}");
            let value = value.clone().ok_or_else(|| fail(field.clone(), format!("every node of a cluster needs a {key} (host:port)")))?;
            let port_ok = value.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_some_and(|port| port != 0);
            if !port_ok {
                return Err(fail(field, format!("{value:?} is not host:port")));
            }
            Ok(value)
        };
        let peer_address = host_port(&node.peer_address, "peer_address")?;
        let gossip_address = host_port(&node.gossip_address, "gossip_address")?;
        let weight = parse_size(&node.storage).map_err(|message| fail(format!("nodes[{index}].storage"), message))? as f64;
        peers.push(PeerConfig { name: node.name.clone(), peer_address, gossip_address, weight });
    }
    let node = &topology.nodes[node_index];
    // A bind address defaults to every interface on the port the node is reached at; gossip, when
    // the node is reached at an address (not a name), binds that address only: it is the cluster's
    // own plane, not the Internet's.
    let bind_address = |own: &Option<String>,
                        shared: &Option<String>,
                        key: &str,
                        advertised: &str,
                        own_address: bool|
     -> Result<SocketAddr, ConfigError> {
        match own.clone().or_else(|| shared.clone()) {
            Some(text) => text.parse().map_err(|_| fail(format!("nodes[{node_index}].{key}"), format!("invalid socket address {text:?}"))),
            None => match advertised.parse::<SocketAddr>() {
                Ok(address) if own_address => Ok(address),
                _ => {
                    let port = advertised.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).unwrap_or(0);
                    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
                }
            },
        }
    };
    let peer_listen =
        bind_address(&node.settings.peer_listen, &topology.defaults.peer_listen, "peer_listen", &peers[node_index].peer_address, false)?;
    let gossip_listen = bind_address(
        &node.settings.gossip_listen,
        &topology.defaults.gossip_listen,
        "gossip_listen",
        &peers[node_index].gossip_address,
        true,
    )?;
    let gossip_interval = match &topology.cluster.gossip_interval {
        Some(text) => parse_duration(text).map_err(|message| fail("cluster.gossip_interval".into(), message))?,
        None => Duration::from_millis(500),
    };
    let replica_check_interval = match &topology.cluster.replica_check_interval {
        Some(text) => parse_duration(text).map_err(|message| fail("cluster.replica_check_interval".into(), message))?,
        None => Duration::from_secs(60),
    };
    Ok(Some(ClusterConfig {
        cluster_name: topology.cluster.name.clone(),
        certs_dir,
        peer_listen,
        replicas,
        peers,
        gossip_listen,
        gossip_interval,
        replica_check_interval,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_may_carry_a_path_prefix() {
        assert_eq!(parse_public_url("https://example.org/hf/").unwrap(), "https://example.org/hf");
        assert_eq!(parse_public_url("http://127.0.0.1:8080/a/b").unwrap(), "http://127.0.0.1:8080/a/b");
        assert_eq!(parse_public_url("https://example.org").unwrap(), "https://example.org");
        for bad in [
            "https://example.org/../x",
            "https://example.org/a//b",
            "https://example.org/a?b",
            "https://example.org/%2e",
            "ftp://x/y",
            "/hf",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    const TOPOLOGY: &str = r#"
[cluster]
name = "test"
zone = "hf-mirror.test"
certs_dir = "/etc/hf-mirror/certs"

[defaults]
upstream = "https://huggingface.co/"
ref_ttl = "30s"

[[nodes]]
name = "fra1"
city = "Frankfurt"
country = "DE"
operator = "Hetzner"
latitude = 50.11
longitude = 8.68
bandwidth_gbps = 100
storage = "1.8PB"
listen = "127.0.0.1:9001"
max_disk = "1.7PB"
peer_address = "fra1.test:7443"
gossip_address = "fra1.test:7946"

[[nodes]]
name = "ams1"
city = "Amsterdam"
country = "NL"
operator = "NIKHEF"
latitude = 52.37
longitude = 4.90
bandwidth_gbps = 40
storage = "600TB"
peer_address = "ams1.test:7444"
peer_listen = "127.0.0.1:7444"
gossip_address = "ams1.test:7947"
"#;

    #[test]
    fn layers_apply_in_order() {
        let topology = parse_topology(TOPOLOGY, "topology.toml").unwrap();
        let overrides = Overrides { ref_ttl: Some("5s".into()), ..Overrides::default() };
        let config = resolve(Some((&topology, "topology.toml")), Some("fra1"), &overrides).unwrap();
        assert_eq!(config.name, "fra1");
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.upstream, "https://huggingface.co");
        assert_eq!(config.ref_ttl, Duration::from_secs(5));
        assert_eq!(config.max_disk, Some(1_700_000_000_000_000));
        let cluster = config.cluster.expect("two nodes make a cluster");
        assert_eq!(cluster.peer_listen, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(cluster.replicas, 2);
        assert_eq!(cluster.peers.iter().map(|peer| peer.weight).collect::<Vec<_>>(), [1.8e15, 6e14]);
        let other = resolve(Some((&topology, "topology.toml")), Some("ams1"), &Overrides::default()).unwrap();
        assert_eq!(other.ref_ttl, Duration::from_secs(30));
        assert_eq!(other.cluster.unwrap().peer_listen, "127.0.0.1:7444".parse().unwrap());
        let without_address = TOPOLOGY.replace("peer_address = \"ams1.test:7444\"\n", "");
        let topology = parse_topology(&without_address, "topology.toml").unwrap();
        let error = resolve(Some((&topology, "topology.toml")), Some("fra1"), &Overrides::default()).unwrap_err();
        assert_eq!(error.field, "nodes[1].peer_address");
        assert_eq!(other.listen, NodeConfig::embedded_default().listen);
    }

    #[test]
    fn stored_blobs_are_checked_on_every_read_when_asked_or_while_no_scrubber_runs() {
        assert!(!resolve(None, None, &Overrides::default()).unwrap().checks_every_read());
        let asked = Overrides { verify_every_read: Some(true), ..Overrides::default() };
        assert!(resolve(None, None, &asked).unwrap().checks_every_read());
        let unscrubbed = Overrides { scrub_interval: Some("0".into()), ..Overrides::default() };
        assert!(resolve(None, None, &unscrubbed).unwrap().checks_every_read());
        let text = TOPOLOGY.replace("[defaults]\n", "[defaults]\nverify_every_read = true\n");
        let topology = parse_topology(&text, "topology.toml").unwrap();
        assert!(resolve(Some((&topology, "topology.toml")), Some("fra1"), &Overrides::default()).unwrap().checks_every_read());
    }

    #[test]
    fn embedded_default_needs_no_file() {
        let config = resolve(None, None, &Overrides::default()).unwrap();
        assert_eq!(config, NodeConfig::embedded_default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.upstream, "https://huggingface.co");
    }

    #[test]
    fn loopback_is_unlimited_only_while_the_node_listens_on_loopback() {
        let local = resolve(None, None, &Overrides::default()).unwrap();
        assert_eq!(local.limits, LimitsConfig::for_local_use());
        let overrides = Overrides { listen: Some("0.0.0.0:8080".into()), ..Overrides::default() };
        let public = resolve(None, None, &overrides).unwrap();
        assert_eq!(public.limits, LimitsConfig::default(), "a proxy on the host must not carry everyone past the limits");
    }

    #[test]
    fn errors_name_the_field() {
        let bad_size = TOPOLOGY.replace("max_disk = \"1.7PB\"", "max_disk = \"12XB\"");
        let error = parse_topology(&bad_size, "topology.toml").unwrap_err();
        assert_eq!(error.field, "nodes[0].max_disk");
        let unknown = TOPOLOGY.replace("zone =", "zonee =");
        let error = parse_topology(&unknown, "topology.toml").unwrap_err();
        assert!(error.message.contains("zonee"), "{error}");
        let topology = parse_topology(TOPOLOGY, "topology.toml").unwrap();
        let error = resolve(Some((&topology, "t")), None, &Overrides::default()).unwrap_err();
        assert_eq!(error.field, "--node");
        let error = resolve(Some((&topology, "t")), Some("nope"), &Overrides::default()).unwrap_err();
        assert_eq!(error.field, "nodes");
        let overrides = Overrides { upstream: Some("ftp://x".into()), ..Overrides::default() };
        assert_eq!(resolve(None, None, &overrides).unwrap_err().field, "--upstream");
        let overrides = Overrides { ref_ttl: Some("soon".into()), ..Overrides::default() };
        assert_eq!(resolve(None, None, &overrides).unwrap_err().field, "--ref-ttl");
    }

    #[test]
    fn the_dns_section_resolves_and_its_errors_name_the_field() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology.toml");
        let topology = read_topology(&root).unwrap();
        let config = resolve(Some((&topology, "topology.toml")), Some("waw1"), &Overrides::default()).unwrap();
        let dns = config.dns.expect("the real topology serves DNS");
        assert_eq!(dns.settings.listen, "0.0.0.0:53".parse().unwrap());
        assert_eq!(dns.zone.apex, "hf-mirror.eu");
        assert_eq!(dns.zone.nodes.len(), 4);
        assert!(dns.zone.nodes.iter().all(|node| node.ipv4.is_some()));
        let overrides = Overrides { dns_listen: Some("127.0.0.1:5353".into()), ..Overrides::default() };
        let config = resolve(Some((&topology, "topology.toml")), Some("waw1"), &overrides).unwrap();
        assert_eq!(config.dns.unwrap().settings.listen, "127.0.0.1:5353".parse().unwrap());

        let broken = |edit: &dyn Fn(&mut TopologyFile)| {
            let mut copy = topology.clone();
            edit(&mut copy);
            resolve(Some((&copy, "t")), Some("fra1"), &Overrides::default()).unwrap_err().field
        };
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().prefixes[0].prefix = "10.0.0.0/99".into()), "dns.prefixes[0].prefix");
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().prefixes[0].node = Some("lon1".into())), "dns.prefixes[0].node");
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().prefixes[0].latitude = Some(91.0)), "dns.prefixes[0].location");
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().fallback = vec!["lon1".into()]), "dns");
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().ttl = Some("soon".into())), "dns.ttl");
        assert_eq!(broken(&|t| t.dns.as_mut().unwrap().listen = Some("53".into())), "dns.listen");
        let pin = |repo: &str, repo_type: &str| PinEntry { repo: repo.into(), repo_type: repo_type.into(), revision: "main".into() };
        assert_eq!(broken(&|t| t.pins = vec![pin("org/model", "model"), pin("../etc", "model")]), "pins[1]");
        assert_eq!(broken(&|t| t.pins = vec![pin("org/space", "space")]), "pins[0]");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1.8PB").unwrap(), 1_800_000_000_000_000);
        assert_eq!(parse_size("500GiB").unwrap(), 500 * (1 << 30));
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("-1GB").is_err());
        assert!(parse_size("1e999GB").is_err());
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1w").is_err());
    }

    #[test]
    fn the_repository_topology_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology.toml");
        let topology = read_topology(&path).unwrap();
        assert_eq!(topology.nodes.iter().map(|node| node.name.as_str()).collect::<Vec<_>>(), ["fra1", "ams1", "waw1", "sto1"]);
    }
}
