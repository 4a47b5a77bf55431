//! Who the client is when a trusted proxy stands in front: the PROXY protocol (v1 text or v2 binary,
//! parsed by `ppp`) at the start of a connection, or `X-Forwarded-For` / `X-Forwarded-Proto` on each
//! request. Both are believed only from `trusted_proxies`; anyone else could name any address and
//! walk around every per-client limit.
//!
//! Also here: [`Prefixed`], a stream that gives back the bytes read while deciding what a
//! connection speaks (PROXY header or not, TLS or not, HTTP/2 or HTTP/1.1) before the rest.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::common::net::{Prefix, canonical};

/// The most bytes a PROXY v2 header may carry after its fixed part (addresses and TLVs).
const MAX_V2_EXTRA: usize = 1024;
/// The longest PROXY v1 line, CRLF included (the protocol's own bound).
const MAX_V1_LINE: usize = 107;

/// The prefixes whose connections may say who the client is.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<Prefix>);

impl TrustedProxies {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|prefix| prefix.contains(address))
    }
}

/// What the start of a trusted proxy's connection held.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyStart {
    /// A PROXY header naming the client (`None`: a LOCAL header, the proxy's own health check).
    Header(Option<SocketAddr>),
    /// No PROXY header: the bytes read belong to the HTTP or TLS stream that follows.
    Plain(Vec<u8>),
}

/// Reads a PROXY v1 or v2 header from the start of `stream`, or gives back what it read when there
/// is none. A malformed header is an error: the connection is closed.
pub async fn read_proxy_start<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<ProxyStart> {
    let mut head = vec![0u8; 5];
    stream.read_exact(&mut head).await?;
    if head == b"PROXY" {
        while !head.ends_with(b"\r\n") {
            if head.len() >= MAX_V1_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "PROXY v1 line too long"));
            }
            head.push(stream.read_u8().await?);
        }
        let header = ppp::v1::Header::try_from(head.as_slice())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY v1: {error}")))?;
        return Ok(ProxyStart::Header(match header.addresses {
            ppp::v1::Addresses::Tcp4(addresses) => Some(SocketAddr::from((addresses.source_address, addresses.source_port))),
            ppp::v1::Addresses::Tcp6(addresses) => Some(SocketAddr::from((addresses.source_address, addresses.source_port))),
            ppp::v1::Addresses::Unknown => None,
        }));
    }
    if head[..] != ppp::v2::PROTOCOL_PREFIX[..5] {
        return Ok(ProxyStart::Plain(head));
    }
    head.resize(16, 0);
    stream.read_exact(&mut head[5..]).await?;
    if head[..12] != *ppp::v2::PROTOCOL_PREFIX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad PROXY v2 signature"));
    }
    let extra = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if extra > MAX_V2_EXTRA {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "PROXY v2 header too long"));
    }
    head.resize(16 + extra, 0);
    stream.read_exact(&mut head[16..]).await?;
    let header = ppp::v2::Header::try_from(head.as_slice())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY v2: {error}")))?;
    Ok(ProxyStart::Header(match (header.command, header.addresses) {
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(addresses)) => {
            Some(SocketAddr::from((addresses.source_address, addresses.source_port)))
        }
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(addresses)) => {
            Some(SocketAddr::from((addresses.source_address, addresses.source_port)))
        }
        _ => None,
    }))
}

/// The client a trusted proxy names in `X-Forwarded-For`: the rightmost address that is not itself a
/// trusted proxy (the left part is whatever the client claimed). `None` when there is no usable one.
pub fn forwarded_for(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        for part in text.split(',') {
            addresses.push(part.trim().parse::<IpAddr>().ok()?);
        }
    }
    addresses.into_iter().rev().map(canonical).find(|address| !trusted.contains(*address))
}

/// The scheme a trusted proxy says the client used (`X-Forwarded-Proto`).
pub fn forwarded_scheme(headers: &HeaderMap) -> Option<&'static str> {
    match headers.get("x-forwarded-proto")?.to_str().ok()?.trim() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

/// A stream whose first bytes were already read: they are given back first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed { prefix, position: 0, inner }
    }

    /// The bytes given back first.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The stream the bytes after the prefix come from.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// Reads more into the prefix (before anything was given back), at least one byte.
    pub async fn read_more(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.position, 0);
        let mut buffer = [0u8; 64];
        let read = self.inner.read(&mut buffer).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.prefix.extend_from_slice(&buffer[..read]);
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.position < self.prefix.len() {
            let remaining = &self.prefix[self.position..];
            let taken = remaining.len().min(buffer.remaining());
            buffer.put_slice(&remaining[..taken]);
            self.position += taken;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    pass_to_inner!(poll_flush, poll_shutdown);

    fn poll_write_vectored(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffers: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(bytes: &[u8]) -> io::Result<ProxyStart> {
        let mut reader = bytes;
        read_proxy_start(&mut reader).await
    }

    #[tokio::test]
    async fn proxy_headers_name_the_client_and_plain_starts_are_given_back() {
        let v1 = start(b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\nGET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(v1, ProxyStart::Header(Some("198.51.100.7:51234".parse().unwrap())));
        let v1_six = start(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n").await.unwrap();
        assert_eq!(v1_six, ProxyStart::Header(Some("[2001:db8::7]:51234".parse().unwrap())));
        assert_eq!(start(b"PROXY UNKNOWN\r\n").await.unwrap(), ProxyStart::Header(None));
        let mut v2 = ppp::v2::PROTOCOL_PREFIX.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 7, 203, 0, 113, 1, 0xC8, 0x22, 0x01, 0xBB]);
        assert_eq!(start(&v2).await.unwrap(), ProxyStart::Header(Some("198.51.100.7:51234".parse().unwrap())));
        let mut local = ppp::v2::PROTOCOL_PREFIX.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(start(&local).await.unwrap(), ProxyStart::Header(None));
        assert_eq!(start(b"GET / HTTP/1.1\r\n").await.unwrap(), ProxyStart::Plain(b"GET /".to_vec()));
    }

    #[tokio::test]
    async fn hostile_proxy_headers_are_refused() {
        for hostile in [
            b"PROXY TCP4 999.1.1.1 203.0.113.1 1 2\r\n".to_vec(),
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
            b"PROXY TCP4 1.2.3.4\r\n".to_vec(),
            [&ppp::v2::PROTOCOL_PREFIX[..], &[0x21, 0x11, 0xFF, 0xFF]].concat(),
            [&ppp::v2::PROTOCOL_PREFIX[..6], &b"garbage-garbage"[..]].concat(),
            b"PRO".to_vec(),
        ] {
            assert!(start(&hostile).await.is_err(), "{:?}", String::from_utf8_lossy(&hostile));
        }
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_address() {
        let trusted = TrustedProxies(vec![Prefix::parse("10.0.0.0/8").unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.2".parse().unwrap());
        assert_eq!(forwarded_for(&headers, &trusted), Some("198.51.100.7".parse().unwrap()), "the client cannot pick 1.2.3.4");
        headers.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(forwarded_for(&headers, &trusted), None);
        assert_eq!(forwarded_for(&HeaderMap::new(), &trusted), None);
    }
}
