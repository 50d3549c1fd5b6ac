//! Handshake initiations with a correct mac1 for the victim's public key (PROTOCOL.md §4:
//! mac1 = MAC(HASH(LABEL_MAC1 ‖ victim's public key), msg[..116])), the rest random: each one
//! costs a victim that is not under load one X25519 before the decryption of the static key
//! fails. Like a real initiator, the flood answers cookie replies: it decrypts the cookie with
//! HASH(LABEL_COOKIE ‖ victim's public key) and the mac1 of the message it answers, and from
//! then on sends mac2 from that source address and port, so that what reaches the victim under
//! load must pass its per-source rate limiter rather than just earn another cookie reply.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rwg_proto::crypto::{mac, xaead_open, PresharedKey, PublicKey};
use rwg_proto::messages::{parse, Message, INITIATION_LEN};
use rwg_proto::noise::RemoteStatic;

use crate::blast::Producer;

/// mac1 of the most recent messages of one source, by sender index modulo this.
const RING: usize = 1024;

/// How long a cookie is used: a little under the victim's 120 s secret (the kernel's margin).
const COOKIE_USE: std::time::Duration = std::time::Duration::from_secs(115);

/// The keys the flood needs, derived from the victim's public key.
#[derive(Clone)]
pub(crate) struct VictimKeys {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
}

impl VictimKeys {
    pub(crate) fn new(victim: PublicKey) -> Self {
        let remote = RemoteStatic::new(victim, PresharedKey::none());
        VictimKeys {
            mac1_key: remote.mac1_key(),
            cookie_key: remote.cookie_key(),
        }
    }

    pub(crate) fn mac1_key(&self) -> &[u8; 32] {
        &self.mac1_key
    }
}

/// Writes an initiation with sender index `index`, random ephemeral, static and timestamp
/// fields, a correct mac1, and mac2 under `cookie` if given. Returns mac1.
pub(crate) fn initiation(
    rng: &mut impl RngCore,
    keys: &VictimKeys,
    index: u32,
    cookie: Option<&[u8; 16]>,
    msg: &mut [u8; INITIATION_LEN],
) -> [u8; 16] {
    msg[..4].copy_from_slice(&1u32.to_le_bytes());
    msg[4..8].copy_from_slice(&index.to_le_bytes());
    rng.fill_bytes(&mut msg[8..116]);
    let mac1 = mac(&keys.mac1_key, &[&msg[..116]]);
    msg[116..132].copy_from_slice(&mac1);
    let mac2 = cookie.map_or([0; 16], |c| mac(c, &[&msg[..132]]));
    msg[132..].copy_from_slice(&mac2);
    mac1
}

struct Source {
    next_index: u32,
    /// (sender index, mac1) of recent messages, at index % RING.
    sent: Vec<(u32, [u8; 16])>,
    cookie: Option<([u8; 16], std::time::Instant)>,
}

/// One thread's flood.
pub(crate) struct Flood {
    keys: VictimKeys,
    answer_cookies: bool,
    rng: ChaCha8Rng,
    sources: Vec<Source>,
    with_mac2: u64,
    cookie_replies: u64,
    cookies_accepted: u64,
    cookies_refused: u64,
    other: u64,
}

impl Flood {
    pub(crate) fn new(keys: VictimKeys, answer_cookies: bool, seed: u64, sockets: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sources = (0..sockets)
            .map(|_| Source {
                next_index: rng.next_u32(),
                sent: vec![(0, [0; 16]); RING],
                cookie: None,
            })
            .collect();
        Flood {
            keys,
            answer_cookies,
            rng,
            sources,
            with_mac2: 0,
            cookie_replies: 0,
            cookies_accepted: 0,
            cookies_refused: 0,
            other: 0,
        }
    }

    /// Takes a cookie reply for source `i`: decrypts it with the mac1 of the message it answers.
    fn take_cookie(&mut self, i: usize, datagram: &[u8]) -> bool {
        let Ok(Message::CookieReply(reply)) = parse(datagram) else {
            return false;
        };
        let src = &mut self.sources[i];
        let index = reply.receiver_index();
        let (sent_index, mac1) = src.sent[index as usize % RING];
        if sent_index != index {
            return false;
        }
        let mut sealed = *reply.encrypted_cookie();
        if xaead_open(&self.keys.cookie_key, reply.nonce(), &mut sealed, &mac1).is_err() {
            return false;
        }
        let mut cookie = [0u8; 16];
        cookie.copy_from_slice(&sealed[..16]);
        src.cookie = Some((cookie, std::time::Instant::now()));
        true
    }
}

