//! The app's logging callback and the context pointer that goes with it.

use std::ffi::{c_char, c_void, CString};
use std::sync::{PoisonError, RwLock};

/// A logging callback: `level` is an `rwg_log_level`, `message` one line without a newline,
/// valid only during the call.
pub type RwgLogFn = Option<extern "C" fn(context: *mut c_void, level: i32, message: *const c_char)>;

struct Target {
    callback: extern "C" fn(*mut c_void, i32, *const c_char),
    context: *mut c_void,
}

// SAFETY: the context is only ever passed back to the callback. `rwg_set_logger`'s contract
// makes the caller promise that the callback may be called with it from any thread, at the
// same time from several.
unsafe impl Send for Target {}
// SAFETY: as for Send: shared use is calling the callback, which the caller allowed from any
// number of threads at once.
unsafe impl Sync for Target {}

/// The callback, held for reading while it runs: once `set` returns, the old callback is not
/// running and will not be called again.
static TARGET: RwLock<Option<Target>> = RwLock::new(None);

/// Replaces the callback (`None`: no callback).
pub(crate) fn set(callback: RwgLogFn, context: *mut c_void) {
    *TARGET.write().unwrap_or_else(PoisonError::into_inner) =
        callback.map(|callback| Target { callback, context });
}

/// Passes one line to the callback, if there is one.
pub(crate) fn emit(level: i32, message: &str) {
    let target = TARGET.read().unwrap_or_else(PoisonError::into_inner);
    let Some(t) = target.as_ref() else {
        return;
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    (t.callback)(t.context, level, text.as_ptr());
}
