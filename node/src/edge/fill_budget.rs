//! The cold fills anonymous clients may start: at most `total` at once on this node and
//! `per_client` per client network (an IPv4 address, an IPv6 /64), so that asking for many cold huge
//! files costs the asker its own slots, not the mirror's upstream link and disk. A slot is held from
//! the start of a fill until it ends, whether or not the client that started it is still there.

use std::net::IpAddr;

use crate::common::slots::{Slot, SlotRefusal, Slots};

/// Why a fill may not start now: the node's bound ([`SlotRefusal::Total`]) or the client's.
pub type FillRefusal = SlotRefusal;

/// A slot taken for one fill; released when dropped.
pub type FillSlot = Slot;

/// The fill slots of one node; a cheap handle.
#[derive(Clone)]
pub struct FillBudget {
    slots: Slots,
}

impl FillBudget {
    /// `0` for either bound means unbounded.
    pub fn new(total: usize, per_client: usize) -> FillBudget {
        FillBudget { slots: Slots::new(total, per_client) }
    }

    /// Takes a slot for a fill `client` starts (`None`: a caller without an address, e.g. a test or
    /// the node itself, counted only toward the total).
    pub fn try_start(&self, client: Option<IpAddr>) -> Result<FillSlot, FillRefusal> {
        self.slots.try_take(client)
    }

    /// The bound a refusal hit: slots per client network, or in total.
    pub fn bound(&self, refusal: FillRefusal) -> usize {
        let (total, per_client) = self.slots.bounds();
        match refusal {
            FillRefusal::Client => per_client,
            FillRefusal::Total => total,
        }
    }

    /// Fills running now.
    pub fn running(&self) -> usize {
        self.slots.in_use()
    }
}
