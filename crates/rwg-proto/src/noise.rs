//! The Noise_IKpsk2 handshake of WireGuard (PROTOCOL.md §3; whitepaper §5.4).
//!
//! Four verbs, named after what they do to a message: [`create_initiation`],
//! [`consume_initiation`] (in two steps, because the responder learns which peer is talking
//! only after decrypting the static key), [`create_response`], [`consume_response`]. Each
//! returns the state the next step needs, so a state that no longer holds cannot be reached.
//! mac1/mac2 are not written here: see [`crate::cookie`].

use core::fmt;
use core::time::Duration;

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{
    aead_open, aead_seal, hash, kdf, LowOrderPoint, PresharedKey, PrivateKey, PublicKey,
    SymmetricKey, KEY_LEN, TAG_LEN,
};
use crate::messages::{
    field, write_type, Initiation, Response, INITIATION_LEN, RESPONSE_LEN, TYPE_INITIATION,
    TYPE_RESPONSE,
};

/// The protocol name hashed into the initial chaining key.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// The prologue.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the mac1 key.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the cookie encryption key.
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// C0 = HASH(CONSTRUCTION) (checked by a test against [`hash`]).
const INITIAL_CHAIN_KEY: [u8; 32] = [
    0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25, 0xd2, 0xd0,
    0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98, 0x8b, 0x78, 0xcd, 0x36,
];
/// H0 = HASH(C0 ‖ IDENTIFIER).
const INITIAL_HASH: [u8; 32] = [
    0x22, 0x11, 0xb3, 0x61, 0x08, 0x1a, 0xc5, 0x66, 0x69, 0x12, 0x43, 0xdb, 0x45, 0x8a, 0xd5, 0x32,
    0x2d, 0x9c, 0x6c, 0x66, 0x22, 0x93, 0xe8, 0xb7, 0x0e, 0xe1, 0x9c, 0x65, 0xba, 0x07, 0x9e, 0xf3,
];

/// Why a handshake message was refused. In every case the message is dropped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// An AEAD inside the message did not authenticate.
    Decrypt,
    /// A DH result was all zeros (low-order public key).
    LowOrder,
    /// The static key in an initiation belongs to no configured peer.
    UnknownPeer,
}

impl From<LowOrderPoint> for HandshakeError {
    fn from(_: LowOrderPoint) -> Self {
        HandshakeError::LowOrder
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Decrypt => "handshake message did not authenticate",
            HandshakeError::LowOrder => "low-order public key",
            HandshakeError::UnknownPeer => "initiation from an unknown public key",
        })
    }
}

/// A TAI64N timestamp (12 bytes, big-endian), compared bytewise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Debug)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// The timestamp for `unix` (time since the Unix epoch). Nanoseconds are rounded down to a
    /// multiple of 2^24, as both reference implementations do, so the timestamp does not reveal
    /// the precise clock.
    pub fn from_unix(unix: Duration) -> Self {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(
            &(0x4000_0000_0000_000a_u64.wrapping_add(unix.as_secs())).to_be_bytes(),
        );
        out[8..].copy_from_slice(&(unix.subsec_nanos() & !0xff_ffff).to_be_bytes());
        Tai64N(out)
    }

    /// The smallest timestamp later than `self` at the same (2^24 ns) granularity.
    pub fn next(&self) -> Self {
        let secs = u64::from_be_bytes(self.0[..8].try_into().unwrap_or([0; 8]));
        let nanos = u32::from_be_bytes(self.0[8..].try_into().unwrap_or([0; 4]));
        let (secs, nanos) = match nanos.checked_add(1 << 24) {
            Some(n) if n < 1_000_000_000 => (secs, n),
            _ => (secs.wrapping_add(1), 0),
        };
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&secs.to_be_bytes());
        out[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64N(out)
    }
}

/// Our static identity: the private key and what is derived from the public key once.
#[derive(Clone)]
pub struct StaticIdentity {
    private: PrivateKey,
    public: PublicKey,
    /// HASH(LABEL_MAC1 ‖ our public key): checks mac1 of messages sent to us.
    pub(crate) mac1_key: [u8; 32],
    /// HASH(LABEL_COOKIE ‖ our public key): encrypts the cookie replies we send.
    pub(crate) cookie_key: [u8; 32],
}

