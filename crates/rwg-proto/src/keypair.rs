//! Transport keypairs and their rotation (PROTOCOL.md §5, §7; the kernel's noise.c keypair code).
//!
//! A [`Keypair`] is one session: the two transport keys, the send counter and the replay window.
//! A peer holds up to three in [`Keypairs`]: `current` (sends), `previous` (still receives, so
//! packets in flight across a rekey are not lost) and `next` (the responder's new session,
//! unused for sending until the initiator confirms it by using it). Every rule that moves a
//! keypair between those slots is a method here, and each returns the local indices of the
//! keypairs it dropped ([`Retired`]): the caller removes them from its index table, so that a
//! message for a dropped session finds nothing.

use core::fmt;
use core::time::Duration;

use crate::constants::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::crypto::{aead_open, aead_seal, AuthError, SymmetricKey, TAG_LEN};
use crate::messages::{write_transport_header, TRANSPORT_HEADER_LEN};
use crate::replay::ReplayWindow;
use crate::slot::{slot, Slot};
use crate::time::Instant;

/// The caller's buffer is too short for what it was asked to hold (a driver bug, not the
/// network's doing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall;

/// One session's transport keys and counters.
pub struct Keypair {
    send_key: SymmetricKey,
    recv_key: SymmetricKey,
    /// The counter of the next message we send.
    send_counter: u64,
    /// Cleared when the keypair must not send any more (our private key changed); receiving
    /// stays possible until it is dropped.
    sending_valid: bool,
    replay: ReplayWindow,
    /// When the handshake that produced it completed (for its age).
    created: Instant,
    /// Whether we sent the initiation of that handshake.
    is_initiator: bool,
    /// Our index: the peer puts it in the transport messages it sends us.
    local_index: u32,
    /// Their index: we put it in the transport messages we send.
    remote_index: u32,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A fresh session derived at `created`.
    pub fn new(
        send_key: SymmetricKey,
        recv_key: SymmetricKey,
        created: Instant,
        is_initiator: bool,
        local_index: u32,
        remote_index: u32,
    ) -> Self {
        Keypair {
            send_key,
            recv_key,
            send_counter: 0,
            sending_valid: true,
            replay: ReplayWindow::new(),
            created,
            is_initiator,
            local_index,
            remote_index,
        }
    }

    /// Our index of this session.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's index of this session.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// Whether we initiated the handshake that produced it.
    pub fn is_initiator(&self) -> bool {
        self.is_initiator
    }

    /// Age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now - self.created
    }

    /// Whether it may still send at `now` (§5): younger than REJECT_AFTER_TIME, counter below
    /// REJECT_AFTER_MESSAGES, not invalidated.
    pub fn can_send(&self, now: Instant) -> bool {
        self.sending_valid
            && self.age(now) < REJECT_AFTER_TIME
            && self.send_counter < REJECT_AFTER_MESSAGES
    }

    /// Whether messages received under it are still accepted at `now` (§5).
    pub fn can_receive(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME
    }

    /// Reserves the next send counter, or `None` once the counter is exhausted.
    pub fn next_counter(&mut self) -> Option<u64> {
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return None;
        }
        let c = self.send_counter;
        self.send_counter += 1;
        Some(c)
    }

    /// Stops sending with this keypair (private key change, §6).
    pub fn invalidate_sending(&mut self) {
        self.sending_valid = false;
    }

    /// The replay check, after the message authenticated (§5).
    pub fn accept_counter(&mut self, counter: u64) -> bool {
        self.replay.check_and_update(counter)
    }

    /// What a thread needs to encrypt one message without the peer: a copy of the send key.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            key: self.send_key.clone(),
            remote_index: self.remote_index,
        }
    }

    /// What a thread needs to decrypt one message without the peer: a copy of the receive key.
    pub fn opener(&self) -> Opener {
        Opener {
            key: self.recv_key.clone(),
        }
    }

    /// Moves the send counter (tests of the message limits).
    #[doc(hidden)]
    pub fn set_send_counter(&mut self, counter: u64) {
        self.send_counter = counter;
    }
}

/// The send half of a keypair, detached so that encryption can run on any thread.
pub struct Sealer {
    key: SymmetricKey,
    remote_index: u32,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Writes a transport message in place: `buf[TRANSPORT_HEADER_LEN..][..packet_len]` holds
    /// the packet; it is padded with zeros to `padded_len`, encrypted, and the header written
    /// in front. Returns the message length.
    pub fn seal(
        &self,
        counter: u64,
        buf: &mut [u8],
        packet_len: usize,
        padded_len: usize,
    ) -> Result<usize, BufferTooSmall> {
        let total = TRANSPORT_HEADER_LEN + padded_len + TAG_LEN;
        if packet_len > padded_len {
            return Err(BufferTooSmall);
        }
        let msg = buf.get_mut(..total).ok_or(BufferTooSmall)?;
        let (header, body) = msg.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] =
            header.try_into().map_err(|_| BufferTooSmall)?;
        write_transport_header(header, self.remote_index, counter);
        body[packet_len..padded_len].fill(0);
        aead_seal(&self.key, counter, body, &[]);
        Ok(total)
    }
}

