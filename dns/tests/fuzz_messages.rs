//! Property-based fuzzing of the DNS server (issue 14, "Fuzzing"), through the crate's public API:
//! - arbitrary datagrams sent to a running [`DnsServer`] over real UDP get a well-formed answer or
//!   none, and the server answers the next query (hickory's decoding and our handler together);
//! - every message hickory can decode, handed to the [`GeoHandler`] over UDP and TCP, gets exactly
//!   one well-formed answer: the query's id, opcode and question, QR set, RA never, an OPT exactly
//!   when the query had one, no UDP answer over the client's buffer, records only for the question;
//! - [`Zone::answer`] for any name, type, client and live set: REFUSED outside the zone, the SOA with
//!   NXDOMAIN and NODATA, and records only of the asked name and type, pointing at nodes that are
//!   live (or the fallback when none is).
//!
//! The queries are built byte by byte (header, question, an OPT with Client Subnet options of any
//! family, length and prefix) and then some bytes are changed. Case counts are bounded so the file
//! runs in a few seconds; proptest keeps shrunk failures in `fuzz_messages.proptest-regressions`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hfm_cluster::membership::{ClusterView, Member};
use hfm_dns::geo::{Location, Prefix};
use hfm_dns::server::{GeoHandler, MAX_UDP_PAYLOAD};
use hfm_dns::zone::Answer;
use hfm_dns::{DnsServer, DnsSettings, Zone, ZoneConfig, ZoneNode};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use proptest::prelude::*;
use tokio::sync::watch;

const NODES: [(&str, u8); 4] = [("fra1", 1), ("ams1", 2), ("waw1", 3), ("sto1", 4)];

fn zone_config() -> ZoneConfig {
    let node = |(name, last): (&str, u8)| ZoneNode {
        name: name.into(),
        ipv4: Some(Ipv4Addr::new(192, 0, 2, last)),
        ipv6: (last != 4).then(|| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last))),
        location: Location { latitude: 50.0 + f64::from(last), longitude: 5.0 * f64::from(last) },
        weight: u64::from(last),
    };
    let place = |prefix: &str, latitude: f64, longitude: f64| (Prefix::parse(prefix).unwrap(), Location { latitude, longitude });
    ZoneConfig {
        apex: "hf-mirror.eu".into(),
        ttl: 30,
        hostmaster: "hostmaster.hf-mirror.eu".into(),
        serial: 1_700_000_000,
        nodes: NODES.into_iter().map(node).collect(),
        rsync_label: "rsync".into(),
        rsync_answers: 1,
        http_labels: vec!["@".into(), "www".into()],
        fallback: vec!["fra1".into()],
        default_order: vec!["ams1".into(), "fra1".into()],
        prefixes: vec![place("10.1.0.0/16", 51.0, 5.0), place("10.4.0.0/16", 54.0, 20.0), place("2001:db8:4::/48", 54.0, 20.0)],
        geoip_database: None,
    }
}

/// A zone of 60 nodes, whose `www` answer (about 1 KB) does not fit 512 bytes.
fn big_zone_config() -> ZoneConfig {
    let mut config = zone_config();
    config.nodes = (0..60u8)
        .map(|index| ZoneNode {
            name: format!("n{index}"),
            ipv4: Some(Ipv4Addr::new(198, 51, 100, index)),
            ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(index))),
            location: Location { latitude: 50.0, longitude: f64::from(index) / 10.0 },
            weight: 1,
        })
        .collect();
    config.fallback.clear();
    config.default_order.clear();
    config
}

fn view_of(live: &[&str]) -> ClusterView {
    let members = live
        .iter()
        .map(|name| ((*name).to_owned(), Member { name: (*name).into(), generation: 1, ready: true, ..Member::default() }))
        .collect::<BTreeMap<_, _>>();
    ClusterView { members }
}

