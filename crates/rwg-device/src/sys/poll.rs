//! Readiness waiting and non-blocking mode for the driver's batching loops.

use std::io;
use std::os::fd::AsRawFd;

use super::cvt;

/// Sets or clears O_NONBLOCK.
pub(crate) fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor we borrow; no pointers involved.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: F_SETFL with an integer flag word on a descriptor we borrow.
        cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1 = forever). Returns whether it is
/// readable (or has an error/hang-up condition the next read will report).
pub(crate) fn wait_readable(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN, timeout_ms)
}

/// Waits until `fd` can be written to (a full socket buffer drained) or `timeout_ms` passes.
pub(crate) fn wait_writable(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLOUT, timeout_ms)
}

fn wait_for(fd: &impl AsRawFd, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd on our stack and we pass a count of exactly one.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
