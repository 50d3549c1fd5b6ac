//! Following the TUN interface's MTU as it changes (rtnetlink(7) link events).
//!
//! `wg-quick` sets the MTU right after the daemon created the interface; reading it only at
//! start and on a slow poll meant padding to the old MTU (PROTOCOL.md §10 caps padding at the
//! MTU) and, over an IPv6 underlay, datagrams above the path MTU for up to the poll interval.

use std::io;

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTATTR_HDR_LEN: usize = 4;
const RTM_NEWLINK: u16 = 16;
const IFLA_MTU: u16 = 4;

/// Netlink messages and attributes start on 4-byte boundaries (`NLMSG_ALIGN`, `RTA_ALIGN`).
fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The last MTU that the `RTM_NEWLINK` messages in one netlink datagram report for interface
/// `ifindex`, if any do. Malformed or truncated messages end the walk; nothing here panics.
pub(crate) fn mtu_from_link_messages(datagram: &[u8], ifindex: u32) -> Option<u32> {
    let mut found = None;
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= datagram.len() {
        let len = u32_at(datagram, at)? as usize;
        let kind = u16_at(datagram, at + 4)?;
        if len < NLMSG_HDR_LEN || at + len > datagram.len() {
            break;
        }
        let msg = &datagram[at..at + len];
        if kind == RTM_NEWLINK && msg.len() >= NLMSG_HDR_LEN + IFINFOMSG_LEN {
            // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
            let index = u32_at(msg, NLMSG_HDR_LEN + 4)?;
            if index == ifindex {
                let mut a = NLMSG_HDR_LEN + IFINFOMSG_LEN;
                while a + RTATTR_HDR_LEN <= msg.len() {
                    let alen = usize::from(u16_at(msg, a)?);
                    let akind = u16_at(msg, a + 2)?;
                    if alen < RTATTR_HDR_LEN || a + alen > msg.len() {
                        break;
                    }
                    if akind == IFLA_MTU && alen >= RTATTR_HDR_LEN + 4 {
                        found = u32_at(msg, a + RTATTR_HDR_LEN);
                    }
                    a += align4(alen);
                }
            }
        }
        at += align4(len);
    }
    found
}

/// What a link-event reader saw in one round.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkNews {
    /// Nothing about our interface's MTU.
    Nothing,
    /// The interface's MTU is now this.
    Mtu(u32),
    /// The kernel dropped events (the socket buffer overflowed): read the MTU directly.
    Overrun,
}

/// Reads every datagram waiting on `events` and sums up what they say about `ifindex`.
pub(crate) fn drain(
    events: &crate::sys::netlink::LinkEvents,
    ifindex: u32,
) -> io::Result<LinkNews> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut news = LinkNews::Nothing;
    loop {
        match events.recv(&mut buf) {
            Ok(n) => {
                if let Some(mtu) = mtu_from_link_messages(&buf[..n], ifindex) {
                    if news != LinkNews::Overrun {
                        news = LinkNews::Mtu(mtu);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(news),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => news = LinkNews::Overrun,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One RTM_NEWLINK message laid out as rtnetlink(7) and <linux/if_link.h> describe it,
    /// with the given attributes (type, payload).
    fn newlink(ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 0]); // ifi_family, pad
        body.extend_from_slice(&0xfffeu16.to_ne_bytes()); // ifi_type (ARPHRD_NONE)
        body.extend_from_slice(&ifindex.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
        body.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
        for (kind, payload) in attrs {
            let len = 4 + payload.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(payload);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn finds_our_interfaces_mtu_among_other_attributes_and_interfaces() {
        let name: &[u8] = b"wg0\0"; // IFLA_IFNAME, 3 = type; odd length exercises alignment
        let mut d = newlink(7, &[(3, name), (4, &1280u32.to_ne_bytes())]);
        d.extend(newlink(9, &[(4, &9000u32.to_ne_bytes())]));
        assert_eq!(mtu_from_link_messages(&d, 7), Some(1280));
        assert_eq!(mtu_from_link_messages(&d, 9), Some(9000));
        assert_eq!(mtu_from_link_messages(&d, 8), None);
        // The last report wins.
        d.extend(newlink(7, &[(4, &1420u32.to_ne_bytes())]));
        assert_eq!(mtu_from_link_messages(&d, 7), Some(1420));
        // A message without the attribute says nothing.
        assert_eq!(mtu_from_link_messages(&newlink(7, &[(3, name)]), 7), None);
    }

    #[test]
    fn other_message_types_are_ignored() {
        let mut d = newlink(7, &[(4, &1280u32.to_ne_bytes())]);
        d[4..6].copy_from_slice(&17u16.to_ne_bytes()); // RTM_DELLINK
        assert_eq!(mtu_from_link_messages(&d, 7), None);
    }

    #[test]
    fn malformed_messages_end_the_walk_without_panicking() {
        let good = newlink(7, &[(4, &1280u32.to_ne_bytes())]);
        for cut in 0..good.len() {
            let r = mtu_from_link_messages(&good[..cut], 7);
            assert_eq!(r, None, "cut at {cut}");
        }
        // Lengths that lie: zero, shorter than a header, longer than the datagram.
        for len in [0u32, 3, 15, 10_000] {
            let mut bad = good.clone();
            bad[0..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(mtu_from_link_messages(&bad, 7), None, "length {len}");
        }
        // An attribute whose length is below its own header or past the message.
        for alen in [0u16, 2, 200] {
            let mut bad = good.clone();
            bad[32..34].copy_from_slice(&alen.to_ne_bytes());
            assert_eq!(mtu_from_link_messages(&bad, 7), None, "attr length {alen}");
        }
        // A too-short MTU payload is not read past.
        let short = newlink(7, &[(4, &[5, 0])]);
        assert_eq!(mtu_from_link_messages(&short, 7), None);
    }
}
