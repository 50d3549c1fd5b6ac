//! Junk for a WireGuard port: every message type with wrong lengths, unknown indices and bad
//! macs, truncated and oversized datagrams (up to 65 507 bytes), unknown types, empty and
//! random datagrams. Where a field is checked before another (mac1 before anything else in a
//! handshake message), the earlier checks pass, so that the later one is what gets exercised.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rwg_proto::crypto::mac;
use rwg_proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN,
};

use crate::blast::{Producer, MAX_DATAGRAM};
use crate::flood::VictimKeys;

/// Longest "normal-sized" junk: an underlay MTU.
const NORMAL_MAX: usize = 1500;

/// What a junk datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Type 1 of any length but 148.
    InitiationWrongLength,
    /// Type 1, 148 bytes, mac1 wrong.
    InitiationBadMac1,
    /// Type 1, 148 bytes, correct mac1, a reserved byte of the type word set.
    InitiationReservedByte,
    /// Type 2, 92 bytes, correct mac1, an index nobody handed out.
    ResponseUnknownIndex,
    /// Type 2 of any length but 92.
    ResponseWrongLength,
    /// Type 2, 92 bytes, mac1 wrong.
    ResponseBadMac1,
    /// Type 3, 64 bytes, an index nobody handed out.
    CookieUnknownIndex,
    /// Type 3 of any length but 64.
    CookieWrongLength,
    /// Type 4 with a random index, 32 to 1500 bytes.
    TransportUnknownIndex,
    /// Type 4 with an index the victim uses (given on the command line) and a bad tag.
    TransportKnownIndexBadTag,
    /// Type 4 shorter than a header and tag (4 to 31 bytes).
    TransportTruncated,
    /// Type 0 or 5 to 255, any length.
    UnknownType,
    /// A datagram of zero bytes.
    Empty,
    /// Random bytes of random length (1 to 1500).
    Random,
    /// 1501 to 65 507 bytes (a quarter of them exactly the largest), type word 1 to 4.
    Oversized,
}

impl Kind {
    const NORMAL: [Kind; 14] = [
        Kind::InitiationWrongLength,
        Kind::InitiationBadMac1,
        Kind::InitiationReservedByte,
        Kind::ResponseUnknownIndex,
        Kind::ResponseWrongLength,
        Kind::ResponseBadMac1,
        Kind::CookieUnknownIndex,
        Kind::CookieWrongLength,
        Kind::TransportUnknownIndex,
        Kind::TransportKnownIndexBadTag,
        Kind::TransportTruncated,
        Kind::UnknownType,
        Kind::Empty,
        Kind::Random,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::InitiationWrongLength => "initiation_wrong_length",
            Kind::InitiationBadMac1 => "initiation_bad_mac1",
            Kind::InitiationReservedByte => "initiation_reserved_byte",
            Kind::ResponseUnknownIndex => "response_unknown_index",
            Kind::ResponseWrongLength => "response_wrong_length",
            Kind::ResponseBadMac1 => "response_bad_mac1",
            Kind::CookieUnknownIndex => "cookie_unknown_index",
            Kind::CookieWrongLength => "cookie_wrong_length",
            Kind::TransportUnknownIndex => "transport_unknown_index",
            Kind::TransportKnownIndexBadTag => "transport_known_index_bad_tag",
            Kind::TransportTruncated => "transport_truncated",
            Kind::UnknownType => "unknown_type",
            Kind::Empty => "empty",
            Kind::Random => "random",
            Kind::Oversized => "oversized",
        }
    }
}

/// One thread's junk.
pub(crate) struct Junk {
    keys: VictimKeys,
    known_indices: Vec<u32>,
    max_size: usize,
    oversized_every: u64,
    rng: ChaCha8Rng,
    made: u64,
    counts: [u64; 15],
}

impl Junk {
    /// `oversized_every`: one datagram in that many is oversized (0: none).
    pub(crate) fn new(
        keys: VictimKeys,
        known_indices: Vec<u32>,
        max_size: usize,
        oversized_every: u64,
        seed: u64,
    ) -> Self {
        Junk {
            keys,
            known_indices,
            max_size: max_size.clamp(NORMAL_MAX + 1, MAX_DATAGRAM),
            oversized_every,
            rng: ChaCha8Rng::seed_from_u64(seed),
            made: 0,
            counts: [0; 15],
        }
    }

    fn pick(&mut self) -> Kind {
        self.made += 1;
        if self.oversized_every > 0 && self.made % self.oversized_every == 0 {
            return Kind::Oversized;
        }
        loop {
            let k = Kind::NORMAL[self.rng.next_u32() as usize % Kind::NORMAL.len()];
            if k != Kind::TransportKnownIndexBadTag || !self.known_indices.is_empty() {
                return k;
            }
        }
    }

