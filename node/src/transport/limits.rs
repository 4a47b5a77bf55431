//! The edge's limits on anonymous clients, checked before any work (so an abuser cannot make the
//! mirror hammer upstream): requests per second per client (governor's GCRA per IPv4 address or IPv6
//! /64, through `hfm-ratelimit`), parallel requests per IPv4 address or IPv6 /48, and bytes per 24 hours over HTTP (beyond,
//! the client is pointed to rsync). Allow-listed prefixes (academic networks, CI farms) get their own
//! quotas. Loopback is a client like any other (behind a proxy on the same host every client would be
//! it); an allow rule may name it. Every table is
//! bounded under a flood of distinct addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hfm_ratelimit::KeyedLimiter;

use crate::common::net::{ClientKey, canonical, mask};
use crate::config::limits::{LimitsConfig, Quota};
use crate::hub::error::RateLimitFields;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Rate,
    Parallel,
    DailyBytes,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Parallel => "parallel",
            Refusal::DailyBytes => "daily_bytes",
        }
    }
}

/// A refused request: why, when to retry, and the quota it ran into.
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    pub reason: Refusal,
    pub retry: Duration,
    pub quota: Quota,
}

impl Refused {
    /// The `RateLimit` fields of the 429: which policy, its quota per window, and when it resets.
    pub fn fields(&self) -> RateLimitFields {
        let reset = self.retry.as_secs_f64().ceil().max(1.0) as u64;
        match self.reason {
            Refusal::Rate => {
                // GCRA: `burst` requests at once, refilled at the rate; the window is the refill time.
                let rate = self.quota.requests_per_second.max(f64::MIN_POSITIVE);
                let burst = self.quota.burst.max(1.0);
                RateLimitFields::own("requests", burst.ceil() as u64, (burst / rate).ceil().max(1.0) as u64, reset)
            }
            Refusal::Parallel => RateLimitFields::own("parallel", u64::from(self.quota.parallel), 1, reset),
            Refusal::DailyBytes => RateLimitFields::own("bytes", self.quota.daily_bytes, 86_400, reset),
        }
    }
}

/// Which quota applies: the default, an allow rule, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tier {
    Default,
    Rule(usize),
}

/// The IPv4 address or IPv6 /48 parallel requests are counted per.
fn parallel_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        v6 => mask(v6, 48),
    }
}

/// Bytes per client per hour over the last 24 hours.
#[derive(Default)]
struct DailyBytes {
    clients: HashMap<(Tier, ClientKey), [(u64, u64); 24]>,
}

/// The bytes of the 24 hours up to `hour`.
fn day_total(hours: &[(u64, u64); 24], hour: u64) -> u64 {
    hours.iter().filter(|(at, _)| *at + 24 > hour).map(|(_, bytes)| bytes).sum()
}

impl DailyBytes {
    fn total(&self, key: &(Tier, ClientKey), hour: u64) -> u64 {
        self.clients.get(key).map_or(0, |hours| day_total(hours, hour))
    }

    fn add(&mut self, key: (Tier, ClientKey), hour: u64, bytes: u64, max_clients: usize) {
        if !self.clients.contains_key(&key) && self.clients.len() >= max_clients {
            self.clients.retain(|_, hours| hours.iter().any(|(at, bytes)| *at + 24 > hour && *bytes > 0));
            if self.clients.len() >= max_clients {
                // All active: forget the lightest eighth (they are furthest from the limit).
                let mut totals: Vec<u64> = self.clients.values().map(|hours| day_total(hours, hour)).collect();
                let cut = (max_clients / 8).max(1).min(totals.len() - 1);
                let (_, cutoff, _) = totals.select_nth_unstable(cut);
                let cutoff = *cutoff;
                self.clients.retain(|_, hours| day_total(hours, hour) > cutoff);
            }
        }
        let slot = &mut self.clients.entry(key).or_insert([(0, 0); 24])[(hour % 24) as usize];
        if slot.0 != hour {
            *slot = (hour, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
    }
}

#[derive(Default)]
struct LimitState {
    parallel: HashMap<(Tier, IpAddr), u32>,
    daily: DailyBytes,
}

/// The edge's limits at run time; shared by every request.
pub struct EdgeLimits {
    config: LimitsConfig,
    /// The request rate per client, one limiter per tier (the default, then each allow rule);
    /// `None` where the tier's rate is unlimited.
    rates: Vec<Option<KeyedLimiter<ClientKey>>>,
    state: Mutex<LimitState>,
    refused: [AtomicU64; 3],
}

/// A request let through: counts as in flight until dropped (keep it with the response body), and
/// takes the bytes the response sends.
pub struct Admission {
    limits: std::sync::Arc<EdgeLimits>,
    tier: Tier,
    client: ClientKey,
    parallel: Option<IpAddr>,
}

fn current_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 3600
}

impl EdgeLimits {
    pub fn new(config: LimitsConfig) -> EdgeLimits {
        let limiter = |quota: &Quota| {
            hfm_ratelimit::quota(quota.requests_per_second, quota.burst).map(|rate| KeyedLimiter::new(rate, config.max_clients))
        };
        let rates = std::iter::once(&config.default).chain(config.allow.iter().map(|(_, quota)| quota)).map(limiter).collect();
        EdgeLimits { config, rates, state: Mutex::new(LimitState::default()), refused: Default::default() }
    }

