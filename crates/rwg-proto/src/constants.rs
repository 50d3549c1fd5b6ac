//! Every constant of the protocol, in one place (PROTOCOL.md §1, §4–§7; whitepaper §6.1).
//!
//! The wire layout (message types and lengths, field offsets) is the message format rather than
//! a rule, and lives with the message views in [`crate::messages`]. Limits that are choices of
//! this implementation, not of the protocol, are at the end, marked as such.

use core::time::Duration;

// ----- §5: transport -----

/// After this many messages under one keypair, the initiator starts a new handshake (2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter at or above this: 2^64 − 2^13 − 1. The sender
/// stops before it, so the counter can never wrap.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

// ----- §6: timers -----

/// The initiator of a keypair starts a new handshake when it is this old and it sends.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// No keypair is used, for sending or receiving, once it is this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A handshake is retried for this long before the peer is given up on.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// An unanswered initiation is retransmitted after this (plus jitter); also the least time
/// between two initiations to one peer.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A keepalive is sent this long after data was received if nothing went back.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmissions of an initiation before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_TIMER_HANDSHAKES: u32 = 18;
/// Upper bound (exclusive) of the random jitter added to the handshake timers.
pub const MAX_JITTER: Duration = Duration::from_millis(333);
/// All keys of a peer are erased this long after its last session was derived (3 × 180 s).
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(540);
/// A keypair we initiated is renewed on receive at this age, so that a peer that only
/// receives still gets a new session before REJECT_AFTER_TIME:
/// REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);
/// At most one initiation per peer is accepted in this interval (1 s / 50, §3).
pub const INITIATION_FLOOD_INTERVAL: Duration = Duration::from_millis(20);

// ----- §4: cookies and load -----

/// A responder's cookie secret is renewed, and a received cookie expires, after this long.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// An initiator stops using a cookie for mac2 this long after receiving it: a little before it
/// expires at the responder (the kernel's margin).
pub const COOKIE_USE_MAX_AGE: Duration = Duration::from_secs(120 - 5);
/// Handshake messages queued at or above this put a device under load (wireguard-go's figure;
/// the kernel's is 512): mac2 is then required and sources are rate limited.
pub const UNDER_LOAD_QUEUE_LEN: usize = 128;
/// A device stays under load this long after the queue was last that long.
pub const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);
/// Handshake messages per second a source may send under load once its burst is spent.
pub const RATE_LIMIT_PER_SECOND: u64 = 20;
/// Handshake messages a source may send at once under load.
pub const RATE_LIMIT_BURST: u64 = 5;

// ----- §5/§7: staging -----

/// Packets kept per peer while a handshake is pending; the oldest is dropped beyond this
/// (the kernel's MAX_STAGED_PACKETS).
pub const MAX_STAGED_PACKETS: usize = 128;

// ----- limits of this implementation (not protocol rules) -----

/// Handshake messages the data path queues for the control path; more are dropped (the
/// kernel's MAX_QUEUED_INCOMING_HANDSHAKES).
pub const MAX_QUEUED_HANDSHAKES: usize = 4096;
/// Queued handshake messages taken off the queue at once by
/// [`Device::handle_queued_handshakes`](crate::device::Device::handle_queued_handshakes): one
/// lock of the queue per chunk rather than per message, so that the data path, which appends
/// to it, rarely waits for it.
pub const HANDSHAKE_CHUNK: usize = 64;
/// Datagrams waiting in a device's outbox beyond this are dropped and counted.
pub const MAX_OUTBOX_DATAGRAMS: usize = 16_384;
/// Events waiting beyond this: the oldest is dropped.
pub const MAX_EVENTS: usize = 1024;
/// Peers whose timers [`Device::handle_timeout`](crate::device::Device::handle_timeout) handles
/// per call; the rest stay due, so one call's work and output stay bounded however many peers
/// fire at once (after a suspend, say).
pub const TIMER_BUDGET: usize = 1024;
/// The default MTU of a WireGuard interface.
pub const DEFAULT_MTU: usize = 1420;
