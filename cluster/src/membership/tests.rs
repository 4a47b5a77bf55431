//! Gossip among real UDP nodes on loopback, with a fast gossip interval.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use super::*;

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn node(name: &str, address: SocketAddr, seeds: &[SocketAddr]) -> Membership {
    node_with_key(name, address, seeds, Some(b"a test cluster's gossip key, 32+ bytes".to_vec())).await
}

async fn node_with_key(name: &str, address: SocketAddr, seeds: &[SocketAddr], gossip_key: Option<Vec<u8>>) -> Membership {
    Membership::join(MembershipConfig {
        node_name: name.into(),
        cluster_id: "test".into(),
        gossip_listen: address,
        gossip_advertise: address,
        seeds: seeds.iter().filter(|seed| **seed != address).map(ToString::to_string).collect(),
        gossip_interval: Duration::from_millis(100),
        advertised: vec![(keys::HTTP_URL.into(), format!("http://{name}"))],
        gossip_key,
    })
    .await
    .unwrap()
}

async fn wait_for(membership: &Membership, what: &str, predicate: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let mut view = membership.view();
    let waited = tokio::time::timeout(Duration::from_secs(60), view.wait_for(|current| predicate(current))).await;
    match waited {
        Ok(Ok(view)) => view.clone(),
        _ => panic!("timed out waiting for {what}; view: {:?}", membership.view().borrow()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_publish_state_and_notice_failures() {
    let addresses = [free_udp(), free_udp(), free_udp()];
    let a = node("a", addresses[0], &addresses).await;
    let b = node("b", addresses[1], &addresses).await;
    let c = node("c", addresses[2], &addresses).await;
    let view = wait_for(&a, "three members", |view| view.members.len() == 3).await;
    assert_eq!(view.members["b"].http_url.as_deref(), Some("http://b"));
    assert!(!view.is_serving("b"), "a node is not ready until it says so");

    b.set_ready(true).await;
    c.set_ready(true).await;
    wait_for(&a, "b and c ready", |view| view.is_serving("b") && view.is_serving("c")).await;
    c.set_draining(true).await;
    wait_for(&a, "c draining", |view| view.members.get("c").is_some_and(|member| member.draining) && !view.is_serving("c")).await;

    // A graceful leave is seen as not ready before the node goes.
    c.leave().await;
    wait_for(&a, "c not serving", |view| !view.is_serving("c")).await;

    // A node that stops without leaving is declared dead by the failure detector.
    let old_generation = a.view().borrow().members["b"].generation;
    drop(b);
    wait_for(&a, "b gone", |view| !view.members.contains_key("b")).await;

    // A restarted node comes back under a new generation.
    let b = node("b", addresses[1], &addresses).await;
    b.set_ready(true).await;
    let view = wait_for(&a, "b back", |view| view.is_serving("b")).await;
    assert!(view.members["b"].generation > old_generation);
    b.leave().await;
    a.leave().await;
}

#[test]
fn the_view_keeps_the_newest_generation_of_a_name() {
    let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut live = BTreeMap::new();
    let mut old = NodeState::for_test();
    old.set(keys::READY, "false");
    let mut new = NodeState::for_test();
    new.set(keys::READY, "true");
    live.insert(ChitchatId::new("a".to_owned(), 1, address), old);
    live.insert(ChitchatId::new("a".to_owned(), 2, address), new);
    let view = view_of(&live);
    assert_eq!(view.members.len(), 1);
    assert_eq!(view.members["a"].generation, 2);
    assert!(view.is_serving("a"));
}

// ------------------------------------------------------------------------------------------------
// Forged gossip. chitchat's wire format (little-endian): envelope `53 B0 | version | type` (0 Syn,
// 1 SynAck, 2 Ack); an Ack is a delta of blocks (`2 | u16 len | ops`, then `0`); a Syn is a digest
// (`u16 n`, then per node: id, heartbeat, last gc version, max version) and the cluster id. Built by
// hand: chitchat keeps its codec private.

fn put_str(buffer: &mut Vec<u8>, text: &str) {
    buffer.extend_from_slice(&(text.len() as u16).to_le_bytes());
    buffer.extend_from_slice(text.as_bytes());
}

fn put_id(buffer: &mut Vec<u8>, node: &str, generation: u64, address: SocketAddr) {
    put_str(buffer, node);
    buffer.extend_from_slice(&generation.to_le_bytes());
    match address.ip() {
        std::net::IpAddr::V4(ip) => {
            buffer.push(4);
            buffer.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            buffer.push(6);
            buffer.extend_from_slice(&ip.octets());
        }
    }
    buffer.extend_from_slice(&address.port().to_le_bytes());
}

/// An unsolicited Ack that sets `key = value` at `version` on node (`node`, `generation`).
fn forged_ack(node: &str, generation: u64, address: SocketAddr, key: &str, value: &str, version: u64) -> Vec<u8> {
    let mut ops = vec![0u8];
    put_id(&mut ops, node, generation, address);
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.push(1);
    put_str(&mut ops, key);
    put_str(&mut ops, value);
    ops.extend_from_slice(&version.to_le_bytes());
    ops.push(0);
    let mut datagram = vec![0x53, 0xB0, 0, 2, 2];
    datagram.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    datagram.extend_from_slice(&ops);
    datagram.push(0);
    datagram
}

/// A Syn whose digest announces a node nobody has seen.
fn forged_syn(cluster_id: &str, intruder: &str, address: SocketAddr) -> Vec<u8> {
    let mut datagram = vec![0x53, 0xB0, 0, 0];
    datagram.extend_from_slice(&1u16.to_le_bytes());
    put_id(&mut datagram, intruder, 1, address);
    for value in [10u64, 0, 5] {
        datagram.extend_from_slice(&value.to_le_bytes());
    }
    put_str(&mut datagram, cluster_id);
    datagram
}

async fn serving_pair(key: Option<Vec<u8>>) -> (Membership, Membership, [SocketAddr; 2]) {
    let addresses = [free_udp(), free_udp()];
    let a = node_with_key("a", addresses[0], &addresses, key.clone()).await;
    let b = node_with_key("b", addresses[1], &addresses, key).await;
    b.set_ready(true).await;
    wait_for(&a, "b serving", |view| view.is_serving("b")).await;
    (a, b, addresses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_one_forged_datagram_takes_a_node_out() {
    // What the key is for: chitchat alone applies an Ack from anyone.
    let (a, b, addresses) = serving_pair(None).await;
    let generation = a.view().borrow().members["b"].generation;
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.send_to(&forged_ack("b", generation, addresses[1], keys::READY, "false", 1_000_000), addresses[0]).unwrap();
    wait_for(&a, "the forgery to take b out", |view| !view.is_serving("b")).await;
    b.leave().await;
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_key_forged_altered_and_foreign_datagrams_change_nothing() {
    let (a, b, addresses) = serving_pair(Some(b"a test cluster's gossip key, 32+ bytes".to_vec())).await;
    let generation = a.view().borrow().members["b"].generation;
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let draining = forged_ack("b", generation, addresses[1], keys::DRAINING, "true", 1_000_000);
    let newer = forged_ack("b", u64::MAX, addresses[1], keys::READY, "false", 1);
    let intruder = forged_syn("test", "intruder", attacker.local_addr().unwrap());
    // Sealed with another cluster's key: a valid-looking datagram that must not open.
    let foreign_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another cluster's key, also 32+ bytes");
    let mut foreign = b"hfg1".to_vec();
    foreign.extend_from_slice(&[0u8; 24]);
    foreign.extend_from_slice(&draining);
    let tag = ring::hmac::sign(&foreign_key, &foreign);
    foreign.extend_from_slice(tag.as_ref());
    for round in 0..20 {
        for datagram in [&draining, &newer, &intruder, &foreign] {
            attacker.send_to(datagram, addresses[0]).unwrap();
        }
        if round == 0 {
            let mut reply = [0u8; 2048];
            attacker.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            assert!(attacker.recv(&mut reply).is_err(), "a forged Syn must get no reply (no leak, no amplification)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = a.view().borrow().clone();
    assert!(view.is_serving("b"), "b must still serve: {view:?}");
    assert_eq!(view.members["b"].generation, generation, "no forged generation");
    assert!(!view.members.contains_key("intruder"), "no forged member");
    assert!(a.rejections().forged.load(std::sync::atomic::Ordering::Relaxed) >= 80);
    b.leave().await;
    a.leave().await;
}
