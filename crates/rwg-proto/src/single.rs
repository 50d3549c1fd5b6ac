//! One peer without an allocator: a small device (a microcontroller with no heap) talking to
//! one server.
//!
//! [`SinglePeer`] is the door and the demultiplexer that a [`Device`](crate::device::Device)
//! provides for many peers, cut down to one: it checks mac1 on handshake messages, finds the
//! keypair by index, and hands everything else to the [`Peer`] state machine. It needs no
//! `alloc`: datagrams it sends go straight to the caller's [`Output`] as byte slices, and data
//! is encrypted and decrypted in the caller's buffers. The differences from a `Device`:
//! - no staging: a packet sent before the first session exists starts the handshake and is
//!   dropped ([`DropReason::NoSession`]); send it again once [`Event::HandshakeCompleted`]
//!   arrives;
//! - no cookies under load and no rate limiter: one peer's handshakes are limited by the
//!   peer's own 20 ms flood limit;
//! - no allowed-IPs routing: every packet goes to the one peer, and every inner packet it sends
//!   is accepted as long as its header is valid (as with `AllowedIPs = 0.0.0.0/0, ::/0`).

use core::net::SocketAddr;
use core::time::Duration;

use rand_core::CryptoRngCore;

use crate::constants::DEFAULT_MTU;
use crate::cookie::{CookieChecker, MacVerdict};
use crate::crypto::{PrivateKey, PublicKey};
use crate::messages::{self, Message};
use crate::noise::{self, StaticIdentity};
use crate::outcome::{DropReason, Event, Received, Sent};
use crate::peer::{Context, Delivery, Peer, Sink, HEADROOM};
use crate::time::Instant;

/// Where a [`SinglePeer`] puts what it sends and what happens.
pub trait Output {
    /// Send `datagram` to `destination` (over UDP).
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]);
    /// Something happened (a handshake completed, the endpoint moved, …).
    fn event(&mut self, event: Event) {
        let _ = event;
    }
}

/// Our identity and one peer, with no heap.
#[derive(Debug)]
pub struct SinglePeer {
    identity: StaticIdentity,
    peer: Peer,
    checker: CookieChecker,
    mtu: usize,
    /// (monotonic, unix) at one moment: the wall clock is derived from the monotonic one.
    wall_clock: (Instant, Duration),
    drops: [u64; DropReason::COUNT],
}

/// Lends the caller's output to the peer and keeps the peer's indices unique among its own.
struct OneSink<'a> {
    output: &'a mut dyn Output,
    /// Indices the peer holds when the call begins (a new one must differ from all of them).
    taken: [Option<u32>; 4],
    drops: &'a mut [u64; DropReason::COUNT],
}

impl OneSink<'_> {
    fn new<'a>(
        peer: &Peer,
        output: &'a mut dyn Output,
        drops: &'a mut [u64; DropReason::COUNT],
    ) -> OneSink<'a> {
        let mut taken = [None; 4];
        for (slot, index) in taken.iter_mut().zip(
            peer.handshake_index()
                .into_iter()
                .chain(peer.keypairs().indices()),
        ) {
            *slot = Some(index);
        }
        OneSink {
            output,
            taken,
            drops,
        }
    }
}

impl Sink for OneSink<'_> {
    fn allocate_index(&mut self, rng: &mut dyn CryptoRngCore) -> Option<u32> {
        loop {
            let index = rng.next_u32();
            if !self.taken.contains(&Some(index)) {
                if let Some(free) = self.taken.iter_mut().find(|t| t.is_none()) {
                    *free = Some(index);
                }
                return Some(index);
            }
        }
    }
    fn retire_index(&mut self, _index: u32) {}
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.output.transmit(destination, datagram);
    }
    fn event(&mut self, event: Event) {
        self.output.event(event);
    }
    fn dropped(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }
}

impl SinglePeer {
    /// Our private key and the peer's public key; `jitter_seed` seeds the timer jitter (draw
    /// it from your RNG).
    pub fn new(private_key: PrivateKey, peer: PublicKey, jitter_seed: u64) -> SinglePeer {
        let identity = StaticIdentity::new(private_key);
        SinglePeer {
            checker: CookieChecker::new(Some(&identity)),
            identity,
            peer: Peer::new(peer, jitter_seed),
            mtu: DEFAULT_MTU,
            wall_clock: (Instant::ZERO, Duration::ZERO),
            drops: [0; DropReason::COUNT],
        }
    }

    /// The peer, to read its state.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The peer, to configure it (endpoint, preshared key).
    pub fn peer_mut(&mut self) -> &mut Peer {
        &mut self.peer
    }

    /// Our public key.
    pub fn public_key(&self) -> &PublicKey {
        self.identity.public_key()
    }

    /// Sets the MTU used for padding.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Tells the wall-clock time (since the Unix epoch) at monotonic time `now`.
    pub fn set_unix_time(&mut self, now: Instant, unix: Duration) {
        self.wall_clock = (now, unix);
    }

