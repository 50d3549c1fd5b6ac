//! Two-peer (and more) simulations with virtual time: the timer and handshake behaviour of
//! PROTOCOL.md §5-§7, checked on what crosses the simulated wire.

#![allow(clippy::unwrap_used)]

mod sim;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rwg_proto::constants::{MAX_JITTER, REJECT_AFTER_TIME, REKEY_TIMEOUT};
use rwg_proto::crypto::PublicKey;
use rwg_proto::device::{DropReason, Event, Received, Sent};
use rwg_proto::Instant;
use sim::{ipv4_packet, lan, secs, Conditions, Sim, A, B, COOKIE, INITIATION, RESPONSE, TRANSPORT};

#[test]
fn first_handshake_then_data_both_ways() {
    let mut sim = Sim::new(1, 2, lan());
    assert_eq!(sim.send(A, B, b"hello"), Sent::Staged);
    sim.run_for(secs(1));
    assert_eq!(sim.wire_of_type(INITIATION).count(), 1);
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 1);
    assert_eq!(sim.delivered_payloads(B), vec![b"hello".to_vec()]);
    assert!(matches!(sim.send(B, A, b"world"), Sent::Transmit { .. }));
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(A), vec![b"world".to_vec()]);
    assert_eq!(sim.handshakes_completed(A), 1);
    assert_eq!(sim.handshakes_completed(B), 1);
    // Counters as `wg show` reports them: initiator sent initiation + one 48-byte message
    // (5-byte payload + 20-byte header padded to 32, plus 32), received response + the same.
    let a = &sim.nodes[A].device.peers()[0];
    assert_eq!(a.tx_bytes, 148 + 64);
    assert_eq!(a.rx_bytes, 92 + 64);
    assert!(a.last_handshake.is_some());
    // The device-wide counters agree with the wire.
    let (ca, cb) = (
        sim.nodes[A].device.counters(),
        sim.nodes[B].device.counters(),
    );
    assert_eq!((ca.initiations_sent, ca.responses_sent), (1, 0));
    assert_eq!((cb.initiations_sent, cb.responses_sent), (0, 1));
    assert_eq!((ca.handshakes_completed, cb.handshakes_completed), (1, 1));
    assert_eq!(
        (
            ca.handshake_messages_received,
            cb.handshake_messages_received
        ),
        (1, 1)
    );
}

#[test]
fn ten_pings_match_the_kernel_byte_counters() {
    // PROTOCOL.md §10: 10 pings of 84-byte IPv4 packets => initiator rx 1372, tx 1428.
    let mut sim = Sim::new(2, 2, lan());
    let echo = [0u8; 64];
    for _ in 0..10 {
        sim.send(A, B, &echo);
        sim.run_for(Duration::from_millis(100));
        sim.send(B, A, &echo);
        sim.run_for(Duration::from_millis(900));
    }
    let a = &sim.nodes[A].device.peers()[0];
    assert_eq!(a.rx_bytes, 1372);
    assert_eq!(a.tx_bytes, 1428);
}

#[test]
fn initiator_rekeys_after_120s_without_a_gap() {
    let mut sim = Sim::new(3, 2, lan());
    let mut sent = 0u32;
    for second in 0..300u32 {
        sim.send(A, B, &second.to_be_bytes());
        if second == 0 {
            // Let A be the initiator (both initiating at once is its own test).
            sim.run_for(Duration::from_millis(100));
        }
        sim.send(B, A, &second.to_be_bytes());
        sent += 1;
        sim.run_for(secs(1));
    }
    // Every packet arrives, in order, including those sent around each rekey.
    let expect: Vec<Vec<u8>> = (0..sent).map(|s| s.to_be_bytes().to_vec()).collect();
    assert_eq!(sim.delivered_payloads(B), expect);
    assert_eq!(sim.delivered_payloads(A), expect);
    // 300 s of traffic: the first handshake and rekeys at ~120 s and ~240 s.
    let initiations: Vec<Instant> = sim.wire_of_type(INITIATION).map(|r| r.at).collect();
    assert_eq!(initiations.len(), 3, "{initiations:?}");
    let gap = initiations[1] - initiations[0];
    assert!(gap >= secs(120) && gap < secs(122), "{gap:?}");
}

