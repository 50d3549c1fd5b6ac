//! Transport keypairs (PROTOCOL.md §5, §7): keys, the send counter and the replay window.
//!
//! A [`Keypair`] is shared (`Arc`) between the peer's slots, the index table and the threads
//! that encrypt and decrypt with it. Sealing takes a counter from an atomic; opening is
//! lock-free and only the replay check takes the keypair's own short lock, after decryption.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use crate::crypto::{aead_open, aead_seal, AuthError, SymmetricKey, TAG_LEN};
use crate::messages::{write_transport_header, TRANSPORT_HEADER_LEN};
use crate::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::sync::Mutex;
use crate::time::Instant;
use crate::timers::REJECT_AFTER_TIME;

/// Identifies a peer inside a device. Never reused while the device lives.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PeerId(pub(crate) u64);

/// One session's transport keys and counters.
pub struct Keypair {
    send_key: SymmetricKey,
    recv_key: SymmetricKey,
    send_counter: AtomicU64,
    /// Cleared when the keypair must not be used for sending any more (private key changed,
    /// counter exhausted); receiving stays possible until it is dropped.
    sending_valid: AtomicBool,
    replay: Mutex<ReplayWindow>,
    /// When the handshake that produced it completed.
    pub(crate) created: Instant,
    /// Whether we sent the initiation of that handshake.
    pub(crate) is_initiator: bool,
    /// Our index: peers put it in the transport messages they send us.
    pub(crate) local_index: u32,
    /// Their index: we put it in the transport messages we send.
    pub(crate) remote_index: u32,
    pub(crate) peer: PeerId,
}

impl core::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    pub(crate) fn new(
        send_key: SymmetricKey,
        recv_key: SymmetricKey,
        created: Instant,
        is_initiator: bool,
        local_index: u32,
        remote_index: u32,
        peer: PeerId,
    ) -> Self {
        Keypair {
            send_key,
            recv_key,
            send_counter: AtomicU64::new(0),
            sending_valid: AtomicBool::new(true),
            replay: Mutex::new(ReplayWindow::new()),
            created,
            is_initiator,
            local_index,
            remote_index,
            peer,
        }
    }

    /// Age of the keypair at `now`.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now - self.created
    }

    /// Whether this keypair may still send at `now` (PROTOCOL.md §5: younger than
    /// REJECT_AFTER_TIME, counter below REJECT_AFTER_MESSAGES, not invalidated).
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.sending_valid.load(Ordering::Relaxed)
            && self.age(now) < REJECT_AFTER_TIME
            && self.send_counter.load(Ordering::Relaxed) < REJECT_AFTER_MESSAGES
    }

    /// Whether messages received under this keypair are still accepted at `now`.
    pub(crate) fn can_receive(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME
    }

    /// Moves the send counter (tests of the message limits).
    #[cfg(test)]
    pub(crate) fn set_send_counter(&self, counter: u64) {
        self.send_counter.store(counter, Ordering::Relaxed);
    }

    pub(crate) fn invalidate_sending(&self) {
        self.sending_valid.store(false, Ordering::Relaxed);
    }

    /// Reserves the next nonce counter, or `None` when the keypair is exhausted.
    pub(crate) fn next_counter(&self) -> Option<u64> {
        let c = self.send_counter.fetch_add(1, Ordering::Relaxed);
        if c >= REJECT_AFTER_MESSAGES {
            self.sending_valid.store(false, Ordering::Relaxed);
            // Keep the counter from wrapping however many callers race here.
            self.send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return None;
        }
        Some(c)
    }

    /// Encrypts a transport message in place.
    ///
    /// `buf[16..16 + packet_len]` holds the IP packet; `padded_len` ≥ `packet_len` is the padded
    /// plaintext length; `buf` must hold `16 + padded_len + 16` bytes. Writes the header, the
    /// zero padding, the ciphertext and the tag; returns the message length.
    pub(crate) fn seal(
        &self,
        counter: u64,
        buf: &mut [u8],
        packet_len: usize,
        padded_len: usize,
    ) -> usize {
        let total = TRANSPORT_HEADER_LEN + padded_len + TAG_LEN;
        let (header, body) = buf[..total].split_at_mut(TRANSPORT_HEADER_LEN);
        write_transport_header(
            header.try_into().expect("16-byte header"),
            self.remote_index,
            counter,
        );
        body[packet_len..padded_len].fill(0);
        aead_seal(&self.send_key, counter, body, &[]);
        total
    }

    /// Decrypts `body` (ciphertext ‖ tag) in place. Does not touch the replay window.
    pub(crate) fn open(&self, counter: u64, body: &mut [u8]) -> Result<(), AuthError> {
        aead_open(&self.recv_key, counter, body, &[])
    }

    /// The replay check, after successful decryption (PROTOCOL.md §5).
    pub(crate) fn accept_counter(&self, counter: u64) -> bool {
        self.replay.lock().check_and_update(counter)
    }
}

/// Length of the padded plaintext for an IP packet of `len` bytes (PROTOCOL.md §5): a multiple
/// of 16, but never more than the MTU, unless the packet itself is longer than the MTU.
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let last = if mtu == 0 || len <= mtu {
        len
    } else {
        len % mtu
    };
    let padded = last.next_multiple_of(16);
    let padded = if mtu == 0 { padded } else { padded.min(mtu) };
    len - last + padded.max(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_16_capped_at_mtu() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(84, 1420), 96);
        assert_eq!(padded_len(96, 1420), 96);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        // MTU not a multiple of 16: capped.
        assert_eq!(padded_len(1413, 1414), 1414);
        // Larger than the MTU (GSO super-packet segments are never this; just don't panic).
        assert_eq!(padded_len(1500, 1420), 1420 + 80);
        assert_eq!(padded_len(100, 0), 112);
    }

    #[test]
    fn seal_open_and_replay() {
        let k1 = SymmetricKey::from_bytes([1; 32]);
        let k2 = SymmetricKey::from_bytes([2; 32]);
        let a = Keypair::new(
            k1.clone(),
            k2.clone(),
            Instant::ZERO,
            true,
            10,
            20,
            PeerId(0),
        );
        let b = Keypair::new(k2, k1, Instant::ZERO, false, 20, 10, PeerId(1));
        let mut buf = [0u8; 16 + 96 + 16];
        buf[16..16 + 84].copy_from_slice(&[0x45; 84]);
        let c = a.next_counter().expect("fresh");
        let n = a.seal(c, &mut buf, 84, 96);
        assert_eq!(n, 128);
        assert_eq!(u32::from_le_bytes(buf[4..8].try_into().expect("4")), 20);
        b.open(c, &mut buf[16..n]).expect("authentic");
        assert_eq!(&buf[16..16 + 84], &[0x45; 84][..]);
        assert_eq!(&buf[16 + 84..16 + 96], &[0u8; 12][..]);
        assert!(b.accept_counter(c));
        assert!(!b.accept_counter(c), "replayed counter");
        assert!(a.can_send(Instant::ZERO));
        assert!(!a.can_send(Instant::ZERO + REJECT_AFTER_TIME));
        a.invalidate_sending();
        assert!(!a.can_send(Instant::ZERO));
    }

    #[test]
    fn counter_exhaustion_stops_sending() {
        let k = SymmetricKey::from_bytes([1; 32]);
        let a = Keypair::new(k.clone(), k, Instant::ZERO, true, 1, 2, PeerId(0));
        a.send_counter
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(a.next_counter(), Some(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(a.next_counter(), None);
        assert_eq!(a.next_counter(), None);
        assert!(!a.can_send(Instant::ZERO));
    }
}
