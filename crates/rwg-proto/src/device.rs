//! The interface: peers, cryptokey routing, indices, cookies and the sans-IO API
//! (`handle_*` inputs, `poll_*` outputs) described in the crate documentation.
//!
//! # Locks
//! Data packets must not serialize on a device-wide lock, so state is split:
//!
//! | lock | holds | taken by |
//! |---|---|---|
//! | `shared` (RwLock) | identity, peers, allowed IPs, MTU, wall clock | read: everything; write: configuration |
//! | `indices` (RwLock) | receiver index → handshake or keypair | read: the data path (once per batch); write: handshakes |
//! | `control` (Mutex) | RNG, cookie checker, rate limiter, load | handshakes and timers only |
//! | `Peer::state` (Mutex, per peer) | handshake, keypair slots, timers, staged packets | both paths, briefly |
//! | `outbox`, `handshake_queue` (Mutex) | queued datagrams and events | leaves: nothing is locked inside them |
//!
//! They are always taken in that order. A [`DataPath`] holds read guards of `shared` and
//! `indices` for a batch; anything on the data path that needs the write side (sending an
//! initiation, forgetting a keypair's index, answering a handshake) is deferred to
//! [`Device::handle_timeout`], which [`Device::poll_timeout`] then reports as due at once.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use rand_core::CryptoRngCore;

use crate::allowed_ips::AllowedIps;
use crate::cookie::{CookieChecker, MacVerdict};
use crate::crypto::{PresharedKey, PrivateKey, PublicKey, TAG_LEN};
use crate::index::IndexTable;
use crate::keypair::{padded_len, Keypair, PeerId};
use crate::messages::{
    self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};
use crate::noise::{self, RemoteStatic, StaticIdentity, Tai64N};
use crate::peer::{Peer, PeerState, INITIATION_FLOOD_INTERVAL};
use crate::ratelimiter::RateLimiter;
use crate::replay::REJECT_AFTER_MESSAGES;
use crate::sync::{Mutex, RwLock, RwLockReadGuard};
use crate::time::Instant;
use crate::timers::{
    Timer, KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_AFTER_TIME, REKEY_ON_RECEIVE_AGE,
    ZERO_KEY_MATERIAL_AFTER,
};

/// Bytes in front of an IP packet that [`DataPath::encapsulate`] needs for the transport header.
pub const HEADROOM: usize = TRANSPORT_HEADER_LEN;
/// Bytes after an IP packet that encapsulation may need: up to 15 bytes of padding and the tag.
pub const TAILROOM: usize = 15 + TAG_LEN;
/// The default MTU of a WireGuard interface.
pub const DEFAULT_MTU: usize = 1420;
/// Handshake messages queued by the data path beyond this are dropped.
pub const MAX_QUEUED_HANDSHAKES: usize = 4096;
/// Queued (or reported) handshakes at or above this put the device under load (wireguard-go's figure).
pub const UNDER_LOAD_QUEUE_LEN: usize = 128;
/// The device stays under load this long after the queue was last that long.
pub const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);
/// Datagrams waiting in the outbox beyond this are dropped (counted).
pub const MAX_OUTBOX: usize = 16_384;
/// Events waiting beyond this: the oldest is dropped.
pub const MAX_EVENTS: usize = 1024;
/// REKEY_AFTER_MESSAGES (2^60): after this many messages the initiator rekeys.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Why a datagram or packet was dropped. Each reason has a counter ([`Device::drop_counts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl DropReason {
    const COUNT: usize = 19;
    fn index(self) -> usize {
        self as usize
    }
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
    ];
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
    /// Kept until a handshake completes; the datagrams it causes come from `poll_transmit`.
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
    /// A handshake message or cookie reply was handled (or queued for [`Device::handle_timeout`]);
    /// answers come from `poll_transmit`.
    Handshake,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// A datagram to send, produced by [`Device::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length at the start of the caller's buffer.
    pub len: usize,
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

/// Sizes of a device's tables and queues ([`Device::stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    /// Configured peers.
    pub peers: usize,
    /// Entries in the receiver index table (handshakes in flight and keypairs).
    pub indices: usize,
    /// Packets staged across all peers.
    pub staged_packets: usize,
    /// Handshake messages queued by the data path.
    pub queued_handshakes: usize,
    /// Datagrams waiting for `poll_transmit`.
    pub outbox: usize,
    /// Events waiting for `poll_event`.
    pub events: usize,
}

/// A configuration call named a peer that does not exist, or an invalid prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No peer with that public key.
    UnknownPeer,
    /// The prefix length is too long for the address family.
    InvalidPrefix,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::UnknownPeer => "no such peer",
            ConfigError::InvalidPrefix => "invalid prefix length",
        })
    }
}

impl core::error::Error for ConfigError {}

/// What `wg show` needs to know of a peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its public key.
    pub public_key: PublicKey,
    /// Its preshared key (all zeros = none).
    pub preshared_key: PresharedKey,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Unix time of the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// UDP payload bytes sent to it.
    pub tx_bytes: u64,
    /// UDP payload bytes of authenticated packets received from it.
    pub rx_bytes: u64,
    /// Persistent keepalive interval in seconds (0 = off).
    pub persistent_keepalive: u16,
    /// Its allowed IPs (masked address, prefix length).
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

#[derive(Clone, Debug)]
enum IndexEntry {
    /// An initiation we sent and whose response we await.
    Handshake(PeerId),
    /// A session; weak so that keys are erased as soon as the peer's slots drop them.
    Keypair(Weak<Keypair>),
}

struct Shared {
    identity: Option<StaticIdentity>,
    peers: BTreeMap<PeerId, Arc<Peer>>,
    by_key: BTreeMap<PublicKey, PeerId>,
    allowed_ips: AllowedIps<PeerId>,
    next_peer_id: u64,
    mtu: usize,
    /// The UDP port the driver listens on: data for `get`, the core binds nothing.
    listen_port: u16,
    /// (monotonic, unix) at one moment: the wall clock is derived from the monotonic one.
    wall_clock: (Instant, Duration),
}

impl Shared {
    fn unix_time(&self, now: Instant) -> Duration {
        self.wall_clock.1 + (now - self.wall_clock.0)
    }
    fn peer_by_key(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.by_key.get(key).and_then(|id| self.peers.get(id))
    }
}

struct Control {
    rng: Box<dyn CryptoRngCore + Send>,
    cookie_checker: CookieChecker,
    rate_limiter: RateLimiter,
    reported_load: usize,
    under_load_until: Option<Instant>,
}

impl Control {
    fn under_load(&mut self, now: Instant, queued: usize) -> bool {
        if queued.max(self.reported_load) >= UNDER_LOAD_QUEUE_LEN {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER);
        }
        self.under_load_until.is_some_and(|t| now < t)
    }
}

#[derive(Default)]
struct Outbox {
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
}

struct QueuedHandshake {
    source: SocketAddr,
    bytes: Vec<u8>,
}

