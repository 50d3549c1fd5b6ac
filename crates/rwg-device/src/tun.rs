//! The TUN device: a layer-3 interface whose packets this process reads and writes.
//!
//! Created by name through `/dev/net/tun`, or adopted from a descriptor the parent process
//! created (`WG_TUN_FD`). Reads block; a read on a device whose interface was deleted
//! (`ip link del`, which is how `wg-quick down` tears it down) fails with
//! [`TunError::Gone`], which the daemon treats as "shut down".

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Why a TUN operation failed, in the terms a user can act on.
#[derive(Debug)]
pub enum TunError {
    /// Creating interfaces needs CAP_NET_ADMIN (run as root).
    PermissionDenied,
    /// `/dev/net/tun` does not exist (no TUN support, or a container without the device node).
    NoTunDevice,
    /// The name is taken: by another process's TUN, or by an interface of another kind.
    NameInUse(String),
    /// The name is not a valid interface name.
    InvalidName(String),
    /// The interface was deleted while we held it.
    Gone,
    /// A descriptor handed to us is not a TUN device.
    NotTun,
    /// Anything else.
    Io(io::Error),
}

impl fmt::Display for TunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunError::PermissionDenied => write!(
                f,
                "permission denied creating the TUN interface (needs root or CAP_NET_ADMIN)"
            ),
            TunError::NoTunDevice => write!(
                f,
                "/dev/net/tun does not exist (is the tun module loaded, or the device passed to the container?)"
            ),
            TunError::NameInUse(name) => write!(
                f,
                "interface name {name:?} is already in use (by another TUN owner or a non-TUN interface)"
            ),
            TunError::InvalidName(name) => write!(f, "invalid interface name {name:?}"),
            TunError::Gone => write!(f, "the TUN interface was deleted"),
            TunError::NotTun => write!(f, "the inherited descriptor is not a TUN device"),
            TunError::Io(e) => write!(f, "TUN device: {e}"),
        }
    }
}

impl std::error::Error for TunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TunError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks the rules the kernel applies to interface names (`dev_valid_name`).
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Which offloads a TUN device was set up with (see [`crate::offload`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunOffloads {
    /// Packets carry a `virtio_net_hdr` (IFF_VNET_HDR). Everything below needs it.
    pub vnet_hdr: bool,
    /// TCP super-packets (TSO4/TSO6) may be read, and coalesced ones written.
    pub tso: bool,
    /// UDP super-packets (USO, Linux 6.2 and later) may be read.
    pub uso: bool,
}

/// An attached TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    offloads: TunOffloads,
}

impl Tun {
    /// Creates (or attaches to an existing unowned persistent) TUN interface `name`, without
    /// offloads.
    pub fn create(name: &str) -> Result<Tun, TunError> {
        Tun::create_with(name, false)
    }

    /// Creates TUN interface `name`; with `offloads`, with a virtio-net header on every packet
    /// and as many offloads as the kernel has (TSO, then USO: see [`Tun::offloads`]).
    pub fn create_with(name: &str, offloads: bool) -> Result<Tun, TunError> {
        if !valid_interface_name(name) {
            return Err(TunError::InvalidName(name.to_owned()));
        }
        let fd = sys::tun::create(name, offloads).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::PermissionDenied,
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => TunError::NoTunDevice,
            // EBUSY: a TUN of that name is attached to another descriptor. EINVAL with an
            // existing interface: the name belongs to an interface that is not a TUN.
            Some(libc::EBUSY) => TunError::NameInUse(name.to_owned()),
            Some(libc::EINVAL) if interface_exists(name) => TunError::NameInUse(name.to_owned()),
            Some(libc::EINVAL) => TunError::InvalidName(name.to_owned()),
            _ => TunError::Io(e),
        })?;
        let name = sys::tun::interface_name(&fd).map_err(TunError::Io)?;
        let offloads = negotiate_offloads(&fd, offloads);
        Ok(Tun { fd, name, offloads })
    }

    /// Adopts a TUN descriptor created by a parent process; offloads are turned on if it was
    /// created with a virtio-net header.
    pub fn from_fd(fd: OwnedFd) -> Result<Tun, TunError> {
        let flags = sys::tun::flags(&fd).map_err(classify_io)?;
        if flags & (libc::IFF_TUN as libc::c_short) == 0 {
            return Err(TunError::NotTun);
        }
        let name = sys::tun::interface_name(&fd).map_err(classify_io)?;
        let vnet = flags & (libc::IFF_VNET_HDR as libc::c_short) != 0;
        let offloads = negotiate_offloads(&fd, vnet);
        Ok(Tun { fd, name, offloads })
    }

    /// The offloads in effect.
    pub fn offloads(&self) -> TunOffloads {
        self.offloads
    }

    /// Adopts a raw inherited descriptor number (the value of `WG_TUN_FD`).
    pub fn from_inherited(fd: RawFd) -> Result<Tun, TunError> {
        Tun::from_fd(sys::fd::adopt_inherited(fd).map_err(TunError::Io)?)
    }

    /// The interface name as the kernel reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn ifindex(&self) -> Result<u32, TunError> {
        sys::tun::ifindex(&self.name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => TunError::Gone,
            _ => TunError::Io(e),
        })
    }

    /// The interface MTU.
    pub fn mtu(&self) -> Result<u32, TunError> {
        sys::tun::mtu(&self.name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => TunError::Gone,
            _ => TunError::Io(e),
        })
    }

    /// Reads one IP packet (blocking). [`TunError::Gone`] once the interface is deleted.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, TunError> {
        loop {
            match sys::tun::read(&self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.classify_rw(e)),
            }
        }
    }

    /// Writes one IP packet.
    pub fn write(&self, packet: &[u8]) -> Result<usize, TunError> {
        loop {
            match sys::tun::write(&self.fd, packet) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.classify_rw(e)),
            }
        }
    }

    /// A reader blocked in read() while the interface is deleted gets EFAULT (the kernel's
    /// `tun_ring_recv` reports its socket being shut down that way); later calls get EBADFD.
    /// Our buffers are always valid, so EFAULT is confirmed with TUNGETIFF, which fails with
    /// EBADFD on a detached descriptor.
    fn classify_rw(&self, e: io::Error) -> TunError {
        match e.raw_os_error() {
            Some(libc::EBADFD) => TunError::Gone,
            Some(libc::EFAULT) => match sys::tun::interface_name(&self.fd) {
                Err(check) if check.raw_os_error() == Some(libc::EBADFD) => TunError::Gone,
                _ => TunError::Io(e),
            },
            _ => TunError::Io(e),
        }
    }

    /// Switches reads to non-blocking (a read with nothing queued fails with `WouldBlock`),
    /// for loops that drain a batch and then [`wait_readable`](Self::wait_readable).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        sys::poll::set_nonblocking(&self.fd, on)
    }

    /// Waits until a packet can be read or `timeout_ms` passes; returns whether one can.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        sys::poll::wait_readable(&self.fd, timeout_ms)
    }

    /// A second handle on the same device (a duplicated descriptor).
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
            offloads: self.offloads,
        })
    }

    /// Gives the descriptor up (to hand it to a child process).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Asks for checksum, TSO and USO offloads, then without USO (older kernels refuse the bit),
