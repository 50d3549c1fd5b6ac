//! Faults and abuse in virtual time: clocks that jump, long suspends, replayed handshakes and
//! data, and the bugs other WireGuard implementations have had, each as a regression test that
//! shows rwg does not have it.

#![allow(clippy::unwrap_used)]

mod sim;

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use rwg_proto::constants::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, ZERO_KEY_MATERIAL_AFTER,
};
use rwg_proto::device::{DropReason, Event, Received, Sent};
use sim::{lan, secs, Sim, A, B, COOKIE, INITIATION, RESPONSE, TRANSPORT};

fn established(seed: u64) -> Sim {
    let mut sim = Sim::new(seed, 2, lan());
    sim.send(A, B, b"hello");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B), vec![b"hello".to_vec()]);
    sim
}

fn endpoint_at(sim: &Sim, node: usize, peer: usize) -> Option<SocketAddr> {
    let pk = sim.peer_key(peer);
    sim.nodes[node]
        .device
        .peers()
        .into_iter()
        .find(|p| p.public_key == pk)
        .and_then(|p| p.endpoint)
}

// ----- clock faults -----

#[test]
fn wall_clock_set_back_an_hour_does_not_make_our_initiations_look_replayed() {
    // B stored A's last initiation timestamp. If A's wall clock is set back, a naive
    // implementation sends older timestamps, which B refuses (StaleTimestamp) until the clock
    // passes the old value again: an hour without a tunnel. Ours stay monotonic.
    // (A peer entry created after the jump has no memory of earlier timestamps; like the
    // kernel's, it starts from the clock. A configured peer never goes backwards.)
    let mut sim = established(2);
    let now = sim.now;
    sim.nodes[A]
        .device
        .set_unix_time(now, Duration::from_secs(1_700_000_000 - 3600));
    sim.run_for(REJECT_AFTER_TIME + secs(1)); // the session expires; B's stored timestamp stays
    sim.send(A, B, b"after the clock went back");
    sim.run_for(secs(1));
    assert_eq!(sim.drop_count(B, DropReason::StaleTimestamp), 0);
    assert_eq!(
        sim.delivered_payloads(B).last().unwrap(),
        b"after the clock went back"
    );
}

#[test]
fn wall_clock_jumping_forward_changes_nothing_but_the_timestamps() {
    let mut sim = established(3);
    let now = sim.now;
    sim.nodes[A]
        .device
        .set_unix_time(now, Duration::from_secs(1_700_000_000 + 86_400 * 365));
    for i in 0..200u32 {
        sim.send(A, B, &i.to_be_bytes());
        sim.send(B, A, &i.to_be_bytes());
        sim.run_for(secs(1));
    }
    // Rekeyed at 120 s as usual; nothing refused; every packet delivered.
    assert_eq!(sim.delivered_payloads(B).len(), 201);
    assert_eq!(sim.delivered_payloads(A).len(), 200);
    assert_eq!(sim.drop_count(B, DropReason::StaleTimestamp), 0);
    assert!(sim.handshakes_completed(A) >= 2);
}

#[test]
fn a_long_suspend_recovers_by_the_rules() {
    // The monotonic clock jumps by an hour (a laptop's suspend, with a clock that counts it):
    // every key is past REJECT_AFTER_TIME, so the first packet afterwards waits for a new
    // handshake, which happens at once; nothing is sent with the old keys.
    let mut sim = established(4);
    let before = sim.wire.len();
    sim.now += secs(3600);
    // The timers that came due while suspended fire once, not once per missed period.
    sim.run_for(Duration::from_millis(1));
    let after_resume = sim.wire.len() - before;
    assert!(
        after_resume <= 2,
        "{after_resume} datagrams right after resuming"
    );
    assert_eq!(sim.send(A, B, b"after resume"), Sent::Staged);
    // Both sides had a timer due at resume (A's new-handshake, B's keepalive, as the kernel
    // would), so both initiate at once; like the kernel, the next retry settles it.
    sim.run_for(REKEY_TIMEOUT + secs(1));
    assert_eq!(sim.delivered_payloads(B).last().unwrap(), b"after resume");
    let starts = sim::session_start_by_index(&sim.wire);
    for r in sim.wire_of_type(TRANSPORT) {
        assert!(r.at - starts[&r.receiver_index()] < REJECT_AFTER_TIME);
    }
}

