//! The interface: many peers behind one key and one port. A [`Device`] demultiplexes — receiver
//! index → peer, allowed IPs → peer, the cookie checker and rate limiter at the door — holds the
//! locks, keeps one deadline queue for all peers, and applies the effects its peers push. Every
//! protocol rule is a method of [`Peer`] or lives in the module the crate
//! documentation names for it; none is here.
//!
//! # Locks
//! Data packets must not serialize on a device-wide lock, so state is split:
//!
//! | lock | holds | taken by |
//! |---|---|---|
//! | `shared` (RwLock) | identity, peers, allowed IPs, MTU, wall clock | read: everything; write: configuration |
//! | `indices` (RwLock) | receiver index → peer | read: the data path (once per batch), the handshake door; write: handshakes past the door, timers |
//! | `control` (Mutex) | RNG, cookie checker, rate limiter, load | handshakes, timers, configuration |
//! | each peer's (Mutex) | the peer's protocol state | both paths, briefly |
//! | `schedule` (Mutex) | the deadline queue | whoever changes a peer's earliest deadline to an earlier one |
//! | `handshakes`, `outbox`, `retired` (Mutex) | queued messages, outputs, indices to forget | leaves: nothing is locked inside them |
//!
//! They are always taken in that order. A [`DataPath`] holds read guards of `shared` and
//! `indices` for a batch. The data path never needs the write side: handshake messages it meets
//! are queued for [`Device::handle_queued_handshakes`], indices it retires (key confirmation)
//! are forgotten by the next control-path call, and handshakes it wants are noted in the peer,
//! whose deadline then becomes "now".
//!
//! # Timers
//! Each peer's earliest deadline ([`Peer::poll_timeout`](crate::peer::Peer::poll_timeout)) has an
//! entry in one ordered set keyed by (deadline, peer), so [`Device::poll_timeout`] is the first
//! entry — O(log n) in the number of peers, with no side effects — and
//! [`Device::handle_timeout`] visits only the peers that are due. An entry is replaced only when
//! a peer's deadline moves *earlier*; when it moves later the entry stays and, when it comes
//! due, the visit finds nothing to do and files the real deadline. So the data path touches the
//! queue only when it arms a timer earlier than any the peer had, not per packet.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use rand_core::CryptoRngCore;

use crate::allowed_ips::AllowedIps;
use crate::constants::{HANDSHAKE_CHUNK, TIMER_BUDGET, UNDER_LOAD_AFTER};
use crate::cookie::{CookieChecker, MacVerdict};
use crate::crypto::{PresharedKey, PrivateKey, PublicKey, TAG_LEN};
use crate::index::IndexTable;
use crate::messages::{
    self, CookieReply, Initiation, Message, Response, COOKIE_REPLY_LEN, INITIATION_LEN,
    RESPONSE_LEN,
};
use crate::noise::{self, StaticIdentity};
use crate::outbox::Outbox;
use crate::peer::{Context, Delivery, Peer, Sink};
use crate::ratelimiter::RateLimiter;
use crate::sync::{Mutex, RwLock, RwLockReadGuard};
use crate::time::Instant;

pub use crate::constants::{
    DEFAULT_MTU, MAX_QUEUED_HANDSHAKES, REKEY_AFTER_MESSAGES, UNDER_LOAD_QUEUE_LEN,
};
pub use crate::outbox::Transmit;
pub use crate::outcome::{DropReason, Event, Received, Sent};
pub use crate::peer::{HEADROOM, TAILROOM};

/// Identifies a peer inside a device. Never reused while the device lives; peers are listed in
/// the order of their ids, which is the order they were added.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PeerId(u64);

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
    /// Entries in the deadline queue.
    pub scheduled: usize,
}

/// What a device has done since it was created (monotonic counters, for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Handshake initiations sent (first attempts and retransmissions).
    pub initiations_sent: u64,
    /// Handshake responses sent (initiations accepted).
    pub responses_sent: u64,
    /// Cookie replies sent (under load, to initiations or responses without a valid mac2).
    pub cookie_replies_sent: u64,
    /// Handshakes completed (as initiator or responder).
    pub handshakes_completed: u64,
    /// Handshake messages (initiations, responses, cookie replies) received.
    pub handshake_messages_received: u64,
    /// Datagrams dropped because the outbox or the handshake queue was full.
    pub queue_drops: u64,
    /// Handshake retries given up on (after REKEY_ATTEMPT_TIME).
    pub handshakes_given_up: u64,
}

#[derive(Default)]
struct AtomicCounters {
    initiations_sent: AtomicU64,
    responses_sent: AtomicU64,
    cookie_replies_sent: AtomicU64,
    handshakes_completed: AtomicU64,
    handshake_messages_received: AtomicU64,
    handshakes_given_up: AtomicU64,
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

/// A peer and where its entry in the deadline queue is.
struct PeerCell {
    id: PeerId,
    public_key: PublicKey,
    state: Mutex<PeerState>,
}

struct PeerState {
    peer: Peer,
    /// The deadline of this peer's entry in the queue, if it has one.
    scheduled: Option<Instant>,
}

struct Shared {
    identity: Option<StaticIdentity>,
    peers: BTreeMap<PeerId, Arc<PeerCell>>,
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
    fn unix_time(&self, at: Instant) -> Duration {
        let (base, unix) = self.wall_clock;
        if at >= base {
            unix + (at - base)
        } else {
            unix.saturating_sub(base - at)
        }
    }
    fn peer_by_key(&self, key: &PublicKey) -> Option<&Arc<PeerCell>> {
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
    /// §4: under load while `queued` (or what the driver reported) is at the threshold, and
    /// for a second after.
    fn under_load(&mut self, now: Instant, queued: usize) -> bool {
        if queued.max(self.reported_load) >= UNDER_LOAD_QUEUE_LEN {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER);
        }
        self.under_load_until.is_some_and(|t| now < t)
    }
}

/// A handshake message the data path met, already parsed: its type is its variant.
enum QueuedMessage {
    Initiation([u8; INITIATION_LEN]),
    Response([u8; RESPONSE_LEN]),
    CookieReply([u8; COOKIE_REPLY_LEN]),
}

impl QueuedMessage {
    fn of(msg: &Message<'_>) -> Option<QueuedMessage> {
        Some(match msg {
            Message::Initiation(m) => QueuedMessage::Initiation(*m.array()),
            Message::Response(m) => QueuedMessage::Response(*m.array()),
            Message::CookieReply(m) => QueuedMessage::CookieReply(*m.array()),
            Message::Transport(_) => return None,
        })
    }
}

/// What the door ([`Device::admit`]) found out about a message it let in.
enum Admitted {
    /// An initiation whose static key was decrypted and belongs to a peer.
    Initiation(noise::InitiationStatic),
    /// A response, still to be matched to a handshake by its receiver index.
    Response,
}

/// A handshake message, borrowed, of one of the three handshake types.
#[derive(Clone, Copy)]
enum HandshakeMessage<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
}

