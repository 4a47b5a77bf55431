//! `[limits]` resolved: what one anonymous client may do, and allow-listed prefixes.

use std::time::Duration;

use crate::common::net::Prefix;

/// What one client may do; 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub requests_per_second: f64,
    pub burst: f64,
    /// Requests in flight per IPv4 address or IPv6 /48.
    pub parallel: u32,
    /// Response bytes per client over the last 24 hours.
    pub daily_bytes: u64,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota { requests_per_second: 0.0, burst: 0.0, parallel: 0, daily_bytes: 0 };
}

/// The operator's limits: a default quota, and allow-listed prefixes with their own (first match
/// wins). Loopback gets no exemption: behind a proxy on the same host every client would be it.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    pub default: Quota,
    pub allow: Vec<(Prefix, Quota)>,
    /// How many clients each table remembers at most.
    pub max_clients: usize,
    /// Cold fills (blobs fetched to be stored) one node runs at once; 0 is unbounded.
    pub cold_fills: usize,
    /// Cold fills one client network (IPv4 address, IPv6 /64) may have running; 0 is unbounded.
    pub cold_fills_per_client: usize,
    /// The most files one commit's manifest may list; a bigger repo passes through uncached.
    pub max_manifest_files: usize,
    /// Client connections a node keeps open at once (TCP and QUIC); 0 is unbounded.
    pub connections: usize,
    /// Client connections one client network (IPv4 address, IPv6 /64) may keep open; 0 is unbounded.
    pub connections_per_client: usize,
    /// How long a client may take to send a request's headers; also the idle time of an HTTP/1.1
    /// connection between requests.
    pub header_timeout: Duration,
    /// How long an HTTP/2 or HTTP/3 connection may have no request in flight.
    pub idle_timeout: Duration,
    /// Concurrent requests on one HTTP/2 or HTTP/3 connection.
    pub streams_per_connection: u32,
    /// Proxies whose PROXY header or `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Prefix>,
}

impl LimitsConfig {
    /// The published policy with one allow rule: loopback (IPv4 and IPv6) unlimited. For a node that
    /// only listens on loopback (the embedded default, a local try-out).
    pub fn for_local_use() -> LimitsConfig {
        let loopback = ["127.0.0.0/8", "::1/128"].map(|text| (Prefix::parse(text).expect("a valid prefix"), Quota::UNLIMITED));
        LimitsConfig { allow: loopback.to_vec(), ..LimitsConfig::default() }
    }
}

impl Default for LimitsConfig {
    /// The published policy: 30 requests/s (bursts of 60), 256 parallel requests, 1 TB a day.
    fn default() -> LimitsConfig {
        LimitsConfig {
            default: Quota { requests_per_second: 30.0, burst: 60.0, parallel: 256, daily_bytes: 1_000_000_000_000 },
            allow: Vec::new(),
            max_clients: 100_000,
            cold_fills: 64,
            cold_fills_per_client: 16,
            max_manifest_files: 300_000,
            connections: 16_384,
            connections_per_client: 256,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
            streams_per_connection: 100,
            trusted_proxies: Vec::new(),
        }
    }
}
