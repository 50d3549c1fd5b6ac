//! The sliding replay window for transport counters (PROTOCOL.md §5).
//!
//! Every transport message carries a 64-bit counter. After a message has been authenticated, the
//! receiver accepts its counter only once, and only if it is not too far behind the highest counter
//! seen so far. The window is the kernel's: a ring of 128 blocks of 64 bits (8192 bits). Moving
//! forward clears whole blocks, so one block is always partly stale and the usable window is one
//! block smaller than the ring: [`WINDOW_SIZE`] = 8192 − 64 = 8128 counters behind the highest.
//!
//! Check the counter only after the AEAD has authenticated the packet: a forged counter must never
//! move the window.

/// Bits per ring block.
const BLOCK_BITS: u64 = u64::BITS as u64;
/// Blocks in the ring (a power of two, so a block number maps to a slot by masking).
const RING_BLOCKS: usize = 128;
/// Total bits in the ring.
const RING_BITS: u64 = RING_BLOCKS as u64 * BLOCK_BITS;

/// How far behind the highest accepted counter a counter may be and still be accepted.
pub const WINDOW_SIZE: u64 = RING_BITS - BLOCK_BITS;

/// Counters at or above this are never accepted: 2^64 − 2^13 − 1.
///
/// The sender stops using a key before its counter gets here, so the counter can never wrap and
/// the window arithmetic never overflows.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Which counters a receiving keypair has already accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest counter accepted so far (0 before any, which is harmless: counter 0 is still
    /// unmarked in the ring).
    last: u64,
    /// Bit `n % 64` of block `(n / 64) % 128` is set once counter `n` has been accepted.
    ring: [u64; RING_BLOCKS],
}

impl ReplayWindow {
    /// A window that has accepted nothing yet.
    pub const fn new() -> Self {
        ReplayWindow {
            last: 0,
            ring: [0; RING_BLOCKS],
        }
    }

    /// Accepts `counter` and records it, or returns `false` if it is a replay, too old, or at or
    /// above [`REJECT_AFTER_MESSAGES`]. A rejected counter leaves the window unchanged.
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let block = counter / BLOCK_BITS;
        if counter > self.last {
            // Entering new blocks: whatever they held belongs to counters at least a full ring
            // behind, which are now outside the window. A jump of a whole ring or more clears all.
            let current = self.last / BLOCK_BITS;
            let to_clear = (block - current).min(RING_BLOCKS as u64);
            for i in 1..=to_clear {
                self.ring[slot(current + i)] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let bit = 1u64 << (counter % BLOCK_BITS);
        let word = &mut self.ring[slot(block)];
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }

    /// Whether [`check_and_update`](Self::check_and_update) would accept `counter` now, without
    /// recording it.
    pub fn would_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter > self.last {
            // Bits above `last` are never set: a block is cleared when the window moves into it.
            return true;
        }
        if self.last - counter > WINDOW_SIZE {
            return false;
        }
        self.ring[slot(counter / BLOCK_BITS)] & (1u64 << (counter % BLOCK_BITS)) == 0
    }
}

