//! A route netlink socket subscribed to link events (rtnetlink(7)), so that a change of the
//! TUN's MTU reaches the data plane when it happens instead of at the next poll.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_size};

/// `NETLINK_ROUTE` socket bound to the `RTMGRP_LINK` multicast group, non-blocking.
#[derive(Debug)]
pub(crate) struct LinkEvents {
    fd: OwnedFd,
}

impl LinkEvents {
    pub(crate) fn open() -> io::Result<LinkEvents> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: socket succeeded; the descriptor is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: `addr` is a sockaddr_nl and the length passed is its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(LinkEvents { fd })
    }

    /// One datagram of netlink messages into `buf` (`WouldBlock` when none waits; `ENOBUFS`
    /// when the kernel dropped some because we were slow).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        cvt_size(unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
    }
}

impl AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