    fn rate_limiter(&self, tier: Tier) -> Option<&KeyedLimiter<ClientKey>> {
        let index = match tier {
            Tier::Default => 0,
            Tier::Rule(rule) => rule + 1,
        };
        self.rates.get(index).and_then(Option::as_ref)
    }

    fn quota(&self, address: IpAddr) -> Option<(Tier, Quota)> {
        let (tier, quota) = match self.config.allow.iter().position(|(prefix, _)| prefix.contains(address)) {
            Some(index) => (Tier::Rule(index), self.config.allow[index].1),
            None => (Tier::Default, self.config.default),
        };
        // An unlimited tier keeps no state at all.
        (quota != Quota::UNLIMITED).then_some((tier, quota))
    }

    /// Lets a request from `address` through, or says why not and when to retry.
    pub fn admit(self: &std::sync::Arc<Self>, address: IpAddr) -> Result<Option<Admission>, Refused> {
        self.admit_at(address, current_hour())
    }

    fn admit_at(self: &std::sync::Arc<Self>, address: IpAddr, hour: u64) -> Result<Option<Admission>, Refused> {
        let Some((tier, quota)) = self.quota(address) else { return Ok(None) };
        let client = ClientKey::of(address);
        let mut state = self.state.lock().expect("limit state poisoned");
        let refuse = |reason: Refusal, retry: Duration| {
            self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
            Err(Refused { reason, retry, quota })
        };
        if quota.daily_bytes > 0 && state.daily.total(&(tier, client), hour) >= quota.daily_bytes {
            let to_next_hour = 3600 - SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 3600;
            return refuse(Refusal::DailyBytes, Duration::from_secs(to_next_hour));
        }
        let parallel = (quota.parallel > 0).then(|| parallel_key(address));
        if let Some(key) = parallel {
            if state.parallel.get(&(tier, key)).copied().unwrap_or(0) >= quota.parallel {
                return refuse(Refusal::Parallel, Duration::from_secs(1));
            }
        }
        if let Some(limiter) = self.rate_limiter(tier) {
            if let Err(retry) = limiter.check(&client) {
                return refuse(Refusal::Rate, retry);
            }
        }
        if let Some(key) = parallel {
            *state.parallel.entry((tier, key)).or_insert(0) += 1;
        }
        Ok(Some(Admission { limits: self.clone(), tier, client, parallel }))
    }

    /// How many requests were refused, by reason.
    pub fn refused(&self) -> [(Refusal, u64); 3] {
        [Refusal::Rate, Refusal::Parallel, Refusal::DailyBytes]
            .map(|refusal| (refusal, self.refused[refusal as usize].load(Ordering::Relaxed)))
    }

    /// How many clients the tables remember now (bounded by `max_clients` each).
    pub fn remembered(&self) -> usize {
        let state = self.state.lock().expect("limit state poisoned");
        let rates: usize = self.rates.iter().flatten().map(KeyedLimiter::len).sum();
        rates + state.parallel.len() + state.daily.clients.len()
    }
}

/// Exports the refusals by reason and the size of the tables.
impl crate::telemetry::MetricSource for EdgeLimits {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let refused = self.refused().map(|(refusal, count)| (refusal.as_str(), count));
        samples.counters("hfm_rate_limited", "Requests refused with 429 by the edge's limits, by reason", "reason", &refused)?;
        samples.gauge("hfm_rate_limit_clients", "Client entries the limit tables remember (bounded)", self.remembered() as i64)
    }
}

