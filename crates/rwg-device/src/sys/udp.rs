//! UDP socket options std does not offer: IPV6_V6ONLY before bind, SO_MARK; batches with
//! their control messages (UDP GSO/GRO, and IP_PKTINFO/IPV6_PKTINFO for the sticky source
//! address).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
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
    // The local address each datagram arrived at (its IP destination), for replies to leave
    // from it. Without it the device still works, with the route's source address.
    let pktinfo = match addr {
        SocketAddr::V4(_) => set_int_option(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1),
        SocketAddr::V6(_) => set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1),
    };
    if let Err(e) = pktinfo {
        tracing::debug!(error = %e, "no packet info on the UDP socket: replies use the route's source address");
    }
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

/// Room for the control messages of one message: UDP_GRO or UDP_SEGMENT (an int or a u16)
/// and IP_PKTINFO / IPV6_PKTINFO (12 / 20 bytes), with slack for one we do not ask for.
const CONTROL_LEN: usize = 128;

/// Control-message buffers must be aligned like `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// A local address of this host that a datagram arrived at, or that one is sent from: the IP,
/// and for IPv6 link-local addresses the interface it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LocalAddr {
    pub(crate) ip: IpAddr,
    pub(crate) ifindex: u32,
}

// ----- control messages, in safe code over bytes -----
//
// The layout is the kernel's ABI (include/uapi/linux/socket.h): a `cmsghdr` (cmsg_len: size_t,
// cmsg_level: int, cmsg_type: int), its data right after the header aligned to size_t, and the
// next header at the data's end aligned to size_t. The tests compare these with libc's
// CMSG_LEN/CMSG_SPACE and with what the kernel itself writes.

const CMSG_ALIGN_TO: usize = mem::size_of::<libc::size_t>();

const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN_TO - 1) & !(CMSG_ALIGN_TO - 1)
}

/// Bytes from a header's start to its data.
const CMSG_HDR: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());

/// `CMSG_LEN(n)`: the `cmsg_len` of a message with `n` bytes of data.
const fn cmsg_len(n: usize) -> usize {
    CMSG_HDR + n
}

/// `CMSG_SPACE(n)`: the room a message with `n` bytes of data takes, padding included.
const fn cmsg_space(n: usize) -> usize {
    CMSG_HDR + cmsg_align(n)
}

/// Offset of `cmsg_level` and `cmsg_type` in the header (after the size_t length).
const CMSG_LEVEL_AT: usize = mem::size_of::<libc::size_t>();
const CMSG_TYPE_AT: usize = CMSG_LEVEL_AT + mem::size_of::<libc::c_int>();

/// `in_pktinfo`: ifindex (int), spec_dst, addr (in_addr each). `in6_pktinfo`: addr, ifindex.
const IN_PKTINFO_LEN: usize = 12;
const IN6_PKTINFO_LEN: usize = 20;

