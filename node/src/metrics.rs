//! Prometheus metrics. Counters that deep layers bump (upstream requests, bytes by source, fills,
//! coalesced waiters, evictions) live in one process-wide [`Counters`]; everything that is state
//! (disk use, gossip, Raft, rsync, the limits' tables) is read when `/metrics` is rendered.
//!
//! Names are `hfm_*`; `deploy/grafana-dashboard.json` uses them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::limits::EdgeLimits;
use crate::mirror::Mirror;

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

/// The process-wide counters.
#[derive(Default)]
pub struct Counters {
    /// (route, status, cache) → requests.
    requests: Mutex<BTreeMap<(&'static str, u16, &'static str), u64>>,
    bytes: [AtomicU64; 3],
    upstream_requests: AtomicU64,
    upstream_errors: AtomicU64,
    fills_completed: AtomicU64,
    fills_failed: AtomicU64,
    fill_buckets: [AtomicU64; FILL_BUCKETS.len()],
    fill_micros: AtomicU64,
    fill_joins: AtomicU64,
    metadata_joins: AtomicU64,
    evictions: AtomicU64,
}

/// The counters of this process.
pub fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(Counters::default)
}

impl Counters {
    pub fn request(&self, route: &'static str, status: u16, cache: &'static str) {
        *self.requests.lock().expect("request counters poisoned").entry((route, status, cache)).or_insert(0) += 1;
    }

