//! A peer as a state machine (PROTOCOL.md §3–§7): its handshake, keypairs, timers, cookie,
//! endpoint and staged packets, and every per-peer rule of the protocol, as methods of
//! [`Peer`] that take `&mut self`.
//!
//! A peer never reads a clock, draws randomness by itself or touches a socket. Each method is
//! told the time (and, where it may start a handshake, the identity and an RNG: a [`Context`])
//! and pushes what it wants done into a [`Sink`]: datagrams to send, events, and the local
//! indices it starts or stops using. This is the shape of quinn-proto's `Connection`: the
//! peer decides, its owner (a [`Device`](crate::device::Device) with many peers, or a
//! [`SinglePeer`](crate::single::SinglePeer) on a device without a heap) demultiplexes, holds
//! the locks and applies the effects. A peer's whole life — handshakes, rekeys, expiry,
//! removal — can be driven and tested with no device at all (see the tests below).
//!
//! The methods, by group:
//! - configuration: [`set_endpoint`](Peer::set_endpoint), [`set_preshared_key`](Peer::set_preshared_key),
//!   [`set_persistent_keepalive`](Peer::set_persistent_keepalive),
//!   [`identity_changed`](Peer::identity_changed), [`remove`](Peer::remove);
//! - handshake messages: [`consume_initiation`](Peer::consume_initiation),
//!   [`consume_response`](Peer::consume_response), [`consume_cookie_reply`](Peer::consume_cookie_reply),
//!   [`initiate`](Peer::initiate);
//! - transport data: [`prepare_send`](Peer::prepare_send) → [`SendJob::seal`];
//!   [`prepare_receive`](Peer::prepare_receive) → [`ReceiveJob::open`] → [`finish_receive`](Peer::finish_receive);
//! - time: [`poll_timeout`](Peer::poll_timeout) and [`handle_timeout`](Peer::handle_timeout).
//!
//! The data-path methods (`prepare_*`, `finish_receive`) need no RNG and never start a
//! handshake themselves: when one is due they note it, and `poll_timeout` reports it due at
//! once, so the owner runs `handle_timeout` on its control path.

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use rand_core::CryptoRngCore;

use crate::constants::{
    INITIATION_FLOOD_INTERVAL, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_TIMEOUT,
};
use crate::cookie::CookieState;
use crate::crypto::{PresharedKey, PublicKey, TAG_LEN};
use crate::keypair::{padded_len, BufferTooSmall, Keypair, Keypairs, Opener, Retired, Sealer};
use crate::messages::{
    CookieReply, Initiation, Response, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};
use crate::noise::{self, InitiationState, InitiationStatic, RemoteStatic, StaticIdentity, Tai64N};
use crate::outcome::{DropReason, Event, Sent};
use crate::slot::{slot, Slot};
use crate::time::Instant;
use crate::timers::{TimerAction, Timers};

pub use crate::constants::MAX_STAGED_PACKETS;

/// Bytes in front of an IP packet in a caller's buffer, for the transport header.
pub const HEADROOM: usize = TRANSPORT_HEADER_LEN;
/// Bytes after an IP packet that sealing may need: up to 15 bytes of padding and the tag.
pub const TAILROOM: usize = 15 + TAG_LEN;

/// Where a peer's effects go. Implemented by its owner.
pub trait Sink {
    /// A fresh local index for a new handshake or session of this peer, unique among the
    /// indices in use. `None` if none can be had here (the data path never asks).
    fn allocate_index(&mut self, rng: &mut dyn CryptoRngCore) -> Option<u32>;
    /// An index this peer no longer uses.
    fn retire_index(&mut self, index: u32);
    /// A datagram to send to `destination`.
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]);
    /// Something happened that the driver may log.
    fn event(&mut self, event: Event);
    /// Something was dropped that is not the result of the call itself (a staged packet that
    /// made room for a newer one). Drops a method returns are for its caller to count.
    fn dropped(&mut self, reason: DropReason);
}

/// What a method that may start a handshake needs besides the time.
pub struct Context<'a> {
    /// The monotonic time.
    pub now: Instant,
    /// The wall clock at `now` (for the TAI64N timestamp of initiations).
    pub unix_time: Duration,
    /// Our static key, if one is configured.
    pub identity: Option<&'a StaticIdentity>,
    /// A cryptographic RNG (ephemeral keys, indices).
    pub rng: &'a mut dyn CryptoRngCore,
    /// The interface MTU (padding, §5).
    pub mtu: usize,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// A transport message ready to be sealed: counter reserved, key copied. Seal it on any thread.
pub struct SendJob {
    sealer: Sealer,
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

    /// The counter (nonce) reserved for this message.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Encrypts in place: `buf[HEADROOM..HEADROOM + packet_len]` holds the packet given to
    /// `prepare_send`. Returns the message length (at the start of `buf`).
    pub fn seal(&self, buf: &mut [u8], packet_len: usize) -> Result<usize, BufferTooSmall> {
        self.sealer
            .seal(self.counter, buf, packet_len, self.padded_len)
    }
}