impl<'a> HandshakeMessage<'a> {
    fn of_queued(q: &'a QueuedMessage) -> Self {
        match q {
            QueuedMessage::Initiation(a) => HandshakeMessage::Initiation(Initiation::from_array(a)),
            QueuedMessage::Response(a) => HandshakeMessage::Response(Response::from_array(a)),
            QueuedMessage::CookieReply(a) => {
                HandshakeMessage::CookieReply(CookieReply::from_array(a))
            }
        }
    }
}

/// Calls the driver back when the control path has new work: see [`Device::set_waker`].
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A WireGuard interface without I/O. See the crate documentation for how to drive it.
pub struct Device {
    shared: RwLock<Shared>,
    indices: RwLock<IndexTable<PeerId>>,
    control: Mutex<Control>,
    schedule: Mutex<BTreeSet<(Instant, PeerId)>>,
    handshakes: Mutex<VecDeque<(SocketAddr, QueuedMessage)>>,
    /// Length of `handshakes`, readable without its lock.
    queued_handshakes: AtomicUsize,
    outbox: Mutex<Outbox>,
    /// Set when a datagram or event was queued; cleared when the outbox is drained.
    output_pending: AtomicBool,
    /// Indices retired on the data path, forgotten by the next control-path call.
    retired: Mutex<Vec<u32>>,
    waker: Mutex<Option<Waker>>,
    drops: [AtomicU64; DropReason::COUNT],
    counters: AtomicCounters,
    /// splitmix64 state for peers' jitter seeds.
    jitter_state: AtomicU64,
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

/// The locks a handshake or timer pass holds.
struct ControlCtx<'a> {
    shared: &'a Shared,
    indices: &'a mut IndexTable<PeerId>,
    control: &'a mut Control,
}

/// The effects of a peer on the control path: indices change at once.
struct ControlSink<'a> {
    device: &'a Device,
    indices: &'a mut IndexTable<PeerId>,
    peer: PeerId,
}

impl Sink for ControlSink<'_> {
    fn allocate_index(&mut self, rng: &mut dyn CryptoRngCore) -> Option<u32> {
        Some(self.indices.insert(rng, self.peer))
    }
    fn retire_index(&mut self, index: u32) {
        if self.indices.get(index) == Some(&self.peer) {
            self.indices.remove(index);
        }
    }
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.device
            .push_transmit(destination, datagram, Some(self.peer));
    }
    fn event(&mut self, event: Event) {
        self.device.push_event(event);
    }
    fn dropped(&mut self, reason: DropReason) {
        self.device.count_drop(reason);
    }
}

/// The effects of a peer on the data path: no index is allocated, retired ones wait for the
/// control path.
struct DataSink<'a> {
    device: &'a Device,
    peer: PeerId,
}

impl Sink for DataSink<'_> {
    fn allocate_index(&mut self, _rng: &mut dyn CryptoRngCore) -> Option<u32> {
        None
    }
    fn retire_index(&mut self, index: u32) {
        self.device.retired.lock().push(index);
    }
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.device
            .push_transmit(destination, datagram, Some(self.peer));
    }
    fn event(&mut self, event: Event) {
        self.device.push_event(event);
    }
    fn dropped(&mut self, reason: DropReason) {
        self.device.count_drop(reason);
    }
}