impl StaticIdentity {
    /// Derives the public key and the mac1/cookie keys.
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        StaticIdentity {
            mac1_key: hash(&[LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, public.as_bytes()]),
            private,
            public,
        }
    }
    /// Our public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    /// Our private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }
}

impl fmt::Debug for StaticIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The static-static DH of a peer, computed on first use and cached.
#[derive(Clone)]
enum StaticStatic {
    /// Not computed since our key or theirs last changed.
    Unknown,
    /// DH(our static, their static).
    Known(SymmetricKey),
    /// All zeros (a low-order public key) or no private key: no handshake is possible.
    Impossible,
}

/// What we know of a peer's static key.
///
/// The static-static DH is computed the first time a handshake needs it, not when the peer is
/// configured: a `wg setconf` of 100 000 peers then costs no X25519 at all, and a private key
/// change only forgets the cached values (PROTOCOL.md §1 asks for it to be computed once per
/// key pair, which this still does).
#[derive(Clone)]
pub struct RemoteStatic {
    public: PublicKey,
    static_static: StaticStatic,
    psk: PresharedKey,
}

impl RemoteStatic {
    /// A peer's static key and preshared key.
    pub fn new(public: PublicKey, psk: PresharedKey) -> Self {
        RemoteStatic {
            public,
            static_static: StaticStatic::Unknown,
            psk,
        }
    }
    /// Forgets the static-static DH after our private key changed.
    pub fn forget_static_static(&mut self) {
        self.static_static = StaticStatic::Unknown;
    }
    /// DH(our static, their static), computing it on first use. `None` if it is all zeros (a
    /// low-order public key: that peer can never handshake).
    pub fn static_static(&mut self, local: &StaticIdentity) -> Option<&SymmetricKey> {
        if let StaticStatic::Unknown = self.static_static {
            self.static_static = match local.private.diffie_hellman(&self.public) {
                Ok(k) => StaticStatic::Known(k),
                Err(_) => StaticStatic::Impossible,
            };
        }
        match &self.static_static {
            StaticStatic::Known(k) => Some(k),
            StaticStatic::Unknown | StaticStatic::Impossible => None,
        }
    }
    /// Replaces the preshared key.
    pub fn set_psk(&mut self, psk: PresharedKey) {
        self.psk = psk;
    }
    /// The preshared key.
    pub fn psk(&self) -> &PresharedKey {
        &self.psk
    }
    /// The peer's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    /// HASH(LABEL_MAC1 ‖ their public key): the key of mac1 on messages we send them.
    pub fn mac1_key(&self) -> [u8; 32] {
        hash(&[LABEL_MAC1, self.public.as_bytes()])
    }
    /// HASH(LABEL_COOKIE ‖ their public key): decrypts the cookie replies they send us.
    pub fn cookie_key(&self) -> [u8; 32] {
        hash(&[LABEL_COOKIE, self.public.as_bytes()])
    }
}

impl fmt::Debug for RemoteStatic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStatic")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The running hash H of the handshake transcript; zeroized like the keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct TranscriptHash([u8; 32]);

impl TranscriptHash {
    fn mix(&mut self, data: &[u8]) {
        self.0 = hash(&[&self.0, data]);
    }
}

/// Symmetric state of a handshake in progress: chaining key C and transcript hash H.
#[derive(Clone, ZeroizeOnDrop)]
struct SymmetricState {
    chaining_key: SymmetricKey,
    hash: TranscriptHash,
}