/// A WireGuard interface without I/O. See the crate documentation for how to drive it.
pub struct Device {
    shared: RwLock<Shared>,
    indices: RwLock<IndexTable<IndexEntry>>,
    control: Mutex<Control>,
    outbox: Mutex<Outbox>,
    handshake_queue: Mutex<VecDeque<QueuedHandshake>>,
    /// Set by the data path when it deferred work to `handle_timeout`.
    work_pending: AtomicBool,
    /// Set when a datagram or event was queued; cleared when `poll_transmit` finds none left.
    output_pending: AtomicBool,
    /// The deadline `poll_timeout` last reported, in nanoseconds (`u64::MAX`: none, or being
    /// computed). The data path arms timers; one earlier than this sets `deadline_moved`.
    reported_deadline: AtomicU64,
    /// A timer was armed before the deadline the driver sleeps until.
    deadline_moved: AtomicBool,
    drops: [AtomicU64; DropReason::COUNT],
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared.read();
        f.debug_struct("Device")
            .field(
                "public_key",
                &shared.identity.as_ref().map(|i| *i.public_key()),
            )
            .field("peers", &shared.peers.len())
            .finish_non_exhaustive()
    }
}

/// Locks the device takes for one handshake or timer pass.
struct ControlCtx<'a> {
    shared: &'a Shared,
    indices: &'a mut IndexTable<IndexEntry>,
    control: &'a mut Control,
}

impl Device {
    /// A device with no key and no peers. `rng` is the cryptographic RNG for ephemeral keys,
    /// indices and cookie secrets (the daemon passes the OS RNG; tests a seeded one).
    pub fn new(rng: Box<dyn CryptoRngCore + Send>) -> Self {
        Device {
            shared: RwLock::new(Shared {
                identity: None,
                peers: BTreeMap::new(),
                by_key: BTreeMap::new(),
                allowed_ips: AllowedIps::new(),
                next_peer_id: 0,
                mtu: DEFAULT_MTU,
                listen_port: 0,
                wall_clock: (Instant::ZERO, Duration::ZERO),
            }),
            indices: RwLock::new(IndexTable::new()),
            control: Mutex::new(Control {
                rng,
                cookie_checker: CookieChecker::new(None),
                rate_limiter: RateLimiter::new(),
                reported_load: 0,
                under_load_until: None,
            }),
            outbox: Mutex::new(Outbox::default()),
            handshake_queue: Mutex::new(VecDeque::new()),
            work_pending: AtomicBool::new(false),
            output_pending: AtomicBool::new(false),
            reported_deadline: AtomicU64::new(u64::MAX),
            deadline_moved: AtomicBool::new(false),
            drops: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    // ----- configuration (mirrors the configuration socket) -----

    /// Tells the device the wall-clock time (since the Unix epoch) at monotonic time `now`.
    /// TAI64N timestamps and last-handshake times are derived from it.
    pub fn set_unix_time(&self, now: Instant, unix: Duration) {
        self.shared.write().wall_clock = (now, unix);
    }

    /// Sets the interface MTU used for padding.
    pub fn set_mtu(&self, mtu: usize) {
        self.shared.write().mtu = mtu;
    }

    /// Records the UDP port the driver listens on (the core itself binds nothing), so that a
    /// configuration `get` can be answered from the device alone.
    pub fn set_listen_port(&self, port: u16) {
        self.shared.write().listen_port = port;
    }

    /// The port given to [`set_listen_port`](Self::set_listen_port).
    pub fn listen_port(&self) -> u16 {
        self.shared.read().listen_port
    }

    /// The private key, if set.
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.shared
            .read()
            .identity
            .as_ref()
            .map(|i| i.private_key().clone())
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.shared
            .read()
            .identity
            .as_ref()
            .map(|i| *i.public_key())
    }

    /// Sets (or, with `None` or an all-zero key, clears) the private key. Setting the same key
    /// again changes nothing. Otherwise every peer's static-static DH is recomputed, sending
    /// with existing sessions stops, handshakes in flight are forgotten, and a peer whose public
    /// key equals our new public key is removed.
    pub fn set_private_key(&self, key: Option<PrivateKey>) {
        let key = key.filter(|k| !k.is_zero());
        let mut shared = self.shared.write();
        if shared.identity.as_ref().map(|i| i.private_key()) == key.as_ref() {
            return;
        }
        let identity = key.map(StaticIdentity::new);
        let mut indices = self.indices.write();
        let mut control = self.control.lock();
        if let Some(own) = identity.as_ref().map(|i| *i.public_key()) {
            if let Some(id) = shared.by_key.get(&own).copied() {
                remove_peer_locked(&mut shared, &mut indices, id);
            }
        }
        control.cookie_checker = CookieChecker::new(identity.as_ref());
        for peer in shared.peers.values() {
            let mut ps = peer.state.lock();
            ps.remote.set_local(identity.as_ref());
            if let Some(h) = ps.handshake.take() {
                indices.remove(h.local_index);
            }
            ps.last_sent_handshake = None;
            for kp in [&ps.keypairs.current, &ps.keypairs.next]
                .into_iter()
                .flatten()
            {
                kp.invalidate_sending();
            }
        }
        shared.identity = identity;
    }

    /// Adds a peer if absent. Returns whether it was created.
    pub fn add_peer(&self, public_key: PublicKey) -> bool {
        let mut shared = self.shared.write();
        if shared.by_key.contains_key(&public_key) {
            return false;
        }
        let id = PeerId(shared.next_peer_id);
        shared.next_peer_id += 1;
        let remote = RemoteStatic::new(shared.identity.as_ref(), public_key, PresharedKey::none());
        let seed = self.control.lock().rng.next_u64();
        let peer = Peer {
            id,
            public_key,
            state: Mutex::new(PeerState::new(remote, seed)),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
        };
        shared.peers.insert(id, Arc::new(peer));
        shared.by_key.insert(public_key, id);
        true
    }

    /// Whether a peer with this key exists.
    pub fn has_peer(&self, public_key: &PublicKey) -> bool {
        self.shared.read().by_key.contains_key(public_key)
    }

    /// Removes a peer, its allowed IPs and sessions. Returns whether it existed.
    pub fn remove_peer(&self, public_key: &PublicKey) -> bool {
        let mut shared = self.shared.write();
        let Some(id) = shared.by_key.get(public_key).copied() else {
            return false;
        };
        let mut indices = self.indices.write();
        remove_peer_locked(&mut shared, &mut indices, id);
        true
    }

    /// Removes every peer.
    pub fn remove_all_peers(&self) {
        let mut shared = self.shared.write();
        let mut indices = self.indices.write();
        let ids: Vec<PeerId> = shared.peers.keys().copied().collect();
        for id in ids {
            remove_peer_locked(&mut shared, &mut indices, id);
        }
    }

    fn with_peer<R>(
        &self,
        public_key: &PublicKey,
        f: impl FnOnce(&Peer, &mut PeerState) -> R,
    ) -> Result<R, ConfigError> {
        let shared = self.shared.read();
        let peer = shared
            .peer_by_key(public_key)
            .ok_or(ConfigError::UnknownPeer)?;
        let mut ps = peer.state.lock();
        Ok(f(peer, &mut ps))
    }

    /// Sets a peer's preshared key (all zeros = none).
    pub fn set_preshared_key(
        &self,
        public_key: &PublicKey,
        psk: PresharedKey,
    ) -> Result<(), ConfigError> {
        self.with_peer(public_key, |_, ps| ps.remote.set_psk(psk))
    }

    /// Sets a peer's endpoint.
    pub fn set_endpoint(
        &self,
        public_key: &PublicKey,
        endpoint: SocketAddr,
    ) -> Result<(), ConfigError> {
        self.with_peer(public_key, |_, ps| ps.endpoint = Some(endpoint))
    }

    /// Sets a peer's persistent keepalive interval (0 = off). Turning it on sends a keepalive
    /// at once (or starts a handshake, whose datagrams come from `poll_transmit`).
    pub fn set_persistent_keepalive(
        &self,
        now: Instant,
        public_key: &PublicKey,
        seconds: u16,
    ) -> Result<(), ConfigError> {
        self.with_control(|ctx| {
            let peer = ctx
                .shared
                .peer_by_key(public_key)
                .ok_or(ConfigError::UnknownPeer)?;
            let mut ps = peer.state.lock();
            let was_off = ps.persistent_keepalive == 0;
            ps.persistent_keepalive = seconds;
            if seconds == 0 {
                ps.timers.stop(Timer::PersistentKeepalive);
            } else if was_off {
                self.send_keepalive(ctx, peer, &mut ps, now);
            }
            Ok(())
        })
    }

    /// Runs `f` on the routing table with the id of the peer named by `public_key`.
    fn with_routes<R>(
        &self,
        public_key: &PublicKey,
        f: impl FnOnce(&mut AllowedIps<PeerId>, PeerId) -> R,
    ) -> Result<R, ConfigError> {
        let mut shared = self.shared.write();
        let id = *shared
            .by_key
            .get(public_key)
            .ok_or(ConfigError::UnknownPeer)?;
        Ok(f(&mut shared.allowed_ips, id))
    }

    /// Adds an allowed IP to a peer; a prefix owned by another peer moves to this one.
    pub fn add_allowed_ip(
        &self,
        public_key: &PublicKey,
        addr: IpAddr,
        cidr: u8,
    ) -> Result<(), ConfigError> {
        self.with_routes(public_key, |routes, id| routes.insert(addr, cidr, id))?
            .map_err(|_| ConfigError::InvalidPrefix)
    }

    /// Removes one allowed IP of a peer (only if that peer owns it).
    pub fn remove_allowed_ip(
        &self,
        public_key: &PublicKey,
        addr: IpAddr,
        cidr: u8,
    ) -> Result<(), ConfigError> {
        self.with_routes(public_key, |routes, id| routes.remove(addr, cidr, id))?
            .map(|_| ())
            .map_err(|_| ConfigError::InvalidPrefix)
    }

    /// Removes all allowed IPs of a peer.
    pub fn clear_allowed_ips(&self, public_key: &PublicKey) -> Result<(), ConfigError> {
        self.with_routes(public_key, |routes, id| routes.remove_value(id))
    }

    /// Everything `wg show` needs, for every peer, in the order they were added.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let shared = self.shared.read();
        shared
            .peers
            .values()
            .map(|peer| {
                let ps = peer.state.lock();
                PeerInfo {
                    public_key: peer.public_key,
                    preshared_key: ps.remote.psk().clone(),
                    endpoint: ps.endpoint,
                    last_handshake: ps.last_handshake_unix,
                    tx_bytes: peer.tx_bytes.load(Ordering::Relaxed),
                    rx_bytes: peer.rx_bytes.load(Ordering::Relaxed),
                    persistent_keepalive: ps.persistent_keepalive,
                    allowed_ips: shared.allowed_ips.prefixes_of(peer.id).collect(),
                }
            })
            .collect()
    }

