//! Edge policy building blocks: who a client is for limits, how its address is anonymised before it
//! reaches anything written down, and a keyed token bucket whose memory stays bounded under a flood
//! of distinct addresses.
//!
//! Not wired into the edge yet (issue 6 does that, with the connection limits, allow-listed prefixes
//! and the 1 TB / 24 h pointer to rsync).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The unit the request rate is limited per: an IPv4 address (/32) or an IPv6 /64 (one subscriber's
/// network: a client changing its interface identifier stays one client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(address: IpAddr) -> ClientKey {
        match canonical(address) {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))),
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 clients) count as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// The address as logs, metrics and anything on disk may hold it: IPv4 with the last octet zeroed,
/// IPv6 with the last 80 bits zeroed (a /48 remains).
pub fn anonymise(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per key: `rate` tokens a second, at most `burst` saved. At most `max_keys` keys are
/// remembered; when a new key finds the table full, keys whose bucket has refilled (idle clients,
/// indistinguishable from new ones) are dropped first, else the least recently seen.
pub struct KeyedLimiter<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Copy> KeyedLimiter<K> {
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> KeyedLimiter<K> {
        KeyedLimiter { rate, burst: burst.max(1.0), max_keys: max_keys.max(1), buckets: HashMap::new() }
    }

    /// Takes one token for `key` at `now`: `Ok` to go on, or `Err(retry_after)`, how long until a
    /// token is there.
    pub fn check(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.make_room(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        let refill = Duration::from_secs_f64(burst / rate);
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < refill);
        if self.buckets.len() >= self.max_keys {
            // Everyone is active: forget the least recently seen eighth at once (so a flood costs
            // one sweep per max_keys / 8 new keys); a forgotten client starts again from a full
            // bucket, at most one burst more than it would have had.
            let mut seen: Vec<Instant> = self.buckets.values().map(|bucket| bucket.updated).collect();
            let cut = (self.max_keys / 8).max(1).min(seen.len() - 1);
            let (_, cutoff, _) = seen.select_nth_unstable(cut);
            let cutoff = *cutoff;
            self.buckets.retain(|_, bucket| bucket.updated > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_anonymised_before_anything_keeps_them() {
        assert_eq!(anonymise(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymise(ip("2001:db8:1234:5678:9abc:def0:1234:5678")), ip("2001:db8:1234::"));
        assert_eq!(anonymise(ip("::ffff:198.51.100.9")), ip("198.51.100.0"), "IPv4-mapped counts as IPv4");
    }

    #[test]
    fn clients_are_keyed_per_ipv4_address_and_ipv6_64() {
        assert_ne!(ClientKey::of(ip("203.0.113.1")), ClientKey::of(ip("203.0.113.2")));
        assert_eq!(ClientKey::of(ip("2001:db8:1:2:aaaa::1")), ClientKey::of(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(ClientKey::of(ip("::ffff:203.0.113.1")), ClientKey::of(ip("203.0.113.1")));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry() {
        let start = Instant::now();
        let mut limiter = KeyedLimiter::new(30.0, 5.0, 100);
        let key = ClientKey::of(ip("203.0.113.1"));
        for _ in 0..5 {
            assert!(limiter.check(key, start).is_ok());
        }
        let retry = limiter.check(key, start).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(34), "{retry:?}");
        assert!(limiter.check(key, start + Duration::from_millis(34)).is_ok(), "one token after 1/30 s");
        assert!(limiter.check(ClientKey::of(ip("203.0.113.2")), start).is_ok(), "others are not affected");
    }

    #[test]
    fn a_flood_of_distinct_addresses_keeps_the_memory_bounded() {
        let start = Instant::now();
        let mut limiter = KeyedLimiter::new(30.0, 5.0, 1000);
        let abuser = ClientKey::of(ip("198.51.100.1"));
        for _ in 0..5 {
            limiter.check(abuser, start).unwrap();
        }
        for index in 0..100_000u32 {
            let address = IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(index) << 64)));
            let now = start + Duration::from_micros(u64::from(index));
            let _ = limiter.check(ClientKey::of(address), now);
            assert!(limiter.len() <= 1000);
        }
        assert!(limiter.len() > 800, "{}", limiter.len());
    }
}