/// A transport message whose keypair was found: decrypt it with [`open`](Self::open) on any
/// thread, then hand it back to [`Peer::finish_receive`].
pub struct ReceiveJob {
    opener: Opener,
    counter: u64,
    local_index: u32,
    /// Where the datagram came from.
    pub source: SocketAddr,
}

impl fmt::Debug for ReceiveJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveJob")
            .field("counter", &self.counter)
            .field("local_index", &self.local_index)
            .finish()
    }
}

impl ReceiveJob {
    /// Decrypts `datagram` (the whole transport message) in place; the plaintext is then at
    /// `datagram[HEADROOM..len - 16]`. Changes no state: a forged message costs one AEAD.
    pub fn open(&self, datagram: &mut [u8]) -> Result<(), DropReason> {
        if datagram.len() < TRANSPORT_MIN_LEN {
            return Err(DropReason::Malformed);
        }
        self.opener
            .open(self.counter, &mut datagram[TRANSPORT_HEADER_LEN..])
            .map_err(|_| DropReason::Decrypt)
    }

    /// The message counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// What an authentic transport message carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An empty message: a keepalive.
    Keepalive,
    /// Data: an IP packet to check and deliver.
    Data,
}

/// One peer's protocol state.
pub struct Peer {
    remote: RemoteStatic,
    endpoint: Option<SocketAddr>,
    /// Our initiation in flight (the initiator's half of a handshake).
    handshake: Option<Slot<InitiationState>>,
    keypairs: Keypairs,
    timers: Timers,
    cookie: CookieState,
    /// The newest initiation timestamp accepted from this peer (§3); kept across sessions.
    latest_timestamp: Tai64N,
    /// The timestamp of our last initiation to this peer: the next one is always later, even
    /// if the wall clock was set back (else the peer would refuse every initiation as a replay
    /// until the clock caught up).
    last_timestamp_sent: Tai64N,
    /// When we last accepted an initiation from this peer (the 20 ms flood limit, §3).
    last_initiation_consumed: Option<Instant>,
    /// When we last sent a handshake message (initiations are suppressed for 5 s after, §6).
    last_sent_handshake: Option<Instant>,
    /// When the last handshake completed.
    last_handshake: Option<Instant>,
    /// The data path asked for an initiation at this moment; `handle_timeout` sends it.
    initiation_wanted: Option<Instant>,
    staged: Staged,
    /// UDP payload bytes sent to the peer.
    tx_bytes: u64,
    /// UDP payload bytes of authenticated packets received from the peer.
    rx_bytes: u64,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", self.remote.public_key())
            .field("endpoint", &self.endpoint)
            .field("keypairs", &self.keypairs)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A peer with this public key, no endpoint, no preshared key. `jitter_seed` seeds its
    /// timer jitter (draw it from the device's RNG).
    pub fn new(public_key: PublicKey, jitter_seed: u64) -> Peer {
        Peer {
            remote: RemoteStatic::new(public_key, PresharedKey::none()),
            endpoint: None,
            handshake: None,
            keypairs: Keypairs::default(),
            timers: Timers::new(jitter_seed),
            cookie: CookieState::default(),
            latest_timestamp: Tai64N::default(),
            last_timestamp_sent: Tai64N::default(),
            last_initiation_consumed: None,
            last_sent_handshake: None,
            last_handshake: None,
            initiation_wanted: None,
            staged: Staged::default(),
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    // ----- getters -----

    /// Its public key.
    pub fn public_key(&self) -> &PublicKey {
        self.remote.public_key()
    }
    /// Its endpoint, if known.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }
    /// Its preshared key (all zeros = none).
    pub fn preshared_key(&self) -> &PresharedKey {
        self.remote.psk()
    }
    /// The persistent keepalive interval in seconds (0 = off).
    pub fn persistent_keepalive(&self) -> u16 {
        self.timers.persistent_keepalive()
    }
    /// When the last handshake completed (monotonic time).
    pub fn last_handshake(&self) -> Option<Instant> {
        self.last_handshake
    }
    /// UDP payload bytes sent to it.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes
    }
    /// UDP payload bytes of authenticated packets received from it.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes
    }
    /// Bytes counted as sent that the socket did not take after all.
    pub fn uncount_tx(&mut self, bytes: u64) {
        self.tx_bytes = self.tx_bytes.saturating_sub(bytes);
    }
    /// Packets waiting for a session.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }
    /// Its keypair slots.
    pub fn keypairs(&self) -> &Keypairs {
        &self.keypairs
    }
    /// Its keypair slots, mutably (tests of the message limits).
    #[doc(hidden)]
    pub fn keypairs_mut(&mut self) -> &mut Keypairs {
        &mut self.keypairs
    }
    /// Its timers.
    pub fn timers(&self) -> &Timers {
        &self.timers
    }
    /// The local index of our initiation in flight.
    pub fn handshake_index(&self) -> Option<u32> {
        self.handshake.as_ref().map(|h| h.local_index)
    }
    /// Whether `index` is one of ours (the initiation in flight, or a keypair).
    pub fn owns_index(&self, index: u32) -> bool {
        self.handshake_index() == Some(index) || self.keypairs.indices().any(|i| i == index)
    }