impl Device {
    /// A device with no key and no peers. `rng` is the cryptographic RNG for ephemeral keys,
    /// indices and cookie secrets (the daemon passes the OS RNG; tests a seeded one).
    pub fn new(mut rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let jitter_state = AtomicU64::new(rng.next_u64());
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
            schedule: Mutex::new(BTreeSet::new()),
            handshakes: Mutex::new(VecDeque::new()),
            queued_handshakes: AtomicUsize::new(0),
            outbox: Mutex::new(Outbox::default()),
            output_pending: AtomicBool::new(false),
            retired: Mutex::new(Vec::new()),
            waker: Mutex::new(None),
            drops: core::array::from_fn(|_| AtomicU64::new(0)),
            counters: AtomicCounters::default(),
            jitter_state,
        }
    }

    /// Registers a function the device calls (from whichever thread) when the control path has
    /// new work: a handshake message was queued, an output was queued, or a peer's deadline
    /// moved earlier than any deadline before it. A driver that sleeps until
    /// [`poll_timeout`](Self::poll_timeout) wakes up there. The call happens with no lock held.
    pub fn set_waker(&self, waker: Option<Waker>) {
        *self.waker.lock() = waker;
    }

    fn wake(&self) {
        let waker = self.waker.lock().clone();
        if let Some(w) = waker {
            w();
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

    /// The interface MTU.
    pub fn mtu(&self) -> usize {
        self.shared.read().mtu
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
    /// again changes nothing. Otherwise a peer whose public key equals our new public key is
    /// removed, and every peer forgets its static-static DH, its handshake in flight and may no
    /// longer send with its sessions (PROTOCOL.md §6). Costs no X25519: the DH is recomputed
    /// when a handshake next needs it.
    pub fn set_private_key(&self, key: Option<PrivateKey>) {
        let key = key.filter(|k| !k.is_zero());
        let mut shared = self.shared.write();
        if shared.identity.as_ref().map(|i| i.private_key()) == key.as_ref() {
            return;
        }
        let identity = key.map(StaticIdentity::new);
        let mut indices = self.indices.write();
        let mut control = self.control.lock();
        self.forget_retired(&mut indices);
        if let Some(own) = identity.as_ref().map(|i| *i.public_key()) {
            if let Some(id) = shared.by_key.get(&own).copied() {
                self.remove_peer_locked(&mut shared, &mut indices, id);
            }
        }
        control.cookie_checker = CookieChecker::new(identity.as_ref());
        for cell in shared.peers.values() {
            let mut st = cell.state.lock();
            st.peer.identity_changed(&mut ControlSink {
                device: self,
                indices: &mut indices,
                peer: cell.id,
            });
        }
        shared.identity = identity;
    }

    /// Adds a peer if absent. Returns whether it was created.
    pub fn add_peer(&self, public_key: PublicKey) -> bool {
        let mut shared = self.shared.write();
        let id = PeerId(shared.next_peer_id);
        match shared.by_key.entry(public_key) {
            alloc::collections::btree_map::Entry::Occupied(_) => return false,
            alloc::collections::btree_map::Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        shared.next_peer_id += 1;
        let cell = PeerCell {
            id,
            public_key,
            state: Mutex::new(PeerState {
                peer: Peer::new(public_key, self.jitter_seed()),
                scheduled: None,
            }),
        };
        shared.peers.insert(id, Arc::new(cell));
        true
    }

    /// A seed for a new peer's timer jitter. Jitter needs no secrecy, only variety, so the
    /// seeds come from splitmix64 over one value drawn from the RNG when the device was made,
    /// instead of one call into the caller's RNG (a system call, for the OS RNG) per peer.
    fn jitter_seed(&self) -> u64 {
        let mut z = self
            .jitter_state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Whether a peer with this key exists.
    pub fn has_peer(&self, public_key: &PublicKey) -> bool {
        self.shared.read().by_key.contains_key(public_key)
    }

    /// Removes a peer, its allowed IPs and sessions. Returns whether it existed. Costs time in
    /// proportion to that peer's allowed IPs, not to the size of the device.
    pub fn remove_peer(&self, public_key: &PublicKey) -> bool {
        let mut shared = self.shared.write();
        let Some(id) = shared.by_key.get(public_key).copied() else {
            return false;
        };
        let mut indices = self.indices.write();
        self.remove_peer_locked(&mut shared, &mut indices, id);
        true
    }

    /// Removes every peer.
    pub fn remove_all_peers(&self) {
        let mut shared = self.shared.write();
        let mut indices = self.indices.write();
        let ids: Vec<PeerId> = shared.peers.keys().copied().collect();
        for id in ids {
            self.remove_peer_locked(&mut shared, &mut indices, id);
        }
    }

    fn remove_peer_locked(
        &self,
        shared: &mut Shared,
        indices: &mut IndexTable<PeerId>,
        id: PeerId,
    ) {
        let Some(cell) = shared.peers.remove(&id) else {
            return;
        };
        shared.by_key.remove(&cell.public_key);
        shared.allowed_ips.remove_value(id);
        let mut st = cell.state.lock();
        st.peer.remove(&mut ControlSink {
            device: self,
            indices,
            peer: id,
        });
        if let Some(at) = st.scheduled.take() {
            self.schedule.lock().remove(&(at, id));
        }
    }

    fn with_peer<R>(
        &self,
        public_key: &PublicKey,
        f: impl FnOnce(&mut Peer) -> R,
    ) -> Result<R, ConfigError> {
        let shared = self.shared.read();
        let cell = shared
            .peer_by_key(public_key)
            .ok_or(ConfigError::UnknownPeer)?;
        let mut st = cell.state.lock();
        Ok(f(&mut st.peer))
    }

    /// Sets a peer's preshared key (all zeros = none).
    pub fn set_preshared_key(
        &self,
        public_key: &PublicKey,
        psk: PresharedKey,
    ) -> Result<(), ConfigError> {
        self.with_peer(public_key, |p| p.set_preshared_key(psk))
    }

    /// Sets a peer's endpoint.
    pub fn set_endpoint(
        &self,
        public_key: &PublicKey,
        endpoint: SocketAddr,
    ) -> Result<(), ConfigError> {
        self.with_peer(public_key, |p| p.set_endpoint(Some(endpoint)))
    }

    /// Sets a peer's persistent keepalive interval (0 = off). Turning it on sends a keepalive
    /// at once (or starts a handshake, whose datagrams come from `poll_transmit`).
    pub fn set_persistent_keepalive(
        &self,
        now: Instant,
        public_key: &PublicKey,
        seconds: u16,
    ) -> Result<(), ConfigError> {
        self.on_peer_by_key(now, public_key, |peer, cx, sink| {
            peer.set_persistent_keepalive(cx, seconds, sink)
        })
    }

    /// Starts a handshake with a peer now (as `wg`'s users expect after a network change),
    /// unless one went out in the last REKEY_TIMEOUT.
    pub fn initiate_handshake(
        &self,
        now: Instant,
        public_key: &PublicKey,
    ) -> Result<(), ConfigError> {
        self.on_peer_by_key(now, public_key, |peer, cx, sink| peer.initiate(cx, sink))
    }

    /// Runs a command on the peer named by `public_key` on the control path.
    fn on_peer_by_key<R>(
        &self,
        now: Instant,
        public_key: &PublicKey,
        f: impl FnOnce(&mut Peer, &mut Context<'_>, &mut ControlSink<'_>) -> R,
    ) -> Result<R, ConfigError> {
        let id = self
            .shared
            .read()
            .by_key
            .get(public_key)
            .copied()
            .ok_or(ConfigError::UnknownPeer)?;
        self.with_control(|ctx| self.on_peer(ctx, now, id, f))
            .ok_or(ConfigError::UnknownPeer)
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

    fn info(&self, shared: &Shared, cell: &PeerCell) -> PeerInfo {
        let st = cell.state.lock();
        let p = &st.peer;
        PeerInfo {
            public_key: cell.public_key,
            preshared_key: p.preshared_key().clone(),
            endpoint: p.endpoint(),
            last_handshake: p.last_handshake().map(|t| shared.unix_time(t)),
            tx_bytes: p.tx_bytes(),
            rx_bytes: p.rx_bytes(),
            persistent_keepalive: p.persistent_keepalive(),
            allowed_ips: shared.allowed_ips.prefixes_of(cell.id),
        }
    }

    /// Everything `wg show` needs, for every peer, in the order they were added. Linear in
    /// the number of peers and allowed IPs.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let shared = self.shared.read();
        shared
            .peers
            .values()
            .map(|cell| self.info(&shared, cell))
            .collect()
    }

    /// What `wg show` needs of one peer.
    pub fn peer(&self, public_key: &PublicKey) -> Option<PeerInfo> {
        let shared = self.shared.read();
        let cell = shared.peer_by_key(public_key)?;
        Some(self.info(&shared, cell))
    }

    /// Reports how many handshake messages the driver has queued itself; at
    /// [`UNDER_LOAD_QUEUE_LEN`] or more (added to
    /// the device's own queue) the device demands cookies (PROTOCOL.md §4).
    pub fn report_handshake_load(&self, queued: usize) {
        self.control.lock().reported_load = queued;
    }

    /// Sizes of the device's tables and queues, to watch memory. Visits every peer.
    pub fn stats(&self) -> DeviceStats {
        let shared = self.shared.read();
        let staged = shared
            .peers
            .values()
            .map(|c| c.state.lock().peer.staged_len())
            .sum();
        let indices = self.indices.read().len();
        let outbox = self.outbox.lock();
        DeviceStats {
            peers: shared.peers.len(),
            indices,
            staged_packets: staged,
            queued_handshakes: self.queued_handshakes.load(Ordering::Relaxed),
            outbox: outbox.datagrams(),
            events: outbox.events(),
            scheduled: self.schedule.lock().len(),
        }
    }

    /// How many datagrams and packets were dropped, per reason.
    pub fn drop_counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.drops[r.index()].load(Ordering::Relaxed)))
    }

    /// What the device has done so far (handshakes, cookie replies; drops are in
    /// [`drop_counts`](Self::drop_counts)).
    pub fn counters(&self) -> Counters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            initiations_sent: get(&c.initiations_sent),
            responses_sent: get(&c.responses_sent),
            cookie_replies_sent: get(&c.cookie_replies_sent),
            handshakes_completed: get(&c.handshakes_completed),
            handshake_messages_received: get(&c.handshake_messages_received),
            queue_drops: self.drops[DropReason::QueueFull.index()].load(Ordering::Relaxed),
            handshakes_given_up: get(&c.handshakes_given_up),
        }
    }

    fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason) -> Received {
        self.count_drop(reason);
        Received::Dropped(reason)
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
    ///
    /// The one-packet convenience form: it also runs whatever became due (a staged packet's
    /// handshake), as [`handle_timeout`](Self::handle_timeout) would. Batching drivers use
    /// [`data_path`](Self::data_path).
    pub fn handle_packet(&self, now: Instant, buf: &mut [u8], packet_len: usize) -> Sent {
        let sent = self.data_path().encapsulate(now, buf, packet_len);
        self.run_due(now);
        sent
    }

    /// Handles a datagram from `source`. On [`Received::Packet`] the IP packet is at
    /// `buf[HEADROOM..HEADROOM + len]`. A handshake message is handled at once (the one-packet
    /// convenience form; batching drivers queue them with [`DataPath::decapsulate`]), and
    /// whatever became due runs too.
    pub fn handle_datagram(&self, now: Instant, source: SocketAddr, buf: &mut [u8]) -> Received {
        let received = match messages::parse(buf) {
            Ok(Message::Transport(_)) => self.data_path().decapsulate(now, source, buf),
            Ok(Message::Initiation(m)) => {
                self.handle_handshake_now(now, source, HandshakeMessage::Initiation(m))
            }
            Ok(Message::Response(m)) => {
                self.handle_handshake_now(now, source, HandshakeMessage::Response(m))
            }
            Ok(Message::CookieReply(m)) => {
                self.handle_handshake_now(now, source, HandshakeMessage::CookieReply(m))
            }
            Err(_) => self.dropped(DropReason::Malformed),
        };
        self.run_due(now);
        received
    }

    fn handle_handshake_now(
        &self,
        now: Instant,
        source: SocketAddr,
        msg: HandshakeMessage<'_>,
    ) -> Received {
        let queued = self.queued_handshakes.load(Ordering::Relaxed);
        self.with_control(|ctx| {
            match self.admit(
                ctx.shared,
                ctx.indices,
                ctx.control,
                now,
                source,
                msg,
                queued,
            ) {
                Ok(a) => self.consume_admitted(ctx, now, source, msg, a),
                Err(r) => r,
            }
        })
    }

    fn run_due(&self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.handle_timeout(now);
        }
    }

    /// Handles the handshake messages the data path queued ([`DataPath::decapsulate`] returned
    /// [`Received::Handshake`] for them), at most as many as were queued when it started.
    /// Returns how many it handled. Their number while they wait is the load signal that turns
    /// cookies on (PROTOCOL.md §4).
    ///
    /// A flood must not stall the data path, which takes the index table's read lock for every
    /// batch: so messages are taken off the queue [`HANDSHAKE_CHUNK`] at a time, and the door
    /// (mac1, mac2, cookie replies, the rate limiter, an initiation's static key) runs under
    /// read locks only. The index table's write lock is taken only for the few messages that
    /// pass the door and reach a peer.
    pub fn handle_queued_handshakes(&self, now: Instant) -> usize {
        let queued = self.queued_handshakes.load(Ordering::Acquire);
        if queued == 0 {
            return 0;
        }
        let mut chunk: Vec<(SocketAddr, QueuedMessage)> =
            Vec::with_capacity(queued.min(HANDSHAKE_CHUNK));
        let mut admitted: Vec<(SocketAddr, QueuedMessage, Admitted)> = Vec::new();
        let mut handled = 0;
        while handled < queued {
            let left_after_chunk = {
                let mut q = self.handshakes.lock();
                let n = HANDSHAKE_CHUNK.min(queued - handled).min(q.len());
                chunk.extend(q.drain(..n));
                self.queued_handshakes.store(q.len(), Ordering::Release);
                q.len()
            };
            if chunk.is_empty() {
                break;
            }
            handled += chunk.len();
            {
                let shared = self.shared.read();
                let indices = self.indices.read();
                let mut control = self.control.lock();
                let n = chunk.len();
                for (i, (source, msg)) in chunk.drain(..).enumerate() {
                    // What was still queued behind this message: the load signal.
                    let waiting = left_after_chunk + (n - 1 - i);
                    let m = HandshakeMessage::of_queued(&msg);
                    let door = self.admit(&shared, &indices, &mut control, now, source, m, waiting);
                    if let Ok(a) = door {
                        admitted.push((source, msg, a));
                    }
                }
            }
            if !admitted.is_empty() {
                self.with_control(|ctx| {
                    for (source, msg, a) in admitted.drain(..) {
                        let m = HandshakeMessage::of_queued(&msg);
                        self.consume_admitted(ctx, now, source, m, a);
                    }
                });
            }
        }
        handled
    }

    /// Whether handshake messages wait for [`handle_queued_handshakes`](Self::handle_queued_handshakes).
    pub fn has_queued_handshakes(&self) -> bool {
        self.queued_handshakes.load(Ordering::Acquire) > 0
    }

    /// Takes the control path's locks in the documented order (shared, indices, control) and
    /// runs `f` with them; peer locks are taken inside.
    fn with_control<R>(&self, f: impl FnOnce(&mut ControlCtx<'_>) -> R) -> R {
        let shared = self.shared.read();
        let mut indices = self.indices.write();
        let mut control = self.control.lock();
        self.forget_retired(&mut indices);
        f(&mut ControlCtx {
            shared: &shared,
            indices: &mut indices,
            control: &mut control,
        })
    }

    fn forget_retired(&self, indices: &mut IndexTable<PeerId>) {
        let retired = core::mem::take(&mut *self.retired.lock());
        for index in retired {
            indices.remove(index);
        }
    }

    /// Runs `f` on one peer on the control path with a context and a sink, then files its
    /// next deadline. `None` if the peer is gone.
    fn on_peer<R>(
        &self,
        ctx: &mut ControlCtx<'_>,
        now: Instant,
        id: PeerId,
        f: impl FnOnce(&mut Peer, &mut Context<'_>, &mut ControlSink<'_>) -> R,
    ) -> Option<R> {
        let shared = ctx.shared;
        let cell = shared.peers.get(&id)?;
        let mut st = cell.state.lock();
        let mut cx = Context {
            now,
            unix_time: shared.unix_time(now),
            identity: shared.identity.as_ref(),
            rng: &mut *ctx.control.rng,
            mtu: shared.mtu,
        };
        let mut sink = ControlSink {
            device: self,
            indices: ctx.indices,
            peer: id,
        };
        let r = f(&mut st.peer, &mut cx, &mut sink);
        self.reschedule(id, &mut st);
        Some(r)
    }

    /// Files the peer's earliest deadline in the queue if it is earlier than its entry there
    /// (see "Timers" above). Called with the peer's lock held.
    fn reschedule(&self, id: PeerId, st: &mut PeerState) {
        let Some(want) = st.peer.poll_timeout() else {
            return;
        };
        if st.scheduled.is_some_and(|s| s <= want) {
            return;
        }
        let earliest = {
            let mut schedule = self.schedule.lock();
            if let Some(old) = st.scheduled {
                schedule.remove(&(old, id));
            }
            let earliest = schedule.first().is_none_or(|&(first, _)| want < first);
            schedule.insert((want, id));
            earliest
        };
        st.scheduled = Some(want);
        if earliest {
            self.wake();
        }
    }

    /// Runs the timers of the peers that are due at `now` (PROTOCOL.md §6), at most
    /// [`TIMER_BUDGET`] peers per call: if more are due, [`poll_timeout`](Self::poll_timeout)
    /// stays in the past and the driver calls again after sending what this call produced.
    pub fn handle_timeout(&self, now: Instant) {
        self.with_control(|ctx| {
            for _ in 0..TIMER_BUDGET {
                let due = {
                    let mut schedule = self.schedule.lock();
                    match schedule.first() {
                        Some(&(at, id)) if at <= now => {
                            schedule.pop_first();
                            Some((at, id))
                        }
                        _ => None,
                    }
                };
                let Some((at, id)) = due else { break };
                let Some(cell) = ctx.shared.peers.get(&id) else {
                    continue;
                };
                {
                    let mut st = cell.state.lock();
                    if st.scheduled == Some(at) {
                        st.scheduled = None;
                    }
                }
                self.on_peer(ctx, now, id, |peer, cx, sink| peer.handle_timeout(cx, sink));
            }
        });
    }

    /// The next moment [`handle_timeout`](Self::handle_timeout) must run, if any: the first
    /// entry of the deadline queue (a moment in the past means "now"). No side effects;
    /// O(log n) in the number of peers. Queued handshake messages are not a timeout: see
    /// [`has_queued_handshakes`](Self::has_queued_handshakes).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.lock().first().map(|&(at, _)| at)
    }

    /// The next datagram to send (handshakes, cookie replies, keepalives, staged packets),
    /// copied into `buf`. Datagrams longer than `buf` are dropped and counted.
    pub fn poll_transmit(&self, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_transmit_batch(buf, 1)
    }

    /// The next datagrams to one destination, copied back to back into `buf` for one GSO send:
    /// up to `max_segments` of them, each [`Transmit::segment_size`] long except possibly the
    /// last. Datagrams longer than `buf` are dropped and counted.
    pub fn poll_transmit_batch(&self, buf: &mut [u8], max_segments: usize) -> Option<Transmit> {
        let mut outbox = self.outbox.lock();
        let (transmit, too_long) = outbox.pop_batch(buf, max_segments);
        if outbox.is_empty() {
            self.output_pending.store(false, Ordering::Release);
        }
        drop(outbox);
        for _ in 0..too_long {
            self.count_drop(DropReason::BufferTooSmall);
        }
        transmit
    }

    /// The next event, if any.
    pub fn poll_event(&self) -> Option<Event> {
        let mut outbox = self.outbox.lock();
        let event = outbox.pop_event();
        if outbox.is_empty() {
            self.output_pending.store(false, Ordering::Release);
        }
        event
    }

    /// The socket did not take `bytes` of what was counted as sent to `peer` (a send failed):
    /// its `tx_bytes` goes back down, so that it counts only what went out, as the kernel's
    /// does. The peer is named by [`Transmit::peer`] for datagrams from the outbox and by
    /// [`SendJob::peer`] on the data path; a caller of the one-shot
    /// [`handle_packet`](Self::handle_packet) that needs this exactness uses
    /// [`data_path`](Self::data_path) instead.
    pub fn report_unsent(&self, peer: PeerId, bytes: u64) {
        let shared = self.shared.read();
        if let Some(cell) = shared.peers.get(&peer) {
            cell.state.lock().peer.uncount_tx(bytes);
        }
    }

    /// Whether datagrams or events wait to be polled. A cheap atomic load.
    pub fn has_output(&self) -> bool {
        self.output_pending.load(Ordering::Acquire)
    }

    fn push_transmit(&self, destination: SocketAddr, datagram: &[u8], peer: Option<PeerId>) {
        // Counted by type here, the one place every handshake message leaves through.
        let c = &self.counters;
        match datagram.first() {
            Some(1) => c.initiations_sent.fetch_add(1, Ordering::Relaxed),
            Some(2) => c.responses_sent.fetch_add(1, Ordering::Relaxed),
            Some(3) => c.cookie_replies_sent.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let queued = self.outbox.lock().push(destination, datagram, peer);
        if !queued {
            self.count_drop(DropReason::QueueFull);
            return;
        }
        if !self.output_pending.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    fn push_event(&self, event: Event) {
        match event {
            Event::HandshakeCompleted { .. } => {
                self.counters
                    .handshakes_completed
                    .fetch_add(1, Ordering::Relaxed);
            }
            Event::HandshakeGaveUp { .. } => {
                self.counters
                    .handshakes_given_up
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.outbox.lock().push_event(event);
        if !self.output_pending.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    // ----- the control path: the door for handshake messages -----

    /// The door for an initiation, response or cookie reply (PROTOCOL.md §3, §4): mac1 always;
    /// under load mac2 (else a cookie reply) and the rate limiter; an initiation's static key
    /// must be a peer's. A cookie reply is consumed here. Needs no write lock: `Ok` is what
    /// [`consume_admitted`](Self::consume_admitted) still has to do, `Err` the outcome.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        shared: &Shared,
        indices: &IndexTable<PeerId>,
        control: &mut Control,
        now: Instant,
        source: SocketAddr,
        msg: HandshakeMessage<'_>,
        queued: usize,
    ) -> Result<Admitted, Received> {
        self.counters
            .handshake_messages_received
            .fetch_add(1, Ordering::Relaxed);
        let Some(identity) = shared.identity.as_ref() else {
            return Err(self.dropped(DropReason::NoPrivateKey));
        };
        let (bytes, sender_index) = match msg {
            HandshakeMessage::CookieReply(reply) => {
                // §4: found among handshakes and keypairs by index; no macs on a cookie reply.
                let Some(&id) = indices.get(reply.receiver_index()) else {
                    return Err(self.dropped(DropReason::UnexpectedMessage));
                };
                let result = shared
                    .peers
                    .get(&id)
                    .map(|cell| cell.state.lock().peer.consume_cookie_reply(now, &reply));
                return Err(match result {
                    Some(Ok(())) => Received::Handshake,
                    Some(Err(r)) => self.dropped(r),
                    None => self.dropped(DropReason::UnexpectedMessage),
                });
            }
            HandshakeMessage::Initiation(m) => (m.bytes(), m.sender_index()),
            HandshakeMessage::Response(m) => (m.bytes(), m.sender_index()),
        };
        let under_load = control.under_load(now, queued);
        match control
            .cookie_checker
            .verify(now, &mut *control.rng, bytes, source, under_load)
        {
            MacVerdict::InvalidMac => return Err(self.dropped(DropReason::InvalidMac)),
            MacVerdict::ValidMacNoCookie => {
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                control.cookie_checker.create_reply(
                    now,
                    &mut *control.rng,
                    bytes,
                    sender_index,
                    source,
                    &mut reply,
                );
                self.push_transmit(source, &reply, None);
                return Err(Received::Handshake);
            }
            MacVerdict::ValidMacAndCookie => {
                if under_load && !control.rate_limiter.allow(now, source.ip()) {
                    return Err(self.dropped(DropReason::RateLimited));
                }
            }
        }
        match msg {
            HandshakeMessage::Initiation(m) => match noise::consume_initiation(identity, &m) {
                Ok(part) if shared.by_key.contains_key(part.remote_static()) => {
                    Ok(Admitted::Initiation(part))
                }
                _ => Err(self.dropped(DropReason::HandshakeFailed)),
            },
            _ => Ok(Admitted::Response),
        }
    }

    /// The rest of a message the door let in: the peer it belongs to handles it.
    fn consume_admitted(
        &self,
        ctx: &mut ControlCtx<'_>,
        now: Instant,
        source: SocketAddr,
        msg: HandshakeMessage<'_>,
        admitted: Admitted,
    ) -> Received {
        let result = match (msg, admitted) {
            (HandshakeMessage::Initiation(m), Admitted::Initiation(part)) => {
                // Looked up again: the peer may have been removed since the door.
                match ctx.shared.by_key.get(part.remote_static()).copied() {
                    None => Err(DropReason::HandshakeFailed),
                    Some(id) => self
                        .on_peer(ctx, now, id, |peer, cx, sink| {
                            peer.consume_initiation(cx, part, &m, source, sink)
                        })
                        .unwrap_or(Err(DropReason::HandshakeFailed)),
                }
            }
            (HandshakeMessage::Response(m), _) => {
                match ctx.indices.get(m.receiver_index()).copied() {
                    None => Err(DropReason::UnexpectedMessage),
                    Some(id) => self
                        .on_peer(ctx, now, id, |peer, cx, sink| {
                            peer.consume_response(cx, &m, source, sink)
                        })
                        .unwrap_or(Err(DropReason::UnexpectedMessage)),
                }
            }
            // The door lets in only initiations (with their static key) and responses.
            _ => Err(DropReason::HandshakeFailed),
        };
        match result {
            Ok(()) => Received::Handshake,
            Err(r) => self.dropped(r),
        }
    }
}

/// A batch on the data path: read access to the routing table and the index table.
///
/// Encrypting and decrypting happen in the caller's buffers, in place, and never allocate. The
/// one-call forms are [`encapsulate`](Self::encapsulate) and [`decapsulate`](Self::decapsulate);
/// a driver that encrypts on several threads and must keep packets in order uses the split
/// forms: [`prepare_send`](Self::prepare_send) (in order) then [`SendJob::seal`] (anywhere);
/// [`prepare_receive`](Self::prepare_receive), [`ReceiveJob::open`] (anywhere), then
/// [`finish_receive`](Self::finish_receive) (in order, per peer).
pub struct DataPath<'a> {
    device: &'a Device,
    shared: RwLockReadGuard<'a, Shared>,
    indices: RwLockReadGuard<'a, IndexTable<PeerId>>,
}

impl fmt::Debug for DataPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPath").finish_non_exhaustive()
    }
}

