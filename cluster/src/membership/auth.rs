//! Gossip datagrams authenticated with the cluster key: chitchat checks the cluster name only on Syn
//! and applies SynAck and Ack deltas from anyone, so without this one forged UDP packet could mark a
//! node draining, keep a dead one alive or add a member.
//!
//! Every datagram on the wire is `"hfg1" | session u64 | counter u64 | sent unix ms u64 | chitchat
//! bytes | HMAC-SHA256(cluster key, everything before)`. A datagram whose MAC does not verify, whose
//! time is more than [`MAX_SKEW`] away from ours, or whose (session, counter) was seen before is
//! dropped before chitchat decodes it, and counted; a forged Syn therefore gets no reply either (no
//! state leak, no amplification). The sent time of every datagram that opens is also how this node
//! measures its peers' clocks ([`crate::clock`]).
//!
//! [`MAX_SKEW`] is wide (fifteen minutes) so that a node whose clock is minutes off stays a member — the
//! catalog's times follow the majority's clock, not its own. The window only has to catch a capture
//! replayed after its session was forgotten, and a session is remembered for twice that window after
//! its last datagram, so any datagram of a forgotten session is older than the window.
//!
//! chitchat 0.13 keeps its codec crate-private, so the bytes are made and read by chitchat's own
//! public UDP socket on loopback ("codec"), talking to a second loopback socket of ours ("tap"): a
//! message to send goes codec → tap, is sealed and sent on the wire socket; a verified payload goes
//! tap → codec and comes back out of it decoded.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use ring::hmac;

const MAGIC: [u8; 4] = *b"hfg1";
const HEADER_LEN: usize = 4 + 8 + 8 + 8;
const TAG_LEN: usize = 32;
/// How far a datagram's clock may be from ours: nodes run NTP, but one whose clock went wrong by
/// minutes must not drop out of the cluster for it (two clocks five minutes off in opposite
/// directions are ten minutes apart).
pub const MAX_SKEW: Duration = Duration::from_secs(900);
const MAX_DATAGRAM: usize = 65_535;
/// How long the codec may take to hand back a payload it was given (loopback: at once); beyond,
/// chitchat refused it as undecodable.
const CODEC_WAIT: Duration = Duration::from_millis(100);

fn unix_millis() -> u64 {
    crate::clock::local_ms()
}

/// Datagrams dropped, by reason; shared with whoever exports them.
#[derive(Debug, Default)]
pub struct GossipRejections {
    /// No valid MAC: forged, altered, from another cluster's key, or not ours at all.
    pub forged: AtomicU64,
    /// Valid MAC, but the clock is too far off (an old capture, or a node without NTP).
    pub stale: AtomicU64,
    /// Valid MAC, already seen: replayed.
    pub replayed: AtomicU64,
}

/// The transport chitchat opens its socket through.
pub struct AuthenticatedUdp {
    key: hmac::Key,
    rejections: Arc<GossipRejections>,
}

impl AuthenticatedUdp {
    pub fn new(cluster_key: &[u8], rejections: Arc<GossipRejections>) -> AuthenticatedUdp {
        AuthenticatedUdp { key: hmac::Key::new(hmac::HMAC_SHA256, cluster_key), rejections }
    }
}