    /// A random length in `lo..=hi` other than `not`.
    fn len_between(&mut self, lo: usize, hi: usize, not: usize) -> usize {
        loop {
            let l = lo + self.rng.next_u32() as usize % (hi - lo + 1);
            if l != not {
                return l;
            }
        }
    }

    /// Writes one datagram of kind `kind` into `buf`; returns its length.
    pub(crate) fn make(&mut self, kind: Kind, buf: &mut [u8]) -> usize {
        let ty = |b: &mut [u8], t: u8| {
            b[..4].copy_from_slice(&[t, 0, 0, 0]);
        };
        let len = match kind {
            Kind::InitiationWrongLength => self.len_between(4, NORMAL_MAX, INITIATION_LEN),
            Kind::InitiationBadMac1 | Kind::InitiationReservedByte => INITIATION_LEN,
            Kind::ResponseUnknownIndex | Kind::ResponseBadMac1 => RESPONSE_LEN,
            Kind::ResponseWrongLength => self.len_between(4, NORMAL_MAX, RESPONSE_LEN),
            Kind::CookieUnknownIndex => COOKIE_REPLY_LEN,
            Kind::CookieWrongLength => self.len_between(4, NORMAL_MAX, COOKIE_REPLY_LEN),
            Kind::TransportUnknownIndex | Kind::TransportKnownIndexBadTag => {
                self.len_between(TRANSPORT_MIN_LEN, NORMAL_MAX, 0)
            }
            Kind::TransportTruncated => self.len_between(4, TRANSPORT_MIN_LEN - 1, 0),
            Kind::UnknownType | Kind::Random => self.len_between(1, NORMAL_MAX, 0),
            Kind::Empty => 0,
            Kind::Oversized => {
                if self.rng.next_u32() % 4 == 0 {
                    self.max_size
                } else {
                    self.len_between(NORMAL_MAX + 1, self.max_size, 0)
                }
            }
        };
        let b = &mut buf[..len];
        self.rng.fill_bytes(b);
        match kind {
            Kind::InitiationWrongLength => ty(b, 1),
            Kind::InitiationBadMac1 => {
                ty(b, 1);
                // A random mac1 is right once in 2^128; make sure.
                let good = mac(self.keys.mac1_key(), &[&b[..116]]);
                if b[116..132] == good {
                    b[116] ^= 1;
                }
            }
            Kind::InitiationReservedByte => {
                ty(b, 1);
                b[1 + self.rng.next_u32() as usize % 3] |= 1;
                let m = mac(self.keys.mac1_key(), &[&b[..116]]);
                b[116..132].copy_from_slice(&m);
            }
            Kind::ResponseUnknownIndex => {
                ty(b, 2);
                let m = mac(self.keys.mac1_key(), &[&b[..60]]);
                b[60..76].copy_from_slice(&m);
                b[76..92].fill(0);
            }
            Kind::ResponseWrongLength => ty(b, 2),
            Kind::ResponseBadMac1 => {
                ty(b, 2);
                let good = mac(self.keys.mac1_key(), &[&b[..60]]);
                if b[60..76] == good {
                    b[60] ^= 1;
                }
            }
            Kind::CookieUnknownIndex | Kind::CookieWrongLength => ty(b, 3),
            Kind::TransportUnknownIndex | Kind::TransportTruncated => ty(b, 4),
            Kind::TransportKnownIndexBadTag => {
                ty(b, 4);
                let i = self.known_indices[self.rng.next_u32() as usize % self.known_indices.len()];
                b[4..8].copy_from_slice(&i.to_le_bytes());
                // A counter far ahead: if the tag were not checked first, it would move the window.
                let counter = (1u64 << 40) + u64::from(self.rng.next_u32());
                b[8..TRANSPORT_HEADER_LEN].copy_from_slice(&counter.to_le_bytes());
            }
            Kind::UnknownType => {
                let t = loop {
                    let t = self.rng.next_u32() as u8;
                    if t == 0 || t > 4 {
                        break t;
                    }
                };
                b[0] = t;
            }
            Kind::Empty | Kind::Random => {}
            Kind::Oversized => ty(b, 1 + (self.rng.next_u32() % 4) as u8),
        }
        len
    }
}

impl Producer for Junk {
    fn next(&mut self, _socket: usize, buf: &mut [u8]) -> usize {
        let kind = self.pick();
        if let Some(i) = Kind::NORMAL
            .iter()
            .chain([Kind::Oversized].iter())
            .position(|k| *k == kind)
        {
            self.counts[i] += 1;
        }
        self.make(kind, buf)
    }

    fn received(&mut self, _socket: usize, _datagram: &[u8]) {}