impl SymmetricState {
    fn start(responder_static: &PublicKey) -> Self {
        let mut hash = TranscriptHash(INITIAL_HASH);
        hash.mix(responder_static.as_bytes());
        SymmetricState {
            chaining_key: SymmetricKey::from_bytes(INITIAL_CHAIN_KEY),
            hash,
        }
    }
    /// C = KDF1(C, ephemeral); H = HASH(H ‖ ephemeral).
    fn mix_ephemeral(&mut self, ephemeral: &PublicKey) {
        let [c] = kdf::<1>(self.chaining_key.as_bytes(), ephemeral.as_bytes());
        self.chaining_key = c;
        self.hash.mix(ephemeral.as_bytes());
    }
    /// C = KDF1(C, dh).
    fn mix_key(&mut self, dh: &SymmetricKey) {
        let [c] = kdf::<1>(self.chaining_key.as_bytes(), dh.as_bytes());
        self.chaining_key = c;
    }
    /// (C, k) = KDF2(C, dh): returns k.
    fn mix_key_and_get(&mut self, dh: &SymmetricKey) -> SymmetricKey {
        let [c, k] = kdf::<2>(self.chaining_key.as_bytes(), dh.as_bytes());
        self.chaining_key = c;
        k
    }
    /// (C, τ, k) = KDF3(C, psk); H = HASH(H ‖ τ): returns k.
    fn mix_psk(&mut self, psk: &PresharedKey) -> SymmetricKey {
        let [c, tau, k] = kdf::<3>(self.chaining_key.as_bytes(), psk.as_bytes());
        self.chaining_key = c;
        self.hash.mix(tau.as_bytes());
        k
    }
    /// out = AEAD(k, 0, plain, H); H = HASH(H ‖ out). `out` holds the plaintext then the tag.
    fn encrypt_and_hash(&mut self, key: &SymmetricKey, out: &mut [u8]) {
        aead_seal(key, 0, out, &self.hash.0);
        self.hash.mix(out);
    }
    /// Opposite of [`encrypt_and_hash`](Self::encrypt_and_hash): `buf` is a copy of the ciphertext.
    fn decrypt_and_hash(
        &mut self,
        key: &SymmetricKey,
        buf: &mut [u8],
    ) -> Result<(), HandshakeError> {
        let mut next = self.hash.clone();
        next.mix(buf);
        aead_open(key, 0, buf, &self.hash.0).map_err(|_| HandshakeError::Decrypt)?;
        self.hash = next;
        Ok(())
    }
    /// (T1, T2) = KDF2(C, ε).
    fn split(&self) -> [SymmetricKey; 2] {
        kdf::<2>(self.chaining_key.as_bytes(), &[])
    }
}

/// Transport keys derived by a completed handshake.
#[derive(Debug)]
pub struct SessionKeys {
    /// Key for messages we send.
    pub send: SymmetricKey,
    /// Key for messages we receive.
    pub recv: SymmetricKey,
}

/// The initiator's state between sending an initiation and receiving the response.
pub struct InitiationState {
    symmetric: SymmetricState,
    ephemeral: PrivateKey,
    /// The sender index we put into the initiation.
    pub local_index: u32,
}

impl fmt::Debug for InitiationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiationState")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// Initiator, message 1 (PROTOCOL.md §3). Writes everything but mac1/mac2 into `out`.
pub fn create_initiation(
    local: &StaticIdentity,
    remote: &mut RemoteStatic,
    local_index: u32,
    timestamp: Tai64N,
    rng: &mut dyn CryptoRngCore,
    out: &mut [u8; INITIATION_LEN],
) -> Result<InitiationState, HandshakeError> {
    let static_static = remote
        .static_static(local)
        .ok_or(HandshakeError::LowOrder)?
        .clone();
    let mut sym = SymmetricState::start(&remote.public);
    let ephemeral = PrivateKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    sym.mix_ephemeral(&ephemeral_public);
    let k = sym.mix_key_and_get(&ephemeral.diffie_hellman(&remote.public)?);

    write_type(out, TYPE_INITIATION);
    out[field::initiation::SENDER].copy_from_slice(&local_index.to_le_bytes());
    out[field::initiation::EPHEMERAL].copy_from_slice(ephemeral_public.as_bytes());
    let encrypted_static = &mut out[field::initiation::STATIC];
    encrypted_static[..KEY_LEN].copy_from_slice(local.public.as_bytes());
    sym.encrypt_and_hash(&k, encrypted_static);

    let k = sym.mix_key_and_get(&static_static);
    let encrypted_timestamp = &mut out[field::initiation::TIMESTAMP];
    encrypted_timestamp[..12].copy_from_slice(&timestamp.0);
    sym.encrypt_and_hash(&k, encrypted_timestamp);
    out[field::initiation::MAC1.start..].fill(0);

    Ok(InitiationState {
        symmetric: sym,
        ephemeral,
        local_index,
    })
}

/// First half of consuming an initiation: the static key is decrypted, the peer not yet known.
pub struct InitiationStatic {
    symmetric: SymmetricState,
    remote_static: PublicKey,
    remote_ephemeral: PublicKey,
}

impl InitiationStatic {
    /// The initiator's static public key, to look the peer up by.
    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }
}

impl fmt::Debug for InitiationStatic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiationStatic")
            .field("remote_static", &self.remote_static)
            .finish_non_exhaustive()
    }
}

