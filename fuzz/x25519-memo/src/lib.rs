//! Fuzz builds only: stands in for `x25519-dalek` (by `[patch.crates-io]` in `fuzz/Cargo.toml`)
//! and remembers every X25519 result it computed.
//!
//! Why: a fuzz target builds its devices afresh for every input (exact replay) and runs the same
//! handshakes every time — the same fixed static keys, ephemeral keys from the same seeded RNG.
//! Each X25519 costs about as much as all the rest of an input together, so without this the
//! device targets ran at 40–550 inputs a second. The results are exact: a miss computes with
//! curve25519-dalek, the library x25519-dalek itself calls, the same way (clamped scalar, Edwards
//! base-point table for public keys, Montgomery ladder for DH); a hit returns what a miss
//! computed before. Only X25519 with inputs never seen before (keys the fuzzer made up) costs
//! anything. The memo is bounded and is a pure function cache, so inputs replay identically.
//!
//! Only the part of x25519-dalek 2's API that rwg-proto calls is here; if rwg-proto starts to
//! use more, the fuzz build fails to compile rather than silently differing. The known-answer
//! tests below (RFC 7748 §5.2 and §6.1) check the arithmetic: `cargo test -p x25519-dalek` in
//! `fuzz/`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;

/// Results kept at most; the memo starts over beyond this (a few MB).
const MEMO_CAPACITY: usize = 1 << 15;

#[derive(Default)]
struct Memo {
    public: HashMap<[u8; 32], [u8; 32]>,
    shared: HashMap<([u8; 32], [u8; 32]), [u8; 32]>,
}

fn memo() -> std::sync::MutexGuard<'static, Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    let m = MEMO.get_or_init(Mutex::default);
    // A panic elsewhere (a finding) must not turn every later X25519 into a second panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remember<K: Eq + std::hash::Hash>(
    map: &mut HashMap<K, [u8; 32]>,
    key: K,
    compute: impl FnOnce() -> [u8; 32],
) -> [u8; 32] {
    if let Some(v) = map.get(&key) {
        return *v;
    }
    if map.len() >= MEMO_CAPACITY {
        map.clear();
    }
    let v = compute();
    map.insert(key, v);
    v
}

/// An X25519 public key (a Montgomery u-coordinate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
}

impl PublicKey {
    /// The key's bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The key's bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A secret scalar, stored unclamped (clamped when used), as in x25519-dalek.
#[derive(Clone)]
pub struct StaticSecret([u8; 32]);

impl std::fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

impl From<[u8; 32]> for StaticSecret {
    fn from(bytes: [u8; 32]) -> StaticSecret {
        StaticSecret(bytes)
    }
}

impl<'a> From<&'a StaticSecret> for PublicKey {
    fn from(secret: &'a StaticSecret) -> PublicKey {
        let s = secret.0;
        let mut memo = memo();
        PublicKey(remember(&mut memo.public, s, || {
            EdwardsPoint::mul_base_clamped(s).to_montgomery().to_bytes()
        }))
    }
}

impl StaticSecret {
    /// X25519(self, their_public).
    pub fn diffie_hellman(&self, their_public: &PublicKey) -> SharedSecret {
        let (s, p) = (self.0, their_public.0);
        let mut memo = memo();
        SharedSecret(remember(&mut memo.shared, (s, p), || {
            MontgomeryPoint(p).mul_clamped(s).to_bytes()
        }))
    }
    /// The secret's bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The secret's bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The result of X25519.
pub struct SharedSecret([u8; 32]);

impl SharedSecret {
    /// The result's bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The result's bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// False if the result is all zeros (the peer's key has low order), as in x25519-dalek.
    pub fn was_contributory(&self) -> bool {
        self.0 != [0u8; 32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    /// RFC 7748 §5.2, the two single-step vectors; each twice (computed, then remembered).
    #[test]
    fn rfc7748_scalar_mult() {
        let vectors = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for _ in 0..2 {
            for (k, u, out) in vectors {
                let shared =
                    StaticSecret::from(unhex(k)).diffie_hellman(&PublicKey::from(unhex(u)));
                assert_eq!(shared.to_bytes(), unhex(out));
                assert!(shared.was_contributory());
            }
        }
    }

    /// RFC 7748 §6.1: both public keys and the shared secret, both ways.
    #[test]
    fn rfc7748_key_agreement() {
        let a = StaticSecret::from(unhex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let b = StaticSecret::from(unhex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        assert_eq!(
            pa.to_bytes(),
            unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            pb.to_bytes(),
            unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(a.diffie_hellman(&pb).to_bytes(), shared);
        assert_eq!(b.diffie_hellman(&pa).to_bytes(), shared);
    }

    /// The memo tells apart results for the same public key and different secrets (and the
    /// other way round).
    #[test]
    fn memo_keys_on_both_inputs() {
        let a = StaticSecret::from([1u8; 32]);
        let b = StaticSecret::from([2u8; 32]);
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        assert_ne!(pa, pb);
        let ab = a.diffie_hellman(&pb).to_bytes();
        assert_eq!(ab, b.diffie_hellman(&pa).to_bytes());
        assert_ne!(ab, b.diffie_hellman(&pb).to_bytes());
        assert_ne!(ab, a.diffie_hellman(&pa).to_bytes());
    }

    /// A low-order point gives all zeros, which is not contributory.
    #[test]
    fn low_order_is_not_contributory() {
        let a = StaticSecret::from([7u8; 32]);
        assert!(!a
            .diffie_hellman(&PublicKey::from([0u8; 32]))
            .was_contributory());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(!a.diffie_hellman(&PublicKey::from(one)).was_contributory());
    }
}
