//! mac1, mac2 and cookies (PROTOCOL.md §4; whitepaper §5.4.4 and §5.4.7).
//!
//! The responder side is [`CookieChecker`]: it checks mac1 always and mac2 when under load, and
//! mints cookie replies. The initiator side is [`CookieState`], one per peer: it remembers the
//! last mac1 it sent and the latest cookie received, and writes mac2 while that cookie is fresh.

use core::net::{IpAddr, SocketAddr};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{constant_time_eq, mac, xaead_open, xaead_seal, AuthError, MAC_LEN, TAG_LEN};
use crate::messages::{field, write_type, CookieReply, COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY};
use crate::time::Instant;

pub use crate::constants::{COOKIE_SECRET_MAX_AGE, COOKIE_USE_MAX_AGE};

/// Offset of mac1 in a handshake message: everything before it is covered by mac1. `None`
/// for a buffer too short to hold both macs (never a parsed handshake message).
fn mac1_offset(msg: &[u8]) -> Option<usize> {
    msg.len().checked_sub(2 * MAC_LEN)
}

/// Writes mac1 = MAC(HASH(LABEL_MAC1 ‖ receiver's public key), msg[..mac1]) and zeroes mac2.
pub(crate) fn write_mac1(mac1_key: &[u8; 32], msg: &mut [u8]) -> [u8; MAC_LEN] {
    let Some(off) = mac1_offset(msg) else {
        return [0; MAC_LEN];
    };
    let m = mac(mac1_key, &[&msg[..off]]);
    msg[off..off + MAC_LEN].copy_from_slice(&m);
    msg[off + MAC_LEN..].fill(0);
    m
}

/// What the responder's mac check concluded (the kernel's graded verdicts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacVerdict {
    /// mac1 is wrong: drop silently.
    InvalidMac,
    /// mac1 is right, mac2 missing or wrong: under load, answer with a cookie reply.
    ValidMacNoCookie,
    /// mac1 and mac2 are right.
    ValidMacAndCookie,
}

/// The responder's side: checks macs and mints cookies for a source address.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: CookieSecret,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct CookieSecret {
    bytes: [u8; 32],
    #[zeroize(skip)]
    born: Option<Instant>,
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// A checker for messages addressed to `local` (no key: nothing passes mac1).
    pub fn new(local: Option<&crate::noise::StaticIdentity>) -> Self {
        let (mac1_key, cookie_key) = match local {
            Some(id) => (id.mac1_key, id.cookie_key),
            None => ([0; 32], [0; 32]),
        };
        CookieChecker {
            mac1_key,
            cookie_key,
            secret: CookieSecret {
                bytes: [0; 32],
                born: None,
            },
        }
    }

    /// The cookie for `source` under the current secret, renewing the secret when it is old.
    fn cookie_for(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        source: SocketAddr,
    ) -> [u8; MAC_LEN] {
        let fresh = self
            .secret
            .born
            .is_some_and(|b| now - b < COOKIE_SECRET_MAX_AGE);
        if !fresh {
            rng.fill_bytes(&mut self.secret.bytes);
            self.secret.born = Some(now);
        }
        // The encoding of the source is local: only we check our cookies.
        let port = source.port().to_be_bytes();
        match source.ip() {
            IpAddr::V4(ip) => mac(&self.secret.bytes, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac(&self.secret.bytes, &[&ip.octets(), &port]),
        }
    }

    /// Checks mac1 of a handshake message (initiation or response), and mac2 if `check_mac2`.
    pub fn verify(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        msg: &[u8],
        source: SocketAddr,
        check_mac2: bool,
    ) -> MacVerdict {
        let Some(off) = mac1_offset(msg) else {
            return MacVerdict::InvalidMac;
        };
        let expected = mac(&self.mac1_key, &[&msg[..off]]);
        if !constant_time_eq(&expected, &msg[off..off + MAC_LEN]) {
            return MacVerdict::InvalidMac;
        }
        if !check_mac2 {
            return MacVerdict::ValidMacAndCookie;
        }
        let cookie = self.cookie_for(now, rng, source);
        let expected2 = mac(&cookie, &[&msg[..off + MAC_LEN]]);
        if constant_time_eq(&expected2, &msg[off + MAC_LEN..]) {
            MacVerdict::ValidMacAndCookie
        } else {
            MacVerdict::ValidMacNoCookie
        }
    }

    /// Writes a cookie reply to the handshake message `msg` (whose sender index is `sender_index`).
    pub fn create_reply(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        msg: &[u8],
        sender_index: u32,
        source: SocketAddr,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        let Some(off) = mac1_offset(msg) else { return };
        let cookie = self.cookie_for(now, rng, source);
        write_type(out, TYPE_COOKIE_REPLY);
        out[field::cookie_reply::RECEIVER].copy_from_slice(&sender_index.to_le_bytes());
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        out[field::cookie_reply::NONCE].copy_from_slice(&nonce);
        let sealed = &mut out[field::cookie_reply::COOKIE];
        sealed[..MAC_LEN].copy_from_slice(&cookie);
        xaead_seal(&self.cookie_key, &nonce, sealed, &msg[off..off + MAC_LEN]);
    }
}

/// The initiator's side for one peer: last mac1 sent and the latest cookie received.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub struct CookieState {
    last_mac1: Option<[u8; MAC_LEN]>,
    cookie: Option<[u8; MAC_LEN]>,
    #[zeroize(skip)]
    received: Option<Instant>,
}