/// A fully authenticated initiation. The caller still has to check the timestamp and the flood
/// limit (PROTOCOL.md §3) before answering it with [`create_response`].
pub struct ReceivedInitiation {
    symmetric: SymmetricState,
    remote_ephemeral: PublicKey,
    /// The initiator's index: the receiver index of our response.
    pub sender_index: u32,
    /// The decrypted TAI64N timestamp.
    pub timestamp: Tai64N,
}

impl fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

/// Responder, message 1, steps 1-3: decrypt the initiator's static key.
pub fn consume_initiation(
    local: &StaticIdentity,
    msg: &Initiation<'_>,
) -> Result<InitiationStatic, HandshakeError> {
    let mut sym = SymmetricState::start(&local.public);
    let remote_ephemeral = PublicKey::from_bytes(*msg.ephemeral());
    sym.mix_ephemeral(&remote_ephemeral);
    let k = sym.mix_key_and_get(&local.private.diffie_hellman(&remote_ephemeral)?);
    let mut static_buf = *msg.encrypted_static();
    sym.decrypt_and_hash(&k, &mut static_buf)?;
    let mut remote = [0u8; KEY_LEN];
    remote.copy_from_slice(&static_buf[..KEY_LEN]);
    Ok(InitiationStatic {
        symmetric: sym,
        remote_static: PublicKey::from_bytes(remote),
        remote_ephemeral,
    })
}

impl InitiationStatic {
    /// Responder, message 1, step 4: with the peer found, decrypt and return the timestamp.
    pub fn finish(
        mut self,
        local: &StaticIdentity,
        remote: &mut RemoteStatic,
        msg: &Initiation<'_>,
    ) -> Result<ReceivedInitiation, HandshakeError> {
        if remote.public != self.remote_static {
            return Err(HandshakeError::UnknownPeer);
        }
        let static_static = remote
            .static_static(local)
            .ok_or(HandshakeError::LowOrder)?;
        let k = self.symmetric.mix_key_and_get(static_static);
        let mut ts_buf = *msg.encrypted_timestamp();
        self.symmetric.decrypt_and_hash(&k, &mut ts_buf)?;
        let mut timestamp = [0u8; 12];
        timestamp.copy_from_slice(&ts_buf[..12]);
        Ok(ReceivedInitiation {
            symmetric: self.symmetric.clone(),
            remote_ephemeral: self.remote_ephemeral,
            sender_index: msg.sender_index(),
            timestamp: Tai64N(timestamp),
        })
    }
}

/// Responder, message 2 (PROTOCOL.md §3). Writes everything but mac1/mac2 into `out` and
/// returns the responder's transport keys (send = T2, receive = T1).
pub fn create_response(
    initiation: ReceivedInitiation,
    remote: &RemoteStatic,
    local_index: u32,
    rng: &mut dyn CryptoRngCore,
    out: &mut [u8; RESPONSE_LEN],
) -> Result<SessionKeys, HandshakeError> {
    let mut sym = initiation.symmetric.clone();
    let ephemeral = PrivateKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    sym.mix_ephemeral(&ephemeral_public);
    sym.mix_key(&ephemeral.diffie_hellman(&initiation.remote_ephemeral)?);
    sym.mix_key(&ephemeral.diffie_hellman(&remote.public)?);
    let k = sym.mix_psk(&remote.psk);

    write_type(out, TYPE_RESPONSE);
    out[field::response::SENDER].copy_from_slice(&local_index.to_le_bytes());
    out[field::response::RECEIVER].copy_from_slice(&initiation.sender_index.to_le_bytes());
    out[field::response::EPHEMERAL].copy_from_slice(ephemeral_public.as_bytes());
    let empty = &mut out[field::response::EMPTY];
    debug_assert_eq!(empty.len(), TAG_LEN);
    sym.encrypt_and_hash(&k, empty);
    out[field::response::MAC1.start..].fill(0);

    let [t1, t2] = sym.split();
    Ok(SessionKeys { send: t2, recv: t1 })
}

