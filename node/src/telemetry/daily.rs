//! The anonymous daily aggregates of the access log (`daily-YYYY-MM-DD.json`): their format, and
//! the ranking of repositories the public status page reads from them. The access log (transport)
//! writes them; nothing here knows a request.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// One day's anonymous statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyAggregate {
    pub date: String,
    pub requests: u64,
    pub bytes: u64,
    /// Share of file downloads (requests with a cache result) answered without upstream data.
    pub hit_ratio: Option<f64>,
    pub by_repo: BTreeMap<String, Tally>,
    pub by_status: BTreeMap<String, Tally>,
}

/// Counts of a group of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: Option<f64>,
}

impl Tally {
    /// Counts one request of `bytes` with the `X-Cache` result `cache`.
    pub fn add(&mut self, bytes: u64, cache: &str) {
        self.requests += 1;
        self.bytes += bytes;
        match cache {
            "HIT" | "REVALIDATED" => self.hits += 1,
            "MISS" => self.misses += 1,
            _ => {}
        }
    }

    /// Computes the hit ratio once every request is counted.
    pub fn finish(&mut self) {
        let answered = self.hits + self.misses;
        self.hit_ratio = (answered > 0).then(|| self.hits as f64 / answered as f64);
    }
}

/// The most requested repositories of the `days` complete days before `now`, from the daily
/// aggregates: `(type:ORG/NAME, requests)`, most first, at most `count`. Missing or unreadable
/// days count as empty.
pub fn top_repositories(directory: &Path, now: SystemTime, days: u64, count: usize) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for back in 1..=days {
        let Some(at) = now.checked_sub(Duration::from_secs(86_400 * back)) else { break };
        let Ok(text) = std::fs::read_to_string(directory.join(format!("daily-{}.json", crate::common::time::utc_day(at)))) else {
            continue;
        };
        let Ok(aggregate) = serde_json::from_str::<DailyAggregate>(&text) else { continue };
        for (repo, tally) in aggregate.by_repo {
            if repo != "-" {
                *totals.entry(repo).or_default() += tally.requests;
            }
        }
    }
    let mut ranked: Vec<(String, u64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(count);
    ranked
}
