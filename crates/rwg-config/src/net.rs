//! An IP address with a prefix length, as written in `Address` and `AllowedIPs`.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

/// An address with a prefix length: `10.0.0.2/32`, `fd00::2/128`.
///
/// The address is kept as written (host bits are not cleared): in `Address` it is the
/// interface's own address, in `AllowedIPs` the consumer masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl IpNet {
    /// The longest prefix for this address family (32 or 128).
    pub fn max_prefix_len(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// Parse `ADDR/PREFIX` or a bare `ADDR` (a host prefix, as wg-quick accepts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{addr_text:?} is not an IP address"))?;
        let max = IpNet::max_prefix_len(addr);
        let prefix_len = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("prefix length {p:?} is not 0..={max}")),
            },
        };
        Ok(IpNet { addr, prefix_len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let n: IpNet = "10.0.0.2/24".parse().expect("valid");
        assert_eq!(n.to_string(), "10.0.0.2/24");
        let n: IpNet = "fd00::1".parse().expect("valid");
        assert_eq!(n.prefix_len, 128);
        let n: IpNet = "1.2.3.4".parse().expect("valid");
        assert_eq!(n.prefix_len, 32);
        let n: IpNet = "::/0".parse().expect("valid");
        assert_eq!(n.prefix_len, 0);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "10.0.0.1/33",
            "fd00::/129",
            "10.0.0.1/",
            "10.0.0.1/x",
            "x/8",
            "10.0.0.1/+8",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
