//! Every system call that needs `unsafe`, Linux only.
//!
//! The rest of the crate sees safe wrappers that own their file descriptors. Each unsafe block
//! states why it is sound; each unsafe fn has a `# Safety` section.

pub(crate) mod fd;
pub(crate) mod hardening;
#[cfg(test)]
pub(crate) mod heap_probe;
pub(crate) mod inotify;
pub(crate) mod malloc;
pub(crate) mod netlink;
pub(crate) mod poll;
pub(crate) mod sched;
pub(crate) mod secret_mem;
pub(crate) mod signals;
pub(crate) mod tun;
pub(crate) mod udp;

use std::io;

/// Turns a `-1` return of a libc call into the thread's `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] for calls that return `ssize_t`.
pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