impl Admission {
    /// Counts bytes the response sends toward the client's daily quota.
    pub fn record_bytes(&self, bytes: u64) {
        let mut state = self.limits.state.lock().expect("limit state poisoned");
        state.daily.add((self.tier, self.client), current_hour(), bytes, self.limits.config.max_clients);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(key) = self.parallel {
            let mut state = self.limits.state.lock().expect("limit state poisoned");
            if let Some(count) = state.parallel.get_mut(&(self.tier, key)) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.parallel.remove(&(self.tier, key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::net::Prefix;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limits(default: Quota, allow: Vec<(Prefix, Quota)>) -> std::sync::Arc<EdgeLimits> {
        std::sync::Arc::new(EdgeLimits::new(LimitsConfig { default, allow, max_clients: 100, ..LimitsConfig::default() }))
    }

    #[test]
    fn parallel_requests_are_counted_per_48_until_their_admission_is_dropped() {
        let limits = limits(Quota { parallel: 2, ..Quota::UNLIMITED }, Vec::new());
        let first = limits.admit(ip("2001:db8:1:1::1")).unwrap();
        let second = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(limits.admit(ip("2001:db8:1:3::1")).err().map(|refused| refused.reason), Some(Refusal::Parallel), "same /48");
        assert!(limits.admit(ip("2001:db8:2::1")).is_ok(), "another /48");
        drop(first);
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_ok());
        drop(second);
        assert_eq!(limits.refused()[1], (Refusal::Parallel, 1));
    }

    #[test]
    fn a_day_of_bytes_is_counted_per_client_and_rolls_off_after_24_hours() {
        let limits = limits(Quota { daily_bytes: 1000, ..Quota::UNLIMITED }, Vec::new());
        let client = ip("198.51.100.7");
        {
            let admission = limits.admit_at(client, 100).unwrap().unwrap();
            limits.state.lock().unwrap().daily.add((admission.tier, admission.client), 100, 600, 100);
        }
        limits.state.lock().unwrap().daily.add((Tier::Default, ClientKey::of(client)), 110, 400, 100);
        assert_eq!(limits.admit_at(client, 110).err().map(|refused| refused.reason), Some(Refusal::DailyBytes));
        assert!(limits.admit_at(ip("198.51.100.8"), 110).is_ok(), "another client");
        assert!(limits.admit_at(client, 124).is_ok(), "the first 600 bytes are older than 24 hours");
    }

    #[test]
    fn allow_rules_replace_the_default_and_loopback_is_a_client_like_any_other() {
        let generous = Quota { requests_per_second: 1000.0, burst: 1000.0, ..Quota::UNLIMITED };
        let limits = limits(
            Quota { requests_per_second: 1.0, burst: 1.0, ..Quota::UNLIMITED },
            vec![(Prefix::parse("192.0.2.0/24").unwrap(), generous)],
        );
        for _ in 0..50 {
            assert!(limits.admit(ip("192.0.2.5")).is_ok());
        }
        assert!(limits.admit(ip("198.51.100.1")).is_ok());
        assert_eq!(limits.admit(ip("198.51.100.1")).err().map(|refused| refused.reason), Some(Refusal::Rate));
        assert!(limits.admit(ip("127.0.0.1")).is_ok());
        assert!(limits.admit(ip("127.0.0.1")).is_err(), "a proxy on the node's own host gets no exemption");
        let local = std::sync::Arc::new(EdgeLimits::new(LimitsConfig::for_local_use()));
        for _ in 0..100 {
            assert!(local.admit(ip("127.0.0.1")).unwrap().is_none(), "only an allow rule frees loopback");
        }
        let strict = limits_for_loopback();
        assert!(strict.admit(ip("127.0.0.1")).is_ok());
        assert!(strict.admit(ip("127.0.0.1")).is_err(), "a rule naming loopback applies");
    }

    fn limits_for_loopback() -> std::sync::Arc<EdgeLimits> {
        limits(
            Quota::UNLIMITED,
            vec![(Prefix::parse("127.0.0.0/8").unwrap(), Quota { requests_per_second: 1.0, burst: 1.0, ..Quota::UNLIMITED })],
        )
    }
}