    // ----- configuration -----

    /// Sets the endpoint.
    pub fn set_endpoint(&mut self, endpoint: Option<SocketAddr>) {
        self.endpoint = endpoint;
    }

    /// Sets the preshared key (all zeros = none); used from the next handshake on.
    pub fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.remote.set_psk(psk);
    }

    /// Sets the persistent keepalive interval (0 = off). Turning it on sends a keepalive at
    /// once, or starts a handshake if no session can carry one (§6).
    pub fn set_persistent_keepalive(
        &mut self,
        cx: &mut Context<'_>,
        seconds: u16,
        sink: &mut dyn Sink,
    ) {
        let was_off = self.timers.persistent_keepalive() == 0;
        self.timers.set_persistent_keepalive(seconds);
        if seconds > 0 && was_off {
            self.send_keepalive(cx, sink);
        }
    }

    /// Our private key changed (§6 "Private key change"): the static-static DH is forgotten,
    /// the handshake in flight abandoned, current and next stop sending, and the next
    /// initiation may go out at once.
    pub fn identity_changed(&mut self, sink: &mut dyn Sink) {
        self.remote.forget_static_static();
        if let Some(h) = self.handshake.take() {
            sink.retire_index(h.local_index);
        }
        self.last_sent_handshake = None;
        self.keypairs.invalidate_sending();
    }

    /// The peer is being removed: every index is retired, keys and staged packets dropped.
    pub fn remove(&mut self, sink: &mut dyn Sink) {
        if let Some(h) = self.handshake.take() {
            sink.retire_index(h.local_index);
        }
        retire(sink, self.keypairs.clear());
        self.staged.clear();
        self.timers.clear();
        self.initiation_wanted = None;
    }

    // ----- handshake messages -----

    /// Responder (§3): an initiation whose static key (decrypted by
    /// [`noise::consume_initiation`]) is this peer's. Checks the timestamp and the flood limit,
    /// answers with a response, installs the new keypair as `next`.
    pub fn consume_initiation(
        &mut self,
        cx: &mut Context<'_>,
        part: InitiationStatic,
        msg: &Initiation<'_>,
        source: SocketAddr,
        sink: &mut dyn Sink,
    ) -> Result<(), DropReason> {
        let now = cx.now;
        let identity = cx.identity.ok_or(DropReason::NoPrivateKey)?;
        let received = part
            .finish(identity, &mut self.remote, msg)
            .map_err(|_| DropReason::HandshakeFailed)?;
        // §3: strictly newer timestamp, at most one per 20 ms; commit only after both.
        if received.timestamp <= self.latest_timestamp {
            return Err(DropReason::StaleTimestamp);
        }
        if self
            .last_initiation_consumed
            .is_some_and(|t| now - t < INITIATION_FLOOD_INTERVAL)
        {
            return Err(DropReason::Flood);
        }
        self.latest_timestamp = received.timestamp;
        self.last_initiation_consumed = Some(now);
        self.rx_bytes += INITIATION_LEN as u64;
        self.update_endpoint(source, sink);
        self.timers.authenticated_packet_received();
        self.timers.authenticated_packet_traversal(now);

        // Answering forgets our own initiation in flight: one handshake slot, as in the kernel.
        if let Some(h) = self.handshake.take() {
            sink.retire_index(h.local_index);
        }
        let local_index = sink.allocate_index(cx.rng).ok_or(DropReason::QueueFull)?;
        let remote_index = received.sender_index;
        let mut reply = [0u8; RESPONSE_LEN];
        let keys =
            match noise::create_response(received, &self.remote, local_index, cx.rng, &mut reply) {
                Ok(k) => k,
                Err(_) => {
                    sink.retire_index(local_index);
                    return Err(DropReason::HandshakeFailed);
                }
            };
        self.cookie
            .add_macs(now, &self.remote.mac1_key(), &mut reply);
        let keypair = Keypair::new(keys.send, keys.recv, now, false, local_index, remote_index);
        retire(sink, self.keypairs.install_as_responder(keypair));
        self.last_sent_handshake = Some(now);
        self.timers.session_derived(now);
        self.timers.authenticated_packet_traversal(now);
        self.timers.authenticated_packet_sent();
        self.tx_bytes += RESPONSE_LEN as u64;
        sink.transmit(source, &reply);
        Ok(())
    }

    /// Initiator (§3): the response to our initiation in flight. Installs the keypair as
    /// `current` and confirms it at once with what was staged, or a keepalive.
    pub fn consume_response(
        &mut self,
        cx: &mut Context<'_>,
        msg: &Response<'_>,
        source: SocketAddr,
        sink: &mut dyn Sink,
    ) -> Result<(), DropReason> {
        let now = cx.now;
        let identity = cx.identity.ok_or(DropReason::NoPrivateKey)?;
        let local_index = msg.receiver_index();
        let state = match &self.handshake {
            Some(h) if h.local_index == local_index => h,
            _ => return Err(DropReason::UnexpectedMessage),
        };
        let keys = noise::consume_response(identity, &self.remote, state, msg)
            .map_err(|_| DropReason::HandshakeFailed)?;
        // The index now names the session.
        self.handshake = None;
        let keypair = Keypair::new(
            keys.send,
            keys.recv,
            now,
            true,
            local_index,
            msg.sender_index(),
        );
        retire(sink, self.keypairs.install_as_initiator(keypair));
        self.rx_bytes += RESPONSE_LEN as u64;
        self.update_endpoint(source, sink);
        self.timers.session_derived(now);
        self.handshake_complete(now, sink);
        self.timers.authenticated_packet_received();
        self.timers.authenticated_packet_traversal(now);
        // Key confirmation (§3): what waited, or a keepalive.
        if self.staged.is_empty() {
            self.seal_keepalive(now, sink);
        } else {
            self.flush_staged(now, cx.mtu, sink);
        }
        Ok(())
    }

    /// A cookie reply for one of our indices (§4): remembered for mac2 of our next message.
    /// Fires no timers and never moves the endpoint.
    pub fn consume_cookie_reply(
        &mut self,
        now: Instant,
        reply: &CookieReply<'_>,
    ) -> Result<(), DropReason> {
        if !self.owns_index(reply.receiver_index()) {
            return Err(DropReason::UnexpectedMessage);
        }
        self.cookie
            .consume_reply(now, &self.remote.cookie_key(), reply)
            .map_err(|_| DropReason::HandshakeFailed)
    }

    /// Starts a handshake now, as if data were waiting (a new round of attempts). Nothing
    /// happens within REKEY_TIMEOUT of the last handshake message we sent.
    pub fn initiate(&mut self, cx: &mut Context<'_>, sink: &mut dyn Sink) {
        self.send_initiation(cx, false, sink);
    }

    // ----- transport data -----

    /// Reserves a counter for `packet` with the current keypair, in the order packets must
    /// leave; seal the result with [`SendJob::seal`]. `capacity` is the length of the buffer
    /// it will be sealed in. Without a usable session the packet is staged and a handshake
    /// noted for `handle_timeout`.
    pub fn prepare_send(
        &mut self,
        now: Instant,
        packet: &[u8],
        capacity: usize,
        mtu: usize,
        sink: &mut dyn Sink,
    ) -> Result<SendJob, Sent> {
        let padded = padded_len(packet.len(), mtu);
        if capacity < HEADROOM + padded + TAG_LEN {
            return Err(Sent::Dropped(DropReason::BufferTooSmall));
        }
        let Some(destination) = self.endpoint else {
            return Err(Sent::Dropped(DropReason::NoEndpoint));
        };
        if self.staged.is_empty() {
            if let Some((sealer, counter)) = self.reserve(now, !packet.is_empty()) {
                self.tx_bytes += (HEADROOM + padded + TAG_LEN) as u64;
                return Ok(SendJob {
                    sealer,
                    counter,
                    padded_len: padded,
                    destination,
                });
            }
        }
        let outcome = match self.staged.push(packet, mtu) {
            StageOutcome::Kept => Sent::Staged,
            StageOutcome::KeptDroppingOldest => {
                sink.dropped(DropReason::StagedOverflow);
                Sent::Staged
            }
            StageOutcome::NoRoom => Sent::Dropped(DropReason::NoSession),
        };
        self.want_initiation(now);
        Err(outcome)
    }

    /// Finds the keypair of a transport message for index `local_index` with `counter`, from
    /// `source`. Decrypt with [`ReceiveJob::open`], then call [`finish_receive`](Self::finish_receive).
    pub fn prepare_receive(
        &mut self,
        now: Instant,
        local_index: u32,
        counter: u64,
        source: SocketAddr,
    ) -> Result<ReceiveJob, DropReason> {
        let (_, keypair) = self
            .keypairs
            .find_mut(local_index)
            .ok_or(DropReason::UnknownIndex)?;
        if !keypair.can_receive(now) {
            return Err(DropReason::ExpiredKey);
        }
        Ok(ReceiveJob {
            opener: keypair.opener(),
            counter,
            local_index,
            source,
        })
    }

    /// After [`ReceiveJob::open`] succeeded on a message of `message_len` bytes (§5): the
    /// replay window, the counters, roaming, key confirmation, rekey on receive, timers.
    pub fn finish_receive(
        &mut self,
        now: Instant,
        job: &ReceiveJob,
        message_len: usize,
        mtu: usize,
        sink: &mut dyn Sink,
    ) -> Result<Delivery, DropReason> {
        // The keypair may have been rotated away while the message was decrypted.
        let (_, keypair) = self
            .keypairs
            .find_mut(job.local_index)
            .ok_or(DropReason::UnknownIndex)?;
        if !keypair.accept_counter(job.counter) {
            return Err(DropReason::Replay);
        }
        self.rx_bytes += message_len as u64;
        self.update_endpoint(job.source, sink);

        // Key confirmation (§7): the first message under `next` promotes it.
        let (confirmed, retired) = self.keypairs.confirm(job.local_index);
        retire(sink, retired);
        if confirmed {
            self.handshake_complete(now, sink);
            self.flush_staged(now, mtu, sink);
        }
        // Rekey on receive (§5): we initiated the current keypair and it is about to expire.
        let current = self.keypairs.get(crate::keypair::SlotName::Current);
        if let Some(c) = current.filter(|c| c.local_index() == job.local_index) {
            let (initiator, age) = (c.is_initiator(), c.age(now));
            if self.timers.rekey_on_receive(initiator, age) {
                self.want_initiation(now);
            }
        }
        self.timers.authenticated_packet_received();
        self.timers.authenticated_packet_traversal(now);
        if message_len <= TRANSPORT_MIN_LEN {
            return Ok(Delivery::Keepalive);
        }
        self.timers.data_received(now);
        Ok(Delivery::Data)
    }

    // ----- time -----

    /// The next moment [`handle_timeout`](Self::handle_timeout) must run: the earliest timer,
    /// or the moment the data path asked for a handshake. No side effects.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.initiation_wanted) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs what is due at `cx.now`: a handshake the data path asked for, then the handlers
    /// of expired timers (§6).
    pub fn handle_timeout(&mut self, cx: &mut Context<'_>, sink: &mut dyn Sink) {
        if self.initiation_wanted.take().is_some() {
            self.send_initiation(cx, false, sink);
        }
        let now = cx.now;
        let actions = self.timers.fire(now);
        for action in actions {
            match action {
                TimerAction::RetransmitInitiation => self.send_initiation(cx, true, sink),
                TimerAction::GiveUp => {
                    self.staged.clear();
                    sink.event(Event::HandshakeGaveUp {
                        peer: *self.public_key(),
                    });
                }
                TimerAction::SendKeepalive => {
                    self.send_keepalive(cx, sink);
                    self.timers.keepalive_sent(now);
                }
                TimerAction::NewHandshake => self.send_initiation(cx, false, sink),
                TimerAction::ZeroKeyMaterial => {
                    retire(sink, self.keypairs.clear());
                    if let Some(h) = self.handshake.take() {
                        sink.retire_index(h.local_index);
                    }
                    sink.event(Event::KeysZeroed {
                        peer: *self.public_key(),
                    });
                }
                TimerAction::PersistentKeepalive => self.send_keepalive(cx, sink),
            }
        }
    }

    // ----- the rules behind the methods above -----

    /// Reserves a counter of the current keypair for a message sent now and runs the send-side
    /// hooks and rekey check (§5, §6). `None` if no keypair can send.
    fn reserve(&mut self, now: Instant, is_data: bool) -> Option<(Sealer, u64)> {
        let keypair = self.keypairs.sendable(now)?;
        let counter = keypair.next_counter()?;
        let sealer = keypair.sealer();
        let rekey = counter >= REKEY_AFTER_MESSAGES
            || (keypair.is_initiator() && keypair.age(now) >= REKEY_AFTER_TIME);
        self.timers.authenticated_packet_traversal(now);
        self.timers.authenticated_packet_sent();
        if is_data {
            self.timers.data_sent(now);
        }
        if rekey {
            self.want_initiation(now);
        }
        Some((sealer, counter))
    }

    /// Whether an initiation may go out now: none was sent in the last REKEY_TIMEOUT (§6).
    fn initiation_allowed(&self, now: Instant) -> bool {
        self.last_sent_handshake
            .is_none_or(|t| now - t >= REKEY_TIMEOUT)
    }

    /// The data path wants a handshake; `handle_timeout` will send it.
    fn want_initiation(&mut self, now: Instant) {
        if self.initiation_allowed(now) && self.initiation_wanted.is_none() {
            self.initiation_wanted = Some(now);
        }
    }

    /// Sends a fresh initiation (§3, §6): new ephemeral key, timestamp and index; nothing
    /// within REKEY_TIMEOUT of the last one, nothing without a key or endpoint, nothing ever to
    /// a low-order public key.
    fn send_initiation(&mut self, cx: &mut Context<'_>, is_retry: bool, sink: &mut dyn Sink) {
        let now = cx.now;
        if !is_retry {
            self.timers.reset_attempts();
        }
        if !self.initiation_allowed(now) {
            return;
        }
        let (Some(identity), Some(endpoint)) = (cx.identity, self.endpoint) else {
            return;
        };
        if self.remote.static_static(identity).is_none() {
            return;
        }
        if let Some(old) = self.handshake.take() {
            sink.retire_index(old.local_index);
        }
        let Some(local_index) = sink.allocate_index(cx.rng) else {
            return;
        };
        let timestamp = Tai64N::from_unix(cx.unix_time).max(self.last_timestamp_sent.next());
        let mut msg = [0u8; INITIATION_LEN];
        match noise::create_initiation(
            identity,
            &mut self.remote,
            local_index,
            timestamp,
            cx.rng,
            &mut msg,
        ) {
            Ok(state) => {
                self.handshake = Some(slot(state));
                self.last_timestamp_sent = timestamp;
            }
            Err(_) => {
                sink.retire_index(local_index);
                return;
            }
        }
        self.cookie.add_macs(now, &self.remote.mac1_key(), &mut msg);
        self.last_sent_handshake = Some(now);
        self.timers.authenticated_packet_traversal(now);
        self.timers.authenticated_packet_sent();
        self.timers.handshake_initiated(now);
        self.tx_bytes += INITIATION_LEN as u64;
        sink.transmit(endpoint, &msg);
    }

    /// Sends a keepalive: the staged packets serve as one if any; without a session, a
    /// handshake starts instead (the kernel's wg_packet_send_keepalive).
    fn send_keepalive(&mut self, cx: &mut Context<'_>, sink: &mut dyn Sink) {
        let sent = if self.staged.is_empty() {
            self.seal_keepalive(cx.now, sink)
        } else {
            self.flush_staged(cx.now, cx.mtu, sink)
        };
        if !sent {
            self.send_initiation(cx, false, sink);
        }
    }

    /// Seals and sends an empty transport message. Returns false if no session can send it.
    fn seal_keepalive(&mut self, now: Instant, sink: &mut dyn Sink) -> bool {
        let Some(endpoint) = self.endpoint else {
            return false;
        };
        let Some((sealer, counter)) = self.reserve(now, false) else {
            return false;
        };
        let mut msg = [0u8; TRANSPORT_MIN_LEN];
        if let Ok(len) = sealer.seal(counter, &mut msg, 0, 0) {
            self.tx_bytes += len as u64;
            sink.transmit(endpoint, &msg[..len]);
        }
        true
    }

    /// Seals the staged packets with the current keypair and sends them. Returns false (and
    /// keeps them, noting that a handshake is needed) if no keypair can send.
    fn flush_staged(&mut self, now: Instant, mtu: usize, sink: &mut dyn Sink) -> bool {
        let Some(endpoint) = self.endpoint else {
            return false;
        };
        while !self.staged.is_empty() {
            let Some((sealer, counter)) = self.reserve(now, true) else {
                self.want_initiation(now);
                return false;
            };
            let sent = self
                .staged
                .send_front(&sealer, counter, mtu, |msg| sink.transmit(endpoint, msg));
            self.tx_bytes += sent as u64;
        }
        true
    }

    fn handshake_complete(&mut self, now: Instant, sink: &mut dyn Sink) {
        self.timers.handshake_complete();
        self.last_handshake = Some(now);
        sink.event(Event::HandshakeCompleted {
            peer: *self.public_key(),
        });
    }

    /// The endpoint follows the source of authenticated packets (§8).
    fn update_endpoint(&mut self, source: SocketAddr, sink: &mut dyn Sink) {
        if self.endpoint != Some(source) {
            self.endpoint = Some(source);
            sink.event(Event::EndpointChanged {
                peer: *self.public_key(),
                endpoint: source,
            });
        }
    }
}

