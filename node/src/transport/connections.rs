//! Open connections, bounded per client network (an IPv4 address, an IPv6 /64) and in total, for
//! HTTP/1.1 and HTTP/2 over TCP and HTTP/3 over QUIC alike. A connection over the bound is closed at
//! once, before any byte of it is read.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::slots::{Slot, Slots};

/// The connection table of one node; a cheap handle.
#[derive(Clone)]
pub struct ConnectionLimits {
    slots: Slots,
    refused: Arc<AtomicU64>,
}

/// One open connection; released when dropped.
pub type ConnectionSlot = Slot;

impl ConnectionLimits {
    /// `0` for either bound means unbounded.
    pub fn new(total: usize, per_client: usize) -> ConnectionLimits {
        ConnectionLimits { slots: Slots::new(total, per_client), refused: Arc::default() }
    }

    /// Opens a connection from `client` (`None`: a trusted proxy, counted only in the total until
    /// it names its client).
    pub fn try_open(&self, client: Option<IpAddr>) -> Option<ConnectionSlot> {
        let slot = self.slots.try_take(client).ok();
        if slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// Charges a slot opened for a trusted proxy to the client the proxy named; `false` (and the
    /// slot unchanged) when that client is over its bound.
    pub fn assign(&self, slot: &mut ConnectionSlot, client: IpAddr) -> bool {
        let assigned = self.slots.assign(slot, client);
        if !assigned {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        assigned
    }

    pub fn open(&self) -> usize {
        self.slots.in_use()
    }
}

/// Exports the open connections and those refused over a bound.
impl crate::telemetry::MetricSource for ConnectionLimits {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        samples.gauge("hfm_connections_open", "Client connections open (TCP and QUIC)", self.open() as i64)?;
        samples.counter(
            "hfm_connections_refused",
            "Client connections closed at once: over the per-client or the total bound",
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted() {
        let limits = ConnectionLimits::new(1, 0);
        let _open = limits.try_open(Some("198.51.100.1".parse().unwrap())).unwrap();
        assert!(limits.try_open(Some("198.51.100.2".parse().unwrap())).is_none());
        assert_eq!((limits.open(), limits.refused.load(Ordering::Relaxed)), (1, 1));
    }
}
