//! What became of an input: the verdicts of the data path ([`Sent`], [`Received`]), why
//! something was dropped ([`DropReason`]), and the [`Event`]s a driver may log.

use core::fmt;
use core::net::SocketAddr;

use crate::crypto::PublicKey;

/// Why a datagram or packet was dropped. Each reason has a counter in a
/// [`Device`](crate::device::Device).
///
/// The peer misbehaved, or the network did, for every reason but [`DropReason::BufferTooSmall`]
/// (the caller's buffer was too short: a driver bug) and the queue limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a WireGuard message (unknown type, wrong length).
    Malformed,
    /// A transport message for an index we do not know (or no longer know).
    UnknownIndex,
    /// A transport message under a keypair older than REJECT_AFTER_TIME.
    ExpiredKey,
    /// A transport message that did not authenticate.
    Decrypt,
    /// A transport message whose counter was seen before or is too old.
    Replay,
    /// The decrypted inner packet is not a well-formed IPv4/IPv6 packet.
    InvalidInnerPacket,
    /// The inner source address is not in the sending peer's allowed IPs.
    SourceNotAllowed,
    /// A handshake message with a wrong mac1.
    InvalidMac,
    /// A handshake message that failed to decrypt, or from an unknown key.
    HandshakeFailed,
    /// An initiation whose timestamp is not newer than the last one.
    StaleTimestamp,
    /// A second initiation from a peer within 20 ms.
    Flood,
    /// Under load: the source sent too many handshakes.
    RateLimited,
    /// A response or cookie reply for an index we do not know.
    UnexpectedMessage,
    /// No private key is configured.
    NoPrivateKey,
    /// An outgoing packet matched no peer's allowed IPs.
    NoRoute,
    /// The peer has no endpoint.
    NoEndpoint,
    /// The caller's buffer was too small (a driver bug).
    BufferTooSmall,
    /// A queue (handshakes, outbox) was full.
    QueueFull,
    /// A staged packet was dropped to make room for a newer one.
    StagedOverflow,
    /// No session yet and nowhere to keep the packet (a peer built without an allocator stages
    /// nothing); a handshake was started.
    NoSession,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 20;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::UnknownIndex,
        DropReason::ExpiredKey,
        DropReason::Decrypt,
        DropReason::Replay,
        DropReason::InvalidInnerPacket,
        DropReason::SourceNotAllowed,
        DropReason::InvalidMac,
        DropReason::HandshakeFailed,
        DropReason::StaleTimestamp,
        DropReason::Flood,
        DropReason::RateLimited,
        DropReason::UnexpectedMessage,
        DropReason::NoPrivateKey,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::BufferTooSmall,
        DropReason::QueueFull,
        DropReason::StagedOverflow,
        DropReason::NoSession,
    ];

    /// Position in [`DropReason::ALL`] (a counter index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short lower-case name (for metrics labels and logs).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::ExpiredKey => "expired_key",
            DropReason::Decrypt => "decrypt",
            DropReason::Replay => "replay",
            DropReason::InvalidInnerPacket => "invalid_inner_packet",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::InvalidMac => "invalid_mac",
            DropReason::HandshakeFailed => "handshake_failed",
            DropReason::StaleTimestamp => "stale_timestamp",
            DropReason::Flood => "flood",
            DropReason::RateLimited => "rate_limited",
            DropReason::UnexpectedMessage => "unexpected_message",
            DropReason::NoPrivateKey => "no_private_key",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::QueueFull => "queue_full",
            DropReason::StagedOverflow => "staged_overflow",
            DropReason::NoSession => "no_session",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What became of an IP packet from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// `buf[..len]` is a transport message to send to `destination`.
    Transmit {
        /// The peer's endpoint.
        destination: SocketAddr,
        /// Length of the message at the start of the buffer.
        len: usize,
    },
    /// Kept until a handshake completes; the datagrams it causes come from the device's outputs.
    Staged,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// What became of a datagram from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// `buf[HEADROOM..HEADROOM + len]` is an authentic IP packet from `peer` for the host.
    Packet {
        /// The sending peer.
        peer: PublicKey,
        /// Length of the IP packet.
        len: usize,
    },
    /// An authentic keepalive: nothing to deliver.
    Keepalive,
    /// A handshake message or cookie reply was handled, or queued for the control path; its
    /// answers come from the device's outputs.
    Handshake,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Something the driver may want to know or log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed and a new session is in use.
    HandshakeCompleted {
        /// The peer.
        peer: PublicKey,
    },
    /// The peer's endpoint moved (roaming), learned from an authenticated packet.
    EndpointChanged {
        /// The peer.
        peer: PublicKey,
        /// Its new address.
        endpoint: SocketAddr,
    },
    /// Handshake retries were exhausted; staged packets were dropped.
    HandshakeGaveUp {
        /// The peer.
        peer: PublicKey,
    },
    /// All keys of the peer were erased after a long time without a session.
    KeysZeroed {
        /// The peer.
        peer: PublicKey,
    },
}
