//! The process-wide counters that deep layers bump (requests, bytes by source, upstream requests,
//! fills, coalesced waiters, evictions), as `prometheus-client` metrics. A request touches one
//! counter of a label family (a read lock and an atomic add); bytes are counted on handles taken
//! once, so streaming costs an atomic add per chunk.
//!
//! Names are `hfm_*`; `deploy/grafana-dashboard.json` uses them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the fill latency histogram.
const FILL_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Where served or fetched bytes came from.
#[derive(Clone, Copy, Debug)]
pub enum ByteSource {
    /// Answered from this node's disk.
    Disk,
    /// Fetched from another node.
    Peer,
    /// Fetched from upstream.
    Upstream,
}

impl ByteSource {
    pub const ALL: [ByteSource; 3] = [ByteSource::Disk, ByteSource::Peer, ByteSource::Upstream];

    fn label(self) -> &'static str {
        match self {
            ByteSource::Disk => "disk",
            ByteSource::Peer => "peer",
            ByteSource::Upstream => "upstream",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The counters of this process.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    bytes_family: Family<SourceLabels, Counter>,
    /// The three members of `bytes_family`, taken once (indexed by [`ByteSource`]).
    bytes: [Counter; 3],
    upstream_requests: Counter,
    upstream_errors: Counter,
    fill_duration: Histogram,
    fills_failed: Counter,
    coalesced_family: Family<KindLabels, Counter>,
    fill_joins: Counter,
    metadata_joins: Counter,
    evictions: Counter,
    reroutes_family: Family<KindLabels, Counter>,
}

/// Why work went around a slow peer (the `kind` of `hfm_slow_peer_reroutes`).
#[derive(Clone, Copy, Debug)]
pub enum Reroute {
    /// A peer did not start sending a blob within the budget; the next holder was asked too.
    FillHedged,
    /// A peer's blob stream stalled; the fill went on from the next source.
    FillStalled,
    /// The metadata leader did not answer within the budget; this node asked upstream itself.
    MetadataHedged,
}

impl Reroute {
    fn label(self) -> &'static str {
        match self {
            Reroute::FillHedged => "fill_hedged",
            Reroute::FillStalled => "fill_stalled",
            Reroute::MetadataHedged => "metadata_hedged",
        }
    }
}

/// The counters of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let bytes_family = Family::<SourceLabels, Counter>::default();
        let bytes = ByteSource::ALL.map(|source| bytes_family.get_or_create(&SourceLabels { source: source.label() }).clone());
        let coalesced_family = Family::<KindLabels, Counter>::default();
        let fill_joins = coalesced_family.get_or_create(&KindLabels { kind: "blob_fill" }).clone();
        let metadata_joins = coalesced_family.get_or_create(&KindLabels { kind: "metadata" }).clone();
        Metrics {
            requests: Family::default(),
            bytes_family,
            bytes,
            upstream_requests: Counter::default(),
            upstream_errors: Counter::default(),
            fill_duration: Histogram::new(FILL_BUCKETS),
            fills_failed: Counter::default(),
            coalesced_family,
            fill_joins,
            metadata_joins,
            evictions: Counter::default(),
            reroutes_family: Family::default(),
        }
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &'static str, status: u16, cache: &'static str) {
        self.requests.get_or_create(&RequestLabels { route, status, cache }).inc();
    }

    pub fn bytes(&self, source: ByteSource, bytes: u64) {
        self.bytes[source as usize].inc_by(bytes);
    }

    /// The bytes counted for `source` since the process started.
    pub fn bytes_total(&self, source: ByteSource) -> u64 {
        self.bytes[source as usize].get()
    }

    /// One request sent upstream; `failed` when it got no answer, a 5xx or a 429.
    pub fn upstream_request(&self, failed: bool) {
        self.upstream_requests.inc();
        if failed {
            self.upstream_errors.inc();
        }
    }

    /// A fill ended after `took`.
    pub fn fill(&self, took: Duration, completed: bool) {
        if completed {
            self.fill_duration.observe(took.as_secs_f64());
        } else {
            self.fills_failed.inc();
        }
    }

    /// A client joined a blob fill already running instead of starting one.
    pub fn fill_joined(&self) {
        self.fill_joins.inc();
    }

    /// A caller joined a metadata fetch already running.
    pub fn metadata_joined(&self) {
        self.metadata_joins.inc();
    }

    pub fn evicted(&self) {
        self.evictions.inc();
    }

    /// Work went around a slow peer.
    pub fn rerouted(&self, why: Reroute) {
        self.reroutes_family.get_or_create(&KindLabels { kind: why.label() }).inc();
    }

    /// Registers every counter under its exported name (counters get `_total` appended).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register("hfm_requests", "HTTP requests answered, by route, status and cache result (X-Cache)", self.requests.clone());
        registry.register(
            "hfm_bytes",
            "Blob bytes by source: served from disk, fetched from peers, fetched from upstream",
            self.bytes_family.clone(),
        );
        registry.register("hfm_upstream_requests", "Requests sent upstream (each redirect hop counts)", self.upstream_requests.clone());
        registry.register("hfm_upstream_errors", "Upstream requests that failed: no answer, a 5xx or a 429", self.upstream_errors.clone());
        registry.register(
            "hfm_fill_duration_seconds",
            "Time from a blob fill's start to its verified publication",
            self.fill_duration.clone(),
        );
        registry.register("hfm_fills_failed", "Blob fills that ended without a verified blob", self.fills_failed.clone());
        registry.register(
            "hfm_coalesced_waiters",
            "Callers that joined work already running instead of repeating it",
            self.coalesced_family.clone(),
        );
        registry.register("hfm_evictions", "Blobs evicted to make room", self.evictions.clone());
        registry.register(
            "hfm_slow_peer_reroutes",
            "Fills and metadata questions that went around a peer slow to answer or stalled, by kind",
            self.reroutes_family.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_histogram_is_cumulative_and_failures_are_apart() {
        let metrics = Metrics::new();
        metrics.fill(Duration::from_millis(200), true);
        metrics.fill(Duration::from_secs(20), true);
        metrics.fill(Duration::from_secs(1), false);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "hfm_fill_duration_seconds_bucket{le=\"0.1\"} 0",
            "hfm_fill_duration_seconds_bucket{le=\"0.25\"} 1",
            "hfm_fill_duration_seconds_bucket{le=\"30\"} 2",
            "hfm_fill_duration_seconds_bucket{le=\"+Inf\"} 2",
            "hfm_fill_duration_seconds_count 2",
            "hfm_fills_failed_total 1",
        ] {
            assert!(text.lines().any(|sample| sample == line), "{line} not in\n{text}");
        }
    }
}
