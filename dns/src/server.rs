//! The DNS listeners (hickory-server, UDP and TCP on one port) and the request handler: the wire
//! rules of an authoritative server around [`Zone::answer`].
//!
//! - AA on every answer from the zone, RA never (no recursion);
//! - opcodes other than QUERY: NOTIMP; not exactly one question, or a class other than IN: FORMERR /
//!   REFUSED; EDNS version above 0: BADVERS (with an OPT, as RFC 6891 wants);
//! - EDNS Client Subnet (RFC 7871): the subnet locates the client and is echoed with the answer's
//!   scope; without it the resolver's address decides;
//! - UDP answers larger than min(the client's EDNS buffer, 1232) — 512 without EDNS — go out as a bare
//!   TC=1 answer, so the client asks again over TCP, where the same answer is complete;
//! - UDP responses are rate limited per client network ([`crate::rrl`]); TCP is not.
//!
//! Undecodable packets are answered by hickory itself: FORMERR when the header is readable, silence
//! otherwise.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hfm_cluster::membership::ClusterView;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigError, make_tsig_record};
use hickory_proto::rr::{DNSClass, Name, RData, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::geo::truncate;
use crate::rrl::{RateLimiter, Verdict};
use crate::zone::{Answer, Zone};

/// The largest UDP answer we send (the DNS flag day 2020 size, safe from fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP answer limit for a query without EDNS (RFC 1035).
const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// How long an idle TCP connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How a node's DNS server runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsSettings {
    /// UDP and TCP address (port 53 in production).
    pub listen: SocketAddr,
    /// UDP responses per second per client network (0: unlimited).
    pub rate_limit: u32,
    /// Over the limit, every `slip`-th response goes out truncated instead of dropped.
    pub slip: u32,
}

/// Answers questions from the zone and the live membership.
pub struct GeoHandler {
    zone: Arc<Zone>,
    view: watch::Receiver<ClusterView>,
    limiter: RateLimiter,
}

impl GeoHandler {
    pub fn new(zone: Arc<Zone>, view: watch::Receiver<ClusterView>, rate_limit: u32, slip: u32) -> GeoHandler {
        GeoHandler { zone, view, limiter: RateLimiter::new(rate_limit, slip, 65_536) }
    }
}

/// The client's network to locate: the ECS subnet when given (with a non-zero source prefix), else
/// the resolver's address.
fn locating_address(ecs: Option<&ClientSubnet>, source: IpAddr) -> IpAddr {
    match ecs {
        Some(subnet) if subnet.source_prefix() > 0 => truncate(subnet.addr(), subnet.source_prefix()),
        _ => source.to_canonical(),
    }
}

#[async_trait::async_trait]
impl RequestHandler for GeoHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let udp = request.protocol() == Protocol::Udp;
        let verdict = if udp { self.limiter.check(request.src().ip().to_canonical()) } else { Verdict::Send };
        if verdict == Verdict::Drop {
            return ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() });
        }
        // EDNS: answer with an OPT exactly when the query had one.
        let mut response_edns = None;
        let mut subnet = None;
        if let Some(query_edns) = request.edns.as_ref() {
            let mut edns = Edns::new();
            edns.set_max_payload(query_edns.max_payload().clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD));
            // RFC 3225: the DO bit of the query is copied into the answer's OPT.
            edns.set_dnssec_ok(query_edns.flags().dnssec_ok);
            if query_edns.version() > 0 {
                metadata.response_code = ResponseCode::BADVERS;
                return send(&mut response_handle, request, metadata, Some(&edns), &[], &[], udp).await;
            }
            if let Some(EdnsOption::Subnet(client_subnet)) = query_edns.option(EdnsCode::Subnet) {
                subnet = Some(*client_subnet);
            }
            response_edns = Some(edns);
        }
        if verdict == Verdict::Slip {
            metadata.truncation = true;
            return send(&mut response_handle, request, metadata, response_edns.as_ref(), &[], &[], udp).await;
        }
        if request.metadata.op_code != OpCode::Query {
            // What this server does not implement it does not pretend to understand either: no flag
            // of the query is echoed beyond its id and opcode.
            metadata.response_code = ResponseCode::NotImp;
            metadata.recursion_desired = false;
            metadata.checking_disabled = false;
            return send(&mut response_handle, request, metadata, response_edns.as_ref(), &[], &[], udp).await;
        }
        // RFC 8945 §5.2.2: this server knows no TSIG key, so a signed query gets NOTAUTH with an
        // unsigned TSIG saying BADKEY, never an answer as if it had been verified.
        if let Some((key_name, tsig)) = request_tsig(request) {
            metadata.response_code = ResponseCode::NotAuth;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
            let unsigned =
                TSIG::new(tsig.algorithm.clone(), now, tsig.fudge, Vec::new(), request.metadata.id, Some(TsigError::BadKey), Vec::new());
            let signature = Box::new(make_tsig_record(key_name.clone(), unsigned));
            return send_signed(&mut response_handle, request, metadata, response_edns.as_ref(), signature).await;
        }
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return send(&mut response_handle, request, metadata, response_edns.as_ref(), &[], &[], udp).await;
        };
        let query = info.query;
        if query.query_class() != DNSClass::IN {
            metadata.response_code = ResponseCode::Refused;
            return send(&mut response_handle, request, metadata, response_edns.as_ref(), &[], &[], udp).await;
        }
        let client = locating_address(subnet.as_ref(), request.src().ip());
        let view = self.view.borrow().clone();
        let is_live = |name: &str| view.is_serving(name);
        let answer = self.zone.answer(query.name(), query.query_type(), Some(client), &is_live);
        let (answers, authority, scope) = match answer {
            Answer::Refused => {
                metadata.response_code = ResponseCode::Refused;
                (Vec::new(), Vec::new(), 0)
            }
            Answer::NxDomain { soa } => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                (Vec::new(), vec![soa], 0)
            }
            Answer::NoData { soa } => {
                metadata.authoritative = true;
                (Vec::new(), vec![soa], 0)
            }
            Answer::Records { records, scope } => {
                metadata.authoritative = true;
                (records, Vec::new(), scope)
            }
        };
        // RFC 7871: echo FAMILY, SOURCE PREFIX-LENGTH and ADDRESS; SCOPE says how widely the answer
        // holds (never more specific than the client gave).
        if let (Some(edns), Some(client_subnet)) = (response_edns.as_mut(), subnet) {
            let scope = if client_subnet.source_prefix() == 0 { 0 } else { scope.min(client_subnet.source_prefix()) };
            let echoed =
                ClientSubnet::new(truncate(client_subnet.addr(), client_subnet.source_prefix()), client_subnet.source_prefix(), scope);
            edns.options_mut().insert(EdnsOption::Subnet(echoed));
        }
        send(&mut response_handle, request, metadata, response_edns.as_ref(), &answers, &authority, udp).await
    }
}

