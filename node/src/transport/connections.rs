//! Open connections, bounded per client network (an IPv4 address, an IPv6 /64) and in total, for
//! HTTP/1.1 and HTTP/2 over TCP and HTTP/3 over QUIC alike. A connection over the bound is closed at
//! once, before any byte of it is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::net::ClientKey;

/// The connection table of one node; a cheap handle.
#[derive(Clone)]
pub struct ConnectionLimits {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_client: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// One open connection; released when dropped.
pub struct ConnectionSlot {
    limits: ConnectionLimits,
    client: Option<ClientKey>,
}

impl ConnectionLimits {
    /// `0` for either bound means unbounded.
    pub fn new(total: usize, per_client: usize) -> ConnectionLimits {
        ConnectionLimits { inner: Arc::new(Inner { total, per_client, open: Mutex::default(), refused: AtomicU64::new(0) }) }
    }

    /// Opens a connection from `client` (`None`: a trusted proxy, counted only in the total until
    /// it names its client).
    pub fn try_open(&self, client: Option<IpAddr>) -> Option<ConnectionSlot> {
        let client = client.map(ClientKey::of);
        let mut open = self.inner.open.lock().expect("connection table poisoned");
        let over_total = self.inner.total > 0 && open.total >= self.inner.total;
        let over_client =
            client.is_some_and(|key| self.inner.per_client > 0 && open.by_client.get(&key).copied().unwrap_or(0) >= self.inner.per_client);
        if over_total || over_client {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        open.total += 1;
        if let Some(key) = client {
            *open.by_client.entry(key).or_insert(0) += 1;
        }
        Some(ConnectionSlot { limits: self.clone(), client })
    }

    /// Charges a slot opened for a trusted proxy to the client the proxy named; `false` (and the
    /// slot unchanged) when that client is over its bound.
    pub fn assign(&self, slot: &mut ConnectionSlot, client: IpAddr) -> bool {
        let key = ClientKey::of(client);
        let mut open = self.inner.open.lock().expect("connection table poisoned");
        let count = open.by_client.get(&key).copied().unwrap_or(0);
        if self.inner.per_client > 0 && count >= self.inner.per_client {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        open.by_client.insert(key, count + 1);
        slot.client = Some(key);
        true
    }

    pub fn open(&self) -> usize {
        self.inner.open.lock().expect("connection table poisoned").total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.inner.open.lock().expect("connection table poisoned");
        open.total = open.total.saturating_sub(1);
        if let Some(key) = self.client {
            if let Some(count) = open.by_client.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.by_client.remove(&key);
                }
            }
        }
    }
}

/// Exports the open connections and those refused over a bound.
impl crate::telemetry::MetricSource for ConnectionLimits {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        samples.gauge("hfm_connections_open", "Client connections open (TCP and QUIC)", self.open() as i64)?;
        samples.counter(
            "hfm_connections_refused",
            "Client connections closed at once: over the per-client or the total bound",
            self.inner.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_are_bounded_per_client_network_and_in_total() {
        let limits = ConnectionLimits::new(3, 2);
        let first = limits.try_open(Some(ip("2001:db8:1:1::1"))).unwrap();
        let _second = limits.try_open(Some(ip("2001:db8:1:1::2"))).unwrap();
        assert!(limits.try_open(Some(ip("2001:db8:1:1::3"))).is_none(), "the same /64");
        let mut proxied = limits.try_open(None).unwrap();
        assert!(limits.try_open(Some(ip("198.51.100.1"))).is_none(), "the total");
        assert!(!limits.assign(&mut proxied, ip("2001:db8:1:1::9")), "a proxy's client is bounded too");
        drop(first);
        assert!(limits.assign(&mut proxied, ip("2001:db8:1:1::9")));
        assert_eq!(limits.open(), 2);
    }
}
