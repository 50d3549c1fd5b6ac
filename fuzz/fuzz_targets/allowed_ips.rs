//! Differential: `rwg_proto::allowed_ips::AllowedIps` against a naive table — a map from
//! (masked prefix, length) to value, where a lookup scans every entry of the address family
//! for the longest prefix containing the address (PROTOCOL.md §8; the whitepaper's
//! cryptokey routing). Inserts, removals, per-value removal, lookups (of arbitrary addresses
//! and of addresses next to a stored prefix), listings and counts must all agree; invalid
//! prefix lengths must be refused without changing anything.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use rwg_proto::allowed_ips::AllowedIps;

/// The naive table.
#[derive(Default)]
struct Model {
    routes: BTreeMap<(IpAddr, u8), u8>,
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn from_bits(v: u128, width: u8) -> IpAddr {
    if width == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// `addr` with every bit after the first `cidr` cleared.
fn masked(addr: IpAddr, cidr: u8) -> IpAddr {
    let (v, width) = bits(addr);
    // The first `cidr` bits of a 128-bit number, moved down to the address's width.
    let ones = if cidr == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(cidr))
    };
    from_bits(v & (ones >> (128 - u32::from(width))), width)
}

fn contains(prefix: IpAddr, cidr: u8, addr: IpAddr) -> bool {
    prefix.is_ipv4() == addr.is_ipv4() && masked(addr, cidr) == prefix
}

impl Model {
    fn lookup(&self, addr: IpAddr) -> Option<u8> {
        self.routes
            .iter()
            .filter(|((p, c), _)| contains(*p, *c, addr))
            .max_by_key(|((_, c), _)| *c)
            .map(|(_, v)| *v)
    }
    fn prefixes_of(&self, value: u8) -> Vec<(IpAddr, u8)> {
        self.routes
            .iter()
            .filter(|(_, v)| **v == value)
            .map(|(k, _)| *k)
            .collect()
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn addr(&mut self, v6: bool) -> IpAddr {
        let n = if v6 { 16 } else { 4 };
        let mut b = [0u8; 16];
        for x in b.iter_mut().take(n) {
            *x = self.byte().unwrap_or(0);
        }
        if v6 {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut table: AllowedIps<u8> = AllowedIps::new();
    let mut model = Model::default();
    for _ in 0..256 {
        let Some(o) = input.byte() else { break };
        let v6 = o & 8 != 0;
        let value = (o >> 4) & 3;
        let width: u8 = if v6 { 128 } else { 32 };
        match o & 7 {
            0 | 1 => {
                // Insert; a length byte beyond the width (up to +7) must be refused.
                let cidr = input.byte().unwrap_or(0) % (width + 8);
                let addr = input.addr(v6);
                let got = table.insert(addr, cidr, value);
                if cidr > width {
                    assert!(got.is_err(), "/{cidr} accepted for a {width}-bit address");
                } else {
                    assert!(got.is_ok());
                    model.routes.insert((masked(addr, cidr), cidr), value);
                }
            }
            2 => {
                let cidr = input.byte().unwrap_or(0) % (width + 8);
                let addr = input.addr(v6);
                let got = table.remove(addr, cidr, value);
                if cidr > width {
                    assert!(got.is_err());
                } else {
                    let key = (masked(addr, cidr), cidr);
                    let owned = model.routes.get(&key) == Some(&value);
                    if owned {
                        model.routes.remove(&key);
                    }
                    assert_eq!(got, Ok(owned), "remove {key:?} for {value}");
                }
            }
            3 => {
                table.remove_value(value);
                model.routes.retain(|_, v| *v != value);
            }
            4 => {
                let addr = input.addr(v6);
                assert_eq!(table.lookup(addr), model.lookup(addr), "lookup {addr}");
            }
            5 => {
                // An address next to a stored prefix: its first address with one bit flipped.
                let n = model.routes.len();
                if n == 0 {
                    continue;
                }
                let pick = usize::from(input.byte().unwrap_or(0)) % n;
                let flip = input.byte().unwrap_or(0);
                let (&(prefix, _), _) = model.routes.iter().nth(pick).expect("in range");
                let (v, w) = bits(prefix);
                let addr = from_bits(v ^ (1u128 << (u32::from(flip) % u32::from(w))), w);
                assert_eq!(
                    table.lookup(prefix),
                    model.lookup(prefix),
                    "lookup {prefix}"
                );
                assert_eq!(table.lookup(addr), model.lookup(addr), "lookup {addr}");
                match addr {
                    IpAddr::V4(a) => assert_eq!(table.lookup_v4(a.octets()), model.lookup(addr)),
                    IpAddr::V6(a) => assert_eq!(table.lookup_v6(a.octets()), model.lookup(addr)),
                }
            }
            6 => {
                assert_eq!(table.prefixes_of(value), model.prefixes_of(value));
                assert_eq!(table.count_of(value), model.prefixes_of(value).len());
            }
            _ => {
                if o & 0x40 != 0 {
                    table.clear();
                    model.routes.clear();
                }
            }
        }
        assert_eq!(table.len(), model.routes.len());
        assert_eq!(table.is_empty(), model.routes.is_empty());
    }
    for value in 0..4 {
        assert_eq!(table.prefixes_of(value), model.prefixes_of(value));
    }
});
