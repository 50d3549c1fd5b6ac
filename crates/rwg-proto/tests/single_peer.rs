//! A peer's whole life without a `Device` and without the `alloc` feature: two
//! [`SinglePeer`]s (the heapless one-peer owner of a `Peer`) in virtual time. This file needs no
//! feature of the crate, so `cargo test -p rwg-proto --no-default-features --test single_peer`
//! runs it against a core built with no allocator at all (scripts/test does).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rwg_proto::constants::{
    REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_TIMEOUT, ZERO_KEY_MATERIAL_AFTER,
};
use rwg_proto::crypto::PrivateKey;
use rwg_proto::peer::{HEADROOM, TAILROOM};
use rwg_proto::single::{Output, SinglePeer};
use rwg_proto::{DropReason, Event, Instant, Received, Sent};

const A: usize = 0;
const B: usize = 1;

/// What becomes of a packet sent before any session: without an allocator it is dropped (the
/// handshake starts); with one, the peer stages it. The tests run both ways.
fn before_a_session() -> Sent {
    if cfg!(feature = "alloc") {
        Sent::Staged
    } else {
        Sent::Dropped(DropReason::NoSession)
    }
}

#[derive(Default)]
struct Wire {
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<Event>,
}

impl Output for Wire {
    fn transmit(&mut self, destination: SocketAddr, datagram: &[u8]) {
        self.datagrams.push((destination, datagram.to_vec()));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

struct Pair {
    now: Instant,
    nodes: [SinglePeer; 2],
    addrs: [SocketAddr; 2],
    rngs: [ChaCha20Rng; 2],
    wires: [Wire; 2],
    /// Every datagram sent, with its sender and time: (from, at, bytes).
    log: Vec<(usize, Instant, Vec<u8>)>,
    delivered: [Vec<Vec<u8>>; 2],
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

impl Pair {
    fn new() -> Pair {
        let (ka, kb) = (
            PrivateKey::from_bytes([1; 32]),
            PrivateKey::from_bytes([2; 32]),
        );
        let addrs: [SocketAddr; 2] = [
            "10.0.0.1:51820".parse().unwrap(),
            "10.0.0.2:51820".parse().unwrap(),
        ];
        let mut a = SinglePeer::new(ka.clone(), kb.public_key(), 11);
        let mut b = SinglePeer::new(kb, ka.public_key(), 12);
        a.peer_mut().set_endpoint(Some(addrs[B]));
        let now = Instant::from_nanos(1_000_000_000);
        for n in [&mut a, &mut b] {
            n.set_unix_time(now, Duration::from_secs(1_700_000_000));
        }
        Pair {
            now,
            nodes: [a, b],
            addrs,
            rngs: [ChaCha20Rng::seed_from_u64(1), ChaCha20Rng::seed_from_u64(2)],
            wires: [Wire::default(), Wire::default()],
            log: Vec::new(),
            delivered: [Vec::new(), Vec::new()],
        }
    }

    fn send(&mut self, from: usize, payload: &[u8]) -> Sent {
        let ips = [[192, 168, 4, 1], [192, 168, 4, 2]];
        let packet = ipv4(ips[from], ips[1 - from], payload);
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
        let sent =
            self.nodes[from].handle_packet(self.now, &mut buf, packet.len(), &mut self.wires[from]);
        if let Sent::Transmit { destination, len } = sent {
            self.wires[from].transmit(destination, &buf[..len]);
        }
        sent
    }

    /// Delivers everything on the wire and runs due timers, until quiet, in steps of 1 ms.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut moved = false;
            for from in [A, B] {
                for (to_addr, bytes) in std::mem::take(&mut self.wires[from].datagrams) {
                    moved = true;
                    self.log.push((from, self.now, bytes.clone()));
                    let to = self.addrs.iter().position(|a| *a == to_addr).unwrap();
                    let mut buf = bytes;
                    let r = self.nodes[to].handle_datagram(
                        self.now,
                        self.addrs[from],
                        &mut buf,
                        &mut self.rngs[to],
                        &mut self.wires[to],
                    );
                    if let Received::Packet { len, .. } = r {
                        self.delivered[to].push(buf[HEADROOM + 20..HEADROOM + len].to_vec());
                    }
                }
            }
            if moved {
                continue;
            }
            let next = [A, B]
                .iter()
                .filter_map(|&i| self.nodes[i].poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for i in [A, B] {
                        if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                            self.nodes[i].handle_timeout(
                                self.now,
                                &mut self.rngs[i],
                                &mut self.wires[i],
                            );
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
    }

    fn sent_of_type(&self, from: usize, ty: u8) -> Vec<Instant> {
        self.log
            .iter()
            .filter(|(f, _, b)| *f == from && b[0] == ty)
            .map(|(_, t, _)| *t)
            .collect()
    }

    fn completed(&self, node: usize) -> usize {
        self.wires[node]
            .events
            .iter()
            .filter(|e| matches!(e, Event::HandshakeCompleted { .. }))
            .count()
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mut p = Pair::new();
    // No session: without an allocator nothing is staged, but the handshake starts.
    assert_eq!(p.send(A, b"lost"), before_a_session());
    let dropped = u64::from(!cfg!(feature = "alloc"));
    assert_eq!(p.nodes[A].drop_count(DropReason::NoSession), dropped);
    p.run_for(Duration::from_millis(10));
    p.delivered = [Vec::new(), Vec::new()];
    assert_eq!(p.sent_of_type(A, 1).len(), 1, "one initiation");
    assert_eq!(p.sent_of_type(B, 2).len(), 1, "one response");
    assert_eq!(p.completed(A), 1);
    // The initiator confirmed the session with a keepalive (§3), so B completed too.
    assert_eq!(p.completed(B), 1);
    assert!(matches!(p.send(A, b"hello"), Sent::Transmit { .. }));
    assert!(matches!(p.send(B, b"world"), Sent::Transmit { .. }));
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.delivered[B], vec![b"hello".to_vec()]);
    assert_eq!(p.delivered[A], vec![b"world".to_vec()]);
    // Byte counters: initiation + the confirmation (a keepalive, or the staged 24-byte packet
    // padded to 32) + one 48-byte message out of A.
    let confirmation = if cfg!(feature = "alloc") { 64 } else { 32 };
    assert_eq!(p.nodes[A].peer().tx_bytes(), 148 + confirmation + 64);
    assert_eq!(p.nodes[B].peer().rx_bytes(), 148 + confirmation + 64);
}

#[test]
fn rekeys_after_120s_and_keys_expire_and_are_erased() {
    let mut p = Pair::new();
    p.send(A, b"start");
    p.run_for(Duration::from_millis(10));
    p.delivered = [Vec::new(), Vec::new()];
    let established = p.now;
    // Traffic every second for 130 s: the initiator rekeys once at 120 s, nothing is lost.
    for i in 0..130u32 {
        p.run_for(Duration::from_secs(1));
        assert!(
            matches!(p.send(A, &i.to_be_bytes()), Sent::Transmit { .. }),
            "second {i}"
        );
        assert!(
            matches!(p.send(B, &i.to_be_bytes()), Sent::Transmit { .. }),
            "second {i}"
        );
    }
    p.run_for(Duration::from_millis(10));
    let inits = p.sent_of_type(A, 1);
    assert_eq!(inits.len(), 2, "{inits:?}");
    let gap = inits[1] - inits[0];
    assert!(
        gap >= REKEY_AFTER_TIME && gap < REKEY_AFTER_TIME + Duration::from_secs(2),
        "{gap:?}"
    );
    assert_eq!(p.delivered[B].len(), 130);
    assert_eq!(p.delivered[A].len(), 130);
    assert_eq!(p.completed(A), 2);

    // Silence. The session ages past REJECT_AFTER_TIME: a packet then needs a new handshake
    // (dropped here, no staging), which starts; the keys of the old session stay unused.
    let last_rekey = inits[1];
    p.run_for((last_rekey + REJECT_AFTER_TIME + Duration::from_secs(1)) - p.now);
    let before = p.sent_of_type(A, 1).len();
    assert_eq!(p.send(A, b"too late"), before_a_session());
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.sent_of_type(A, 1).len(), before + 1, "a new handshake");

    // Then no traffic at all: 540 s after the last session, every key is erased.
    let quiet_from = p.now;
    p.run_for(ZERO_KEY_MATERIAL_AFTER + REKEY_TIMEOUT * 2);
    let zeroed = p.wires[A]
        .events
        .iter()
        .filter(|e| matches!(e, Event::KeysZeroed { .. }))
        .count();
    assert!(zeroed >= 1, "keys erased after {:?}", p.now - quiet_from);
    assert!(p.nodes[A].peer().keypairs().is_empty());
    assert!(established < quiet_from);
}

#[test]
fn replayed_and_forged_datagrams_change_nothing() {
    let mut p = Pair::new();
    p.send(A, b"x");
    p.run_for(Duration::from_millis(10));
    p.delivered = [Vec::new(), Vec::new()];
    p.send(A, b"once");
    let (_, datagram) = p.wires[A].datagrams[0].clone();
    p.run_for(Duration::from_millis(10));
    assert_eq!(p.delivered[B], vec![b"once".to_vec()]);
    let mut replay = datagram.clone();
    let r = p.nodes[B].handle_datagram(
        p.now,
        p.addrs[A],
        &mut replay,
        &mut p.rngs[B],
        &mut p.wires[B],
    );
    assert_eq!(r, Received::Dropped(DropReason::Replay));
    let mut forged = datagram;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let r = p.nodes[B].handle_datagram(
        p.now,
        "203.0.113.1:9".parse().unwrap(),
        &mut forged,
        &mut p.rngs[B],
        &mut p.wires[B],
    );
    assert_eq!(r, Received::Dropped(DropReason::Decrypt));
    assert_eq!(
        p.nodes[B].peer().endpoint(),
        Some(p.addrs[A]),
        "no roaming on forgeries"
    );
    for len in [0, 3, 4, 31, 147, 149] {
        let mut junk = vec![1u8; len];
        let r = p.nodes[B].handle_datagram(
            p.now,
            p.addrs[A],
            &mut junk,
            &mut p.rngs[B],
            &mut p.wires[B],
        );
        assert!(matches!(r, Received::Dropped(_)), "{len}: {r:?}");
    }
    assert_eq!(p.delivered[B].len(), 1);
}
