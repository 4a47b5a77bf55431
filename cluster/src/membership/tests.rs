//! Gossip among real UDP nodes on loopback, with a fast gossip interval.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use super::*;

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn node(name: &str, address: SocketAddr, seeds: &[SocketAddr]) -> Membership {
    Membership::join(MembershipConfig {
        node_name: name.into(),
        cluster_id: "test".into(),
        gossip_listen: address,
        gossip_advertise: address,
        seeds: seeds.iter().filter(|seed| **seed != address).map(ToString::to_string).collect(),
        gossip_interval: Duration::from_millis(100),
        advertised: vec![(keys::HTTP_URL.into(), format!("http://{name}"))],
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
