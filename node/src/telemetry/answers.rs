//! Answered requests by `X-Cache` result, for `status` and hit ratios.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::CacheStatus;

/// Counts of answers by cache result; one for file downloads, one for metadata.
#[derive(Debug, Default)]
pub struct AnswerCounters {
    hit: AtomicU64,
    revalidated: AtomicU64,
    miss: AtomicU64,
}

impl AnswerCounters {
    pub fn record(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.hit,
            CacheStatus::Revalidated => &self.revalidated,
            CacheStatus::Miss => &self.miss,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (hits, revalidations, misses).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (self.hit.load(Ordering::Relaxed), self.revalidated.load(Ordering::Relaxed), self.miss.load(Ordering::Relaxed))
    }
}

/// Exports answer counters under one name, labelled by cache result.
pub struct AnswerMetric {
    pub counters: std::sync::Arc<AnswerCounters>,
    pub name: &'static str,
    pub help: &'static str,
}

impl super::MetricSource for AnswerMetric {
    fn collect(&self, samples: &mut super::Samples<'_>) -> std::fmt::Result {
        let (hit, revalidated, miss) = self.counters.snapshot();
        samples.counters(self.name, self.help, "cache", &[("HIT", hit), ("REVALIDATED", revalidated), ("MISS", miss)])
    }
}