/// A transport message ready to be sealed: counter reserved, key copied. Seal it on any thread.
#[derive(Debug)]
pub struct SendJob {
    inner: crate::peer::SendJob,
    peer: PeerId,
    /// The peer's endpoint.
    pub destination: SocketAddr,
}

impl SendJob {
    /// Bytes the whole message occupies in the buffer.
    pub fn message_len(&self) -> usize {
        self.inner.message_len()
    }

    /// The counter (nonce) reserved for this message.
    pub fn counter(&self) -> u64 {
        self.inner.counter()
    }

    /// Encrypts in place: `buf[HEADROOM..HEADROOM + packet_len]` holds the packet given to
    /// `prepare_send`. Returns the message length (at the start of `buf`).
    pub fn seal(
        &self,
        buf: &mut [u8],
        packet_len: usize,
    ) -> Result<usize, crate::keypair::BufferTooSmall> {
        self.inner.seal(buf, packet_len)
    }

    /// The peer it is for (to [`report_unsent`](Device::report_unsent) if the send fails).
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

/// A transport message whose keypair was found; decrypt it with [`open`](Self::open).
#[derive(Debug)]
pub struct ReceiveJob {
    inner: crate::peer::ReceiveJob,
    peer: PeerId,
}

impl ReceiveJob {
    /// Decrypts `buf` (the whole datagram) in place. No state changes: a forged message costs
    /// only the AEAD.
    pub fn open(&self, buf: &mut [u8]) -> Result<(), DropReason> {
        self.inner.open(buf)
    }

