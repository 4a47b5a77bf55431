//! The cold fills anonymous clients may start: at most `total` at once on this node and
//! `per_client` per client network (an IPv4 address, an IPv6 /64), so that asking for many cold huge
//! files costs the asker its own slots, not the mirror's upstream link and disk. A slot is held from
//! the start of a fill until it ends, whether or not the client that started it is still there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::common::net::ClientKey;

/// The fill slots of one node; a cheap handle.
#[derive(Clone)]
pub struct FillBudget {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_client: usize,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// Why a fill may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillRefusal {
    /// The node runs as many cold fills as it allows.
    Node,
    /// This client's network started as many as it may.
    Client,
}

/// A slot taken for one fill; released when dropped.
pub struct FillSlot {
    budget: FillBudget,
    client: Option<ClientKey>,
}

impl FillBudget {
    /// `0` for either bound means unbounded.
    pub fn new(total: usize, per_client: usize) -> FillBudget {
        FillBudget { inner: Arc::new(Inner { total, per_client, running: Mutex::default() }) }
    }

    /// Takes a slot for a fill `client` starts (`None`: a caller without an address, e.g. a test or
    /// the node itself, counted only toward the total).
    pub fn try_start(&self, client: Option<IpAddr>) -> Result<FillSlot, FillRefusal> {
        let client = client.map(ClientKey::of);
        let mut running = self.inner.running.lock().expect("fill budget poisoned");
        if self.inner.total > 0 && running.total >= self.inner.total {
            return Err(FillRefusal::Node);
        }
        if let Some(key) = client {
            let count = running.by_client.get(&key).copied().unwrap_or(0);
            if self.inner.per_client > 0 && count >= self.inner.per_client {
                return Err(FillRefusal::Client);
            }
            running.by_client.insert(key, count + 1);
        }
        running.total += 1;
        Ok(FillSlot { budget: self.clone(), client })
    }

    /// Fills running now.
    pub fn running(&self) -> usize {
        self.inner.running.lock().expect("fill budget poisoned").total
    }
}

impl Drop for FillSlot {
    fn drop(&mut self) {
        let mut running = self.budget.inner.running.lock().expect("fill budget poisoned");
        running.total = running.total.saturating_sub(1);
        if let Some(key) = self.client {
            if let Some(count) = running.by_client.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    running.by_client.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn slots_are_bounded_per_client_network_and_in_total_until_released() {
        let budget = FillBudget::new(3, 2);
        let first = budget.try_start(ip("2001:db8:1:1::1")).unwrap();
        let _second = budget.try_start(ip("2001:db8:1:1::2")).unwrap();
        assert_eq!(budget.try_start(ip("2001:db8:1:1::3")).err(), Some(FillRefusal::Client), "the same /64");
        let _third = budget.try_start(ip("198.51.100.1")).unwrap();
        assert_eq!(budget.try_start(ip("198.51.100.2")).err(), Some(FillRefusal::Node));
        drop(first);
        let _fourth = budget.try_start(ip("2001:db8:1:1::3")).expect("a released slot is free again");
        assert_eq!(budget.running(), 3);
    }
}