/// Appends control messages to a buffer, as the kernel expects them for `sendmsg`.
pub(crate) struct ControlWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> ControlWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> ControlWriter<'a> {
        ControlWriter { buf, len: 0 }
    }

    /// Appends one message; false (and nothing written) if it does not fit.
    pub(crate) fn push(&mut self, level: libc::c_int, kind: libc::c_int, data: &[u8]) -> bool {
        let space = cmsg_space(data.len());
        let Some(room) = self.buf.get_mut(self.len..self.len + space) else {
            return false;
        };
        room.fill(0);
        room[..CMSG_LEVEL_AT]
            .copy_from_slice(&(cmsg_len(data.len()) as libc::size_t).to_ne_bytes());
        room[CMSG_LEVEL_AT..CMSG_TYPE_AT].copy_from_slice(&level.to_ne_bytes());
        room[CMSG_TYPE_AT..CMSG_TYPE_AT + 4].copy_from_slice(&kind.to_ne_bytes());
        room[CMSG_HDR..CMSG_HDR + data.len()].copy_from_slice(data);
        self.len += space;
        true
    }

    /// Appends the source address to send from: IP_PKTINFO (`ipi_spec_dst`) or IPV6_PKTINFO.
    pub(crate) fn push_source(&mut self, source: &LocalAddr) -> bool {
        match source.ip {
            IpAddr::V4(ip) => {
                let mut info = [0u8; IN_PKTINFO_LEN];
                info[4..8].copy_from_slice(&ip.octets());
                self.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info)
            }
            IpAddr::V6(ip) => {
                let mut info = [0u8; IN6_PKTINFO_LEN];
                info[..16].copy_from_slice(&ip.octets());
                // The interface only where the address needs one to mean anything.
                let ifindex = if ip.is_unicast_link_local() {
                    source.ifindex
                } else {
                    0
                };
                info[16..20].copy_from_slice(&ifindex.to_ne_bytes());
                self.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info)
            }
        }
    }

    /// Bytes written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What the control messages of one received message said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    /// UDP_GRO: the size of each datagram (0: one datagram).
    pub(crate) segment: usize,
    /// IP_PKTINFO / IPV6_PKTINFO: the address the datagram was sent to.
    pub(crate) local: Option<LocalAddr>,
}

/// Reads the control messages the kernel wrote (`buf`: the first `msg_controllen` bytes).
/// Truncated or malformed messages end the walk; unknown ones are skipped.
pub(crate) fn parse_control(buf: &[u8]) -> Received {
    let mut out = Received::default();
    let mut at = 0;
    while let Some(hdr) = buf.get(at..at + CMSG_HDR) {
        // size_t is usize on every Linux target.
        let mut len = [0u8; mem::size_of::<usize>()];
        len.copy_from_slice(&hdr[..CMSG_LEVEL_AT]);
        let len = usize::from_ne_bytes(len);
        let int = |i: usize| i32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (level, kind) = (int(CMSG_LEVEL_AT), int(CMSG_TYPE_AT));
        let Some(data) = len
            .checked_sub(CMSG_HDR)
            .and_then(|n| buf.get(at + CMSG_HDR..at + CMSG_HDR + n))
        else {
            break;
        };
        match (level, kind) {
            (libc::SOL_UDP, libc::UDP_GRO) if data.len() >= 4 => {
                let size = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                out.segment = usize::try_from(size).unwrap_or(0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= IN_PKTINFO_LEN => {
                let ifindex = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                let ip = Ipv4Addr::new(data[8], data[9], data[10], data[11]);
                // A broadcast or multicast destination is no address to answer from.
                if !ip.is_broadcast() && !ip.is_multicast() && !ip.is_unspecified() {
                    out.local = Some(LocalAddr {
                        ip: ip.into(),
                        ifindex,
                    });
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= IN6_PKTINFO_LEN => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&data[..16]);
                let ip = Ipv6Addr::from(octets);
                let ifindex = u32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
                if !ip.is_multicast() && !ip.is_unspecified() {
                    out.local = Some(LocalAddr {
                        ip: ip.into(),
                        ifindex,
                    });
                }
            }
            _ => {}
        }
        at += cmsg_align(len).max(CMSG_HDR);
    }
    out
}

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
    /// The local address to send from (None: the route's).
    pub(crate) source: Option<LocalAddr>,
}

/// What one received message held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InMsg {
    /// Bytes received (several datagrams when `segment` is set).
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// GRO: each datagram is this long, the last possibly shorter; 0 = one datagram.
    pub(crate) segment: usize,
    /// The local address the datagrams were sent to, if the kernel said.
    pub(crate) local: Option<LocalAddr>,
}

/// Per-thread room for the kernel's message headers. Holds raw pointers between calls only as
/// dead values: every call rewrites them before use.
pub(crate) struct Scratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
}

