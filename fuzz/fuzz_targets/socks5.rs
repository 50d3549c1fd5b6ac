//! `rwg_netstack::socks5::parse_udp_header`: the header of every datagram a SOCKS5 client sends
//! through a UDP ASSOCIATE relay (`RSV RSV FRAG ATYP ADDR PORT DATA`), and `write_addr`, which
//! writes the same `ATYP ADDR PORT` on the way back. Checked:
//! - nothing panics; a header is accepted only with zero reserved bytes and no fragment;
//! - the data offset is inside the datagram, and the header written back from what was parsed
//!   (`write_addr` for an address, the length-prefixed name for a domain) is exactly the bytes
//!   before it, so nothing of the datagram is skipped or read twice (an IPv4-mapped IPv6
//!   address, which `write_addr` writes as IPv4 on purpose, is compared as such);
//! - `write_addr` of any address parses back to the same address.
//!
//! The TCP side (method selection, authentication, the request) is the target
//! `socks5_request`.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use rwg_netstack::socks5::{parse_udp_header, write_addr, TargetAddr};

fuzz_target!(|data: &[u8]| {
    if let Some((target, offset)) = parse_udp_header(data) {
        assert!(
            offset <= data.len(),
            "data offset {offset} past the datagram"
        );
        assert_eq!(
            data[..3],
            [0, 0, 0],
            "reserved bytes or a fragment accepted"
        );
        let mut header = vec![0, 0, 0];
        match &target {
            TargetAddr::Ip(addr) => {
                if data[3] == 4 && mapped(addr.ip()) {
                    // `write_addr` shortens these to IPv4: compare the address itself.
                    header.push(4);
                    header.extend_from_slice(&data[4..20]);
                    header.extend_from_slice(&addr.port().to_be_bytes());
                } else {
                    write_addr(&mut header, *addr);
                }
            }
            TargetAddr::Domain(name, port) => {
                assert!(!name.is_empty());
                header.push(3);
                header.push(u8::try_from(name.len()).expect("a name of at most 255 bytes"));
                header.extend_from_slice(name.as_bytes());
                header.extend_from_slice(&port.to_be_bytes());
            }
        }
        assert_eq!(
            header,
            data[..offset],
            "the header read is not the header written"
        );
    }
    // The other direction: any address, written and read back.
    if data.len() >= 18 {
        let port = u16::from_be_bytes([data[16], data[17]]);
        let ip = if data.len() > 18 && data[18] & 1 == 1 {
            IpAddr::from(<[u8; 4]>::try_from(&data[..4]).expect("4 bytes"))
        } else {
            IpAddr::from(<[u8; 16]>::try_from(&data[..16]).expect("16 bytes"))
        };
        let addr = SocketAddr::new(ip, port);
        let mut datagram = vec![0, 0, 0];
        write_addr(&mut datagram, addr);
        let header_len = datagram.len();
        datagram.extend_from_slice(b"payload");
        let (read, offset) = parse_udp_header(&datagram).expect("write_addr wrote a bad header");
        assert_eq!(offset, header_len);
        let expected = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => addr,
            },
            IpAddr::V4(_) => addr,
        };
        assert_eq!(read, TargetAddr::Ip(expected));
    }
});

fn mapped(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some() && v6 != Ipv6Addr::UNSPECIFIED,
        IpAddr::V4(_) => false,
    }
}
