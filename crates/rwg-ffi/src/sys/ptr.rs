//! Checked conversions of the caller's pointers. Each returns an error for what can be
//! checked (NULL, misalignment, absurd lengths, overlap, invalid UTF-8 at the caller's
//! choice); what cannot be checked — that the memory is there — is the caller's promise.

use std::ffi::{c_char, CStr};
use std::ptr::NonNull;

use zeroize::Zeroizing;

use crate::error::RwgError;

/// A checked out-parameter: not NULL, aligned. Written with [`Out::write`], which never reads
/// (the caller's memory may be uninitialized).
pub(super) struct Out<T>(NonNull<T>);

/// Checks an out-parameter.
pub(super) fn out<T>(p: *mut T) -> Result<Out<T>, RwgError> {
    let p = NonNull::new(p).ok_or(RwgError::NullPointer)?;
    if !p.is_aligned() {
        return Err(RwgError::InvalidArgument);
    }
    Ok(Out(p))
}

impl<T> Out<T> {
    /// Stores `value`.
    ///
    /// # Safety
    /// The pointer given to [`out`] must be valid for a write of a `T`.
    pub(super) unsafe fn write(self, value: T) {
        // SAFETY: not NULL and aligned (checked in `out`); valid for writes (the caller's
        // promise). `write` does not read or drop the old contents.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Copies a 32-byte key.
///
/// # Safety
/// `p` is NULL or points to 32 readable bytes.
pub(super) unsafe fn key(p: *const u8) -> Result<Zeroizing<[u8; 32]>, RwgError> {
    if p.is_null() {
        return Err(RwgError::NullPointer);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    // SAFETY: not NULL, 32 readable bytes (the caller's promise); `u8` needs no alignment and
    // `key` is our own array, so the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(p, key.as_mut_ptr(), 32) };
    Ok(key)
}

/// The caller's input buffer. NULL is accepted with length 0 (an empty buffer).
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes that nobody writes during the call.
pub(super) unsafe fn bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], RwgError> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(RwgError::NullPointer)
        };
    }
    if len > isize::MAX as usize {
        return Err(RwgError::InvalidArgument);
    }
    // SAFETY: not NULL, `len` readable bytes that stay unchanged (the caller's promise), at
    // most isize::MAX (checked); `u8` needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The caller's output buffer. NULL is accepted with length 0 (an empty buffer).
///
/// # Safety
/// `p` is NULL or valid for reads and writes of `len` bytes that nobody else touches during
/// the call.
pub(super) unsafe fn bytes_mut<'a>(p: *mut u8, len: usize) -> Result<&'a mut [u8], RwgError> {
    if p.is_null() {
        return if len == 0 {
            Ok(&mut [])
        } else {
            Err(RwgError::NullPointer)
        };
    }
    if len > isize::MAX as usize {
        return Err(RwgError::InvalidArgument);
    }
    // SAFETY: not NULL, `len` bytes valid for reads and writes and used by no one else during
    // the call (the caller's promise), at most isize::MAX (checked); `u8` needs no alignment
    // and has no invalid values. The library never reads a byte of an output buffer it did
    // not write first, so memory the caller left uninitialized (fresh from malloc) is not
    // read either (as quiche's C ABI, which takes output buffers the same way).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Whether two byte ranges share a byte (an input and an output buffer must not: Rust may
/// not have a shared and a mutable view of the same bytes).
pub(super) fn overlap(a: *const u8, a_len: usize, b: *const u8, b_len: usize) -> bool {
    let (a, b) = (a as usize, b as usize);
    a_len > 0 && b_len > 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// A NUL-terminated string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that nobody writes during the call.
pub(super) unsafe fn c_str<'a>(p: *const c_char) -> Result<&'a CStr, RwgError> {
    if p.is_null() {
        return Err(RwgError::NullPointer);
    }
    // SAFETY: not NULL, NUL-terminated and unchanged during the call (the caller's promise).
    Ok(unsafe { CStr::from_ptr(p) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_any_shared_byte() {
        let buf = [0u8; 16];
        let p = buf.as_ptr();
        assert!(overlap(p, 8, p.wrapping_add(7), 8));
        assert!(!overlap(p, 8, p.wrapping_add(8), 8));
        assert!(!overlap(p, 0, p, 8), "an empty range shares nothing");
        assert!(overlap(p.wrapping_add(4), 1, p, 16));
    }

    #[test]
    fn null_is_refused_except_as_an_empty_buffer() {
        // SAFETY: NULL pointers only (the functions must not touch memory then).
        unsafe {
            assert_eq!(bytes(std::ptr::null(), 0), Ok(&[][..]));
            assert_eq!(
                bytes(std::ptr::null(), 1).err(),
                Some(RwgError::NullPointer)
            );
            assert_eq!(bytes_mut(std::ptr::null_mut(), 0).map(|b| b.len()), Ok(0));
            assert_eq!(key(std::ptr::null()).err(), Some(RwgError::NullPointer));
            assert_eq!(c_str(std::ptr::null()).err(), Some(RwgError::NullPointer));
        }
        assert!(out::<u64>(std::ptr::null_mut()).is_err());
        let mut word = [0u64; 2];
        let misaligned = (word.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut u64;
        assert_eq!(out(misaligned).err(), Some(RwgError::InvalidArgument));
    }
}