/// The receive half of a keypair, detached so that decryption can run on any thread.
pub struct Opener {
    key: SymmetricKey,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Opener(<redacted>)")
    }
}

impl Opener {
    /// Decrypts `body` (ciphertext ‖ tag) in place. Changes no state: a forged message costs
    /// only the AEAD.
    pub fn open(&self, counter: u64, body: &mut [u8]) -> Result<(), AuthError> {
        aead_open(&self.key, counter, body, &[])
    }
}

/// Length of the padded plaintext for an IP packet of `len` bytes (§5): a multiple of 16, but
/// never more than the MTU, unless the packet itself is longer than the MTU.
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

/// Local indices of keypairs a rotation dropped: at most three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    indices: [Option<u32>; 3],
}

impl Retired {
    fn push(&mut self, keypair: Option<Slot<Keypair>>) {
        if let Some(k) = keypair {
            if let Some(free) = self.indices.iter_mut().find(|i| i.is_none()) {
                *free = Some(k.local_index);
            }
        }
    }
}

impl IntoIterator for Retired {
    type Item = u32;
    type IntoIter = core::iter::Flatten<core::array::IntoIter<Option<u32>, 3>>;
    fn into_iter(self) -> Self::IntoIter {
        self.indices.into_iter().flatten()
    }
}

/// Which slot a keypair is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotName {
    /// The one we send with.
    Current,
    /// The one before it, kept for packets in flight.
    Previous,
    /// The responder's new one, waiting for the initiator to use it.
    Next,
}

/// A peer's keypair slots (§7).
#[derive(Debug, Default)]
pub struct Keypairs {
    current: Option<Slot<Keypair>>,
    previous: Option<Slot<Keypair>>,
    next: Option<Slot<Keypair>>,
}

impl Keypairs {
    /// The initiator received the response: previous = next if present, else current;
    /// current = the new keypair.
    pub fn install_as_initiator(&mut self, keypair: Keypair) -> Retired {
        let mut retired = Retired::default();
        let old_current = self.current.replace(slot(keypair));
        let new_previous = match self.next.take() {
            Some(next) => {
                retired.push(old_current);
                Some(next)
            }
            None => old_current,
        };
        retired.push(core::mem::replace(&mut self.previous, new_previous));
        retired
    }

    /// The responder sent its response: the new keypair waits in `next` until the initiator
    /// uses it; `previous` is dropped (the kernel does the same).
    pub fn install_as_responder(&mut self, keypair: Keypair) -> Retired {
        let mut retired = Retired::default();
        retired.push(self.next.replace(slot(keypair)));
        retired.push(self.previous.take());
        retired
    }

    /// A message authenticated under the keypair with `local_index`. If that is `next`, it is
    /// confirmed: previous = current, current = next. Returns whether that happened, and what
    /// was dropped.
    pub fn confirm(&mut self, local_index: u32) -> (bool, Retired) {
        let mut retired = Retired::default();
        if self
            .next
            .as_ref()
            .is_none_or(|n| n.local_index != local_index)
        {
            return (false, retired);
        }
        let old_previous = core::mem::replace(&mut self.previous, self.current.take());
        retired.push(old_previous);
        self.current = self.next.take();
        (true, retired)
    }

    /// Drops every keypair (keys erased, peer removed).
    pub fn clear(&mut self) -> Retired {
        let mut retired = Retired::default();
        retired.push(self.current.take());
        retired.push(self.previous.take());
        retired.push(self.next.take());
        retired
    }

    /// Stops sending with current and next (our private key changed, §6).
    pub fn invalidate_sending(&mut self) {
        for k in [&mut self.current, &mut self.next].into_iter().flatten() {
            k.invalidate_sending();
        }
    }

    /// The keypair to send with, if it may send at `now`.
    pub fn sendable(&mut self, now: Instant) -> Option<&mut Keypair> {
        self.current.as_deref_mut().filter(|k| k.can_send(now))
    }

    /// The keypair with this local index, in any slot.
    pub fn find_mut(&mut self, local_index: u32) -> Option<(SlotName, &mut Keypair)> {
        [
            (SlotName::Current, &mut self.current),
            (SlotName::Previous, &mut self.previous),
            (SlotName::Next, &mut self.next),
        ]
        .into_iter()
        .find_map(|(name, k)| {
            k.as_deref_mut()
                .filter(|k| k.local_index == local_index)
                .map(|k| (name, k))
        })
    }

    /// The keypair in a slot.
    pub fn get(&self, name: SlotName) -> Option<&Keypair> {
        match name {
            SlotName::Current => self.current.as_deref(),
            SlotName::Previous => self.previous.as_deref(),
            SlotName::Next => self.next.as_deref(),
        }
    }

    /// The keypair in a slot, mutably.
    pub fn get_mut(&mut self, name: SlotName) -> Option<&mut Keypair> {
        match name {
            SlotName::Current => self.current.as_deref_mut(),
            SlotName::Previous => self.previous.as_deref_mut(),
            SlotName::Next => self.next.as_deref_mut(),
        }
    }