    /// Reports how many handshake messages the driver has queued; at [`UNDER_LOAD_QUEUE_LEN`]
    /// or more the device demands cookies (PROTOCOL.md §4).
    pub fn report_handshake_load(&self, queued: usize) {
        self.control.lock().reported_load = queued;
    }

    /// Sizes of the device's tables and queues, to watch memory.
    pub fn stats(&self) -> DeviceStats {
        let shared = self.shared.read();
        let staged = shared
            .peers
            .values()
            .map(|p| p.state.lock().staged.len())
            .sum();
        let indices = self.indices.read().len();
        let queued_handshakes = self.handshake_queue.lock().len();
        let outbox = self.outbox.lock();
        DeviceStats {
            peers: shared.peers.len(),
            indices,
            staged_packets: staged,
            queued_handshakes,
            outbox: outbox.transmits.len(),
            events: outbox.events.len(),
        }
    }

    /// How many datagrams and packets were dropped, per reason.
    pub fn drop_counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.drops[r.index()].load(Ordering::Relaxed)))
    }

    fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    // ----- inputs -----

    /// Begins a batch on the data path: lookups share one pair of read guards. Drop it before
    /// calling any other method of the device from the same thread.
    pub fn data_path(&self) -> DataPath<'_> {
        DataPath {
            device: self,
            shared: self.shared.read(),
            indices: self.indices.read(),
        }
    }

    /// Handles an IP packet from the host: `buf[HEADROOM..HEADROOM + packet_len]` holds it and
    /// `buf` must have [`TAILROOM`] more bytes after it. On [`Sent::Transmit`] the transport
    /// message is at the start of `buf`.
    pub fn handle_packet(&self, now: Instant, buf: &mut [u8], packet_len: usize) -> Sent {
        let sent = self.data_path().encapsulate(now, buf, packet_len);
        self.run_deferred(now);
        sent
    }

    /// Handles a datagram from `source`. On [`Received::Packet`] the IP packet is at
    /// `buf[HEADROOM..HEADROOM + len]`.
    pub fn handle_datagram(&self, now: Instant, source: SocketAddr, buf: &mut [u8]) -> Received {
        let received = match messages::parse(buf) {
            Ok(Message::Transport(_)) => self.data_path().decapsulate(now, source, buf),
            Ok(_) => {
                self.with_control(|ctx| self.handle_handshake_message(ctx, now, source, buf, 0))
            }
            Err(_) => self.dropped(DropReason::Malformed),
        };
        self.run_deferred(now);
        received
    }

    /// Takes the control path's locks in the documented order (shared, indices, control) and
    /// runs `f` with them; peer locks are taken inside.
    fn with_control<R>(&self, f: impl FnOnce(&mut ControlCtx<'_>) -> R) -> R {
        let shared = self.shared.read();
        let mut indices = self.indices.write();
        let mut control = self.control.lock();
        f(&mut ControlCtx {
            shared: &shared,
            indices: &mut indices,
            control: &mut control,
        })
    }

    fn run_deferred(&self, now: Instant) {
        if self.work_pending.load(Ordering::Acquire) {
            self.handle_timeout(now);
        }
    }

    fn dropped(&self, reason: DropReason) -> Received {
        self.count_drop(reason);
        Received::Dropped(reason)
    }

    /// Runs expired timers and deferred work (queued handshakes, initiations the data path asked
    /// for). Call it when `now` reaches [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&self, now: Instant) {
        self.work_pending.store(false, Ordering::Release);
        self.with_control(|ctx| self.run_control(ctx, now));
    }

    fn run_control(&self, ctx: &mut ControlCtx<'_>, now: Instant) {
        let shared = ctx.shared;

        // Indices of keypairs the data path dropped.
        ctx.indices.retain(|_, e| match e {
            IndexEntry::Keypair(w) => w.strong_count() > 0,
            IndexEntry::Handshake(_) => true,
        });

        // Bounded: only what was queued when we started.
        let queued = self.handshake_queue.lock().len();
        for _ in 0..queued {
            let Some(mut q) = self.handshake_queue.lock().pop_front() else {
                break;
            };
            let remaining = self.handshake_queue.lock().len();
            self.handle_handshake_message(ctx, now, q.source, &mut q.bytes, remaining);
        }

        for peer in shared.peers.values() {
            let mut ps = peer.state.lock();
            if core::mem::take(&mut ps.initiation_wanted) {
                self.send_initiation(ctx, peer, &mut ps, now, false);
            }
            let expired: Vec<Timer> = ps.timers.take_expired(now).collect();
            for timer in expired {
                self.on_timer(ctx, peer, &mut ps, now, timer);
            }
        }
    }

    /// The next moment `handle_timeout` must run, if any. A moment in the past (possibly
    /// [`Instant::ZERO`]) means "now".
    pub fn poll_timeout(&self) -> Option<Instant> {
        // While this computes, any timer the data path arms counts as earlier (MAX), so a
        // concurrent arming is never lost between reading a peer and publishing the result.
        self.deadline_moved.store(false, Ordering::Release);
        self.reported_deadline.store(u64::MAX, Ordering::Release);
        if self.work_pending.load(Ordering::Acquire) || !self.handshake_queue.lock().is_empty() {
            return Some(Instant::ZERO);
        }
        let shared = self.shared.read();
        let next = shared
            .peers
            .values()
            .filter_map(|p| p.state.lock().timers.next())
            .min();
        let nanos = next.map_or(u64::MAX, Instant::as_nanos);
        self.reported_deadline.store(nanos, Ordering::Release);
        next
    }

    /// Called by the data path after arming timers: flags a deadline earlier than the one the
    /// driver was told, so that [`needs_attention`](Self::needs_attention) wakes it.
    fn note_deadline(&self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if d.as_nanos() < self.reported_deadline.load(Ordering::Acquire) {
                self.deadline_moved.store(true, Ordering::Release);
            }
        }
    }

    /// The next datagram to send (handshakes, cookie replies, keepalives, staged packets),
    /// copied into `buf`. Datagrams longer than `buf` are dropped and counted.
    pub fn poll_transmit(&self, buf: &mut [u8]) -> Option<Transmit> {
        let mut outbox = self.outbox.lock();
        while let Some((destination, data)) = outbox.transmits.pop_front() {
            if let Some(dst) = buf.get_mut(..data.len()) {
                dst.copy_from_slice(&data);
                return Some(Transmit {
                    destination,
                    len: data.len(),
                });
            }
            self.count_drop(DropReason::BufferTooSmall);
        }
        if outbox.events.is_empty() {
            self.output_pending.store(false, Ordering::Release);
        }
        None
    }

    /// Whether the control side has something to do: deferred work for `handle_timeout`, or
    /// datagrams and events to poll. A cheap atomic load, meant to be checked by data-path
    /// threads after each batch to decide whether to wake the thread that drives the timers.
    pub fn needs_attention(&self) -> bool {
        self.work_pending.load(Ordering::Acquire)
            || self.output_pending.load(Ordering::Acquire)
            || self.deadline_moved.load(Ordering::Acquire)
    }

    /// The next event, if any.
    pub fn poll_event(&self) -> Option<Event> {
        let mut outbox = self.outbox.lock();
        let event = outbox.events.pop_front();
        if outbox.events.is_empty() && outbox.transmits.is_empty() {
            self.output_pending.store(false, Ordering::Release);
        }
        event
    }

    fn push_transmit(&self, destination: SocketAddr, data: Vec<u8>) {
        let mut outbox = self.outbox.lock();
        if outbox.transmits.len() >= MAX_OUTBOX {
            drop(outbox);
            self.count_drop(DropReason::QueueFull);
            return;
        }
        outbox.transmits.push_back((destination, data));
        self.output_pending.store(true, Ordering::Release);
    }

    fn push_event(&self, event: Event) {
        let mut outbox = self.outbox.lock();
        if outbox.events.len() >= MAX_EVENTS {
            outbox.events.pop_front();
        }
        outbox.events.push_back(event);
        self.output_pending.store(true, Ordering::Release);
    }

    // ----- the control path: handshakes and timers -----

    /// Handles an initiation, response or cookie reply (PROTOCOL.md §3, §4).
    fn handle_handshake_message(
        &self,
        ctx: &mut ControlCtx<'_>,
        now: Instant,
        source: SocketAddr,
        buf: &mut [u8],
        queued: usize,
    ) -> Received {
        let Some(identity) = ctx.shared.identity.as_ref() else {
            return self.dropped(DropReason::NoPrivateKey);
        };
        let msg = match messages::parse(buf) {
            Ok(m) => m,
            Err(_) => return self.dropped(DropReason::Malformed),
        };
        let sender_index = match msg {
            Message::CookieReply(reply) => return self.handle_cookie_reply(ctx, now, &reply),
            Message::Transport(_) => return self.dropped(DropReason::Malformed),
            Message::Initiation(m) => m.sender_index(),
            Message::Response(m) => m.sender_index(),
        };
        // mac1 always; mac2 and the rate limiter only under load.
        let control = &mut *ctx.control;
        let under_load = control.under_load(now, queued);
        match control
            .cookie_checker
            .verify(now, &mut *control.rng, buf, source, under_load)
        {
            MacVerdict::InvalidMac => return self.dropped(DropReason::InvalidMac),
            MacVerdict::ValidMacNoCookie => {
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                control.cookie_checker.create_reply(
                    now,
                    &mut *control.rng,
                    buf,
                    sender_index,
                    source,
                    &mut reply,
                );
                self.push_transmit(source, reply.to_vec());
                return Received::Handshake;
            }
            MacVerdict::ValidMacAndCookie => {
                if under_load && !control.rate_limiter.allow(now, source.ip()) {
                    return self.dropped(DropReason::RateLimited);
                }
            }
        }
        match msg {
            Message::Initiation(m) => self.handle_initiation(ctx, identity, now, source, &m),
            Message::Response(m) => self.handle_response(ctx, identity, now, source, &m),
            Message::CookieReply(_) | Message::Transport(_) => Received::Handshake,
        }
    }

    fn handle_initiation(
        &self,
        ctx: &mut ControlCtx<'_>,
        identity: &StaticIdentity,
        now: Instant,
        source: SocketAddr,
        msg: &messages::Initiation<'_>,
    ) -> Received {
        let Ok(part) = noise::consume_initiation(identity, msg) else {
            return self.dropped(DropReason::HandshakeFailed);
        };
        let Some(peer) = ctx.shared.peer_by_key(part.remote_static()) else {
            return self.dropped(DropReason::HandshakeFailed);
        };
        let mut ps = peer.state.lock();
        let Ok(received) = part.finish(&ps.remote, msg) else {
            return self.dropped(DropReason::HandshakeFailed);
        };
        // PROTOCOL.md §3: strictly newer timestamp, at most one per 20 ms; commit only after both.
        if received.timestamp <= ps.latest_timestamp {
            return self.dropped(DropReason::StaleTimestamp);
        }
        if ps
            .last_initiation_consumed
            .is_some_and(|t| now - t < INITIATION_FLOOD_INTERVAL)
        {
            return self.dropped(DropReason::Flood);
        }
        ps.latest_timestamp = received.timestamp;
        ps.last_initiation_consumed = Some(now);
        peer.rx_bytes
            .fetch_add(INITIATION_LEN as u64, Ordering::Relaxed);
        self.update_endpoint(peer, &mut ps, source);
        ps.on_authenticated_packet_received();
        ps.on_authenticated_packet_traversal(now);

        // Answering forgets our own initiation in flight, like the kernel's single handshake slot.
        if let Some(h) = ps.handshake.take() {
            ctx.indices.remove(h.local_index);
        }
        let remote_index = received.sender_index;
        let local_index = ctx
            .indices
            .insert(&mut *ctx.control.rng, IndexEntry::Handshake(peer.id));
        let mut reply = [0u8; RESPONSE_LEN];
        let keys = match noise::create_response(
            received,
            &ps.remote,
            local_index,
            &mut *ctx.control.rng,
            &mut reply,
        ) {
            Ok(k) => k,
            Err(_) => {
                ctx.indices.remove(local_index);
                return self.dropped(DropReason::HandshakeFailed);
            }
        };
        let mac1_key = ps.remote.mac1_key;
        ps.cookie.add_macs(now, &mac1_key, &mut reply);
        let keypair = Arc::new(Keypair::new(
            keys.send,
            keys.recv,
            now,
            false,
            local_index,
            remote_index,
            peer.id,
        ));
        if let Some(e) = ctx.indices.get_mut(local_index) {
            *e = IndexEntry::Keypair(Arc::downgrade(&keypair));
        }
        // Responder: the new keypair waits in `next` until the initiator uses it (§7).
        let slots = &mut ps.keypairs;
        for old in [slots.next.replace(keypair), slots.previous.take()]
            .into_iter()
            .flatten()
        {
            ctx.indices.remove(old.local_index);
        }
        ps.last_sent_handshake = Some(now);
        ps.on_session_derived(now);
        ps.on_authenticated_packet_traversal(now);
        ps.on_authenticated_packet_sent();
        peer.tx_bytes
            .fetch_add(RESPONSE_LEN as u64, Ordering::Relaxed);
        self.push_transmit(source, reply.to_vec());
        Received::Handshake
    }

    fn handle_response(
        &self,
        ctx: &mut ControlCtx<'_>,
        identity: &StaticIdentity,
        now: Instant,
        source: SocketAddr,
        msg: &messages::Response<'_>,
    ) -> Received {
        let local_index = msg.receiver_index();
        let Some(IndexEntry::Handshake(peer_id)) = ctx.indices.get(local_index).cloned() else {
            return self.dropped(DropReason::UnexpectedMessage);
        };
        let Some(peer) = ctx.shared.peers.get(&peer_id) else {
            return self.dropped(DropReason::UnexpectedMessage);
        };
        let mut ps = peer.state.lock();
        let keys = match ps.handshake.as_ref() {
            Some(state) if state.local_index == local_index => {
                match noise::consume_response(identity, &ps.remote, state, msg) {
                    Ok(keys) => keys,
                    Err(_) => return self.dropped(DropReason::HandshakeFailed),
                }
            }
            _ => return self.dropped(DropReason::UnexpectedMessage),
        };
        ps.handshake = None;
        let keypair = Arc::new(Keypair::new(
            keys.send,
            keys.recv,
            now,
            true,
            local_index,
            msg.sender_index(),
            peer.id,
        ));
        if let Some(e) = ctx.indices.get_mut(local_index) {
            *e = IndexEntry::Keypair(Arc::downgrade(&keypair));
        }
        // Initiator (§7): previous = next if present else current; current = new.
        let slots = &mut ps.keypairs;
        let old_current = slots.current.replace(keypair);
        let (new_previous, dropped) = match slots.next.take() {
            Some(next) => (Some(next), old_current),
            None => (old_current, None),
        };
        let old_previous = core::mem::replace(&mut slots.previous, new_previous);
        for old in [dropped, old_previous].into_iter().flatten() {
            ctx.indices.remove(old.local_index);
        }
        peer.rx_bytes
            .fetch_add(RESPONSE_LEN as u64, Ordering::Relaxed);
        self.update_endpoint(peer, &mut ps, source);
        ps.on_session_derived(now);
        ps.on_handshake_complete(ctx.shared.unix_time(now));
        ps.on_authenticated_packet_received();
        ps.on_authenticated_packet_traversal(now);
        self.push_event(Event::HandshakeCompleted {
            peer: peer.public_key,
        });
        // Key confirmation: send what waited, or a keepalive.
        if ps.staged.is_empty() {
            ps.staged.push_back(Vec::new());
        }
        self.flush_staged(ctx.shared, peer, &mut ps, now);
        Received::Handshake
    }

    fn handle_cookie_reply(
        &self,
        ctx: &mut ControlCtx<'_>,
        now: Instant,
        reply: &messages::CookieReply<'_>,
    ) -> Received {
        let peer_id = match ctx.indices.get(reply.receiver_index()) {
            Some(IndexEntry::Handshake(id)) => *id,
            Some(IndexEntry::Keypair(w)) => match w.upgrade() {
                Some(kp) => kp.peer,
                None => return self.dropped(DropReason::UnexpectedMessage),
            },
            None => return self.dropped(DropReason::UnexpectedMessage),
        };
        let Some(peer) = ctx.shared.peers.get(&peer_id) else {
            return self.dropped(DropReason::UnexpectedMessage);
        };
        let mut ps = peer.state.lock();
        let cookie_key = ps.remote.cookie_key;
        match ps.cookie.consume_reply(now, &cookie_key, reply) {
            Ok(()) => Received::Handshake,
            Err(_) => self.dropped(DropReason::HandshakeFailed),
        }
    }

    /// Sends an initiation unless one went out less than REKEY_TIMEOUT ago (§6).
    fn send_initiation(
        &self,
        ctx: &mut ControlCtx<'_>,
        peer: &Peer,
        ps: &mut PeerState,
        now: Instant,
        is_retry: bool,
    ) {
        if !is_retry {
            ps.handshake_attempts = 0;
        }
        if !ps.initiation_allowed(now) {
            return;
        }
        let (Some(identity), Some(endpoint)) = (ctx.shared.identity.as_ref(), ps.endpoint) else {
            return;
        };
        if !ps.remote.can_handshake() {
            return;
        }
        if let Some(old) = ps.handshake.take() {
            ctx.indices.remove(old.local_index);
        }
        let local_index = ctx
            .indices
            .insert(&mut *ctx.control.rng, IndexEntry::Handshake(peer.id));
        let timestamp = Tai64N::from_unix(ctx.shared.unix_time(now));
        let mut msg = [0u8; INITIATION_LEN];
        match noise::create_initiation(
            identity,
            &ps.remote,
            local_index,
            timestamp,
            &mut *ctx.control.rng,
            &mut msg,
        ) {
            Ok(state) => ps.handshake = Some(state),
            Err(_) => {
                ctx.indices.remove(local_index);
                return;
            }
        }
        let mac1_key = ps.remote.mac1_key;
        ps.cookie.add_macs(now, &mac1_key, &mut msg);
        ps.last_sent_handshake = Some(now);
        ps.on_authenticated_packet_traversal(now);
        ps.on_authenticated_packet_sent();
        ps.on_handshake_initiated(now);
        peer.tx_bytes
            .fetch_add(INITIATION_LEN as u64, Ordering::Relaxed);
        self.push_transmit(endpoint, msg.to_vec());
    }

    /// Sends a keepalive, staging it (and starting a handshake) if no session can send.
    fn send_keepalive(
        &self,
        ctx: &mut ControlCtx<'_>,
        peer: &Peer,
        ps: &mut PeerState,
        now: Instant,
    ) {
        if ps.staged.is_empty() {
            ps.staged.push_back(Vec::new());
        }
        if !self.flush_staged(ctx.shared, peer, ps, now) {
            self.send_initiation(ctx, peer, ps, now, false);
        }
    }

    /// Encrypts staged packets with the current keypair into the outbox. Returns false (and
    /// leaves them staged) if no keypair can send.
    fn flush_staged(&self, shared: &Shared, peer: &Peer, ps: &mut PeerState, now: Instant) -> bool {
        let Some(endpoint) = ps.endpoint else {
            return false;
        };
        while let Some(packet) = ps.staged.pop_front() {
            let Some(keypair) = ps.keypairs.current.clone().filter(|k| k.can_send(now)) else {
                ps.staged.push_front(packet);
                ps.initiation_wanted = true;
                self.work_pending.store(true, Ordering::Release);
                return false;
            };
            let Some(counter) = keypair.next_counter() else {
                ps.staged.push_front(packet);
                continue;
            };
            let padded = padded_len(packet.len(), shared.mtu);
            let mut out = vec![0u8; HEADROOM + padded + TAG_LEN];
            out[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
            let len = keypair.seal(counter, &mut out, packet.len(), padded);
            peer.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            self.after_send(ps, &keypair, counter, !packet.is_empty(), now);
            self.push_transmit(endpoint, out);
        }
        true
    }

    /// Timer hooks and the send-side rekey check after a transport message went out (§5, §6).
    fn after_send(
        &self,
        ps: &mut PeerState,
        keypair: &Keypair,
        counter: u64,
        is_data: bool,
        now: Instant,
    ) {
        ps.on_authenticated_packet_traversal(now);
        ps.on_authenticated_packet_sent();
        if is_data {
            ps.on_data_sent(now);
        }
        if counter >= REKEY_AFTER_MESSAGES
            || (keypair.is_initiator && keypair.age(now) >= REKEY_AFTER_TIME)
        {
            self.want_initiation(ps, now);
        }
    }

    fn want_initiation(&self, ps: &mut PeerState, now: Instant) {
        if ps.initiation_allowed(now) && !ps.initiation_wanted {
            ps.initiation_wanted = true;
            self.work_pending.store(true, Ordering::Release);
        }
    }

    fn update_endpoint(&self, peer: &Peer, ps: &mut PeerState, source: SocketAddr) {
        if ps.endpoint != Some(source) {
            ps.endpoint = Some(source);
            self.push_event(Event::EndpointChanged {
                peer: peer.public_key,
                endpoint: source,
            });
        }
    }

    fn on_timer(
        &self,
        ctx: &mut ControlCtx<'_>,
        peer: &Peer,
        ps: &mut PeerState,
        now: Instant,
        timer: Timer,
    ) {
        match timer {
            Timer::RetransmitHandshake => {
                if ps.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    ps.timers.stop(Timer::SendKeepalive);
                    ps.staged.clear();
                    if !ps.timers.is_set(Timer::ZeroKeyMaterial) {
                        ps.timers
                            .set(Timer::ZeroKeyMaterial, now + ZERO_KEY_MATERIAL_AFTER);
                    }
                    self.push_event(Event::HandshakeGaveUp {
                        peer: peer.public_key,
                    });
                } else {
                    ps.handshake_attempts += 1;
                    self.send_initiation(ctx, peer, ps, now, true);
                }
            }
            Timer::SendKeepalive => {
                self.send_keepalive(ctx, peer, ps, now);
                if core::mem::take(&mut ps.need_another_keepalive) {
                    ps.timers.set(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
                }
            }
            Timer::NewHandshake => self.send_initiation(ctx, peer, ps, now, false),
            Timer::ZeroKeyMaterial => {
                let slots = core::mem::take(&mut ps.keypairs);
                for kp in slots.iter() {
                    ctx.indices.remove(kp.local_index);
                }
                if let Some(h) = ps.handshake.take() {
                    ctx.indices.remove(h.local_index);
                }
                self.push_event(Event::KeysZeroed {
                    peer: peer.public_key,
                });
            }
            Timer::PersistentKeepalive => {
                if ps.persistent_keepalive > 0 {
                    self.send_keepalive(ctx, peer, ps, now);
                }
            }
        }
    }
}

