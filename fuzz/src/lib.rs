//! Shared pieces of the fuzz targets: fixed keys and addresses, seeded devices, the framing
//! that turns one fuzz input into a script of datagrams and clock ticks, and the invariants
//! checked after every step.
//!
//! Everything here is deterministic: the devices draw from `ChaCha20Rng::seed_from_u64` and
//! time is virtual, so an input replays identically (a crash reproduces, and the seeds that
//! `make_corpus` writes from a genuine handshake stay genuine when the fuzzer replays them).
//!
//! # Input framing (device targets)
//! A sequence of records, each starting with an op byte `o` (`kind = o & 3`, `sel = o >> 2`):
//!
//! | kind | meaning | followed by |
//! |---|---|---|
//! | 0 | datagram, as is | `u16` LE length, that many bytes (clamped to what is left) |
//! | 1 | datagram with fix-ups: type word, a receiver index the device really handed out, mac1 (and mac2 once a cookie was collected) | same |
//! | 2 | advance the clock by `DELAYS[sel % 16]`, then run due timers | nothing |
//! | 3 | target-specific (the `transport` target: an IP packet from the host) | same as 0 |
//!
//! For datagrams, bit 0 of `sel` picks the source address (the peer's endpoint or a stranger)
//! and the higher bits pick which known index a fix-up splices in.
//!
//! The fix-ups do only what any attacker on the path can do: mac1 keys derive from public keys,
//! indices are visible in the clear, and a cookie is obtained by asking for one.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use rwg_proto::constants::{MAX_EVENTS, MAX_QUEUED_HANDSHAKES, MAX_STAGED_PACKETS};
use rwg_proto::cookie::CookieState;
use rwg_proto::crypto::{hash, PrivateKey, PublicKey, TAG_LEN};
use rwg_proto::device::{DropReason, Received, Sent, Transmit, HEADROOM, TAILROOM};
use rwg_proto::messages::{
    self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN,
    TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT,
};
use rwg_proto::noise::{LABEL_COOKIE, LABEL_MAC1};
use rwg_proto::{Device, Instant};

pub mod peer_sim;

/// Private key of the device under test (the responder, or side A).
pub const KEY_A: [u8; 32] = [0x11; 32];
/// Private key of its one peer (the initiator of the responder target, or side B).
pub const KEY_B: [u8; 32] = [0x22; 32];
/// Tunnel addresses: A's and B's allowed IPs at the other side.
pub const TUNNEL_A4: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);
/// B's IPv4 tunnel address.
pub const TUNNEL_B4: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 2);
/// A's IPv6 tunnel address.
pub const TUNNEL_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// B's IPv6 tunnel address.
pub const TUNNEL_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// A's UDP endpoint.
pub fn addr_a() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 51820)
}
/// B's UDP endpoint.
pub fn addr_b() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 51820)
}
/// Somebody else (IPv6, so that the v6 branches of cookies and the rate limiter run too).
pub fn addr_stranger() -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
        4242,
    )
}

/// Where the virtual clock starts (not zero: `Instant::ZERO` means "now" to poll_timeout).
pub const START: Instant = Instant::from_nanos(1_000_000_000);
/// The wall clock at `START`, for TAI64N timestamps.
pub const UNIX_START: Duration = Duration::from_secs(1_700_000_000);

/// Clock steps a script can take: around every protocol constant (20 ms flood interval,
/// REKEY_TIMEOUT 5 s, KEEPALIVE 10 s, REKEY_AFTER 120 s, REJECT_AFTER 180 s, 540 s zeroing).
pub const DELAYS: [Duration; 16] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(21),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_millis(5_001),
    Duration::from_millis(5_400),
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(25),
    Duration::from_secs(60),
    Duration::from_secs(121),
    Duration::from_secs(165),
    Duration::from_secs(181),
    Duration::from_secs(541),
    Duration::from_secs(3600),
];

