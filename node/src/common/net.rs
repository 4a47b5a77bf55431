//! Client addresses: IPv4-mapped addresses seen as IPv4, prefixes (`203.0.113.0/24`), and the
//! anonymised form that is all logs and files may keep.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The unit the request rate is limited per: an IPv4 address (/32) or an IPv6 /64 (one subscriber's
/// network: a client changing its interface identifier stays one client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(address: IpAddr) -> ClientKey {
        match canonical(address) {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))),
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 clients) count as IPv4.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// The address as logs, metrics and anything on disk may hold it: IPv4 with the last octet zeroed,
/// IPv6 with the last 80 bits zeroed (a /48 remains).
pub fn anonymise(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
    }
}

/// An address prefix (`203.0.113.0/24`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    network: IpAddr,
    length: u8,
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let (address, length) = text.split_once('/').ok_or_else(|| format!("{text:?} is not ADDRESS/LENGTH"))?;
        let network: IpAddr = address.trim().parse().map_err(|_| format!("{address:?} is not an IP address"))?;
        let length: u8 = length.trim().parse().map_err(|_| format!("{length:?} is not a prefix length"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        if length > bits {
            return Err(format!("/{length} is longer than an address"));
        }
        Ok(Prefix { network: mask(network, length), length })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.length) == self.network
    }
}

pub fn mask(address: IpAddr, length: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn clients_are_keyed_per_ipv4_address_and_ipv6_64() {
        assert_ne!(ClientKey::of(ip("203.0.113.1")), ClientKey::of(ip("203.0.113.2")));
        assert_eq!(ClientKey::of(ip("2001:db8:1:2:aaaa::1")), ClientKey::of(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(ClientKey::of(ip("2001:db8:1:2::1")), ClientKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(ClientKey::of(ip("::ffff:203.0.113.1")), ClientKey::of(ip("203.0.113.1")));
    }

    #[test]
    fn addresses_are_anonymised_before_anything_keeps_them() {
        assert_eq!(anonymise(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymise(ip("2001:db8:1234:5678:9abc:def0:1234:5678")), ip("2001:db8:1234::"));
        assert_eq!(anonymise(ip("::ffff:198.51.100.9")), ip("198.51.100.0"), "IPv4-mapped counts as IPv4");
    }

    #[test]
    fn prefixes_parse_and_match() {
        let v4 = Prefix::parse("203.0.113.77/24").unwrap();
        assert!(v4.contains(ip("203.0.113.1")) && v4.contains(ip("::ffff:203.0.113.9")) && !v4.contains(ip("203.0.114.1")));
        let v6 = Prefix::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")) && !v6.contains(ip("203.0.113.1")));
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains(ip("198.51.100.1")));
        for hostile in ["", "1.2.3.4", "1.2.3.4/33", "::/129", "x/8", "1.2.3.4/-1", "1.2.3.4/8/9"] {
            assert!(Prefix::parse(hostile).is_err(), "{hostile:?}");
        }
    }
}
