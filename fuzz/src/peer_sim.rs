//! The world of the `peer` target: two [`Peer`] state machines, P (key A) and Q (key B),
//! each with the owner a device would be — a door that checks mac1 (and, under load, mac2,
//! answering with cookie replies), finds the peer and calls it; a [`Sink`] that hands out and
//! takes back receiver indices — and a network between them that the input controls: it
//! delivers, reorders, duplicates, drops, corrupts and replays datagrams, forges new ones,
//! moves the clock and reconfigures either side.
//!
//! # Input
//! A sequence of ops, one op byte `o` each (`kind = o & 15`, `sel = o >> 4`, `side = sel & 1`
//! where an op concerns one side), followed by its arguments; bytes missing at the end read
//! as zero. At most [`MAX_OPS`](crate::MAX_OPS) ops run.
//!
//! | kind | op | arguments |
//! |---|---|---|
//! | 0 | deliver in-flight datagram `sel % n` | |
//! | 1 | deliver it and keep a copy in flight (a duplicate) | |
//! | 2 | drop it | |
//! | 3 | deliver it with byte `pos` XORed with `x` (non-zero); `sel & 4`: then fix mac1 (an on-path forger) | `pos`, `x` |
//! | 4 | advance the clock by `DELAYS[sel]` | |
//! | 5 | `prepare_send` + seal a packet of `len` bytes on `side`; `sel & 2`: buffer one byte short; `sel & 4`: 65 times (two bursts overflow the staging queue) | `len`, packet |
//! | 6 | `handle_timeout` on `side` now, due or not (a spurious wake-up) | |
//! | 7 | `initiate` on `side` | |
//! | 8 | persistent keepalive on `side`: `[0, 1, 10, 25][sel >> 1 & 3]` s | |
//! | 9 | `side` switches its private key to C (`sel & 2`) or back to its own | |
//! | 10 | preshared keys: `sel & 3` = none / both K / P only / Q only | |
//! | 11 | `side`'s endpoint: none / the other side / the stranger, or (3) toggle its roaming | |
//! | 12 | toggle "under load" at `side`'s door (mac2 required, cookie replies sent) | |
//! | 13 | a datagram of `len` bytes (u16 LE) from the input to `side`; `sel & 2`: fix up type, receiver index (`sel >> 2` picks one `side` uses) and mac1 | `len`, bytes |
//! | 14 | replay datagram `sel` of the last 16 sent | |
//! | 15 | `remove` `side` (it then ignores everything) | |
//!
//! After every op, each side's due timers run as a driver runs them (`handle_timeout` while
//! `poll_timeout` is due, at most five times).
//!
//! # Invariants (checked after every op; any violation panics)
//! - The indices a peer holds (handshake in flight, keypairs) are exactly those it was given
//!   by [`Sink::allocate_index`] and has not given back; it never gives back one it does not
//!   hold.
//! - Staged packets never exceed [`MAX_STAGED_PACKETS`]; they leave in order, oldest dropped
//!   first (checked against a model queue), and are all sent when a handshake completes.
//! - A message the door or the peer rejects changes nothing the peer shows (endpoint,
//!   counters, indices, timers, staged packets, last handshake).
//! - A message accepted once is never accepted again (initiations, responses, transport
//!   messages); a corrupted message (outside mac2) is never accepted; a transport message
//!   accepted unaltered decrypts to exactly the packet that was sent (then zero padding).
//! - `handle_timeout` before `poll_timeout` does nothing at all; after a driver's round of
//!   `handle_timeout`, `poll_timeout` is in the future (no spinning).
//! - Every datagram a peer sends parses, goes to its endpoint, and handshake messages carry a
//!   valid mac1 for the other side's key; byte counters only grow; events match the state.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use rand_chacha::rand_core::{CryptoRngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rwg_proto::constants::{DEFAULT_MTU, MAX_STAGED_PACKETS};
use rwg_proto::cookie::{CookieChecker, MacVerdict};
use rwg_proto::crypto::{mac, PresharedKey, PrivateKey, TAG_LEN};
use rwg_proto::keypair::{padded_len, SlotName};
use rwg_proto::messages::{
    self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN,
    TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT,
};
use rwg_proto::noise::{self, StaticIdentity};
use rwg_proto::peer::{Context, Delivery, Peer, Sink, HEADROOM};
use rwg_proto::timers::Timer;
use rwg_proto::{DropReason, Event, Instant, Sent};

