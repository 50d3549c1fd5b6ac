//! The calling thread's share of the CPU.

use std::io;

/// Sets the nice value of the calling thread only: on Linux a thread id names one thread to
/// `setpriority`. Raising the value (a smaller share) needs no privilege.
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments, touches no memory and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let tid = libc::id_t::try_from(tid).map_err(|_| io::Error::other("no thread id"))?;
    // SAFETY: setpriority reads only its three integer arguments.
    super::cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of a thread, from field 19 of its `stat` (after the command's parenthesis).
    fn nice_of(stat_path: &str) -> i32 {
        let stat = std::fs::read_to_string(stat_path).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(16)
            .expect("field 19")
            .parse()
            .expect("a number")
    }

    #[test]
    fn only_the_calling_thread_gets_the_new_nice_value() {
        let here = nice_of("/proc/thread-self/stat");
        let there = std::thread::spawn(move || {
            set_thread_nice(here + 5).expect("raising nice needs no privilege");
            nice_of("/proc/thread-self/stat")
        })
        .join()
        .expect("thread");
        assert_eq!(there, (here + 5).min(19));
        assert_eq!(
            nice_of("/proc/thread-self/stat"),
            here,
            "the caller's thread only"
        );
    }
}