#[test]
fn nothing_is_sent_with_a_key_older_than_180s() {
    let mut sim = Sim::new(4, 2, lan());
    for second in 0..900u32 {
        // Only B sends data, so B (the responder) never rekeys by itself on time; A keeps
        // receiving and must rekey on receive at 165 s, and B must never send with old keys.
        sim.send(B, A, &second.to_be_bytes());
        if second == 0 {
            sim.send(A, B, b"start");
        }
        sim.run_for(secs(1));
    }
    let starts = sim::session_start_by_index(&sim.wire);
    let mut checked = 0;
    for r in sim.wire_of_type(TRANSPORT) {
        let start = starts[&r.receiver_index()];
        assert!(
            r.at - start < REJECT_AFTER_TIME,
            "sent at {:?} under a key from {:?}",
            r.at,
            start
        );
        checked += 1;
    }
    assert!(checked > 800);
    assert!(sim.wire_of_type(INITIATION).count() >= 5);
}

#[test]
fn retransmits_every_5s_with_jitter_then_gives_up() {
    let mut sim = Sim::new(5, 2, lan());
    sim.nodes[B].online = false;
    sim.send(A, B, b"lost");
    sim.run_for(secs(200));
    let times: Vec<Instant> = sim.wire_of_type(INITIATION).map(|r| r.at).collect();
    // One initiation and 19 retries: the kernel's "after 20 attempts, giving up".
    assert_eq!(times.len(), 20, "{times:?}");
    for w in times.windows(2) {
        let d = w[1] - w[0];
        assert!(
            d >= REKEY_TIMEOUT && d < REKEY_TIMEOUT + MAX_JITTER,
            "{d:?}"
        );
    }
    let jitters: BTreeSet<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert!(
        jitters.len() > 5,
        "retransmit times must be jittered: {jitters:?}"
    );
    assert!(sim.nodes[A]
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::HandshakeGaveUp { .. })));
    assert_eq!(
        sim.nodes[A].device.stats().staged_packets,
        0,
        "staged packets dropped on giving up"
    );
    // New traffic starts a new round of attempts.
    sim.send(A, B, b"again");
    sim.run_for(secs(1));
    assert_eq!(sim.wire_of_type(INITIATION).count(), 21);
}

#[test]
fn keys_are_zeroed_after_540s() {
    let mut sim = Sim::new(6, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B).len(), 1);
    let established = sim.now;
    let old_transport = sim.wire_of_type(TRANSPORT).last().unwrap().clone();
    // Silence: nothing but the 10 s keepalive happens.
    sim.run_for(secs(539));
    assert!(!sim.nodes[A]
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::KeysZeroed { .. })));
    sim.run_for(secs(2));
    let zeroed: Vec<Instant> = sim.nodes[A]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::KeysZeroed { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(zeroed.len(), 1);
    assert!(zeroed[0] - established <= secs(541));
    assert_eq!(sim.nodes[A].device.stats().indices, 0);
    assert_eq!(sim.nodes[B].device.stats().indices, 0);
    // An old message now finds no keypair.
    let r = sim
        .deliver(old_transport.from, old_transport.to, old_transport.bytes)
        .unwrap();
    assert_eq!(r, Received::Dropped(DropReason::UnknownIndex));
}

#[test]
fn passive_keepalive_after_10s() {
    let mut sim = Sim::new(7, 2, lan());
    sim.send(A, B, b"one way");
    sim.run_for(secs(1));
    let t0 = sim.nodes[B].delivered[0].0;
    sim.run_for(secs(20));
    // B received data and sent nothing back: one keepalive (32 bytes) about 10 s later.
    let keepalives: Vec<_> = sim
        .wire_of_type(TRANSPORT)
        .filter(|r| r.from == sim.nodes[B].addr && r.bytes.len() == 32)
        .collect();
    assert_eq!(keepalives.len(), 1);
    let d = keepalives[0].at - t0;
    assert!(d >= secs(10) && d < secs(11), "{d:?}");
}