fn retire(sink: &mut dyn Sink, retired: Retired) {
    for index in retired {
        sink.retire_index(index);
    }
}

/// What became of a packet offered for staging.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
enum StageOutcome {
    Kept,
    KeptDroppingOldest,
    /// Only a peer without an allocator has no room.
    #[cfg_attr(feature = "alloc", allow(dead_code))]
    NoRoom,
}

#[cfg(feature = "alloc")]
use staged_alloc::Staged;
#[cfg(not(feature = "alloc"))]
use staged_none::Staged;

/// Packets waiting for a session, each in a buffer with room to be sealed in place.
#[cfg(feature = "alloc")]
mod staged_alloc {
    use alloc::collections::VecDeque;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::{StageOutcome, HEADROOM, MAX_STAGED_PACKETS};
    use crate::crypto::TAG_LEN;
    use crate::keypair::{padded_len, Sealer};

    struct StagedPacket {
        /// `buf[HEADROOM..HEADROOM + len]` is the packet; after sealing, `buf[..sealed]` the message.
        buf: Vec<u8>,
        len: usize,
    }

    #[derive(Default)]
    pub(super) struct Staged {
        queue: VecDeque<StagedPacket>,
    }

    impl Staged {
        pub(super) fn len(&self) -> usize {
            self.queue.len()
        }
        pub(super) fn is_empty(&self) -> bool {
            self.queue.is_empty()
        }
        pub(super) fn clear(&mut self) {
            self.queue.clear();
        }
        pub(super) fn push(&mut self, packet: &[u8], mtu: usize) -> StageOutcome {
            let dropped = self.queue.len() >= MAX_STAGED_PACKETS;
            if dropped {
                self.queue.pop_front();
            }
            let mut buf = vec![0u8; HEADROOM + padded_len(packet.len(), mtu) + TAG_LEN];
            buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
            self.queue.push_back(StagedPacket {
                buf,
                len: packet.len(),
            });
            if dropped {
                StageOutcome::KeptDroppingOldest
            } else {
                StageOutcome::Kept
            }
        }
        /// Takes the oldest packet, seals it in place and hands the message to `send`.
        /// Returns the message length (0 if there was none).
        pub(super) fn send_front(
            &mut self,
            sealer: &Sealer,
            counter: u64,
            mtu: usize,
            send: impl FnOnce(&[u8]),
        ) -> usize {
            let Some(mut p) = self.queue.pop_front() else {
                return 0;
            };
            let padded = padded_len(p.len, mtu);
            // The MTU may have grown since the packet was staged.
            p.buf
                .resize(p.buf.len().max(HEADROOM + padded + TAG_LEN), 0);
            match sealer.seal(counter, &mut p.buf, p.len, padded) {
                Ok(len) => {
                    send(&p.buf[..len]);
                    len
                }
                Err(_) => 0,
            }
        }
    }
}

