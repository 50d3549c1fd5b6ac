//! Writes seed inputs for the fuzz targets, made from genuine handshakes between two devices
//! set up exactly as the targets set theirs up (same keys, same RNG seeds, same clock), so that
//! replayed by the fuzzer they are accepted and reach the deep states: a session on the
//! responder, a completed handshake on the initiator, cookies under load.
//!
//! Usage: `cargo run --manifest-path fuzz/Cargo.toml --bin make_corpus [DIR]`
//! (default DIR: `fuzz/corpus`; one subdirectory per target). Seeds are small and generated on
//! demand rather than committed.

use std::path::{Path, PathBuf};

use rwg_fuzz::{
    addr_a, addr_b, encode_advance, encode_datagram, encode_special, ipv4_packet, responder,
    responder_peer, Harness, Pair, DELAYS, TUNNEL_A4, TUNNEL_B4,
};
use rwg_proto::device::Received;
use rwg_proto::messages::{self, Message};

/// Index into `DELAYS` of each step size used below.
fn delay_index(d: std::time::Duration) -> u8 {
    DELAYS.iter().position(|x| *x == d).expect("a listed delay") as u8
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create corpus directory");
    std::fs::write(d.join(name), bytes).expect("write seed");
}

/// One datagram from `from` to `to`, recorded as a raw datagram op from the peer's address.
/// `sel` 0x20: in batch mode, the batch ends after it (queued handshakes are handled).
fn relay(
    seed: &mut Vec<u8>,
    to: &mut Harness,
    source: std::net::SocketAddr,
    msg: &[u8],
) -> Received {
    encode_datagram(seed, false, 0x20, msg);
    to.receive(source, msg).0
}

fn advance_both(seed: &mut Vec<u8>, x: &mut Harness, y: &mut Harness, i: u8) {
    encode_advance(seed, i);
    x.advance(DELAYS[usize::from(i)]);
    y.advance(DELAYS[usize::from(i)]);
}

fn only(h: &mut Harness) -> Vec<u8> {
    let mut sent = h.take_sent();
    assert_eq!(sent.len(), 1, "expected one datagram, got {}", sent.len());
    sent.remove(0).1
}

/// The responder target: B initiates to the device under test (A) and sends data.
fn responder_seeds(dir: &Path, messages_seeds: &mut Vec<Vec<u8>>) {
    for under_load in [false, true] {
        let mut seed = vec![u8::from(under_load)];
        let mut a = responder(under_load);
        let mut b = responder_peer();
        assert!(b
            .send_packet(&ipv4_packet(TUNNEL_B4, TUNNEL_A4, b"seed"))
            .is_none());
        let mut init = only(&mut b);
        messages_seeds.push(init.clone());
        relay(&mut seed, &mut a, addr_b(), &init);
        if under_load {
            // A answers with a cookie; B stores it and retries after REKEY_TIMEOUT with mac2.
            let cookie = only(&mut a);
            messages_seeds.push(cookie.clone());
            assert!(matches!(
                messages::parse(&cookie),
                Ok(Message::CookieReply(_))
            ));
            b.receive(addr_a(), &cookie);
            advance_both(&mut seed, &mut a, &mut b, delay_index(DELAYS[6]));
            init = only(&mut b);
            relay(&mut seed, &mut a, addr_b(), &init);
        }
        let response = only(&mut a);
        assert!(matches!(
            messages::parse(&response),
            Ok(Message::Response(_))
        ));
        messages_seeds.push(response.clone());
        b.receive(addr_a(), &response);
        let data = only(&mut b);
        messages_seeds.push(data.clone());
        let got = relay(&mut seed, &mut a, addr_b(), &data);
        assert!(
            matches!(got, Received::Packet { .. }),
            "seed reaches a session: {got:?}"
        );
        write_both_drivers(
            dir,
            "responder",
            &format!("session-load{}", u8::from(under_load)),
            &seed,
        );
        // Then the timers: keepalive, rekey, expiry, zeroing.
        for i in [7, 11, 13, 14] {
            encode_advance(&mut seed, i);
        }
        write_both_drivers(
            dir,
            "responder",
            &format!("timers-load{}", u8::from(under_load)),
            &seed,
        );
    }
}

