//! Response rate limiting, so the server is no amplifier for spoofed-source floods.
//!
//! Responses are counted per client network (IPv4 /24, IPv6 /56, as BIND's RRL does): each network
//! has a bucket of `per_second` responses with a burst of the same size (governor's GCRA, in a table
//! bounded by `max_clients` networks; see `hfm-ratelimit`). Over the limit, every `slip`-th limited
//! response goes out truncated (TC, no records: a real resolver retries over TCP, which cannot be
//! spoofed) and the rest are dropped. TCP is never limited.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use hfm_ratelimit::{KeyedLimiter, quota};

use crate::geo::truncate;

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated response (TC set, no records).
    Slip,
    Drop,
}

pub struct RateLimiter<C: Clock + Clone = DefaultClock> {
    /// `None`: limiting is off.
    limiter: Option<KeyedLimiter<IpAddr, C>>,
    slip: u64,
    /// Responses limited so far; every `slip`-th slips.
    limited: AtomicU64,
}

impl RateLimiter {
    /// `per_second == 0` turns limiting off.
    pub fn new(per_second: u32, slip: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::with_clock(per_second, slip, max_clients, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(per_second: u32, slip: u32, max_clients: usize, clock: C) -> RateLimiter<C> {
        let per_second = f64::from(per_second);
        let limiter = quota(per_second, per_second).map(|quota| KeyedLimiter::with_clock(quota, max_clients, clock));
        RateLimiter { limiter, slip: u64::from(slip), limited: AtomicU64::new(0) }
    }

    fn network(client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V4(_) => truncate(client, 24),
            IpAddr::V6(_) => truncate(client, 56),
        }
    }

    pub fn check(&self, client: IpAddr) -> Verdict {
        let Some(limiter) = &self.limiter else { return Verdict::Send };
        if limiter.check(&Self::network(client)).is_ok() {
            return Verdict::Send;
        }
        let limited = self.limited.fetch_add(1, Ordering::Relaxed) + 1;
        if self.slip > 0 && limited.is_multiple_of(self.slip) { Verdict::Slip } else { Verdict::Drop }
    }

    pub fn tracked_clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, KeyedLimiter::len)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_flood_from_one_network_is_limited_with_slips_and_others_are_not() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(5, 2, 1000, clock.clone());
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..25).map(|_| limiter.check(attacker)).collect();
        assert_eq!(verdicts.iter().filter(|verdict| **verdict == Verdict::Send).count(), 5);
        assert_eq!(verdicts.iter().filter(|verdict| **verdict == Verdict::Slip).count(), 10);
        // The same /24 shares the bucket; another network does not.
        assert_ne!(limiter.check("198.51.100.200".parse().unwrap()), Verdict::Send);
        assert_eq!(limiter.check("203.0.113.1".parse().unwrap()), Verdict::Send);
        // Responses come back with time.
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.check(attacker), Verdict::Send);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_sources() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(5, 2, 1000, clock.clone());
        for index in 0..100_000u32 {
            clock.advance(Duration::from_micros(1));
            limiter.check(IpAddr::V4((index << 8).into()));
        }
        assert!(limiter.tracked_clients() <= 1000, "{}", limiter.tracked_clients());
        assert_eq!(RateLimiter::new(0, 2, 10).check("192.0.2.1".parse().unwrap()), Verdict::Send, "0 turns limiting off");
    }
}
