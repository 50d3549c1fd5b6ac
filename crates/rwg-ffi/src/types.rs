//! The plain C types of the ABI (handles, addresses, results, events, statistics) and their
//! conversions from the core's Rust types. Everything here is `#[repr(C)]` and has no
//! pointers, so a C caller can keep these on its stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rwg_proto::device::{DropReason, Event, HEADROOM, TAILROOM};

/// Version of the ABI: bumped whenever a function's signature or a struct's layout changes.
pub const RWG_ABI_VERSION: u32 = 1;

/// Length of every key (private, public, preshared), in bytes.
pub const RWG_KEY_LEN: usize = 32;

/// Bytes a base64 key takes with its terminating NUL (`rwg_key_to_base64`).
pub const RWG_KEY_BASE64_SIZE: usize = 45;

/// How much longer than an IP packet its datagram can be (header, padding, tag): the output
/// buffer of `rwg_core_encapsulate` needs this much more than the packet.
pub const RWG_MAX_OVERHEAD: usize = 47;
const _: () = assert!(RWG_MAX_OVERHEAD == HEADROOM + TAILROOM);

/// The longest IP packet, and the longest datagram, the data-path functions take.
pub const RWG_MAX_PACKET: usize = 65535;

/// `rwg_core_next_deadline` when no timer is armed.
pub const RWG_NO_DEADLINE: u64 = u64::MAX;

/// `rwg_addr.family` of an IPv4 address (the first 4 bytes of `ip`).
pub const RWG_FAMILY_IPV4: u8 = 4;
/// `rwg_addr.family` of an IPv6 address.
pub const RWG_FAMILY_IPV6: u8 = 6;

/// A core created by `rwg_core_new`. Copy it freely; it is an id, not a pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RwgCore {
    /// Never 0 for a core that was created.
    pub id: u64,
}

/// A tunnel started by `rwg_tunnel_start` or `rwg_tunnel_start_wg_quick`. An id, not a pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RwgTunnel {
    /// Never 0 for a tunnel that was started.
    pub id: u64,
}

/// An IP address and UDP port, in a layout that is the same on every platform (unlike
/// `struct sockaddr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RwgAddr {
    /// The address in network byte order: 4 bytes for IPv4 (the rest zero), 16 for IPv6.
    pub ip: [u8; 16],
    /// The port in host byte order.
    pub port: u16,
    /// `RWG_FAMILY_IPV4`, `RWG_FAMILY_IPV6`, or 0 for "no address".
    pub family: u8,
}

impl RwgAddr {
    /// "No address" (family 0).
    pub const NONE: RwgAddr = RwgAddr {
        ip: [0; 16],
        port: 0,
        family: 0,
    };