/// The ring slot of a block number.
fn slot(block: u64) -> usize {
    // Masking keeps the value below RING_BLOCKS, so the cast cannot truncate.
    (block & (RING_BLOCKS as u64 - 1)) as usize
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    // The 128-word ring is noise in a log; the highest counter is what a reader wants.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// One past the window: the first counter that a fresh window accepts but that pushes
    /// counter 0 out of reach.
    const LIM: u64 = WINDOW_SIZE + 1;
    const REJ: u64 = REJECT_AFTER_MESSAGES;

    /// Runs `steps` on one window, checking `would_accept` agrees before each step.
    fn run(name: &str, w: &mut ReplayWindow, steps: &[(u64, bool)]) {
        for (i, &(counter, expected)) in steps.iter().enumerate() {
            assert_eq!(
                w.would_accept(counter),
                expected,
                "{name} step {}: would_accept({counter})",
                i + 1
            );
            assert_eq!(
                w.check_and_update(counter),
                expected,
                "{name} step {}: check_and_update({counter})",
                i + 1
            );
        }
    }

    /// The scenario of the kernel's `selftest/counter.c`, step by step: in order, duplicates,
    /// late arrivals, the exact window edge, jumps, and the message limit.
    #[test]
    fn counter_table() {
        #[rustfmt::skip]
        let steps: [(u64, bool); 34] = [
            /*  1 */ (0, true),             // the first counter, 0, is valid
            /*  2 */ (1, true),
            /*  3 */ (1, false),            // duplicate
            /*  4 */ (9, true),             // a gap
            /*  5 */ (8, true),             // late, filling the gap
            /*  6 */ (7, true),
            /*  7 */ (7, false),
            /*  8 */ (LIM, true),           // jump: 0 is now just out of the window
            /*  9 */ (LIM - 1, true),
            /* 10 */ (LIM - 1, false),
            /* 11 */ (LIM - 2, true),
            /* 12 */ (2, true),             // exactly WINDOW_SIZE - 1 behind
            /* 13 */ (2, false),
            /* 14 */ (LIM + 16, true),
            /* 15 */ (3, false),            // now too old
            /* 16 */ (LIM + 16, false),
            /* 17 */ (LIM * 4, true),       // a jump of several blocks
            /* 18 */ (LIM * 4 - (LIM - 1), true), // exactly WINDOW_SIZE behind: the edge
            /* 19 */ (10, false),
            /* 20 */ (LIM * 4 - LIM, false),       // one past the edge
            /* 21 */ (LIM * 4 - (LIM + 1), false),
            /* 22 */ (LIM * 4 - (LIM - 2), true),
            /* 23 */ (LIM * 4 + 1 - LIM, false),   // the edge counter again: a duplicate
            /* 24 */ (0, false),
            /* 25 */ (REJ, false),          // the limit itself is never valid
            /* 26 */ (REJ - 1, true),       // the last valid counter
            /* 27 */ (REJ, false),
            /* 28 */ (REJ - 1, false),
            /* 29 */ (REJ - 2, true),
            /* 30 */ (REJ + 1, false),
            /* 31 */ (REJ + 2, false),
            /* 32 */ (REJ - 2, false),
            /* 33 */ (REJ - 3, true),
            /* 34 */ (0, false),
        ];
        run("table", &mut ReplayWindow::new(), &steps);
    }

    /// The bulk runs: fill the whole window in both directions, then probe both of its ends.
    #[test]
    fn bulk_runs() {
        // Ascending 1..=W, then 0 is exactly W behind (valid once).
        let mut w = ReplayWindow::new();
        for n in 1..=WINDOW_SIZE {
            assert!(w.check_and_update(n), "ascending 1..=W at {n}");
        }
        run("ascending from 1", &mut w, &[(0, true), (0, false)]);

        // Ascending 2..=W+1: 1 is the edge, 0 is one past it.
        let mut w = ReplayWindow::new();
        for n in 2..=WINDOW_SIZE + 1 {
            assert!(w.check_and_update(n), "ascending 2..=W+1 at {n}");
        }
        run("ascending from 2", &mut w, &[(1, true), (0, false)]);

        // Descending W..=0: every counter lands inside the window set by the first.
        let mut w = ReplayWindow::new();
        for n in (0..=WINDOW_SIZE).rev() {
            assert!(w.check_and_update(n), "descending W..=0 at {n}");
        }

        // Descending W+1..=1: 0 is then one past the edge.
        let mut w = ReplayWindow::new();
        for n in (1..=WINDOW_SIZE + 1).rev() {
            assert!(w.check_and_update(n), "descending W+1..=1 at {n}");
        }
        run("descending from W+1", &mut w, &[(0, false)]);

        // Descending W..=1, then W+1 moves the window so that 0 falls out.
        let mut w = ReplayWindow::new();
        for n in (1..=WINDOW_SIZE).rev() {
            assert!(w.check_and_update(n), "descending W..=1 at {n}");
        }
        run(
            "descending then forward",
            &mut w,
            &[(WINDOW_SIZE + 1, true), (0, false)],
        );

        // Descending W..=1, then 0 (still at the edge), then W+1.
        let mut w = ReplayWindow::new();
        for n in (1..=WINDOW_SIZE).rev() {
            assert!(w.check_and_update(n), "descending W..=1 at {n}");
        }
        run(
            "descending, edge, forward",
            &mut w,
            &[(0, true), (WINDOW_SIZE + 1, true)],
        );
    }

    /// A jump of exactly a whole ring lands on the same slots as the old counters: their bits must
    /// have been cleared, or fresh counters would be refused as replays.
    #[test]
    fn ring_aliasing_does_not_leak_old_bits() {
        let mut w = ReplayWindow::new();
        for n in 0..200 {
            assert!(w.check_and_update(n));
        }
        let base = RING_BITS;
        assert!(w.check_and_update(base + 199));
        for n in (base..base + 199).rev() {
            assert!(w.check_and_update(n), "aliased counter {n}");
        }
        // A far jump (many rings) clears everything too.
        let far = 1 << 40;
        assert!(w.check_and_update(far));
        for n in far - WINDOW_SIZE..far {
            assert!(w.check_and_update(n), "after far jump: {n}");
        }
        assert!(!w.check_and_update(far - WINDOW_SIZE - 1));
    }

    /// Naive reference: every accepted counter in a set, and the highest.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        max: Option<u64>,
    }

    impl Model {
        fn accepts(&self, n: u64) -> bool {
            n < REJECT_AFTER_MESSAGES
                && !self.seen.contains(&n)
                && self.max.is_none_or(|m| n > m || m - n <= WINDOW_SIZE)
        }

        fn check_and_update(&mut self, n: u64) -> bool {
            let ok = self.accepts(n);
            if ok {
                self.seen.insert(n);
                self.max = self.max.max(Some(n));
            }
            ok
        }
    }

    /// Counters near interesting places: small, around a moving front (in and out of the window,
    /// a ring apart), and near the limit.
    fn counters() -> impl Strategy<Value = Vec<u64>> {
        let one = prop_oneof![
            4 => 0u64..300,
            4 => 0u64..3 * RING_BITS,
            2 => (0u64..4, 0u64..200).prop_map(|(k, d)| k * RING_BITS + d),
            1 => any::<u64>(),
            1 => (0u64..20_000).prop_map(|d| u64::MAX - d),
        ];
        proptest::collection::vec(one, 0..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_reference_model(seq in counters()) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for n in seq {
                let expected = m.accepts(n);
                prop_assert_eq!(w.would_accept(n), expected, "would_accept({})", n);
                prop_assert_eq!(w.check_and_update(n), expected, "check_and_update({})", n);
                m.check_and_update(n);
            }
        }

        /// A sequence that walks forward with local reordering, as a real link does: every counter
        /// delivered once is accepted, and a second delivery never is.
        #[test]
        fn reordered_stream(jitter in proptest::collection::vec(0u64..64, 1..500), start in 0u64..1 << 20) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for (i, j) in jitter.iter().enumerate() {
                let n = start + i as u64 * 8 + j;
                let expected = m.check_and_update(n);
                prop_assert_eq!(w.check_and_update(n), expected);
                prop_assert!(!w.check_and_update(n));
            }
        }
    }
}