/// A server for the whole test binary, on its own thread and runtime, answering without a rate limit.
fn server_address() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async {
                let (_view, view_receiver) = watch::channel(view_of(&["fra1", "ams1", "waw1", "sto1"]));
                let zone = Arc::new(Zone::new(&zone_config()).unwrap());
                let settings = DnsSettings { listen: "127.0.0.1:0".parse().unwrap(), rate_limit: 0, slip: 2 };
                let server = DnsServer::start(zone, view_receiver, &settings).await.unwrap();
                sender.send(server.local_addr()).unwrap();
                // Serves until the test binary exits.
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().expect("the DNS server started")
    })
}

// ---- queries built byte by byte ----------------------------------------------------------------

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["www", "WWW", "rsync", "hf-mirror", "eu", "fra1", "sto1", "datasets-server", "*", "xn--", "hostmaster"])
            .prop_map(|label| label.as_bytes().to_vec()),
        2 => "[a-zA-Z0-9-]{0,20}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..70),
    ]
}

fn qname() -> impl Strategy<Value = Vec<u8>> {
    let in_zone = proptest::collection::vec(label(), 0..3).prop_map(|mut labels| {
        labels.push(b"hf-mirror".to_vec());
        labels.push(b"eu".to_vec());
        labels
    });
    let anywhere = proptest::collection::vec(label(), 0..5);
    (prop_oneof![4 => in_zone, 1 => anywhere], proptest::bool::weighted(0.9)).prop_map(|(labels, terminated)| {
        let mut wire = Vec::new();
        for label in labels {
            // A label of 64 bytes or more is a pointer or a reserved form: kept, as an attacker would.
            wire.push(label.len().min(255) as u8);
            wire.extend_from_slice(&label);
        }
        if terminated {
            wire.push(0);
        }
        wire
    })
}

fn record_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => prop::sample::select(vec![1u16, 28]),
        3 => prop::sample::select(vec![2u16, 6, 15, 16, 33, 41, 65, 250, 251, 252, 255]),
        1 => any::<u16>(),
    ]
}

/// An EDNS option: Client Subnet of any family, prefix lengths and address length, or anything.
fn edns_option() -> impl Strategy<Value = Vec<u8>> {
    let subnet = (
        prop_oneof![Just(1u16), Just(2u16), any::<u16>()],
        prop_oneof![Just(0u8), Just(24u8), Just(32u8), Just(56u8), Just(128u8), any::<u8>()],
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..18),
    )
        .prop_map(|(family, source, scope, address)| {
            let mut data = family.to_be_bytes().to_vec();
            data.push(source);
            data.push(scope);
            data.extend_from_slice(&address);
            (8u16, data)
        });
    let other = (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..20));
    (prop_oneof![subnet, other], prop_oneof![Just(0i32), -2i32..3]).prop_map(|((code, data), length_error)| {
        let mut wire = code.to_be_bytes().to_vec();
        let announced = (data.len() as i32 + length_error).clamp(0, 65535) as u16;
        wire.extend_from_slice(&announced.to_be_bytes());
        wire.extend_from_slice(&data);
        wire
    })
}

/// An OPT record: payload size, extended rcode, version, flags (DO) and options.
fn opt_record() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(512u16), Just(1232u16), Just(4096u16), any::<u16>()],
        prop_oneof![Just(0u8), any::<u8>()],
        prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        any::<u16>(),
        proptest::collection::vec(edns_option(), 0..3),
    )
        .prop_map(|(payload, extended_rcode, version, flags, options)| {
            let data: Vec<u8> = options.concat();
            let mut wire = vec![0u8]; // the root name
            wire.extend_from_slice(&41u16.to_be_bytes());
            wire.extend_from_slice(&payload.to_be_bytes());
            wire.push(extended_rcode);
            wire.push(version);
            wire.extend_from_slice(&flags.to_be_bytes());
            wire.extend_from_slice(&(data.len() as u16).to_be_bytes());
            wire.extend_from_slice(&data);
            wire
        })
}

