//! The core level: `rwg_core_*`.
//!
//! Every function may be called from any thread, concurrently with any other on the same
//! core (the core takes its own locks; encryption and decryption of different packets run in
//! parallel). Time is the caller's: `now_ns` is nanoseconds on any monotonic clock that never
//! goes back, the same clock for every call on one core.

use std::ffi::c_char;

use super::{guard, ptr};
use crate::core::Core;
use crate::error::RwgError;
use crate::handles::HandleTable;
use crate::types::{RwgAddr, RwgCore, RwgCounters, RwgEvent, RwgPeerStats, RwgResult};

static CORES: HandleTable<Core> = HandleTable::new();

fn core(handle: RwgCore) -> Result<std::sync::Arc<Core>, RwgError> {
    CORES.get(handle.id)
}

/// Creates a core with the 32-byte `private_key` and no peers; writes its handle to `out`.
/// The key is copied (the caller may wipe its copy). Randomness comes from the operating
/// system. Free the core with `rwg_core_free`.
///
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` for the all-zero key.
///
/// Thread-safe.
///
/// # Safety
/// `private_key` is NULL or points to 32 readable bytes; `out` is NULL or points to a
/// writable `rwg_core`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_new(private_key: *const u8, out: *mut RwgCore) -> RwgError {
    guard("rwg_core_new", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let key = unsafe { ptr::key(private_key) }?;
        let out = ptr::out(out)?;
        let id = CORES.insert(Core::new(*key)?);
        // SAFETY: `out` points to a writable `rwg_core` (the caller's promise).
        unsafe { out.write(RwgCore { id }) };
        Ok(())
    })
}

/// Frees a core: its handle is invalid from now on (`RWG_ERROR_INVALID_HANDLE`, also for a
/// second free). A call in progress on another thread finishes first; the memory and keys go
/// when it does.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_core_free(core: RwgCore) -> RwgError {
    guard("rwg_core_free", || CORES.remove(core.id).map(drop))
}

/// Tells the core the wall clock: at `now_ns` on the caller's clock it is `unix_ns`
/// nanoseconds since the Unix epoch. Handshake timestamps (a peer refuses ones that are not
/// newer than the last it saw, also across restarts of this app) and
/// `last_handshake_unix_ns` derive from it: call it once after `rwg_core_new`, and again
/// when the system clock was set.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_core_set_wall_clock(core: RwgCore, now_ns: u64, unix_ns: u64) -> RwgError {
    guard("rwg_core_set_wall_clock", || {
        self::core(core)?.set_wall_clock(now_ns, unix_ns);
        Ok(())
    })
}

/// Sets the MTU (576 to 65535) that packets are padded up to (default 1420).
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` out of range.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_core_set_mtu(core: RwgCore, mtu: u32) -> RwgError {
    guard("rwg_core_set_mtu", || self::core(core)?.set_mtu(mtu))
}

/// Adds a peer by its 32-byte public key (copied). Adding one that exists changes nothing.
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` for the core's own public key.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_add_peer(core: RwgCore, public_key: *const u8) -> RwgError {
    guard("rwg_core_add_peer", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let pk = unsafe { ptr::key(public_key) }?;
        self::core(core)?.add_peer(*pk)
    })
}

/// Removes a peer with its allowed IPs and sessions.
/// Errors: `RWG_ERROR_UNKNOWN_PEER`.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_remove_peer(core: RwgCore, public_key: *const u8) -> RwgError {
    guard("rwg_core_remove_peer", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let pk = unsafe { ptr::key(public_key) }?;
        self::core(core)?.remove_peer(*pk)
    })
}

/// Sets a peer's 32-byte preshared key (copied; all zeros: none).
/// Errors: `RWG_ERROR_UNKNOWN_PEER`.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` and `preshared_key` are each NULL or point to 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_set_preshared_key(
    core: RwgCore,
    public_key: *const u8,
    preshared_key: *const u8,
) -> RwgError {
    guard("rwg_core_set_preshared_key", || {
        // SAFETY: NULL or 32 readable bytes each (the caller's promise).
        let (pk, psk) = unsafe { (ptr::key(public_key)?, ptr::key(preshared_key)?) };
        self::core(core)?.set_preshared_key(*pk, *psk)
    })
}