/// Without an allocator a peer keeps no packets: one sent before the session exists starts the
/// handshake and is dropped ([`DropReason::NoSession`]); the application resends, as it would
/// after a loss.
#[cfg(not(feature = "alloc"))]
mod staged_none {
    use super::StageOutcome;
    use crate::keypair::Sealer;

    #[derive(Default)]
    pub(super) struct Staged;

    impl Staged {
        pub(super) fn len(&self) -> usize {
            0
        }
        pub(super) fn is_empty(&self) -> bool {
            true
        }
        pub(super) fn clear(&mut self) {}
        pub(super) fn push(&mut self, _packet: &[u8], _mtu: usize) -> StageOutcome {
            StageOutcome::NoRoom
        }
        pub(super) fn send_front(
            &mut self,
            _: &Sealer,
            _: u64,
            _: usize,
            _send: impl FnOnce(&[u8]),
        ) -> usize {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    //! The peer alone, with a sink that keeps the books on indices: every index the peer
    //! retires must be one it holds, and what it holds must be exactly what it has not retired.

    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;

    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::crypto::PrivateKey;
    use crate::messages::{self, Message};

    #[derive(Default)]
    struct Books {
        next: u32,
        live: BTreeSet<u32>,
        out: Vec<(SocketAddr, Vec<u8>)>,
        events: Vec<Event>,
    }

    impl Sink for Books {
        fn allocate_index(&mut self, _rng: &mut dyn CryptoRngCore) -> Option<u32> {
            self.next += 1;
            assert!(self.live.insert(self.next));
            Some(self.next)
        }
        fn retire_index(&mut self, index: u32) {
            assert!(
                self.live.remove(&index),
                "retired {index}, which was not held"
            );
        }
        fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
            self.out.push((destination, datagram.to_vec()));
        }
        fn event(&mut self, event: Event) {
            self.events.push(event);
        }
        fn dropped(&mut self, _reason: DropReason) {}
    }