#[test]
fn persistent_keepalive_every_interval() {
    let mut sim = Sim::new(8, 2, lan());
    let b = sim.peer_key(B);
    let now = sim.now;
    sim.nodes[A]
        .device
        .set_persistent_keepalive(now, &b, 25)
        .unwrap();
    sim.collect_outputs();
    sim.run_for(secs(101));
    // Turning it on started a handshake (and keepalive); then one keepalive each 25 s.
    let from_a: Vec<Instant> = sim
        .wire_of_type(TRANSPORT)
        .filter(|r| r.from == sim.nodes[A].addr && r.bytes.len() == 32)
        .map(|r| r.at)
        .collect();
    assert!(from_a.len() >= 4, "{from_a:?}");
    for w in from_a.windows(2) {
        let d = w[1] - w[0];
        assert!(d >= secs(25) && d < secs(26), "{d:?}");
    }
    sim.nodes[A]
        .device
        .set_persistent_keepalive(sim.now, &b, 0)
        .unwrap();
    let before = sim.wire.len();
    sim.run_for(secs(100));
    assert_eq!(sim.wire.len(), before, "off means silence");
}

#[test]
fn responder_waits_for_key_confirmation() {
    let mut sim = Sim::new(9, 2, lan());
    // Drop A's first transport message (the confirmation keepalive).
    let mut dropped = false;
    sim.filter = Some(Box::new(move |r| {
        if r.msg_type() == TRANSPORT && !dropped {
            dropped = true;
            return false;
        }
        true
    }));
    sim.send(A, B, b"first"); // staged at A, handshake
    sim.run_for(Duration::from_millis(500));
    // The response reached A, "first" went out and was dropped. B holds only `next`.
    assert!(sim.delivered_payloads(B).is_empty());
    assert_eq!(
        sim.send(B, A, b"from responder"),
        Sent::Staged,
        "responder must not send with next"
    );
    sim.run_for(Duration::from_millis(100));
    assert!(sim.delivered_payloads(A).is_empty());
    assert_eq!(sim.handshakes_completed(B), 0);
    // The initiator's next packet confirms the key; B's staged packet flows at once.
    sim.send(A, B, b"second");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.delivered_payloads(B), vec![b"second".to_vec()]);
    assert_eq!(sim.handshakes_completed(B), 1);
    assert_eq!(sim.delivered_payloads(A), vec![b"from responder".to_vec()]);
}

#[test]
fn both_sides_initiate_at_the_same_moment() {
    let mut sim = Sim::new(10, 2, lan());
    sim.send(A, B, b"a->b");
    sim.send(B, A, b"b->a");
    sim.run_for(secs(15));
    assert_eq!(sim.delivered_payloads(B), vec![b"a->b".to_vec()]);
    assert_eq!(sim.delivered_payloads(A), vec![b"b->a".to_vec()]);
    // And traffic keeps flowing afterwards without new handshakes.
    let initiations = sim.wire_of_type(INITIATION).count();
    for i in 0..20u8 {
        sim.send(A, B, &[i]);
        sim.send(B, A, &[i]);
        sim.run_for(secs(1));
    }
    assert_eq!(sim.delivered_payloads(B).len(), 21);
    assert_eq!(sim.delivered_payloads(A).len(), 21);
    assert_eq!(sim.wire_of_type(INITIATION).count(), initiations);
}

#[test]
fn cookie_round_trip_under_load() {
    let mut sim = Sim::new(11, 2, lan());
    sim.nodes[B].device.report_handshake_load(10_000);
    sim.send(A, B, b"under load");
    sim.run_for(Duration::from_millis(100));
    // B answered the initiation (valid mac1, no mac2) with a cookie reply, not a response.
    assert_eq!(sim.wire_of_type(COOKIE).count(), 1);
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 0);
    // The retry 5 s later carries mac2 and is answered.
    sim.run_for(secs(6));
    let inits: Vec<_> = sim.wire_of_type(INITIATION).collect();
    assert_eq!(inits.len(), 2);
    assert_eq!(
        &inits[0].bytes[132..],
        &[0u8; 16],
        "no cookie yet: mac2 zero"
    );
    assert_ne!(&inits[1].bytes[132..], &[0u8; 16], "retry carries mac2");
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 1);
    assert_eq!(sim.nodes[B].device.counters().cookie_replies_sent, 1);
    assert_eq!(sim.nodes[A].device.counters().initiations_sent, 2);
    assert_eq!(sim.delivered_payloads(B), vec![b"under load".to_vec()]);
}