    /// The peer the message claims to come from (proven only once `open` succeeds).
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl DataPath<'_> {
    /// [`Device::handle_packet`] within this batch (a handshake it needs waits for
    /// `handle_timeout`).
    pub fn encapsulate(&self, now: Instant, buf: &mut [u8], packet_len: usize) -> Sent {
        let Some(packet) = buf.get(crate::peer::HEADROOM..crate::peer::HEADROOM + packet_len)
        else {
            self.device.count_drop(DropReason::BufferTooSmall);
            return Sent::Dropped(DropReason::BufferTooSmall);
        };
        let job = match self.prepare_send(now, packet, buf.len()) {
            Ok(job) => job,
            Err(sent) => return sent,
        };
        match job.seal(buf, packet_len) {
            Ok(len) => Sent::Transmit {
                destination: job.destination,
                len,
            },
            Err(_) => {
                self.device.count_drop(DropReason::BufferTooSmall);
                Sent::Dropped(DropReason::BufferTooSmall)
            }
        }
    }

    /// Routes `packet` by its destination and reserves a counter of the peer's current keypair,
    /// in the order packets must leave. `capacity` is the length of the buffer the packet will
    /// be sealed in.
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
        let Some(destination) = crate::ip::destination(packet) else {
            return drop(DropReason::InvalidInnerPacket);
        };
        let Some((id, cell)) = self
            .shared
            .allowed_ips
            .lookup(destination)
            .and_then(|id| self.shared.peers.get(&id).map(|c| (id, c)))
        else {
            return drop(DropReason::NoRoute);
        };
        let mut st = cell.state.lock();
        let result = st.peer.prepare_send(
            now,
            packet,
            capacity,
            self.shared.mtu,
            &mut DataSink { device, peer: id },
        );
        device.reschedule(id, &mut st);
        match result {
            Ok(inner) => Ok(SendJob {
                destination: inner.destination,
                inner,
                peer: id,
            }),
            Err(sent) => {
                if let Sent::Dropped(reason) = sent {
                    device.count_drop(reason);
                }
                Err(sent)
            }
        }
    }