use crate::{
    addr_a, addr_b, addr_stranger, key_info, mac1_key, DELAYS, KEY_A, KEY_B, MAX_OPS, START,
    UNIX_START,
};

/// The private key either side may switch to (op 9).
pub const KEY_C: [u8; 32] = [0x33; 32];
/// The preshared key of op 10.
const PSK: [u8; 32] = [0x44; 32];

/// Op kinds (see the module doc), for seed writers.
#[allow(missing_docs)]
pub mod op {
    pub const DELIVER: u8 = 0;
    pub const DUPLICATE: u8 = 1;
    pub const DROP: u8 = 2;
    pub const CORRUPT: u8 = 3;
    pub const ADVANCE: u8 = 4;
    pub const SEND: u8 = 5;
    pub const WAKE: u8 = 6;
    pub const INITIATE: u8 = 7;
    pub const KEEPALIVE: u8 = 8;
    pub const IDENTITY: u8 = 9;
    pub const PSK: u8 = 10;
    pub const ENDPOINT: u8 = 11;
    pub const LOAD: u8 = 12;
    pub const CRAFT: u8 = 13;
    pub const REPLAY: u8 = 14;
    pub const REMOVE: u8 = 15;
}

/// The op byte for `kind` with `sel`.
pub fn op_byte(kind: u8, sel: u8) -> u8 {
    (sel << 4) | (kind & 15)
}

/// Identities of keys A, B and C, derived once.
fn identity(key: [u8; 32]) -> StaticIdentity {
    static IDS: OnceLock<[StaticIdentity; 3]> = OnceLock::new();
    let ids = IDS.get_or_init(|| {
        [KEY_A, KEY_B, KEY_C].map(|k| StaticIdentity::new(PrivateKey::from_bytes(k)))
    });
    match key {
        KEY_A => ids[0].clone(),
        KEY_B => ids[1].clone(),
        _ => ids[2].clone(),
    }
}

/// A datagram on the network.
#[derive(Clone, Debug)]
struct Flight {
    /// The side it is for.
    to: usize,
    source: SocketAddr,
    bytes: Vec<u8>,
    /// For a transport message a peer sealed: the packet inside (empty for a keepalive).
    plain: Option<Vec<u8>>,
}

/// What the input did to a datagram before delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    /// Delivered as sent (possibly again, possibly late).
    None,
    /// One byte at this offset changed, nothing else: must be refused (outside mac2).
    Corrupted(usize),
    /// Changed and made to pass the outer checks again: anything may happen.
    Forged,
}

/// The door's verdict on a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A handshake message or cookie reply the peer consumed.
    Consumed,
    /// Under load without a valid mac2: the door answered with a cookie reply.
    CookieSent,
    /// An authentic transport message.
    Delivered(Delivery),
}

/// What a peer shows; a rejected message must leave it unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    endpoint: Option<SocketAddr>,
    tx: u64,
    rx: u64,
    handshake: Option<u32>,
    keypairs: [Option<(u32, u32)>; 3],
    last_handshake: Option<Instant>,
    poll_timeout: Option<Instant>,
    deadlines: [Option<Instant>; 5],
    staged: usize,
    persistent_keepalive: u16,
}

fn observe(peer: &Peer) -> Observed {
    let kp = |name| {
        peer.keypairs()
            .get(name)
            .map(|k| (k.local_index(), k.remote_index()))
    };
    Observed {
        endpoint: peer.endpoint(),
        tx: peer.tx_bytes(),
        rx: peer.rx_bytes(),
        handshake: peer.handshake_index(),
        keypairs: [
            kp(SlotName::Current),
            kp(SlotName::Previous),
            kp(SlotName::Next),
        ],
        last_handshake: peer.last_handshake(),
        poll_timeout: peer.poll_timeout(),
        deadlines: Timer::ALL.map(|t| peer.timers().deadline(t)),
        staged: peer.staged_len(),
        persistent_keepalive: peer.persistent_keepalive(),
    }
}

/// The owner's side of [`Sink`]: an index table and the effects of one call.
struct Effects<'a> {
    live: &'a mut BTreeSet<u32>,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<Event>,
    dropped: Vec<DropReason>,
}

impl<'a> Effects<'a> {
    fn new(live: &'a mut BTreeSet<u32>) -> Self {
        Effects {
            live,
            sent: Vec::new(),
            events: Vec::new(),
            dropped: Vec::new(),
        }
    }
    fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.events.is_empty() && self.dropped.is_empty()
    }
}

