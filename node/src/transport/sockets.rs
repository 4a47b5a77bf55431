//! Sockets handed over by whoever started the node (a supervisor, `cluster up`, the test harness),
//! in the manner of systemd's socket activation: the parent binds, so a port is never free for
//! someone else between being chosen and being bound, and it is known before the node starts.
//!
//! `HF_MIRROR_LISTEN_FDS=http=3,peer=4,dns_udp=5,dns_tcp=6` names inherited descriptors: `http` a
//! listening TCP socket for the edge, `peer` a bound UDP socket for the QUIC peer endpoint,
//! `dns_udp`/`dns_tcp` the DNS server's pair (same port). Gossip binds its own port (chitchat opens
//! its socket itself).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, bail};

pub const LISTEN_FDS_VARIABLE: &str = "HF_MIRROR_LISTEN_FDS";

/// The sockets this process was given.
#[derive(Debug, Default)]
pub struct HandedOver {
    pub http: Option<std::net::TcpListener>,
    pub peer: Option<std::net::UdpSocket>,
    pub dns: Option<DnsSockets>,
}

/// The DNS server's UDP socket and TCP listener, on one port.
#[derive(Debug)]
pub struct DnsSockets {
    pub udp: std::net::UdpSocket,
    pub tcp: std::net::TcpListener,
}

