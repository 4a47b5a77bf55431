//! The cluster's wall clock: what the median member's clock reads now.
//!
//! Catalog records carry wall-clock times (`checked_at_ms` of refs, policies and documents) written by
//! one node and compared with the clock of another, so a node whose clock is five minutes off would
//! make every record it writes expire five minutes early or late on the others, and would expire the
//! others' records early or late itself. Raft and membership need no wall clock (openraft and chitchat
//! time with `Instant`), but these records do.
//!
//! Every authenticated gossip datagram carries its sender's wall clock (see `membership::auth`), so a
//! node measures each peer's clock against its own, to within the one-way delay of a datagram
//! (milliseconds). [`now_ms`] is the local clock moved by the median of those offsets, counting our
//! own offset (zero) as one of them: with one wrong clock among three or more members, every node —
//! the wrong one included — reads the same time, the majority's. Offsets under [`NTP_GRADE`] are taken
//! as zero: clocks kept by NTP agree better than a one-way delay can tell.
//!
//! The state is process-wide (one node per process in production; the nodes of an in-process test
//! share one clock anyway). Before any peer is heard, and on a single node, it is the local clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Offsets smaller than this are NTP's to fix, not ours.
pub const NTP_GRADE: Duration = Duration::from_secs(1);
/// A sender not heard for this long no longer counts (a stopped or restarted process).
const SAMPLE_LIFETIME: Duration = Duration::from_secs(15);
/// At most this many senders are remembered (authenticated ones only; a bound all the same).
const MAX_SENDERS: usize = 256;

/// The process' clock, fed by the gossip transport.
static CLUSTER: Clock = Clock::new();

/// Peers' clock offsets and the agreed offset made of them.
struct Clock {
    offset_ms: AtomicI64,
    samples: Mutex<Option<HashMap<u64, Sample>>>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// The sender's clock minus ours, in ms, from its latest datagram.
    offset_ms: i64,
    heard: Instant,
}

/// This machine's wall clock, in ms since the Unix epoch (0 before it).
pub fn local_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The cluster's time, in ms since the Unix epoch: the local clock moved by [`offset_ms`].
pub fn now_ms() -> u64 {
    local_ms().saturating_add_signed(offset_ms())
}

/// How far the cluster's clock is from ours (positive: ours is behind), 0 within [`NTP_GRADE`].
pub fn offset_ms() -> i64 {
    CLUSTER.offset_ms.load(Ordering::Relaxed)
}

/// Records that `sender` (a gossip session: one process of a peer) stamped a datagram `sent_ms` that
/// arrived when our clock read `local_ms`.
pub fn observe(sender: u64, sent_ms: u64, local_ms: u64) {
    CLUSTER.observe(sender, sent_ms, local_ms, Instant::now());
}

impl Clock {
    const fn new() -> Clock {
        Clock { offset_ms: AtomicI64::new(0), samples: Mutex::new(None) }
    }

    fn observe(&self, sender: u64, sent_ms: u64, local_ms: u64, now: Instant) {
        let offset_ms = sent_ms as i64 - local_ms as i64;
        let mut samples = self.samples.lock().expect("clock samples poisoned");
        let samples = samples.get_or_insert_with(HashMap::new);
        samples.retain(|_, sample| now.saturating_duration_since(sample.heard) < SAMPLE_LIFETIME);
        if samples.len() >= MAX_SENDERS && !samples.contains_key(&sender) {
            return;
        }
        samples.insert(sender, Sample { offset_ms, heard: now });
        let offsets: Vec<i64> = samples.values().map(|sample| sample.offset_ms).collect();
        let agreed = agreed_offset(&offsets);
        let previous = self.offset_ms.swap(agreed, Ordering::Relaxed);
        if previous.abs_diff(agreed) >= NTP_GRADE.as_millis() as u64 {
            tracing::warn!(
                offset_ms = agreed,
                "this machine's clock is {agreed} ms off the cluster's (the median member's); catalog times follow the cluster's"
            );
        }
    }
}

/// The median of the peers' offsets and ours (0); between two middle values, the one nearer ours.
/// Zero within [`NTP_GRADE`].
fn agreed_offset(peers: &[i64]) -> i64 {
    let mut offsets: Vec<i64> = peers.iter().copied().chain(std::iter::once(0)).collect();
    offsets.sort_unstable();
    let middle = offsets.len() / 2;
    let median = if offsets.len() % 2 == 1 {
        offsets[middle]
    } else {
        let (low, high) = (offsets[middle - 1], offsets[middle]);
        if low.abs() <= high.abs() { low } else { high }
    };
    if median.unsigned_abs() < NTP_GRADE.as_millis() as u64 { 0 } else { median }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MINUTES: i64 = 300_000;

    #[test]
    fn one_wrong_clock_among_four_is_outvoted_on_every_node() {
        // A right node hears two right peers and one five minutes ahead.
        assert_eq!(agreed_offset(&[3, -2, FIVE_MINUTES]), 0);
        // The node five minutes ahead hears three peers five minutes behind it: it takes their time.
        // (to within the peers' disagreement, milliseconds of delay)
        assert_eq!(agreed_offset(&[-FIVE_MINUTES - 4, -FIVE_MINUTES, -FIVE_MINUTES + 3]), -FIVE_MINUTES + 3);
        // One ahead and one behind among four: the right two agree with each other ...
        assert_eq!(agreed_offset(&[0, FIVE_MINUTES, -FIVE_MINUTES]), 0);
        // ... and each wrong one moves to them.
        assert_eq!(agreed_offset(&[-FIVE_MINUTES, -FIVE_MINUTES, -2 * FIVE_MINUTES]), -FIVE_MINUTES);
        assert_eq!(agreed_offset(&[FIVE_MINUTES, FIVE_MINUTES, 2 * FIVE_MINUTES]), FIVE_MINUTES);
    }

    #[test]
    fn small_offsets_and_lone_nodes_keep_the_local_clock() {
        assert_eq!(agreed_offset(&[]), 0);
        assert_eq!(agreed_offset(&[700, 900, -400]), 0);
        // Two nodes that disagree: no majority, each keeps the clock nearer its own.
        assert_eq!(agreed_offset(&[FIVE_MINUTES]), 0);
        assert_eq!(agreed_offset(&[-FIVE_MINUTES]), 0);
    }

    #[test]
    fn observed_senders_move_the_clock_and_age_out() {
        let clock = Clock::new();
        let (local, start) = (1_800_000_000_000, Instant::now());
        for sender in [1, 2, 3] {
            clock.observe(sender, local + FIVE_MINUTES as u64, local, start);
        }
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), FIVE_MINUTES);
        // One of them restarts (a new session) with a right clock; the old sessions still count ...
        clock.observe(4, local, local, start + Duration::from_secs(1));
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), FIVE_MINUTES);
        // ... until they age out: then the right clocks are the majority.
        clock.observe(4, local, local, start + SAMPLE_LIFETIME);
        assert_eq!(clock.offset_ms.load(Ordering::Relaxed), 0);
    }
}