// ----- replays -----

#[test]
fn replayed_handshakes_and_data_change_nothing_now_minutes_later_or_after_a_rekey() {
    let mut sim = established(5);
    let recorded: Vec<_> = sim.wire.clone();
    let attacker: SocketAddr = "198.51.100.7:9999".parse().unwrap();
    let replay_all = |sim: &mut Sim| {
        let before_b = sim.delivered_payloads(B).len();
        let before_a = sim.delivered_payloads(A).len();
        let responses = sim.wire_of_type(RESPONSE).count();
        for r in &recorded {
            for from in [r.from, attacker] {
                let verdict = sim.deliver(from, r.to, r.bytes.clone()).unwrap();
                assert!(
                    matches!(verdict, Received::Dropped(_)),
                    "replayed type {} from {from}: {verdict:?}",
                    r.msg_type()
                );
            }
        }
        sim.run_for(Duration::from_millis(100));
        assert_eq!(
            sim.delivered_payloads(B).len(),
            before_b,
            "nothing delivered twice"
        );
        assert_eq!(sim.delivered_payloads(A).len(), before_a);
        assert_eq!(
            sim.wire_of_type(RESPONSE).count(),
            responses,
            "no response to a replayed initiation"
        );
        assert_eq!(
            endpoint_at(sim, B, A),
            Some(sim.nodes[A].addr),
            "no roaming"
        );
        assert_eq!(
            endpoint_at(sim, A, B),
            Some(sim.nodes[B].addr),
            "no roaming"
        );
    };
    replay_all(&mut sim);
    // The session is undisturbed.
    sim.send(A, B, b"still here");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B).last().unwrap(), b"still here");
    // Minutes later, and after a rekey (traffic for 3 minutes).
    for i in 0..180u32 {
        sim.send(A, B, &i.to_be_bytes());
        sim.run_for(secs(1));
    }
    assert!(sim.handshakes_completed(A) >= 2);
    replay_all(&mut sim);
    sim.send(B, A, b"both ways");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(A).last().unwrap(), b"both ways");
}

// ----- other implementations' bugs, as regression tests -----

#[test]
fn cookie_replies_never_move_the_endpoint() {
    // A bug fixed in boringtun's forks: roaming to the source of a cookie reply. A cookie reply
    // is not authenticated as coming from the peer (§4): the endpoint must not follow it.
    let mut sim = Sim::new(6, 2, lan());
    sim.nodes[B].device.report_handshake_load(10_000);
    sim.send(A, B, b"x");
    sim.run_for(Duration::from_millis(100));
    let cookie = sim.wire_of_type(COOKIE).next().unwrap().clone();
    let elsewhere: SocketAddr = "203.0.113.50:4000".parse().unwrap();
    let r = sim.deliver(elsewhere, cookie.to, cookie.bytes.clone());
    assert!(matches!(r, Some(Received::Handshake)), "{r:?}");
    assert_eq!(endpoint_at(&sim, A, B), Some(sim.nodes[B].addr));
}

#[test]
fn inner_source_of_the_other_address_family_is_checked_too() {
    // A source-check bypass fixed in a boringtun fork: packets whose inner source was of the
    // other family than the allowed IPs were not checked. B allows only A's IPv4 address.
    let mut sim = established(7);
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[5] = 8;
    v6[6] = 253;
    v6[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    v6[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    // A routes it (give A a route for the destination).
    let pk_b = sim.peer_key(B);
    sim.nodes[A]
        .device
        .add_allowed_ip(&pk_b, "fd00::2".parse().unwrap(), 128)
        .unwrap();
    assert!(matches!(sim.send_packet(A, &v6), Sent::Transmit { .. }));
    sim.run_for(secs(1));
    assert_eq!(sim.drop_count(B, DropReason::SourceNotAllowed), 1);
    assert_eq!(sim.delivered_payloads(B).len(), 1);
}

#[test]
fn an_expired_session_brings_no_rekey_storm_and_no_keepalive_ping_pong() {
    // Bugs fixed in boringtun's forks: after a session expired, peers kept rekeying or sent
    // keepalives back and forth forever. With no traffic, after the last passive keepalive,
    // the wire must fall silent; after 540 s the keys go and nothing more is sent.
    let mut sim = established(8);
    sim.send(B, A, b"reply");
    sim.run_for(KEEPALIVE_TIMEOUT + secs(2));
    let quiet_from = sim.wire.len();
    sim.run_for(ZERO_KEY_MATERIAL_AFTER + secs(60));
    let extra: Vec<_> = sim.wire[quiet_from..]
        .iter()
        .map(|r| (r.msg_type(), r.at))
        .collect();
    assert!(extra.is_empty(), "datagrams on an idle tunnel: {extra:?}");
    for node in [A, B] {
        assert!(sim.nodes[node]
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::KeysZeroed { .. })));
    }
}