impl Sink for Effects<'_> {
    fn allocate_index(&mut self, rng: &mut dyn CryptoRngCore) -> Option<u32> {
        loop {
            let index = rng.next_u32();
            if self.live.insert(index) {
                return Some(index);
            }
        }
    }
    fn retire_index(&mut self, index: u32) {
        assert!(
            self.live.remove(&index),
            "retired index {index:#x}, which it does not hold"
        );
    }
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.sent.push((destination, datagram.to_vec()));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
    fn dropped(&mut self, reason: DropReason) {
        self.dropped.push(reason);
    }
}

/// One peer and its owner.
struct Side {
    peer: Peer,
    /// Our private key's identity (A or B, or C after op 9).
    identity: StaticIdentity,
    checker: CookieChecker,
    under_load: bool,
    /// Our own address, and whether our datagrams now come from the stranger's (roaming).
    addr: SocketAddr,
    roaming: bool,
    /// Indices given to the peer and not yet given back.
    live: BTreeSet<u32>,
    /// The packets the peer has staged, oldest first (a model of its queue).
    staged: VecDeque<Vec<u8>>,
    /// Messages the peer accepted (exactly-once check); bounded.
    accepted: HashSet<Vec<u8>>,
    last: Observed,
    removed: bool,
}

impl Side {
    fn new(own: [u8; 32], other: [u8; 32], addr: SocketAddr, jitter: u64) -> Side {
        let identity = identity(own);
        let peer = Peer::new(key_info(other).public, jitter);
        Side {
            checker: CookieChecker::new(Some(&identity)),
            identity,
            last: observe(&peer),
            peer,
            under_load: false,
            addr,
            roaming: false,
            live: BTreeSet::new(),
            staged: VecDeque::new(),
            accepted: HashSet::new(),
            removed: false,
        }
    }

    fn source(&self) -> SocketAddr {
        if self.roaming {
            addr_stranger()
        } else {
            self.addr
        }
    }
}

/// The two peers, the network and the clock.
pub struct Sim {
    now: Instant,
    rng: ChaCha20Rng,
    sides: [Side; 2],
    net: VecDeque<Flight>,
    history: VecDeque<Flight>,
    mtu: usize,
}

/// Datagrams in flight at most (the oldest is lost beyond).
const MAX_IN_FLIGHT: usize = 32;
/// Datagrams kept for replays.
const HISTORY: usize = 16;

