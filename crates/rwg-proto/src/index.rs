//! The table of local indices (PROTOCOL.md §7).
//!
//! Every handshake and every keypair is known to the peer by a 32-bit index that we chose: it is
//! the `sender_index` of our handshake messages and the `receiver_index` of everything the peer
//! sends back. Indices are random, so that they reveal nothing (how many sessions we have, or
//! which came before which) and cannot be guessed by an off-path attacker, and unique among the
//! live entries, so that a received index finds exactly one handshake or keypair.
//!
//! A `BTreeMap` keeps lookups at O(log n) with no hashing: keys are random already, and the table
//! needs neither a hasher seed nor a dependency for it.

use alloc::collections::btree_map::{BTreeMap, Entry};

use rand_core::CryptoRngCore;

/// Values (handshakes, keypairs, or references to them) by their random local index.
#[derive(Debug, Clone)]
pub struct IndexTable<T> {
    map: BTreeMap<u32, T>,
}

impl<T> IndexTable<T> {
    /// An empty table.
    pub const fn new() -> Self {
        IndexTable {
            map: BTreeMap::new(),
        }
    }

    /// Stores `value` under a fresh random index and returns the index.
    ///
    /// Draws until the index is unused; the table is a vanishing fraction of the 2^32 indices, so
    /// this nearly always takes one draw. Any u32, 0 included, may be returned.
    pub fn insert(&mut self, rng: &mut dyn CryptoRngCore, value: T) -> u32 {
        loop {
            let index = rng.next_u32();
            if let Entry::Vacant(slot) = self.map.entry(index) {
                slot.insert(value);
                return index;
            }
        }
    }

    /// The value under `index`.
    pub fn get(&self, index: u32) -> Option<&T> {
        self.map.get(&index)
    }

    /// The value under `index`, mutably.
    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.map.get_mut(&index)
    }

    /// Removes and returns the value under `index`; the index may then be drawn again.
    pub fn remove(&mut self, index: u32) -> Option<T> {
        self.map.remove(&index)
    }

    /// The number of indices in use.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no index is in use.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keeps only the entries for which `keep(index, value)` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &mut T) -> bool) {
        self.map.retain(|&index, value| keep(index, value));
    }
}

impl<T> Default for IndexTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(0x5eed)
    }

    #[test]
    fn insert_get_remove() {
        let mut rng = rng();
        let mut t = IndexTable::new();
        assert!(t.is_empty());
        let a = t.insert(&mut rng, "a");
        let b = t.insert(&mut rng, "b");
        assert_ne!(a, b);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.get(b), Some(&"b"));

        if let Some(v) = t.get_mut(a) {
            *v = "A";
        }
        assert_eq!(t.get(a), Some(&"A"));

        assert_eq!(t.remove(a), Some("A"));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn indices_are_the_rng_draws() {
        // The same seed gives the same indices: the table adds no randomness or order of its own.
        let mut t = IndexTable::new();
        let got: alloc::vec::Vec<u32> = (0..4).map(|i| t.insert(&mut rng(), i)).collect();
        // Each insert gets a fresh copy of the same RNG, so insert k skips the k indices already
        // taken and returns draw k of the stream.
        let mut r = rng();
        let stream: alloc::vec::Vec<u32> = (0..4).map(|_| r.next_u32()).collect();
        assert_eq!(got, stream);
    }

    #[test]
    fn many_indices_are_unique_and_all_found() {
        let mut rng = rng();
        let mut t = IndexTable::new();
        let mut seen = BTreeSet::new();
        for i in 0..10_000u32 {
            let idx = t.insert(&mut rng, i);
            assert!(seen.insert(idx), "index {idx} handed out twice");
        }
        assert_eq!(t.len(), 10_000);
        for (n, idx) in seen.iter().enumerate() {
            assert!(t.get(*idx).is_some(), "entry {n} lost");
        }
    }

    /// An RNG that repeats itself, to force collisions.
    struct Repeating {
        values: &'static [u32],
        at: usize,
    }

    impl RngCore for Repeating {
        fn next_u32(&mut self) -> u32 {
            let v = self.values[self.at % self.values.len()];
            self.at += 1;
            v
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u32() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    // Test-only: a deliberately bad RNG, to exercise the redraw path.
    impl rand_core::CryptoRng for Repeating {}

    #[test]
    fn a_used_index_is_redrawn_and_a_freed_one_reused() {
        let mut rng = Repeating {
            values: &[7, 7, 7, 0, 7],
            at: 0,
        };
        let mut t = IndexTable::new();
        assert_eq!(t.insert(&mut rng, 'a'), 7);
        assert_eq!(
            t.insert(&mut rng, 'b'),
            0,
            "7 is taken: skipped twice, then 0"
        );
        assert_eq!(t.get(7), Some(&'a'));
        assert_eq!(t.get(0), Some(&'b'));
        assert_eq!(t.remove(7), Some('a'));
        assert_eq!(
            t.insert(&mut rng, 'c'),
            7,
            "a freed index can be drawn again"
        );
        assert_eq!(t.get(7), Some(&'c'));
    }

    #[test]
    fn retain_sees_index_and_value() {
        let mut rng = rng();
        let mut t = IndexTable::new();
        let idx: alloc::vec::Vec<u32> = (0..10u32).map(|i| t.insert(&mut rng, i)).collect();
        t.retain(|index, v| {
            assert_eq!(idx[*v as usize], index);
            *v += 100;
            *v % 2 == 0
        });
        assert_eq!(t.len(), 5);
        for (i, index) in idx.iter().enumerate() {
            match t.get(*index) {
                Some(v) => assert_eq!(*v, i as u32 + 100),
                None => assert_eq!(i % 2, 1),
            }
        }
    }
}
