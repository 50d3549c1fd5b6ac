//! Linux TUN device: `/dev/net/tun` and the `TUNSETIFF` family of ioctls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{cvt, cvt_size};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// `struct ifreq`: the name, then a 24-byte union of which we use a short (flags) or an int.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    flags: libc::c_short,
    int: libc::c_int,
    _pad: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: IfReqData { _pad: [0; 24] },
        };
        // Caller validated the length (< IFNAMSIZ, so a NUL terminator stays).
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// Opens `/dev/net/tun` and attaches it to interface `name` (created if absent) as a layer-3
/// device without packet information header; with `vnet_hdr`, every packet read or written is
/// preceded by a `struct virtio_net_hdr` (IFF_VNET_HDR), which offloads need.
pub(crate) fn create(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: open succeeded; the descriptor is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    req.data.flags = (libc::IFF_TUN | libc::IFF_NO_PI | vnet) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (repr(C), full size).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(fd)
}

/// The name of the interface a TUN descriptor is attached to (`TUNGETIFF`).
///
/// Fails with `EBADFD` if the descriptor is not attached (for example the interface was deleted).
pub(crate) fn interface_name(fd: &impl AsRawFd) -> io::Result<String> {
    let mut req = IfReq::new("");
    // SAFETY: TUNGETIFF fills a `struct ifreq`, which `req` is.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) })?;
    Ok(req.name())
}

/// The flags of the TUN descriptor (`TUNGETIFF`), to check an adopted descriptor is a TUN.
pub(crate) fn flags(fd: &impl AsRawFd) -> io::Result<libc::c_short> {
    let mut req = IfReq::new("");
    // SAFETY: TUNGETIFF fills a `struct ifreq`, which `req` is.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) })?;
    // SAFETY: the kernel wrote the flags member of the union; any bit pattern is a valid short.
    Ok(unsafe { req.data.flags })
}

/// Tells the kernel which offloads we handle (`TUN_F_*` bits): with TSO it may hand us TCP
/// super-packets, with CSUM packets whose checksum is left to us, with USO UDP super-packets.
/// EINVAL means the kernel does not know one of the bits (USO before Linux 6.2).
pub(crate) fn set_offload(fd: &impl AsRawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int), no pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) })?;
    Ok(())
}

/// The interface index of `name`, 0 if there is none.
pub(crate) fn ifindex(name: &str) -> io::Result<u32> {
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// The MTU of interface `name` (`SIOCGIFMTU` on a throwaway datagram socket). The socket is a
/// Unix one: the kernel answers interface ioctls on a socket of any family, and a process that
/// may not use IPv4 (systemd's `RestrictAddressFamilies=AF_INET6 ...`) may still use AF_UNIX.
pub(crate) fn mtu(name: &str) -> io::Result<u32> {
    // SAFETY: plain socket creation; the result is checked.
    let sock =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded; the descriptor is fresh.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFMTU reads the name and writes an int into a `struct ifreq`, which `req` is.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req as *mut IfReq) })?;
    // SAFETY: the kernel wrote the int member; any bit pattern is a valid int.
    let mtu = unsafe { req.data.int };
    u32::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Reads one packet.
pub(crate) fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes one packet.
pub(crate) fn write(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}
