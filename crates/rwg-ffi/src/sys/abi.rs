//! Functions of both levels: versions, error messages, logging, keys, addresses.

use std::ffi::{c_char, c_void, CStr};
use std::net::SocketAddr;

use rwg_proto::crypto::PrivateKey;

use super::logger::{self, RwgLogFn};
use super::{guard, ptr};
use crate::error::{strerror, RwgError};
use crate::types::{RwgAddr, RwgDropReason, RwgLogLevel, RWG_ABI_VERSION, RWG_KEY_BASE64_SIZE};

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the package version has a NUL"),
    };

/// The library's version, e.g. `"0.1.0"`: a static string, never freed.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn rwg_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version this library implements (`RWG_ABI_VERSION` of its header). An app that
/// loads the library at run time compares it with the `RWG_ABI_VERSION` it was compiled with.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn rwg_abi_version() -> u32 {
    RWG_ABI_VERSION
}

/// A description of an error code (any integer; unknown ones get "unknown error code"): a
/// static string, never freed.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn rwg_strerror(code: i32) -> *const c_char {
    strerror(code).as_ptr()
}

/// The name of a drop reason (`rwg_drop_reason`, e.g. `"replay"`), or `"unknown"`: a static
/// string, never freed.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn rwg_drop_reason_str(reason: i32) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<std::ffi::CString>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        rwg_proto::DropReason::ALL
            .iter()
            .map(|r| std::ffi::CString::new(r.name()).unwrap_or_default())
            .collect()
    });
    match RwgDropReason::to_core(reason) {
        Some(r) => names[r.index()].as_ptr(),
        None => c"unknown".as_ptr(),
    }
}

/// Sets the function that receives the library's log lines (both levels, every thread), and
/// the most verbose level passed on (`rwg_log_level`; out-of-range values clamp). `callback`
/// NULL turns logging off.
///
/// `callback(context, level, message)` may be called from any thread, from several at the
/// same time, until this function is called again: once it returns, the previous callback is
/// neither running nor called again, so its context may be freed. `message` is one line
/// without a newline, valid only during the call. The callback must not call into this
/// library. No line contains a private or preshared key.
///
/// Errors: `RWG_ERROR_UNSUPPORTED` if the process already has a global `tracing` subscriber
/// (a Rust app with its own logging: rwg's lines go there).
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_set_logger(
    callback: RwgLogFn,
    context: *mut c_void,
    max_level: i32,
) -> RwgError {
    guard("rwg_set_logger", || {
        if callback.is_none() {
            crate::log::set_max_level(RwgLogLevel::Off);
            logger::set(None, std::ptr::null_mut());
            return Ok(());
        }
        crate::log::install()?;
        logger::set(callback, context);
        crate::log::set_max_level(RwgLogLevel::from_code(max_level));
        Ok(())
    })
}

/// Writes a new private key (32 random bytes from the operating system, clamped as
/// `wg genkey` does) to `out`, which must have room for 32 bytes. The caller owns the copy
/// and should wipe it when done.
///
/// Thread-safe.
///
/// # Safety
/// `out` is NULL or points to 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_generate_private_key(out: *mut u8) -> RwgError {
    guard("rwg_generate_private_key", || {
        let out = ptr::out(out.cast::<[u8; 32]>())?;
        let key = PrivateKey::generate(&mut rand_core::OsRng);
        // SAFETY: `out` points to 32 writable bytes (the caller's promise).
        unsafe { out.write(*key.as_bytes()) };
        Ok(())
    })
}

/// Writes the public key of the 32-byte `private_key` to `out` (32 bytes).
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` for the all-zero key.
///
/// Thread-safe.
///
/// # Safety
/// `private_key` is NULL or points to 32 readable bytes; `out` is NULL or points to 32
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_public_key(private_key: *const u8, out: *mut u8) -> RwgError {
    guard("rwg_public_key", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let private = unsafe { ptr::key(private_key) }?;
        let out = ptr::out(out.cast::<[u8; 32]>())?;
        if *private == [0; 32] {
            return Err(RwgError::InvalidArgument);
        }
        let key = PrivateKey::from_bytes(*private);
        // SAFETY: `out` points to 32 writable bytes (the caller's promise).
        unsafe { out.write(*key.public_key().as_bytes()) };
        Ok(())
    })
}

/// Writes the 32-byte `key` in base64 as `wg(8)` prints it: 44 characters and a NUL, so
/// `out_size` must be at least `RWG_KEY_BASE64_SIZE` (45).
/// Errors: `RWG_ERROR_BUFFER_TOO_SMALL`.
///
/// Thread-safe.
///
/// # Safety
/// `key` is NULL or points to 32 readable bytes; `out` is NULL or points to `out_size`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_key_to_base64(
    key: *const u8,
    out: *mut c_char,
    out_size: usize,
) -> RwgError {
    guard("rwg_key_to_base64", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let key = unsafe { ptr::key(key) }?;
        if out.is_null() {
            return Err(RwgError::NullPointer);
        }
        if out_size < RWG_KEY_BASE64_SIZE {
            return Err(RwgError::BufferTooSmall);
        }
        // SAFETY: not NULL, `out_size` writable bytes (the caller's promise).
        let out = unsafe { ptr::bytes_mut(out.cast::<u8>(), RWG_KEY_BASE64_SIZE) }?;
        let text = zeroize::Zeroizing::new(rwg_config::key::encode_key(&key));
        out[..44].copy_from_slice(text.as_bytes());
        out[44] = 0;
        Ok(())
    })
}

/// Decodes a base64 key (44 characters, as `wg(8)` prints them) into `out` (32 bytes).
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` if `text` is not a key.
///
/// Thread-safe.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string; `out` is NULL or points to 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_key_from_base64(text: *const c_char, out: *mut u8) -> RwgError {
    guard("rwg_key_from_base64", || {
        // SAFETY: NULL or NUL-terminated (the caller's promise).
        let text = unsafe { ptr::c_str(text) }?;
        let out = ptr::out(out.cast::<[u8; 32]>())?;
        let text = text.to_str().map_err(|_| RwgError::InvalidArgument)?;
        let key = rwg_config::key::decode_key(text).map_err(|_| RwgError::InvalidArgument)?;
        // SAFETY: `out` points to 32 writable bytes (the caller's promise).
        unsafe { out.write(*key) };
        Ok(())
    })
}

/// Parses `"192.0.2.1:51820"` or `"[2001:db8::1]:51820"` into `out`.
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` if `text` is not such an address.
///
/// Thread-safe.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `rwg_addr`.
#[no_mangle]
pub unsafe extern "C" fn rwg_addr_parse(text: *const c_char, out: *mut RwgAddr) -> RwgError {
    guard("rwg_addr_parse", || {
        // SAFETY: NULL or NUL-terminated (the caller's promise).
        let text = unsafe { ptr::c_str(text) }?;
        let out = ptr::out(out)?;
        let addr: SocketAddr = text
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or(RwgError::InvalidArgument)?;
        // SAFETY: `out` points to a writable `rwg_addr` (the caller's promise).
        unsafe { out.write(addr.into()) };
        Ok(())
    })
}