/// The initiator target: the device under test (A) sent an initiation; B answers.
fn initiator_seeds(dir: &Path, messages_seeds: &mut Vec<Vec<u8>>) {
    let (mut a, init) = rwg_fuzz::initiator();
    let mut b = rwg_fuzz::initiator_peer();
    let mut seed = vec![0];
    b.receive(addr_a(), &init);
    let response = only(&mut b);
    let got = relay(&mut seed, &mut a, addr_b(), &response);
    assert_eq!(got, Received::Handshake);
    write_both_drivers(dir, "initiator", "response", &seed);
    // A flushes its staged packet to B, which can then answer with data of its own.
    for (_, msg) in a.take_sent() {
        b.receive(addr_a(), &msg);
    }
    let reply = b
        .send_packet(&ipv4_packet(TUNNEL_B4, TUNNEL_A4, b"reply"))
        .expect("B confirmed the session");
    let got = relay(&mut seed, &mut a, addr_b(), &reply.1);
    assert!(matches!(got, Received::Packet { .. }), "{got:?}");
    write_both_drivers(dir, "initiator", "response-data", &seed);
    for i in [7, 11, 13, 14] {
        encode_advance(&mut seed, i);
    }
    write_both_drivers(dir, "initiator", "response-data-timers", &seed);

    // A responder under load answers the same initiation with a cookie reply.
    let (mut a, init) = rwg_fuzz::initiator();
    let mut b = rwg_fuzz::initiator_peer();
    b.dev.report_handshake_load(10_000);
    b.receive(addr_a(), &init);
    let cookie = only(&mut b);
    let mut seed = vec![0];
    assert_eq!(
        relay(&mut seed, &mut a, addr_b(), &cookie),
        Received::Handshake
    );
    // A retries after REKEY_TIMEOUT, now with mac2.
    encode_advance(&mut seed, 6);
    write(dir, "initiator", "cookie-reply", &seed);
    messages_seeds.push(cookie);
}

/// The transport target: genuine messages of the established pair, packets from both hosts.
fn transport_seeds(dir: &Path) {
    // Genuine messages must not be taken from the future: a message B has not sent yet in the
    // target's run would make B's real one a replay. Setup's messages were delivered already.
    let pair = Pair::established();
    let mut seed = Vec::new();
    // To A (sel bit 1 clear) from B's address (bit 0 clear): B's setup message, a replay.
    encode_datagram(&mut seed, false, 0, &pair.setup_messages[1]);
    // To B from A's address... as seen from B, `source` bit 0 clear is its peer, A.
    encode_datagram(&mut seed, false, 2, &pair.setup_messages[0]);
    // A fixed-up forgery to B.
    encode_datagram(&mut seed, true, 2, &[0u8; 48]);
    // Valid IPv4 from A and B, valid IPv6 from A, garbage from B.
    encode_special(&mut seed, 2, &[0u8; 40]);
    encode_special(&mut seed, 3, &[0u8; 28]);
    encode_special(&mut seed, 6, &[0u8; 60]);
    encode_special(&mut seed, 1, &[0x45; 24]);
    for i in [7, 11, 13] {
        encode_advance(&mut seed, i);
        encode_special(&mut seed, 2, &[0u8; 40]);
    }
    write(dir, "transport", "mixed", &seed);
}

/// Writes a device-target seed twice: as is (one-call driver) and with mode bit 1 set (batch
/// driver: handshakes queued, then handled at the end of each record's batch).
fn write_both_drivers(dir: &Path, target: &str, name: &str, seed: &[u8]) {
    write(dir, target, name, seed);
    let mut batch = seed.to_vec();
    batch[0] |= 2;
    write(dir, target, &format!("{name}-batch"), &batch);
}

/// Replays a device-target seed the way the target does and checks that it completes a
/// handshake: seeds that silently stop replaying (a changed setup) would leave the fuzzer at
/// the surface again.
fn check_replay(dir: &Path, target: &str, name: &str) {
    let data = std::fs::read(dir.join(target).join(name)).expect("seed written");
    let (&mode, script) = data.split_first().expect("mode byte");
    let mut h = match target {
        "responder" => responder(mode & 1 == 1),
        _ => rwg_fuzz::initiator().0,
    };
    h.batch = mode & 2 != 0;
    for op in rwg_fuzz::ops(script) {
        h.step(op);
    }
    let peer = &h.dev.peers()[0];
    assert!(
        peer.last_handshake.is_some(),
        "{target}/{name} no longer completes a handshake on replay"
    );
}