#[test]
fn rate_limiter_drops_floods_under_load() {
    // PROTOCOL.md §4: under load, a handshake with a valid cookie (mac2) still passes the
    // per-source token bucket (burst 5, §9 "5 allowed, 6th refused").
    let mut sim = Sim::new(12, 2, lan());
    sim.nodes[B].device.report_handshake_load(10_000);
    sim.send(A, B, b"x");
    // The first initiation gets a cookie reply; the retry 5 s later carries mac2 and is answered.
    sim.run_for(secs(6));
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 1);
    let with_cookie = sim.wire_of_type(INITIATION).last().unwrap().clone();
    assert_ne!(
        &with_cookie.bytes[132..],
        &[0u8; 16],
        "the retry carries mac2"
    );
    // Seconds later the source's bucket is full again. A flood of that same initiation from
    // the same source, all at one instant: five pass the limiter (and are then refused as
    // replays by their timestamp), every other one is refused before any public-key work.
    let (mut limited, mut reached_handshake) = (0, 0);
    for _ in 0..20 {
        match sim.deliver(with_cookie.from, with_cookie.to, with_cookie.bytes.clone()) {
            Some(Received::Dropped(DropReason::RateLimited)) => limited += 1,
            Some(Received::Dropped(DropReason::StaleTimestamp)) => reached_handshake += 1,
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert_eq!((reached_handshake, limited), (5, 15));
    assert_eq!(sim.drop_count(B, DropReason::RateLimited), 15);
    // Tokens come back at 20 per second: 100 ms later two more pass.
    sim.now += Duration::from_millis(100);
    let verdicts: Vec<_> = (0..3)
        .map(|_| sim.deliver(with_cookie.from, with_cookie.to, with_cookie.bytes.clone()))
        .collect();
    assert_eq!(
        verdicts,
        [
            Some(Received::Dropped(DropReason::StaleTimestamp)),
            Some(Received::Dropped(DropReason::StaleTimestamp)),
            Some(Received::Dropped(DropReason::RateLimited)),
        ]
    );
    // The legitimate session is untouched by all of this.
    sim.send(A, B, b"after the flood");
    sim.run_for(secs(1));
    assert_eq!(
        sim.delivered_payloads(B).last().unwrap(),
        b"after the flood"
    );
}

/// Queues `copies` copies of one valid initiation from A through B's data path, the way the
/// daemon's UDP readers hand handshake messages to the core, then lets B handle them. Returns
/// the (cookie replies, responses) B sent.
fn queue_initiations_on_the_data_path(seed: u64, copies: usize) -> (usize, usize) {
    let mut sim = Sim::new(seed, 2, lan());
    let init = fresh_initiation(&mut sim);
    let (from, b) = (sim.nodes[A].addr, &sim.nodes[B].device);
    {
        let data_path = b.data_path();
        for _ in 0..copies {
            let mut copy = init.clone();
            assert_eq!(
                data_path.decapsulate(sim.now, from, &mut copy),
                Received::Handshake
            );
        }
    }
    assert!(b.has_queued_handshakes());
    assert_eq!(b.handle_queued_handshakes(sim.now), copies);
    assert!(!b.has_queued_handshakes());
    sim.collect_outputs();
    (
        sim.wire_of_type(COOKIE).count(),
        sim.wire_of_type(RESPONSE).count(),
    )
}

#[test]
fn handshakes_queued_on_the_data_path_are_the_load_signal() {
    // PROTOCOL.md §4: the number of queued handshakes turns cookies on (Go: 128 queued).
    // A few queued: no load; the first is answered, the copies are refused as replays.
    assert_eq!(queue_initiations_on_the_data_path(40, 10), (0, 1));
    // Many queued: under load, and none carries mac2, so every one gets a cookie reply and
    // none gets the Diffie-Hellman work of a response.
    let flood = 2 * rwg_proto::device::UNDER_LOAD_QUEUE_LEN;
    assert_eq!(queue_initiations_on_the_data_path(41, flood), (flood, 0));
}

#[test]
fn transport_under_a_key_older_than_reject_after_time_is_refused() {
    // PROTOCOL.md §5: "drop if the key is ≥ 180 s old", on the receiving side too.
    let mut sim = Sim::new(42, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B).len(), 1);
    let established = sim.now;
    // A message sealed now but held back by the network.
    let held = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let keep = held.clone();
    let a_addr = sim.nodes[A].addr;
    sim.filter = Some(Box::new(move |r| {
        if r.from == a_addr && r.msg_type() == TRANSPORT && r.bytes.len() > 32 {
            keep.borrow_mut().push(r.clone());
            return false;
        }
        true
    }));
    sim.send(A, B, b"late");
    let late = held.borrow()[0].clone();
    // Delivered just before the key turns 180 s old, a copy is accepted...
    sim.run_until(established + (REJECT_AFTER_TIME - secs(2)));
    assert_eq!(
        sim.deliver(late.from, late.to, late.bytes.clone()),
        Some(Received::Packet {
            peer: sim.peer_key(A),
            len: 24
        })
    );
    // ...and a message under the same key arriving after 180 s is refused without decrypting.
    sim.send(A, B, b"later");
    let later = held.borrow().last().unwrap().clone();
    sim.run_until(established + REJECT_AFTER_TIME + secs(1));
    assert_eq!(
        sim.deliver(later.from, later.to, later.bytes),
        Some(Received::Dropped(DropReason::ExpiredKey))
    );
    assert_eq!(sim.drop_count(B, DropReason::ExpiredKey), 1);
    assert_eq!(sim.drop_count(B, DropReason::Decrypt), 0);
}

