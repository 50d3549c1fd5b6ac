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

/// Waits for one descriptor to become readable, like [`wait_readable`], with the interest
/// registered once (an epoll instance) instead of on every call: `poll` adds itself to the
/// descriptor's wait queue and takes itself off again each time, which on the readers' path
/// (one wait per batch, so one per packet on an idle tunnel) is measurable. Without epoll it
/// falls back to `poll`.
#[derive(Debug)]
pub(crate) struct Readable {
    fd: std::os::fd::RawFd,
    epoll: Option<std::os::fd::OwnedFd>,
}

impl Readable {
    /// Watches `fd`, which must stay open as long as this is used.
    pub(crate) fn new(fd: &impl AsRawFd) -> Readable {
        let fd = fd.as_raw_fd();
        Readable {
            fd,
            epoll: epoll_for(fd).ok(),
        }
    }

    /// Waits until the descriptor is readable or `timeout_ms` passes (-1 = forever).
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let Some(epoll) = &self.epoll else {
            return wait_for(&self.fd, libc::POLLIN, timeout_ms);
        };
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        loop {
            // SAFETY: `event` is one writable epoll_event on our stack, and we pass a count
            // of exactly one; the epoll descriptor is ours and open.
            let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut event, 1, timeout_ms) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn epoll_for(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: no pointers; a new descriptor or -1.
    let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `raw` was just returned by epoll_create1 and nothing else owns it.
    let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event the kernel copies.
    cvt(unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, fd, &mut event) })?;
    Ok(epoll)
}
