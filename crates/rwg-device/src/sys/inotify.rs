//! inotify, to notice the configuration socket file being deleted.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{cvt, cvt_size};

/// An inotify instance watching one path.
#[derive(Debug)]
pub(crate) struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    /// Watches `path` for the events that deleting or replacing it causes. Unlinking a bound
    /// socket does not free its inode (the socket holds it), so IN_DELETE_SELF never comes;
    /// the link count change is reported as IN_ATTRIB.
    pub(crate) fn watch(path: &Path) -> io::Result<Inotify> {
        // SAFETY: plain syscall; the result is checked.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })?;
        // SAFETY: inotify_init1 succeeded; the descriptor is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mask = libc::IN_ATTRIB | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
        // SAFETY: `cpath` is NUL-terminated and outlives the call.
        cvt(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), mask) })?;
        Ok(Inotify { fd })
    }

    /// Blocks until at least one event arrives (the caller re-checks the path).
    pub(crate) fn wait(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length for the duration of the call.
            let r = cvt_size(unsafe {
                libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            });
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