fn remove_peer_locked(shared: &mut Shared, indices: &mut IndexTable<IndexEntry>, id: PeerId) {
    if let Some(peer) = shared.peers.remove(&id) {
        shared.by_key.remove(&peer.public_key);
        shared.allowed_ips.remove_value(id);
        let mut ps = peer.state.lock();
        if let Some(h) = ps.handshake.take() {
            indices.remove(h.local_index);
        }
        let slots = core::mem::take(&mut ps.keypairs);
        for kp in slots.iter() {
            indices.remove(kp.local_index);
        }
        ps.staged.clear();
        ps.timers.clear();
    }
}

/// A batch on the data path: read access to the routing table and the index table.
///
/// Encrypting and decrypting happen in the caller's buffers, in place, and never allocate. The
/// one-call forms are [`encapsulate`](Self::encapsulate) and [`decapsulate`](Self::decapsulate);
/// a driver that encrypts on several threads and must keep packets in order uses the split
/// forms: [`prepare_send`](Self::prepare_send) (in order) then [`SendJob::seal`] (anywhere);
/// [`prepare_receive`](Self::prepare_receive), [`ReceiveJob::open`] (anywhere), then
/// [`finish_receive`](Self::finish_receive).
pub struct DataPath<'a> {
    device: &'a Device,
    shared: RwLockReadGuard<'a, Shared>,
    indices: RwLockReadGuard<'a, IndexTable<IndexEntry>>,
}

