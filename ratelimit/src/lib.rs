//! Per-key rate limits for the mirror's public faces (HTTP clients, DNS resolvers): governor's GCRA
//! (a token bucket without timers) decides, and this crate keeps its per-key table bounded.
//!
//! governor's own keyed stores grow with every key they see until `retain_recent` is called, and
//! even then keep every key that is not idle: a flood of distinct source addresses would grow them
//! without bound. [`BoundedStore`] holds at most `max_keys`; when a new key finds it full it first
//! forgets keys whose bucket has refilled (idle, indistinguishable from a new key), else the least
//! recently seen eighth at once (so a flood costs one sweep per `max_keys / 8` new keys). A forgotten
//! key starts again from a full bucket: at most one burst more than it would have had.
//!
//! # Layout
//!
//! One module: [`KeyedLimiter`] (the limiter a caller holds) over [`BoundedStore`].
//!
//! # Dependency rule
//!
//! Depends on governor only; both `hfm-dns` and `hfm-node` use it.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// A rate of `per_second` with bursts of `burst`, as governor wants it; `None` for a rate of 0
/// (unlimited) or a value governor cannot represent.
pub fn quota(per_second: f64, burst: f64) -> Option<Quota> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
    let burst = NonZeroU32::new(burst.clamp(1.0, f64::from(u32::MAX)) as u32)?;
    Some(Quota::with_period(period.max(Duration::from_nanos(1)))?.allow_burst(burst))
}

/// One key's state: governor's theoretical arrival time, and when the key was last seen (a tick).
#[derive(Clone, Copy)]
struct Entry {
    arrival: u64,
    seen: u64,
}

/// A governor state store holding at most `max_keys` keys (see the crate doc).
pub struct BoundedStore<K> {
    max_keys: usize,
    /// The quota's emission interval: a state at or before `now` is a full bucket.
    interval: u64,
    table: Mutex<HashMap<K, Entry>>,
    ticks: AtomicU64,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    fn new(max_keys: usize, quota: &Quota) -> BoundedStore<K> {
        let interval = quota.replenish_interval().as_nanos().min(u128::from(u64::MAX)) as u64;
        BoundedStore { max_keys: max_keys.max(1), interval, table: Mutex::new(HashMap::new()), ticks: AtomicU64::new(0) }
    }

    fn len(&self) -> usize {
        self.table.lock().expect("rate-limit table poisoned").len()
    }

    /// Frees room for one key: idle keys first, else the least recently seen eighth. `now` is the
    /// limiter's clock in governor's nanoseconds.
    fn make_room(&self, table: &mut HashMap<K, Entry>, now: Option<u64>) {
        if let Some(now) = now {
            table.retain(|_, entry| entry.arrival > now);
        }
        if table.len() >= self.max_keys {
            let mut seen: Vec<u64> = table.values().map(|entry| entry.seen).collect();
            let cut = (self.max_keys / 8).max(1).min(seen.len() - 1);
            let (_, cutoff, _) = seen.select_nth_unstable(cut);
            let cutoff = *cutoff;
            table.retain(|_, entry| entry.seen > cutoff);
        }
    }
}

/// The store as governor holds it; the limiter keeps another handle to read its size.
pub struct SharedStore<K>(Arc<BoundedStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let seen = self.ticks.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table.lock().expect("rate-limit table poisoned");
        let previous = table.get(key).map(|entry| Nanos::new(entry.arrival));
        if previous.is_none() && table.len() >= self.max_keys {
            // What a new key's state would be after this cell is `now + interval`: so `now` is known
            // without a clock of our own.
            let now = f(None).ok().map(|(_, fresh)| fresh.as_u64().saturating_sub(self.interval));
            self.make_room(&mut table, now);
        }
        match f(previous) {
            Ok((value, arrival)) => {
                table.insert(key.clone(), Entry { arrival: arrival.as_u64(), seen });
                Ok(value)
            }
            Err(refused) => {
                if let Some(entry) = table.get_mut(key) {
                    entry.seen = seen;
                }
                Err(refused)
            }
        }
    }
}

/// A limiter with one GCRA state per key in a [`BoundedStore`].
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, SharedStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>,
    store: Arc<BoundedStore<K>>,
    clock: C,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(quota: Quota, max_keys: usize) -> KeyedLimiter<K> {
        KeyedLimiter::with_clock(quota, max_keys, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimiter<K, C> {
    /// A limiter on `clock` (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(quota: Quota, max_keys: usize, clock: C) -> KeyedLimiter<K, C> {
        let store = Arc::new(BoundedStore::new(max_keys, &quota));
        KeyedLimiter { limiter: RateLimiter::new(quota, SharedStore(store.clone()), clock.clone()), store, clock }
    }

    /// Takes one cell for `key`: `Ok` to go on, or `Err(retry_after)`, how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter.check_key(key).map(|_| ()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// How many keys the table remembers (at most `max_keys`).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(quota(30.0, 5.0).unwrap(), 100, clock.clone());
        for _ in 0..5 {
            assert!(limiter.check(&1u32).is_ok());
        }
        let retry = limiter.check(&1).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(34), "{retry:?}");
        clock.advance(Duration::from_millis(34));
        assert!(limiter.check(&1).is_ok(), "one cell after 1/30 s");
        assert!(limiter.check(&2).is_ok(), "other keys are not affected");
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_the_table_bounded_and_the_abuser_limited() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(quota(30.0, 5.0).unwrap(), 1000, clock.clone());
        for _ in 0..5 {
            limiter.check(&u64::MAX).unwrap();
        }
        for key in 0..100_000u64 {
            clock.advance(Duration::from_micros(1));
            let _ = limiter.check(&key);
            assert!(limiter.len() <= 1000);
        }
        assert!(limiter.len() > 800, "{}", limiter.len());
    }

    #[test]
    fn idle_keys_make_room_before_active_ones() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(quota(1.0, 1.0).unwrap(), 2, clock.clone());
        limiter.check(&"idle").unwrap();
        clock.advance(Duration::from_secs(5));
        limiter.check(&"active").unwrap();
        limiter.check(&"new").unwrap();
        assert!(limiter.check(&"active").is_err(), "the active key kept its state when the idle one was forgotten");
    }

    #[test]
    fn quotas_refuse_nonsense() {
        assert!(quota(0.0, 5.0).is_none());
        assert!(quota(f64::NAN, 5.0).is_none());
        assert!(quota(-1.0, 5.0).is_none());
        assert!(quota(1e12, 0.0).is_some(), "a huge rate is a tiny period; a burst below one is one");
    }
}