/// Sets where a peer is reached (`rwg_addr_parse` makes an `rwg_addr` of text). The core
/// also learns it from the peer's authentic datagrams (roaming).
/// Errors: `RWG_ERROR_UNKNOWN_PEER`; `RWG_ERROR_INVALID_ARGUMENT` for a bad family.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes; `endpoint` is NULL or points to a
/// readable `rwg_addr`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_set_endpoint(
    core: RwgCore,
    public_key: *const u8,
    endpoint: *const RwgAddr,
) -> RwgError {
    guard("rwg_core_set_endpoint", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let pk = unsafe { ptr::key(public_key) }?;
        // SAFETY: NULL or a readable `rwg_addr` (the caller's promise).
        let endpoint = unsafe { read_addr(endpoint) }?;
        self::core(core)?.set_endpoint(*pk, endpoint)
    })
}

/// Adds an allowed IP to a peer: `"10.0.0.0/24"`, `"fd00::/64"`, or an address alone for a
/// single host. A prefix another peer had moves to this one.
/// Errors: `RWG_ERROR_UNKNOWN_PEER`; `RWG_ERROR_INVALID_ARGUMENT` if `prefix` is not one.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes; `prefix` is NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_add_allowed_ip(
    core: RwgCore,
    public_key: *const u8,
    prefix: *const c_char,
) -> RwgError {
    guard("rwg_core_add_allowed_ip", || {
        // SAFETY: NULL or 32 readable bytes; NULL or NUL-terminated (the caller's promises).
        let (pk, prefix) = unsafe { (ptr::key(public_key)?, ptr::c_str(prefix)?) };
        let prefix = prefix.to_str().map_err(|_| RwgError::InvalidArgument)?;
        self::core(core)?.add_allowed_ip(*pk, prefix)
    })
}

/// Sets a peer's persistent keepalive interval in seconds (0: off). Turning it on queues a
/// keepalive (or a handshake) at once: drain `rwg_core_poll_transmit`.
/// Errors: `RWG_ERROR_UNKNOWN_PEER`.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_set_persistent_keepalive(
    core: RwgCore,
    now_ns: u64,
    public_key: *const u8,
    seconds: u16,
) -> RwgError {
    guard("rwg_core_set_persistent_keepalive", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let pk = unsafe { ptr::key(public_key) }?;
        self::core(core)?.set_persistent_keepalive(now_ns, *pk, seconds)
    })
}

/// Encrypts an IP packet from the host for the peer whose allowed IPs hold its destination.
/// `packet[0..packet_len]` is only read; `out` (the caller's, `out_size` bytes, at least
/// `packet_len + RWG_MAX_OVERHEAD`) receives the datagram; the two must not overlap.
///
/// `result->kind`: `TRANSMIT` (send `out[0..len]` to `addr`), `STAGED` (no session yet: the
/// packet waits inside the core, the handshake it started is in `rwg_core_poll_transmit`), or
/// `DROPPED` with a reason (`NO_ROUTE`, `NO_ENDPOINT`, ...). Drain `rwg_core_poll_transmit`
/// afterwards in any case.
///
/// Errors: `RWG_ERROR_BUFFER_TOO_SMALL`; `RWG_ERROR_INVALID_ARGUMENT` if the buffers overlap
/// or `packet_len` exceeds 65535.
///
/// Thread-safe: several threads may encrypt and decrypt on one core at once.
///
/// # Safety
/// `packet` is NULL (with `packet_len` 0) or valid for `packet_len` bytes of reads; `out`
/// is NULL (with `out_size` 0) or valid for `out_size` bytes of writes; `result` is NULL or
/// points to a writable `rwg_result`. Nobody else uses these during the call.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_encapsulate(
    core: RwgCore,
    now_ns: u64,
    packet: *const u8,
    packet_len: usize,
    out: *mut u8,
    out_size: usize,
    result: *mut RwgResult,
) -> RwgError {
    guard("rwg_core_encapsulate", || {
        if ptr::overlap(packet, packet_len, out, out_size) {
            return Err(RwgError::InvalidArgument);
        }
        // SAFETY: the caller's promises above; the two ranges do not overlap (checked).
        let (packet, out) = unsafe {
            (
                ptr::bytes(packet, packet_len)?,
                ptr::bytes_mut(out, out_size)?,
            )
        };
        let result = ptr::out(result)?;
        let r = self::core(core)?.encapsulate(now_ns, packet, out)?;
        // SAFETY: `result` points to a writable `rwg_result` (the caller's promise).
        unsafe { result.write(r) };
        Ok(())
    })
}