/// Largest datagram a script feeds (a bit above a 1420-byte MTU's transport message).
pub const MAX_DATAGRAM: usize = 1600;

/// What the harness derives from a private key: computed once per process, not per input.
#[derive(Clone, Copy, Debug)]
pub struct KeyInfo {
    /// The public key.
    pub public: PublicKey,
    /// HASH(LABEL_MAC1 ‖ public): the key of mac1 on messages to its owner.
    pub mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE ‖ public): decrypts the cookie replies its owner sends.
    pub cookie_key: [u8; 32],
}

/// HASH(LABEL_MAC1 ‖ public): the key of mac1 on messages to the owner of `public`.
pub fn mac1_key(public: &PublicKey) -> [u8; 32] {
    hash(&[LABEL_MAC1, public.as_bytes()])
}

/// [`KeyInfo`] of one of the fixed keys ([`KEY_A`], [`KEY_B`]; anything else is computed).
pub fn key_info(key: [u8; 32]) -> KeyInfo {
    fn derive(key: [u8; 32]) -> KeyInfo {
        let public = PrivateKey::from_bytes(key).public_key();
        KeyInfo {
            public,
            mac1_key: hash(&[LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, public.as_bytes()]),
        }
    }
    static FIXED: OnceLock<[KeyInfo; 2]> = OnceLock::new();
    let fixed = FIXED.get_or_init(|| [derive(KEY_A), derive(KEY_B)]);
    match key {
        KEY_A => fixed[0],
        KEY_B => fixed[1],
        other => derive(other),
    }
}

/// A device with `key`, one peer `peer_key` allowed `peer_tunnel4`/32 and `peer_tunnel6`/128.
pub fn device(
    seed: u64,
    key: [u8; 32],
    peer_key: [u8; 32],
    peer_tunnel4: Ipv4Addr,
    peer_tunnel6: Ipv6Addr,
    endpoint: Option<SocketAddr>,
) -> Device {
    let dev = Device::new(Box::new(ChaCha20Rng::seed_from_u64(seed)));
    dev.set_unix_time(START, UNIX_START);
    dev.set_private_key(Some(PrivateKey::from_bytes(key)));
    let peer = key_info(peer_key).public;
    dev.add_peer(peer);
    dev.add_allowed_ip(&peer, IpAddr::V4(peer_tunnel4), 32)
        .expect("peer exists");
    dev.add_allowed_ip(&peer, IpAddr::V6(peer_tunnel6), 128)
        .expect("peer exists");
    if let Some(e) = endpoint {
        dev.set_endpoint(&peer, e).expect("peer exists");
    }
    dev
}

/// An IPv4 packet from `src` to `dst` carrying `payload`, with a consistent total length.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

/// One step of a script.
#[derive(Debug)]
pub enum Op<'a> {
    /// A datagram from the network; `fixup` asks for type word, index and macs to be made valid.
    Datagram {
        /// Apply the fix-ups.
        fixup: bool,
        /// Source and index choice.
        sel: u8,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Advance the virtual clock, then run due timers.
    Advance(Duration),
    /// Target-specific bytes.
    Special {
        /// Free bits for the target.
        sel: u8,
        /// The bytes.
        bytes: &'a [u8],
    },
}

/// Ops a script runs at most. Every clock step can cost a handshake (several X25519
/// operations, slow under ASan); without a cap a few long inputs dominate the run time and
/// executions per second fall tenfold. 64 steps reach every timer many times over.
pub const MAX_OPS: usize = 64;

