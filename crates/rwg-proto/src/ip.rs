//! The two facts the protocol reads from inner IP packets (PROTOCOL.md §5, §8): the destination
//! of an outgoing packet (to route it) and the source and real length of a decrypted one (to
//! check it against the sender's allowed IPs and strip the padding).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The destination address of an IPv4 or IPv6 packet, if its header is there.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&packet[16..20]).ok()?,
        ))),
        6 if packet.len() >= 40 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&packet[24..40]).ok()?,
        ))),
        _ => None,
    }
}

/// The source address and real length of a decrypted inner packet (§5): version 4 or 6, an
/// IPv4 header of at least 20 bytes with 20 ≤ total length ≤ what arrived, or an IPv6 header
/// with payload length + 40 ≤ what arrived. `None` for anything else.
pub fn source_and_len(packet: &[u8]) -> Option<(IpAddr, usize)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if total < 20 || total > packet.len() {
                return None;
            }
            Some((
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
                total,
            ))
        }
        6 if packet.len() >= 40 => {
            let total = usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40;
            if total > packet.len() {
                return None;
            }
            Some((
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
                total,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_before_anything_is_read() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[3] = 24; // total length 24 of 28 bytes: 4 bytes of padding
        v4[12..16].copy_from_slice(&[192, 168, 4, 1]);
        v4[16..20].copy_from_slice(&[192, 168, 4, 2]);
        assert_eq!(destination(&v4), Some("192.168.4.2".parse().expect("ip")));
        assert_eq!(
            source_and_len(&v4),
            Some(("192.168.4.1".parse().expect("ip"), 24))
        );
        v4[3] = 29; // longer than what arrived
        assert_eq!(source_and_len(&v4), None);
        v4[3] = 19; // shorter than a header
        assert_eq!(source_and_len(&v4), None);
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[8] = 0xfd;
        v6[24] = 0xfd;
        v6[39] = 2;
        assert_eq!(destination(&v6), Some("fd00::2".parse().expect("ip")));
        assert_eq!(source_and_len(&v6).map(|(_, l)| l), Some(48));
        v6[5] = 9;
        assert_eq!(source_and_len(&v6), None);
        for len in 0..40 {
            assert_eq!(destination(&v6[..len]), None);
            assert_eq!(source_and_len(&v6[..len]), None);
        }
        assert_eq!(destination(&[0x55; 64]), None, "version 5");
    }
}
