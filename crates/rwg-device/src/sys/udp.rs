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

// ----- batches: sendmmsg/recvmmsg with UDP GSO and GRO -----

/// A `sockaddr_in`/`sockaddr_in6` for `addr`, and its length.
fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sa = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sa = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address the kernel wrote into `storage`.
fn socketaddr_from(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which fits in storage.
            let sa =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(ip.into(), u16::from_be(sa.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6, which fits in storage.
            let sa = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Room for one control message carrying an int (UDP_GRO) or a u16 (UDP_SEGMENT), with slack
/// for another we do not ask for.
const CONTROL_LEN: usize = 64;

/// Control-message buffers must be aligned like `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// Turns UDP GRO on: the kernel then hands several datagrams of one source back to back in one
/// receive, with their size in a control message.
pub(crate) fn enable_gro(sock: &impl AsRawFd) -> io::Result<()> {
    set_int_option(sock, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// One datagram, or a GSO run of datagrams of `segment` bytes (0 = a single datagram): the
/// bytes are `parts[parts_range]` of the `parts` given to [`send_mmsg`], gathered in order.
#[derive(Clone, Debug)]
pub(crate) struct OutMsg {
    pub(crate) to: SocketAddr,
    pub(crate) parts: std::ops::Range<usize>,
    pub(crate) segment: u16,
}

/// What one received message held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InMsg {
    /// Bytes received (several datagrams when `segment` is set).
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// GRO: each datagram is this long, the last possibly shorter; 0 = one datagram.
    pub(crate) segment: usize,
}

/// Per-thread room for the kernel's message headers. Holds raw pointers between calls only as
/// dead values: every call rewrites them before use.
pub(crate) struct Scratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl Scratch {
    /// Room for `n` messages per call.
    pub(crate) fn new(n: usize) -> Scratch {
        // SAFETY: these C structs are plain old data; all-zero is a valid value.
        let (hdr, iov, addr) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_storage>(),
            )
        };
        Scratch {
            hdrs: vec![hdr; n],
            iovs: vec![iov; n],
            addrs: vec![addr; n],
            controls: vec![Control([0; CONTROL_LEN]); n],
        }
    }

    /// How many messages one call handles at most.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

/// Sends `msgs` with one `sendmmsg`; returns how many were sent (the kernel may stop early, for
/// example at the first message that fails; that error is returned only if none was sent).
pub(crate) fn send_mmsg(
    sock: &impl AsRawFd,
    msgs: &[OutMsg],
    parts: &[&[u8]],
    scratch: &mut Scratch,
) -> io::Result<usize> {
    let n = msgs.len().min(scratch.capacity());
    let total_parts: usize = msgs[..n].iter().map(|m| m.parts.len()).sum();
    if scratch.iovs.len() < total_parts {
        // SAFETY: iovec is plain old data; all-zero is a valid value.
        scratch.iovs.resize(total_parts, unsafe { mem::zeroed() });
    }
    let mut next_iov = 0;
    for (i, m) in msgs[..n].iter().enumerate() {
        let (addr, addr_len) = sockaddr_of(&m.to);
        scratch.addrs[i] = addr;
        let first_iov = next_iov;
        for part in &parts[m.parts.clone()] {
            scratch.iovs[next_iov] = libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            };
            next_iov += 1;
        }
        let hdr = &mut scratch.hdrs[i].msg_hdr;
        hdr.msg_name = (&mut scratch.addrs[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = addr_len;
        hdr.msg_iov = &mut scratch.iovs[first_iov];
        hdr.msg_iovlen = (next_iov - first_iov) as _;
        hdr.msg_flags = 0;
        if m.segment == 0 {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        } else {
            let control = &mut scratch.controls[i].0;
            // SAFETY: CMSG_SPACE is a pure computation.
            let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            // SAFETY: msg_control points at `control` (aligned, CONTROL_LEN >= space bytes), so
            // CMSG_FIRSTHDR returns a pointer into it, with room for a header and a u16.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), m.segment);
            }
        }
        scratch.hdrs[i].msg_len = 0;
    }
    loop {
        // SAFETY: the first `n` headers point at live buffers (the `parts`, `scratch`'s
        // addresses, iovecs and controls), all valid and unmoved for the duration of the call.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                scratch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r as usize);
    }
}

/// Receives up to `out.len()` messages with one `recvmmsg` into `buf`, message `i` at
/// `buf[i * stride..][..stride]`. Returns how many arrived (`WouldBlock` if none was waiting
/// on a non-blocking socket).
pub(crate) fn recv_mmsg(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    stride: usize,
    out: &mut [InMsg],
    scratch: &mut Scratch,
) -> io::Result<usize> {
    let n = out
        .len()
        .min(scratch.capacity())
        .min(buf.len() / stride.max(1));
    if n == 0 {
        return Ok(0);
    }
    let base = buf.as_mut_ptr();
    for i in 0..n {
        scratch.iovs[i] = libc::iovec {
            // SAFETY: i * stride + stride <= buf.len(), so the offset stays inside `buf`.
            iov_base: unsafe { base.add(i * stride) }.cast(),
            iov_len: stride,
        };
        let hdr = &mut scratch.hdrs[i].msg_hdr;
        hdr.msg_name = (&mut scratch.addrs[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut scratch.iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = scratch.controls[i].0.as_mut_ptr().cast();
        hdr.msg_controllen = CONTROL_LEN as _;
        hdr.msg_flags = 0;
        scratch.hdrs[i].msg_len = 0;
    }
    let got = loop {
        // SAFETY: the first `n` headers point at live, writable buffers of the sizes given
        // (`buf` in strides, `scratch`'s addresses and controls); a null timeout is allowed.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                scratch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break r as usize;
    };
    let mut kept = 0;
    for i in 0..got {
        let Some(from) = socketaddr_from(&scratch.addrs[i]) else {
            continue;
        };
        let hdr = &scratch.hdrs[i].msg_hdr;
        let mut segment = 0;
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed
        // control messages; CMSG_FIRSTHDR/NXTHDR stay within them and return null at the end.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    segment = usize::try_from(size).unwrap_or(0);
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        // Messages are compacted so that out[..kept] describe the first `kept` slots' contents
        // in order; a slot whose address could not be read stays unused.
        out[kept] = InMsg {
            len: (scratch.hdrs[i].msg_len as usize).min(stride),
            from,
            segment,
        };
        if kept != i {
            buf.copy_within(i * stride..i * stride + out[kept].len, kept * stride);
        }
        kept += 1;
    }
    Ok(kept)
}