/// Splits a fuzz input into [`Op`]s (see the module doc for the framing), at most [`MAX_OPS`].
pub fn ops(mut data: &[u8]) -> impl Iterator<Item = Op<'_>> {
    let all = core::iter::from_fn(move || {
        let (&o, rest) = data.split_first()?;
        data = rest;
        let (kind, sel) = (o & 3, o >> 2);
        if kind == 2 {
            return Some(Op::Advance(DELAYS[usize::from(sel) % DELAYS.len()]));
        }
        let len = match data {
            [lo, hi, rest @ ..] => {
                data = rest;
                usize::from(u16::from_le_bytes([*lo, *hi]))
            }
            _ => core::mem::take(&mut data).len(),
        };
        let len = len.min(data.len()).min(MAX_DATAGRAM);
        let (bytes, rest) = data.split_at(len);
        data = rest;
        Some(match kind {
            0 | 1 => Op::Datagram {
                fixup: kind == 1,
                sel,
                bytes,
            },
            _ => Op::Special { sel, bytes },
        })
    });
    all.take(MAX_OPS)
}

/// Appends a datagram record (inverse of [`ops`]), for seed inputs.
pub fn encode_datagram(out: &mut Vec<u8>, fixup: bool, sel: u8, bytes: &[u8]) {
    out.push((sel << 2) | u8::from(fixup));
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a clock step to `DELAYS[delay_index]`.
pub fn encode_advance(out: &mut Vec<u8>, delay_index: u8) {
    out.push((delay_index << 2) | 2);
}

/// Appends a target-specific record.
pub fn encode_special(out: &mut Vec<u8>, sel: u8, bytes: &[u8]) {
    out.push((sel << 2) | 3);
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn drop_counts(dev: &Device) -> Vec<u64> {
    dev.drop_counts().map(|(_, n)| n).collect()
}

fn reason_index(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is in ALL")
}

/// One device under test, with what an on-path attacker knows about it.
pub struct Harness {
    /// The device.
    pub dev: Device,
    /// The virtual clock.
    pub now: Instant,
    /// Its only peer's public key: the only one a `Received::Packet` may name.
    pub peer: PublicKey,
    /// The peer's endpoint (source of "genuine" datagrams).
    pub peer_addr: SocketAddr,
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    /// The attacker's cookie for this device (mac2 of fixed-up handshake messages).
    attacker_cookie: CookieState,
    /// Indices the device put in handshake messages it sent (visible on the wire).
    pub known_indices: Vec<u32>,
    /// Every datagram the device sent since the last `take_sent`.
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Drive the device as a batching driver does: datagrams through
    /// [`DataPath::decapsulate`](rwg_proto::device::DataPath::decapsulate), which queues
    /// handshake messages, and [`Device::handle_queued_handshakes`] later. Otherwise through
    /// the one-call `handle_datagram`, which handles them at once.
    pub batch: bool,
    /// Calls of the device's waker so far, and at the last drain.
    wakes: Arc<AtomicUsize>,
    wakes_at_drain: usize,
    /// Scratch buffer for `poll_transmit_batch`, and how many segments the next drain asks for.
    out_buf: Vec<u8>,
    segments: usize,
}

impl Harness {
    /// Wraps `dev`, whose private key is `key` and whose peer is `peer_key` at `peer_addr`.
    pub fn new(dev: Device, key: [u8; 32], peer_key: [u8; 32], peer_addr: SocketAddr) -> Self {
        let own = key_info(key);
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = wakes.clone();
        dev.set_waker(Some(Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        })));
        Harness {
            dev,
            now: START,
            peer: key_info(peer_key).public,
            peer_addr,
            mac1_key: own.mac1_key,
            cookie_key: own.cookie_key,
            attacker_cookie: CookieState::default(),
            known_indices: Vec::new(),
            sent: Vec::new(),
            batch: false,
            wakes,
            wakes_at_drain: 0,
            out_buf: vec![0u8; 4 * 2048],
            segments: 1,
        }
    }

    /// The source address `sel` picks.
    pub fn source(&self, sel: u8) -> SocketAddr {
        if sel & 1 == 0 {
            self.peer_addr
        } else {
            addr_stranger()
        }
    }

    /// Makes a datagram pass the outer checks: type word for its length, a real receiver
    /// index, mac1 (and mac2 when the attacker holds a cookie).
    pub fn fix_up(&mut self, sel: u8, msg: &mut [u8]) {
        let index = match self.known_indices.len() {
            0 => 0,
            n => self.known_indices[usize::from(sel >> 1) % n],
        };
        let index = index.to_le_bytes();
        let ty = match msg.len() {
            INITIATION_LEN => TYPE_INITIATION,
            RESPONSE_LEN => TYPE_RESPONSE,
            COOKIE_REPLY_LEN => TYPE_COOKIE_REPLY,
            n if n >= TRANSPORT_MIN_LEN => TYPE_TRANSPORT,
            _ => return,
        };
        msg[..4].copy_from_slice(&ty.to_le_bytes());
        match ty {
            TYPE_INITIATION => {}
            TYPE_RESPONSE => msg[8..12].copy_from_slice(&index),
            _ => msg[4..8].copy_from_slice(&index),
        }
        if matches!(ty, TYPE_INITIATION | TYPE_RESPONSE) {
            self.attacker_cookie.add_macs(self.now, &self.mac1_key, msg);
        }
    }

    /// Feeds one datagram from `source` (one-call or batch path, see [`Harness::batch`]),
    /// checks the verdict against the bytes, drains outputs.
    pub fn receive(&mut self, source: SocketAddr, bytes: &[u8]) -> (Received, Vec<u8>) {
        let mut buf = bytes.to_vec();
        let before = drop_counts(&self.dev);
        let queued_before = self.dev.stats().queued_handshakes;
        let received = if self.batch {
            self.dev.data_path().decapsulate(self.now, source, &mut buf)
        } else {
            self.dev.handle_datagram(self.now, source, &mut buf)
        };
        let after = drop_counts(&self.dev);
        for (b, a) in before.iter().zip(&after) {
            assert!(a >= b, "drop counters never go down");
        }
        let parsed = messages::parse(bytes);
        match received {
            Received::Dropped(reason) => {
                assert!(
                    after[reason_index(reason)] > before[reason_index(reason)],
                    "{reason:?} returned but not counted"
                );
            }
            Received::Packet { ref peer, len } => {
                assert!(matches!(parsed, Ok(Message::Transport(_))));
                assert_eq!(peer, &self.peer, "a packet from a peer we do not have");
                assert!(
                    HEADROOM + len + TAG_LEN <= bytes.len(),
                    "packet beyond payload"
                );
                let version = buf[HEADROOM] >> 4;
                assert!(version == 4 || version == 6, "non-IP packet delivered");
            }
            Received::Keepalive => {
                assert!(matches!(parsed, Ok(Message::Transport(_))));
                assert_eq!(bytes.len(), TRANSPORT_MIN_LEN, "keepalive with a payload");
            }
            Received::Handshake => {
                assert!(
                    matches!(
                        parsed,
                        Ok(Message::Initiation(_) | Message::Response(_) | Message::CookieReply(_))
                    ),
                    "a transport message reported as a handshake"
                );
                if self.batch {
                    // Queued, not handled: the queue grew by exactly this message.
                    assert_eq!(self.dev.stats().queued_handshakes, queued_before + 1);
                    assert!(self.dev.has_queued_handshakes());
                }
            }
        }
        if parsed.is_err() {
            assert_eq!(received, Received::Dropped(DropReason::Malformed));
        }
        self.drain();
        self.check_bounds(false);
        (received, buf)
    }

    /// Handles every queued handshake message, as a batching driver does after a batch.
    pub fn handle_queued(&mut self) {
        let queued = self.dev.stats().queued_handshakes;
        assert_eq!(self.dev.has_queued_handshakes(), queued > 0);
        let handled = self.dev.handle_queued_handshakes(self.now);
        assert_eq!(handled, queued, "handles what was queued when it started");
        assert!(!self.dev.has_queued_handshakes());
        self.drain();
        self.check_bounds(false);
    }

    /// Moves the clock and runs the timers until nothing is due.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.dev.has_queued_handshakes() {
            self.handle_queued();
        }
        self.run_timers();
    }

    /// Runs `handle_timeout` while `poll_timeout` says something is due (bounded).
    pub fn run_timers(&mut self) {
        self.dev.handle_timeout(self.now);
        self.drain();
        for _ in 0..4 {
            match self.dev.poll_timeout() {
                Some(t) if t <= self.now => {
                    self.dev.handle_timeout(self.now);
                    self.drain();
                }
                _ => break,
            }
        }
        if let Some(t) = self.dev.poll_timeout() {
            assert!(
                t > self.now,
                "still due after handle_timeout ran five times: a driver would spin"
            );
        }
        self.check_bounds(true);
    }

    /// Takes every datagram and event out of the device (in GSO batches of 1 to 4 segments,
    /// varying from call to call), checking each datagram.
    pub fn drain(&mut self) {
        let pending = self.dev.has_output();
        let wakes = self.wakes.load(Ordering::Relaxed);
        if pending {
            // Output appeared since the last drain emptied the outbox: the driver was woken.
            assert!(
                wakes > self.wakes_at_drain,
                "output queued without a wake-up"
            );
        }
        let mut out = core::mem::take(&mut self.out_buf);
        while let Some(t) = self.dev.poll_transmit_batch(&mut out, self.segments) {
            assert!(pending, "has_output was false with a datagram queued");
            let Transmit {
                destination,
                len,
                segment_size,
                ..
            } = t;
            assert!(
                destination == self.peer_addr || destination == addr_stranger(),
                "sent to {destination}, which nobody told it about"
            );
            assert!(len <= out.len() && segment_size > 0 && segment_size <= len);
            let count = t.datagrams(&out).count();
            assert!(
                count <= self.segments,
                "{count} segments, asked for {}",
                self.segments
            );
            for (i, msg) in t.datagrams(&out).enumerate() {
                assert!(
                    msg.len() == segment_size || (i + 1 == count && msg.len() < segment_size),
                    "only the last segment of a batch may be shorter"
                );
                self.note_sent(destination, msg);
            }
            self.segments = self.segments % 4 + 1;
        }
        self.out_buf = out;
        while self.dev.poll_event().is_some() {
            assert!(pending, "has_output was false with an event queued");
        }
        assert!(!self.dev.has_output(), "drained");
        self.wakes_at_drain = self.wakes.load(Ordering::Relaxed);
    }

    fn note_sent(&mut self, destination: SocketAddr, msg: &[u8]) {
        match messages::parse(msg) {
            Ok(Message::Initiation(m)) => self.known_indices.push(m.sender_index()),
            Ok(Message::Response(m)) => self.known_indices.push(m.sender_index()),
            Ok(Message::CookieReply(reply)) => {
                // Collect the cookie, as a real attacker would (fails for the peer's replies).
                let _ = self
                    .attacker_cookie
                    .consume_reply(self.now, &self.cookie_key, &reply);
            }
            Ok(Message::Transport(_)) => {}
            Err(e) => panic!("the device sent a malformed datagram ({e}): {msg:02x?}"),
        }
        // Bounded: the list only helps the fix-ups pick real indices.
        if self.known_indices.len() > 8 {
            self.known_indices.remove(0);
        }
        self.sent.push((destination, msg.to_vec()));
    }

    /// The device's tables and queues stay within their ceilings whatever arrives.
    pub fn check_bounds(&self, after_timers: bool) {
        let s = self.dev.stats();
        assert_eq!(s.peers, 1);
        assert!(s.queued_handshakes <= MAX_QUEUED_HANDSHAKES, "{s:?}");
        assert_eq!(s.outbox, 0, "drained");
        assert!(s.events <= MAX_EVENTS, "{s:?}");
        assert!(s.staged_packets <= MAX_STAGED_PACKETS, "{s:?}");
        assert!(s.scheduled <= 1, "one peer, one deadline entry: {s:?}");
        // One handshake in flight and three keypair slots; entries of dropped keypairs are only
        // pruned by the next control-path call, so allow some slack in between.
        let max_indices = if after_timers { 4 } else { 8 };
        assert!(s.indices <= max_indices, "index table grew: {s:?}");
    }

    /// Datagrams sent since the last call.
    pub fn take_sent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        core::mem::take(&mut self.sent)
    }

    /// Hands `packet` to `handle_packet`; returns the transport message if one came out.
    pub fn send_packet(&mut self, packet: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let sent = self.dev.handle_packet(self.now, &mut buf, packet.len());
        let out = match sent {
            Sent::Transmit { destination, len } => {
                assert!(len >= TRANSPORT_MIN_LEN + packet.len() && len <= buf.len());
                assert!(
                    matches!(messages::parse(&buf[..len]), Ok(Message::Transport(_))),
                    "handle_packet produced a malformed message"
                );
                assert_eq!(destination, self.peer_addr);
                Some((destination, buf[..len].to_vec()))
            }
            Sent::Staged | Sent::Dropped(_) => None,
        };
        self.drain();
        self.check_bounds(false);
        out
    }

    /// Runs one op of a responder or initiator script (`Special` is a datagram too, from
    /// the stranger, without fix-ups). In batch mode, bit 5 of a datagram's `sel` ends the
    /// batch: queued handshakes are handled and due timers run, as a driver does.
    pub fn step(&mut self, op: Op<'_>) {
        match op {
            Op::Datagram { fixup, sel, bytes } => {
                let mut msg = bytes.to_vec();
                if fixup {
                    self.fix_up(sel, &mut msg);
                }
                let source = self.source(sel);
                self.receive(source, &msg);
                if self.batch && sel & 0x20 != 0 {
                    self.handle_queued();
                    if self.dev.poll_timeout().is_some_and(|t| t <= self.now) {
                        self.run_timers();
                    }
                }
            }
            Op::Advance(d) => self.advance(d),
            Op::Special { bytes, .. } => {
                self.receive(addr_stranger(), bytes);
            }
        }
        // Nothing accumulates across steps.
        self.sent.clear();
    }
}