/// then for nothing. Without a vnet header there is nothing to ask.
fn negotiate_offloads(fd: &OwnedFd, vnet_hdr: bool) -> TunOffloads {
    if !vnet_hdr {
        return TunOffloads::default();
    }
    let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
    if sys::tun::set_offload(fd, tso | uso).is_ok() {
        return TunOffloads {
            vnet_hdr,
            tso: true,
            uso: true,
        };
    }
    if sys::tun::set_offload(fd, tso).is_ok() {
        tracing::info!("TUN: TSO on, USO not supported by this kernel");
        return TunOffloads {
            vnet_hdr,
            tso: true,
            uso: false,
        };
    }
    tracing::info!("TUN: no offloads supported; packets still carry a virtio-net header");
    TunOffloads {
        vnet_hdr,
        ..TunOffloads::default()
    }
}

/// Errors of TUNGETIFF on an adopted descriptor: EBADFD means attached to no interface.
fn classify_io(e: io::Error) -> TunError {
    match e.raw_os_error() {
        Some(libc::EBADFD) => TunError::Gone,
        Some(libc::ENOTTY) | Some(libc::EINVAL) => TunError::NotTun,
        _ => TunError::Io(e),
    }
}

fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    /// Polls `cond` until it holds; fails the test after a generous bound.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether this process's thread named `name` is blocked in `read(fd, ...)`, from
    /// `/proc/self/task/*/syscall` ("<number> <arg0> ..." while in a system call).
    fn thread_blocked_in_read(name: &str, fd: RawFd) -> bool {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return false;
        };
        tasks.flatten().any(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let syscall = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
            let mut fields = syscall.split_whitespace();
            comm.trim_end() == name
                && fields.next() == Some(&libc::SYS_read.to_string())
                && fields.next() == Some(&format!("{fd:#x}"))
        })
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_interface_name("wg0"));
        assert!(valid_interface_name("a23456789012345"));
        assert!(!valid_interface_name("a234567890123456"));
        assert!(!valid_interface_name(""));
        assert!(!valid_interface_name("a/b"));
        assert!(!valid_interface_name("a b"));
        assert!(!valid_interface_name(".."));
        assert!(matches!(
            Tun::create("bad/name"),
            Err(TunError::InvalidName(_))
        ));
    }

    /// Deleting the interface under a blocked reader: the kernel detaches the file; the blocked
    /// read() fails with EFAULT and later calls with EBADFD. Both must surface as `Gone`.
    #[test]
    #[ignore = "needs root and /dev/net/tun: run with cargo test -- --ignored as root"]
    fn deleted_interface() {
        let name = format!("rwgt{}", std::process::id() % 100_000);
        let tun = Tun::create(&name).expect("create tun");
        assert_eq!(tun.name(), name);
        assert!(tun.ifindex().expect("ifindex") > 0);
        assert!(tun.mtu().expect("mtu") > 0);
        // A second owner of the same name is refused with a clear error.
        assert!(matches!(Tun::create(&name), Err(TunError::NameInUse(_))));
        // A non-TUN interface name too.
        assert!(matches!(Tun::create("lo"), Err(TunError::NameInUse(_))));
        let fd = tun.as_raw_fd();
        let reader = std::thread::Builder::new()
            .name("tun-del-reader".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                loop {
                    match tun.read(&mut buf) {
                        Ok(_) => continue,
                        Err(e) => return (e, tun),
                    }
                }
            })
            .expect("spawn reader");
        // Delete only once the reader really sits in read(): that is the case under test.
        wait_until("the reader blocks in read()", || {
            thread_blocked_in_read("tun-del-reader", fd)
        });
        let status = std::process::Command::new("ip")
            .args(["link", "del", &name])
            .status()
            .expect("run ip");
        assert!(status.success());
        let (err, tun) = reader.join().expect("reader thread");
        assert!(matches!(err, TunError::Gone), "got {err:?}");
        let mut buf = [0u8; 2048];
        let again = tun.read(&mut buf);
        assert!(matches!(again, Err(TunError::Gone)), "got {again:?}");
        assert!(matches!(tun.write(&[0x45; 20]), Err(TunError::Gone)));
    }
}
