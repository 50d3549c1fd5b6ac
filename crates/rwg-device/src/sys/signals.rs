//! Termination signals taken synchronously: blocked in every thread, collected by `sigwait`.

use std::io;
use std::mem;

/// The set {SIGINT, SIGTERM}, blocked in the calling thread (and every thread it spawns later).
#[derive(Clone, Copy)]
pub(crate) struct BlockedSignals {
    set: libc::sigset_t,
}

impl std::fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockedSignals(SIGINT, SIGTERM)")
    }
}

impl BlockedSignals {
    pub(crate) fn block() -> io::Result<BlockedSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it below before any use.
        let mut set: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
        }
        // SAFETY: `set` is initialised; the old mask is not wanted (null is allowed).
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(BlockedSignals { set })
    }

    /// Waits for one of the signals; returns its number.
    pub(crate) fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t and `sig` is a writable int.
        let r = unsafe { libc::sigwait(&self.set, &mut sig) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(sig)
    }
}