/// Reads op arguments; missing bytes are zero.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// P and Q, knowing each other's keys and addresses, no session yet.
    pub fn new() -> Sim {
        let mut p = Side::new(KEY_A, KEY_B, addr_a(), 1);
        let mut q = Side::new(KEY_B, KEY_A, addr_b(), 2);
        p.peer.set_endpoint(Some(addr_b()));
        q.peer.set_endpoint(Some(addr_a()));
        p.last = observe(&p.peer);
        q.last = observe(&q.peer);
        Sim {
            now: START,
            rng: ChaCha20Rng::seed_from_u64(9),
            sides: [p, q],
            net: VecDeque::new(),
            history: VecDeque::new(),
            mtu: DEFAULT_MTU,
        }
    }

    /// Runs a whole input.
    pub fn run(&mut self, data: &[u8]) {
        let mut r = Reader(data);
        for _ in 0..MAX_OPS {
            if r.0.is_empty() {
                break;
            }
            let o = r.byte();
            self.op(o & 15, o >> 4, &mut r);
            for side in 0..2 {
                self.run_timers(side);
                self.check(side);
            }
        }
    }

    /// Whether a completed session carried data both ways at some point (for `make_corpus`).
    pub fn established(&self) -> bool {
        self.sides.iter().all(|s| s.peer.last_handshake().is_some())
    }

    fn unix_time(&self) -> Duration {
        UNIX_START + (self.now - START)
    }

    fn op(&mut self, kind: u8, sel: u8, r: &mut Reader<'_>) {
        let side = usize::from(sel & 1);
        match kind {
            op::DELIVER | op::DUPLICATE | op::DROP | op::CORRUPT => {
                if self.net.is_empty() {
                    return;
                }
                let at = usize::from(sel) % self.net.len();
                let flight = if kind == op::DUPLICATE {
                    self.net[at].clone()
                } else {
                    self.net.remove(at).expect("in range")
                };
                match kind {
                    op::DROP => {}
                    op::CORRUPT => {
                        let (pos, x) = (usize::from(r.byte()), r.byte().max(1));
                        self.corrupt(flight, pos, x, sel & 4 != 0);
                    }
                    _ => self.deliver(flight, Tamper::None),
                }
            }
            op::ADVANCE => self.now += DELAYS[usize::from(sel)],
            op::SEND => {
                let len = usize::from(r.byte());
                let packet = r.bytes(len).to_vec();
                let times = if sel & 4 != 0 {
                    MAX_STAGED_PACKETS / 2 + 1
                } else {
                    1
                };
                for _ in 0..times {
                    self.send(side, &packet, sel & 2 != 0);
                }
            }
            op::WAKE => self.wake(side),
            op::INITIATE => self.with_peer(side, |peer, cx, fx| peer.initiate(cx, fx)),
            op::KEEPALIVE => {
                let seconds = [0, 1, 10, 25][usize::from(sel >> 1 & 3)];
                self.with_peer(side, |peer, cx, fx| {
                    peer.set_persistent_keepalive(cx, seconds, fx)
                });
                if !self.sides[side].removed {
                    assert_eq!(self.sides[side].peer.persistent_keepalive(), seconds);
                }
            }
            op::IDENTITY => {
                let own = if side == 0 { KEY_A } else { KEY_B };
                let key = if sel & 2 != 0 { KEY_C } else { own };
                let s = &mut self.sides[side];
                if s.removed || s.identity.private_key().as_bytes() == &key {
                    return;
                }
                s.identity = identity(key);
                s.checker = CookieChecker::new(Some(&s.identity));
                let mut fx = Effects::new(&mut s.live);
                s.peer.identity_changed(&mut fx);
                assert!(fx.sent.is_empty() && fx.events.is_empty());
                assert_eq!(s.peer.handshake_index(), None, "handshake abandoned");
            }
            op::PSK => {
                let psk = |on: bool| {
                    if on {
                        PresharedKey::from_bytes(PSK)
                    } else {
                        PresharedKey::none()
                    }
                };
                let (p, q) = match sel & 3 {
                    0 => (false, false),
                    1 => (true, true),
                    2 => (true, false),
                    _ => (false, true),
                };
                self.sides[0].peer.set_preshared_key(psk(p));
                self.sides[1].peer.set_preshared_key(psk(q));
            }
            op::ENDPOINT => {
                let other = self.sides[1 - side].addr;
                let s = &mut self.sides[side];
                match sel >> 1 & 3 {
                    0 => s.peer.set_endpoint(None),
                    1 => s.peer.set_endpoint(Some(other)),
                    2 => s.peer.set_endpoint(Some(addr_stranger())),
                    _ => s.roaming = !s.roaming,
                }
            }
            op::LOAD => self.sides[side].under_load = !self.sides[side].under_load,
            op::CRAFT => {
                let len = usize::from(u16::from_le_bytes([r.byte(), r.byte()]));
                let mut bytes = r.bytes(len.min(crate::MAX_DATAGRAM)).to_vec();
                if sel & 2 != 0 {
                    self.fix_up(side, sel >> 2, &mut bytes);
                }
                let source = self.sides[1 - side].source();
                let flight = Flight {
                    to: side,
                    source,
                    bytes,
                    plain: None,
                };
                self.deliver(flight, Tamper::Forged);
            }
            op::REPLAY => {
                if let Some(f) = self
                    .history
                    .get(usize::from(sel) % self.history.len().max(1))
                {
                    let f = f.clone();
                    self.deliver(f, Tamper::None);
                }
            }
            _ => {
                let s = &mut self.sides[side];
                if s.removed {
                    return;
                }
                let mut fx = Effects::new(&mut s.live);
                s.peer.remove(&mut fx);
                assert!(fx.sent.is_empty(), "remove sends nothing");
                assert!(s.live.is_empty(), "remove gives back every index");
                assert_eq!(s.peer.staged_len(), 0);
                assert_eq!(s.peer.poll_timeout(), None, "a removed peer has no timers");
                s.staged.clear();
                s.removed = true;
            }
        }
    }

    /// Runs `f` on a side's peer with a context and a sink, then files its effects.
    fn with_peer(
        &mut self,
        side: usize,
        f: impl FnOnce(&mut Peer, &mut Context<'_>, &mut Effects<'_>),
    ) {
        let unix_time = self.unix_time();
        let (now, mtu) = (self.now, self.mtu);
        let s = &mut self.sides[side];
        if s.removed {
            return;
        }
        let mut fx = Effects::new(&mut s.live);
        let mut cx = Context {
            now,
            unix_time,
            identity: Some(&s.identity),
            rng: &mut self.rng,
            mtu,
        };
        f(&mut s.peer, &mut cx, &mut fx);
        let Effects {
            sent,
            events,
            dropped,
            ..
        } = fx;
        self.file(side, sent, events, dropped, None);
    }

    /// The effects of a call on `side`: datagrams into the network (staged packets matched
    /// to the model), events checked.
    fn file(
        &mut self,
        side: usize,
        sent: Vec<(SocketAddr, Vec<u8>)>,
        events: Vec<Event>,
        dropped: Vec<DropReason>,
        accepted_from: Option<SocketAddr>,
    ) {
        let s = &mut self.sides[side];
        for reason in dropped {
            // The only drop a peer reports through the sink: a staged packet made room.
            assert_eq!(reason, DropReason::StagedOverflow);
        }
        for event in events {
            match event {
                Event::HandshakeCompleted { peer } => {
                    assert_eq!(&peer, s.peer.public_key());
                    assert_eq!(s.peer.last_handshake(), Some(self.now));
                    let can_send = s
                        .peer
                        .keypairs()
                        .get(SlotName::Current)
                        .is_some_and(|k| k.can_send(self.now));
                    if s.peer.endpoint().is_some() && can_send {
                        assert_eq!(s.peer.staged_len(), 0, "staged packets sent on completion");
                    }
                }
                Event::EndpointChanged { peer, endpoint } => {
                    assert_eq!(&peer, s.peer.public_key());
                    assert_eq!(
                        Some(endpoint),
                        accepted_from,
                        "the endpoint moved without an authenticated message from there"
                    );
                    assert_eq!(s.peer.endpoint(), Some(endpoint));
                }
                Event::HandshakeGaveUp { .. } => {
                    assert_eq!(s.peer.staged_len(), 0, "giving up drops staged packets");
                    s.staged.clear();
                }
                Event::KeysZeroed { .. } => {
                    // (A persistent keepalive due in the same call may start a new handshake.)
                    assert!(s.peer.keypairs().is_empty(), "keys erased");
                }
            }
        }
        let mac1_key = mac1_key(s.peer.public_key());
        let source = s.source();
        let mut last_initiation = None;
        let mut flights = Vec::with_capacity(sent.len());
        for (destination, bytes) in sent {
            assert_eq!(
                Some(destination),
                s.peer.endpoint(),
                "a peer sends only to its endpoint"
            );
            let plain = match messages::parse(&bytes) {
                Ok(Message::Initiation(m)) => {
                    let off = INITIATION_LEN - 32;
                    assert_eq!(mac(&mac1_key, &[&bytes[..off]]), bytes[off..off + 16]);
                    last_initiation = Some(m.sender_index());
                    None
                }
                Ok(Message::Response(m)) => {
                    let off = RESPONSE_LEN - 32;
                    assert_eq!(mac(&mac1_key, &[&bytes[..off]]), bytes[off..off + 16]);
                    assert!(s.peer.owns_index(m.sender_index()));
                    None
                }
                Ok(Message::Transport(_)) => match s.staged.pop_front() {
                    Some(packet) => Some(packet),
                    None => {
                        assert_eq!(bytes.len(), TRANSPORT_MIN_LEN, "only keepalives unstaged");
                        Some(Vec::new())
                    }
                },
                other => panic!("a peer sent {other:?}"),
            };
            flights.push(Flight {
                to: 1 - side,
                source,
                bytes,
                plain,
            });
        }
        // The initiation just sent is the one in flight, also when the key erasure came due in
        // the same `handle_timeout` (this target found the case where the erasure ran after
        // the initiation and forgot it; the timers now erase first).
        if let Some(index) = last_initiation {
            assert_eq!(s.peer.handshake_index(), Some(index));
        }
        for f in flights {
            self.launch(f);
        }
    }

    fn launch(&mut self, flight: Flight) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(flight.clone());
        if self.net.len() >= MAX_IN_FLIGHT {
            self.net.pop_front();
        }
        self.net.push_back(flight);
    }

    /// An on-path attacker's fix-ups: type word for the length, a receiver index `side` uses,
    /// mac1 for `side`'s key.
    fn fix_up(&self, side: usize, pick: u8, msg: &mut [u8]) {
        let peer = &self.sides[side].peer;
        let held: Vec<u32> = peer
            .handshake_index()
            .into_iter()
            .chain(peer.keypairs().indices())
            .collect();
        let index = match held.len() {
            0 => 0,
            n => held[usize::from(pick) % n],
        }
        .to_le_bytes();
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
        self.fix_mac1(side, msg);
    }

    /// Recomputes mac1 of a handshake message for `side`'s current key.
    fn fix_mac1(&self, side: usize, msg: &mut [u8]) {
        let off = match messages::parse(msg) {
            Ok(Message::Initiation(_)) => INITIATION_LEN - 32,
            Ok(Message::Response(_)) => RESPONSE_LEN - 32,
            _ => return,
        };
        let key = mac1_key(self.sides[side].identity.public_key());
        let m = mac(&key, &[&msg[..off]]);
        msg[off..off + 16].copy_from_slice(&m);
    }

    fn corrupt(&mut self, mut flight: Flight, pos: usize, x: u8, forge: bool) {
        if flight.bytes.is_empty() {
            return;
        }
        let pos = pos % flight.bytes.len();
        flight.bytes[pos] ^= x;
        let tamper = if forge {
            self.fix_mac1(flight.to, &mut flight.bytes);
            Tamper::Forged
        } else {
            Tamper::Corrupted(pos)
        };
        self.deliver(flight, tamper);
    }

    /// The door of `flight.to`, then the checks on what happened.
    fn deliver(&mut self, flight: Flight, tamper: Tamper) {
        let j = flight.to;
        if self.sides[j].removed {
            return;
        }
        let before = observe(&self.sides[j].peer);
        let unix_time = self.unix_time();
        let (now, mtu) = (self.now, self.mtu);
        let mut buf = flight.bytes.clone();
        let source = flight.source;
        let Side {
            peer,
            identity,
            checker,
            under_load,
            live,
            ..
        } = &mut self.sides[j];
        let mut fx = Effects::new(live);
        let mut cookie_reply = None;
        let mut cx = Context {
            now,
            unix_time,
            identity: Some(identity),
            rng: &mut self.rng,
            mtu,
        };
        let parsed = messages::parse(&buf);
        let mut door = |bytes: &[u8], sender: u32, cx: &mut Context<'_>| match checker.verify(
            now,
            cx.rng,
            bytes,
            source,
            *under_load,
        ) {
            MacVerdict::InvalidMac => Err(DropReason::InvalidMac),
            MacVerdict::ValidMacNoCookie => {
                let mut reply = [0u8; COOKIE_REPLY_LEN];
                checker.create_reply(now, cx.rng, bytes, sender, source, &mut reply);
                cookie_reply = Some(reply);
                Ok(false)
            }
            MacVerdict::ValidMacAndCookie => Ok(true),
        };
        let result: Result<Outcome, DropReason> = match parsed {
            Err(_) => Err(DropReason::Malformed),
            Ok(Message::Initiation(m)) => match door(m.bytes(), m.sender_index(), &mut cx) {
                Err(r) => Err(r),
                Ok(false) => Ok(Outcome::CookieSent),
                Ok(true) => noise::consume_initiation(identity, &m)
                    .map_err(|_| DropReason::HandshakeFailed)
                    .and_then(|part| {
                        if part.remote_static() != peer.public_key() {
                            return Err(DropReason::HandshakeFailed);
                        }
                        peer.consume_initiation(&mut cx, part, &m, source, &mut fx)
                    })
                    .map(|()| Outcome::Consumed),
            },
            Ok(Message::Response(m)) => match door(m.bytes(), m.sender_index(), &mut cx) {
                Err(r) => Err(r),
                Ok(false) => Ok(Outcome::CookieSent),
                Ok(true) => peer
                    .consume_response(&mut cx, &m, source, &mut fx)
                    .map(|()| Outcome::Consumed),
            },
            Ok(Message::CookieReply(c)) => peer
                .consume_cookie_reply(now, &c)
                .map(|()| Outcome::Consumed),
            Ok(Message::Transport(t)) => {
                let (index, counter) = (t.receiver_index(), t.counter());
                peer.prepare_receive(now, index, counter, source)
                    .and_then(|job| {
                        assert_eq!(job.counter(), counter);
                        job.open(&mut buf)?;
                        peer.finish_receive(now, &job, buf.len(), mtu, &mut fx)
                    })
                    .map(Outcome::Delivered)
            }
        };
        let Effects {
            sent,
            events,
            dropped,
            ..
        } = fx;
        let peer_changed = !sent.is_empty() || !events.is_empty() || !dropped.is_empty();
        let s = &mut self.sides[j];
        let after = observe(&s.peer);
        match result {
            Err(reason) => {
                assert!(!peer_changed, "{reason:?}, yet the peer did something");
                assert_eq!(
                    before, after,
                    "a refused message ({reason:?}) changed the peer"
                );
            }
            Ok(Outcome::CookieSent) => {
                assert_eq!(before, after, "the door answered; the peer saw nothing");
            }
            Ok(outcome) => {
                if let Tamper::Corrupted(pos) = tamper {
                    let mac2 = match messages::parse(&flight.bytes) {
                        Ok(Message::Initiation(_)) => INITIATION_LEN - 16,
                        Ok(Message::Response(_)) => RESPONSE_LEN - 16,
                        _ => usize::MAX,
                    };
                    assert!(
                        pos >= mac2,
                        "a corrupted message (byte {pos}) was accepted: {outcome:?}"
                    );
                }
                let cookie_reply =
                    matches!(messages::parse(&flight.bytes), Ok(Message::CookieReply(_)));
                if !cookie_reply {
                    // Exactly once: initiations (timestamps), responses (the handshake is
                    // gone after), transport messages (replay window).
                    assert!(
                        s.accepted.insert(flight.bytes.clone()),
                        "a message was accepted twice: {outcome:?}"
                    );
                    if s.accepted.len() > 256 {
                        s.accepted.clear();
                    }
                }
                if let Outcome::Delivered(d) = outcome {
                    assert_eq!(
                        d == Delivery::Keepalive,
                        flight.bytes.len() == TRANSPORT_MIN_LEN,
                        "keepalive iff empty"
                    );
                    if let (Tamper::None, Some(plain)) = (tamper, &flight.plain) {
                        let inner = &buf[HEADROOM..buf.len() - TAG_LEN];
                        assert!(inner.len() >= plain.len() && inner.len() - plain.len() < 16);
                        assert_eq!(
                            &inner[..plain.len()],
                            &plain[..],
                            "packet changed in transit"
                        );
                        assert!(inner[plain.len()..].iter().all(|&b| b == 0), "padding");
                    }
                }
            }
        }
        let authenticated = matches!(result, Ok(Outcome::Consumed | Outcome::Delivered(_)));
        self.file(j, sent, events, dropped, authenticated.then_some(source));
        if let Some(reply) = cookie_reply {
            let flight = Flight {
                to: 1 - j,
                source: self.sides[j].source(),
                bytes: reply.to_vec(),
                plain: None,
            };
            self.launch(flight);
        }
    }

    /// `prepare_send` and seal, as a device's data path does.
    fn send(&mut self, side: usize, packet: &[u8], short: bool) {
        let (now, mtu) = (self.now, self.mtu);
        let s = &mut self.sides[side];
        if s.removed {
            return;
        }
        let before = observe(&s.peer);
        let capacity = HEADROOM + padded_len(packet.len(), mtu) + TAG_LEN - usize::from(short);
        let mut fx = Effects::new(&mut s.live);
        let result = s.peer.prepare_send(now, packet, capacity, mtu, &mut fx);
        let Effects {
            sent,
            events,
            dropped,
            ..
        } = fx;
        assert!(
            sent.is_empty() && events.is_empty(),
            "the data path sends nothing itself"
        );
        match result {
            Ok(job) => {
                assert!(!short, "sealed into a buffer that is too small");
                assert!(dropped.is_empty());
                let mut buf = vec![0u8; capacity];
                buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
                let len = job.seal(&mut buf, packet.len()).expect("capacity checked");
                assert_eq!(len, job.message_len());
                let Ok(Message::Transport(t)) = messages::parse(&buf[..len]) else {
                    panic!("sealed a malformed message");
                };
                let current = s
                    .peer
                    .keypairs()
                    .get(SlotName::Current)
                    .expect("sent with it");
                assert_eq!(t.receiver_index(), current.remote_index());
                assert_eq!(t.counter(), job.counter());
                assert_eq!(Some(job.destination), s.peer.endpoint());
                assert!(s.staged.is_empty(), "no packet overtakes staged ones");
                let flight = Flight {
                    to: 1 - side,
                    source: s.source(),
                    bytes: buf[..len].to_vec(),
                    plain: Some(packet.to_vec()),
                };
                self.launch(flight);
            }
            Err(Sent::Staged) => {
                let full = s.staged.len() >= MAX_STAGED_PACKETS;
                assert_eq!(
                    dropped,
                    if full {
                        vec![DropReason::StagedOverflow]
                    } else {
                        vec![]
                    },
                    "the oldest staged packet goes exactly when the queue is full"
                );
                if full {
                    s.staged.pop_front();
                }
                s.staged.push_back(packet.to_vec());
            }
            Err(Sent::Dropped(reason)) => {
                assert!(dropped.is_empty());
                match reason {
                    DropReason::BufferTooSmall => assert!(short),
                    DropReason::NoEndpoint => assert_eq!(s.peer.endpoint(), None),
                    other => panic!("prepare_send dropped a packet: {other:?}"),
                }
                assert_eq!(
                    before,
                    observe(&s.peer),
                    "a dropped packet changed the peer"
                );
            }
            Err(other) => panic!("prepare_send returned {other:?}"),
        }
    }

    /// `handle_timeout` now, whether due or not: before the deadline it must do nothing.
    fn wake(&mut self, side: usize) {
        if self.sides[side].removed {
            return;
        }
        let due = self.sides[side]
            .peer
            .poll_timeout()
            .is_some_and(|t| t <= self.now);
        let before = observe(&self.sides[side].peer);
        let mut quiet = true;
        self.with_peer_checked(side, &mut quiet);
        if !due {
            assert!(quiet, "handle_timeout before poll_timeout did something");
            assert_eq!(before, observe(&self.sides[side].peer));
        }
    }

    fn with_peer_checked(&mut self, side: usize, quiet: &mut bool) {
        let unix_time = self.unix_time();
        let (now, mtu) = (self.now, self.mtu);
        let s = &mut self.sides[side];
        let mut fx = Effects::new(&mut s.live);
        let mut cx = Context {
            now,
            unix_time,
            identity: Some(&s.identity),
            rng: &mut self.rng,
            mtu,
        };
        s.peer.handle_timeout(&mut cx, &mut fx);
        *quiet = fx.is_empty();
        let Effects {
            sent,
            events,
            dropped,
            ..
        } = fx;
        self.file(side, sent, events, dropped, None);
    }

    /// A driver's round: `handle_timeout` while due, bounded; then nothing may be due.
    fn run_timers(&mut self, side: usize) {
        if self.sides[side].removed {
            return;
        }
        for _ in 0..5 {
            match self.sides[side].peer.poll_timeout() {
                Some(t) if t <= self.now => {
                    let mut quiet = true;
                    self.with_peer_checked(side, &mut quiet);
                }
                _ => break,
            }
        }
        if let Some(t) = self.sides[side].peer.poll_timeout() {
            assert!(
                t > self.now,
                "still due after five rounds: a driver would spin"
            );
        }
    }

    /// The invariants that hold between ops.
    fn check(&mut self, side: usize) {
        let now = self.now;
        let s = &mut self.sides[side];
        let peer = &s.peer;
        let now_observed = observe(peer);
        let held: BTreeSet<u32> = peer
            .handshake_index()
            .into_iter()
            .chain(peer.keypairs().indices())
            .collect();
        let count = peer.handshake_index().into_iter().count() + peer.keypairs().indices().count();
        assert_eq!(held.len(), count, "an index held twice");
        assert_eq!(
            held, s.live,
            "indices held vs. given out and not given back"
        );
        assert!(peer.staged_len() <= MAX_STAGED_PACKETS);
        assert_eq!(peer.staged_len(), s.staged.len(), "staged queue vs. model");
        assert!(now_observed.tx >= s.last.tx && now_observed.rx >= s.last.rx);
        if let Some(t) = now_observed.last_handshake {
            assert!(t <= now);
            assert!(s.last.last_handshake.is_none_or(|l| l <= t));
        }
        if s.removed {
            assert!(s.live.is_empty());
        }
        s.last = now_observed;
    }
}