// SAFETY: the raw pointers inside (message headers into iovecs, addresses and controls; iovecs
// into caller buffers) are only ever written by `send_mmsg`/`recv_mmsg` right before their
// system call and never read after it, so moving a Scratch to another thread cannot make a
// dereference of a stale pointer possible. Callers share one behind a Mutex (rwg proxy's
// sending and receiving tasks).
unsafe impl Send for Scratch {}

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
        let mut control = ControlWriter::new(&mut scratch.controls[i].0);
        let fits = (m.segment == 0
            || control.push(libc::SOL_UDP, libc::UDP_SEGMENT, &m.segment.to_ne_bytes()))
            && m.source.is_none_or(|source| control.push_source(&source));
        debug_assert!(fits, "CONTROL_LEN holds UDP_SEGMENT and a packet info");
        let control_len = control.len();
        if control_len == 0 {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        } else {
            hdr.msg_control = scratch.controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = control_len as _;
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
        // The kernel set msg_controllen to what it wrote (never more than we offered).
        // (size_t on glibc, socklen_t on musl.)
        #[allow(clippy::unnecessary_cast)]
        let written = (hdr.msg_controllen as usize).min(CONTROL_LEN);
        let info = parse_control(&scratch.controls[i].0[..written]);
        // Messages are compacted so that out[..kept] describe the first `kept` slots' contents
        // in order; a slot whose address could not be read stays unused.
        out[kept] = InMsg {
            len: (scratch.hdrs[i].msg_len as usize).min(stride),
            from,
            segment: info.segment,
            local: info.local,
        };
        if kept != i {
            buf.copy_within(i * stride..i * stride + out[kept].len, kept * stride);
        }
        kept += 1;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_layout_matches_libc() {
        for n in [0usize, 1, 2, 4, 12, 20, 33] {
            // SAFETY: CMSG_LEN and CMSG_SPACE are pure computations.
            let (len, space) = unsafe { (libc::CMSG_LEN(n as u32), libc::CMSG_SPACE(n as u32)) };
            assert_eq!(cmsg_len(n), len as usize, "CMSG_LEN({n})");
            assert_eq!(cmsg_space(n), space as usize, "CMSG_SPACE({n})");
        }
        assert_eq!(mem::size_of::<libc::in_pktinfo>(), IN_PKTINFO_LEN);
        assert_eq!(mem::size_of::<libc::in6_pktinfo>(), IN6_PKTINFO_LEN);
    }

    /// Control messages built with libc's own macros and structs, as the kernel lays them out.
    fn kernel_style(messages: &[(libc::c_int, libc::c_int, &[u8])]) -> Control {
        let mut control = Control([0; CONTROL_LEN]);
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = CONTROL_LEN as _;
        // SAFETY: msg_control points at CONTROL_LEN aligned bytes; every message written is
        // checked to fit before CMSG_DATA is written, and NXTHDR stays inside or returns null.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            for (level, kind, data) in messages {
                assert!(!cmsg.is_null(), "room for every test message");
                (*cmsg).cmsg_level = *level;
                (*cmsg).cmsg_type = *kind;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        control
    }

    fn used(messages: &[(libc::c_int, libc::c_int, &[u8])]) -> usize {
        messages.iter().map(|(_, _, d)| cmsg_space(d.len())).sum()
    }

    #[test]
    fn gro_and_packet_info_are_read() {
        let v4 = libc::in_pktinfo {
            ipi_ifindex: 3,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes([10, 0, 0, 9]),
            },
            ipi_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([192, 0, 2, 7]),
            },
        };
        // SAFETY: in_pktinfo is plain old data without padding; viewing it as bytes is sound.
        let v4: [u8; IN_PKTINFO_LEN] = unsafe { mem::transmute(v4) };
        let gro = 1380i32.to_ne_bytes();
        let messages: [(libc::c_int, libc::c_int, &[u8]); 2] = [
            (libc::SOL_UDP, libc::UDP_GRO, &gro),
            (libc::IPPROTO_IP, libc::IP_PKTINFO, &v4),
        ];
        let c = kernel_style(&messages);
        let got = parse_control(&c.0[..used(&messages)]);
        assert_eq!(got.segment, 1380);
        // The header's destination (ipi_addr), not the routing's idea (ipi_spec_dst).
        assert_eq!(
            got.local,
            Some(LocalAddr {
                ip: Ipv4Addr::new(192, 0, 2, 7).into(),
                ifindex: 3
            })
        );

        let ip6: Ipv6Addr = "2001:db8::2".parse().expect("ip");
        let v6 = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: ip6.octets(),
            },
            ipi6_ifindex: 5,
        };
        // SAFETY: in6_pktinfo is plain old data without padding; viewing it as bytes is sound.
        let v6: [u8; IN6_PKTINFO_LEN] = unsafe { mem::transmute(v6) };
        let unknown = [0xAAu8; 7];
        let messages: [(libc::c_int, libc::c_int, &[u8]); 2] = [
            (libc::SOL_SOCKET, libc::SO_TIMESTAMP, &unknown),
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &v6),
        ];
        let c = kernel_style(&messages);
        let got = parse_control(&c.0[..used(&messages)]);
        assert_eq!(got.segment, 0, "no GRO message");
        assert_eq!(
            got.local,
            Some(LocalAddr {
                ip: ip6.into(),
                ifindex: 5
            })
        );
        // Nothing at all.
        assert_eq!(parse_control(&[]), Received::default());
    }

    #[test]
    fn what_the_writer_writes_the_parser_reads() {
        let mut c = Control([0; CONTROL_LEN]);
        let mut w = ControlWriter::new(&mut c.0);
        assert!(w.push(libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes()));
        let ll = LocalAddr {
            ip: "fe80::1".parse::<Ipv6Addr>().expect("ip").into(),
            ifindex: 9,
        };
        assert!(w.push_source(&ll));
        let n = w.len();
        assert_eq!(n, cmsg_space(4) + cmsg_space(IN6_PKTINFO_LEN));
        let got = parse_control(&c.0[..n]);
        assert_eq!((got.segment, got.local), (1200, Some(ll)));
        // A global IPv6 source goes without an interface; IPv4's goes in ipi_spec_dst, which
        // the parser (reading ipi_addr, the received side) does not see.
        let mut c = Control([0; CONTROL_LEN]);
        let mut w = ControlWriter::new(&mut c.0);
        let global = LocalAddr {
            ip: "2001:db8::5".parse::<Ipv6Addr>().expect("ip").into(),
            ifindex: 9,
        };
        assert!(w.push_source(&global));
        let n = w.len();
        let got = parse_control(&c.0[..n]);
        assert_eq!(
            got.local,
            Some(LocalAddr {
                ifindex: 0,
                ..global
            })
        );
        let mut c = Control([0; CONTROL_LEN]);
        let mut w = ControlWriter::new(&mut c.0);
        let v4 = LocalAddr {
            ip: Ipv4Addr::new(10, 1, 2, 3).into(),
            ifindex: 0,
        };
        assert!(w.push_source(&v4));
        let n = w.len();
        assert_eq!(&c.0[CMSG_HDR + 4..CMSG_HDR + 8], &[10, 1, 2, 3]);
        assert_eq!(parse_control(&c.0[..n]).local, None, "ipi_addr left 0");
        // What does not fit is not written.
        let mut small = [0u8; 20];
        let mut w = ControlWriter::new(&mut small);
        assert!(!w.push_source(&v4));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn malformed_control_messages_end_the_walk_without_panicking() {
        let gro = 1000i32.to_ne_bytes();
        let messages: [(libc::c_int, libc::c_int, &[u8]); 1] =
            [(libc::SOL_UDP, libc::UDP_GRO, &gro)];
        let good = kernel_style(&messages);
        let n = used(&messages);
        // Cut anywhere: never a panic, and never a value read past the cut.
        for cut in 0..n {
            let got = parse_control(&good.0[..cut]);
            assert_eq!(
                got.segment,
                if cut >= cmsg_len(4) { 1000 } else { 0 },
                "cut {cut}"
            );
        }
        // A length shorter than the header, zero, or past the end.
        for bad_len in [0usize, 3, CMSG_HDR - 1, CONTROL_LEN + 1, usize::MAX] {
            let mut c = good;
            c.0[..CMSG_LEVEL_AT].copy_from_slice(&(bad_len as libc::size_t).to_ne_bytes());
            assert_eq!(parse_control(&c.0).segment, 0, "cmsg_len {bad_len}");
        }
        // A packet info too short for its type is ignored.
        let short = [1u8; 8];
        let messages: [(libc::c_int, libc::c_int, &[u8]); 1] =
            [(libc::IPPROTO_IP, libc::IP_PKTINFO, &short)];
        let c = kernel_style(&messages);
        assert_eq!(parse_control(&c.0[..used(&messages)]).local, None);
        // Garbage of every byte value.
        for b in 0..=255u8 {
            let _ = parse_control(&[b; CONTROL_LEN]);
        }
    }

    /// A datagram sent to 127.0.0.2 is reported as such; the reply sent from it arrives from
    /// it; a source the host does not have is refused (which the caller turns into a retry).
    #[test]
    fn the_kernel_reports_the_local_address_and_sends_from_the_one_given() {
        let sock = bind("0.0.0.0:0".parse().expect("addr")).expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        peer.send_to(b"to two", ("127.0.0.2", port)).expect("send");
        let mut buf = vec![0u8; 2048];
        let mut out = [InMsg {
            len: 0,
            from: "0.0.0.0:0".parse().expect("addr"),
            segment: 0,
            local: None,
        }];
        // One message: a blocking recvmmsg waits until all it was offered arrived.
        let mut scratch = Scratch::new(2);
        let n = recv_mmsg(&sock, &mut buf, 1024, &mut out, &mut scratch).expect("recv");
        assert_eq!(n, 1);
        assert_eq!(&buf[..out[0].len], b"to two");
        let local = out[0].local.expect("IP_PKTINFO reported");
        assert_eq!(local.ip, IpAddr::from([127, 0, 0, 2]));
        // A GSO run of two and a single datagram, both from 127.0.0.2.
        let to = peer.local_addr().expect("addr");
        let parts: [&[u8]; 3] = [b"aaaa", b"bbbb", b"c"];
        let msgs = [
            OutMsg {
                to,
                parts: 0..2,
                segment: 4,
                source: Some(local),
            },
            OutMsg {
                to,
                parts: 2..3,
                segment: 0,
                source: Some(local),
            },
        ];
        assert_eq!(
            send_mmsg(&sock, &msgs, &parts, &mut scratch).expect("send"),
            2
        );
        for want in [&b"aaaa"[..], b"bbbb", b"c"] {
            let (len, from) = peer.recv_from(&mut buf).expect("reply");
            assert_eq!(&buf[..len], want);
            assert_eq!(from, SocketAddr::from(([127, 0, 0, 2], port)));
        }
        // Without a source, the route's (127.0.0.1 towards 127.0.0.1).
        let plain = [OutMsg {
            source: None,
            ..msgs[1].clone()
        }];
        assert_eq!(
            send_mmsg(&sock, &plain, &parts, &mut scratch).expect("send"),
            1
        );
        let (_, from) = peer.recv_from(&mut buf).expect("reply");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
        // An address this host does not have.
        let gone = [OutMsg {
            source: Some(LocalAddr {
                ip: IpAddr::from([192, 0, 2, 1]),
                ifindex: 0,
            }),
            ..msgs[1].clone()
        }];
        let e = send_mmsg(&sock, &gone, &parts, &mut scratch).expect_err("not ours");
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EADDRNOTAVAIL | libc::ENETUNREACH)
            ),
            "{e}"
        );
    }
}
