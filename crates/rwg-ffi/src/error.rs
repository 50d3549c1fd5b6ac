//! The one error type of the C ABI and its messages (`rwg_strerror`).

use std::ffi::CStr;

/// What every function of the C ABI returns: 0 on success, a negative code otherwise.
///
/// Codes are stable: new ones are added with new numbers, none is renumbered.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwgError {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullPointer = -1,
    /// The handle was never issued, or was freed (`rwg_core_free`) or stopped
    /// (`rwg_tunnel_stop`) already.
    InvalidHandle = -2,
    /// A caller's buffer is too small for the result.
    BufferTooSmall = -3,
    /// An argument is malformed or out of range: a length, a key, an address, a prefix, a
    /// descriptor, buffers that overlap.
    InvalidArgument = -4,
    /// A configuration string is malformed: not UTF-8, a syntax error, an unknown key, a bad
    /// value (the log says which line, never the value of a key).
    InvalidConfig = -5,
    /// No peer has that public key.
    UnknownPeer = -6,
    /// An endpoint's host name could not be resolved.
    Resolve = -7,
    /// The UDP port is in use (or the fwmark could not be set).
    AddressInUse = -8,
    /// The descriptor is not a TUN device.
    NotTun = -9,
    /// A system call failed (the log says which).
    Io = -10,
    /// The tunnel stopped on its own: its TUN device went away or an I/O thread failed
    /// (the reason was logged). Stop it to release the handle.
    TunnelStopped = -11,
    /// Not available in this build or on this platform (the tunnel level without the
    /// `tunnel` feature; a second logger when the process already has a `tracing` subscriber).
    Unsupported = -12,
    /// A bug in the library: a panic was caught at the boundary (and logged).
    Internal = -13,
}

/// Every code (outside the enum, so that the header does not list it as a constant).
const ALL: [RwgError; 14] = [
    RwgError::Ok,
    RwgError::NullPointer,
    RwgError::InvalidHandle,
    RwgError::BufferTooSmall,
    RwgError::InvalidArgument,
    RwgError::InvalidConfig,
    RwgError::UnknownPeer,
    RwgError::Resolve,
    RwgError::AddressInUse,
    RwgError::NotTun,
    RwgError::Io,
    RwgError::TunnelStopped,
    RwgError::Unsupported,
    RwgError::Internal,
];

impl RwgError {
    /// A short description, as `rwg_strerror` returns it.
    pub fn message(self) -> &'static CStr {
        match self {
            RwgError::Ok => c"success",
            RwgError::NullPointer => c"a pointer argument was NULL",
            RwgError::InvalidHandle => {
                c"invalid handle (never issued, or already freed or stopped)"
            }
            RwgError::BufferTooSmall => c"buffer too small",
            RwgError::InvalidArgument => c"invalid argument",
            RwgError::InvalidConfig => c"invalid configuration",
            RwgError::UnknownPeer => c"no peer with that public key",
            RwgError::Resolve => c"cannot resolve an endpoint host name",
            RwgError::AddressInUse => c"UDP port in use or fwmark not settable",
            RwgError::NotTun => c"the descriptor is not a TUN device",
            RwgError::Io => c"system call failed",
            RwgError::TunnelStopped => c"the tunnel stopped on its own",
            RwgError::Unsupported => c"not supported in this build",
            RwgError::Internal => c"internal error (a bug in rwg)",
        }
    }

    /// The code for an integer, if it is one.
    pub fn from_code(code: i32) -> Option<RwgError> {
        ALL.into_iter().find(|e| *e as i32 == code)
    }
}

/// The message of any integer: unknown codes get a message that says so.
pub fn strerror(code: i32) -> &'static CStr {
    RwgError::from_code(code).map_or(c"unknown error code", RwgError::message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_zero_or_negative_and_named() {
        let mut seen = std::collections::BTreeSet::new();
        for e in ALL {
            let code = e as i32;
            assert!(code <= 0, "{e:?}");
            assert!(seen.insert(code), "{e:?} reuses {code}");
            assert_eq!(RwgError::from_code(code), Some(e));
            assert_ne!(strerror(code), strerror(1), "{e:?} has the unknown message");
        }
        // Contiguous: a code added later must be added to ALL as well.
        assert_eq!(seen.len(), ALL.len());
        assert_eq!(*seen.first().expect("codes"), -(ALL.len() as i32 - 1));
        assert_eq!(strerror(1), c"unknown error code");
        assert_eq!(strerror(i32::MIN), c"unknown error code");
    }
}
