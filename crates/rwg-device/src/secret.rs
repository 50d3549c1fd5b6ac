//! Buffers for text that may carry keys (the configuration socket's requests and replies), and
//! the process-wide protections of the daemon's memory.
//!
//! [`SecretBuf`] and [`SecretReader`] keep their bytes in pages of their own
//! ([`crate::sys::secret_mem`]): out of core dumps, locked in RAM where allowed, and wiped
//! before they are unmapped. Growing a `SecretBuf` moves the bytes to new pages and wipes the
//! old ones, unlike a `Vec`, which leaves its old buffer to the allocator as it was. If pages
//! cannot be mapped at all, both fall back to heap memory that is zeroized on drop.
//!
//! [`protect_process`] is for the daemon's start: no core dumps, and all memory locked where the
//! privileges allow.

use std::fmt;
use std::io::{self, BufRead, Read};

use zeroize::Zeroizing;

use crate::sys;
use crate::sys::secret_mem::Region;

/// Where a buffer's bytes live.
enum Storage {
    /// Nothing allocated yet.
    Empty,
    Mapped(Region),
    /// Mapping failed: heap memory of a fixed size, zeroized on drop.
    Heap(Zeroizing<Box<[u8]>>),
}

impl Storage {
    fn with_len(len: usize) -> Storage {
        if len == 0 {
            return Storage::Empty;
        }
        match Region::new(len) {
            Ok(r) => Storage::Mapped(r),
            Err(e) => {
                tracing::debug!(error = %e, "cannot map pages for a key buffer; using the heap");
                Storage::Heap(Zeroizing::new(vec![0; len].into_boxed_slice()))
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Empty => &[],
            Storage::Mapped(r) => r.as_slice(),
            Storage::Heap(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Empty => &mut [],
            Storage::Mapped(r) => r.as_mut_slice(),
            Storage::Heap(b) => b,
        }
    }
}

/// A growable byte buffer for text that may hold keys. Its contents never appear in `Debug`.
pub struct SecretBuf {
    storage: Storage,
    len: usize,
}

impl SecretBuf {
    /// An empty buffer; nothing is allocated until something is written.
    pub fn new() -> SecretBuf {
        SecretBuf {
            storage: Storage::Empty,
            len: 0,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> SecretBuf {
        SecretBuf {
            storage: Storage::with_len(capacity),
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.storage.bytes()[..self.len]
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that fit without growing.
    pub fn capacity(&self) -> usize {
        self.storage.bytes().len()
    }

    /// Forgets the contents (they are overwritten by later writes, and wiped when the buffer
    /// is dropped or grows).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`, moving to larger storage (and wiping the old) if needed.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let needed = self.len + data.len();
        if needed > self.capacity() {
            let mut bigger = Storage::with_len(needed.max(2 * self.capacity()).max(256));
            bigger.bytes_mut()[..self.len].copy_from_slice(self.as_bytes());
            // The old storage is wiped as it is dropped here.
            self.storage = bigger;
        }
        self.storage.bytes_mut()[self.len..needed].copy_from_slice(data);
        self.len = needed;
    }

    /// Appends one byte.
    pub fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    /// The contents as text, if they are UTF-8.
    pub fn as_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.as_bytes())
    }
}

impl Default for SecretBuf {
    fn default() -> Self {
        SecretBuf::new()
    }
}

impl io::Write for SecretBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.len)
    }
}

/// A buffered reader (like `std::io::BufReader`) whose buffer is a [`SecretBuf`]'s kind of
/// storage, allocated at the first read.
pub struct SecretReader<R> {
    inner: R,
    capacity: usize,
    storage: Storage,
    pos: usize,
    filled: usize,
}

impl<R: Read> SecretReader<R> {
    /// Reads from `inner` in pieces of up to `capacity` bytes.
    pub fn with_capacity(capacity: usize, inner: R) -> SecretReader<R> {
        SecretReader {
            inner,
            capacity: capacity.max(1),
            storage: Storage::Empty,
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: Read> Read for SecretReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for SecretReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.filled {
            if matches!(self.storage, Storage::Empty) {
                self.storage = Storage::with_len(self.capacity);
            }
            self.pos = 0;
            self.filled = 0;
            let n = self.inner.read(self.storage.bytes_mut())?;
            self.filled = n;
        }
        Ok(&self.storage.bytes()[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

impl<R> fmt::Debug for SecretReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretReader({} bytes buffered)", self.filled - self.pos)
    }
}

/// What [`protect_process`] could do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessProtection {
    /// Core dumps are off (`PR_SET_DUMPABLE` 0).
    pub no_core_dumps: bool,
    /// All memory is locked in RAM, present and future (`mlockall`).
    pub memory_locked: bool,
    /// Why memory is not locked, when it is not.
    pub not_locked_because: Option<String>,
}

/// At the start of a process that will hold keys: no core dumps (which also keeps
/// `/proc/PID/mem` and ptrace to root), and, if the process may lock any amount of memory
/// (`CAP_IPC_LOCK`, or an unlimited `RLIMIT_MEMLOCK`), every page locked in RAM as it is first
/// used, so no key is ever written to swap. Under a finite limit without the capability
/// nothing is locked process-wide: a later allocation beyond the limit would fail and abort.
/// Never fails; what could not be done is in the result and logged once at debug level.
pub fn protect_process() -> ProcessProtection {
    let no_core_dumps = match sys::hardening::set_dumpable(false) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot turn core dumps off");
            false
        }
    };
    let locked = may_lock_everything(sys::hardening::memlock_limit(), has_ipc_lock)
        .and_then(|()| sys::hardening::lock_all_memory().map_err(|e| format!("mlockall: {e}")));
    match &locked {
        Ok(()) => tracing::debug!(no_core_dumps, "memory locked, core dumps off"),
        Err(why) => tracing::debug!(
            no_core_dumps,
            "memory not locked ({why}): keys held by the protocol core may be swapped"
        ),
    }
    ProcessProtection {
        no_core_dumps,
        memory_locked: locked.is_ok(),
        not_locked_because: locked.err(),
    }
}