impl Producer for Flood {
    fn next(&mut self, socket: usize, buf: &mut [u8]) -> usize {
        let src = &mut self.sources[socket];
        let index = src.next_index;
        src.next_index = index.wrapping_add(1);
        let cookie = src
            .cookie
            .as_ref()
            .filter(|(_, at)| at.elapsed() < COOKIE_USE)
            .map(|(c, _)| *c);
        let mut msg = [0u8; INITIATION_LEN];
        let mac1 = initiation(&mut self.rng, &self.keys, index, cookie.as_ref(), &mut msg);
        src.sent[index as usize % RING] = (index, mac1);
        self.with_mac2 += u64::from(cookie.is_some());
        buf[..INITIATION_LEN].copy_from_slice(&msg);
        INITIATION_LEN
    }

    fn received(&mut self, socket: usize, datagram: &[u8]) {
        if !matches!(parse(datagram), Ok(Message::CookieReply(_))) {
            self.other += 1;
            return;
        }
        self.cookie_replies += 1;
        if !self.answer_cookies {
            return;
        }
        if self.take_cookie(socket, datagram) {
            self.cookies_accepted += 1;
        } else {
            self.cookies_refused += 1;
        }
    }

    fn counters(&self) -> Vec<(String, u64)> {
        vec![
            ("sent_with_mac2".into(), self.with_mac2),
            ("cookie_replies".into(), self.cookie_replies),
            ("cookies_accepted".into(), self.cookies_accepted),
            ("cookies_refused".into(), self.cookies_refused),
            ("other_replies".into(), self.other),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;
    use rwg_proto::cookie::{CookieChecker, MacVerdict};
    use rwg_proto::crypto::PrivateKey;
    use rwg_proto::messages::COOKIE_REPLY_LEN;
    use rwg_proto::noise::StaticIdentity;
    use rwg_proto::Instant;

    /// The flood's messages pass the victim's mac1 check, earn cookie replies under load, and
    /// once the flood has taken the cookie, pass mac2 from that source (and only that source).
    #[test]
    fn initiations_pass_mac1_and_cookies_make_mac2_pass() {
        let victim = StaticIdentity::new(PrivateKey::from_bytes([9; 32]));
        let mut checker = CookieChecker::new(Some(&victim));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut flood = Flood::new(VictimKeys::new(*victim.public_key()), true, 2, 2);
        let src: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let now = Instant::from_nanos(1);
        let mut buf = vec![0u8; 2048];

        let len = flood.next(0, &mut buf);
        assert_eq!(len, INITIATION_LEN);
        assert_eq!(
            checker.verify(now, &mut rng, &buf[..len], src, false),
            MacVerdict::ValidMacAndCookie
        );
        assert_eq!(
            checker.verify(now, &mut rng, &buf[..len], src, true),
            MacVerdict::ValidMacNoCookie
        );
        let index = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        // The reply answers this message, but the flood has sent more since.
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.create_reply(now, &mut rng, &buf[..len], index, src, &mut reply);
        for _ in 0..10 {
            flood.next(0, &mut buf);
        }
        flood.received(0, &reply);
        assert_eq!(flood.counters()[2], ("cookies_accepted".into(), 1));

        let len = flood.next(0, &mut buf);
        assert_eq!(
            checker.verify(now, &mut rng, &buf[..len], src, true),
            MacVerdict::ValidMacAndCookie
        );
        // The cookie is bound to the source's address and port.
        let other: SocketAddr = "10.0.1.3:40000".parse().unwrap();
        assert_eq!(
            checker.verify(now, &mut rng, &buf[..len], other, true),
            MacVerdict::ValidMacNoCookie
        );
        // The other socket has no cookie: no mac2.
        let len = flood.next(1, &mut buf);
        assert_eq!(&buf[132..len], &[0u8; 16]);

        // A reply that answers no message of this source, or was tampered with, is refused.
        let mut forged = reply;
        forged[40] ^= 1;
        flood.received(0, &forged);
        flood.received(1, &reply);
        assert_eq!(flood.counters()[3], ("cookies_refused".into(), 2));
    }

    #[test]
    fn without_answering_cookies_no_mac2_is_ever_sent() {
        let victim = StaticIdentity::new(PrivateKey::from_bytes([9; 32]));
        let mut checker = CookieChecker::new(Some(&victim));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut flood = Flood::new(VictimKeys::new(*victim.public_key()), false, 2, 1);
        let src: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let mut buf = vec![0u8; 2048];
        let len = flood.next(0, &mut buf);
        let index = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.create_reply(
            Instant::from_nanos(1),
            &mut rng,
            &buf[..len],
            index,
            src,
            &mut reply,
        );
        flood.received(0, &reply);
        flood.next(0, &mut buf);
        assert_eq!(&buf[132..148], &[0u8; 16]);
        let c = flood.counters();
        assert_eq!(c[1], ("cookie_replies".into(), 1));
        assert_eq!(c[2], ("cookies_accepted".into(), 0));
    }
}
