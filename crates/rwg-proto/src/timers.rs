//! The per-peer timer table (PROTOCOL.md §6; whitepaper §6; the kernel's timers.c).
//!
//! Timers are deadlines in a small table, never threads or callbacks: the device asks each peer
//! for its earliest deadline ([`TimerTable::next`]) to answer `poll_timeout`, and on
//! `handle_timeout` takes the expired ones ([`TimerTable::take_expired`]). The hooks that arm
//! and cancel them are named after protocol events and live in `peer.rs`.

use core::time::Duration;

use crate::time::Instant;

/// Initiate a new handshake when the current keypair is this old (initiator only).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never send or accept with a keypair this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up retrying a handshake after this long (= MAX_TIMER_HANDSHAKES retransmits).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this (plus jitter); also the minimum gap between
/// two initiations to the same peer.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Send a keepalive this long after receiving data if we sent nothing back.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmits before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_TIMER_HANDSHAKES: u32 = 18;
/// Upper bound of the random jitter added to handshake timers.
pub const MAX_JITTER: Duration = Duration::from_millis(333);
/// Erase all keys after this long without a new session.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(540);
/// Rekey on receive when the current keypair (which we initiated) is this old:
/// REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);

/// The five timers of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Timer {
    /// An initiation was not answered.
    RetransmitHandshake = 0,
    /// We received data and have sent nothing back.
    SendKeepalive = 1,
    /// We sent data and have received nothing back.
    NewHandshake = 2,
    /// No new session for a long time: erase the keys.
    ZeroKeyMaterial = 3,
    /// The configured persistent keepalive interval passed without traffic.
    PersistentKeepalive = 4,
}

impl Timer {
    pub(crate) const ALL: [Timer; 5] = [
        Timer::RetransmitHandshake,
        Timer::SendKeepalive,
        Timer::NewHandshake,
        Timer::ZeroKeyMaterial,
        Timer::PersistentKeepalive,
    ];
}

/// Deadlines of a peer's timers.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; 5],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }
    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.deadlines[timer as usize].is_some()
    }
    pub(crate) fn clear(&mut self) {
        self.deadlines = [None; 5];
    }
    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }
    /// Removes and returns the timers whose deadline is at or before `now`, in table order.
    pub(crate) fn take_expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> {
        let mut expired = [None; 5];
        for t in Timer::ALL {
            if self.deadlines[t as usize].is_some_and(|d| d <= now) {
                self.deadlines[t as usize] = None;
                expired[t as usize] = Some(t);
            }
        }
        expired.into_iter().flatten()
    }
}

/// A small non-cryptographic generator for timer jitter, seeded from the device's CSPRNG when
/// the peer is created, so the data path never needs the caller's RNG.
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }
    /// Uniform in [0, MAX_JITTER).
    pub(crate) fn next(&mut self) -> Duration {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_nanos(r % MAX_JITTER.as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reports_earliest_and_takes_expired() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        let base = Instant::from_nanos(1_000);
        t.set(Timer::NewHandshake, base + Duration::from_secs(15));
        t.set(Timer::SendKeepalive, base + Duration::from_secs(10));
        assert_eq!(t.next(), Some(base + Duration::from_secs(10)));
        let fired: alloc::vec::Vec<_> = t.take_expired(base + Duration::from_secs(10)).collect();
        assert_eq!(fired, [Timer::SendKeepalive]);
        assert!(!t.is_set(Timer::SendKeepalive));
        assert!(t.is_set(Timer::NewHandshake));
        t.stop(Timer::NewHandshake);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut j = Jitter::new(42);
        let samples: alloc::vec::Vec<_> = (0..1000).map(|_| j.next()).collect();
        assert!(samples.iter().all(|d| *d < MAX_JITTER));
        let distinct = samples
            .iter()
            .collect::<alloc::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 900, "{distinct}");
        assert!(samples.iter().any(|d| *d > Duration::from_millis(300)));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(33)));
    }
}