    /// Local indices of every keypair held.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.local_index)
    }

    /// Whether no keypair is held.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_none() && self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp(local: u32, initiator: bool) -> Keypair {
        let k = SymmetricKey::from_bytes([local as u8; 32]);
        Keypair::new(k.clone(), k, Instant::ZERO, initiator, local, local + 100)
    }

    fn slots(k: &Keypairs) -> [Option<u32>; 3] {
        [SlotName::Current, SlotName::Previous, SlotName::Next]
            .map(|n| k.get(n).map(Keypair::local_index))
    }

    fn retired(r: Retired) -> alloc::vec::Vec<u32> {
        r.into_iter().collect()
    }

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
        // Larger than the MTU (never produced by a correct driver; just don't panic).
        assert_eq!(padded_len(1500, 1420), 1420 + 80);
        assert_eq!(padded_len(100, 0), 112);
    }

    #[test]
    fn seal_open_and_replay() {
        let k1 = SymmetricKey::from_bytes([1; 32]);
        let k2 = SymmetricKey::from_bytes([2; 32]);
        let mut a = Keypair::new(k1.clone(), k2.clone(), Instant::ZERO, true, 10, 20);
        let mut b = Keypair::new(k2, k1, Instant::ZERO, false, 20, 10);
        let mut buf = [0u8; 16 + 96 + 16];
        buf[16..16 + 84].copy_from_slice(&[0x45; 84]);
        let c = a.next_counter().expect("fresh");
        let n = a.sealer().seal(c, &mut buf, 84, 96).expect("fits");
        assert_eq!(n, 128);
        assert_eq!(u32::from_le_bytes(buf[4..8].try_into().expect("4")), 20);
        b.opener().open(c, &mut buf[16..n]).expect("authentic");
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
    fn sealing_into_a_short_buffer_is_an_error_not_a_panic() {
        let a = kp(1, true);
        for len in 0..16 + 96 + 16 {
            let mut buf = alloc::vec![0u8; len];
            assert_eq!(a.sealer().seal(0, &mut buf, 84, 96), Err(BufferTooSmall));
        }
        let mut buf = [0u8; 256];
        assert_eq!(a.sealer().seal(0, &mut buf, 100, 96), Err(BufferTooSmall));
    }

    #[test]
    fn counter_exhaustion_stops_sending() {
        let mut a = kp(1, true);
        a.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        assert_eq!(a.next_counter(), Some(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(a.next_counter(), None);
        assert_eq!(a.next_counter(), None);
        assert!(!a.can_send(Instant::ZERO));
    }

    #[test]
    fn initiator_rotation() {
        // PROTOCOL.md §7: previous = next if present else current; current = new.
        let mut k = Keypairs::default();
        assert_eq!(retired(k.install_as_initiator(kp(1, true))), []);
        assert_eq!(slots(&k), [Some(1), None, None]);
        assert_eq!(retired(k.install_as_initiator(kp(2, true))), []);
        assert_eq!(slots(&k), [Some(2), Some(1), None]);
        assert_eq!(retired(k.install_as_initiator(kp(3, true))), [1]);
        assert_eq!(slots(&k), [Some(3), Some(2), None]);
        // With a next waiting (both sides initiated): next becomes previous, current is dropped.
        assert_eq!(retired(k.install_as_responder(kp(4, false))), [2]);
        assert_eq!(slots(&k), [Some(3), None, Some(4)]);
        assert_eq!(retired(k.install_as_initiator(kp(5, true))), [3]);
        assert_eq!(slots(&k), [Some(5), Some(4), None]);
    }

    #[test]
    fn responder_rotation_and_confirmation() {
        let mut k = Keypairs::default();
        k.install_as_initiator(kp(1, true));
        k.install_as_initiator(kp(2, true));
        // The responder's keypair waits in next; previous goes.
        assert_eq!(retired(k.install_as_responder(kp(3, false))), [1]);
        assert_eq!(slots(&k), [Some(2), None, Some(3)]);
        assert!(k
            .sendable(Instant::ZERO)
            .is_some_and(|s| s.local_index() == 2));
        // A second initiation answered before confirmation replaces next.
        assert_eq!(retired(k.install_as_responder(kp(4, false))), [3]);
        // Data under current confirms nothing.
        assert_eq!(k.confirm(2), (false, Retired::default()));
        // Data under next promotes it.
        let (promoted, r) = k.confirm(4);
        assert!(promoted);
        assert_eq!(retired(r), []);
        assert_eq!(slots(&k), [Some(4), Some(2), None]);
        assert_eq!(retired(k.clear()), [4, 2]);
        assert!(k.is_empty());
    }

    #[test]
    fn invalidation_stops_current_and_next_only() {
        let mut k = Keypairs::default();
        k.install_as_initiator(kp(1, true));
        k.install_as_initiator(kp(2, true));
        k.install_as_responder(kp(3, false));
        k.invalidate_sending();
        assert!(k.sendable(Instant::ZERO).is_none());
        assert!(!k.get(SlotName::Next).expect("next").can_send(Instant::ZERO));
        let (name, _) = k.find_mut(2).expect("current");
        assert_eq!(name, SlotName::Current);
    }
}
