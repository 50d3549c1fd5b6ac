//! Process plumbing for the daemon: termination signals, and handing descriptors to the
//! re-executed child (`WG_TUN_FD`, `WG_UAPI_FD`, the readiness pipe).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::sys;

/// SIGINT and SIGTERM, blocked so that a dedicated thread can wait for them.
///
/// Create this at the start of `main`, before any thread exists: threads inherit the mask, and
/// a signal must not be delivered (and kill the process) to a thread that is not waiting.
#[derive(Debug)]
pub struct TerminationSignals {
    inner: sys::signals::BlockedSignals,
}

impl TerminationSignals {
    /// Blocks SIGINT and SIGTERM in this thread and the threads it creates later.
    pub fn block() -> io::Result<TerminationSignals> {
        Ok(TerminationSignals {
            inner: sys::signals::BlockedSignals::block()?,
        })
    }

    /// Waits for SIGINT or SIGTERM; returns the signal number.
    pub fn wait(&self) -> io::Result<i32> {
        self.inner.wait()
    }
}

/// Takes ownership of a descriptor number inherited from the parent (the values of
/// `WG_TUN_FD`, `WG_UAPI_FD`). Only for use at startup on numbers the parent passed: the
/// descriptor must not be owned by anything else in this process.
pub fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    sys::fd::adopt_inherited(fd)
}

/// Lets `fd` survive `exec` (clears close-on-exec), to pass it to a child process.
pub fn inherit_across_exec(fd: &impl AsFd) -> io::Result<()> {
    sys::fd::set_cloexec(&fd.as_fd(), false)
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = sys::fd::pipe()?;
    Ok((File::from(r), File::from(w)))
}

/// Blocks of this size and larger get a mapping of their own under [`MapLarge`].
pub const LARGE_BUFFER: usize = sys::malloc::LARGE;

/// A global allocator (`#[global_allocator]`) that gives every block of [`LARGE_BUFFER`] bytes
/// or more an anonymous mapping of its own, unmapped when the block is freed; smaller blocks
/// are the system allocator's.
///
/// For processes that hold many large buffers that come and go, like `rwg proxy`'s
/// per-connection socket buffers: from the C allocator such a buffer is carved out of free heap
/// space whenever some is left (by earlier connections' small blocks), written whole with zeros,
/// and kept by the heap after it is freed, so memory grew with every round of connections. A
/// mapping of its own costs only the pages written, and gives them all back when freed.
pub use sys::malloc::MapLarge;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn adopting_descriptors_is_guarded() {
        assert!(adopt_inherited(-1).is_err());
        assert!(adopt_inherited(1).is_err());
        let (mut r, w) = pipe().expect("pipe");
        // As the parent hands it over: inheritable.
        inherit_across_exec(&w).expect("clear cloexec");
        let raw = OwnedFd::from(w).into_raw_fd();
        let adopted = adopt_inherited(raw).expect("adopt");
        assert_eq!(adopted.as_raw_fd(), raw);
        // The child does not pass it on to its own children.
        assert!(sys::fd::cloexec(&adopted).expect("F_GETFD"));
        // Not twice.
        assert!(adopt_inherited(raw).is_err());
        let mut w = File::from(adopted);
        w.write_all(b"x").expect("write");
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read");
        assert_eq!(s, "x");
        // A closed number.
        assert!(adopt_inherited(100_000).is_err());
    }

    #[test]
    fn inheritance_flag() {
        let (r, w) = pipe().expect("pipe");
        assert!(
            sys::fd::cloexec(&r).expect("F_GETFD"),
            "pipe ends start close-on-exec"
        );
        assert!(sys::fd::cloexec(&w).expect("F_GETFD"));
        inherit_across_exec(&r).expect("clear cloexec");
        assert!(
            !sys::fd::cloexec(&r).expect("F_GETFD"),
            "FD_CLOEXEC still set"
        );
        // Only the descriptor asked for.
        assert!(sys::fd::cloexec(&w).expect("F_GETFD"));
    }
}
