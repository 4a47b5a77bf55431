//! Response rate limiting, so the server is no amplifier for spoofed-source floods.
//!
//! Responses are counted per client network (IPv4 /24, IPv6 /56, as BIND's RRL does): each network
//! has a token bucket of `per_second` responses with a burst of the same size. Over the limit, every
//! `slip`-th response goes out truncated (TC, no records: a real resolver retries over TCP, which
//! cannot be spoofed) and the rest are dropped. TCP is never limited. Memory is bounded: beyond
//! `max_clients` networks, buckets idle for longest are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::geo::truncate;

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated response (TC set, no records).
    Slip,
    Drop,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    limited: u64,
}

pub struct RateLimiter {
    per_second: f64,
    slip: u64,
    max_clients: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// `per_second == 0` turns limiting off.
    pub fn new(per_second: u32, slip: u32, max_clients: usize) -> RateLimiter {
        RateLimiter { per_second: f64::from(per_second), slip: u64::from(slip), max_clients: max_clients.max(1), buckets: HashMap::new() }
    }

    fn network(client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V4(_) => truncate(client, 24),
            IpAddr::V6(_) => truncate(client, 56),
        }
    }

    pub fn check(&mut self, client: IpAddr, now: Instant) -> Verdict {
        if self.per_second <= 0.0 {
            return Verdict::Send;
        }
        let network = Self::network(client);
        if !self.buckets.contains_key(&network) && self.buckets.len() >= self.max_clients {
            self.forget_idle(now);
        }
        let per_second = self.per_second;
        let bucket = self.buckets.entry(network).or_insert(Bucket { tokens: per_second, refilled: now, limited: 0 });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(per_second);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        bucket.limited += 1;
        if self.slip > 0 && bucket.limited % self.slip == 0 { Verdict::Slip } else { Verdict::Drop }
    }

    /// Forgets the idlest half of the buckets (a full bucket forgotten costs nothing: a new one
    /// starts full too).
    fn forget_idle(&mut self, now: Instant) {
        let mut ages: Vec<(std::time::Duration, IpAddr)> =
            self.buckets.iter().map(|(network, bucket)| (now.saturating_duration_since(bucket.refilled), *network)).collect();
        ages.sort_by(|left, right| right.0.cmp(&left.0));
        for (_, network) in ages.into_iter().take(self.buckets.len().div_ceil(2)) {
            self.buckets.remove(&network);
        }
    }

    pub fn tracked_clients(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flood_from_one_network_is_limited_with_slips_and_others_are_not() {
        let mut limiter = RateLimiter::new(5, 2, 1000);
        let now = Instant::now();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..25).map(|_| limiter.check(attacker, now)).collect();
        assert_eq!(verdicts.iter().filter(|verdict| **verdict == Verdict::Send).count(), 5);
        assert_eq!(verdicts.iter().filter(|verdict| **verdict == Verdict::Slip).count(), 10);
        // The same /24 shares the bucket; another network does not.
        assert_ne!(limiter.check("198.51.100.200".parse().unwrap(), now), Verdict::Send);
        assert_eq!(limiter.check("203.0.113.1".parse().unwrap(), now), Verdict::Send);
        // Tokens come back with time.
        assert_eq!(limiter.check(attacker, now + Duration::from_secs(1)), Verdict::Send);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_sources() {
        let mut limiter = RateLimiter::new(5, 2, 1000);
        let start = Instant::now();
        for index in 0..100_000u32 {
            let client = IpAddr::V4((index << 8).into());
            limiter.check(client, start + Duration::from_micros(u64::from(index)));
        }
        assert!(limiter.tracked_clients() <= 1000, "{}", limiter.tracked_clients());
        assert_eq!(RateLimiter::new(0, 2, 10).check("192.0.2.1".parse().unwrap(), start), Verdict::Send, "0 turns limiting off");
    }
}
