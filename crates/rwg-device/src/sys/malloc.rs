//! glibc's allocator: a fixed mmap threshold, so that large buffers are mapped on their own and
//! given back to the system when freed.

use std::io;

/// `mallopt(M_MMAP_THRESHOLD, bytes)`: blocks of at least `bytes` are served by `mmap` and
/// unmapped on free. Setting it also stops glibc from raising the threshold each time such a
/// block is freed (its default, which moves every later large buffer onto the heap).
#[cfg(target_env = "gnu")]
pub(crate) fn set_mmap_threshold(bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "threshold above INT_MAX"))?;
    // SAFETY: mallopt takes two integers and changes only the allocator's parameters.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) };
    if ok == 1 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "mallopt refused the threshold (glibc allows at most 32 MiB on 64-bit hosts)",
        ))
    }
}

/// Other C libraries have no such knob (musl maps large blocks and gives them back anyway).
#[cfg(not(target_env = "gnu"))]
pub(crate) fn set_mmap_threshold(_bytes: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "not glibc: no mmap threshold to set",
    ))
}

/// Whether the heap block at `p` (returned by `malloc`) was served by `mmap`: glibc keeps the
/// chunk's size just before the block, with bit 1 (`IS_MMAPPED`) set for mapped chunks.
#[cfg(all(test, target_env = "gnu"))]
pub(crate) fn is_mmapped(p: *const u8) -> bool {
    // SAFETY: `p` is a live block from glibc's malloc (the caller's Vec), so the word before it
    // is its chunk header, readable and aligned.
    let size_word = unsafe { p.cast::<usize>().sub(1).read() };
    size_word & 2 != 0
}