impl fmt::Debug for DataPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPath").finish_non_exhaustive()
    }
}

/// A transport message ready to be sealed: keypair and counter are reserved.
pub struct SendJob {
    keypair: Arc<Keypair>,
    counter: u64,
    padded_len: usize,
    /// The peer's endpoint.
    pub destination: SocketAddr,
}

impl fmt::Debug for SendJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendJob")
            .field("counter", &self.counter)
            .field("destination", &self.destination)
            .finish()
    }
}

impl SendJob {
    /// Bytes the whole message occupies in the buffer.
    pub fn message_len(&self) -> usize {
        HEADROOM + self.padded_len + TAG_LEN
    }

    /// Encrypts in place: `buf[HEADROOM..HEADROOM + packet_len]` holds the packet given to
    /// `prepare_send`. Returns the message length (at the start of `buf`).
    pub fn seal(&self, buf: &mut [u8], packet_len: usize) -> usize {
        self.keypair
            .seal(self.counter, buf, packet_len, self.padded_len)
    }
}

/// A transport message whose keypair was found; decrypt it with [`open`](Self::open).
pub struct ReceiveJob {
    keypair: Arc<Keypair>,
    counter: u64,
    source: SocketAddr,
}

impl fmt::Debug for ReceiveJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveJob")
            .field("counter", &self.counter)
            .finish()
    }
}