    /// [`Device::handle_datagram`] within this batch. Handshake messages are queued for
    /// [`Device::handle_queued_handshakes`] (their number is the device's load signal).
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
            Ok(other) => return Err(device.queue_handshake(source, &other)),
            Err(_) => return Err(device.dropped(DropReason::Malformed)),
        };
        let found = self
            .indices
            .get(t.receiver_index())
            .and_then(|id| self.shared.peers.get(id).map(|c| (*id, c)));
        let Some((id, cell)) = found else {
            return Err(device.dropped(DropReason::UnknownIndex));
        };
        let prepared =
            cell.state
                .lock()
                .peer
                .prepare_receive(now, t.receiver_index(), t.counter(), source);
        match prepared {
            Ok(inner) => Ok(ReceiveJob { inner, peer: id }),
            Err(reason) => Err(device.dropped(reason)),
        }
    }

    /// After [`ReceiveJob::open`] succeeded on `buf` (the whole datagram): the replay window,
    /// roaming, key confirmation, timers (in the peer), then the inner packet's checks and the
    /// source check against the sender's allowed IPs (PROTOCOL.md §5).
    pub fn finish_receive(&self, now: Instant, job: ReceiveJob, buf: &mut [u8]) -> Received {
        let device = self.device;
        if buf.len() < crate::messages::TRANSPORT_MIN_LEN {
            return device.dropped(DropReason::BufferTooSmall);
        }
        let Some(cell) = self.shared.peers.get(&job.peer) else {
            return device.dropped(DropReason::UnknownIndex);
        };
        let delivery = {
            let mut st = cell.state.lock();
            let d = st.peer.finish_receive(
                now,
                &job.inner,
                buf.len(),
                self.shared.mtu,
                &mut DataSink {
                    device,
                    peer: job.peer,
                },
            );
            device.reschedule(job.peer, &mut st);
            d
        };
        match delivery {
            Err(reason) => device.dropped(reason),
            Ok(Delivery::Keepalive) => Received::Keepalive,
            Ok(Delivery::Data) => {
                let inner = &buf[crate::peer::HEADROOM..buf.len() - TAG_LEN];
                let Some((src, len)) = crate::ip::source_and_len(inner) else {
                    return device.dropped(DropReason::InvalidInnerPacket);
                };
                if self.shared.allowed_ips.lookup(src) != Some(job.peer) {
                    return device.dropped(DropReason::SourceNotAllowed);
                }
                Received::Packet {
                    peer: cell.public_key,
                    len,
                }
            }
        }
    }
}

