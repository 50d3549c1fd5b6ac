//! File descriptor plumbing: adopting inherited descriptors, handing them to a child process,
//! and pipes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Descriptor numbers already adopted, so that a number can be taken over at most once.
static ADOPTED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of a descriptor inherited from the parent process (`WG_TUN_FD`, `WG_UAPI_FD`).
///
/// This is safe to call only because of the guards here: a number must be open, not one of the
/// standard streams (which std owns), and not adopted before. It still relies on nothing else
/// in the process having opened that number, which holds at startup, where it is used.
/// Marks the descriptor close-on-exec again.
pub(crate) fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= libc::STDERR_FILENO {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let mut adopted = ADOPTED.lock().unwrap_or_else(|p| p.into_inner());
    if adopted.contains(&fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only queries flags of a descriptor number; an invalid number yields EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open (checked above); setting FD_CLOEXEC changes no memory.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    adopted.push(fd);
    // SAFETY: the number is open (checked above), is not a standard stream and has not been
    // adopted before; the parent passed it to us for this purpose (WG_TUN_FD/WG_UAPI_FD), so no
    // other owner exists in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clears or sets `FD_CLOEXEC`, so that a descriptor survives (or not) an `exec`.
pub(crate) fn set_cloexec(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: `fd` belongs to a live owned descriptor (borrowed); F_GETFD touches no memory.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above; F_SETFD only changes the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

/// Whether `FD_CLOEXEC` is set on a descriptor (tests check what [`set_cloexec`] did).
#[cfg(test)]
pub(crate) fn cloexec(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: `fd` belongs to a live owned descriptor (borrowed); F_GETFD touches no memory.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both numbers are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Identity of a file: (device, inode), for "is the path still ours" checks.
pub(crate) fn lstat_ident(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Runs `f` with the process umask set to `mask`, restoring it afterwards. The umask is
/// process-wide: call this while no other thread creates files.
pub(crate) fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file creation mask; it cannot fail.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above, restoring the previous value.
    unsafe { libc::umask(old) };
    result
}