/// The responder target's device: A, knowing B (no endpoint: it learns B's from the initiation).
pub fn responder(under_load: bool) -> Harness {
    let dev = device(1, KEY_A, KEY_B, TUNNEL_B4, TUNNEL_B6, None);
    if under_load {
        dev.report_handshake_load(10_000);
    }
    Harness::new(dev, KEY_A, KEY_B, addr_b())
}

/// The peer of the responder target, B, with A's endpoint (used to make seeds).
pub fn responder_peer() -> Harness {
    let dev = device(2, KEY_B, KEY_A, TUNNEL_A4, TUNNEL_A6, Some(addr_a()));
    Harness::new(dev, KEY_B, KEY_A, addr_a())
}

/// The initiator target's device A (endpoint of B known), after it staged a packet for B and
/// sent its initiation. Returns the harness and the initiation.
pub fn initiator() -> (Harness, Vec<u8>) {
    let dev = device(3, KEY_A, KEY_B, TUNNEL_B4, TUNNEL_B6, Some(addr_b()));
    let mut h = Harness::new(dev, KEY_A, KEY_B, addr_b());
    let packet = ipv4_packet(TUNNEL_A4, TUNNEL_B4, b"hello");
    assert!(h.send_packet(&packet).is_none(), "no session yet: staged");
    let mut sent = h.take_sent();
    assert_eq!(sent.len(), 1, "exactly the initiation");
    let (_, initiation) = sent.remove(0);
    assert!(matches!(
        messages::parse(&initiation),
        Ok(Message::Initiation(_))
    ));
    (h, initiation)
}