#[async_trait::async_trait]
impl Transport for AuthenticatedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let wire = tokio::net::UdpSocket::bind(listen_addr).await.with_context(|| format!("binding gossip {listen_addr}/udp"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = CodecSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback).await?;
        let tap_addr = tap.local_addr()?;
        Ok(Box::new(AuthenticatedSocket {
            key: self.key.clone(),
            rejections: self.rejections.clone(),
            wire,
            codec,
            codec_addr,
            tap,
            tap_addr,
            session: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos() as u64),
            counter: 0,
            pending: None,
            replay: ReplayGuard::default(),
            buffer: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

struct AuthenticatedSocket {
    key: hmac::Key,
    rejections: Arc<GossipRejections>,
    wire: tokio::net::UdpSocket,
    /// chitchat's own (de)serializer, on loopback.
    codec: CodecSocket,
    codec_addr: SocketAddr,
    /// Exchanges plain bytes with `codec`.
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    /// This process' session (a restart is a new one) and its datagram counter.
    session: u64,
    counter: u64,
    /// A verified payload handed to `codec`, and who really sent it; kept across a cancelled `recv`.
    pending: Option<SocketAddr>,
    replay: ReplayGuard,
    buffer: Box<[u8]>,
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    Forged,
    Stale,
    Replayed,
}

/// Seals a chitchat payload into a wire datagram.
fn seal(key: &hmac::Key, session: u64, counter: u64, sent_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    datagram.extend_from_slice(&MAGIC);
    datagram.extend_from_slice(&session.to_be_bytes());
    datagram.extend_from_slice(&counter.to_be_bytes());
    datagram.extend_from_slice(&sent_ms.to_be_bytes());
    datagram.extend_from_slice(payload);
    let tag = hmac::sign(key, &datagram);
    datagram.extend_from_slice(tag.as_ref());
    datagram
}

/// The chitchat payload inside an authentic, fresh, first-seen datagram.
fn open_datagram(key: &hmac::Key, replay: &mut ReplayGuard, datagram: &[u8], now_ms: u64) -> Result<Range<usize>, Rejection> {
    if datagram.len() < HEADER_LEN + TAG_LEN || datagram[..4] != MAGIC {
        return Err(Rejection::Forged);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    hmac::verify(key, signed, tag).map_err(|_| Rejection::Forged)?;
    let field = |at: usize| u64::from_be_bytes(signed[at..at + 8].try_into().expect("8 bytes"));
    let (session, counter, sent_ms) = (field(4), field(12), field(20));
    if now_ms.abs_diff(sent_ms) > MAX_SKEW.as_millis() as u64 {
        return Err(Rejection::Stale);
    }
    if !replay.accept(session, counter, now_ms) {
        return Err(Rejection::Replayed);
    }
    crate::clock::observe(session, sent_ms, now_ms);
    Ok(HEADER_LEN..datagram.len() - TAG_LEN)
}

impl AuthenticatedSocket {
    fn count(&self, rejection: Rejection) {
        let counter = match rejection {
            Rejection::Forged => &self.rejections.forged,
            Rejection::Stale => &self.rejections.stale,
            Rejection::Replayed => &self.rejections.replayed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Socket for AuthenticatedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.wire.local_addr().context("gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // chitchat encodes the envelope into a datagram to our tap.
        self.codec.send(self.tap_addr, envelope).await?;
        let length = loop {
            let (length, from) = self.tap.recv_from(&mut self.buffer[..]).await?;
            if from == self.codec_addr {
                break length;
            }
        };
        self.counter += 1;
        let datagram = seal(&self.key, self.session, self.counter, unix_millis(), &self.buffer[..length]);
        let num_bytes_sent = self.wire.send_to(&datagram, to).await.context("sending gossip")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(from_addr) = self.pending {
                match tokio::time::timeout(CODEC_WAIT, self.codec.recv()).await {
                    Ok(outcome) => {
                        self.pending = None;
                        let mut outcome = outcome?;
                        outcome.from_addr = from_addr;
                        return Ok(outcome);
                    }
                    Err(_) => {
                        self.pending = None;
                        continue;
                    }
                }
            }
            let (length, from_addr) = match self.wire.recv_from(&mut self.buffer[..]).await {
                Ok(received) => received,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(error).context("gossip socket broken"),
            };
            let payload = match open_datagram(&self.key, &mut self.replay, &self.buffer[..length], unix_millis()) {
                Ok(payload) => payload,
                Err(rejection) => {
                    // Silence: a forged Syn gets no reply.
                    self.count(rejection);
                    continue;
                }
            };
            self.tap.send_to(&self.buffer[payload], self.codec_addr).await?;
            self.pending = Some(from_addr);
        }
    }
}

/// Per sender session: the highest counter seen and a 64-wide window below it (bit i = highest − i).
/// Only datagrams with a valid MAC reach it, so an outsider cannot fill it.
#[derive(Default)]
struct ReplayGuard {
    /// session → (highest counter, bitmap, last seen unix ms).
    sessions: HashMap<u64, (u64, u64, u64)>,
}

impl ReplayGuard {
    fn accept(&mut self, session: u64, counter: u64, now_ms: u64) -> bool {
        self.sessions.retain(|_, (_, _, seen)| now_ms.saturating_sub(*seen) <= 2 * MAX_SKEW.as_millis() as u64);
        let (highest, bitmap, seen) = self.sessions.entry(session).or_insert((0, 0, now_ms));
        *seen = now_ms;
        if counter > *highest {
            let shift = counter - *highest;
            *bitmap = if shift >= 64 { 1 } else { (*bitmap << shift) | 1 };
            *highest = counter;
            return true;
        }
        let age = *highest - counter;
        if age >= 64 || *bitmap & (1u64 << age) != 0 {
            return false;
        }
        *bitmap |= 1u64 << age;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes())
    }

    #[test]
    fn only_sealed_fresh_first_seen_datagrams_open() {
        let (ours, theirs) = (key("cluster key"), key("another cluster"));
        let now = 1_800_000_000_000;
        let mut replay = ReplayGuard::default();
        let sealed = seal(&ours, 7, 1, now, b"chitchat bytes");
        let payload = open_datagram(&ours, &mut replay, &sealed, now).unwrap();
        assert_eq!(&sealed[payload], b"chitchat bytes");
        assert_eq!(open_datagram(&ours, &mut replay, &sealed, now), Err(Rejection::Replayed));
        let mut altered = seal(&ours, 7, 2, now, b"chitchat bytes");
        altered[HEADER_LEN] ^= 1;
        assert_eq!(open_datagram(&ours, &mut replay, &altered, now), Err(Rejection::Forged));
        assert_eq!(open_datagram(&ours, &mut replay, &seal(&theirs, 7, 3, now, b"x"), now), Err(Rejection::Forged));
        assert_eq!(open_datagram(&ours, &mut replay, b"\x53\xb0\x00\x02 a plain chitchat ack", now), Err(Rejection::Forged));
        let old = seal(&ours, 7, 4, now - MAX_SKEW.as_millis() as u64 - 1, b"x");
        assert_eq!(open_datagram(&ours, &mut replay, &old, now), Err(Rejection::Stale));
        // Out of order within the window is fine once; a restart is a new session.
        assert!(open_datagram(&ours, &mut replay, &seal(&ours, 7, 9, now, b"x"), now).is_ok());
        assert!(open_datagram(&ours, &mut replay, &seal(&ours, 7, 5, now, b"x"), now).is_ok());
        assert_eq!(open_datagram(&ours, &mut replay, &seal(&ours, 7, 5, now, b"x"), now), Err(Rejection::Replayed));
        assert!(open_datagram(&ours, &mut replay, &seal(&ours, 8, 1, now, b"x"), now).is_ok());
    }
}