impl ReceiveJob {
    /// Decrypts `buf` (the whole datagram) in place. No state changes: a forged message costs
    /// only the AEAD.
    pub fn open(&self, buf: &mut [u8]) -> Result<(), DropReason> {
        let body = buf
            .get_mut(TRANSPORT_HEADER_LEN..)
            .ok_or(DropReason::Malformed)?;
        self.keypair
            .open(self.counter, body)
            .map_err(|_| DropReason::Decrypt)
    }
}

impl DataPath<'_> {
    /// [`Device::handle_packet`] within this batch (deferred work waits for `handle_timeout`).
    pub fn encapsulate(&self, now: Instant, buf: &mut [u8], packet_len: usize) -> Sent {
        let Some(packet) = buf.get(HEADROOM..HEADROOM + packet_len) else {
            self.device.count_drop(DropReason::BufferTooSmall);
            return Sent::Dropped(DropReason::BufferTooSmall);
        };
        match self.prepare_send(now, packet, buf.len()) {
            Ok(job) => {
                let len = job.seal(buf, packet_len);
                Sent::Transmit {
                    destination: job.destination,
                    len,
                }
            }
            Err(sent) => sent,
        }
    }

    /// Routes `packet` and reserves a counter of the peer's current keypair, in the order
    /// packets must leave. `capacity` is the length of the buffer the packet will be sealed in.
    pub fn prepare_send(
        &self,
        now: Instant,
        packet: &[u8],
        capacity: usize,
    ) -> Result<SendJob, Sent> {
        let device = self.device;
        let drop = |reason| {
            device.count_drop(reason);
            Err(Sent::Dropped(reason))
        };
        let Some(destination) = ip_destination(packet) else {
            return drop(DropReason::InvalidInnerPacket);
        };
        let Some(peer) = self
            .shared
            .allowed_ips
            .lookup(destination)
            .and_then(|id| self.shared.peers.get(&id))
        else {
            return drop(DropReason::NoRoute);
        };
        let padded = padded_len(packet.len(), self.shared.mtu);
        if capacity < HEADROOM + padded + TAG_LEN {
            return drop(DropReason::BufferTooSmall);
        }
        let mut ps = peer.state.lock();
        let Some(endpoint) = ps.endpoint else {
            return drop(DropReason::NoEndpoint);
        };
        let job = ps
            .keypairs
            .current
            .clone()
            .filter(|k| ps.staged.is_empty() && k.can_send(now))
            .and_then(|keypair| keypair.next_counter().map(|counter| (keypair, counter)));
        let Some((keypair, counter)) = job else {
            if ps.stage(packet) {
                device.count_drop(DropReason::StagedOverflow);
            }
            device.want_initiation(&mut ps, now);
            return Err(Sent::Staged);
        };
        let len = HEADROOM + padded + TAG_LEN;
        peer.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        device.after_send(&mut ps, &keypair, counter, !packet.is_empty(), now);
        device.note_deadline(ps.timers.next());
        Ok(SendJob {
            keypair,
            counter,
            padded_len: padded,
            destination: endpoint,
        })
    }

    /// [`Device::handle_datagram`] within this batch. Handshake messages are queued for
    /// `handle_timeout` (the queue length is the device's load signal).
    pub fn decapsulate(&self, now: Instant, source: SocketAddr, buf: &mut [u8]) -> Received {
        let job = match self.prepare_receive(now, source, buf) {
            Ok(job) => job,
            Err(r) => return r,
        };
        if let Err(reason) = job.open(buf) {
            return self.device.dropped(reason);
        }
        self.finish_receive(now, job, buf)
    }

    /// Finds the keypair of a transport message. Other message types are queued for the
    /// control path and answered with `Err(Received::Handshake)`.
    pub fn prepare_receive(
        &self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
    ) -> Result<ReceiveJob, Received> {
        let device = self.device;
        let t = match messages::parse(buf) {
            Ok(Message::Transport(t)) => t,
            Ok(_) => {
                let mut queue = device.handshake_queue.lock();
                if queue.len() >= MAX_QUEUED_HANDSHAKES {
                    drop(queue);
                    return Err(device.dropped(DropReason::QueueFull));
                }
                queue.push_back(QueuedHandshake {
                    source,
                    bytes: buf.to_vec(),
                });
                device.work_pending.store(true, Ordering::Release);
                return Err(Received::Handshake);
            }
            Err(_) => return Err(device.dropped(DropReason::Malformed)),
        };
        let keypair = match self.indices.get(t.receiver_index()) {
            Some(IndexEntry::Keypair(w)) => w.upgrade(),
            _ => None,
        };
        let Some(keypair) = keypair else {
            return Err(device.dropped(DropReason::UnknownIndex));
        };
        if !keypair.can_receive(now) {
            return Err(device.dropped(DropReason::ExpiredKey));
        }
        Ok(ReceiveJob {
            keypair,
            counter: t.counter(),
            source,
        })
    }

    /// After [`ReceiveJob::open`] succeeded: the replay window, roaming, key confirmation,
    /// timers and the inner packet checks (PROTOCOL.md §5).
    pub fn finish_receive(&self, now: Instant, job: ReceiveJob, buf: &mut [u8]) -> Received {
        let device = self.device;
        let source = job.source;
        let counter = job.counter;
        if counter >= REJECT_AFTER_MESSAGES || !job.keypair.accept_counter(counter) {
            return device.dropped(DropReason::Replay);
        }
        let Some(peer) = self.shared.peers.get(&job.keypair.peer) else {
            return device.dropped(DropReason::UnknownIndex);
        };
        peer.rx_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut ps = peer.state.lock();
        device.update_endpoint(peer, &mut ps, source);

        // Key confirmation (§7): the first packet under `next` promotes it.
        if ps
            .keypairs
            .next
            .as_ref()
            .is_some_and(|n| Arc::ptr_eq(n, &job.keypair))
        {
            let slots = &mut ps.keypairs;
            slots.previous = slots.current.take();
            slots.current = slots.next.take();
            ps.on_handshake_complete(self.shared.unix_time(now));
            device.push_event(Event::HandshakeCompleted {
                peer: peer.public_key,
            });
            device.work_pending.store(true, Ordering::Release); // forget the old previous's index
            device.flush_staged(&self.shared, peer, &mut ps, now);
        }
        // Rekey on receive (§5): we initiated the current keypair and it is about to expire.
        let current_is_old = ps.keypairs.current.as_ref().is_some_and(|c| {
            Arc::ptr_eq(c, &job.keypair) && c.is_initiator && c.age(now) >= REKEY_ON_RECEIVE_AGE
        });
        if current_is_old && !ps.sent_lastminute_handshake {
            ps.sent_lastminute_handshake = true;
            device.want_initiation(&mut ps, now);
        }
        ps.on_authenticated_packet_received();
        ps.on_authenticated_packet_traversal(now);
        let plain_len = buf.len() - TRANSPORT_MIN_LEN;
        if plain_len == 0 {
            device.note_deadline(ps.timers.next());
            return Received::Keepalive;
        }
        ps.on_data_received(now);
        device.note_deadline(ps.timers.next());
        drop(ps);

        let inner = &buf[HEADROOM..HEADROOM + plain_len];
        let Some((src, len)) = ip_source_and_len(inner) else {
            return device.dropped(DropReason::InvalidInnerPacket);
        };
        if self.shared.allowed_ips.lookup(src) != Some(peer.id) {
            return device.dropped(DropReason::SourceNotAllowed);
        }
        Received::Packet {
            peer: peer.public_key,
            len,
        }
    }
}