    fn counters(&self) -> Vec<(String, u64)> {
        Kind::NORMAL
            .iter()
            .chain([Kind::Oversized].iter())
            .zip(self.counts)
            .map(|(k, n)| (format!("kind_{}", k.name()), n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;
    use rwg_proto::cookie::{CookieChecker, MacVerdict};
    use rwg_proto::crypto::PrivateKey;
    use rwg_proto::messages::{parse, Message, MessageError};
    use rwg_proto::noise::StaticIdentity;
    use rwg_proto::Instant;

    /// Each kind is what it says, checked with the core's own parser and mac checker.
    #[test]
    fn each_kind_is_what_its_name_says() {
        let victim = StaticIdentity::new(PrivateKey::from_bytes([5; 32]));
        let mut checker = CookieChecker::new(Some(&victim));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let src: SocketAddr = "10.0.1.2:1".parse().unwrap();
        let now = Instant::from_nanos(1);
        let mut junk = Junk::new(
            VictimKeys::new(*victim.public_key()),
            vec![0x1234_5678],
            MAX_DATAGRAM,
            0,
            7,
        );
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for round in 0..200 {
            for kind in Kind::NORMAL.iter().copied().chain([Kind::Oversized]) {
                let len = junk.make(kind, &mut buf);
                let d = &buf[..len];
                let parsed = parse(d);
                let what = format!("{kind:?} round {round} len {len}");
                match kind {
                    Kind::InitiationWrongLength
                    | Kind::ResponseWrongLength
                    | Kind::CookieWrongLength
                    | Kind::TransportTruncated => {
                        assert_eq!(parsed.err(), Some(MessageError::BadLength), "{what}")
                    }
                    Kind::InitiationBadMac1 => {
                        assert!(matches!(parsed, Ok(Message::Initiation(_))), "{what}");
                        assert_eq!(
                            checker.verify(now, &mut rng, d, src, false),
                            MacVerdict::InvalidMac
                        );
                    }
                    Kind::ResponseBadMac1 => {
                        assert!(matches!(parsed, Ok(Message::Response(_))), "{what}");
                        assert_eq!(
                            checker.verify(now, &mut rng, d, src, false),
                            MacVerdict::InvalidMac
                        );
                    }
                    Kind::InitiationReservedByte => {
                        assert_eq!(parsed.err(), Some(MessageError::UnknownType), "{what}");
                        // Everything else about it is right: mac1 passes.
                        assert_eq!(
                            checker.verify(now, &mut rng, d, src, false),
                            MacVerdict::ValidMacAndCookie
                        );
                    }
                    Kind::ResponseUnknownIndex => {
                        assert!(matches!(parsed, Ok(Message::Response(_))), "{what}");
                        assert_eq!(
                            checker.verify(now, &mut rng, d, src, false),
                            MacVerdict::ValidMacAndCookie
                        );
                    }
                    Kind::CookieUnknownIndex => {
                        assert!(matches!(parsed, Ok(Message::CookieReply(_))), "{what}")
                    }
                    Kind::TransportUnknownIndex => {
                        assert!(matches!(parsed, Ok(Message::Transport(_))), "{what}");
                        assert!((32..=1500).contains(&len), "{what}");
                    }
                    Kind::TransportKnownIndexBadTag => {
                        let Ok(Message::Transport(t)) = parsed else {
                            panic!("{what}")
                        };
                        assert_eq!(t.receiver_index(), 0x1234_5678);
                    }
                    Kind::UnknownType => {
                        assert_eq!(parsed.err(), Some(MessageError::UnknownType), "{what}")
                    }
                    Kind::Empty => assert_eq!(len, 0),
                    Kind::Random => assert!((1..=1500).contains(&len), "{what}"),
                    Kind::Oversized => {
                        assert!((1501..=MAX_DATAGRAM).contains(&len), "{what}");
                        // Too long for every handshake type; a transport message of that
                        // length parses and is then refused for its index or tag.
                        assert!(
                            parsed.is_err() || matches!(parsed, Ok(Message::Transport(_))),
                            "{what}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_mix_has_every_kind_and_the_oversized_share_asked_for() {
        let victim = StaticIdentity::new(PrivateKey::from_bytes([5; 32]));
        let mut junk = Junk::new(VictimKeys::new(*victim.public_key()), vec![], 65_507, 16, 1);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut largest = 0;
        for _ in 0..16_000 {
            largest = largest.max(junk.next(0, &mut buf));
        }
        let counts: std::collections::BTreeMap<String, u64> = junk.counters().into_iter().collect();
        assert_eq!(counts["kind_oversized"], 1000);
        assert_eq!(largest, 65_507);
        // Without a known index that kind is never made; every other kind is.
        assert_eq!(counts["kind_transport_known_index_bad_tag"], 0);
        for (k, n) in &counts {
            if k != "kind_transport_known_index_bad_tag" {
                assert!(*n > 500, "{k}: {n}");
            }
        }
    }
}
