//! Where a client is, and which node is nearest to it.
//!
//! A client's address (from EDNS Client Subnet, else the resolver's source address) is looked up in
//! the operator's prefix table (longest prefix wins), then in an optional MaxMind-format database;
//! nodes are ranked by great-circle distance from that point, ties broken by weight.

use std::net::IpAddr;

/// A point on Earth, in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

/// The great-circle distance in kilometres (haversine on a spherical Earth; plenty for ranking).
pub fn distance_km(from: Location, to: Location) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (from.latitude.to_radians(), to.latitude.to_radians());
    let d_lat = lat2 - lat1;
    let d_lon = (to.longitude - from.longitude).to_radians();
    let a = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

/// An IP prefix such as `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub length: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not an IP prefix (ADDRESS/LENGTH): {reason}")]
pub struct PrefixError {
    pub text: String,
    pub reason: &'static str,
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, PrefixError> {
        let fail = |reason| PrefixError { text: text.to_owned(), reason };
        let (address, length) = text.split_once('/').ok_or_else(|| fail("no /LENGTH"))?;
        let address: IpAddr = address.parse().map_err(|_| fail("bad address"))?;
        let length: u8 = length.parse().map_err(|_| fail("bad length"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if length > max {
            return Err(fail("length too long for the address family"));
        }
        Ok(Prefix { address: truncate(address, length), length })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && truncate(address, self.length) == self.address
    }
}

/// Keeps the first `length` bits of an address, zeroing the rest.
pub fn truncate(address: IpAddr, length: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if length == 0 { 0 } else { u32::MAX << (32 - u32::from(length.min(32))) };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if length == 0 { 0 } else { u128::MAX << (128 - u32::from(length.min(128))) };
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// The operator's prefix → location table.
#[derive(Clone, Debug, Default)]
pub struct PrefixTable {
    /// Sorted by prefix length, longest first, so the first match is the most specific.
    entries: Vec<(Prefix, Location)>,
}

impl PrefixTable {
    pub fn new(mut entries: Vec<(Prefix, Location)>) -> PrefixTable {
        entries.sort_by(|left, right| right.0.length.cmp(&left.0.length));
        PrefixTable { entries }
    }

    /// The location of the most specific prefix containing `address`, with that prefix's length
    /// (the ECS scope to answer with).
    pub fn locate(&self, address: IpAddr) -> Option<(Location, u8)> {
        self.entries.iter().find(|(prefix, _)| prefix.contains(address)).map(|(prefix, location)| (*location, prefix.length))
    }
}

/// A node as DNS ranks it.
#[derive(Clone, Debug, PartialEq)]
pub struct RankedNode {
    pub name: String,
    pub location: Location,
    pub weight: u64,
}

/// Orders `nodes` by distance from `client`, nearest first; equal distances go to the heavier node,
/// then by name, so the answer is stable.
pub fn nearest_first<'a>(nodes: &'a [RankedNode], client: Location) -> Vec<&'a RankedNode> {
    let mut ranked: Vec<(&RankedNode, f64)> = nodes.iter().map(|node| (node, distance_km(client, node.location))).collect();
    ranked.sort_by(|(left, left_km), (right, right_km)| {
        left_km
            .partial_cmp(right_km)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(right.weight.cmp(&left.weight))
            .then(left.name.cmp(&right.name))
    });
    ranked.into_iter().map(|(node, _)| node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRANKFURT: Location = Location { latitude: 50.11, longitude: 8.68 };
    const AMSTERDAM: Location = Location { latitude: 52.37, longitude: 4.90 };
    const WARSAW: Location = Location { latitude: 52.23, longitude: 21.01 };
    const STOCKHOLM: Location = Location { latitude: 59.33, longitude: 18.07 };

    #[test]
    fn distances_are_great_circle_kilometres() {
        let km = distance_km(FRANKFURT, AMSTERDAM);
        assert!((350.0..380.0).contains(&km), "{km}");
        assert_eq!(distance_km(WARSAW, WARSAW), 0.0);
        assert!((distance_km(WARSAW, STOCKHOLM) - distance_km(STOCKHOLM, WARSAW)).abs() < 1e-9);
    }

    #[test]
    fn prefixes_parse_strictly_and_match_by_bits() {
        let prefix = Prefix::parse("10.1.2.3/16").unwrap();
        assert_eq!(prefix.address, "10.1.0.0".parse::<IpAddr>().unwrap());
        assert!(prefix.contains("10.1.255.1".parse().unwrap()));
        assert!(!prefix.contains("10.2.0.1".parse().unwrap()));
        assert!(!prefix.contains("::ffff:10.1.0.1".parse().unwrap()), "families never mix");
        let v6 = Prefix::parse("2001:db8:aa::/48").unwrap();
        assert!(v6.contains("2001:db8:aa:1::5".parse().unwrap()));
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        for hostile in ["10.0.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "x/8", "10.0.0.0/8/8", ""] {
            assert!(Prefix::parse(hostile).is_err(), "{hostile:?}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_nodes_rank_by_distance_then_weight() {
        let table =
            PrefixTable::new(vec![(Prefix::parse("10.0.0.0/8").unwrap(), STOCKHOLM), (Prefix::parse("10.20.0.0/16").unwrap(), WARSAW)]);
        assert_eq!(table.locate("10.20.1.1".parse().unwrap()), Some((WARSAW, 16)));
        assert_eq!(table.locate("10.21.1.1".parse().unwrap()), Some((STOCKHOLM, 8)));
        assert_eq!(table.locate("192.0.2.1".parse().unwrap()), None);
        let nodes = vec![
            RankedNode { name: "fra1".into(), location: FRANKFURT, weight: 18 },
            RankedNode { name: "ams1".into(), location: AMSTERDAM, weight: 6 },
            RankedNode { name: "twin".into(), location: FRANKFURT, weight: 20 },
        ];
        let order: Vec<&str> = nearest_first(&nodes, AMSTERDAM).into_iter().map(|node| node.name.as_str()).collect();
        assert_eq!(order, ["ams1", "twin", "fra1"], "equal distance: the heavier node first");
    }
}
