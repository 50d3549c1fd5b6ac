//! Process-wide protections for the keys the daemon holds: no core dumps, and memory locked in
//! RAM (never written to swap).

use std::io;

use super::cvt;

/// `PR_SET_DUMPABLE`: `false` means no core dump, and `/proc/PID/mem`, ptrace and the like are
/// for root only (the files under `/proc/PID` become root's).
pub(crate) fn set_dumpable(on: bool) -> io::Result<()> {
    let arg: libc::c_ulong = if on { 1 } else { 0 };
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, arg, 0, 0, 0) })?;
    Ok(())
}

/// `PR_GET_DUMPABLE`.
pub(crate) fn dumpable() -> io::Result<bool> {
    // SAFETY: PR_GET_DUMPABLE only returns a value.
    let v = cvt(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(v != 0)
}

/// Locks every page the process has and will map, as it is first touched
/// (`MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT`, Linux 4.4+): nothing is read in ahead of use,
/// so memory use stays what it would be, only unswappable.
///
/// With `MCL_FUTURE` every later mapping counts against `RLIMIT_MEMLOCK`; a process without
/// `CAP_IPC_LOCK` under a finite limit would see allocations fail once it is reached, so the
/// caller checks first ([`memlock_limit`]).
pub(crate) fn lock_all_memory() -> io::Result<()> {
    // SAFETY: mlockall takes flags only; it changes no memory contents.
    cvt(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) })?;
    Ok(())
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited.
pub(crate) fn memlock_limit() -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) })?;
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}
