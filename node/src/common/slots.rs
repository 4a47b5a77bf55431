//! Slots bounded in total and per client network (an IPv4 address, an IPv6 /64): what an anonymous
//! client may hold of something the node has a fixed amount of (open connections, cold fills). A slot
//! is released when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::net::ClientKey;

/// Why a slot was not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRefusal {
    /// Every slot of the node is taken.
    Total,
    /// This client network holds as many as it may.
    Client,
}

/// A table of slots; a cheap handle.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_client: usize,
    taken: Mutex<Taken>,
}

#[derive(Default)]
struct Taken {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// One slot taken; released when dropped.
pub struct Slot {
    slots: Slots,
    client: Option<ClientKey>,
}

impl Slots {
    /// `0` for either bound means unbounded.
    pub fn new(total: usize, per_client: usize) -> Slots {
        Slots { inner: Arc::new(Inner { total, per_client, taken: Mutex::default() }) }
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, Taken> {
        self.inner.taken.lock().expect("slot table poisoned")
    }

    fn client_full(&self, taken: &Taken, key: ClientKey) -> bool {
        self.inner.per_client > 0 && taken.by_client.get(&key).copied().unwrap_or(0) >= self.inner.per_client
    }

    /// Takes a slot for `client` (`None`: a caller without an address yet, such as a trusted proxy
    /// or the node itself, counted only in the total).
    pub fn try_take(&self, client: Option<IpAddr>) -> Result<Slot, SlotRefusal> {
        let client = client.map(ClientKey::of);
        let mut taken = self.taken();
        if self.inner.total > 0 && taken.total >= self.inner.total {
            return Err(SlotRefusal::Total);
        }
        if let Some(key) = client {
            if self.client_full(&taken, key) {
                return Err(SlotRefusal::Client);
            }
            *taken.by_client.entry(key).or_insert(0) += 1;
        }
        taken.total += 1;
        Ok(Slot { slots: self.clone(), client })
    }

    /// Charges a slot taken without a client to `client` once it is known; `false` (and the slot
    /// unchanged) when that client holds as many as it may.
    pub fn assign(&self, slot: &mut Slot, client: IpAddr) -> bool {
        let key = ClientKey::of(client);
        let mut taken = self.taken();
        if self.client_full(&taken, key) {
            return false;
        }
        *taken.by_client.entry(key).or_insert(0) += 1;
        if let Some(previous) = slot.client.replace(key) {
            release_client(&mut taken, previous);
        }
        true
    }

    /// Slots taken now.
    /// The bounds: `(total, per_client)`, `0` for unbounded.
    pub fn bounds(&self) -> (usize, usize) {
        (self.inner.total, self.inner.per_client)
    }

    pub fn in_use(&self) -> usize {
        self.taken().total
    }
}

fn release_client(taken: &mut Taken, key: ClientKey) {
    if let Some(count) = taken.by_client.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            taken.by_client.remove(&key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken();
        taken.total = taken.total.saturating_sub(1);
        if let Some(key) = self.client {
            release_client(&mut taken, key);
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
        let slots = Slots::new(3, 2);
        let first = slots.try_take(ip("2001:db8:1:1::1")).unwrap();
        let _second = slots.try_take(ip("2001:db8:1:1::2")).unwrap();
        assert_eq!(slots.try_take(ip("2001:db8:1:1::3")).err(), Some(SlotRefusal::Client), "the same /64");
        let mut unnamed = slots.try_take(None).unwrap();
        assert_eq!(slots.try_take(ip("198.51.100.2")).err(), Some(SlotRefusal::Total));
        assert!(!slots.assign(&mut unnamed, "2001:db8:1:1::9".parse().unwrap()), "a client named later is bounded too");
        drop(first);
        assert!(slots.assign(&mut unnamed, "2001:db8:1:1::9".parse().unwrap()));
        assert_eq!(slots.try_take(ip("2001:db8:1:1::3")).err(), Some(SlotRefusal::Client), "charged to its /64 now");
        drop(unnamed);
        let _again = slots.try_take(ip("2001:db8:1:1::3")).expect("released slots are free again");
        assert_eq!(slots.in_use(), 2);
    }
}
