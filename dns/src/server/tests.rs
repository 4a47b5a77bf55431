//! The DNS server over real sockets: a hand-built hickory-proto client and Debian's `dig` (installed
//! by the test command), the conformance list one test each, hostile packets, and a bounded fuzz run
//! of the query path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hfm_cluster::membership::{ClusterView, Member};
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigError, make_tsig_record};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::*;
use crate::geo::{Location, Prefix};
use crate::zone::tests::test_config;
use crate::zone::{ZoneConfig, ZoneNode};

fn view_of(live: &[&str]) -> ClusterView {
    let members = live
        .iter()
        .map(|name| {
            let member = Member { name: (*name).into(), generation: 1, ready: true, ..Member::default() };
            ((*name).to_owned(), member)
        })
        .collect::<BTreeMap<_, _>>();
    ClusterView { members }
}

struct Running {
    server: Option<DnsServer>,
    address: SocketAddr,
    view: watch::Sender<ClusterView>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            drop(server);
        }
    }
}

async fn start(config: ZoneConfig, rate_limit: u32) -> Running {
    let names: Vec<&str> = config.nodes.iter().map(|node| node.name.as_str()).collect();
    let (view, receiver) = watch::channel(view_of(&names));
    let zone = Arc::new(Zone::new(&config).unwrap());
    let settings = DnsSettings { listen: "127.0.0.1:0".parse().unwrap(), rate_limit, slip: 2 };
    let server = DnsServer::start(zone, receiver, &settings).await.unwrap();
    let address = server.local_addr();
    Running { server: Some(server), address, view }
}

/// A configuration whose prefix table places loopback sources: 127.0.0.2 in Stockholm.
fn loopback_config() -> ZoneConfig {
    let mut config = test_config();
    config.prefixes.push((Prefix::parse("127.0.0.2/32").unwrap(), Location { latitude: 59.3, longitude: 18.1 }));
    config.prefixes.push((Prefix::parse("127.0.0.3/32").unwrap(), Location { latitude: 52.2, longitude: 21.0 }));
    config
}

fn query(name: &str, record_type: RecordType, subnet: Option<(&str, u8)>) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    if let Some((address, prefix)) = subnet {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(address.parse().unwrap(), prefix, 0)));
        message.set_edns(edns);
    }
    message
}

async fn exchange_from(source: &str, server: SocketAddr, wire: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((source.parse::<IpAddr>().unwrap(), 0)).await.unwrap();
    socket.send_to(wire, server).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_millis(700), socket.recv_from(&mut buffer)).await {
        Ok(Ok((length, _))) => Some(buffer[..length].to_vec()),
        _ => None,
    }
}