    /// The socket address, if this is one. An IPv4-mapped IPv6 address becomes IPv4, as the
    /// daemon treats it (its replies must leave through the IPv4 socket).
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        let ip = match self.family {
            RWG_FAMILY_IPV4 => {
                if self.ip[4..].iter().any(|&b| b != 0) {
                    return None;
                }
                IpAddr::V4(Ipv4Addr::new(
                    self.ip[0], self.ip[1], self.ip[2], self.ip[3],
                ))
            }
            RWG_FAMILY_IPV6 => {
                let v6 = Ipv6Addr::from(self.ip);
                match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                }
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for RwgAddr {
    fn from(addr: SocketAddr) -> RwgAddr {
        let mut ip = [0u8; 16];
        let family = match addr.ip() {
            IpAddr::V4(v4) => {
                ip[..4].copy_from_slice(&v4.octets());
                RWG_FAMILY_IPV4
            }
            IpAddr::V6(v6) => {
                ip = v6.octets();
                RWG_FAMILY_IPV6
            }
        };
        RwgAddr {
            ip,
            port: addr.port(),
            family,
        }
    }
}

/// What a data-path call or a poll produced (`rwg_result.kind`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwgOutcome {
    /// Nothing (a poll found nothing to send).
    None = 0,
    /// `out[0..len]` is a datagram to send to `addr`.
    Transmit = 1,
    /// `out[0..len]` is an IP packet from `peer` to deliver to the host.
    Packet = 2,
    /// The packet waits for a handshake; the handshake's datagrams come from
    /// `rwg_core_poll_transmit`.
    Staged = 3,
    /// An authentic keepalive: nothing to deliver.
    Keepalive = 4,
    /// A handshake message was handled; its answers come from `rwg_core_poll_transmit`.
    Handshake = 5,
    /// Dropped and counted; `drop_reason` says why.
    Dropped = 6,
}

/// Why a packet or datagram was dropped (`rwg_result.drop_reason`, `rwg_core_dropped`).
/// Every reason but `BUFFER_TOO_SMALL` and the queue limits means the network (or the peer)
/// sent something it should not have, or the packet had nowhere to go.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwgDropReason {
    /// Not dropped.
    None = 0,
    /// Not a WireGuard message (unknown type, wrong length).
    Malformed = 1,
    /// A transport message for an index we do not know.
    UnknownIndex = 2,
    /// A transport message under an expired keypair.
    ExpiredKey = 3,
    /// A transport message that did not authenticate.
    Decrypt = 4,
    /// A replayed or too old transport message.
    Replay = 5,
    /// The inner packet is not a well-formed IPv4/IPv6 packet.
    InvalidInnerPacket = 6,
    /// The inner source address is not among the sending peer's allowed IPs.
    SourceNotAllowed = 7,
    /// A handshake message with a wrong mac1.
    InvalidMac = 8,
    /// A handshake message that failed to decrypt, or from an unknown key.
    HandshakeFailed = 9,
    /// An initiation whose timestamp is not newer than the last one.
    StaleTimestamp = 10,
    /// A second initiation from a peer within 20 ms.
    Flood = 11,
    /// Under load: the source sent too many handshakes.
    RateLimited = 12,
    /// A response or cookie reply for an index we do not know.
    UnexpectedMessage = 13,
    /// No private key is configured.
    NoPrivateKey = 14,
    /// An outgoing packet matched no peer's allowed IPs.
    NoRoute = 15,
    /// The peer has no endpoint.
    NoEndpoint = 16,
    /// The caller's buffer was too small.
    BufferTooSmall = 17,
    /// A queue (handshakes, outputs) was full.
    QueueFull = 18,
    /// A staged packet was dropped to make room for a newer one.
    StagedOverflow = 19,
    /// No session and nowhere to keep the packet.
    NoSession = 20,
    /// A reason newer than this header.
    Other = 99,
}

impl RwgDropReason {
    /// The code of one of the core's reasons.
    pub(crate) fn of(reason: DropReason) -> RwgDropReason {
        match reason {
            DropReason::Malformed => RwgDropReason::Malformed,
            DropReason::UnknownIndex => RwgDropReason::UnknownIndex,
            DropReason::ExpiredKey => RwgDropReason::ExpiredKey,
            DropReason::Decrypt => RwgDropReason::Decrypt,
            DropReason::Replay => RwgDropReason::Replay,
            DropReason::InvalidInnerPacket => RwgDropReason::InvalidInnerPacket,
            DropReason::SourceNotAllowed => RwgDropReason::SourceNotAllowed,
            DropReason::InvalidMac => RwgDropReason::InvalidMac,
            DropReason::HandshakeFailed => RwgDropReason::HandshakeFailed,
            DropReason::StaleTimestamp => RwgDropReason::StaleTimestamp,
            DropReason::Flood => RwgDropReason::Flood,
            DropReason::RateLimited => RwgDropReason::RateLimited,
            DropReason::UnexpectedMessage => RwgDropReason::UnexpectedMessage,
            DropReason::NoPrivateKey => RwgDropReason::NoPrivateKey,
            DropReason::NoRoute => RwgDropReason::NoRoute,
            DropReason::NoEndpoint => RwgDropReason::NoEndpoint,
            DropReason::BufferTooSmall => RwgDropReason::BufferTooSmall,
            DropReason::QueueFull => RwgDropReason::QueueFull,
            DropReason::StagedOverflow => RwgDropReason::StagedOverflow,
            DropReason::NoSession => RwgDropReason::NoSession,
            _ => RwgDropReason::Other,
        }
    }

