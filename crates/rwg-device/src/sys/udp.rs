//! UDP socket options std does not offer: IPV6_V6ONLY before bind, SO_MARK.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

/// Creates a UDP socket for `addr`'s family and binds it. IPv6 sockets are IPv6-only, so that an
/// IPv4 socket can hold the same port.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket creation; the result is checked.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded; the descriptor is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if family == libc::AF_INET6 {
        set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    set_buffer_sizes(&fd);
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: `sa` is a valid sockaddr_in and the length passed is its size.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            })?;
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: `sa` is a valid sockaddr_in6 and the length passed is its size.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            })?;
        }
    }
    Ok(UdpSocket::from(fd))
}

/// Socket buffer size asked for: at the default ~200 KiB, a pause of ~1 ms at 600 Mbit/s
/// overflows the receive buffer and TCP inside the tunnel backs off (measured in BENCHMARKS.md).
pub(crate) const SOCKET_BUFFER: libc::c_int = 7 << 20;

/// Raises the send and receive buffers to [`SOCKET_BUFFER`]: the FORCE variants ignore the
/// system maximum (root, which the daemon is); otherwise the plain ones, which the kernel caps at
/// `net.core.[rw]mem_max`. Failing both keeps the defaults: slower, not broken.
fn set_buffer_sizes(fd: &impl AsRawFd) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = set_int_option(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
}

/// Reads an integer socket option (tests).
#[cfg(test)]
pub(crate) fn int_option(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` is the size of `value`.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets SO_MARK (the fwmark routing rules match on); 0 clears it. Needs CAP_NET_ADMIN.
pub(crate) fn set_mark(sock: &impl AsRawFd, mark: u32) -> io::Result<()> {
    set_int_option(sock, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// Reads SO_MARK back (for tests and diagnostics).
pub(crate) fn mark(sock: &impl AsRawFd) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` is the size of `value`.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value as u32)
}

fn set_int_option(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call and the length is its size.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}
