//! IP prefixes (`10.244.1.0/24`, `fd00:10:244:1::/64`): parsing and the
//! address arithmetic the pod network needs, for both families alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A string that is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}")]
pub struct CidrError(pub String);

fn bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

impl Cidr {
    /// A prefix from an address (host bits are cleared) and a length.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        if prefix > bits(addr) {
            return Err(CidrError(format!("{addr}/{prefix}")));
        }
        let c = Cidr {
            network: addr,
            prefix,
        };
        Ok(Cidr {
            network: from_u128(addr.is_ipv4(), to_u128(addr) & c.mask()),
            prefix,
        })
    }

    fn mask(&self) -> u128 {
        let width = bits(self.network);
        let all = if width == 32 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        if self.prefix == 0 {
            0
        } else {
            all & !(all >> self.prefix)
        }
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether it is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && to_u128(ip) & self.mask() == to_u128(self.network)
    }

    /// Number of addresses past the network address that hosts may use: for
    /// IPv4 the broadcast address is excluded; IPv6 has none.
    pub fn host_count(&self) -> u128 {
        let host_bits = bits(self.network) - self.prefix;
        let size = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if self.is_ipv4() {
            size.saturating_sub(1)
        } else {
            size
        }
    }

    /// The `n`th host address (1 = the first after the network address), if inside.
    pub fn host(&self, n: u128) -> Option<IpAddr> {
        (n >= 1 && n <= self.host_count())
            .then(|| from_u128(self.is_ipv4(), to_u128(self.network) + n))
    }

    /// Which host address `ip` is (the inverse of [`Cidr::host`]).
    pub fn host_index(&self, ip: IpAddr) -> Option<u128> {
        let n = to_u128(ip).checked_sub(to_u128(self.network))?;
        (self.contains(ip) && n >= 1 && n <= self.host_count()).then_some(n)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Cidr::new(addr, prefix).map_err(|_| err())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes_both_families() {
        let c: Cidr = "10.244.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        let c6: Cidr = "fd00:10:244:1::9/64".parse().unwrap();
        assert_eq!(c6.to_string(), "fd00:10:244:1::/64");
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "x/8", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_addresses_skip_network_and_broadcast() {
        let c: Cidr = "10.244.1.0/30".parse().unwrap();
        assert_eq!(c.host_count(), 2);
        assert_eq!(c.host(1), Some("10.244.1.1".parse().unwrap()));
        assert_eq!(c.host(2), Some("10.244.1.2".parse().unwrap()));
        assert_eq!(c.host(3), None, "broadcast");
        assert_eq!(c.host(0), None, "network");
        assert_eq!(c.host_index("10.244.1.2".parse().unwrap()), Some(2));
        assert_eq!(c.host_index("10.244.2.2".parse().unwrap()), None);
        let c6: Cidr = "fd00::/64".parse().unwrap();
        assert_eq!(c6.host(1), Some("fd00::1".parse().unwrap()));
        assert_eq!(c6.host_count(), (1u128 << 64) - 1);
        assert!(c6.contains("fd00::ffff".parse().unwrap()));
        assert!(!c6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }
}