impl core::fmt::Debug for CookieState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieState")
            .field("has_cookie", &self.cookie.is_some())
            .finish()
    }
}

impl CookieState {
    /// Writes mac1 and, while a cookie younger than [`COOKIE_USE_MAX_AGE`] is held, mac2.
    pub fn add_macs(&mut self, now: Instant, peer_mac1_key: &[u8; 32], msg: &mut [u8]) {
        let Some(off) = mac1_offset(msg) else { return };
        let m1 = write_mac1(peer_mac1_key, msg);
        self.last_mac1 = Some(m1);
        let fresh = self.received.is_some_and(|t| now - t < COOKIE_USE_MAX_AGE);
        if let (true, Some(cookie)) = (fresh, self.cookie.as_ref()) {
            let off = off + MAC_LEN;
            let m2 = mac(cookie, &[&msg[..off]]);
            msg[off..].copy_from_slice(&m2);
        }
    }

    /// Decrypts a cookie reply with HASH(LABEL_COOKIE ‖ peer's public key) and the last mac1 we
    /// sent as associated data, and stores the cookie. Fires no timers.
    pub fn consume_reply(
        &mut self,
        now: Instant,
        peer_cookie_key: &[u8; 32],
        reply: &CookieReply<'_>,
    ) -> Result<(), AuthError> {
        let last_mac1 = self.last_mac1.ok_or(AuthError)?;
        let mut buf = *reply.encrypted_cookie();
        xaead_open(peer_cookie_key, reply.nonce(), &mut buf, &last_mac1)?;
        let mut cookie = [0u8; MAC_LEN];
        cookie.copy_from_slice(&buf[..MAC_LEN]);
        buf.zeroize();
        debug_assert_eq!(TAG_LEN, MAC_LEN);
        self.cookie = Some(cookie);
        self.received = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PrivateKey;
    use crate::messages::{parse, Message, INITIATION_LEN, TYPE_INITIATION};
    use crate::noise::{RemoteStatic, StaticIdentity};
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn short_buffers_are_refused_not_panicked_on() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let mut checker = CookieChecker::new(None);
        let src: SocketAddr = "192.0.2.1:1".parse().expect("addr");
        for len in 0..32 {
            let mut msg = alloc::vec![0u8; len];
            assert_eq!(
                checker.verify(Instant::ZERO, &mut rng, &msg, src, true),
                MacVerdict::InvalidMac
            );
            let mut out = [0u8; COOKIE_REPLY_LEN];
            checker.create_reply(Instant::ZERO, &mut rng, &msg, 1, src, &mut out);
            assert_eq!(out, [0u8; COOKIE_REPLY_LEN]);
            CookieState::default().add_macs(Instant::ZERO, &[0; 32], &mut msg);
        }
    }

    #[test]
    fn cookie_round_trip_makes_mac2_valid() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let responder = StaticIdentity::new(PrivateKey::from_bytes([2; 32]));
        let remote =
            RemoteStatic::new(*responder.public_key(), crate::crypto::PresharedKey::none());
        let mut checker = CookieChecker::new(Some(&responder));
        let mut state = CookieState::default();
        let src: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let now = Instant::from_nanos(1_000);

        let mut msg = [0u8; INITIATION_LEN];
        write_type(&mut msg, TYPE_INITIATION);
        msg[4] = 7;
        state.add_macs(now, &remote.mac1_key(), &mut msg);
        assert_eq!(
            checker.verify(now, &mut rng, &msg, src, false),
            MacVerdict::ValidMacAndCookie
        );
        assert_eq!(
            checker.verify(now, &mut rng, &msg, src, true),
            MacVerdict::ValidMacNoCookie
        );
        let mut bad = msg;
        bad[20] ^= 1;
        assert_eq!(
            checker.verify(now, &mut rng, &bad, src, true),
            MacVerdict::InvalidMac
        );

        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.create_reply(now, &mut rng, &msg, 7, src, &mut reply);
        let Ok(Message::CookieReply(view)) = parse(&reply) else {
            panic!("cookie reply parses")
        };
        assert_eq!(view.receiver_index(), 7);
        state
            .consume_reply(now, &remote.cookie_key(), &view)
            .expect("cookie decrypts");

        state.add_macs(now, &remote.mac1_key(), &mut msg);
        assert_eq!(
            checker.verify(now, &mut rng, &msg, src, true),
            MacVerdict::ValidMacAndCookie
        );
        // The cookie is bound to the source address and port.
        let other: SocketAddr = "192.0.2.1:51821".parse().expect("addr");
        assert_eq!(
            checker.verify(now, &mut rng, &msg, other, true),
            MacVerdict::ValidMacNoCookie
        );
        // After the secret rotates, the old cookie no longer passes.
        let later = now + COOKIE_SECRET_MAX_AGE + core::time::Duration::from_secs(1);
        assert_eq!(
            checker.verify(later, &mut rng, &msg, src, true),
            MacVerdict::ValidMacNoCookie
        );
        // And the initiator stops using a stale cookie.
        state.add_macs(later, &remote.mac1_key(), &mut msg);
        assert_eq!(&msg[132..], &[0u8; 16]);
        // A reply whose AAD is not our last mac1 is refused.
        let mut other_state = CookieState::default();
        let mut m2 = msg;
        m2[30] ^= 1;
        other_state.add_macs(now, &remote.mac1_key(), &mut m2);
        assert!(other_state
            .consume_reply(now, &remote.cookie_key(), &view)
            .is_err());
    }
}
