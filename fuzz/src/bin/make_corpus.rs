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
fn relay(
    seed: &mut Vec<u8>,
    to: &mut Harness,
    source: std::net::SocketAddr,
    msg: &[u8],
) -> Received {
    encode_datagram(seed, false, 0, msg);
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
        write(
            dir,
            "responder",
            &format!("session-load{}", u8::from(under_load)),
            &seed,
        );
        // Then the timers: keepalive, rekey, expiry, zeroing.
        for i in [7, 11, 13, 14] {
            encode_advance(&mut seed, i);
        }
        write(
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
    write(dir, "initiator", "response", &seed);
    // A flushes its staged packet to B, which can then answer with data of its own.
    for (_, msg) in a.take_sent() {
        b.receive(addr_a(), &msg);
    }
    let reply = b
        .send_packet(&ipv4_packet(TUNNEL_B4, TUNNEL_A4, b"reply"))
        .expect("B confirmed the session");
    let got = relay(&mut seed, &mut a, addr_b(), &reply.1);
    assert!(matches!(got, Received::Packet { .. }), "{got:?}");
    write(dir, "initiator", "response-data", &seed);
    for i in [7, 11, 13, 14] {
        encode_advance(&mut seed, i);
    }
    write(dir, "initiator", "response-data-timers", &seed);

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
    for op in rwg_fuzz::ops(script) {
        h.step(op);
    }
    let peer = &h.dev.peers()[0];
    assert!(
        peer.last_handshake.is_some(),
        "{target}/{name} no longer completes a handshake on replay"
    );
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
    for (target, name) in [
        ("responder", "session-load0"),
        ("responder", "session-load1"),
        ("initiator", "response"),
        ("initiator", "response-data"),
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
