//! Handshake rate limiting per source address (PROTOCOL.md §4).
//!
//! Under load, a responder processes a handshake message only if its source has a token left. Each
//! source has a token bucket that refills at 20 messages per second and holds at most 5 (counted in
//! nanoseconds, as the kernel does: a message costs 50 ms, the bucket holds 250 ms, and a new
//! source starts with 250 − 50 ms because its first message is charged at once). IPv6 sources are
//! grouped by /64, since one host usually owns a whole /64 and could otherwise rotate addresses to
//! get a fresh bucket per message.
//!
//! Memory is bounded without a timer: the table holds at most [`MAX_ENTRIES`] sources, entries idle
//! for more than a second (whose buckets would be full again anyway) are collected during
//! [`RateLimiter::allow`] at most once per second, and a full table refuses new sources.

use alloc::collections::BTreeMap;
use core::net::IpAddr;
use core::time::Duration;

use crate::time::Instant;

use crate::constants::{
    RATE_LIMIT_BURST as PACKETS_BURSTABLE, RATE_LIMIT_PER_SECOND as PACKETS_PER_SECOND,
};

/// Nanoseconds of credit one message costs.
const PACKET_COST: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
/// Nanoseconds of credit a bucket can hold.
const TOKEN_MAX: u64 = PACKET_COST * PACKETS_BURSTABLE;
/// An entry unused for longer than this is forgotten; its bucket would be full again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often `allow` sweeps idle entries.
const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// How often `allow` may sweep when the table is full. Shorter than [`COLLECT_INTERVAL`] so that
/// new sources get room soon after old ones go quiet, but not zero: a flood of new sources against
/// a full table must not make every message scan the whole table.
const FULL_COLLECT_INTERVAL: Duration = Duration::from_nanos(PACKET_COST);

/// The most sources tracked at once. Each entry is a few dozen bytes, so the table stays under a
/// megabyte or so; the kernel sizes its table from RAM, and this is the same order of magnitude.
pub const MAX_ENTRIES: usize = 16 * 1024;

/// What a bucket is keyed by: the whole IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(source: IpAddr) -> Self {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; keyed by /64 they would all
        // share one bucket, so one IPv4 flooder would starve every other IPv4 peer.
        match source.to_canonical() {
            IpAddr::V4(a) => SourceKey::V4(u32::from(a)),
            IpAddr::V6(a) => SourceKey::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Credit in nanoseconds, at most [`TOKEN_MAX`].
    tokens: u64,
    /// When the bucket was last refilled (the time of its last message).
    last_time: Instant,
}