#[test]
fn oversized_and_truncated_datagrams_are_dropped_not_panicked_on() {
    // A remote panic fixed in a boringtun fork: batched receive of datagrams larger than the
    // buffer the code assumed. The core takes any length.
    let mut sim = established(9);
    let from = sim.nodes[A].addr;
    let to = sim.nodes[B].addr;
    for len in [
        0usize, 1, 3, 4, 15, 16, 31, 32, 63, 64, 91, 93, 147, 149, 1500, 65_507,
    ] {
        for ty in 1u8..=5 {
            let mut d = vec![0xa5u8; len];
            if let Some(b) = d.first_mut() {
                *b = ty;
            }
            for b in d.iter_mut().take(4).skip(1) {
                *b = 0;
            }
            let r = sim.deliver(from, to, d).unwrap();
            assert!(
                matches!(r, Received::Dropped(_)),
                "type {ty} len {len}: {r:?}"
            );
        }
    }
    sim.send(A, B, b"unharmed");
    sim.run_for(secs(1));
    assert_eq!(sim.delivered_payloads(B).last().unwrap(), b"unharmed");
}

#[test]
fn simultaneous_initiation_converges_and_keeps_one_session_each_way() {
    // Both sides initiate within the same few milliseconds, repeatedly (boringtun forks fixed
    // sessions flapping here). Traffic must flow and settle.
    let mut sim = Sim::new(10, 2, lan());
    for round in 0..3u8 {
        sim.send(A, B, &[round]);
        sim.send(B, A, &[round]);
        sim.run_for(REKEY_TIMEOUT * 3);
    }
    assert_eq!(sim.delivered_payloads(B).len(), 3);
    assert_eq!(sim.delivered_payloads(A).len(), 3);
    let initiations = sim.wire_of_type(INITIATION).count();
    for i in 0..30u8 {
        sim.send(A, B, &[i]);
        sim.send(B, A, &[i]);
        sim.run_for(secs(1));
    }
    assert_eq!(sim.wire_of_type(INITIATION).count(), initiations, "settled");
}

#[test]
fn a_late_wake_up_erases_keys_before_it_starts_the_new_handshake() {
    // Found by the `peer` fuzz target: when key erasure and a handshake timer come due in the
    // same handle_timeout (a driver woken 9 minutes late), erasing after sending forgot the
    // initiation just sent, and the answer was refused until the next retry 5 s later.
    let mut sim = established(11);
    sim.run_for(KEEPALIVE_TIMEOUT + secs(2)); // B's passive keepalive is out: B has no timer due
    sim.nodes[B].online = false;
    sim.send(A, B, b"unanswered"); // arms A's new-handshake timer (15 s)
    let a_addr = sim.nodes[A].addr;
    let from_a = |sim: &Sim| {
        sim.wire_of_type(INITIATION)
            .filter(|r| r.from == a_addr)
            .count()
    };
    let initiations = from_a(&sim);
    sim.nodes[B].online = true;
    sim.now += ZERO_KEY_MATERIAL_AFTER + secs(1); // nothing ran meanwhile
    sim.run_for(secs(1));
    assert_eq!(from_a(&sim), initiations + 1);
    assert_eq!(sim.drop_count(A, DropReason::UnexpectedMessage), 0);
    assert_eq!(
        sim.handshakes_completed(A),
        2,
        "completed at once, not after a retry"
    );
}