/// Handles a datagram that arrived from `source`. `datagram[0..datagram_len]` is only
/// read; `out` (at least `datagram_len` bytes; not overlapping) receives an IP packet.
///
/// `result->kind`: `PACKET` (deliver `out[0..len]` to the host; it came from `peer`),
/// `KEEPALIVE`, `HANDSHAKE` (answered: drain `rwg_core_poll_transmit`, which also holds
/// packets that waited for the handshake), or `DROPPED` with a reason. A datagram from the
/// network is never an error: whatever it holds, the result says what became of it.
///
/// Errors: `RWG_ERROR_BUFFER_TOO_SMALL`; `RWG_ERROR_INVALID_ARGUMENT` if the buffers overlap,
/// `datagram_len` exceeds 65535 or `source` has no valid family.
///
/// Thread-safe: several threads may encrypt and decrypt on one core at once.
///
/// # Safety
/// `source` is NULL or points to a readable `rwg_addr`; `datagram` is NULL (with length 0)
/// or valid for `datagram_len` bytes of reads; `out` is NULL (with size 0) or valid for
/// `out_size` bytes of writes; `result` is NULL or points to a writable `rwg_result`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_decapsulate(
    core: RwgCore,
    now_ns: u64,
    source: *const RwgAddr,
    datagram: *const u8,
    datagram_len: usize,
    out: *mut u8,
    out_size: usize,
    result: *mut RwgResult,
) -> RwgError {
    guard("rwg_core_decapsulate", || {
        // SAFETY: NULL or a readable `rwg_addr` (the caller's promise).
        let source = unsafe { read_addr(source) }?;
        if ptr::overlap(datagram, datagram_len, out, out_size) {
            return Err(RwgError::InvalidArgument);
        }
        // SAFETY: the caller's promises above; the two ranges do not overlap (checked).
        let (datagram, out) = unsafe {
            (
                ptr::bytes(datagram, datagram_len)?,
                ptr::bytes_mut(out, out_size)?,
            )
        };
        let result = ptr::out(result)?;
        let r = self::core(core)?.decapsulate(now_ns, source, datagram, out)?;
        // SAFETY: `result` points to a writable `rwg_result` (the caller's promise).
        unsafe { result.write(r) };
        Ok(())
    })
}

/// Runs what is due at `now_ns`: timers (handshake retries, keepalives, rekeys, key
/// erasure). Call it when `now_ns` reaches `rwg_core_next_deadline`, then drain
/// `rwg_core_poll_transmit` and `rwg_core_poll_event`.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_core_tick(core: RwgCore, now_ns: u64) -> RwgError {
    guard("rwg_core_tick", || {
        self::core(core)?.tick(now_ns);
        Ok(())
    })
}

/// Writes to `out` when `rwg_core_tick` must run next, on the caller's clock:
/// `RWG_NO_DEADLINE` if no timer is armed; a time already past means now. It moves earlier
/// after input (a handshake to retry, a keepalive to send): read it again after each call.
///
/// Thread-safe.
///
/// # Safety
/// `out` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_next_deadline(core: RwgCore, out: *mut u64) -> RwgError {
    guard("rwg_core_next_deadline", || {
        let out = ptr::out(out)?;
        let deadline = self::core(core)?.next_deadline();
        // SAFETY: `out` points to a writable `uint64_t` (the caller's promise).
        unsafe { out.write(deadline) };
        Ok(())
    })
}