    /// The core's reason for a code, if the code names one.
    pub(crate) fn to_core(code: i32) -> Option<DropReason> {
        DropReason::ALL
            .into_iter()
            .find(|r| RwgDropReason::of(*r) as i32 == code)
    }
}

/// What a data-path call or `rwg_core_poll_transmit` produced. Only the fields its `kind`
/// names are meaningful; the others are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwgResult {
    /// What happened.
    pub kind: RwgOutcome,
    /// `DROPPED`: why.
    pub drop_reason: RwgDropReason,
    /// `TRANSMIT`, `PACKET`: bytes written at the start of the output buffer.
    pub len: usize,
    /// `TRANSMIT`: where to send the datagram.
    pub addr: RwgAddr,
    /// `PACKET`: the public key of the peer that sent it.
    pub peer: [u8; 32],
}

impl RwgResult {
    /// A result of this kind with every other field zero.
    pub(crate) fn of(kind: RwgOutcome) -> RwgResult {
        RwgResult {
            kind,
            drop_reason: RwgDropReason::None,
            len: 0,
            addr: RwgAddr::NONE,
            peer: [0; 32],
        }
    }
}

/// Kinds of `rwg_event`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwgEventKind {
    /// No event was waiting.
    None = 0,
    /// A handshake completed and a new session is in use.
    HandshakeCompleted = 1,
    /// The peer's endpoint moved (learned from an authentic packet); `endpoint` is the new one.
    EndpointChanged = 2,
    /// Handshake attempts were given up; staged packets were dropped.
    HandshakeGaveUp = 3,
    /// All keys of the peer were erased after a long time without a session.
    KeysZeroed = 4,
}

/// Something that happened to a peer (`rwg_core_poll_event`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwgEvent {
    /// What happened.
    pub kind: RwgEventKind,
    /// The peer's public key.
    pub peer: [u8; 32],
    /// `ENDPOINT_CHANGED`: the new endpoint.
    pub endpoint: RwgAddr,
}

impl RwgEvent {
    /// No event.
    pub(crate) const NONE: RwgEvent = RwgEvent {
        kind: RwgEventKind::None,
        peer: [0; 32],
        endpoint: RwgAddr::NONE,
    };

    pub(crate) fn of(event: Event) -> RwgEvent {
        let (kind, peer, endpoint) = match event {
            Event::HandshakeCompleted { peer } => (RwgEventKind::HandshakeCompleted, peer, None),
            Event::EndpointChanged { peer, endpoint } => {
                (RwgEventKind::EndpointChanged, peer, Some(endpoint))
            }
            Event::HandshakeGaveUp { peer } => (RwgEventKind::HandshakeGaveUp, peer, None),
            Event::KeysZeroed { peer } => (RwgEventKind::KeysZeroed, peer, None),
        };
        RwgEvent {
            kind,
            peer: *peer.as_bytes(),
            endpoint: endpoint.map_or(RwgAddr::NONE, RwgAddr::from),
        }
    }
}

/// One peer's state (`rwg_core_peer_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RwgPeerStats {
    /// UDP payload bytes sent to the peer (handshakes included).
    pub tx_bytes: u64,
    /// UDP payload bytes of authentic datagrams received from the peer (handshakes included).
    pub rx_bytes: u64,
    /// Wall-clock time of the last completed handshake, in nanoseconds since the Unix epoch as
    /// told by `rwg_core_set_wall_clock`; 0 if there was none.
    pub last_handshake_unix_ns: u64,
    /// Its current endpoint (family 0: none).
    pub endpoint: RwgAddr,
    /// Persistent keepalive interval in seconds (0: off).
    pub persistent_keepalive: u16,
    /// How many allowed-IP prefixes it has.
    pub allowed_ips: u32,
}

