//! rsync for bulk users and downstream mirrors: pins (repositories kept whole on every node), the
//! supervised read-only daemon, the module trees it serves, and the Parquet indexes of the catalog.
//!
//! # Layout
//!
//! - `pins`: [`pins::Pins`], the node's side of `/_hfm/pins` and the follower of pinned branches.
//! - `daemon`: the supervised Debian `rsync --daemon` ([`daemon::Rsyncd`]) and its configuration.
//! - `trees`: the generations of hard-link trees each module shows, switched atomically.
//! - `indexes`: the Parquet snapshots of the catalog in the `indexes` module.

pub mod daemon;
pub mod indexes;
pub mod pins;
pub mod trees;