    struct Side {
        id: StaticIdentity,
        peer: Peer,
        books: Books,
        addr: SocketAddr,
    }

    impl Side {
        fn held(&self) -> BTreeSet<u32> {
            self.peer
                .handshake_index()
                .into_iter()
                .chain(self.peer.keypairs().indices())
                .collect()
        }
        fn check_books(&self) {
            assert_eq!(self.held(), self.books.live);
        }
    }

    fn pair() -> (Side, Side) {
        let (ka, kb) = (
            PrivateKey::from_bytes([1; 32]),
            PrivateKey::from_bytes([2; 32]),
        );
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let mut a = Side {
            id: StaticIdentity::new(ka),
            peer: Peer::new(pb, 1),
            books: Books::default(),
            addr: "10.0.0.1:1".parse().expect("addr"),
        };
        let mut b = Side {
            id: StaticIdentity::new(kb),
            peer: Peer::new(pa, 2),
            books: Books::default(),
            addr: "10.0.0.2:2".parse().expect("addr"),
        };
        a.peer.set_endpoint(Some(b.addr));
        b.books.next = 1000; // disjoint numbering, so a mix-up shows
        (a, b)
    }

    /// A initiates at `now`; B answers; A completes and confirms; B receives the confirmation
    /// (a keepalive, or the first staged packet), which is returned.
    fn handshake(a: &mut Side, b: &mut Side, now: Instant, rng: &mut ChaCha20Rng) -> Delivery {
        let mut cx = Context {
            now,
            unix_time: Duration::from_secs(1_700_000_000) + (now - Instant::ZERO),
            identity: Some(&a.id),
            rng,
            mtu: 1420,
        };
        a.peer.initiate(&mut cx, &mut a.books);
        let (_, init) = a.books.out.pop().expect("an initiation");
        let Ok(Message::Initiation(m)) = messages::parse(&init) else {
            panic!("initiation")
        };
        let part = noise::consume_initiation(&b.id, &m).expect("authentic");
        cx.identity = Some(&b.id);
        b.peer
            .consume_initiation(&mut cx, part, &m, a.addr, &mut b.books)
            .expect("accepted");
        let (_, resp) = b.books.out.pop().expect("a response");
        let Ok(Message::Response(m)) = messages::parse(&resp) else {
            panic!("response")
        };
        cx.identity = Some(&a.id);
        a.peer
            .consume_response(&mut cx, &m, b.addr, &mut a.books)
            .expect("accepted");
        let (_, mut confirm) = a.books.out.remove(0);
        let Ok(Message::Transport(t)) = messages::parse(&confirm) else {
            panic!("transport")
        };
        let job = b
            .peer
            .prepare_receive(now, t.receiver_index(), t.counter(), a.addr)
            .expect("keypair");
        job.open(&mut confirm).expect("authentic");
        b.peer
            .finish_receive(now, &job, confirm.len(), 1420, &mut b.books)
            .expect("fresh")
    }

