//! The per-peer timers: which events arm them and what each does when it fires (PROTOCOL.md §6;
//! whitepaper §6; modelled on the kernel's timers.c, where the handlers sit beside the hooks).
//!
//! Timers are deadlines in a table, never threads or callbacks. The hooks at the top are named
//! after the protocol event that calls them (`data_sent`, `handshake_complete`, …), as in the
//! kernel; each says which timers that event arms or cancels. [`Timers::fire`] takes the
//! expired timers and runs their handlers, which do the timer-side work (counting attempts,
//! re-arming) and return a [`TimerAction`] for the peer to carry out (sending an initiation or
//! a keepalive, erasing keys), because sending is the peer's business, not the table's.
//!
//! A device asks each peer for its earliest deadline ([`Timers::next`]) and keeps those in one
//! queue for all peers; see `crate::device`.

use core::time::Duration;

use crate::constants::{
    KEEPALIVE_TIMEOUT, MAX_JITTER, MAX_TIMER_HANDSHAKES, REKEY_ON_RECEIVE_AGE, REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
};
use crate::time::Instant;

/// The five timers of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timer {
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
    /// Every timer, in the order their handlers run when several expire at once: erasing the
    /// keys first, so that a handshake started by another timer in the same pass (a driver
    /// woken late, after a suspend) is not erased right after it was sent.
    pub const ALL: [Timer; 5] = [
        Timer::ZeroKeyMaterial,
        Timer::RetransmitHandshake,
        Timer::SendKeepalive,
        Timer::NewHandshake,
        Timer::PersistentKeepalive,
    ];
}

/// What the peer must do because a timer fired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TimerAction {
    /// retransmit_handshake, attempts left: send a fresh initiation (a retry).
    RetransmitInitiation,
    /// retransmit_handshake, attempts exhausted: drop the staged packets and give up. (The
    /// keepalive timer is already stopped and the key erasure armed.)
    GiveUp,
    /// send_keepalive: send a keepalive, then call [`Timers::keepalive_sent`].
    SendKeepalive,
    /// new_handshake: we sent data and heard nothing for 15 s: start a handshake.
    NewHandshake,
    /// zero_key_material: erase the handshake and every keypair.
    ZeroKeyMaterial,
    /// persistent_keepalive: send a keepalive.
    PersistentKeepalive,
}

/// A peer's timer table and the state its handlers keep.
#[derive(Clone, Debug)]
pub struct Timers {
    deadlines: [Option<Instant>; 5],
    jitter: Jitter,
    /// Retransmissions of the current initiation so far.
    handshake_attempts: u32,
    /// Data arrived while the keepalive timer was already running: send another after it.
    need_another_keepalive: bool,
    /// We already asked for a rekey because the current keypair is about to expire on receive.
    sent_lastminute_handshake: bool,
    /// Persistent keepalive interval in seconds, 0 = off.
    persistent_keepalive: u16,
}

impl Timers {
    /// A table with nothing armed; `jitter_seed` seeds the jitter generator.
    pub fn new(jitter_seed: u64) -> Self {
        Timers {
            deadlines: [None; 5],
            jitter: Jitter::new(jitter_seed),
            handshake_attempts: 0,
            need_another_keepalive: false,
            sent_lastminute_handshake: false,
            persistent_keepalive: 0,
        }
    }

    fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    /// Whether `timer` is armed.
    pub fn is_set(&self, timer: Timer) -> bool {
        self.deadlines[timer as usize].is_some()
    }

    /// The deadline of `timer`, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms everything (the peer is removed).
    pub fn clear(&mut self) {
        self.deadlines = [None; 5];
    }

    /// The persistent keepalive interval in seconds (0 = off).
    pub fn persistent_keepalive(&self) -> u16 {
        self.persistent_keepalive
    }

    /// Sets the persistent keepalive interval; 0 turns it off and disarms its timer.
    pub fn set_persistent_keepalive(&mut self, seconds: u16) {
        self.persistent_keepalive = seconds;
        if seconds == 0 {
            self.stop(Timer::PersistentKeepalive);
        }
    }

    /// A new round of handshake attempts starts (not a retransmission).
    pub fn reset_attempts(&mut self) {
        self.handshake_attempts = 0;
    }

    // ----- hooks: protocol events, and the timers each one arms or cancels -----

    /// A data packet (not a keepalive) was sent: expect an answer within 15 s (+ jitter), or
    /// start a new handshake.
    pub fn data_sent(&mut self, now: Instant) {
        if !self.is_set(Timer::NewHandshake) {
            let at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter.next();
            self.set(Timer::NewHandshake, at);
        }
    }

