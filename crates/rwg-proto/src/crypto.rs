//! Cryptographic primitives of WireGuard (PROTOCOL.md §1) and the key types that hold secrets.
//!
//! - `HASH` = BLAKE2s-256, `MAC` = keyed BLAKE2s with a 16-byte digest, `HMAC` = RFC 2104 over
//!   BLAKE2s, `KDF1..3` as in the whitepaper §5.4.
//! - `AEAD` = ChaCha20-Poly1305: ring with the `ring` feature (the default; its assembly is
//!   several times faster), RustCrypto's `chacha20poly1305` without it. ring always links
//!   `alloc` and builds for few embedded targets, so a core without an allocator uses RustCrypto.
//! - `XAEAD` = XChaCha20-Poly1305 (RustCrypto; cookies only).
//! - `DH` = X25519 (x25519-dalek), all-zero results rejected.
//!
//! The AEAD and X25519 crates were chosen by measurement (see BENCHMARKS.md). Every type that
//! holds a secret zeroizes itself on drop and prints as `<redacted>` in `Debug`.

use core::fmt;

use blake2s_simd::Params;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of keys, hashes and DH outputs.
pub const KEY_LEN: usize = 32;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of a MAC (mac1, mac2, cookie).
pub const MAC_LEN: usize = 16;

/// The AEAD could not authenticate the ciphertext (wrong key, altered data or too short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthError;

/// The X25519 result was all zeros: the peer's public key has low order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowOrderPoint;

macro_rules! secret_bytes {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps raw key bytes.
            pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }
            /// The raw key bytes.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                constant_time_eq(&self.0, &other.0)
            }
        }
        impl Eq for $name {}
    };
}

secret_bytes!(
    /// A 32-byte symmetric secret: chaining key, AEAD key, transport key.
    SymmetricKey
);
secret_bytes!(
    /// An optional preshared key mixed into the handshake; all zeros means "none".
    PresharedKey
);

impl Default for PresharedKey {
    /// No preshared key (all zeros).
    fn default() -> Self {
        PresharedKey::none()
    }
}

impl PresharedKey {
    /// The all-zero key used when no PSK is configured.
    pub const fn none() -> Self {
        PresharedKey([0; KEY_LEN])
    }
    /// Whether this is the all-zero "none" key.
    pub fn is_none(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }
    /// A fresh random key (what `wg genpsk` prints).
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut k = [0; KEY_LEN];
        rng.fill_bytes(&mut k);
        PresharedKey(k)
    }
}

/// An X25519 public key. Not secret; `Debug` prints the first bytes in hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }
    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// An X25519 private key (static or ephemeral). Clamped on use; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Wraps raw key bytes (clamping happens inside X25519, so any 32 bytes are valid).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(clamp(bytes))
    }
    /// A fresh random key: DH-Generate() of the whitepaper.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut k = [0; KEY_LEN];
        rng.fill_bytes(&mut k);
        let key = PrivateKey::from_bytes(k);
        k.zeroize();
        key
    }
    /// The raw (clamped) key bytes, as `wg` prints them.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    /// Whether the key is all zeros (which the configuration protocol uses to mean "unset").
    pub fn is_zero(&self) -> bool {
        constant_time_eq(&self.0, &[0; KEY_LEN])
    }
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
    /// X25519(self, peer). Fails if the result is all zeros (a low-order peer key).
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Result<SymmetricKey, LowOrderPoint> {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(LowOrderPoint);
        }
        Ok(SymmetricKey(*shared.as_bytes()))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}
impl Eq for PrivateKey {}

fn clamp(mut k: [u8; KEY_LEN]) -> [u8; KEY_LEN] {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

/// Compares two byte strings without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    core::hint::black_box(diff) == 0
}

/// HASH(parts\[0\] ‖ parts\[1\] ‖ …): unkeyed BLAKE2s-256.
pub fn hash(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut state = Params::new().hash_length(KEY_LEN).to_state();
    for p in parts {
        state.update(p);
    }
    let mut out = [0; KEY_LEN];
    out.copy_from_slice(state.finalize().as_bytes());
    out
}

/// MAC(key, parts…): keyed BLAKE2s with a 16-byte digest in the parameter block.
/// `key` is 32 bytes (mac1 key, cookie secret) or 16 bytes (a cookie used as the mac2 key).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut state = Params::new().hash_length(MAC_LEN).key(key).to_state();
    for p in parts {
        state.update(p);
    }
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(state.finalize().as_bytes());
    out
}

const BLAKE2S_BLOCK: usize = 64;