impl DnsSockets {
    /// Binds UDP and TCP on `address`; with port 0, on a port free for both (tried a few times).
    pub fn bind(address: std::net::SocketAddr) -> std::io::Result<DnsSockets> {
        let mut last_error = None;
        for _ in 0..20 {
            let udp = std::net::UdpSocket::bind(address)?;
            match std::net::TcpListener::bind(udp.local_addr()?) {
                Ok(tcp) => return Ok(DnsSockets { udp, tcp }),
                Err(error) if address.port() == 0 => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
    }
}

/// Sockets a parent bound for one child node, to hand over when it starts it.
pub struct ChildSockets {
    pub http: std::net::TcpListener,
    pub peer: std::net::UdpSocket,
    pub dns: Option<DnsSockets>,
}

impl ChildSockets {
    /// Binds an HTTP listener, a peer socket and, if asked, a DNS pair (port 0: the system chooses).
    pub fn bind(
        http: std::net::SocketAddr,
        peer: std::net::SocketAddr,
        dns: Option<std::net::SocketAddr>,
    ) -> std::io::Result<ChildSockets> {
        Ok(ChildSockets {
            http: std::net::TcpListener::bind(http)?,
            peer: std::net::UdpSocket::bind(peer)?,
            dns: dns.map(DnsSockets::bind).transpose()?,
        })
    }

    /// Lets the sockets survive the child's `exec` and returns the value of [`LISTEN_FDS_VARIABLE`]
    /// naming them. Call right before spawning the child, from the thread that spawns; drop `self`
    /// once it is spawned (the child keeps its own copies).
    pub fn inheritable(&self) -> std::io::Result<String> {
        use std::os::fd::AsRawFd;
        rustix::io::fcntl_setfd(&self.http, rustix::io::FdFlags::empty())?;
        rustix::io::fcntl_setfd(&self.peer, rustix::io::FdFlags::empty())?;
        let mut value = format!("http={},peer={}", self.http.as_raw_fd(), self.peer.as_raw_fd());
        if let Some(dns) = &self.dns {
            rustix::io::fcntl_setfd(&dns.udp, rustix::io::FdFlags::empty())?;
            rustix::io::fcntl_setfd(&dns.tcp, rustix::io::FdFlags::empty())?;
            value.push_str(&format!(",dns_udp={},dns_tcp={}", dns.udp.as_raw_fd(), dns.tcp.as_raw_fd()));
        }
        Ok(value)
    }
}

/// Parses `http=3,peer=4`; every name at most once, descriptors above the standard streams.
pub fn parse_listen_fds(text: &str) -> anyhow::Result<Vec<(String, RawFd)>> {
    let mut parsed: Vec<(String, RawFd)> = Vec::new();
    for part in text.split(',').filter(|part| !part.is_empty()) {
        let (name, number) = part.split_once('=').with_context(|| format!("{LISTEN_FDS_VARIABLE}: {part:?} is not NAME=FD"))?;
        if !matches!(name, "http" | "peer" | "dns_udp" | "dns_tcp") {
            bail!("{LISTEN_FDS_VARIABLE}: unknown socket name {name:?} (http, peer, dns_udp, dns_tcp)");
        }
        let number: RawFd = number.parse().with_context(|| format!("{LISTEN_FDS_VARIABLE}: {number:?} is not a descriptor number"))?;
        if number < 3 {
            bail!("{LISTEN_FDS_VARIABLE}: descriptor {number} is a standard stream");
        }
        if parsed.iter().any(|(known, fd)| known == name || *fd == number) {
            bail!("{LISTEN_FDS_VARIABLE}: {part:?} repeats a name or a descriptor");
        }
        parsed.push((name.to_owned(), number));
    }
    Ok(parsed)
}

/// Takes ownership of the sockets named in the environment; called once, at start-up.
pub fn take_handed_over() -> anyhow::Result<HandedOver> {
    let Some(text) = std::env::var_os(LISTEN_FDS_VARIABLE) else { return Ok(HandedOver::default()) };
    let text = text.into_string().map_err(|_| anyhow::anyhow!("{LISTEN_FDS_VARIABLE} is not UTF-8"))?;
    let mut handed = HandedOver::default();
    let (mut dns_udp, mut dns_tcp) = (None, None);
    for (name, number) in parse_listen_fds(&text)? {
        let owned = adopt(number).with_context(|| format!("{LISTEN_FDS_VARIABLE}: descriptor {number} ({name})"))?;
        // Ours now: close it in any child this node starts (the rsync daemon), or a child outliving
        // the node would keep its ports.
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
        let socket = socket_kind(&owned)?;
        match (name.as_str(), socket) {
            ("http", SocketKind::Stream) => handed.http = Some(std::net::TcpListener::from(owned)),
            ("peer", SocketKind::Datagram) => handed.peer = Some(std::net::UdpSocket::from(owned)),
            ("dns_udp", SocketKind::Datagram) => dns_udp = Some(std::net::UdpSocket::from(owned)),
            ("dns_tcp", SocketKind::Stream) => dns_tcp = Some(std::net::TcpListener::from(owned)),
            _ => bail!("{LISTEN_FDS_VARIABLE}: descriptor {number} is not the kind of socket {name} needs"),
        }
    }
    handed.dns = match (dns_udp, dns_tcp) {
        (Some(udp), Some(tcp)) => Some(DnsSockets { udp, tcp }),
        (None, None) => None,
        _ => bail!("{LISTEN_FDS_VARIABLE}: dns_udp and dns_tcp go together"),
    };
    Ok(handed)
}

enum SocketKind {
    Stream,
    Datagram,
    Other,
}

fn socket_kind(fd: &OwnedFd) -> anyhow::Result<SocketKind> {
    let kind = rustix::net::sockopt::socket_type(fd).context("not a socket")?;
    Ok(match kind {
        rustix::net::SocketType::STREAM => SocketKind::Stream,
        rustix::net::SocketType::DGRAM => SocketKind::Datagram,
        _ => SocketKind::Other,
    })
}

/// Adopts an inherited descriptor after checking that it is open.
#[allow(unsafe_code)]
fn adopt(number: RawFd) -> anyhow::Result<OwnedFd> {
    // Checking first means a number that is not open is an error, not undefined behaviour.
    if !std::path::Path::new(&format!("/proc/self/fd/{number}")).exists() {
        bail!("not open");
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process to own; this
    // is the only place that takes it, once, at start-up, so nothing else closes or uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(number) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_are_parsed_strictly() {
        assert_eq!(parse_listen_fds("http=3,peer=4").unwrap(), [("http".to_owned(), 3), ("peer".to_owned(), 4)]);
        assert_eq!(parse_listen_fds("http=3,dns_udp=5,dns_tcp=6").unwrap().len(), 3);
        assert!(parse_listen_fds("").unwrap().is_empty());
        for hostile in ["http", "http=x", "http=1", "gossip=5", "http=3,http=4", "http=3,peer=3", "http=-1", "http=99999999999"] {
            assert!(parse_listen_fds(hostile).is_err(), "{hostile:?} must be refused");
        }
    }
}