#[test]
fn private_key_change_drops_sessions_and_removes_our_own_key_as_peer() {
    // PROTOCOL.md §6 "Private key change" and UAPI.md `private_key`.
    const C: usize = 2;
    let mut sim = Sim::new(43, 3, lan());
    // B does not know C: a handshake from C's identity is foreign to it.
    assert!(sim.nodes[B].device.remove_peer(&sim.peer_key(C)));
    sim.send(A, B, b"before");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B), vec![b"before".to_vec()]);
    let old_a = sim.peer_key(A);

    // A takes C's private key: its peer entry for C (now its own public key) is removed, and
    // its session with B can no longer send: the next packet waits for a new handshake.
    let c_key = sim.nodes[C].key.clone();
    sim.nodes[A].device.set_private_key(Some(c_key.clone()));
    let a_peers: Vec<PublicKey> = sim.nodes[A]
        .device
        .peers()
        .iter()
        .map(|p| p.public_key)
        .collect();
    assert_eq!(
        a_peers,
        vec![sim.peer_key(B)],
        "the peer with our own key is gone"
    );
    assert_eq!(sim.nodes[A].device.public_key(), Some(c_key.public_key()));
    let initiations = sim.wire_of_type(INITIATION).count();
    assert_eq!(sim.send(A, B, b"after"), Sent::Staged);

    // B knows A under its old key only, so the new identity's handshake fails at B...
    sim.run_for(secs(1));
    assert_eq!(sim.wire_of_type(INITIATION).count(), initiations + 1);
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 1);
    assert_eq!(sim.drop_count(B, DropReason::HandshakeFailed), 1);
    assert_eq!(sim.delivered_payloads(B), vec![b"before".to_vec()]);

    // ...until B is told the new key (a new peer entry that takes over A's tunnel address).
    let b = &sim.nodes[B].device;
    assert!(b.add_peer(c_key.public_key()));
    b.add_allowed_ip(&c_key.public_key(), IpAddr::V4(sim.nodes[A].tunnel_ip), 32)
        .unwrap();
    b.set_endpoint(&c_key.public_key(), sim.nodes[A].addr)
        .unwrap();
    sim.run_for(secs(6)); // A's retry after REKEY_TIMEOUT
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 2);
    assert_eq!(
        sim.delivered_payloads(B),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    // The reply goes back under the new session; the old key is no longer used by anyone.
    assert!(matches!(sim.send(B, A, b"reply"), Sent::Transmit { .. }));
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(A), vec![b"reply".to_vec()]);
    let b_peer_old_a = sim.nodes[B]
        .device
        .peers()
        .into_iter()
        .find(|p| p.public_key == old_a)
        .unwrap();
    assert!(b_peer_old_a.allowed_ips.is_empty());
}

