//! Placement: which nodes hold a blob, and which one fetches it from upstream.
//!
//! Weighted rendezvous (highest-random-weight) hashing, as in Uber's Kraken: every node gets a score
//! for a key, `-weight / ln(u)` where `u` in (0, 1) comes from `xxh3_64(node ‖ 0x00 ‖ key)`; the
//! nodes sorted by score are the key's preference list. The first R are its replicas; the first live
//! one is its fill leader. Removing a node moves only the keys it held; adding a node moves only the
//! keys it now wins, about `weight / total weight` of them. xxh3 is a specified hash, so every build
//! of every node computes the same list.
//!
//! Pure and deterministic: no I/O, no clock, no randomness.

use xxhash_rust::xxh3::xxh3_64;

/// A node as placement sees it: a name and a weight (its storage, in any unit).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedNode {
    pub name: String,
    pub weight: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlacementError {
    #[error("placement needs at least one node")]
    NoNodes,
    #[error("node {0:?} has a weight that is not a positive finite number")]
    BadWeight(String),
    #[error("node {0:?} appears twice")]
    DuplicateNode(String),
}

/// The placement of keys over a fixed set of weighted nodes.
#[derive(Clone, Debug)]
pub struct Placement {
    nodes: Vec<WeightedNode>,
}

impl Placement {
    pub fn new(nodes: Vec<WeightedNode>) -> Result<Placement, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        let mut names = std::collections::HashSet::new();
        for node in &nodes {
            if !(node.weight.is_finite() && node.weight > 0.0) {
                return Err(PlacementError::BadWeight(node.name.clone()));
            }
            if !names.insert(node.name.as_str()) {
                return Err(PlacementError::DuplicateNode(node.name.clone()));
            }
        }
        Ok(Placement { nodes })
    }

    pub fn nodes(&self) -> &[WeightedNode] {
        &self.nodes
    }

    /// The score of a node for a key; higher wins.
    fn score(node: &WeightedNode, key: &str) -> f64 {
        let mut input = Vec::with_capacity(node.name.len() + 1 + key.len());
        input.extend_from_slice(node.name.as_bytes());
        input.push(0);
        input.extend_from_slice(key.as_bytes());
        let hash = xxh3_64(&input);
        // The top 53 bits as a fraction strictly inside (0, 1), so ln(u) is finite and negative.
        let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -node.weight / unit.ln()
    }

    /// Every node, best first, for this key. Never empty.
    pub fn preference_list(&self, key: &str) -> Vec<&str> {
        let mut scored: Vec<(f64, &str)> = self.nodes.iter().map(|node| (Self::score(node, key), node.name.as_str())).collect();
        // Ties (practically impossible) break by name so every node agrees.
        scored.sort_by(|left, right| right.0.total_cmp(&left.0).then_with(|| left.1.cmp(right.1)));
        scored.into_iter().map(|(_, name)| name).collect()
    }

    /// The first `count` nodes of the preference list (at least one).
    pub fn replicas(&self, key: &str, count: usize) -> Vec<&str> {
        let mut list = self.preference_list(key);
        list.truncate(count.max(1));
        list
    }

    /// The node that fetches the key from upstream: the first live one of the preference list, or
    /// the first of all when none is live (the answer is never empty).
    pub fn fill_leader(&self, key: &str, is_live: impl Fn(&str) -> bool) -> &str {
        let list = self.preference_list(key);
        list.iter().copied().find(|name| is_live(name)).unwrap_or(list[0])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn topology() -> Vec<WeightedNode> {
        // The four peers, weighted by storage in TB.
        [("fra1", 1800.0), ("ams1", 600.0), ("waw1", 400.0), ("sto1", 400.0)]
            .into_iter()
            .map(|(name, weight)| WeightedNode { name: name.into(), weight })
            .collect()
    }

    fn keys(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("{:064x}", (index as u128).wrapping_mul(0x9e3779b97f4a7c15))).collect()
    }

    #[test]
    fn lists_are_deterministic_complete_and_never_empty() {
        let placement = Placement::new(topology()).unwrap();
        let list = placement.preference_list("abc");
        assert_eq!(list, placement.preference_list("abc"));
        let mut sorted = list.clone();
        sorted.sort();
        assert_eq!(sorted, ["ams1", "fra1", "sto1", "waw1"]);
        assert_eq!(placement.replicas("abc", 2), list[..2]);
        assert_eq!(placement.replicas("abc", 0).len(), 1);
        assert_eq!(placement.fill_leader("abc", |_| false), list[0], "no live node still gives an answer");
        assert_eq!(placement.fill_leader("abc", |name| name != list[0]), list[1]);
    }

    #[test]
    fn first_choices_follow_the_weights() {
        let placement = Placement::new(topology()).unwrap();
        let total = 3200.0;
        let mut wins: HashMap<&str, usize> = HashMap::new();
        let sample = keys(100_000);
        for key in &sample {
            *wins.entry(placement.preference_list(key)[0]).or_default() += 1;
        }
        for node in topology() {
            let share = wins[node.name.as_str()] as f64 / sample.len() as f64;
            let expected = node.weight / total;
            assert!((share - expected).abs() < 0.01, "{}: share {share:.4}, expected {expected:.4}", node.name);
        }
    }

    #[test]
    fn adding_a_node_moves_only_the_keys_it_wins() {
        let before = Placement::new(topology()).unwrap();
        let mut grown = topology();
        grown.push(WeightedNode { name: "lhr1".into(), weight: 800.0 });
        let after = Placement::new(grown).unwrap();
        let sample = keys(50_000);
        let mut moved = 0;
        for key in &sample {
            let (old, new) = (before.preference_list(key)[0], after.preference_list(key)[0]);
            if old != new {
                assert_eq!(new, "lhr1", "a key may only move to the new node");
                moved += 1;
            }
        }
        let share = moved as f64 / sample.len() as f64;
        let expected = 800.0 / 4000.0;
        assert!((share - expected).abs() < 0.01, "moved {share:.4}, expected about {expected:.4}");
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let before = Placement::new(topology()).unwrap();
        let after = Placement::new(topology().into_iter().filter(|node| node.name != "waw1").collect()).unwrap();
        for key in keys(20_000) {
            let old = before.preference_list(&key);
            let new = after.preference_list(&key);
            let without: Vec<&str> = old.iter().copied().filter(|name| *name != "waw1").collect();
            assert_eq!(new, without, "the other nodes keep their relative order");
        }
    }

    #[test]
    fn bad_topologies_are_refused() {
        assert_eq!(Placement::new(vec![]).unwrap_err(), PlacementError::NoNodes);
        let zero = vec![WeightedNode { name: "a".into(), weight: 0.0 }];
        assert_eq!(Placement::new(zero).unwrap_err(), PlacementError::BadWeight("a".into()));
        let twice = vec![WeightedNode { name: "a".into(), weight: 1.0 }, WeightedNode { name: "a".into(), weight: 2.0 }];
        assert_eq!(Placement::new(twice).unwrap_err(), PlacementError::DuplicateNode("a".into()));
    }
}