impl Device {
    /// The data path met a handshake message: queue it (parsed) for the control path.
    fn queue_handshake(&self, source: SocketAddr, msg: &Message<'_>) -> Received {
        let Some(queued) = QueuedMessage::of(msg) else {
            return self.dropped(DropReason::Malformed);
        };
        let first = {
            let mut q = self.handshakes.lock();
            if q.len() >= MAX_QUEUED_HANDSHAKES {
                drop(q);
                return self.dropped(DropReason::QueueFull);
            }
            q.push_back((source, queued));
            self.queued_handshakes.store(q.len(), Ordering::Release);
            q.len() == 1
        };
        if first {
            self.wake();
        }
        Received::Handshake
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::sync::atomic::AtomicUsize;
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

    fn with_current<R>(
        d: &Device,
        peer: &PublicKey,
        f: impl FnOnce(&mut crate::keypair::Keypair) -> R,
    ) -> R {
        let shared = d.shared.read();
        let cell = shared.peer_by_key(peer).expect("peer");
        let mut st = cell.state.lock();
        let kp = st
            .peer
            .keypairs_mut()
            .get_mut(crate::keypair::SlotName::Current)
            .expect("session");
        f(kp)
    }

    fn initiations_queued(d: &Device) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Some(t) = d.poll_transmit(&mut buf) {
            n += usize::from(buf[0] == 1 && t.len == INITIATION_LEN);
        }
        n
    }