/// HMAC-BLAKE2s-256 (RFC 2104), as used by the KDF.
pub fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut ipad = [0x36u8; BLAKE2S_BLOCK];
    let mut opad = [0x5cu8; BLAKE2S_BLOCK];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Params::new().hash_length(KEY_LEN).to_state();
    inner.update(&ipad);
    for p in parts {
        inner.update(p);
    }
    let inner_hash = inner.finalize();
    let mut outer = Params::new().hash_length(KEY_LEN).to_state();
    outer.update(&opad);
    outer.update(inner_hash.as_bytes());
    let mut out = [0; KEY_LEN];
    out.copy_from_slice(outer.finalize().as_bytes());
    ipad.zeroize();
    opad.zeroize();
    out
}

/// KDF_n(C, input) for n = 1, 2, 3: returns the first `N` outputs T1..TN.
pub fn kdf<const N: usize>(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> [SymmetricKey; N] {
    debug_assert!((1..=3).contains(&N));
    let mut prk = hmac(chaining_key, &[input]);
    let mut prev = [0u8; KEY_LEN];
    let out = core::array::from_fn(|i| {
        let counter = [i as u8 + 1];
        let t = if i == 0 {
            hmac(&prk, &[&counter])
        } else {
            hmac(&prk, &[&prev, &counter])
        };
        prev = t;
        SymmetricKey(t)
    });
    prk.zeroize();
    prev.zeroize();
    out
}

/// The 96-bit AEAD nonce: 4 zero bytes, then the counter little-endian (§1).
fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[cfg(feature = "ring")]
mod aead_backend {
    use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

    use super::{nonce_bytes, AuthError, SymmetricKey, TAG_LEN};

    fn key(key: &SymmetricKey) -> LessSafeKey {
        // The key schedule of ChaCha20 is a copy of the 32 bytes, so building the ring key per
        // call costs nanoseconds; in exchange ring never holds a copy that outlives our
        // zeroizing one.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("32-byte ChaCha20 key"))
    }

    pub(super) fn seal(
        k: &SymmetricKey,
        counter: u64,
        plain: &mut [u8],
        ad: &[u8],
    ) -> [u8; TAG_LEN] {
        let tag = key(k)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(counter)),
                Aad::from(ad),
                plain,
            )
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(super) fn open(
        k: &SymmetricKey,
        counter: u64,
        cipher: &mut [u8],
        tag: [u8; TAG_LEN],
        ad: &[u8],
    ) -> Result<(), AuthError> {
        key(k)
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(counter)),
                Aad::from(ad),
                Tag::from(tag),
                cipher,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AuthError)
    }
}

#[cfg(not(feature = "ring"))]
mod aead_backend {
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};

    use super::{nonce_bytes, AuthError, SymmetricKey, TAG_LEN};

    pub(super) fn seal(
        k: &SymmetricKey,
        counter: u64,
        plain: &mut [u8],
        ad: &[u8],
    ) -> [u8; TAG_LEN] {
        let cipher = ChaCha20Poly1305::new((&k.0).into());
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce_bytes(counter)), ad, plain)
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        out
    }

    pub(super) fn open(
        k: &SymmetricKey,
        counter: u64,
        cipher_text: &mut [u8],
        tag: [u8; TAG_LEN],
        ad: &[u8],
    ) -> Result<(), AuthError> {
        let cipher = ChaCha20Poly1305::new((&k.0).into());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce_bytes(counter)),
                ad,
                cipher_text,
                (&tag).into(),
            )
            .map_err(|_| AuthError)
    }
}

/// AEAD seal in place: encrypts `buf[..len - 16]` and writes the tag into the last 16 bytes.
///
/// # Panics
/// If `buf` is shorter than the tag: a caller bug, never reachable from network input.
pub fn aead_seal(key: &SymmetricKey, counter: u64, buf: &mut [u8], ad: &[u8]) {
    let split = buf
        .len()
        .checked_sub(TAG_LEN)
        .expect("buffer holds the tag");
    let (plain, tag_out) = buf.split_at_mut(split);
    tag_out.copy_from_slice(&aead_backend::seal(key, counter, plain, ad));
}

/// AEAD open in place: `buf` is ciphertext ‖ tag; on success `buf[..len - 16]` holds the plaintext.
pub fn aead_open(
    key: &SymmetricKey,
    counter: u64,
    buf: &mut [u8],
    ad: &[u8],
) -> Result<(), AuthError> {
    let split = buf.len().checked_sub(TAG_LEN).ok_or(AuthError)?;
    let (cipher, tag) = buf.split_at_mut(split);
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AuthError)?;
    aead_backend::open(key, counter, cipher, tag, ad)
}