#[test]
fn replayed_initiation_is_rejected() {
    let mut sim = Sim::new(13, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    let init = sim.wire_of_type(INITIATION).next().unwrap().clone();
    let responses = sim.wire_of_type(RESPONSE).count();
    sim.run_for(secs(1));
    let r = sim.deliver(init.from, init.to, init.bytes).unwrap();
    assert_eq!(r, Received::Dropped(DropReason::StaleTimestamp));
    sim.run_for(secs(1));
    assert_eq!(
        sim.wire_of_type(RESPONSE).count(),
        responses,
        "no response to a replay"
    );
    // The session is untouched.
    sim.send(A, B, b"still fine");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B).last().unwrap(), b"still fine");
}

/// A fresh initiation from A to B, taken off A's outbox (A forgets B and re-adds it so the
/// REKEY_TIMEOUT gap between initiations does not apply).
fn fresh_initiation(sim: &mut Sim) -> Vec<u8> {
    let pk_b = sim.peer_key(B);
    let d = &sim.nodes[A].device;
    d.remove_peer(&pk_b);
    d.add_peer(pk_b);
    d.set_endpoint(&pk_b, sim.nodes[B].addr).unwrap();
    d.add_allowed_ip(&pk_b, IpAddr::V4(sim.nodes[B].tunnel_ip), 32)
        .unwrap();
    let p = ipv4_packet(sim.nodes[A].tunnel_ip, sim.nodes[B].tunnel_ip, b"z");
    let mut buf = vec![0u8; 2048];
    buf[16..16 + p.len()].copy_from_slice(&p);
    assert_eq!(d.handle_packet(sim.now, &mut buf, p.len()), Sent::Staged);
    let t = d.poll_transmit(&mut buf).unwrap();
    assert_eq!(buf[0], INITIATION);
    buf[..t.len].to_vec()
}

#[test]
fn initiation_flood_limit_is_20ms() {
    let mut sim = Sim::new(14, 2, lan());
    let (from, to) = (sim.nodes[A].addr, sim.nodes[B].addr);
    let first = fresh_initiation(&mut sim);
    // Later wall-clock timestamps, 10 ms and 30 ms of monotonic time later.
    sim.nodes[A]
        .device
        .set_unix_time(sim.now, Duration::from_secs(1_800_000_000));
    let second = fresh_initiation(&mut sim);
    sim.nodes[A]
        .device
        .set_unix_time(sim.now, Duration::from_secs(1_900_000_000));
    let third = fresh_initiation(&mut sim);
    assert_eq!(sim.deliver(from, to, first), Some(Received::Handshake));
    sim.now += Duration::from_millis(10);
    assert_eq!(
        sim.deliver(from, to, second.clone()),
        Some(Received::Dropped(DropReason::Flood))
    );
    sim.now += Duration::from_millis(20);
    assert_eq!(sim.deliver(from, to, third), Some(Received::Handshake));
    // A refused initiation did not commit its timestamp: once the flood window passed, the
    // refused one is still older than the accepted third and stays refused.
    sim.now += Duration::from_millis(30);
    assert_eq!(
        sim.deliver(from, to, second),
        Some(Received::Dropped(DropReason::StaleTimestamp))
    );
    assert_eq!(sim.wire_of_type(RESPONSE).count(), 2);
}