async fn ask(server: SocketAddr, message: &Message) -> Message {
    let reply = exchange_from("127.0.0.1", server, &message.to_vec().unwrap()).await.expect("an answer");
    Message::from_vec(&reply).unwrap()
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Runs `dig` against the server (asynchronously: the server runs on this test's runtime).
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = tokio::process::Command::new("dig")
        .args([format!("@{}", server.ip()), "-p".into(), server.port().to_string(), "+tries=1".into(), "+time=2".into()])
        .args(args)
        .output()
        .await
        .expect("dig is missing: the test command installs it (apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn ecs_subnets_get_their_nearest_node_and_the_scope_is_echoed() {
    let running = start(loopback_config(), 0).await;
    for (subnet, expected) in
        [("10.1.2.0", [192, 0, 2, 1]), ("10.2.2.0", [192, 0, 2, 2]), ("10.3.2.0", [192, 0, 2, 3]), ("10.4.2.0", [192, 0, 2, 4])]
    {
        let reply = ask(running.address, &query("rsync.hf-mirror.eu.", RecordType::A, Some((subnet, 24)))).await;
        assert_eq!(a_records(&reply), [Ipv4Addr::from(expected)], "{subnet}");
        match reply.edns.as_ref().and_then(|edns| edns.option(EdnsCode::Subnet)) {
            Some(EdnsOption::Subnet(echoed)) => {
                assert_eq!((echoed.addr(), echoed.source_prefix(), echoed.scope_prefix()), (subnet.parse().unwrap(), 24, 16));
            }
            other => panic!("no ECS echoed: {other:?}"),
        }
        // The same with dig.
        let text = dig(running.address, &["+short", &format!("+subnet={subnet}/24"), "rsync.hf-mirror.eu", "A"]).await;
        assert_eq!(text.trim(), Ipv4Addr::from(expected).to_string(), "dig {subnet}");
    }
}

#[tokio::test]
async fn without_ecs_the_source_address_decides() {
    let running = start(loopback_config(), 0).await;
    let wire = query("rsync.hf-mirror.eu.", RecordType::A, None).to_vec().unwrap();
    let from_stockholm = Message::from_vec(&exchange_from("127.0.0.2", running.address, &wire).await.unwrap()).unwrap();
    assert_eq!(a_records(&from_stockholm), [Ipv4Addr::new(192, 0, 2, 4)]);
    let text = dig(running.address, &["+short", "-b", "127.0.0.3", "rsync.hf-mirror.eu", "A"]).await;
    assert_eq!(text.trim(), "192.0.2.3", "a Warsaw resolver gets Warsaw");
    // An unknown resolver gets the default order's first live node.
    let text = dig(running.address, &["+short", "rsync.hf-mirror.eu", "A"]).await;
    assert_eq!(text.trim(), "192.0.2.2");
}

#[tokio::test]
async fn answers_are_authoritative_without_recursion() {
    let running = start(test_config(), 0).await;
    let mut message = query("fra1.hf-mirror.eu.", RecordType::A, None);
    message.metadata.recursion_desired = true;
    let reply = ask(running.address, &message).await;
    assert!(reply.metadata.authoritative && !reply.metadata.recursion_available);
    assert_eq!(a_records(&reply), [Ipv4Addr::new(192, 0, 2, 1)]);
    let text = dig(running.address, &["+recurse", "fra1.hf-mirror.eu", "A"]).await;
    assert!(text.contains("flags: qr aa rd;"), "{text}");
}

#[tokio::test]
async fn names_outside_the_zone_are_refused() {
    let running = start(test_config(), 0).await;
    let reply = ask(running.address, &query("huggingface.co.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty() && !reply.metadata.authoritative);
    assert!(dig(running.address, &["example.org", "A"]).await.contains("status: REFUSED"));
}

#[tokio::test]
async fn unknown_names_are_nxdomain_with_the_soa() {
    let running = start(test_config(), 0).await;
    let reply = ask(running.address, &query("nope.hf-mirror.eu.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative);
    assert!(matches!(reply.authorities.first().map(|record| &record.data), Some(RData::SOA(_))));
    let text = dig(running.address, &["nope.hf-mirror.eu", "A"]).await;
    assert!(text.contains("status: NXDOMAIN") && text.contains("SOA"), "{text}");
}

#[tokio::test]
async fn a_known_name_without_that_type_is_nodata_with_the_soa() {
    let running = start(test_config(), 0).await;
    let reply = ask(running.address, &query("www.hf-mirror.eu.", RecordType::MX, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(matches!(reply.authorities.first().map(|record| &record.data), Some(RData::SOA(_))));
    let text = dig(running.address, &["sto1.hf-mirror.eu", "AAAA"]).await;
    assert!(text.contains("status: NOERROR") && text.contains("ANSWER: 0") && text.contains("SOA"), "{text}");
}

#[tokio::test]
async fn unknown_opcodes_are_notimp_without_echoed_flags() {
    let running = start(test_config(), 0).await;
    let mut message = query("www.hf-mirror.eu.", RecordType::A, None);
    message.metadata.op_code = OpCode::Status;
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = true;
    let reply = ask(running.address, &message).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    assert!(!reply.metadata.recursion_desired && !reply.metadata.checking_disabled, "{:?}", reply.metadata);
    let text = dig(running.address, &["+opcode=notify", "+recurse", "+cdflag", "www.hf-mirror.eu", "SOA"]).await;
    assert!(text.contains("status: NOTIMP") && text.contains("flags: qr;"), "{text}");
}

#[tokio::test]
async fn a_query_signed_with_an_unknown_tsig_key_gets_notauth_badkey() {
    let running = start(test_config(), 0).await;
    let mut message = query("www.hf-mirror.eu.", RecordType::A, None);
    let tsig = TSIG::new(
        hickory_proto::rr::rdata::tsig::TsigAlgorithm::HmacSha256,
        1_800_000_000,
        300,
        vec![7; 32],
        message.metadata.id,
        None,
        Vec::new(),
    );
    message.additionals.push(make_tsig_record(Name::from_ascii("unknown.key.").unwrap(), tsig).into_record_of_rdata());
    let reply = ask(running.address, &message).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotAuth);
    assert!(reply.answers.is_empty(), "nothing is answered as if the signature were good");
    let signed = reply.signature.as_ref().map(|record| record.data.error);
    let error = signed.or_else(|| {
        reply.additionals.iter().find_map(|record| match &record.data {
            RData::TSIG(tsig) => Some(tsig.error),
            _ => None,
        })
    });
    assert_eq!(error, Some(Some(TsigError::BadKey)), "{reply:?}");
    let text =
        dig(running.address, &["-y", "hmac-sha256:unknown.key:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=", "www.hf-mirror.eu", "A"])
            .await;
    assert!(text.contains("NOTAUTH") || text.contains("BADKEY"), "{text}");
}

#[tokio::test]
async fn the_do_bit_is_echoed() {
    let running = start(test_config(), 0).await;
    let mut message = query("www.hf-mirror.eu.", RecordType::A, None);
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    message.edns = Some(edns);
    let reply = ask(running.address, &message).await;
    assert!(reply.edns.as_ref().is_some_and(|edns| edns.flags().dnssec_ok), "{reply:?}");
    let text = dig(running.address, &["+dnssec", "www.hf-mirror.eu", "A"]).await;
    assert!(text.contains("flags: do;"), "{text}");
}

#[tokio::test]
async fn edns_versions_above_zero_are_badvers() {
    let running = start(test_config(), 0).await;
    let mut message = query("www.hf-mirror.eu.", RecordType::A, None);
    let mut edns = Edns::new();
    edns.set_version(1);
    message.set_edns(edns);
    let reply = ask(running.address, &message).await;
    // Extended RCODE 16 is BADVERS in an OPT context (the decoder names the shared code BADSIG).
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(reply.edns.is_some(), "BADVERS travels in an OPT");
    assert!(dig(running.address, &["+edns=1", "+noednsnegotiation", "www.hf-mirror.eu", "A"]).await.contains("BADVERS"));
}

/// A zone with 60 nodes, so that `www` answers more than 512 bytes.
fn big_config() -> ZoneConfig {
    let mut config = test_config();
    config.nodes = (0..60u8)
        .map(|index| ZoneNode {
            name: format!("n{index}"),
            ipv4: Some(Ipv4Addr::new(198, 51, 100, index)),
            ipv6: None,
            location: Location { latitude: 50.0, longitude: f64::from(index) / 10.0 },
            weight: 1,
        })
        .collect();
    config.fallback.clear();
    config.default_order.clear();
    config
}

#[tokio::test]
async fn udp_answers_too_big_for_the_client_are_truncated_and_complete_over_tcp() {
    let running = start(big_config(), 0).await;
    // No EDNS: 512 bytes at most, so a bare TC=1 answer.
    let reply = ask(running.address, &query("www.hf-mirror.eu.", RecordType::A, None)).await;
    assert!(reply.metadata.truncation && reply.answers.is_empty());
    // EDNS with a 1232-byte buffer: 60 A records (~1 KB) fit.
    let reply = ask(running.address, &query("www.hf-mirror.eu.", RecordType::A, Some(("10.9.0.0", 24)))).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(a_records(&reply).len(), 60);
    // dig: over UDP without EDNS it sees TC; dig retries over TCP by itself and gets all 60.
    let udp = dig(running.address, &["+noedns", "+notcp", "+ignore", "www.hf-mirror.eu", "A"]).await;
    assert!(udp.contains(" tc"), "{udp}");
    let tcp = dig(running.address, &["+tcp", "+short", "www.hf-mirror.eu", "A"]).await;
    assert_eq!(tcp.lines().count(), 60, "{tcp}");
}

#[tokio::test]
async fn a_flood_from_one_client_is_rate_limited_over_udp_but_not_tcp() {
    let running = start(test_config(), 5).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let wire = query("www.hf-mirror.eu.", RecordType::A, None).to_vec().unwrap();
    for _ in 0..40 {
        socket.send_to(&wire, running.address).await.unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buffer = vec![0u8; 4096];
    while let Ok(Ok((length, _))) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer)).await {
        let reply = Message::from_vec(&buffer[..length]).unwrap();
        if reply.metadata.truncation { truncated += 1 } else { full += 1 }
    }
    assert!(full <= 6, "{full} full answers to a 40-query burst with a limit of 5/s");
    assert!(truncated > 0, "some limited answers slip out truncated, so real resolvers retry over TCP");
    // TCP is never limited.
    let text = dig(running.address, &["+tcp", "+short", "www.hf-mirror.eu", "A"]).await;
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[tokio::test]
async fn dead_and_draining_nodes_leave_the_answers_and_the_fallback_remains() {
    let running = start(loopback_config(), 0).await;
    running.view.send_replace(view_of(&["fra1", "ams1", "waw1"]));
    let reply = ask(running.address, &query("rsync.hf-mirror.eu.", RecordType::A, Some(("10.4.0.0", 24)))).await;
    assert_eq!(a_records(&reply), [Ipv4Addr::new(192, 0, 2, 3)], "Stockholm's clients go to Warsaw while sto1 is dead");
    let mut draining = view_of(&["fra1", "ams1", "waw1", "sto1"]);
    draining.members.get_mut("waw1").unwrap().draining = true;
    running.view.send_replace(draining);
    let reply = ask(running.address, &query("www.hf-mirror.eu.", RecordType::A, None)).await;
    assert!(!a_records(&reply).contains(&Ipv4Addr::new(192, 0, 2, 3)), "a draining node is not answered");
    running.view.send_replace(view_of(&[]));
    let reply = ask(running.address, &query("rsync.hf-mirror.eu.", RecordType::A, None)).await;
    assert_eq!(a_records(&reply), [Ipv4Addr::new(192, 0, 2, 1)], "with every node down, the fallback");
}

#[tokio::test]
async fn hostile_packets_get_formerr_or_silence_and_the_server_keeps_answering() {
    let running = start(test_config(), 0).await;
    let valid = query("www.hf-mirror.eu.", RecordType::A, None).to_vec().unwrap();
    let mut compression_loop = valid[..12].to_vec();
    compression_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // a name pointing at itself
    let mut huge_counts = valid.clone();
    huge_counts[4..12].copy_from_slice(&[0xff; 8]);
    let mut two_questions = valid.clone();
    two_questions[5] = 2;
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short header", vec![0x12, 0x34, 0, 0, 0]),
        ("truncated question", valid[..valid.len() - 3].to_vec()),
        ("compression loop", compression_loop),
        ("huge counts", huge_counts),
        ("two questions, one present", two_questions),
        ("garbage", (0..300u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("a response", {
            let mut response = valid.clone();
            response[2] |= 0x80;
            response
        }),
    ];
    for (what, packet) in hostile {
        if let Some(reply) = exchange_from("127.0.0.1", running.address, &packet).await {
            let parsed = Message::from_vec(&reply).unwrap_or_else(|error| panic!("{what}: an undecodable reply: {error}"));
            assert!(matches!(parsed.metadata.response_code, ResponseCode::FormErr | ResponseCode::NotImp), "{what}: {parsed:?}");
        }
    }
    let reply = ask(running.address, &query("www.hf-mirror.eu.", RecordType::A, None)).await;
    assert_eq!(a_records(&reply).len(), 4, "still answering");
}

/// The query path without sockets: decoding and answering arbitrary bytes must never panic.
mod fuzz {
    use std::sync::Mutex as StdMutex;

    use hickory_proto::rr::Record;
    use hickory_server::net::NetError;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::zone_handler::MessageResponse;
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<StdMutex<Vec<Vec<u8>>>>);

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

    fn handle(handler: &GeoHandler, runtime: &tokio::runtime::Runtime, bytes: Vec<u8>, protocol: Protocol) {
        let Ok(request) = Request::from_bytes(bytes, "192.0.2.77:5353".parse().unwrap(), protocol) else { return };
        let capture = Capture::default();
        runtime.block_on(handler.handle_request::<_, TokioTime>(&request, capture.clone()));
        for reply in capture.0.lock().unwrap().iter() {
            assert!(Message::from_vec(reply).is_ok(), "the server emitted an undecodable reply");
            if protocol == Protocol::Udp {
                assert!(reply.len() <= usize::from(MAX_UDP_PAYLOAD), "a UDP reply over 1232 bytes");
            }
        }
    }

    fn handler() -> GeoHandler {
        let (_, view) = watch::channel(view_of(&["fra1", "ams1", "waw1", "sto1"]));
        GeoHandler::new(Arc::new(Zone::new(&big_config()).unwrap()), view, 0, 2)
    }

    proptest! {
        // Bounded: a few thousand cases in a few seconds, every run of the test command.
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), tcp in any::<bool>()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            handle(&handler(), &runtime, bytes, if tcp { Protocol::Tcp } else { Protocol::Udp });
        }

        #[test]
        fn mutated_queries_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), subnet in any::<bool>()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let message = query("rsync.hf-mirror.eu.", RecordType::A, subnet.then_some(("10.4.2.0", 24)));
            let mut bytes = message.to_vec().unwrap();
            for (index, value) in flips {
                let position = index.index(bytes.len());
                bytes[position] = value;
            }
            handle(&handler(), &runtime, bytes, Protocol::Udp);
        }
    }
}
