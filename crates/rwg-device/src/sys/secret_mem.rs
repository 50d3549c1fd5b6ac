//! Pages of their own for key material that passes through the daemon itself (the
//! configuration socket's buffers: `set` requests carry private and preshared keys in hex, and
//! `get` replies send them back).
//!
//! A [`Region`] is taken from `memfd_secret(2)` where the kernel offers it (the pages are then
//! locked, and gone from the kernel's direct map, so even the kernel does not read them by
//! accident), and otherwise is an anonymous mapping that is kept out of core dumps
//! (`MADV_DONTDUMP`), not copied into child processes (`MADV_WIPEONFORK`) and locked in RAM
//! (`mlock`) when `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK` allow. Every step after the mapping itself
//! is best effort: what the system refuses is reported once at debug level, never as an error.
//! The bytes are overwritten with zeros (volatile writes, `zeroize`) before the pages are
//! unmapped.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

/// How a region's pages were obtained and protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Protection {
    /// From `memfd_secret(2)`: locked and out of the kernel's direct map.
    pub(crate) secret: bool,
    /// Locked in RAM (never written to swap).
    pub(crate) locked: bool,
    /// Excluded from core dumps.
    pub(crate) no_dump: bool,
}

/// Whether `memfd_secret` has failed once (then it is not tried again: it fails the same way).
static NO_SECRETMEM: AtomicBool = AtomicBool::new(false);
/// Whether the degraded protections were reported already.
static REPORTED_SECRETMEM: AtomicBool = AtomicBool::new(false);
static REPORTED_MLOCK: AtomicBool = AtomicBool::new(false);

/// Logs `what` at debug level the first time `flag` is seen unset.
fn report_once(flag: &AtomicBool, what: &str, error: &io::Error) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::debug!(%error, "{what}");
    }
}

/// Read-write pages mapped for one owner; zeroed and unmapped on drop.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    protection: Protection,
}

// SAFETY: a Region is the only handle to its mapping (nothing else knows the address), so
// moving it to another thread moves the exclusive access with it.
unsafe impl Send for Region {}
// SAFETY: shared references only read the bytes (`as_slice`); writing needs `&mut self`.
unsafe impl Sync for Region {}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

impl Region {
    /// At least `min_len` bytes (rounded up to whole pages; at least one page), all zero.
    pub(crate) fn new(min_len: usize) -> io::Result<Region> {
        let page = page_size();
        let len = min_len
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        if !NO_SECRETMEM.load(Ordering::Relaxed) {
            match Region::secret(len) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    // Not built in, switched off (`secretmem.enable=0`) or forbidden (seccomp):
                    // it will fail the same way next time. Over the lock limit (EAGAIN) or out
                    // of memory, it may work later.
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::EACCES)
                    ) {
                        NO_SECRETMEM.store(true, Ordering::Relaxed);
                    }
                    report_once(
                        &REPORTED_SECRETMEM,
                        "memfd_secret unavailable; key buffers use locked anonymous pages",
                        &e,
                    );
                }
            }
        }
        Region::anonymous(len)
    }

    fn secret(len: usize) -> io::Result<Region> {
        // SAFETY: memfd_secret takes a flags word and returns a new descriptor or -1; no
        // memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC as libc::c_long) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = fd as libc::c_int;
        // SAFETY: `fd` is the descriptor just created, owned here and closed below.
        let sized = unsafe { libc::ftruncate(fd, len as libc::off_t) };
        let result = if sized < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a fresh shared mapping of the whole (just sized) file at an address the
            // kernel picks; it aliases no Rust object.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                Ok(p)
            }
        };
        // The mapping keeps the memory alive; the descriptor is no longer needed.
        // SAFETY: `fd` is ours and not used after this.
        unsafe { libc::close(fd) };
        let p = result?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Region {
            ptr,
            len,
            // Secret memory is never dumped, swapped, or shared with a child.
            protection: Protection {
                secret: true,
                locked: true,
                no_dump: true,
            },
        })
    }

    fn anonymous(len: usize) -> io::Result<Region> {
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; it aliases
        // no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        // SAFETY: changes how the kernel dumps the mapping made above (owned here), over
        // exactly its length; no Rust object lives there yet.
        let no_dump = unsafe { libc::madvise(p, len, libc::MADV_DONTDUMP) } == 0;
        // Linux 4.14+; older kernels refuse with EINVAL, and the daemon does not fork anyway.
        // SAFETY: as above; the advice only affects a future child's copy of the mapping.
        let _ = unsafe { libc::madvise(p, len, libc::MADV_WIPEONFORK) };
        // SAFETY: locks the pages of the mapping made above; changes no memory contents.
        let locked = unsafe { libc::mlock(p, len) } == 0;
        if !locked {
            report_once(
                &REPORTED_MLOCK,
                "cannot lock key buffers in RAM (RLIMIT_MEMLOCK, no CAP_IPC_LOCK); they may be swapped",
                &io::Error::last_os_error(),
            );
        }
        Ok(Region {
            ptr,
            len,
            protection: Protection {
                secret: false,
                locked,
                no_dump,
            },
        })
    }

    /// The usable length (whole pages).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// What the system granted.
    #[cfg(test)]
    pub(crate) fn protection(&self) -> Protection {
        self.protection
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, initialized (zero-filled by the kernel,
        // then only written through `as_mut_slice`), alive until drop, and no `&mut` exists
        // while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Volatile writes that the compiler may not remove as dead stores.
        self.as_mut_slice().zeroize();
        #[cfg(test)]
        tests::record_wiped(self.as_slice());
        // SAFETY: unmaps exactly the mapping this Region owns; no reference into it outlives
        // `self` (slices borrow `self`). munmap also drops the lock.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the contents.
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("protection", &self.protection)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Regions whose bytes were not all zero right before they were unmapped.
    static UNWIPED: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    pub(crate) fn record_wiped(bytes: &[u8]) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        if bytes.iter().any(|&b| b != 0) {
            UNWIPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (regions dropped, regions dropped with non-zero bytes) so far, process-wide.
    pub(crate) fn drop_counts() -> (usize, usize) {
        (
            DROPPED.load(Ordering::Relaxed),
            UNWIPED.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_region_is_whole_zeroed_pages_and_wiped_before_unmapping() {
        let page = page_size();
        let mut r = Region::new(1).expect("map");
        assert_eq!(r.len(), page);
        assert!(r.as_slice().iter().all(|&b| b == 0));
        r.as_mut_slice().fill(0xa5);
        assert!(r.as_slice().iter().all(|&b| b == 0xa5));
        let p = r.protection();
        // Whatever the limits, the pages are never in a core dump.
        assert!(p.no_dump, "{p:?}");
        let (before, unwiped_before) = drop_counts();
        drop(r);
        let (after, unwiped_after) = drop_counts();
        assert!(after > before);
        assert_eq!(unwiped_after, unwiped_before);
        assert_eq!(Region::new(page + 1).expect("map").len(), 2 * page);
    }

    /// The anonymous fallback (what a kernel without secretmem gets) works on its own.
    #[test]
    fn anonymous_fallback_keeps_pages_out_of_dumps() {
        let mut r = Region::anonymous(page_size()).expect("map");
        r.as_mut_slice()[0] = 1;
        assert!(r.protection().no_dump);
        assert!(!r.protection().secret);
    }
}