    /// How many datagrams and packets were dropped for `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    fn unix_time(&self, now: Instant) -> Duration {
        self.wall_clock.1 + (now - self.wall_clock.0)
    }

    fn dropped(&mut self, reason: DropReason) -> Received {
        self.drops[reason.index()] += 1;
        Received::Dropped(reason)
    }

    /// Turns persistent keepalives on (sending one at once) or off (0).
    pub fn set_persistent_keepalive(
        &mut self,
        now: Instant,
        seconds: u16,
        rng: &mut dyn CryptoRngCore,
        output: &mut dyn Output,
    ) {
        self.with_parts(now, rng, output, |peer, cx, sink, _| {
            peer.set_persistent_keepalive(cx, seconds, sink)
        });
    }

    /// An IP packet from the host: `buf[HEADROOM..HEADROOM + packet_len]` holds it and `buf`
    /// has [`TAILROOM`](crate::peer::TAILROOM) more bytes after it. On [`Sent::Transmit`] the
    /// transport message is at the start of `buf`; send it yourself.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet_len: usize,
        output: &mut dyn Output,
    ) -> Sent {
        let Some(packet) = buf.get(HEADROOM..HEADROOM + packet_len) else {
            self.drops[DropReason::BufferTooSmall.index()] += 1;
            return Sent::Dropped(DropReason::BufferTooSmall);
        };
        let mut sink = OneSink::new(&self.peer, output, &mut self.drops);
        let job = match self
            .peer
            .prepare_send(now, packet, buf.len(), self.mtu, &mut sink)
        {
            Ok(job) => job,
            Err(sent) => {
                if let Sent::Dropped(reason) = sent {
                    self.drops[reason.index()] += 1;
                }
                return sent;
            }
        };
        match job.seal(buf, packet_len) {
            Ok(len) => Sent::Transmit {
                destination: job.destination,
                len,
            },
            Err(_) => {
                self.drops[DropReason::BufferTooSmall.index()] += 1;
                Sent::Dropped(DropReason::BufferTooSmall)
            }
        }
    }

    /// A datagram from `source`. On [`Received::Packet`] the IP packet is at
    /// `buf[HEADROOM..HEADROOM + len]`; answers (responses, keepalives) go to `output`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &mut [u8],
        rng: &mut dyn CryptoRngCore,
        output: &mut dyn Output,
    ) -> Received {
        let message_len = buf.len();
        let result =
            self.with_parts(
                now,
                rng,
                output,
                |peer, cx, sink, checker| match messages::parse(buf) {
                    Err(_) => Err(DropReason::Malformed),
                    Ok(Message::Initiation(m)) => {
                        match checker.verify(now, cx.rng, m.bytes(), source, false) {
                            MacVerdict::InvalidMac => Err(DropReason::InvalidMac),
                            _ => {
                                let identity = cx.identity.ok_or(DropReason::NoPrivateKey)?;
                                let part = noise::consume_initiation(identity, &m)
                                    .map_err(|_| DropReason::HandshakeFailed)?;
                                if part.remote_static() != peer.public_key() {
                                    return Err(DropReason::HandshakeFailed);
                                }
                                peer.consume_initiation(cx, part, &m, source, sink)
                                    .map(|()| None)
                            }
                        }
                    }
                    Ok(Message::Response(m)) => {
                        match checker.verify(now, cx.rng, m.bytes(), source, false) {
                            MacVerdict::InvalidMac => Err(DropReason::InvalidMac),
                            _ => peer.consume_response(cx, &m, source, sink).map(|()| None),
                        }
                    }
                    Ok(Message::CookieReply(r)) => {
                        peer.consume_cookie_reply(now, &r).map(|()| None)
                    }
                    Ok(Message::Transport(t)) => {
                        let (index, counter) = (t.receiver_index(), t.counter());
                        let job = peer.prepare_receive(now, index, counter, source)?;
                        job.open(buf)?;
                        peer.finish_receive(now, &job, message_len, cx.mtu, sink)
                            .map(Some)
                    }
                },
            );
        match result {
            Ok(None) => Received::Handshake,
            Ok(Some(Delivery::Keepalive)) => Received::Keepalive,
            Ok(Some(Delivery::Data)) => {
                let plain = &buf[HEADROOM..message_len - crate::crypto::TAG_LEN];
                match crate::ip::source_and_len(plain) {
                    Some((_, len)) => Received::Packet {
                        peer: *self.peer.public_key(),
                        len,
                    },
                    None => self.dropped(DropReason::InvalidInnerPacket),
                }
            }
            Err(reason) => self.dropped(reason),
        }
    }

    /// Runs `f` with the peer, a context (time, identity, RNG, MTU), a sink onto `output` and
    /// the mac checker: the parts one call needs, borrowed side by side.
    fn with_parts<R>(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        output: &mut dyn Output,
        f: impl FnOnce(&mut Peer, &mut Context<'_>, &mut OneSink<'_>, &mut CookieChecker) -> R,
    ) -> R {
        let unix_time = self.unix_time(now);
        let SinglePeer {
            identity,
            peer,
            checker,
            mtu,
            drops,
            ..
        } = self;
        let mut cx = Context {
            now,
            unix_time,
            identity: Some(identity),
            rng,
            mtu: *mtu,
        };
        let mut sink = OneSink::new(peer, output, drops);
        f(peer, &mut cx, &mut sink, checker)
    }

    /// The next moment [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peer.poll_timeout()
    }

    /// Runs what is due: handshakes, retransmissions, keepalives, key erasure.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        output: &mut dyn Output,
    ) {
        self.with_parts(now, rng, output, |peer, cx, sink, _| {
            peer.handle_timeout(cx, sink)
        });
    }
}