    #[test]
    fn indices_are_retired_exactly_once_across_rotations_and_removal() {
        let (mut a, mut b) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut now = Instant::from_nanos(1);
        for round in 0..6 {
            assert_eq!(
                handshake(&mut a, &mut b, now, &mut rng),
                Delivery::Keepalive
            );
            a.check_books();
            b.check_books();
            // Never more than the three slots (no handshake in flight after completion).
            assert!(
                a.books.live.len() <= 3 && b.books.live.len() <= 3,
                "round {round}"
            );
            now += REKEY_TIMEOUT + Duration::from_millis(1);
        }
        // After several rotations: current and previous on both sides.
        assert_eq!(a.books.live.len(), 2);
        assert_eq!(b.books.live.len(), 2);
        assert_eq!(
            b.books
                .events
                .iter()
                .filter(|e| matches!(e, Event::HandshakeCompleted { .. }))
                .count(),
            6
        );
        // Our key changed: the handshake in flight goes, the sessions stay for receiving.
        let mut cx = Context {
            now,
            unix_time: Duration::from_secs(1_700_000_000),
            identity: Some(&a.id),
            rng: &mut rng,
            mtu: 1420,
        };
        a.peer.initiate(&mut cx, &mut a.books);
        a.check_books();
        assert!(a.peer.handshake_index().is_some());
        a.peer.identity_changed(&mut a.books);
        a.check_books();
        assert!(a.peer.handshake_index().is_none());
        assert!(
            a.peer.keypairs.sendable(now).is_none(),
            "no sending after a key change"
        );
        // Removal retires everything.
        a.peer.remove(&mut a.books);
        b.peer.remove(&mut b.books);
        assert!(a.books.live.is_empty() && b.books.live.is_empty());
        assert_eq!(a.peer.poll_timeout(), None);
    }

