//! Everything unsafe: the `extern "C"` functions, which turn the caller's raw pointers into
//! Rust references after checking them, and the logging callback.
//!
//! Each function has the same shape: check every pointer (NULL first) and length, look the
//! handle up, call the safe code, write the out-parameters — all inside [`guard`], so that a
//! panic becomes [`RwgError::Internal`] instead of unwinding into C. A call that fails writes
//! no out-parameter (except `rwg_tunnel_get`'s size) and changes nothing.

pub(crate) mod abi;
pub(crate) mod core_abi;
pub(crate) mod logger;
mod ptr;
pub(crate) mod tunnel_abi;

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::RwgError;

/// Runs the body of an `extern "C"` function: its error, or `Ok`, or `Internal` if it
/// panicked (logged with the function's name).
fn guard(function: &str, body: impl FnOnce() -> Result<(), RwgError>) -> RwgError {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => RwgError::Ok,
        Ok(Err(e)) => e,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            // A panic in the logger itself must not escape either.
            let _ = catch_unwind(|| tracing::error!("panic in {function}: {what}"));
            RwgError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        assert_eq!(guard("ok", || Ok(())), RwgError::Ok);
        assert_eq!(
            guard("err", || Err(RwgError::UnknownPeer)),
            RwgError::UnknownPeer
        );
        assert_eq!(
            guard("boom", || -> Result<(), RwgError> { panic!("boom") }),
            RwgError::Internal
        );
    }
}