/// XAEAD seal in place (cookie replies): `buf[..len - 16]` is encrypted, tag in the last 16 bytes.
pub fn xaead_seal(key: &[u8; KEY_LEN], nonce: &[u8; 24], buf: &mut [u8], ad: &[u8]) {
    let split = buf
        .len()
        .checked_sub(TAG_LEN)
        .expect("buffer holds the tag");
    let (plain, tag_out) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), ad, plain)
        .expect("XChaCha20-Poly1305 seals short buffers");
    tag_out.copy_from_slice(&tag);
}

/// XAEAD open in place.
pub fn xaead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 24],
    buf: &mut [u8],
    ad: &[u8],
) -> Result<(), AuthError> {
    let split = buf.len().checked_sub(TAG_LEN).ok_or(AuthError)?;
    let (cipher_text, tag) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, cipher_text, (&*tag).into())
        .map_err(|_| AuthError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let v = hex::decode(s).expect("hex");
        v.try_into().expect("length")
    }

    #[test]
    fn construction_and_identifier_hashes() {
        // PROTOCOL.md §1.
        let c0 = hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]);
        assert_eq!(
            c0,
            unhex::<32>("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        );
        let h0 = hash(&[&c0, b"WireGuard v1 zx2c4 Jason@zx2c4.com"]);
        assert_eq!(
            h0,
            unhex::<32>("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
        );
    }

    #[test]
    fn kdf_vectors_from_wireguard_go() {
        // PROTOCOL.md §9: KDF3(key "test-key", input "test-input").
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(b"test-key");
        // wireguard-go's test passes the key as a byte string to HMAC; HMAC zero-pads keys
        // shorter than the block, so a 32-byte zero-padded key gives the same result.
        let [t1, t2, t3] = kdf::<3>(&key, b"test-input");
        assert_eq!(
            t1.as_bytes(),
            &unhex::<32>("6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633")
        );
        assert_eq!(
            t2.as_bytes(),
            &unhex::<32>("df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a")
        );
        assert_eq!(
            t3.as_bytes(),
            &unhex::<32>("fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24")
        );
        let [u1, u2] = kdf::<2>(&key, b"test-input");
        assert_eq!(u1, t1);
        assert_eq!(u2, t2);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = SymmetricKey::from_bytes([7; 32]);
        let mut buf = [0u8; 64 + TAG_LEN];
        buf[..64].copy_from_slice(&[0xab; 64]);
        aead_seal(&key, 42, &mut buf, b"ad");
        assert_ne!(&buf[..64], &[0xab; 64][..]);
        let mut copy = buf;
        aead_open(&key, 42, &mut copy, b"ad").expect("authentic");
        assert_eq!(&copy[..64], &[0xab; 64][..]);
        let mut wrong_counter = buf;
        assert_eq!(
            aead_open(&key, 43, &mut wrong_counter, b"ad"),
            Err(AuthError)
        );
        let mut flipped = buf;
        flipped[3] ^= 1;
        assert_eq!(aead_open(&key, 42, &mut flipped, b"ad"), Err(AuthError));
        assert_eq!(aead_open(&key, 42, &mut [0u8; 15], b""), Err(AuthError));
    }

    #[test]
    fn xaead_round_trip() {
        let key = [9u8; 32];
        let nonce = [1u8; 24];
        let mut buf = [5u8; 16 + TAG_LEN];
        xaead_seal(&key, &nonce, &mut buf, b"mac1");
        let mut ok = buf;
        xaead_open(&key, &nonce, &mut ok, b"mac1").expect("authentic");
        assert_eq!(&ok[..16], &[5u8; 16]);
        assert_eq!(xaead_open(&key, &nonce, &mut buf, b"other"), Err(AuthError));
    }

    #[test]
    fn dh_agrees_and_rejects_low_order() {
        let a = PrivateKey::from_bytes([1; 32]);
        let b = PrivateKey::from_bytes([2; 32]);
        let ab = a.diffie_hellman(&b.public_key()).expect("contributory");
        let ba = b.diffie_hellman(&a.public_key()).expect("contributory");
        assert_eq!(ab, ba);
        // The identity point and a point of order 8 both give an all-zero result.
        assert_eq!(
            a.diffie_hellman(&PublicKey::from_bytes([0; 32])),
            Err(LowOrderPoint)
        );
        let mut order8 = [0u8; 32];
        order8.copy_from_slice(&unhex::<32>(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ));
        assert_eq!(
            a.diffie_hellman(&PublicKey::from_bytes(order8)),
            Err(LowOrderPoint)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let k = PrivateKey::from_bytes([0x41; 32]);
        let s = alloc::format!(
            "{k:?} {:?} {:?}",
            SymmetricKey::from_bytes([0x41; 32]),
            PresharedKey::from_bytes([0x41; 32])
        );
        assert!(!s.contains("41"), "{s}");
        assert!(s.contains("redacted"));
    }
}