    #[test]
    fn the_data_path_defers_handshakes_to_handle_timeout() {
        let (mut a, mut b) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let now = Instant::from_nanos(1);
        // No session: the packet is staged and a handshake is *noted*, not sent: the data path
        // has no RNG and allocates no index.
        let packet = [0x45u8; 40];
        let r = a.peer.prepare_send(now, &packet, 2048, 1420, &mut a.books);
        assert!(matches!(r, Err(Sent::Staged)));
        assert!(a.books.out.is_empty());
        assert_eq!(a.peer.poll_timeout(), Some(now), "due at once");
        let mut cx = Context {
            now,
            unix_time: Duration::from_secs(1_700_000_000),
            identity: Some(&a.id),
            rng: &mut rng,
            mtu: 1420,
        };
        a.peer.handle_timeout(&mut cx, &mut a.books);
        assert_eq!(a.books.out.len(), 1, "the initiation");
        assert_eq!(a.books.out[0].1.len(), INITIATION_LEN);
        a.books.out.clear();
        // Completing the handshake sends what was staged instead of a bare keepalive.
        assert_eq!(
            handshake(&mut a, &mut b, now + REKEY_TIMEOUT, &mut rng),
            Delivery::Data
        );
        assert_eq!(a.peer.staged_len(), 0);
    }

    #[test]
    fn a_retired_keypair_can_not_finish_a_receive() {
        // A message decrypted while its keypair was rotated away is dropped, not applied to
        // whatever keypair holds the slot now.
        let (mut a, mut b) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let mut now = Instant::from_nanos(1);
        handshake(&mut a, &mut b, now, &mut rng);
        let packet = [0x45u8; 40];
        let job = a
            .peer
            .prepare_send(now, &packet, 2048, 1420, &mut a.books)
            .expect("session");
        let mut buf = [0u8; 2048];
        buf[HEADROOM..HEADROOM + 40].copy_from_slice(&packet);
        let n = job.seal(&mut buf, 40).expect("fits");
        let Ok(Message::Transport(t)) = messages::parse(&buf[..n]) else {
            panic!()
        };
        let rjob = b
            .peer
            .prepare_receive(now, t.receiver_index(), t.counter(), a.addr)
            .expect("keypair");
        rjob.open(&mut buf[..n]).expect("authentic");
        // Two rotations later that keypair is gone.
        for _ in 0..2 {
            now += REKEY_TIMEOUT + Duration::from_millis(1);
            handshake(&mut a, &mut b, now, &mut rng);
        }
        assert_eq!(
            b.peer.finish_receive(now, &rjob, n, 1420, &mut b.books),
            Err(DropReason::UnknownIndex)
        );
    }
}