/// A query as a resolver or an attacker would write it: header, question, maybe an OPT.
fn query_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        // Mostly a query (QR clear, opcode QUERY), sometimes any flags.
        prop_oneof![3 => any::<u16>().prop_map(|flags| flags & 0x0110), 1 => any::<u16>()],
        prop_oneof![8 => Just(1u16), 1 => 0u16..3],
        qname(),
        record_type(),
        prop_oneof![8 => Just(1u16), 1 => Just(3u16), 1 => Just(255u16), 1 => any::<u16>()],
        proptest::option::of(opt_record()),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(id, flags, question_count, name, qtype, qclass, opt, second_opt)| {
            let mut wire = id.to_be_bytes().to_vec();
            wire.extend_from_slice(&flags.to_be_bytes());
            let additional = u16::from(opt.is_some()) * if second_opt { 2 } else { 1 };
            for count in [question_count, 0, 0, additional] {
                wire.extend_from_slice(&count.to_be_bytes());
            }
            wire.extend_from_slice(&name);
            wire.extend_from_slice(&qtype.to_be_bytes());
            wire.extend_from_slice(&qclass.to_be_bytes());
            if let Some(opt) = opt {
                wire.extend_from_slice(&opt);
                if second_opt {
                    wire.extend_from_slice(&opt);
                }
            }
            wire
        })
}

/// Queries, queries with a few bytes changed or cut, and plain bytes.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let mutated =
        (query_bytes(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(|(mut bytes, flips)| {
            for (index, value) in flips {
                let position = index.index(bytes.len());
                bytes[position] = value;
            }
            bytes
        });
    let cut = (query_bytes(), any::<prop::sample::Index>()).prop_map(|(bytes, at)| bytes[..at.index(bytes.len() + 1)].to_vec());
    prop_oneof![4 => query_bytes(), 2 => mutated, 1 => cut, 1 => proptest::collection::vec(any::<u8>(), 0..600)]
}

// ---- what every answer must be -------------------------------------------------------------------

const ANSWERED_CODES: [u16; 7] = [0, 1, 3, 4, 5, 9, 16]; // NOERROR FORMERR NXDOMAIN NOTIMP REFUSED NOTAUTH BADVERS

/// Checks an answer to `request` (hickory decoded it), emitted over `protocol`.
fn check_answer(request: &Request, reply: &[u8], protocol: Protocol) -> Result<(), TestCaseError> {
    let answer = Message::from_vec(reply).map_err(|error| TestCaseError::fail(format!("an undecodable answer: {error}")))?;
    let metadata = &answer.metadata;
    prop_assert_eq!(metadata.message_type, MessageType::Response);
    prop_assert_eq!(metadata.id, request.metadata.id);
    prop_assert_eq!(metadata.op_code, request.metadata.op_code);
    prop_assert!(!metadata.recursion_available, "no recursion is offered");
    let code = u16::from(metadata.response_code);
    prop_assert!(ANSWERED_CODES.contains(&code), "response code {:?}", metadata.response_code);
    prop_assert_eq!(answer.edns.is_some(), request.edns.is_some(), "an OPT exactly when the query had one");
    if protocol == Protocol::Udp {
        let limit = request.edns.as_ref().map_or(512, |edns| edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        prop_assert!(reply.len() <= usize::from(limit), "{} bytes over UDP for a {} byte buffer", reply.len(), limit);
    }
    if metadata.truncation {
        prop_assert!(answer.answers.is_empty() && answer.authorities.is_empty(), "a truncated answer carries no records");
    }
    if metadata.authoritative {
        prop_assert!(matches!(metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain), "{:?}", metadata);
    }
    if !answer.answers.is_empty() {
        prop_assert_eq!(metadata.response_code, ResponseCode::NoError);
        let question = request.queries.queries().first().expect("records answer a question");
        for record in &answer.answers {
            prop_assert_eq!(LowerName::new(&record.name), question.name().clone());
            prop_assert_eq!(record.record_type(), question.query_type());
        }
    }
    Ok(())
}

/// A ResponseHandler that keeps what is sent.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buffer = Vec::new();
        let info = {
            let mut encoder = BinEncoder::new(&mut buffer);
            response.destructive_emit(&mut encoder)?
        };
        self.0.lock().unwrap().push(buffer);
        Ok(info)
    }
}