/// The responder that answers the initiator target's device (used to make seeds).
pub fn initiator_peer() -> Harness {
    let dev = device(4, KEY_B, KEY_A, TUNNEL_A4, TUNNEL_A6, Some(addr_a()));
    Harness::new(dev, KEY_B, KEY_A, addr_a())
}

/// Two devices with an established session, both sides confirmed: A initiated, B answered and
/// received A's first transport message.
pub struct Pair {
    /// The initiator.
    pub a: Harness,
    /// The responder.
    pub b: Harness,
    /// The transport message of the last `send`.
    pub last_message: Vec<u8>,
    /// Setup's A→B and B→A data messages.
    pub setup_messages: [Vec<u8>; 2],
}

impl Pair {
    /// Runs the handshake in memory.
    pub fn established() -> Self {
        let a = Harness::new(
            device(5, KEY_A, KEY_B, TUNNEL_B4, TUNNEL_B6, Some(addr_b())),
            KEY_A,
            KEY_B,
            addr_b(),
        );
        let b = Harness::new(
            device(6, KEY_B, KEY_A, TUNNEL_A4, TUNNEL_A6, Some(addr_a())),
            KEY_B,
            KEY_A,
            addr_a(),
        );
        let mut pair = Pair {
            a,
            b,
            last_message: Vec::new(),
            setup_messages: [Vec::new(), Vec::new()],
        };
        let packet = ipv4_packet(TUNNEL_A4, TUNNEL_B4, b"first");
        assert!(pair.a.send_packet(&packet).is_none(), "staged");
        pair.pump();
        // Both sides can now send directly.
        for (from_a, packet) in [
            (true, ipv4_packet(TUNNEL_A4, TUNNEL_B4, b"a to b")),
            (false, ipv4_packet(TUNNEL_B4, TUNNEL_A4, b"b to a")),
        ] {
            let delivered = pair.send(from_a, &packet).and_then(|(_, d)| d);
            assert_eq!(
                delivered.as_deref(),
                Some(&packet[..]),
                "session established"
            );
            pair.setup_messages[usize::from(!from_a)] = pair.last_message.clone();
        }
        pair
    }

