//! The mirror zone and how it answers, as a pure function of the question, the client's address and
//! which nodes are live.
//!
//! Names (for the zone `hf-mirror.eu`):
//! - the apex: SOA, NS (every node's name), and A/AAAA of every ready node (it is an HTTP name);
//! - the HTTP names (`www` by default): A/AAAA of every ready node;
//! - the rsync name (`rsync`): A/AAAA of the nearest ready node(s) to the client;
//! - each node's own name (`fra1`): its addresses, whatever its health (operators and the rollout
//!   need stable names).
//!
//! `datasets-server` is never a name of the zone, under any name: the `datasets` library asks
//! `datasets-server.<endpoint host>/info` and waits up to 100 s when that name leads somewhere slow,
//! so the zone answers it NXDOMAIN at once (the mirror serves no dataset viewer API; `datasets`
//! swallows the failed lookup and goes on). A topology that would give it records is refused.
//!
//! A name the zone does not have is NXDOMAIN with the SOA; a name it has, without records of the type
//! asked, is NODATA with the SOA; a name outside the zone is REFUSED. When no node is ready, the
//! health-checked names answer the configured fallback nodes rather than nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::geo::{Location, Prefix, PrefixTable, RankedNode, nearest_first};

/// A node as the zone knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneNode {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub location: Location,
    /// Placement weight (storage); breaks distance ties.
    pub weight: u64,
}

/// Everything the zone is built from (the node parses it out of `topology.toml`).
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `hf-mirror.eu`.
    pub apex: String,
    /// TTL of every answer, and the SOA's negative-caching minimum.
    pub ttl: u32,
    /// The SOA RNAME, e.g. `hostmaster.hf-mirror.eu`.
    pub hostmaster: String,
    /// The SOA serial; it must never go backwards (the node uses its start time in seconds).
    pub serial: u32,
    pub nodes: Vec<ZoneNode>,
    /// The label of the geo-routed rsync name (`rsync`).
    pub rsync_label: String,
    /// How many nodes the rsync name answers, nearest first.
    pub rsync_answers: usize,
    /// Labels answering every ready node; `@` is the apex.
    pub http_labels: Vec<String>,
    /// Nodes answered when no node is ready (empty: every node).
    pub fallback: Vec<String>,
    /// The order for clients whose location is unknown (empty: the topology's order).
    pub default_order: Vec<String>,
    /// Prefix → location, the operator's table.
    pub prefixes: Vec<(Prefix, Location)>,
    /// An optional MaxMind-format (GeoLite2/GeoIP2 City) database.
    pub geoip_database: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("dns: {0:?} is not a valid DNS name")]
    BadName(String),
    #[error("dns: {what} names {name:?}, which is not a node of the topology")]
    UnknownNode { what: &'static str, name: String },
    #[error("dns: {0:?} is reserved: `datasets` clients ask it and must get NXDOMAIN at once")]
    Reserved(String),
    #[error("dns: the zone has no nodes")]
    NoNodes,
    #[error("dns: cannot open the GeoIP database {path}: {reason}")]
    GeoIp { path: String, reason: String },
}

/// The label `datasets` looks up under its endpoint's host; never a name of the zone.
pub const DATASETS_SERVER: &str = "datasets-server";

/// What a question gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Not our zone.
    Refused,
    /// The name does not exist: NXDOMAIN, the SOA in the authority section.
    NxDomain { soa: Record },
    /// The name exists without records of that type: NOERROR, no answers, the SOA in authority.
    NoData { soa: Record },
    /// Records, and the ECS scope they are valid for (0: any client).
    Records { records: Vec<Record>, scope: u8 },
}

/// Where a client's location came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientPlace {
    pub location: Location,
    /// The length of the prefix that located it (the widest scope the answer holds for).
    pub prefix_length: u8,
}

enum NameKind {
    Apex,
    Http,
    Rsync,
    Node(usize),
}