    fn counting_waker(d: &Device) -> Arc<AtomicUsize> {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        d.set_waker(Some(Arc::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        })));
        count
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
        assert!(told > quiet + Duration::from_secs(60), "{told:?}");
        // poll_timeout is a pure getter: asking again changes nothing.
        assert_eq!(b.poll_timeout(), Some(told));
        let wakes = counting_waker(&b);
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
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        let told = b.poll_timeout().expect("keepalive");
        assert!(told <= later + crate::constants::KEEPALIVE_TIMEOUT);
        // More data later than that changes no deadline that matters: no wake-up.
        let (mut buf, len) = packet_buf();
        let Sent::Transmit { len: n, .. } = a.handle_packet(later, &mut buf, len) else {
            panic!("session")
        };
        b.data_path()
            .decapsulate(later, A_ADDR.parse().expect("addr"), &mut buf[..n]);
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn datagrams_the_socket_refused_are_not_counted_as_sent() {
        let (a, b, kb) = pair();
        let now = Instant::from_nanos(1);
        // No session yet: the packet is staged and the initiation queued.
        let (mut buf, len) = packet_buf();
        assert!(matches!(a.handle_packet(now, &mut buf, len), Sent::Staged));
        let mut out = [0u8; 2048];
        let t = a.poll_transmit(&mut out).expect("initiation");
        assert_eq!(out[0], 1);
        let to_b = t.peer.expect("an initiation belongs to its peer");
        let sent = a.peer(&kb).expect("peer").tx_bytes;
        assert_eq!(sent, t.len as u64);
        // The socket refused it: it does not count.
        a.report_unsent(to_b, t.len as u64);
        assert_eq!(a.peer(&kb).expect("peer").tx_bytes, 0);
        // Deliver it anyway, then the response; the staged packet leaves with the peer's id.
        b.handle_datagram(now, A_ADDR.parse().expect("addr"), &mut out[..t.len]);
        let r = b.poll_transmit(&mut out).expect("response");
        assert_eq!(out[0], 2);
        assert!(r.peer.is_some());
        a.handle_datagram(now, B_ADDR.parse().expect("addr"), &mut out[..r.len]);
        let d = a.poll_transmit(&mut out).expect("the staged packet");
        assert_eq!(out[0], 4);
        assert_eq!(d.peer, Some(to_b));
        let before = a.peer(&kb).expect("peer").tx_bytes;
        assert_eq!(before, d.len as u64);
        a.report_unsent(to_b, d.len as u64);
        assert_eq!(a.peer(&kb).expect("peer").tx_bytes, 0);
        // Never below zero, and a peer that is gone is ignored.
        a.report_unsent(to_b, 1 << 40);
        assert_eq!(a.peer(&kb).expect("peer").tx_bytes, 0);
        a.remove_peer(&kb);
        a.report_unsent(to_b, 1);
    }

    #[test]
    fn rekey_and_reject_after_messages() {
        // PROTOCOL.md §5: rekey once the counter passes REKEY_AFTER_MESSAGES; never send at or
        // beyond REJECT_AFTER_MESSAGES.
        use crate::constants::REJECT_AFTER_MESSAGES;
        let (a, b, pk_b) = pair();
        let now = Instant::from_nanos(1);
        let (mut buf, len) = packet_buf();
        assert_eq!(a.handle_packet(now, &mut buf, len), Sent::Staged);
        shuttle(&a, &b, now);

        // Far from the limits: sending does not ask for a handshake.
        let later = now + Duration::from_secs(6); // past the REKEY_TIMEOUT gap
        let (mut buf, len) = packet_buf();
        assert!(matches!(
            a.handle_packet(later, &mut buf, len),
            Sent::Transmit { .. }
        ));
        assert_eq!(initiations_queued(&a), 0);

        // At REKEY_AFTER_MESSAGES the same send starts a new handshake.
        with_current(&a, &pk_b, |k| k.set_send_counter(REKEY_AFTER_MESSAGES));
        let (mut buf, len) = packet_buf();
        assert!(matches!(
            a.handle_packet(later, &mut buf, len),
            Sent::Transmit { .. }
        ));
        assert_eq!(initiations_queued(&a), 1);

        // The last allowed counter is still used; after it, packets wait for a new session.
        with_current(&a, &pk_b, |k| k.set_send_counter(REJECT_AFTER_MESSAGES - 1));
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
        assert!(!with_current(&a, &pk_b, |k| k.can_send(later)));

        // The receiver refuses a correctly sealed message at the limit, after decrypting it.
        let (mut buf, len) = packet_buf();
        let sealed = with_current(&a, &pk_b, |k| k.sealer())
            .seal(REJECT_AFTER_MESSAGES, &mut buf, len, 32)
            .expect("fits");
        let r = b.handle_datagram(later, A_ADDR.parse().expect("addr"), &mut buf[..sealed]);
        assert_eq!(r, Received::Dropped(DropReason::Replay));
    }

    #[test]
    fn split_forms_refuse_short_buffers_instead_of_panicking() {
        let (a, b, _) = pair();
        let now = Instant::from_nanos(1);
        let (mut buf, len) = packet_buf();
        a.handle_packet(now, &mut buf, len);
        shuttle(&a, &b, now);
        let (mut buf, len) = packet_buf();
        let job = a
            .data_path()
            .prepare_send(now, &buf[HEADROOM..HEADROOM + len], buf.len())
            .expect("session");
        // Sealing into less than the message needs is a caller error, reported.
        assert!(job.seal(&mut buf[..job.message_len() - 1], len).is_err());
        let n = job.seal(&mut buf, len).expect("fits");
        let dp = b.data_path();
        let job = dp
            .prepare_receive(now, A_ADDR.parse().expect("addr"), &buf[..n])
            .expect("keypair");
        assert_eq!(job.open(&mut buf[..n]), Ok(()));
        // finish_receive with a truncated buffer: an error, not a panic.
        assert_eq!(
            dp.finish_receive(now, job, &mut buf[..8]),
            Received::Dropped(DropReason::BufferTooSmall)
        );
    }

    #[test]
    fn only_peers_with_timers_are_in_the_deadline_queue() {
        // Idle peers cost the queue nothing; each peer with a timer has one entry, and
        // poll_timeout is the first of them.
        let d = Device::new(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(3)));
        d.set_private_key(Some(PrivateKey::from_bytes([9; 32])));
        let now = Instant::from_nanos(1);
        let mut keys = vec::Vec::new();
        for i in 0..1001u32 {
            let mut k = [0u8; 32];
            k[4..8].copy_from_slice(&i.to_le_bytes()); // clamping clears bits of k[0]
            k[31] = 0x40; // not low order
            let pk = PrivateKey::from_bytes(k).public_key();
            d.add_peer(pk);
            d.set_endpoint(&pk, SocketAddr::from(([10, 0, 0, 2], 1000 + i as u16)))
                .expect("peer");
            keys.push(pk);
        }
        assert_eq!(d.stats().scheduled, 0, "idle peers are not in the queue");
        assert_eq!(d.poll_timeout(), None);
        for pk in &keys[..1000] {
            d.set_persistent_keepalive(now, pk, 25).expect("peer");
        }
        d.set_persistent_keepalive(now, &keys[1000], 1)
            .expect("peer");
        // Turning keepalives on started handshakes (sending an initiation re-arms the
        // persistent keepalive): the 1 s peer's keepalive is the first deadline.
        let mut out = [0u8; 256];
        let mut sent = 0;
        while d.poll_transmit(&mut out).is_some() {
            sent += 1;
        }
        assert_eq!(
            sent,
            1001,
            "{:?}",
            d.drop_counts()
                .filter(|(_, n)| *n > 0)
                .collect::<vec::Vec<_>>()
        );
        assert_eq!(d.stats().scheduled, 1001);
        assert_eq!(d.poll_timeout(), Some(now + Duration::from_secs(1)));
    }
}
