//! The bottom layer: small helpers that know nothing of the Hub, the node or the cluster (time,
//! sizes and durations, address prefixes, coalescing of identical work). Nothing here imports
//! another module of this crate.

pub mod net;
pub mod secret;
pub mod singleflight;
pub mod slots;
pub mod time;
pub mod units;
pub mod zero_copy;