/// Initiator, on message 2 (PROTOCOL.md §3): returns the initiator's transport keys (send = T1,
/// receive = T2). The caller has matched `msg.receiver_index()` to `state.local_index`.
pub fn consume_response(
    local: &StaticIdentity,
    remote: &RemoteStatic,
    state: &InitiationState,
    msg: &Response<'_>,
) -> Result<SessionKeys, HandshakeError> {
    let mut sym = state.symmetric.clone();
    let remote_ephemeral = PublicKey::from_bytes(*msg.ephemeral());
    sym.mix_ephemeral(&remote_ephemeral);
    sym.mix_key(&state.ephemeral.diffie_hellman(&remote_ephemeral)?);
    sym.mix_key(&local.private.diffie_hellman(&remote_ephemeral)?);
    let k = sym.mix_psk(&remote.psk);
    let mut empty = *msg.encrypted_nothing();
    sym.decrypt_and_hash(&k, &mut empty)?;
    let [t1, t2] = sym.split();
    Ok(SessionKeys { send: t1, recv: t2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{parse, Message};
    use rand_core::{CryptoRng, RngCore};

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).expect("hex").try_into().expect("length")
    }

    /// An "RNG" that hands out a fixed ephemeral key, to replay the vector.
    struct FixedKey([u8; 32]);
    impl RngCore for FixedKey {
        fn next_u32(&mut self) -> u32 {
            unreachable!()
        }
        fn next_u64(&mut self) -> u64 {
            unreachable!()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.copy_from_slice(&self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for FixedKey {}

    #[test]
    fn initial_constants_match_their_definition() {
        assert_eq!(INITIAL_CHAIN_KEY, hash(&[CONSTRUCTION]));
        assert_eq!(INITIAL_HASH, hash(&[&INITIAL_CHAIN_KEY, IDENTIFIER]));
    }

    #[test]
    fn tai64n_encoding() {
        // 2023-11-14T22:13:20Z = 1700000000 s; nanoseconds rounded down to 2^24.
        let t = Tai64N::from_unix(Duration::new(1_700_000_000, 0x0123_4567));
        assert_eq!(t.0, unhex::<12>("400000006553f10a01000000"));
        assert!(Tai64N::from_unix(Duration::new(1_700_000_001, 0)) > t);
    }

    // Keys of the cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s entry (PROTOCOL.md §9).
    const INIT_STATIC: &str = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1";
    const INIT_EPHEMERAL: &str = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a";
    const RESP_STATIC: &str = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893";
    const RESP_EPHEMERAL: &str = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b";
    const PSK: &str = "54686973206973206d7920417573747269616e20706572737065637469766521";

    #[test]
    fn framed_handshake_vector() {
        let init = StaticIdentity::new(PrivateKey::from_bytes(unhex(INIT_STATIC)));
        let resp = StaticIdentity::new(PrivateKey::from_bytes(unhex(RESP_STATIC)));
        assert_eq!(
            init.public_key().as_bytes(),
            &unhex::<32>("6bc3822a2aa7f4e6981d6538692b3cdf3e6df9eea6ed269eb41d93c22757b75a")
        );
        assert_eq!(
            resp.public_key().as_bytes(),
            &unhex::<32>("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62")
        );
        let psk = PresharedKey::from_bytes(unhex(PSK));
        let mut init_view_of_resp = RemoteStatic::new(*resp.public_key(), psk.clone());
        let mut resp_view_of_init = RemoteStatic::new(*init.public_key(), psk);

        let mut msg1 = [0u8; INITIATION_LEN];
        let ts = Tai64N(unhex("400000006553f10a00000000"));
        let state = create_initiation(
            &init,
            &mut init_view_of_resp,
            0x0102_0304,
            ts,
            &mut FixedKey(unhex(INIT_EPHEMERAL)),
            &mut msg1,
        )
        .expect("initiation");
        crate::cookie::write_mac1(&init_view_of_resp.mac1_key(), &mut msg1);
        let expected1 = hex::decode("0100000004030201ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944001e21de9f98ddd8e2ad57527207feb56253c9c94a9e496782ecfcb2a75fbcaf752d6cf9956f6a4cc1a138d6de1e87238cbd2c462d6bf53d84c83619a6663feb6f8d477c30b0c2f2ef2b3aed03dd0fe4467aa370925b913471f05a6c00000000000000000000000000000000").expect("hex");
        assert_eq!(hex::encode(msg1), hex::encode(&expected1));

        let Ok(Message::Initiation(view)) = parse(&msg1) else {
            panic!("initiation parses")
        };
        let part = consume_initiation(&resp, &view).expect("static decrypts");
        assert_eq!(part.remote_static(), init.public_key());
        let received = part
            .finish(&resp, &mut resp_view_of_init, &view)
            .expect("timestamp decrypts");
        assert_eq!(received.timestamp, ts);
        assert_eq!(received.sender_index, 0x0102_0304);

        let mut msg2 = [0u8; RESPONSE_LEN];
        let resp_keys = create_response(
            received,
            &resp_view_of_init,
            0x0506_0708,
            &mut FixedKey(unhex(RESP_EPHEMERAL)),
            &mut msg2,
        )
        .expect("response");
        crate::cookie::write_mac1(&resp_view_of_init.mac1_key(), &mut msg2);
        let expected2 = hex::decode("02000000080706050403020195ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088434f9895bc1259c89ff7a7c7f869b4cb1cdff13dc4eb8537d521ba34982a77269f00000000000000000000000000000000").expect("hex");
        assert_eq!(hex::encode(msg2), hex::encode(&expected2));

        let Ok(Message::Response(view2)) = parse(&msg2) else {
            panic!("response parses")
        };
        let init_keys = consume_response(&init, &init_view_of_resp, &state, &view2)
            .expect("response authenticates");
        let t1 = unhex::<32>("7a74d0adaa1882492a8eddc15272b5a5a230e111d86d430a5988596f2c4238ae");
        let t2 = unhex::<32>("4dd78ec86daaa1034639ed326df9afecc3c47a881689e2a9f37a5e55a8131a2d");
        assert_eq!(init_keys.send.as_bytes(), &t1);
        assert_eq!(init_keys.recv.as_bytes(), &t2);
        assert_eq!(resp_keys.recv.as_bytes(), &t1);
        assert_eq!(resp_keys.send.as_bytes(), &t2);

        // The first keepalive, initiator to responder, counter 0.
        let mut keepalive = [0u8; 32];
        crate::messages::write_transport_header(
            (&mut keepalive[..16]).try_into().expect("16"),
            0x0506_0708,
            0,
        );
        aead_seal(&init_keys.send, 0, &mut keepalive[16..], &[]);
        assert_eq!(
            hex::encode(keepalive),
            "040000000807060500000000000000007b10d7058fd6195d3ef4f80e0a625b8b"
        );
    }

    #[test]
    fn tampered_messages_are_refused() {
        let mut rng = FixedKey([3; 32]);
        let init = StaticIdentity::new(PrivateKey::from_bytes([1; 32]));
        let resp = StaticIdentity::new(PrivateKey::from_bytes([2; 32]));
        let mut i2r = RemoteStatic::new(*resp.public_key(), PresharedKey::none());
        let mut r2i = RemoteStatic::new(*init.public_key(), PresharedKey::none());
        let mut msg1 = [0u8; INITIATION_LEN];
        let state = create_initiation(&init, &mut i2r, 1, Tai64N::default(), &mut rng, &mut msg1)
            .expect("init");
        for byte in [8, 40, 87, 88, 115] {
            let mut bad = msg1;
            bad[byte] ^= 0x80;
            let Ok(Message::Initiation(v)) = parse(&bad) else {
                panic!()
            };
            let outcome = consume_initiation(&resp, &v).and_then(|p| p.finish(&resp, &mut r2i, &v));
            assert!(
                outcome.is_err(),
                "flipping byte {byte} must break authentication"
            );
        }
        // A different PSK on one side breaks the response.
        let Ok(Message::Initiation(v)) = parse(&msg1) else {
            panic!()
        };
        let received = consume_initiation(&resp, &v)
            .and_then(|p| p.finish(&resp, &mut r2i, &v))
            .expect("ok");
        let mut r2i_psk = r2i.clone();
        r2i_psk.set_psk(PresharedKey::from_bytes([9; 32]));
        let mut msg2 = [0u8; RESPONSE_LEN];
        create_response(received, &r2i_psk, 2, &mut rng, &mut msg2).expect("resp");
        let Ok(Message::Response(v2)) = parse(&msg2) else {
            panic!()
        };
        assert_eq!(
            consume_response(&init, &i2r, &state, &v2).err(),
            Some(HandshakeError::Decrypt)
        );
        // A low-order peer key cannot start a handshake.
        let mut low = RemoteStatic::new(PublicKey::from_bytes([0; 32]), PresharedKey::none());
        assert!(low.static_static(&init).is_none());
        assert_eq!(
            create_initiation(&init, &mut low, 1, Tai64N::default(), &mut rng, &mut msg1).err(),
            Some(HandshakeError::LowOrder)
        );
    }
}
