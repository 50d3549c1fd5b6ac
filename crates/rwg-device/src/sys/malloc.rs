//! Large blocks on mappings of their own: a global allocator for processes whose large buffers
//! come and go (`rwg proxy`'s per-connection socket buffers).
//!
//! glibc's `mmap` threshold is not enough for that, even fixed with `mallopt`: it only decides
//! how the heap grows. A large request that fits in free heap space (what a round of closed
//! connections leaves behind) is carved out of it, and `calloc` then writes zeros over all of
//! it, so every page of the buffer is resident from the start, and stays with the heap after
//! it is freed. A mapping of its own costs only the pages written, and all of them go back to
//! the system when it is freed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Blocks of this size and larger (with an alignment a page satisfies) are mapped.
pub(crate) const LARGE: usize = 128 * 1024;
/// The smallest page size of Linux: every mapping is aligned to at least this.
const MIN_PAGE: usize = 4096;

/// The global allocator: blocks of [`LARGE`] bytes and more each get an anonymous private
/// mapping (`mmap`, `mremap`, `munmap`); everything else is the system allocator's.
///
/// Which one serves a block depends on its layout alone, so `dealloc` and `realloc`, which get
/// the layout back, always hand a block to the allocator it came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapLarge;

fn mapped(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MIN_PAGE
}

/// A fresh zero-filled mapping of `size` bytes, or null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping at an address the kernel picks: no existing
    // memory is affected. The result is checked before use.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: blocks below the threshold are the system allocator's, with the caller's layout
// forwarded unchanged. Larger ones are whole mappings of at least `layout.size()` bytes,
// page-aligned (which satisfies any alignment up to `MIN_PAGE`, the only ones mapped), zero-
// filled by the kernel, and unmapped with the same length when freed; `mapped` picks the same
// side for a block at allocation and at release because both see the same layout.
unsafe impl GlobalAlloc for MapLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract (non-zero size) is passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // Anonymous mappings read as zeros: nothing to write, no page touched.
            map(layout.size())
        } else {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: `ptr` is a live block from `alloc` with this layout (the caller's
            // contract), so it is the start of our mapping of `layout.size()` bytes; nothing
            // uses it after this.
            let result = unsafe { libc::munmap(ptr.cast(), layout.size()) };
            debug_assert_eq!(result, 0, "munmap of a block we mapped");
        } else {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`, does
        // not overflow `isize`, which is what a `Layout` needs.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(&layout), mapped(&new_layout)) {
            // SAFETY: the caller's contract is passed on.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` is the start of our mapping of `layout.size()` bytes. The
                // kernel moves or resizes it as a whole; on failure the old mapping is left
                // as it was, as `realloc` requires.
                let p = unsafe {
                    libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // Crossing the threshold: a block from the other side, the contents copied.
                // SAFETY: `new_layout` is valid and has a non-zero size (the caller's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are live, distinct, and at least this long; the old
                    // one is freed with its own layout and not used again.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// How many of the pages of `[p, p + len)` are resident, or `None` if part of the range is
/// not mapped (`mincore`). `p` must be page-aligned.
#[cfg(test)]
pub(crate) fn resident_pages(p: *const u8, len: usize) -> Option<usize> {
    let pages = len.div_ceil(MIN_PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of the range and writes one byte per page
    // into `vec`, which has room for them (the page size is MIN_PAGE on the hosts tests run).
    let rc = unsafe { libc::mincore(p.cast_mut().cast(), len, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().filter(|b| **b & 1 != 0).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 512 * 1024;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("layout")
    }

    /// What made `rwg proxy` grow: free heap space (left by many small blocks), then a large
    /// zeroed block. From glibc, even with a fixed threshold, it would be carved out of that
    /// space and written with zeros, every page resident; here it is a fresh mapping that
    /// costs nothing until written, and is gone once freed.
    #[test]
    fn a_large_zeroed_block_costs_no_memory_until_written_and_is_given_back() {
        let small: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 8192]).collect();
        let pin = std::hint::black_box(vec![2u8; 64]);
        drop(small);
        // SAFETY: a non-zero size; the block is freed below with the same layout.
        let p = unsafe { MapLarge.alloc_zeroed(layout(BLOCK)) };
        assert!(!p.is_null());
        assert_eq!(p as usize % MIN_PAGE, 0);
        assert_eq!(resident_pages(p, BLOCK), Some(0), "no page written yet");
        // SAFETY: `p` is a live block of BLOCK bytes.
        let block = unsafe { std::slice::from_raw_parts_mut(p, BLOCK) };
        assert!(block.iter().all(|b| *b == 0));
        block[300 * 1024] = 7;
        assert!(resident_pages(p, BLOCK).is_some_and(|n| n >= 1));
        // SAFETY: allocated above with this layout; not used after.
        unsafe { MapLarge.dealloc(p, layout(BLOCK)) };
        assert_eq!(resident_pages(p, BLOCK), None, "the mapping is gone");
        drop(pin);
    }

    #[test]
    fn alignment_beyond_a_page_is_left_to_the_system_allocator_and_honoured() {
        let wide = Layout::from_size_align(BLOCK, 2 * 1024 * 1024).expect("layout");
        for _ in 0..4 {
            // SAFETY: non-zero size; freed below with the same layout.
            let q = unsafe { MapLarge.alloc(wide) };
            assert!(!q.is_null());
            assert_eq!(q as usize % wide.align(), 0);
            // SAFETY: as above.
            unsafe { MapLarge.dealloc(q, wide) };
        }
    }

    #[test]
    fn realloc_keeps_contents_across_the_threshold() {
        let fill = |p: *mut u8, len: usize| {
            // SAFETY: `p` is a live block of at least `len` bytes.
            let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
            for (i, b) in s.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
        };
        let check = |p: *mut u8, len: usize| {
            // SAFETY: `p` is a live block of at least `len` bytes, initialized up to `len`.
            let s = unsafe { std::slice::from_raw_parts(p, len) };
            s.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8)
        };
        let sizes = [1000, LARGE, 3 * LARGE + 17, 2 * LARGE, LARGE - 1, 10];
        // SAFETY: non-zero size.
        let mut p = unsafe { MapLarge.alloc(layout(sizes[0])) };
        assert!(!p.is_null());
        fill(p, sizes[0]);
        for pair in sizes.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            // SAFETY: `p` is live with `layout(old)`; `new` is non-zero and small.
            p = unsafe { MapLarge.realloc(p, layout(old), new) };
            assert!(!p.is_null());
            assert!(check(p, old.min(new)), "{old} -> {new} kept the contents");
            if mapped(&layout(new)) {
                assert_eq!(p as usize % MIN_PAGE, 0);
            }
            fill(p, new);
        }
        // SAFETY: `p` is live with the last layout.
        unsafe { MapLarge.dealloc(p, layout(sizes[sizes.len() - 1])) };
    }
}
