//! The public API of `rwg_proto::cookie` on arbitrary bytes of the lengths it is given in the
//! device (PROTOCOL.md §4). Input: a mode byte, a handshake message (148 or 92 bytes, padded
//! with zeros), a 64-byte cookie reply. Checked:
//! - `CookieChecker::verify` agrees with mac1 computed here from the public key, and never
//!   accepts a mac2 it did not mint;
//! - `CookieState::consume_reply` refuses replies it cannot authenticate (forged bytes, or no
//!   mac1 sent yet);
//! - the round trip add_macs → create_reply → consume_reply → add_macs passes mac2 for the same
//!   source while the cookie is young, and not for another source.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use rwg_fuzz::{addr_b, addr_stranger, DELAYS, KEY_A, START};
use rwg_proto::cookie::{CookieChecker, CookieState, MacVerdict, COOKIE_USE_MAX_AGE};
use rwg_proto::crypto::{hash, mac, PrivateKey};
use rwg_proto::messages::{self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN};
use rwg_proto::noise::{StaticIdentity, LABEL_COOKIE, LABEL_MAC1};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let len = if mode & 1 == 0 {
        INITIATION_LEN
    } else {
        RESPONSE_LEN
    };
    let check_mac2 = mode & 2 != 0;
    let fix_mac1 = mode & 4 != 0;
    let delay = DELAYS[usize::from(mode >> 3) % DELAYS.len()];
    let mut msg = vec![0u8; len];
    let n = rest.len().min(len);
    msg[..n].copy_from_slice(&rest[..n]);
    let mut reply_bytes = [0u8; COOKIE_REPLY_LEN];
    let tail = rest.get(len..).unwrap_or_default();
    let r = tail.len().min(COOKIE_REPLY_LEN);
    reply_bytes[..r].copy_from_slice(&tail[..r]);
    reply_bytes[..4].copy_from_slice(&3u32.to_le_bytes());
    let Ok(Message::CookieReply(forged)) = messages::parse(&reply_bytes) else {
        panic!("a 64-byte type-3 message is a cookie reply");
    };

    let identity = StaticIdentity::new(PrivateKey::from_bytes(KEY_A));
    let public = *identity.public_key();
    let mac1_key = hash(&[LABEL_MAC1, public.as_bytes()]);
    let cookie_key = hash(&[LABEL_COOKIE, public.as_bytes()]);
    let mut checker = CookieChecker::new(Some(&identity));
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let source: SocketAddr = if mode & 0x80 == 0 {
        addr_b()
    } else {
        addr_stranger()
    };
    let now = START;

    // 1. Arbitrary message, mac1 possibly made right, checked against our own computation.
    let off = len - 32;
    if fix_mac1 {
        let m = mac(&mac1_key, &[&msg[..off]]);
        msg[off..off + 16].copy_from_slice(&m);
    }
    let mac1_ok = mac(&mac1_key, &[&msg[..off]]) == msg[off..off + 16];
    let verdict = checker.verify(now, &mut rng, &msg, source, check_mac2);
    let want = match (mac1_ok, check_mac2) {
        (false, _) => MacVerdict::InvalidMac,
        (true, false) => MacVerdict::ValidMacAndCookie,
        // mac2 under a secret this checker drew itself: bytes from outside cannot match.
        (true, true) => MacVerdict::ValidMacNoCookie,
    };
    assert_eq!(verdict, want);

    // 2. Forged replies are refused, before and after a mac1 was sent.
    let mut state = CookieState::default();
    assert!(state.consume_reply(now, &cookie_key, &forged).is_err());
    state.add_macs(now, &mac1_key, &mut msg);
    assert_eq!(&msg[off + 16..], &[0u8; 16], "no cookie yet: mac2 is zero");
    assert_eq!(
        checker.verify(now, &mut rng, &msg, source, false),
        MacVerdict::ValidMacAndCookie
    );
    assert!(state.consume_reply(now, &cookie_key, &forged).is_err());

    // 3. A genuine round trip.
    let sender = u32::from_le_bytes(msg[4..8].try_into().unwrap());
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    checker.create_reply(now, &mut rng, &msg, sender, source, &mut reply);
    let Ok(Message::CookieReply(genuine)) = messages::parse(&reply) else {
        panic!("create_reply wrote a malformed cookie reply: {reply:02x?}");
    };
    assert_eq!(genuine.receiver_index(), sender);
    state
        .consume_reply(now, &cookie_key, &genuine)
        .expect("our own cookie reply authenticates");
    let later = now + delay;
    state.add_macs(later, &mac1_key, &mut msg);
    let young = delay < COOKIE_USE_MAX_AGE;
    let expected = if young {
        MacVerdict::ValidMacAndCookie
    } else {
        MacVerdict::ValidMacNoCookie
    };
    assert_eq!(
        checker.verify(later, &mut rng, &msg, source, true),
        expected
    );
    let elsewhere: SocketAddr = if source == addr_b() {
        addr_stranger()
    } else {
        addr_b()
    };
    assert_eq!(
        checker.verify(later, &mut rng, &msg, elsewhere, true),
        MacVerdict::ValidMacNoCookie,
        "a cookie is bound to its source"
    );
});