    /// A data packet (not a keepalive) was received: answer within 10 s, with a keepalive if
    /// nothing else goes out; if the timer runs already, send another one after it.
    pub fn data_received(&mut self, now: Instant) {
        if self.is_set(Timer::SendKeepalive) {
            self.need_another_keepalive = true;
        } else {
            self.set(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        }
    }

    /// Any authenticated packet (data, keepalive, handshake) was sent: no keepalive is owed.
    pub fn authenticated_packet_sent(&mut self) {
        self.stop(Timer::SendKeepalive);
    }

    /// Any authenticated packet was received: the peer is alive, no new handshake is needed.
    pub fn authenticated_packet_received(&mut self) {
        self.stop(Timer::NewHandshake);
    }

    /// Any authenticated packet was sent or received: restart the persistent keepalive interval.
    pub fn authenticated_packet_traversal(&mut self, now: Instant) {
        if self.persistent_keepalive > 0 {
            let at = now + Duration::from_secs(u64::from(self.persistent_keepalive));
            self.set(Timer::PersistentKeepalive, at);
        }
    }

    /// We sent an initiation: retransmit it after 5 s (+ jitter) if unanswered.
    pub fn handshake_initiated(&mut self, now: Instant) {
        let at = now + REKEY_TIMEOUT + self.jitter.next();
        self.set(Timer::RetransmitHandshake, at);
    }

    /// A handshake completed (response received, or the responder's first packet under the new
    /// keypair): no more retransmissions, and a rekey-on-receive may be asked for again.
    pub fn handshake_complete(&mut self) {
        self.stop(Timer::RetransmitHandshake);
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// New transport keys were derived: erase everything 540 s from now unless renewed.
    pub fn session_derived(&mut self, now: Instant) {
        self.set(Timer::ZeroKeyMaterial, now + ZERO_KEY_MATERIAL_AFTER);
    }

    /// A message was received under the current keypair, which we initiated and which is
    /// `age` old. Whether to start a handshake now (§5 "rekey if we initiated and the current
    /// key is ≥ 165 s old, once per session").
    pub fn rekey_on_receive(&mut self, we_initiated: bool, age: Duration) -> bool {
        if we_initiated && age >= REKEY_ON_RECEIVE_AGE && !self.sent_lastminute_handshake {
            self.sent_lastminute_handshake = true;
            return true;
        }
        false
    }

    // ----- handlers: what each timer does when it fires -----

    /// Takes every timer expired at `now` and runs its handler, in [`Timer::ALL`] order.
    /// Returns what the peer must do, in that order.
    pub fn fire(&mut self, now: Instant) -> impl Iterator<Item = TimerAction> {
        let mut actions = [None; 5];
        for (slot, timer) in actions.iter_mut().zip(Timer::ALL) {
            if self.deadlines[timer as usize].is_some_and(|d| d <= now) {
                self.stop(timer);
                *slot = self.expired(timer, now);
            }
        }
        actions.into_iter().flatten()
    }

    fn expired(&mut self, timer: Timer, now: Instant) -> Option<TimerAction> {
        match timer {
            Timer::RetransmitHandshake => {
                if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    // Give up: nothing to keep alive any more, and the keys go in 540 s unless
                    // that is already arranged.
                    self.stop(Timer::SendKeepalive);
                    if !self.is_set(Timer::ZeroKeyMaterial) {
                        self.set(Timer::ZeroKeyMaterial, now + ZERO_KEY_MATERIAL_AFTER);
                    }
                    Some(TimerAction::GiveUp)
                } else {
                    self.handshake_attempts += 1;
                    Some(TimerAction::RetransmitInitiation)
                }
            }
            Timer::SendKeepalive => Some(TimerAction::SendKeepalive),
            Timer::NewHandshake => Some(TimerAction::NewHandshake),
            Timer::ZeroKeyMaterial => Some(TimerAction::ZeroKeyMaterial),
            Timer::PersistentKeepalive => {
                (self.persistent_keepalive > 0).then_some(TimerAction::PersistentKeepalive)
            }
        }
    }

    /// After the keepalive of [`TimerAction::SendKeepalive`] went out (which cancelled the
    /// timer): if more data arrived meanwhile, owe another keepalive in 10 s.
    pub fn keepalive_sent(&mut self, now: Instant) {
        if core::mem::take(&mut self.need_another_keepalive) {
            self.set(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        }
    }
}

/// A small non-cryptographic generator for timer jitter, seeded from the device's CSPRNG when
/// the peer is created, so that the data path never needs the caller's RNG.
#[derive(Clone, Debug)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// Uniform in [0, MAX_JITTER).
    fn next(&mut self) -> Duration {
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
    use crate::constants::REKEY_AFTER_TIME;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fired(t: &mut Timers, now: Instant) -> alloc::vec::Vec<TimerAction> {
        t.fire(now).collect()
    }

    const T0: Instant = Instant::from_nanos(1_000_000_000);

    #[test]
    fn data_sent_without_answer_starts_a_handshake_after_15s() {
        let mut t = Timers::new(1);
        t.data_sent(T0);
        let at = t.deadline(Timer::NewHandshake).expect("armed");
        assert!(at >= T0 + secs(15) && at < T0 + secs(15) + MAX_JITTER);
        // More data does not push it back.
        t.data_sent(T0 + secs(3));
        assert_eq!(t.deadline(Timer::NewHandshake), Some(at));
        assert_eq!(fired(&mut t, at - Duration::from_nanos(1)), []);
        assert_eq!(fired(&mut t, at), [TimerAction::NewHandshake]);
        assert_eq!(t.next(), None);
        // An answer cancels it.
        t.data_sent(T0);
        t.authenticated_packet_received();
        assert_eq!(t.next(), None);
    }

    #[test]
    fn passive_keepalive_and_another_one() {
        let mut t = Timers::new(2);
        t.data_received(T0);
        assert_eq!(t.deadline(Timer::SendKeepalive), Some(T0 + secs(10)));
        // Data while it runs: the deadline stays, another keepalive is owed after it.
        t.data_received(T0 + secs(4));
        assert_eq!(fired(&mut t, T0 + secs(10)), [TimerAction::SendKeepalive]);
        t.authenticated_packet_sent(); // the keepalive itself
        t.keepalive_sent(T0 + secs(10));
        assert_eq!(t.deadline(Timer::SendKeepalive), Some(T0 + secs(20)));
        assert_eq!(fired(&mut t, T0 + secs(20)), [TimerAction::SendKeepalive]);
        t.authenticated_packet_sent();
        t.keepalive_sent(T0 + secs(20));
        assert_eq!(t.next(), None, "only one extra keepalive");
        // Anything we send cancels the keepalive that was owed.
        t.data_received(T0);
        t.authenticated_packet_sent();
        assert_eq!(t.next(), None);
    }

    #[test]
    fn retransmits_18_times_then_gives_up_and_arms_key_erasure() {
        let mut t = Timers::new(3);
        let mut now = T0;
        t.handshake_initiated(now);
        let mut retries = 0;
        loop {
            now = t.deadline(Timer::RetransmitHandshake).expect("armed");
            match fired(&mut t, now).as_slice() {
                [TimerAction::RetransmitInitiation] => {
                    retries += 1;
                    t.handshake_initiated(now);
                }
                [TimerAction::GiveUp] => break,
                other => panic!("{other:?}"),
            }
        }
        // The kernel: "after MAX_TIMER_HANDSHAKES + 2 attempts, giving up" = 1 + 19 sent.
        assert_eq!(retries, MAX_TIMER_HANDSHAKES + 1);
        assert_eq!(
            t.deadline(Timer::ZeroKeyMaterial),
            Some(now + ZERO_KEY_MATERIAL_AFTER)
        );
        assert!(!t.is_set(Timer::SendKeepalive));
        // A completed handshake resets the count.
        t.handshake_initiated(now);
        t.handshake_complete();
        assert!(!t.is_set(Timer::RetransmitHandshake));
    }

    #[test]
    fn persistent_keepalive_follows_traffic_and_turns_off() {
        let mut t = Timers::new(4);
        t.authenticated_packet_traversal(T0);
        assert_eq!(t.next(), None, "off by default");
        t.set_persistent_keepalive(25);
        t.authenticated_packet_traversal(T0);
        assert_eq!(t.deadline(Timer::PersistentKeepalive), Some(T0 + secs(25)));
        t.authenticated_packet_traversal(T0 + secs(5));
        assert_eq!(t.deadline(Timer::PersistentKeepalive), Some(T0 + secs(30)));
        assert_eq!(
            fired(&mut t, T0 + secs(30)),
            [TimerAction::PersistentKeepalive]
        );
        t.authenticated_packet_traversal(T0 + secs(30));
        t.set_persistent_keepalive(0);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn rekey_on_receive_once_per_session() {
        let mut t = Timers::new(5);
        assert!(!t.rekey_on_receive(true, REKEY_AFTER_TIME));
        assert!(!t.rekey_on_receive(false, REKEY_ON_RECEIVE_AGE));
        assert!(t.rekey_on_receive(true, REKEY_ON_RECEIVE_AGE));
        assert!(!t.rekey_on_receive(true, REKEY_ON_RECEIVE_AGE + secs(1)));
        t.handshake_complete();
        assert!(t.rekey_on_receive(true, REKEY_ON_RECEIVE_AGE));
    }

    #[test]
    fn several_expired_fire_in_table_order() {
        let mut t = Timers::new(6);
        t.set_persistent_keepalive(1);
        t.authenticated_packet_traversal(T0);
        t.data_received(T0);
        t.session_derived(T0);
        t.handshake_initiated(T0);
        let all = fired(&mut t, T0 + ZERO_KEY_MATERIAL_AFTER);
        assert_eq!(
            all,
            [
                TimerAction::ZeroKeyMaterial,
                TimerAction::RetransmitInitiation,
                TimerAction::SendKeepalive,
                TimerAction::PersistentKeepalive
            ]
        );
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