/// What a core has done since it was created (`rwg_core_counters`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RwgCounters {
    /// Peers configured now.
    pub peers: u64,
    /// Handshake initiations sent (first attempts and retries).
    pub initiations_sent: u64,
    /// Handshake responses sent.
    pub responses_sent: u64,
    /// Cookie replies sent (under load).
    pub cookie_replies_sent: u64,
    /// Handshakes completed, as initiator or responder.
    pub handshakes_completed: u64,
    /// Handshake messages received.
    pub handshake_messages_received: u64,
    /// Handshakes given up after retrying.
    pub handshakes_given_up: u64,
    /// Packets and datagrams dropped, all reasons together (`rwg_core_dropped` has each).
    pub dropped: u64,
}

/// Log levels of the logging callback (`rwg_set_logger`): a message is passed on if its
/// level is at most the maximum set.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RwgLogLevel {
    /// Nothing is logged.
    Off = 0,
    /// Failures: the tunnel stopped, a thread failed.
    Error = 1,
    /// Trouble that does not stop anything: a peer unreachable, a configuration key ignored.
    Warn = 2,
    /// Lifecycle: started, rebound, stopped, handshakes completed.
    Info = 3,
    /// Per-handshake and per-error detail.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl RwgLogLevel {
    /// The level for a C integer; out-of-range values clamp (negative: off, above 5: trace).
    pub fn from_code(code: i32) -> RwgLogLevel {
        match code {
            i32::MIN..=0 => RwgLogLevel::Off,
            1 => RwgLogLevel::Error,
            2 => RwgLogLevel::Warn,
            3 => RwgLogLevel::Info,
            4 => RwgLogLevel::Debug,
            _ => RwgLogLevel::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_bad_ones_are_refused() {
        for text in ["192.0.2.1:51820", "[2001:db8::1]:443", "0.0.0.0:0"] {
            let addr: SocketAddr = text.parse().expect("addr");
            assert_eq!(RwgAddr::from(addr).to_socket_addr(), Some(addr));
        }
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:7".parse().expect("addr");
        assert_eq!(
            RwgAddr::from(mapped).to_socket_addr(),
            Some("192.0.2.1:7".parse().expect("addr"))
        );
        assert_eq!(RwgAddr::NONE.to_socket_addr(), None);
        let mut v4 = RwgAddr::from("192.0.2.1:1".parse::<SocketAddr>().expect("addr"));
        v4.ip[4] = 1;
        assert_eq!(v4.to_socket_addr(), None, "bytes past an IPv4 address");
        v4.ip[4] = 0;
        v4.family = 5;
        assert_eq!(v4.to_socket_addr(), None, "unknown family");
    }

    #[test]
    fn every_core_drop_reason_has_its_own_code() {
        let mut seen = std::collections::BTreeSet::new();
        for r in DropReason::ALL {
            let code = RwgDropReason::of(r);
            assert_ne!(code, RwgDropReason::Other, "{r:?} has no code");
            assert!(seen.insert(code as i32), "{r:?}");
            assert_eq!(RwgDropReason::to_core(code as i32), Some(r));
        }
        assert_eq!(RwgDropReason::to_core(0), None);
        assert_eq!(RwgDropReason::to_core(99), None);
    }

    #[test]
    fn log_levels_clamp() {
        assert_eq!(RwgLogLevel::from_code(-3), RwgLogLevel::Off);
        assert_eq!(RwgLogLevel::from_code(3), RwgLogLevel::Info);
        assert_eq!(RwgLogLevel::from_code(77), RwgLogLevel::Trace);
    }
}