struct Handlers {
    /// The four-node zone, and the 60-node one (all live) whose answers need truncating over UDP.
    small: GeoHandler,
    big: GeoHandler,
    runtime: tokio::runtime::Runtime,
    _views: [watch::Sender<ClusterView>; 2],
}

fn handlers() -> &'static Handlers {
    static HANDLERS: OnceLock<Handlers> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        let (small_view, small_receiver) = watch::channel(view_of(&["fra1", "ams1", "waw1", "sto1"]));
        let big_names: Vec<String> = (0..60).map(|index| format!("n{index}")).collect();
        let (big_view, big_receiver) = watch::channel(view_of(&big_names.iter().map(String::as_str).collect::<Vec<_>>()));
        Handlers {
            small: GeoHandler::new(Arc::new(Zone::new(&zone_config()).unwrap()), small_receiver, 0, 2),
            big: GeoHandler::new(Arc::new(Zone::new(&big_zone_config()).unwrap()), big_receiver, 0, 2),
            runtime: tokio::runtime::Builder::new_current_thread().build().unwrap(),
            _views: [small_view, big_view],
        }
    })
}

/// Sends `bytes` to the running server from a fresh socket. A query hickory can decode must get
/// exactly one answer, checked; anything else gets a FORMERR or nothing. Then a known query must be
/// answered: the server is still up.
fn exchange(bytes: &[u8]) -> Result<(), TestCaseError> {
    const PROBE_ID: u16 = 0x5eed;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let server = server_address();
    let request = Request::from_bytes(bytes.to_vec(), socket.local_addr().unwrap(), Protocol::Udp).ok();
    let query = request.as_ref().filter(|request| request.metadata.message_type == MessageType::Query);
    let mut buffer = vec![0u8; 65535];
    let mut receive = |what: &str| -> Result<(Vec<u8>, Message), TestCaseError> {
        let length = socket.recv(&mut buffer).map_err(|error| TestCaseError::fail(format!("{what}: {error}")))?;
        let reply = buffer[..length].to_vec();
        prop_assert!(length <= usize::from(MAX_UDP_PAYLOAD));
        let decoded = Message::from_vec(&reply).map_err(|error| TestCaseError::fail(format!("an undecodable datagram: {error}")))?;
        Ok((reply, decoded))
    };
    socket.send_to(bytes, server).unwrap();
    if let Some(query) = query {
        let (reply, _) = receive("a decodable query got no answer")?;
        check_answer(query, &reply, Protocol::Udp)?;
    }
    let mut probe = Message::query();
    probe.metadata.id = PROBE_ID;
    probe.add_query(hickory_proto::op::Query::query(Name::from_ascii("probe.hf-mirror.eu.").unwrap(), RecordType::A));
    socket.send_to(&probe.to_vec().unwrap(), server).unwrap();
    let mut others = 0;
    loop {
        let (_, decoded) = receive("the server stopped answering")?;
        let is_probe = decoded.metadata.id == PROBE_ID
            && decoded.queries.first().is_some_and(|question| question.name().to_ascii() == "probe.hf-mirror.eu.");
        if is_probe && decoded.metadata.response_code == ResponseCode::NXDomain {
            return Ok(());
        }
        // What hickory cannot decode as a query it answers FORMERR (when the header is readable), once.
        others += 1;
        prop_assert!(query.is_none() && others == 1, "more answers than datagrams: {:?}", decoded);
        prop_assert_eq!(decoded.metadata.message_type, MessageType::Response);
        prop_assert_eq!(decoded.metadata.response_code, ResponseCode::FormErr);
        prop_assert_eq!(decoded.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]), "the answer carries the datagram's id");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn any_datagram_to_the_server_gets_a_well_formed_answer_or_none(bytes in datagram()) {
        exchange(&bytes)?;
    }

    #[test]
    fn every_decodable_query_gets_exactly_one_well_formed_answer(
        bytes in datagram(),
        tcp in any::<bool>(),
        big in any::<bool>(),
        source in any::<[u8; 4]>(),
    ) {
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let source = SocketAddr::from((Ipv4Addr::from(source), 5353));
        let Ok(request) = Request::from_bytes(bytes, source, protocol) else { return Ok(()) };
        let handlers = handlers();
        let handler = if big { &handlers.big } else { &handlers.small };
        let capture = Capture::default();
        handlers.runtime.block_on(handler.handle_request::<_, TokioTime>(&request, capture.clone()));
        let replies = capture.0.lock().unwrap().clone();
        prop_assert_eq!(replies.len(), 1, "one answer per query");
        check_answer(&request, &replies[0], protocol)?;
    }

    #[test]
    fn the_zone_answers_any_question_from_the_live_nodes(
        labels in proptest::collection::vec(prop_oneof![
            prop::sample::select(vec!["www", "rsync", "fra1", "sto1", "datasets-server", "hf-mirror", "eu", "x"]).prop_map(str::to_owned),
            "[a-z0-9-]{1,12}",
        ], 0..4),
        under_apex in any::<bool>(),
        record_type in record_type(),
        client in proptest::option::of(prop_oneof![
            any::<[u8; 4]>().prop_map(|octets| IpAddr::from(octets)),
            (any::<u8>(), any::<u8>()).prop_map(|(third, last)| IpAddr::from([10, 4, third, last])),
            any::<[u8; 16]>().prop_map(|octets| IpAddr::from(octets)),
        ]),
        live in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let zone = Zone::new(&zone_config()).unwrap();
        let mut text = labels.join(".");
        if under_apex {
            text = if text.is_empty() { "hf-mirror.eu.".to_owned() } else { format!("{text}.hf-mirror.eu.") };
        } else {
            text.push('.');
        }
        let Ok(name) = Name::from_ascii(&text) else { return Ok(()) };
        let name = LowerName::from(name);
        let live_names: Vec<&str> = NODES.iter().zip(&live).filter(|(_, live)| **live).map(|((name, _), _)| *name).collect();
        let is_live = |node: &str| live_names.contains(&node);
        let record_type = RecordType::from(record_type);
        match zone.answer(&name, record_type, client, &is_live) {
            Answer::Refused => prop_assert!(!zone.contains(&name)),
            Answer::NxDomain { soa } | Answer::NoData { soa } => {
                prop_assert!(zone.contains(&name));
                prop_assert_eq!(&soa, zone.soa());
            }
            Answer::Records { records, scope } => {
                prop_assert!(zone.contains(&name) && !records.is_empty());
                prop_assert!(scope <= 128);
                let first_label = labels.first().map(String::as_str);
                prop_assert!(first_label != Some("datasets-server"), "datasets-server must be NXDOMAIN: {}", text);
                let answerable: Vec<&str> = if live_names.is_empty() { vec!["fra1"] } else { live_names.clone() };
                for record in &records {
                    prop_assert_eq!(LowerName::new(&record.name), name.clone());
                    prop_assert_eq!(record.record_type(), record_type);
                    let node = match &record.data {
                        RData::A(address) => NODES.iter().find(|(_, last)| address.0 == Ipv4Addr::new(192, 0, 2, *last)),
                        RData::AAAA(address) => NODES.iter().find(|(_, last)| address.0 == Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(*last))),
                        _ => continue,
                    };
                    let (node, _) = node.expect("an address of a node");
                    // A node's own name answers it whatever its health; the shared names only live nodes.
                    let own_name = labels.len() == 1 && labels[0] == *node;
                    prop_assert!(own_name || answerable.contains(node), "{} answered {} (live {:?})", text, node, live_names);
                }
            }
        }
    }
}

/// The server still answers a plain query after the fuzzing above (whatever order the tests ran in).
#[test]
fn a_plain_query_is_answered() {
    let mut query = Message::query();
    query.add_query(hickory_proto::op::Query::query(Name::from_ascii("www.hf-mirror.eu.").unwrap(), RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(&query.to_vec().unwrap(), server_address()).unwrap();
    let mut buffer = vec![0u8; 2048];
    let length = socket.recv(&mut buffer).unwrap();
    let answer = Message::from_vec(&buffer[..length]).unwrap();
    assert_eq!(answer.answers.len(), 4);
}