/// Takes the next datagram the core wants sent (a handshake message, a keepalive, a packet
/// that waited for a handshake) into `out`: `result->kind` is `TRANSMIT` (send `out[0..len]`
/// to `addr`) or `NONE` (nothing left). Call until `NONE`.
///
/// A datagram longer than `out_size` is dropped and counted (`RWG_DROP_REASON_BUFFER_TOO_SMALL`):
/// give at least the largest packet passed to `rwg_core_encapsulate` plus
/// `RWG_MAX_OVERHEAD` (handshake messages are at most 148 bytes).
///
/// Thread-safe: each datagram is handed out once, to one of the callers.
///
/// # Safety
/// `out` is NULL (with size 0) or valid for `out_size` bytes of writes; `result` is NULL or
/// points to a writable `rwg_result`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_poll_transmit(
    core: RwgCore,
    out: *mut u8,
    out_size: usize,
    result: *mut RwgResult,
) -> RwgError {
    guard("rwg_core_poll_transmit", || {
        // SAFETY: NULL with size 0, or `out_size` writable bytes (the caller's promise).
        let out = unsafe { ptr::bytes_mut(out, out_size) }?;
        let result = ptr::out(result)?;
        let r = self::core(core)?.poll_transmit(out);
        // SAFETY: `result` points to a writable `rwg_result` (the caller's promise).
        unsafe { result.write(r) };
        Ok(())
    })
}

/// Takes the next event (a handshake completed, an endpoint moved, ...) into `out`; its
/// `kind` is `RWG_EVENT_KIND_NONE` when there is none. Beyond 1024 events that nobody polls, the
/// oldest are dropped.
///
/// Thread-safe: each event is handed out once, to one of the callers.
///
/// # Safety
/// `out` is NULL or points to a writable `rwg_event`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_poll_event(core: RwgCore, out: *mut RwgEvent) -> RwgError {
    guard("rwg_core_poll_event", || {
        let out = ptr::out(out)?;
        let event = self::core(core)?.poll_event();
        // SAFETY: `out` points to a writable `rwg_event` (the caller's promise).
        unsafe { out.write(event) };
        Ok(())
    })
}

/// Writes a peer's counters and settings to `out`.
/// Errors: `RWG_ERROR_UNKNOWN_PEER`.
///
/// Thread-safe.
///
/// # Safety
/// `public_key` is NULL or points to 32 readable bytes; `out` is NULL or points to a
/// writable `rwg_peer_stats`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_peer_stats(
    core: RwgCore,
    public_key: *const u8,
    out: *mut RwgPeerStats,
) -> RwgError {
    guard("rwg_core_peer_stats", || {
        // SAFETY: NULL or 32 readable bytes (the caller's promise).
        let pk = unsafe { ptr::key(public_key) }?;
        let out = ptr::out(out)?;
        let stats = self::core(core)?.peer_stats(*pk)?;
        // SAFETY: `out` points to a writable `rwg_peer_stats` (the caller's promise).
        unsafe { out.write(stats) };
        Ok(())
    })
}

/// Writes the core's counters to `out`.
///
/// Thread-safe.
///
/// # Safety
/// `out` is NULL or points to a writable `rwg_counters`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_counters(core: RwgCore, out: *mut RwgCounters) -> RwgError {
    guard("rwg_core_counters", || {
        let out = ptr::out(out)?;
        let stats = self::core(core)?.stats();
        // SAFETY: `out` points to a writable `rwg_counters` (the caller's promise).
        unsafe { out.write(stats) };
        Ok(())
    })
}

/// Writes to `out` how many packets and datagrams were dropped for `reason`
/// (an `rwg_drop_reason` other than `NONE` and `OTHER`).
/// Errors: `RWG_ERROR_INVALID_ARGUMENT` for another value.
///
/// Thread-safe.
///
/// # Safety
/// `out` is NULL or points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn rwg_core_dropped(core: RwgCore, reason: i32, out: *mut u64) -> RwgError {
    guard("rwg_core_dropped", || {
        let out = ptr::out(out)?;
        let n = self::core(core)?.dropped(reason)?;
        // SAFETY: `out` points to a writable `uint64_t` (the caller's promise).
        unsafe { out.write(n) };
        Ok(())
    })
}

/// Reads an address from C: NULL, misaligned pointers and bad families are refused.
///
/// # Safety
/// `p` is NULL or points to a readable `rwg_addr`.
unsafe fn read_addr(p: *const RwgAddr) -> Result<std::net::SocketAddr, RwgError> {
    if p.is_null() {
        return Err(RwgError::NullPointer);
    }
    if !p.is_aligned() {
        return Err(RwgError::InvalidArgument);
    }
    // SAFETY: not NULL, aligned (checked), readable (this function's contract). Every field
    // is an integer or a byte array: any bits are valid.
    let addr = unsafe { p.read() };
    addr.to_socket_addr().ok_or(RwgError::InvalidArgument)
}
