//! Differential: `rwg_proto::replay::ReplayWindow` against a model written from PROTOCOL.md §5
//! alone — the set of counters accepted so far, the highest one, and the rule "reject at or above
//! REJECT_AFTER_MESSAGES; accept anything above the highest; reject anything more than 8128
//! below it; otherwise accept once". `would_accept` must predict `check_and_update`, and both
//! must agree with the model on every counter.
//!
//! Input: records of a mode byte and its operand; counters are mostly chosen relative to the
//! highest one so that the window's edges, block boundaries and long jumps come up often.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use rwg_proto::replay::{ReplayWindow, REJECT_AFTER_MESSAGES, WINDOW_SIZE};

/// PROTOCOL.md §5: "window 8128", "REJECT_AFTER_MESSAGES = 2^64 − 2^13 − 1".
const DOC_WINDOW: u64 = 8128;
const DOC_REJECT: u64 = u64::MAX - (1 << 13);

struct Model {
    accepted: BTreeSet<u64>,
    /// The highest counter accepted (0 before any).
    last: u64,
}

impl Model {
    fn would_accept(&self, n: u64) -> bool {
        if n >= DOC_REJECT {
            return false;
        }
        if n > self.last {
            return true;
        }
        self.last - n <= DOC_WINDOW && !self.accepted.contains(&n)
    }

    fn check_and_update(&mut self, n: u64) -> bool {
        let ok = self.would_accept(n);
        if ok {
            self.accepted.insert(n);
            self.last = self.last.max(n);
            // Counters this far behind are refused by distance from now on: forget them.
            let floor = self.last.saturating_sub(DOC_WINDOW + 1);
            self.accepted = self.accepted.split_off(&floor);
        }
        ok
    }
}

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(WINDOW_SIZE, DOC_WINDOW);
    assert_eq!(REJECT_AFTER_MESSAGES, DOC_REJECT);
    let mut data = data;
    let mut window = ReplayWindow::new();
    let mut model = Model {
        accepted: BTreeSet::new(),
        last: 0,
    };
    for _ in 0..4096 {
        let Some((&mode, rest)) = data.split_first() else {
            break;
        };
        data = rest;
        let last = model.last;
        let counter = match mode & 7 {
            // Just ahead of the highest (a few packets, or into the next blocks).
            0 => last.wrapping_add(u64::from(take::<1>(&mut data)[0])),
            // Behind it, within a u16.
            1 => last.saturating_sub(u64::from(u16::from_le_bytes(take(&mut data)))),
            // Around the window's far edge.
            2 => last
                .saturating_sub(DOC_WINDOW)
                .wrapping_add(u64::from(take::<1>(&mut data)[0]))
                .wrapping_sub(16),
            // A jump ahead by up to 2^32 (whole rings of blocks).
            3 => last.wrapping_add(u64::from(u32::from_le_bytes(take(&mut data)))),
            // Around the rejection limit.
            4 => DOC_REJECT
                .wrapping_sub(4)
                .wrapping_add(u64::from(take::<1>(&mut data)[0] & 7)),
            // An exact block boundary ahead: last rounded to 64, plus k blocks, +-1.
            5 => {
                let [k, d] = take::<2>(&mut data);
                (last & !63)
                    .wrapping_add(u64::from(k) * 64)
                    .wrapping_add(u64::from(d % 3))
                    .wrapping_sub(1)
            }
            // Anything.
            _ => u64::from_le_bytes(take(&mut data)),
        };
        let predicted = window.would_accept(counter);
        assert_eq!(
            predicted,
            model.would_accept(counter),
            "would_accept({counter}) with highest {last}"
        );
        if mode & 8 != 0 {
            // A query only: nothing changes.
            let copy = window.clone();
            assert_eq!(window.would_accept(counter), predicted);
            assert!(copy == window);
            continue;
        }
        let got = window.check_and_update(counter);
        assert_eq!(
            got, predicted,
            "would_accept disagrees with check_and_update"
        );
        assert_eq!(
            got,
            model.check_and_update(counter),
            "check_and_update({counter}) with highest {last}"
        );
        // Refused counters leave the window as it was: the same counter is refused again.
        if !got {
            assert!(!window.would_accept(counter));
        }
    }
});