/// The built zone; cheap to query from many tasks.
pub struct Zone {
    apex: Name,
    apex_lower: LowerName,
    ttl: u32,
    soa: Record,
    names: HashMap<LowerName, NameKind>,
    ns_names: Vec<Name>,
    nodes: Vec<ZoneNode>,
    ranked: Vec<RankedNode>,
    rsync_answers: usize,
    apex_is_http: bool,
    fallback: Vec<usize>,
    default_order: Vec<usize>,
    table: PrefixTable,
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
}

fn parse_name(text: &str) -> Result<Name, ZoneError> {
    let mut name = Name::from_ascii(text).map_err(|_| ZoneError::BadName(text.to_owned()))?;
    name.set_fqdn(true);
    Ok(name)
}

impl Zone {
    pub fn new(config: &ZoneConfig) -> Result<Zone, ZoneError> {
        if config.nodes.is_empty() {
            return Err(ZoneError::NoNodes);
        }
        let apex = parse_name(&config.apex)?;
        let child = |label: &str| -> Result<Name, ZoneError> {
            if label.eq_ignore_ascii_case(DATASETS_SERVER) {
                return Err(ZoneError::Reserved(label.to_owned()));
            }
            let name = Name::from_ascii(label).map_err(|_| ZoneError::BadName(label.to_owned()))?;
            name.append_domain(&apex).map_err(|_| ZoneError::BadName(format!("{label}.{}", config.apex)))
        };
        let mut names = HashMap::new();
        names.insert(LowerName::from(&apex), NameKind::Apex);
        let mut ns_names = Vec::new();
        for (index, node) in config.nodes.iter().enumerate() {
            let name = child(&node.name)?;
            ns_names.push(name.clone());
            names.insert(LowerName::from(&name), NameKind::Node(index));
        }
        let mut apex_is_http = false;
        for label in &config.http_labels {
            if label == "@" {
                apex_is_http = true;
            } else {
                names.insert(LowerName::from(&child(label)?), NameKind::Http);
            }
        }
        names.insert(LowerName::from(&child(&config.rsync_label)?), NameKind::Rsync);
        let index_of = |what: &'static str, name: &String| {
            config.nodes.iter().position(|node| node.name == *name).ok_or_else(|| ZoneError::UnknownNode { what, name: name.clone() })
        };
        let fallback = config.fallback.iter().map(|name| index_of("dns.fallback", name)).collect::<Result<Vec<_>, _>>()?;
        let default_order = config.default_order.iter().map(|name| index_of("dns.default_order", name)).collect::<Result<Vec<_>, _>>()?;
        let hostmaster = parse_name(&config.hostmaster)?;
        // Refresh, retry and expire matter only to secondaries, which this zone has none of (every
        // node is a primary built from the same file); the minimum is the negative-caching TTL.
        let soa_data = SOA::new(ns_names[0].clone(), hostmaster, config.serial, 3600, 600, 86400, config.ttl);
        let soa = Record::from_rdata(apex.clone(), config.ttl, RData::SOA(soa_data));
        let geoip = match &config.geoip_database {
            Some(path) => Some(
                maxminddb::Reader::open_readfile(path)
                    .map_err(|error| ZoneError::GeoIp { path: path.display().to_string(), reason: error.to_string() })?,
            ),
            None => None,
        };
        let ranked =
            config.nodes.iter().map(|node| RankedNode { name: node.name.clone(), location: node.location, weight: node.weight }).collect();
        Ok(Zone {
            apex_lower: LowerName::from(&apex),
            apex,
            ttl: config.ttl,
            soa,
            names,
            ns_names,
            nodes: config.nodes.clone(),
            ranked,
            rsync_answers: config.rsync_answers.max(1),
            apex_is_http,
            fallback,
            default_order,
            table: PrefixTable::new(config.prefixes.clone()),
            geoip,
        })
    }

    pub fn apex(&self) -> &Name {
        &self.apex
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is the apex or below it.
    pub fn contains(&self, name: &LowerName) -> bool {
        self.apex_lower.zone_of(name)
    }

    /// Locates a client address: the operator's table first, then the GeoIP database.
    pub fn locate(&self, address: IpAddr) -> Option<ClientPlace> {
        if let Some((location, prefix_length)) = self.table.locate(address) {
            return Some(ClientPlace { location, prefix_length });
        }
        let reader = self.geoip.as_ref()?;
        let result = reader.lookup(address).ok()?;
        if !result.has_data() {
            return None;
        }
        let city: maxminddb::geoip2::City<'_> = result.decode().ok()??;
        let location = Location { latitude: city.location.latitude?, longitude: city.location.longitude? };
        let prefix_length = result.network().map(|network| network.prefix()).unwrap_or(0);
        Some(ClientPlace { location, prefix_length })
    }

    /// Answers one question. `client` is the address that locates the client (ECS, else the
    /// resolver's), `is_live` says whether a node is live and not draining.
    pub fn answer(&self, name: &LowerName, query_type: RecordType, client: Option<IpAddr>, is_live: &dyn Fn(&str) -> bool) -> Answer {
        if !self.contains(name) {
            return Answer::Refused;
        }
        let Some(kind) = self.names.get(name) else {
            return Answer::NxDomain { soa: self.soa.clone() };
        };
        let owner = Name::from(name);
        let records = |chosen: &[usize], scope: u8| self.address_records(&owner, query_type, chosen, scope);
        match (kind, query_type) {
            (NameKind::Apex, RecordType::SOA) => Answer::Records { records: vec![self.soa.clone()], scope: 0 },
            (NameKind::Apex, RecordType::NS) => Answer::Records {
                records: self
                    .ns_names
                    .iter()
                    .map(|ns| Record::from_rdata(self.apex.clone(), self.ttl, RData::NS(NS(ns.clone()))))
                    .collect(),
                scope: 0,
            },
            (NameKind::Apex, RecordType::A | RecordType::AAAA) if self.apex_is_http => records(&self.ready_or_fallback(is_live), 0),
            (NameKind::Http, RecordType::A | RecordType::AAAA) => records(&self.ready_or_fallback(is_live), 0),
            (NameKind::Rsync, RecordType::A | RecordType::AAAA) => {
                let (order, scope) = self.nearest(client, is_live);
                records(&order, scope)
            }
            (NameKind::Node(index), RecordType::A | RecordType::AAAA) => records(&[*index], 0),
            _ => Answer::NoData { soa: self.soa.clone() },
        }
    }

    fn address_records(&self, owner: &Name, query_type: RecordType, chosen: &[usize], scope: u8) -> Answer {
        let records: Vec<Record> = chosen
            .iter()
            .filter_map(|index| {
                let node = &self.nodes[*index];
                match query_type {
                    RecordType::A => node.ipv4.map(|ip| Record::from_rdata(owner.clone(), self.ttl, RData::A(A(ip)))),
                    _ => node.ipv6.map(|ip| Record::from_rdata(owner.clone(), self.ttl, RData::AAAA(AAAA(ip)))),
                }
            })
            .collect();
        if records.is_empty() { Answer::NoData { soa: self.soa.clone() } } else { Answer::Records { records, scope } }
    }

    /// Every ready node; if none, the fallback (or every node).
    fn ready_or_fallback(&self, is_live: &dyn Fn(&str) -> bool) -> Vec<usize> {
        let ready: Vec<usize> = (0..self.nodes.len()).filter(|index| is_live(&self.nodes[*index].name)).collect();
        if !ready.is_empty() {
            return ready;
        }
        if self.fallback.is_empty() { (0..self.nodes.len()).collect() } else { self.fallback.clone() }
    }

    /// The nearest ready nodes to the client (and the ECS scope that choice holds for).
    fn nearest(&self, client: Option<IpAddr>, is_live: &dyn Fn(&str) -> bool) -> (Vec<usize>, u8) {
        let ready = self.ready_or_fallback(is_live);
        let place = client.and_then(|address| self.locate(address));
        let (ordered, scope): (Vec<usize>, u8) = match place {
            Some(place) => {
                let candidates: Vec<RankedNode> = ready.iter().map(|index| self.ranked[*index].clone()).collect();
                let order = nearest_first(&candidates, place.location)
                    .into_iter()
                    .filter_map(|node| self.nodes.iter().position(|known| known.name == node.name))
                    .collect();
                (order, place.prefix_length)
            }
            None => {
                let mut order: Vec<usize> = self.default_order.iter().copied().filter(|index| ready.contains(index)).collect();
                let rest: Vec<usize> = ready.iter().copied().filter(|index| !order.contains(index)).collect();
                order.extend(rest);
                (order, 0)
            }
        };
        (ordered.into_iter().take(self.rsync_answers).collect(), scope)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn test_config() -> ZoneConfig {
        let node = |name: &str, last: u8, latitude: f64, longitude: f64, weight: u64| ZoneNode {
            name: name.into(),
            ipv4: Some(Ipv4Addr::new(192, 0, 2, last)),
            ipv6: (last != 4).then(|| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last))),
            location: Location { latitude, longitude },
            weight,
        };
        let place = |prefix: &str, latitude: f64, longitude: f64| (Prefix::parse(prefix).unwrap(), Location { latitude, longitude });
        ZoneConfig {
            apex: "hf-mirror.eu".into(),
            ttl: 30,
            hostmaster: "hostmaster.hf-mirror.eu".into(),
            serial: 1_700_000_000,
            nodes: vec![
                node("fra1", 1, 50.11, 8.68, 18),
                node("ams1", 2, 52.37, 4.90, 6),
                node("waw1", 3, 52.23, 21.01, 4),
                node("sto1", 4, 59.33, 18.07, 4),
            ],
            rsync_label: "rsync".into(),
            rsync_answers: 1,
            http_labels: vec!["@".into(), "www".into()],
            fallback: vec!["fra1".into()],
            default_order: vec!["ams1".into(), "fra1".into()],
            prefixes: vec![
                place("10.1.0.0/16", 50.1, 8.7),  // Frankfurt
                place("10.2.0.0/16", 52.4, 4.9),  // Amsterdam
                place("10.3.0.0/16", 52.2, 21.0), // Warsaw
                place("10.4.0.0/16", 59.3, 18.1), // Stockholm
                place("2001:db8:4::/48", 59.3, 18.1),
            ],
            geoip_database: None,
        }
    }

    fn lower(text: &str) -> LowerName {
        LowerName::from(Name::from_ascii(text).unwrap())
    }

    fn addresses(answer: &Answer) -> Vec<String> {
        match answer {
            Answer::Records { records, .. } => records.iter().map(|record| record.data.to_string()).collect(),
            other => panic!("no records: {other:?}"),
        }
    }

    #[test]
    fn rsync_goes_to_the_nearest_live_node() {
        let zone = Zone::new(&test_config()).unwrap();
        let all_live = |_: &str| true;
        let rsync = lower("rsync.hf-mirror.eu.");
        for (client, expected) in
            [("10.1.9.9", "192.0.2.1"), ("10.2.9.9", "192.0.2.2"), ("10.3.9.9", "192.0.2.3"), ("10.4.9.9", "192.0.2.4")]
        {
            let answer = zone.answer(&rsync, RecordType::A, Some(client.parse().unwrap()), &all_live);
            assert_eq!(addresses(&answer), [expected], "{client}");
            assert!(matches!(answer, Answer::Records { scope: 16, .. }));
        }
        // Stockholm is dead: its clients go to the next nearest, Warsaw.
        let without_sto = |name: &str| name != "sto1";
        assert_eq!(addresses(&zone.answer(&rsync, RecordType::A, Some("10.4.0.1".parse().unwrap()), &without_sto)), ["192.0.2.3"]);
        // Unknown clients follow the default order; nobody live: the fallback.
        assert_eq!(addresses(&zone.answer(&rsync, RecordType::A, Some("198.51.100.1".parse().unwrap()), &all_live)), ["192.0.2.2"]);
        assert_eq!(addresses(&zone.answer(&rsync, RecordType::A, None, &|_: &str| false)), ["192.0.2.1"]);
        // IPv6 clients and AAAA.
        let answer = zone.answer(&rsync, RecordType::AAAA, Some("2001:db8:4::1".parse().unwrap()), &without_sto);
        assert_eq!(addresses(&answer), ["2001:db8::3"]);
    }

    #[test]
    fn names_types_and_negative_answers() {
        let zone = Zone::new(&test_config()).unwrap();
        let live = |name: &str| name != "waw1";
        let www = zone.answer(&lower("WWW.hf-mirror.eu."), RecordType::A, None, &live);
        assert_eq!(addresses(&www), ["192.0.2.1", "192.0.2.2", "192.0.2.4"], "HTTP names answer every live node");
        assert_eq!(addresses(&zone.answer(&lower("hf-mirror.eu."), RecordType::A, None, &live)).len(), 3);
        assert_eq!(addresses(&zone.answer(&lower("waw1.hf-mirror.eu."), RecordType::A, None, &live)), ["192.0.2.3"], "node names stay");
        assert_eq!(addresses(&zone.answer(&lower("hf-mirror.eu."), RecordType::NS, None, &live)).len(), 4);
        assert!(matches!(zone.answer(&lower("hf-mirror.eu."), RecordType::SOA, None, &live), Answer::Records { .. }));
        assert!(matches!(zone.answer(&lower("nope.hf-mirror.eu."), RecordType::A, None, &live), Answer::NxDomain { .. }));
        assert!(matches!(zone.answer(&lower("a.b.rsync.hf-mirror.eu."), RecordType::A, None, &live), Answer::NxDomain { .. }));
        assert!(matches!(zone.answer(&lower("sto1.hf-mirror.eu."), RecordType::AAAA, None, &live), Answer::NoData { .. }));
        assert!(matches!(zone.answer(&lower("www.hf-mirror.eu."), RecordType::MX, None, &live), Answer::NoData { .. }));
        assert_eq!(zone.answer(&lower("huggingface.co."), RecordType::A, None, &live), Answer::Refused);
        assert_eq!(zone.answer(&lower("eu."), RecordType::A, None, &live), Answer::Refused);
    }

    #[test]
    fn datasets_server_is_nxdomain_under_every_name_and_cannot_be_configured() {
        let zone = Zone::new(&test_config()).unwrap();
        for host in ["hf-mirror.eu.", "www.hf-mirror.eu.", "fra1.hf-mirror.eu.", "rsync.hf-mirror.eu."] {
            for query_type in [RecordType::A, RecordType::AAAA, RecordType::HTTPS] {
                let name = lower(&format!("datasets-server.{host}"));
                assert!(matches!(zone.answer(&name, query_type, None, &|_: &str| true), Answer::NxDomain { .. }), "{host} {query_type}");
            }
        }
        let mut config = test_config();
        config.http_labels.push("Datasets-Server".into());
        assert!(matches!(Zone::new(&config), Err(ZoneError::Reserved(_))));
    }

    /// Writes a minimal MaxMind DB (format 2.0, IPv4 tree, 24-bit records) with one network whose
    /// record is `{location: {latitude, longitude}}`, as GeoLite2-City has it.
    fn write_mmdb(path: &std::path::Path, network: Ipv4Addr, prefix_length: u8, latitude: f64, longitude: f64) {
        fn control(kind: u8, size: usize, out: &mut Vec<u8>) {
            assert!(size < 29);
            if kind <= 7 {
                out.push((kind << 5) | size as u8);
            } else {
                out.push(size as u8);
                out.push(kind - 7);
            }
        }
        fn string(text: &str, out: &mut Vec<u8>) {
            control(2, text.len(), out);
            out.extend_from_slice(text.as_bytes());
        }
        fn double(value: f64, out: &mut Vec<u8>) {
            control(3, 8, out);
            out.extend_from_slice(&value.to_be_bytes());
        }
        fn unsigned(kind: u8, value: u64, width: usize, out: &mut Vec<u8>) {
            control(kind, width, out);
            out.extend_from_slice(&value.to_be_bytes()[8 - width..]);
        }
        let node_count = u32::from(prefix_length);
        let bits = u32::from(network);
        let mut tree = Vec::new();
        for depth in 0..node_count {
            let bit = (bits >> (31 - depth)) & 1;
            // Following the network's bit leads on (or to the data, at offset 0); the other side has nothing.
            let onward = if depth + 1 == node_count { node_count + 16 } else { depth + 1 };
            let (left, right) = if bit == 0 { (onward, node_count) } else { (node_count, onward) };
            for record in [left, right] {
                tree.extend_from_slice(&record.to_be_bytes()[1..]);
            }
        }
        let mut data = Vec::new();
        control(7, 1, &mut data);
        string("location", &mut data);
        control(7, 2, &mut data);
        string("latitude", &mut data);
        double(latitude, &mut data);
        string("longitude", &mut data);
        double(longitude, &mut data);
        let mut metadata = b"\xAB\xCD\xEFMaxMind.com".to_vec();
        control(7, 9, &mut metadata);
        string("binary_format_major_version", &mut metadata);
        unsigned(5, 2, 2, &mut metadata);
        string("binary_format_minor_version", &mut metadata);
        unsigned(5, 0, 2, &mut metadata);
        string("build_epoch", &mut metadata);
        unsigned(9, 1_700_000_000, 8, &mut metadata);
        string("database_type", &mut metadata);
        string("GeoLite2-City", &mut metadata);
        string("description", &mut metadata);
        control(7, 0, &mut metadata);
        string("ip_version", &mut metadata);
        unsigned(5, 4, 2, &mut metadata);
        string("languages", &mut metadata);
        control(11, 0, &mut metadata);
        string("node_count", &mut metadata);
        unsigned(6, u64::from(node_count), 4, &mut metadata);
        string("record_size", &mut metadata);
        unsigned(5, 24, 2, &mut metadata);
        let mut file = tree;
        file.extend_from_slice(&[0; 16]);
        file.extend_from_slice(&data);
        file.extend_from_slice(&metadata);
        std::fs::write(path, file).unwrap();
    }

    #[test]
    fn a_geoip_database_locates_clients_the_prefix_table_does_not_know() {
        let directory = std::env::temp_dir().join(format!("hfm-dns-geoip-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("City.mmdb");
        // 203.0.113.0/24 is in Stockholm according to the database.
        write_mmdb(&path, Ipv4Addr::new(203, 0, 113, 0), 24, 59.3, 18.1);
        let mut config = test_config();
        config.geoip_database = Some(path.clone());
        let zone = Zone::new(&config).unwrap();
        let place = zone.locate("203.0.113.77".parse().unwrap()).expect("located by the database");
        assert_eq!(place.prefix_length, 24);
        assert!((place.location.latitude - 59.3).abs() < 1e-9);
        let answer = zone.answer(&lower("rsync.hf-mirror.eu."), RecordType::A, Some("203.0.113.77".parse().unwrap()), &|_: &str| true);
        assert_eq!(addresses(&answer), ["192.0.2.4"]);
        assert!(zone.locate("198.51.100.1".parse().unwrap()).is_none(), "outside the database's networks");
        // The operator's table still wins over the database.
        assert_eq!(zone.locate("10.1.0.1".parse().unwrap()).unwrap().prefix_length, 16);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn configuration_errors_name_what_is_wrong() {
        let mut config = test_config();
        config.fallback = vec!["nowhere".into()];
        assert!(matches!(Zone::new(&config), Err(ZoneError::UnknownNode { what: "dns.fallback", .. })));
        let mut config = test_config();
        config.apex = "bad..name".into();
        assert!(matches!(Zone::new(&config), Err(ZoneError::BadName(_))));
        let mut config = test_config();
        config.geoip_database = Some("/nonexistent/GeoLite2-City.mmdb".into());
        assert!(matches!(Zone::new(&config), Err(ZoneError::GeoIp { .. })));
    }
}