/// The destination address of an IPv4 or IPv6 packet.
fn ip_destination(packet: &[u8]) -> Option<IpAddr> {
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

/// The source address and real length of a decrypted inner packet, checking its header
/// lengths (PROTOCOL.md §5).
fn ip_source_and_len(packet: &[u8]) -> Option<(IpAddr, usize)> {
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
    use alloc::vec;
    use rand_chacha::rand_core::SeedableRng;

    const A_ADDR: &str = "10.0.0.1:51820";
    const B_ADDR: &str = "10.0.0.2:51820";

    fn pair() -> (Device, Device, PublicKey) {
        let a = Device::new(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(1)));
        let b = Device::new(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(2)));
        let (ka, kb) = (
            PrivateKey::from_bytes([1; 32]),
            PrivateKey::from_bytes([2; 32]),
        );
        a.set_private_key(Some(ka.clone()));
        b.set_private_key(Some(kb.clone()));
        a.add_peer(kb.public_key());
        a.set_endpoint(&kb.public_key(), B_ADDR.parse().expect("addr"))
            .expect("peer");
        a.add_allowed_ip(&kb.public_key(), "192.168.4.2".parse().expect("ip"), 32)
            .expect("peer");
        b.add_peer(ka.public_key());
        b.add_allowed_ip(&ka.public_key(), "192.168.4.1".parse().expect("ip"), 32)
            .expect("peer");
        (a, b, kb.public_key())
    }

    /// A 28-byte IPv4 packet from A's tunnel address to B's.
    fn packet_buf() -> (vec::Vec<u8>, usize) {
        let mut buf = vec![0u8; 256];
        let p = &mut buf[HEADROOM..HEADROOM + 28];
        p[0] = 0x45;
        p[3] = 28;
        p[12..16].copy_from_slice(&[192, 168, 4, 1]);
        p[16..20].copy_from_slice(&[192, 168, 4, 2]);
        (buf, 28)
    }

    /// Delivers everything each device queued to the other until both are quiet.
    fn shuttle(a: &Device, b: &Device, now: Instant) {
        let mut buf = [0u8; 2048];
        for _ in 0..16 {
            let mut moved = false;
            for (from, from_addr, to) in [(a, A_ADDR, b), (b, B_ADDR, a)] {
                while let Some(t) = from.poll_transmit(&mut buf) {
                    moved = true;
                    to.handle_datagram(now, from_addr.parse().expect("addr"), &mut buf[..t.len]);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn current_keypair(d: &Device, peer: &PublicKey) -> Arc<Keypair> {
        let shared = d.shared.read();
        let p = shared.peer_by_key(peer).expect("peer");
        let kp = p.state.lock().keypairs.current.clone().expect("session");
        kp
    }

    fn initiations_queued(d: &Device) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Some(t) = d.poll_transmit(&mut buf) {
            n += usize::from(buf[0] == 1 && t.len == INITIATION_LEN);
        }
        n
    }

    #[test]
    fn timers_armed_on_the_data_path_wake_the_driver() {
        let (a, b, _) = pair();
        let now = Instant::from_nanos(1);
        let (mut buf, len) = packet_buf();
        a.handle_packet(now, &mut buf, len);
        shuttle(&a, &b, now);
        // 12 s later B's passive keepalive is long sent. The driver runs what is due, drains
        // its outputs and asks for the next deadline: the key erasure, minutes away.
        let quiet = now + Duration::from_secs(12);
        let mut out = [0u8; 2048];
        let told = loop {
            while b.poll_transmit(&mut out).is_some() {}
            while b.poll_event().is_some() {}
            let t = b.poll_timeout().expect("session timers");
            if t > quiet {
                break t;
            }
            b.handle_timeout(quiet);
        };
        assert!(!b.needs_attention());
        assert!(told > quiet + Duration::from_secs(60), "{told:?}");
        // Data received on the data path arms B's keepalive 10 s out, earlier than `told`:
        // the driver must be woken to sleep less.
        let later = quiet + Duration::from_millis(5);
        let (mut buf, len) = packet_buf();
        let Sent::Transmit { len: n, .. } = a.handle_packet(later, &mut buf, len) else {
            panic!("session")
        };
        let r = b
            .data_path()
            .decapsulate(later, A_ADDR.parse().expect("addr"), &mut buf[..n]);
        assert!(matches!(r, Received::Packet { .. }), "{r:?}");
        assert!(b.needs_attention());
        let told = b.poll_timeout().expect("keepalive");
        assert!(told <= later + crate::timers::KEEPALIVE_TIMEOUT);
        assert!(!b.needs_attention());
    }

    #[test]
    fn rekey_and_reject_after_messages() {
        // PROTOCOL.md §5: rekey once the counter passes REKEY_AFTER_MESSAGES; never send at or
        // beyond REJECT_AFTER_MESSAGES.
        let (a, b, pk_b) = pair();
        let now = Instant::from_nanos(1);
        let (mut buf, len) = packet_buf();
        assert_eq!(a.handle_packet(now, &mut buf, len), Sent::Staged);
        shuttle(&a, &b, now);
        let kp = current_keypair(&a, &pk_b);

        // Far from the limits: sending does not ask for a handshake.
        let later = now + Duration::from_secs(6); // past the REKEY_TIMEOUT gap
        let (mut buf, len) = packet_buf();
        assert!(matches!(
            a.handle_packet(later, &mut buf, len),
            Sent::Transmit { .. }
        ));
        assert_eq!(initiations_queued(&a), 0);

        // At REKEY_AFTER_MESSAGES the same send starts a new handshake.
        kp.set_send_counter(REKEY_AFTER_MESSAGES);
        let (mut buf, len) = packet_buf();
        assert!(matches!(
            a.handle_packet(later, &mut buf, len),
            Sent::Transmit { .. }
        ));
        assert_eq!(initiations_queued(&a), 1);

        // The last allowed counter is still used; after it, packets wait for a new session.
        kp.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        let (mut buf, len) = packet_buf();
        assert!(matches!(
            a.handle_packet(later, &mut buf, len),
            Sent::Transmit { .. }
        ));
        assert_eq!(
            u64::from_le_bytes(buf[8..16].try_into().expect("8")),
            REJECT_AFTER_MESSAGES - 1
        );
        let (mut buf, len) = packet_buf();
        assert_eq!(a.handle_packet(later, &mut buf, len), Sent::Staged);
        assert!(!kp.can_send(later));

        // The receiver refuses a correctly sealed message at the limit, after decrypting it.
        let (mut buf, len) = packet_buf();
        let sealed = kp.seal(REJECT_AFTER_MESSAGES, &mut buf, len, 32);
        let r = b.handle_datagram(later, A_ADDR.parse().expect("addr"), &mut buf[..sealed]);
        assert_eq!(r, Received::Dropped(DropReason::Replay));
    }
}