/// Token buckets for the sources of handshake messages.
#[derive(Debug, Default)]
pub struct RateLimiter {
    table: BTreeMap<SourceKey, Bucket>,
    /// When idle entries were last swept; `None` before the first call.
    last_collect: Option<Instant>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        RateLimiter {
            table: BTreeMap::new(),
            last_collect: None,
        }
    }

    /// Whether a handshake message from `source` at time `now` may be processed; charges the
    /// source's bucket if so.
    ///
    /// Refuses a source it has no room to track (the table is full of recently active sources).
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        if self.collect_due(now, COLLECT_INTERVAL) {
            self.collect(now);
        }
        let key = SourceKey::of(source);
        if let Some(bucket) = self.table.get_mut(&key) {
            let elapsed = u64::try_from((now - bucket.last_time).as_nanos()).unwrap_or(u64::MAX);
            let tokens = bucket.tokens.saturating_add(elapsed).min(TOKEN_MAX);
            bucket.last_time = now;
            return match tokens.checked_sub(PACKET_COST) {
                Some(left) => {
                    bucket.tokens = left;
                    true
                }
                None => {
                    bucket.tokens = tokens;
                    false
                }
            };
        }
        if self.table.len() >= MAX_ENTRIES {
            if self.collect_due(now, FULL_COLLECT_INTERVAL) {
                self.collect(now);
            }
            if self.table.len() >= MAX_ENTRIES {
                return false;
            }
        }
        self.table.insert(
            key,
            Bucket {
                tokens: TOKEN_MAX - PACKET_COST,
                last_time: now,
            },
        );
        true
    }

    /// The number of sources tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn collect_due(&self, now: Instant, interval: Duration) -> bool {
        self.last_collect.is_none_or(|t| now - t >= interval)
    }

    /// Forgets sources idle for more than [`IDLE_TIMEOUT`].
    fn collect(&mut self, now: Instant) {
        self.table.retain(|_, b| now - b.last_time <= IDLE_TIMEOUT);
        self.last_collect = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    const MS: Duration = Duration::from_millis(1);

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: [u16; 8]) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        ))
    }

    fn t0() -> Instant {
        // Not zero, so nothing depends on the clock's origin.
        Instant::from_nanos(1_000_000_000_000)
    }

    /// PROTOCOL.md §9: 5 allowed, the 6th refused; 50 ms later one more; 100 ms later two more.
    #[test]
    fn vector_sequence() {
        let mut rl = RateLimiter::new();
        let src = v4(192, 0, 2, 1);
        let mut now = t0();
        for i in 0..5 {
            assert!(rl.allow(now, src), "burst message {i}");
        }
        assert!(!rl.allow(now, src), "6th message");

        now += 50 * MS;
        assert!(rl.allow(now, src));
        assert!(!rl.allow(now, src));

        now += 100 * MS;
        assert!(rl.allow(now, src));
        assert!(rl.allow(now, src));
        assert!(!rl.allow(now, src));
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let mut rl = RateLimiter::new();
        let src = v4(192, 0, 2, 1);
        let mut now = t0();
        assert!(rl.allow(now, src));
        // Well inside the idle timeout, long enough to refill many times over.
        now += 900 * MS;
        for i in 0..5 {
            assert!(rl.allow(now, src), "message {i}");
        }
        assert!(!rl.allow(now, src));
    }

    #[test]
    fn a_refused_message_costs_nothing() {
        let mut rl = RateLimiter::new();
        let src = v4(192, 0, 2, 1);
        let mut now = t0();
        for _ in 0..5 {
            assert!(rl.allow(now, src));
        }
        // Refused messages 10 ms apart must not eat the credit that accumulates meanwhile.
        for _ in 0..4 {
            now += 10 * MS;
            assert!(!rl.allow(now, src));
        }
        now += 10 * MS;
        assert!(rl.allow(now, src));
    }

    #[test]
    fn sources_are_independent() {
        let mut rl = RateLimiter::new();
        let now = t0();
        let (a, b) = (v4(192, 0, 2, 1), v4(192, 0, 2, 2));
        for _ in 0..5 {
            assert!(rl.allow(now, a));
        }
        assert!(!rl.allow(now, a));
        for _ in 0..5 {
            assert!(rl.allow(now, b));
        }
        assert!(!rl.allow(now, b));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let mut rl = RateLimiter::new();
        let now = t0();
        // Same /64, different interface identifiers: one bucket.
        for i in 0..5u16 {
            assert!(rl.allow(now, v6([0x2001, 0xdb8, 1, 2, i, 0, 0, i])));
        }
        assert!(!rl.allow(now, v6([0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3])));
        // The neighbouring /64 has its own.
        assert!(rl.allow(now, v6([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1])));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let mut rl = RateLimiter::new();
        let now = t0();
        let mapped = |d: u8| IpAddr::V6(Ipv4Addr::new(192, 0, 2, d).to_ipv6_mapped());
        for _ in 0..5 {
            assert!(rl.allow(now, mapped(1)));
        }
        assert!(
            !rl.allow(now, v4(192, 0, 2, 1)),
            "same host as the mapped form"
        );
        assert!(
            rl.allow(now, mapped(2)),
            "another IPv4 host must not share the bucket"
        );
    }

    #[test]
    fn idle_entries_are_collected() {
        let mut rl = RateLimiter::new();
        let mut now = t0();
        assert!(rl.is_empty());
        for d in 1..=10 {
            assert!(rl.allow(now, v4(192, 0, 2, d)));
        }
        assert_eq!(rl.len(), 10);

        // Exactly at the idle timeout: a sweep is due but keeps everything.
        now += 1000 * MS;
        assert!(rl.allow(now, v4(192, 0, 2, 1)));
        assert_eq!(rl.len(), 10);

        // Past it: the nine quiet sources go at the next sweep, the active one stays.
        now += 500 * MS;
        assert!(rl.allow(now, v4(192, 0, 2, 1)));
        now += 501 * MS;
        assert!(rl.allow(now, v4(198, 51, 100, 1)));
        assert_eq!(rl.len(), 2);

        // A collected source starts over with a fresh bucket.
        for _ in 0..5 {
            assert!(rl.allow(now, v4(192, 0, 2, 5)));
        }
        assert!(!rl.allow(now, v4(192, 0, 2, 5)));
    }

    #[test]
    fn sweeps_at_most_once_per_second() {
        let mut rl = RateLimiter::new();
        let mut now = t0();
        assert!(rl.allow(now, v4(10, 0, 0, 1))); // sweeps (first call), then inserts
        now += 500 * MS;
        assert!(rl.allow(now, v4(10, 0, 0, 2))); // no sweep due
        now += 600 * MS; // 1.1 s after the first sweep; 10.0.0.1 idle 1.1 s
        assert!(rl.allow(now, v4(10, 0, 0, 3))); // sweep: 10.0.0.1 goes
        assert_eq!(rl.len(), 2);
        now += 500 * MS; // 10.0.0.2 idle 1.1 s, but the last sweep was 0.5 s ago
        assert!(rl.allow(now, v4(10, 0, 0, 3)));
        assert_eq!(rl.len(), 2);
    }

    fn fill(rl: &mut RateLimiter, now: Instant, count: usize) {
        for i in 0..count as u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.allow(now, addr), "filling entry {i}");
        }
    }

    #[test]
    fn the_table_is_capped() {
        let mut rl = RateLimiter::new();
        let t0 = t0();
        let early = v4(198, 51, 100, 1);
        let first = IpAddr::V4(Ipv4Addr::from(0x0a00_0000));
        let newcomer = v4(203, 0, 113, 1);
        assert!(rl.allow(t0, early)); // the first routine sweep
        fill(&mut rl, t0 + 900 * MS, MAX_ENTRIES - 1);
        assert_eq!(rl.len(), MAX_ENTRIES);

        // Full of active sources: a new one is refused, known ones still get their tokens.
        assert!(!rl.allow(t0 + 900 * MS, newcomer));
        assert_eq!(rl.len(), MAX_ENTRIES);
        assert!(rl.allow(t0 + 1000 * MS, first));
        // This newcomer's sweep finds nothing idle for more than a second yet.
        assert!(!rl.allow(t0 + 1000 * MS, newcomer));

        // Once they are idle, a newcomer makes room by sweeping, though no routine sweep is due.
        assert!(rl.allow(t0 + 1950 * MS, newcomer));
        // Only `first` (used 950 ms ago) survived, next to the newcomer.
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn a_full_table_is_not_rescanned_for_every_newcomer() {
        let mut rl = RateLimiter::new();
        let mut now = t0();
        fill(&mut rl, now, MAX_ENTRIES);
        now += 60 * MS;
        assert!(!rl.allow(now, v4(203, 0, 113, 1))); // sweeps, nothing to free
        let swept_at = rl.last_collect;
        assert_eq!(swept_at, Some(now));
        now += 10 * MS;
        assert!(!rl.allow(now, v4(203, 0, 113, 2)));
        assert_eq!(
            rl.last_collect, swept_at,
            "swept again within FULL_COLLECT_INTERVAL"
        );
        now += FULL_COLLECT_INTERVAL;
        assert!(!rl.allow(now, v4(203, 0, 113, 3)));
        assert_eq!(rl.last_collect, Some(now));
    }
}