#[test]
fn replayed_or_altered_data_is_rejected() {
    let mut sim = Sim::new(15, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    sim.send(A, B, b"payload");
    sim.run_for(secs(1));
    let data = sim
        .wire_of_type(TRANSPORT)
        .filter(|r| r.bytes.len() > 32)
        .last()
        .unwrap()
        .clone();
    let delivered = sim.delivered_payloads(B).len();
    assert_eq!(
        sim.deliver(data.from, data.to, data.bytes.clone()),
        Some(Received::Dropped(DropReason::Replay))
    );
    for byte in [16, 40, data.bytes.len() - 1] {
        let mut altered = data.bytes.clone();
        altered[byte] ^= 1;
        assert_eq!(
            sim.deliver(data.from, data.to, altered),
            Some(Received::Dropped(DropReason::Decrypt))
        );
    }
    // Altering the counter makes it a different nonce: authentication fails.
    let mut altered = data.bytes.clone();
    altered[8] ^= 1;
    assert_eq!(
        sim.deliver(data.from, data.to, altered),
        Some(Received::Dropped(DropReason::Decrypt))
    );
    assert_eq!(sim.delivered_payloads(B).len(), delivered);
}

#[test]
fn endpoint_roams_only_on_authenticated_packets() {
    let mut sim = Sim::new(16, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    let real = sim.nodes[A].addr;
    let pk_a = sim.peer_key(A);
    let endpoint = |sim: &Sim| {
        sim.nodes[B]
            .device
            .peers()
            .iter()
            .find(|p| p.public_key == pk_a)
            .unwrap()
            .endpoint
    };
    assert_eq!(endpoint(&sim), Some(real));
    // A forged transport message from an attacker's address with a valid index: dropped, no roam.
    let data = sim.wire_of_type(TRANSPORT).last().unwrap().clone();
    let attacker: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let mut forged = data.bytes.clone();
    forged[8..16].copy_from_slice(&1000u64.to_le_bytes());
    assert_eq!(
        sim.deliver(attacker, data.to, forged),
        Some(Received::Dropped(DropReason::Decrypt))
    );
    // A replay of a genuine message from another address: also no roam.
    assert_eq!(
        sim.deliver(attacker, data.to, data.bytes.clone()),
        Some(Received::Dropped(DropReason::Replay))
    );
    assert_eq!(endpoint(&sim), Some(real));
    // A really moves: its next authentic packet comes from the new address.
    let moved: SocketAddr = "10.9.9.9:40000".parse().unwrap();
    sim.nodes[A].addr = moved;
    sim.send(A, B, b"from new address");
    sim.run_for(secs(1));
    assert_eq!(endpoint(&sim), Some(moved));
    assert!(sim.nodes[B].events.iter().any(|(_, e)| *e
        == Event::EndpointChanged {
            peer: pk_a,
            endpoint: moved
        }));
    // And B's replies go there.
    sim.send(B, A, b"reply");
    sim.run_for(secs(1));
    assert_eq!(sim.wire.last().unwrap().to, moved);
}

#[test]
fn inner_source_outside_allowed_ips_is_dropped() {
    let mut sim = Sim::new(17, 2, lan());
    sim.send(A, B, b"x");
    sim.run_for(secs(1));
    let spoofed = ipv4_packet(
        Ipv4Addr::new(192, 168, 4, 99),
        sim.nodes[B].tunnel_ip,
        b"spoofed",
    );
    assert!(matches!(
        sim.send_packet(A, &spoofed),
        Sent::Transmit { .. }
    ));
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B), vec![b"x".to_vec()]);
    assert_eq!(sim.drop_count(B, DropReason::SourceNotAllowed), 1);
    // A more specific prefix given to another peer takes the address away (§10 source check).
    let pk_a = sim.peer_key(A);
    let other = PublicKey::from_bytes([7; 32]);
    sim.nodes[B].device.add_peer(other);
    sim.nodes[B]
        .device
        .add_allowed_ip(&other, IpAddr::V4(sim.nodes[A].tunnel_ip), 32)
        .unwrap();
    assert!(sim.nodes[B]
        .device
        .peers()
        .iter()
        .find(|p| p.public_key == pk_a)
        .unwrap()
        .allowed_ips
        .is_empty());
    sim.send(A, B, b"now foreign");
    sim.run_for(secs(1));
    assert_eq!(sim.drop_count(B, DropReason::SourceNotAllowed), 2);
}