    /// Delivers everything either side sent to the other until both are quiet (bounded).
    pub fn pump(&mut self) {
        for _ in 0..8 {
            let from_a = self.a.take_sent();
            let from_b = self.b.take_sent();
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (_, msg) in from_a {
                self.b.receive(addr_a(), &msg);
            }
            for (_, msg) in from_b {
                self.a.receive(addr_b(), &msg);
            }
        }
        // Still talking after 8 rounds: stop delivering (the network may drop anything).
        self.a.sent.clear();
        self.b.sent.clear();
    }

    /// Sends `packet` from A (or B) through `handle_packet` and delivers the transport message
    /// to the other side. `None` if nothing was sent directly (staged or dropped); else the
    /// receiver's verdict and the packet it delivered, if any.
    pub fn send(&mut self, from_a: bool, packet: &[u8]) -> Option<(Received, Option<Vec<u8>>)> {
        let (from, to, source) = if from_a {
            (&mut self.a, &mut self.b, addr_a())
        } else {
            (&mut self.b, &mut self.a, addr_b())
        };
        let Some((_, msg)) = from.send_packet(packet) else {
            self.pump();
            return None;
        };
        let (received, buf) = to.receive(source, &msg);
        self.last_message = msg;
        let delivered = match received {
            Received::Packet { len, .. } => Some(buf[HEADROOM..HEADROOM + len].to_vec()),
            _ => None,
        };
        self.pump();
        Some((received, delivered))
    }

    /// Moves both clocks.
    pub fn advance(&mut self, d: Duration) {
        self.a.now += d;
        self.b.now += d;
        self.a.run_timers();
        self.b.run_timers();
        self.pump();
    }
}