    pub fn bytes(&self, source: ByteSource, bytes: u64) {
        self.bytes[source as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// One request sent upstream; `failed` when it got no answer, a 5xx or a 429.
    pub fn upstream_request(&self, failed: bool) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A fill ended after `took`.
    pub fn fill(&self, took: Duration, completed: bool) {
        if !completed {
            self.fills_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.fills_completed.fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.fill_buckets.iter().zip(FILL_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.fill_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A client joined a blob fill already running instead of starting one.
    pub fn fill_joined(&self) {
        self.fill_joins.fetch_add(1, Ordering::Relaxed);
    }

    /// A caller joined a metadata fetch already running.
    pub fn metadata_joined(&self) {
        self.metadata_joins.fetch_add(1, Ordering::Relaxed);
    }

    pub fn evicted(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prometheus text, one family at a time.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> =
                labels.iter().map(|(key, value)| format!("{key}=\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))).collect();
            let _ = write!(self.text, "{{{}}}", rendered.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Renders every metric of this node.
pub fn render(mirror: &Mirror, limits: &EdgeLimits, access_log: Option<&crate::access_log::AccessLog>) -> String {
    let counters = counters();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut out = Exposition { text: String::new() };

    out.family("hfm_requests_total", "counter", "HTTP requests answered, by route, status and cache result (X-Cache).");
    for ((route, status, cache), count) in counters.requests.lock().expect("request counters poisoned").iter() {
        out.sample("hfm_requests_total", &[("route", route), ("status", &status.to_string()), ("cache", cache)], count);
    }
    out.family("hfm_file_answers_total", "counter", "File downloads by cache result.");
    let (hit, revalidated, miss) = mirror.answers().snapshot();
    for (cache, count) in [("HIT", hit), ("REVALIDATED", revalidated), ("MISS", miss)] {
        out.sample("hfm_file_answers_total", &[("cache", cache)], count);
    }
    out.family("hfm_bytes_total", "counter", "Blob bytes by source: served from disk, fetched from peers, fetched from upstream.");
    for (source, index) in [("disk", ByteSource::Disk), ("peer", ByteSource::Peer), ("upstream", ByteSource::Upstream)] {
        out.sample("hfm_bytes_total", &[("source", source)], load(&counters.bytes[index as usize]));
    }
    out.single(
        "hfm_upstream_requests_total",
        "counter",
        "Requests sent upstream (each redirect hop counts).",
        load(&counters.upstream_requests),
    );
    out.single(
        "hfm_upstream_errors_total",
        "counter",
        "Upstream requests that failed: no answer, a 5xx or a 429.",
        load(&counters.upstream_errors),
    );

    out.family("hfm_fill_duration_seconds", "histogram", "Time from a blob fill's start to its verified publication.");
    for (bound, bucket) in FILL_BUCKETS.iter().zip(&counters.fill_buckets) {
        out.sample("hfm_fill_duration_seconds_bucket", &[("le", &bound.to_string())], load(bucket));
    }
    let completed = load(&counters.fills_completed);
    out.sample("hfm_fill_duration_seconds_bucket", &[("le", "+Inf")], completed);
    out.sample("hfm_fill_duration_seconds_sum", &[], load(&counters.fill_micros) as f64 / 1e6);
    out.sample("hfm_fill_duration_seconds_count", &[], completed);
    out.single("hfm_fills_failed_total", "counter", "Blob fills that ended without a verified blob.", load(&counters.fills_failed));
    out.family("hfm_coalesced_waiters_total", "counter", "Callers that joined work already running instead of repeating it.");
    out.sample("hfm_coalesced_waiters_total", &[("kind", "blob_fill")], load(&counters.fill_joins));
    out.sample("hfm_coalesced_waiters_total", &[("kind", "metadata")], load(&counters.metadata_joins));

    out.family("hfm_rate_limited_total", "counter", "Requests refused with 429 by the edge's limits, by reason.");
    for (refusal, count) in limits.refused() {
        out.sample("hfm_rate_limited_total", &[("reason", refusal.as_str())], count);
    }
    out.single("hfm_rate_limit_clients", "gauge", "Client entries the limit tables remember (bounded).", limits.remembered());

    if let Some(access_log) = access_log {
        out.single(
            "hfm_access_log_dropped_total",
            "counter",
            "Access-log lines dropped because the writer was behind.",
            access_log.dropped(),
        );
    }

    let usage = mirror.store().usage();
    out.single("hfm_store_blobs", "gauge", "Verified blobs on this node's disk.", usage.num_blobs);
    out.single("hfm_store_bytes", "gauge", "Bytes of verified blobs on this node's disk.", usage.stored_bytes);
    out.single("hfm_store_reserved_bytes", "gauge", "Bytes promised to fills in progress.", usage.reserved_bytes);
    if let Ok(stats) = rustix::fs::statvfs(&mirror.config().data_dir) {
        out.single(
            "hfm_disk_free_bytes",
            "gauge",
            "Free bytes of the data directory's file system.",
            stats.f_bavail.saturating_mul(stats.f_frsize),
        );
    }
    out.single("hfm_evictions_total", "counter", "Blobs evicted to make room.", load(&counters.evictions));

    if let Some(replicas) = mirror.replicas() {
        let replica = replicas.counters();
        out.family("hfm_replica_copies_total", "counter", "Replica copies by outcome.");
        for (outcome, count) in
            [("started", replica.copies_started), ("completed", replica.copies_completed), ("failed", replica.copies_failed)]
        {
            out.sample("hfm_replica_copies_total", &[("outcome", outcome)], count);
        }
    }
    if let Some(cluster) = mirror.cluster() {
        out.family("hfm_gossip_members", "gauge", "Nodes of the topology by the state gossip sees.");
        let mut states: BTreeMap<&str, u64> = ["live", "draining", "starting", "dead"].iter().map(|state| (*state, 0)).collect();
        for (_, state) in cluster.member_states() {
            *states.entry(state).or_insert(0) += 1;
        }
        for (state, count) in states {
            out.sample("hfm_gossip_members", &[("state", state)], count);
        }
    }
    if let Some(raft) = mirror.raft() {
        let status = raft.status();
        out.single("hfm_raft_term", "gauge", "The catalog's current Raft term.", status.term);
        out.single("hfm_raft_is_leader", "gauge", "1 when this node leads the catalog.", u8::from(status.leader == Some(status.id)));
        out.single("hfm_raft_has_leader", "gauge", "1 when this node knows a catalog leader.", u8::from(status.leader.is_some()));
        out.single("hfm_raft_last_applied", "gauge", "Index of the last catalog entry applied here.", status.last_applied.unwrap_or(0));
    }
    if let Some(rsync) = mirror.rsync() {
        let state = rsync.state();
        out.single("hfm_rsync_up", "gauge", "1 while the rsync daemon runs.", u8::from(state.running));
        out.single("hfm_rsync_restarts_total", "counter", "Times the rsync daemon was started again after dying.", state.restarts);
        out.single(
            "hfm_rsync_switched_timestamp_seconds",
            "gauge",
            "When the rsync modules last switched to a new tree.",
            state.switched_at_ms / 1000,
        );
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_samples_are_lines() {
        let mut out = Exposition { text: String::new() };
        out.family("hfm_x_total", "counter", "Help.");
        out.sample("hfm_x_total", &[("route", "a\"b\\c")], 3);
        assert_eq!(out.text, "# HELP hfm_x_total Help.\n# TYPE hfm_x_total counter\nhfm_x_total{route=\"a\\\"b\\\\c\"} 3\n");
    }

    #[test]
    fn the_fill_histogram_is_cumulative() {
        let counters = Counters::default();
        counters.fill(Duration::from_millis(200), true);
        counters.fill(Duration::from_secs(20), true);
        counters.fill(Duration::from_secs(1), false);
        let buckets: Vec<u64> = counters.fill_buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect();
        assert_eq!(buckets, [0, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
        assert_eq!(counters.fills_failed.load(Ordering::Relaxed), 1);
    }
}