/// The peer target: op scripts (see `rwg_fuzz::peer_sim`) that reach a session, cookies, the
/// retry timers and key changes. The ops are symbolic ("deliver the next datagram"), so these
/// only save the fuzzer a few steps; each is replayed here and must reach a handshake.
fn peer_seeds(dir: &Path) {
    use rwg_fuzz::peer_sim::{op, op_byte, Sim};
    let packet = ipv4_packet(TUNNEL_A4, TUNNEL_B4, b"seed");
    let send = |s: &mut Vec<u8>, side: u8| {
        s.push(op_byte(op::SEND, side));
        s.push(packet.len() as u8);
        s.extend_from_slice(&packet);
    };
    let deliver =
        |s: &mut Vec<u8>, n: usize| s.extend(std::iter::repeat_n(op_byte(op::DELIVER, 0), n));
    let advance = |s: &mut Vec<u8>, i: u8| s.push(op_byte(op::ADVANCE, i));

    // P stages a packet; initiation, response, data, confirmation; data back; timers.
    let mut session = Vec::new();
    send(&mut session, 0);
    deliver(&mut session, 3);
    send(&mut session, 1);
    deliver(&mut session, 1);
    let mut timers = session.clone();
    for i in [7, 7, 11, 11, 13, 14] {
        advance(&mut timers, i);
        send(&mut timers, 0);
        deliver(&mut timers, 3);
    }
    // Q under load: a cookie reply, P's retry with mac2 after REKEY_TIMEOUT.
    let mut cookie = vec![op_byte(op::LOAD, 1)];
    send(&mut cookie, 0);
    deliver(&mut cookie, 2);
    advance(&mut cookie, 6);
    deliver(&mut cookie, 3);
    // Preshared keys on both sides, then P changes its key and Q refuses it.
    let mut keys = vec![op_byte(op::PSK, 1)];
    send(&mut keys, 0);
    deliver(&mut keys, 3);
    keys.push(op_byte(op::IDENTITY, 2));
    advance(&mut keys, 6);
    keys.push(op_byte(op::INITIATE, 0));
    deliver(&mut keys, 2);
    // Two bursts of 65 packets before the session: the staging queue overflows.
    let mut overflow = Vec::new();
    for _ in 0..2 {
        overflow.push(op_byte(op::SEND, 4));
        overflow.push(packet.len() as u8);
        overflow.extend_from_slice(&packet);
    }
    deliver(&mut overflow, 3);
    for (name, seed) in [
        ("overflow", &overflow),
        ("session", &session),
        ("timers", &timers),
        ("cookie", &cookie),
        ("keys", &keys),
    ] {
        let mut sim = Sim::new();
        sim.run(seed);
        assert!(sim.established(), "peer/{name} no longer reaches a session");
        write(dir, "peer", name, seed);
    }
    // Unanswered initiations until P gives up, then key erasure.
    let mut give_up = Vec::new();
    send(&mut give_up, 0);
    for _ in 0..20 {
        advance(&mut give_up, 6);
    }
    advance(&mut give_up, 14);
    write(dir, "peer", "give-up", &give_up);
}

/// The differential targets: a few records of each kind.
fn table_seeds(dir: &Path) {
    // replay: ahead, behind, the window's edge, a long jump, the limit, block edges, queries.
    write(
        dir,
        "replay",
        "mixed",
        &[
            0, 5, 1, 2, 0, 2, 16, 3, 0, 0, 1, 0, 5, 3, 1, 2, 8, 4, 3, 6, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    );
    // allowed_ips: 10.0.0.0/8 -> 0, 10.1.0.0/16 -> 1, fd00::/8 -> 2, lookups, a listing.
    let mut t = vec![0x00, 8, 10, 0, 0, 0, 0x10, 16, 10, 1, 0, 0];
    t.extend([0x28, 8, 0xfd]);
    t.extend([0u8; 15]);
    t.extend([
        0x04, 10, 1, 2, 3, 0x05, 1, 9, 0x06, 0x12, 16, 10, 1, 0, 0, 0x06,
    ]);
    write(dir, "allowed_ips", "mixed", &t);
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut messages_seeds = Vec::new();
    responder_seeds(&dir, &mut messages_seeds);
    initiator_seeds(&dir, &mut messages_seeds);
    transport_seeds(&dir);
    peer_seeds(&dir);
    table_seeds(&dir);
    for (target, name) in [
        ("responder", "session-load0"),
        ("responder", "session-load1"),
        ("initiator", "response"),
        ("initiator", "response-data"),
        ("responder", "session-load0-batch"),
        ("responder", "session-load1-batch"),
        ("initiator", "response-batch"),
        ("initiator", "response-data-batch"),
    ] {
        check_replay(&dir, target, name);
    }
    for (i, m) in messages_seeds.iter().enumerate() {
        write(&dir, "messages", &format!("genuine-{i}"), m);
    }
    // cookie: mode 0b100 (initiation length, fix mac1), then a genuine initiation.
    let mut cookie = vec![0b100];
    cookie.extend_from_slice(&messages_seeds[0]);
    write(&dir, "cookie", "initiation", &cookie);
    println!("seeds written under {}", dir.display());
}
