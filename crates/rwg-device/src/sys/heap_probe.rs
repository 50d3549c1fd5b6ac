//! Test-only global allocator that looks for key material in heap blocks as they are freed.
//!
//! Zeroizing is invisible from safe code: once a buffer is dropped its bytes cannot be read.
//! This allocator reads them at the last moment, in `dealloc`: while a [`Probe`] is armed with
//! a byte pattern (a key, its hex spelling), every block freed by any thread is searched for it,
//! and each hit is counted. A buffer that held a key and was zeroized before being freed
//! (`Zeroizing`, the key newtypes) is not a hit; a plain `Vec`/`String`/`BufReader` buffer,
//! or the old buffer a growing `Vec` left behind, is.
//!
//! What it proves, and what not: only heap blocks freed while armed are searched. Copies on the
//! stack, in registers, in blocks still alive when the probe is disarmed (leaked ones included),
//! and in memory that is not the Rust heap (the `secret_mem` regions, which are wiped on their
//! own and tested there) are not seen. Blocks are handed out zero-filled so that reading a whole
//! block back is reading initialized memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

struct ProbeAlloc;

#[global_allocator]
static ALLOCATOR: ProbeAlloc = ProbeAlloc;

/// Longest pattern searched for.
const MAX_PATTERN: usize = 64;
/// Patterns searched for at once.
const MAX_PATTERNS: usize = 4;

static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
/// (length, bytes) of each pattern; written only while `ARMED` is false.
static PATTERNS: RwLock<[(usize, [u8; MAX_PATTERN]); MAX_PATTERNS]> =
    RwLock::new([(0, [0; MAX_PATTERN]); MAX_PATTERNS]);
/// One probe at a time (tests run on parallel threads).
static EXCLUSIVE: Mutex<()> = Mutex::new(());

fn contains(block: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty() && block.windows(pattern.len()).any(|w| w == pattern)
}

fn inspect(block: &[u8]) {
    // Readers share the lock, so frees on several threads are all searched. try_read: never
    // wait inside the allocator (the arming thread writes only while ARMED is false, and
    // allocates nothing meanwhile).
    if let Ok(patterns) = PATTERNS.try_read() {
        for (len, bytes) in patterns.iter() {
            if *len > 0 && contains(block, &bytes[..*len]) {
                HITS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// SAFETY: every method forwards to the system allocator with the caller's layout; the
// additions are zero-filling new blocks and reading a block's own bytes just before it is
// freed, both within the block.
unsafe impl GlobalAlloc for ProbeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the one `alloc_zeroed` has.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Acquire) {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes from this allocator (the
            // caller's contract), fully initialized (zero-filled at allocation, grown blocks
            // zero-filled beyond the old size in `realloc`), not yet freed.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            inspect(block);
        }
        // SAFETY: forwarded with the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A new block and a copy rather than the system's realloc, so that the old block goes
        // through `dealloc` (and is searched) and the new tail is zero-filled.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: new_size is non-zero (the caller's contract for realloc).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least min(old, new) bytes long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated by this allocator with `layout` (caller's contract).
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// An armed probe; disarmed on drop. Hold it only around the code under test.
pub(crate) struct Probe {
    _exclusive: std::sync::MutexGuard<'static, ()>,
}

impl Probe {
    /// Starts counting freed blocks that contain any of `patterns`.
    pub(crate) fn arm(patterns: &[&[u8]]) -> Probe {
        assert!(patterns.len() <= MAX_PATTERNS);
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut slots = PATTERNS.write().unwrap_or_else(|e| e.into_inner());
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = (0, [0; MAX_PATTERN]);
                if let Some(p) = patterns.get(i) {
                    assert!(!p.is_empty() && p.len() <= MAX_PATTERN);
                    slot.0 = p.len();
                    slot.1[..p.len()].copy_from_slice(p);
                }
            }
        }
        HITS.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Release);
        Probe {
            _exclusive: exclusive,
        }
    }

    /// Freed blocks that contained a pattern since arming.
    pub(crate) fn hits(&self) -> usize {
        HITS.load(Ordering::Relaxed)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe itself can fail: a plain buffer freed with a pattern in it is a hit, a
    /// zeroized one is not.
    #[test]
    fn the_probe_sees_what_plain_buffers_leave_behind() {
        let secret: &[u8] = b"probe-self-test-7f3a9c1e55d2b08";
        let probe = Probe::arm(&[secret]);
        let plain = secret.to_vec();
        drop(plain);
        assert_eq!(probe.hits(), 1);
        let wiped = zeroize::Zeroizing::new(secret.to_vec());
        drop(wiped);
        assert_eq!(probe.hits(), 1);
        // A Vec that grows leaves its old buffer behind.
        let mut growing = Vec::with_capacity(secret.len());
        growing.extend_from_slice(secret);
        growing.extend_from_slice(&[0; 4096]);
        assert_eq!(probe.hits(), 2);
        let growing = zeroize::Zeroizing::new(growing);
        drop(growing);
        assert_eq!(probe.hits(), 2);
        drop(probe);
    }
}