/// The TSIG of a query: the last additional record (hickory, built without its DNSSEC features,
/// leaves it there rather than in `signature`).
fn request_tsig(request: &Request) -> Option<(&Name, &TSIG)> {
    if let Some(signature) = request.signature.as_deref() {
        return Some((&signature.name, &signature.data));
    }
    request.additionals.iter().find_map(|record| match &record.data {
        RData::TSIG(tsig) => Some((&record.name, tsig)),
        _ => None,
    })
}

/// Sends an empty answer carrying `signature` (an unsigned TSIG with an error).
async fn send_signed<R: ResponseHandler>(
    response_handle: &mut R,
    request: &Request,
    metadata: Metadata,
    edns: Option<&Edns>,
    signature: Box<Record<TSIG>>,
) -> ResponseInfo {
    let mut response = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
    );
    response.set_signature(signature);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "cannot send a DNS response");
            ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
        }
    }
}

/// Sends an answer; over UDP, one that does not fit the client's buffer goes out as a bare TC=1
/// answer instead (hickory would otherwise cut sections part-way, or allow 4096 bytes without EDNS).
async fn send<R: ResponseHandler>(
    response_handle: &mut R,
    request: &Request,
    mut metadata: Metadata,
    edns: Option<&Edns>,
    answers: &[Record],
    authority: &[Record],
    udp: bool,
) -> ResponseInfo {
    if udp && !metadata.truncation {
        let limit = edns.map_or(CLASSIC_UDP_PAYLOAD, Edns::max_payload);
        let mut buffer = Vec::with_capacity(usize::from(limit));
        let fits = {
            let mut encoder = BinEncoder::new(&mut buffer);
            encoder.set_max_size(limit);
            MessageResponseBuilder::new(&request.queries, edns)
                .build(metadata, answers.iter(), authority.iter(), std::iter::empty(), std::iter::empty())
                .destructive_emit(&mut encoder)
                .is_ok_and(|info| !info.truncation)
        };
        if !fits {
            metadata.truncation = true;
        }
    }
    let (answers, authority): (&[Record], &[Record]) = if metadata.truncation { (&[], &[]) } else { (answers, authority) };
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        answers.iter(),
        authority.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "cannot send a DNS response");
            ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
        }
    }
}

/// A running DNS server: UDP and TCP on one address.
pub struct DnsServer {
    server: hickory_server::Server<GeoHandler>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `settings.listen` (the same port for both: with port 0, the UDP port the
    /// system picks is then bound for TCP too) and starts answering.
    pub async fn start(zone: Arc<Zone>, view: watch::Receiver<ClusterView>, settings: &DnsSettings) -> std::io::Result<DnsServer> {
        let udp = std::net::UdpSocket::bind(settings.listen)?;
        let tcp = std::net::TcpListener::bind(udp.local_addr()?)?;
        DnsServer::start_on(zone, view, settings, udp, tcp)
    }

    /// Starts answering on sockets bound before (handed over by a supervisor or a test harness).
    pub fn start_on(
        zone: Arc<Zone>,
        view: watch::Receiver<ClusterView>,
        settings: &DnsSettings,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> std::io::Result<DnsServer> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let local_addr = udp.local_addr()?;
        let mut server = hickory_server::Server::new(GeoHandler::new(zone.clone(), view, settings.rate_limit, settings.slip));
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, usize::from(u16::MAX));
        info!(address = %local_addr, zone = %zone.apex(), "DNS server ready");
        Ok(DnsServer { server, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the listeners and waits for them.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            warn!(%error, "DNS server stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests;