#[test]
fn low_order_peer_keys_send_nothing() {
    let mut sim = Sim::new(18, 2, lan());
    let low_order = [
        [0u8; 32],
        {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        },
        hex_key("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        hex_key("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ];
    for (i, k) in low_order.iter().enumerate() {
        let pk = PublicKey::from_bytes(*k);
        let d = &sim.nodes[A].device;
        d.add_peer(pk);
        d.set_endpoint(&pk, "10.0.0.2:51820".parse().unwrap())
            .unwrap();
        d.add_allowed_ip(&pk, IpAddr::V4(Ipv4Addr::new(172, 16, 0, i as u8)), 32)
            .unwrap();
        d.set_persistent_keepalive(sim.now, &pk, 1).unwrap();
    }
    for i in 0..4u8 {
        let p = ipv4_packet(
            sim.nodes[A].tunnel_ip,
            Ipv4Addr::new(172, 16, 0, i),
            b"to low order",
        );
        sim.send_packet(A, &p);
    }
    sim.run_for(secs(60));
    assert!(sim.wire.is_empty(), "{} datagrams", sim.wire.len());
}

fn hex_key(s: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, byte) in k.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    k
}

#[test]
fn a_day_of_lossy_traffic_with_rekeys() {
    let conditions = Conditions {
        loss: 0.02,
        duplicate: 0.02,
        reorder: 0.05,
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(40),
    };
    let mut sim = Sim::new(19, 2, conditions);
    sim.record_wire = false;
    let mut sent_ab = BTreeSet::new();
    let mut sent_ba = BTreeSet::new();
    let mut max_indices = 0;
    let mut max_outbox = 0;
    let day = 24 * 3600u64;
    let mut seq = 0u64;
    let mut t = 0u64;
    while t < day {
        // Bursts of traffic separated by idle periods of up to 10 minutes, so sessions expire,
        // keys are zeroed and handshakes restart.
        let burst = 1 + (t / 7) % 30;
        for _ in 0..burst {
            seq += 1;
            sim.send(A, B, &seq.to_be_bytes());
            sent_ab.insert(seq);
            seq += 1;
            sim.send(B, A, &seq.to_be_bytes());
            sent_ba.insert(seq);
            sim.run_for(Duration::from_millis(500));
        }
        let idle = [1, 30, 130, 200, 600][(t as usize / 11) % 5];
        sim.run_for(secs(idle));
        t = (sim.now - Instant::ZERO).as_secs();
        for n in &sim.nodes {
            let s = n.device.stats();
            max_indices = max_indices.max(s.indices);
            max_outbox = max_outbox.max(s.outbox);
            assert!(s.staged_packets <= rwg_proto::constants::MAX_STAGED_PACKETS);
        }
    }
    let check = |node: usize, sent: &BTreeSet<u64>| {
        let got: Vec<u64> = sim
            .delivered_payloads(node)
            .iter()
            .map(|p| u64::from_be_bytes(p.as_slice().try_into().unwrap()))
            .collect();
        let unique: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "a packet was delivered twice");
        assert!(unique.is_subset(sent), "delivered something never sent");
        unique.len() as f64 / sent.len() as f64
    };
    let ratio_b = check(B, &sent_ab);
    let ratio_a = check(A, &sent_ba);
    // 2 % loss per datagram plus handshakes lost now and then: most data still arrives.
    assert!(ratio_a > 0.9 && ratio_b > 0.9, "{ratio_a} {ratio_b}");
    assert!(sim.handshakes_completed(A) + sim.handshakes_completed(B) > 300);
    // Memory stays bounded: a handful of indices, no growing queues.
    assert!(max_indices <= 8, "{max_indices}");
    assert!(max_outbox <= 256, "{max_outbox}");
    assert_eq!(
        sim.drop_count(A, DropReason::Decrypt) + sim.drop_count(B, DropReason::Decrypt),
        0
    );
}