/// Whether locking all present and future memory is safe: it is unless a finite
/// `RLIMIT_MEMLOCK` applies (it does not to a process with `CAP_IPC_LOCK`).
fn may_lock_everything(
    limit: io::Result<Option<u64>>,
    ipc_lock: impl FnOnce() -> bool,
) -> Result<(), String> {
    match limit {
        Ok(None) => Ok(()),
        Ok(Some(_)) if ipc_lock() => Ok(()),
        Ok(Some(limit)) => Err(format!(
            "RLIMIT_MEMLOCK is {limit} bytes and CAP_IPC_LOCK is missing"
        )),
        Err(e) => Err(format!("cannot read RLIMIT_MEMLOCK: {e}")),
    }
}

/// Whether core dumps are on for this process (`PR_GET_DUMPABLE`).
pub fn dumpable() -> io::Result<bool> {
    sys::hardening::dumpable()
}

/// Whether the effective capabilities include `CAP_IPC_LOCK` (bit 14 of `CapEff` in
/// `/proc/self/status`).
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("CapEff:")
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn secret_buf_grows_keeps_contents_and_hides_them() {
        let mut b = SecretBuf::new();
        assert_eq!(b.capacity(), 0);
        for i in 0..20_000u32 {
            b.extend_from_slice(&i.to_le_bytes());
        }
        assert_eq!(b.len(), 80_000);
        assert!(b.capacity() >= 80_000);
        for (i, chunk) in b.as_bytes().chunks_exact(4).enumerate() {
            assert_eq!(chunk, (i as u32).to_le_bytes());
        }
        b.clear();
        assert!(b.is_empty());
        b.push(b'x');
        assert_eq!(b.as_str(), Ok("x"));
        write!(b, "private_key={}", "ab".repeat(32)).expect("write");
        assert!(b.as_str().expect("ascii").ends_with("abab"));
        let debug = format!("{b:?}");
        assert!(!debug.contains("abab"), "{debug}");
    }

    /// Growing wipes the storage it leaves: every region dropped so far was all zeros when it
    /// was unmapped (the check is in `secret_mem`'s drop, under test).
    #[test]
    fn growing_wipes_the_old_storage() {
        let (dropped_before, _) = sys::secret_mem::tests::drop_counts();
        let mut b = SecretBuf::with_capacity(1);
        let small = b.capacity();
        b.extend_from_slice(&vec![0x5a; small]);
        b.extend_from_slice(b"more");
        assert!(b.capacity() > small);
        drop(b);
        let (dropped, unwiped) = sys::secret_mem::tests::drop_counts();
        assert!(dropped >= dropped_before + 2);
        assert_eq!(unwiped, 0);
    }

    #[test]
    fn secret_reader_reads_like_bufreader() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = SecretReader::with_capacity(4096, io::Cursor::new(data.clone()));
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("read");
        assert_eq!(out, data);
        let mut lines =
            SecretReader::with_capacity(3, io::Cursor::new(b"ab\ncdef\n\nx".to_vec())).lines();
        let got: Vec<String> = lines.by_ref().map(|l| l.expect("line")).collect();
        assert_eq!(got, ["ab", "cdef", "", "x"]);
    }

    #[test]
    fn dumpable_flag_round_trip() {
        // protect_process itself (with mlockall) runs in the daemon's root test: here it
        // would lock the memory of every other test in this process.
        sys::hardening::set_dumpable(false).expect("PR_SET_DUMPABLE");
        assert!(!dumpable().expect("PR_GET_DUMPABLE"));
        sys::hardening::set_dumpable(true).expect("PR_SET_DUMPABLE");
        assert!(dumpable().expect("PR_GET_DUMPABLE"));
    }

    #[test]
    fn whole_process_locking_only_where_allocations_cannot_fail_for_it() {
        assert!(may_lock_everything(Ok(None), || false).is_ok());
        assert!(may_lock_everything(Ok(Some(8 << 20)), || true).is_ok());
        let why = may_lock_everything(Ok(Some(8 << 20)), || false).expect_err("refused");
        assert!(
            why.contains("8388608") && why.contains("CAP_IPC_LOCK"),
            "{why}"
        );
        assert!(may_lock_everything(Err(io::Error::other("x")), || true).is_err());
    }
}
