//! The tunnel level: `rwg_tunnel_*`.
//!
//! Every function may be called from any thread. Calls on one tunnel are serialized where
//! they must be (`set` and `get` one at a time); `rwg_tunnel_stop` waits for calls in
//! progress on other threads. None of them needs root.

use std::ffi::c_char;
use std::os::fd::{FromRawFd, OwnedFd};

use super::{guard, ptr};
use crate::error::RwgError;
use crate::handles::HandleTable;
use crate::tunnel::{Tunnel, TunnelConfig};
use crate::types::RwgTunnel;

static TUNNELS: HandleTable<Tunnel> = HandleTable::new();

fn tunnel(handle: RwgTunnel) -> Result<std::sync::Arc<Tunnel>, RwgError> {
    TUNNELS.get(handle.id)
}

/// Takes ownership of `fd` if it is an open descriptor.
fn adopt(fd: i32) -> Result<OwnedFd, RwgError> {
    if fd < 0 {
        return Err(RwgError::InvalidArgument);
    }
    // SAFETY: F_GETFD reads the descriptor's flags and changes nothing; on a number that is
    // not an open descriptor it fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(RwgError::InvalidArgument);
    }
    // SAFETY: `fd` is open (checked just above), and the caller hands it over: every
    // `rwg_tunnel_start*` function documents that it takes ownership of the descriptor, so
    // nothing else closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts from a configuration string, with the descriptor adopted first so that every
/// failure closes it.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `rwg_tunnel`.
unsafe fn start(
    function: &str,
    wg_quick: bool,
    config: *const c_char,
    tun_fd: i32,
    out: *mut RwgTunnel,
) -> RwgError {
    guard(function, || {
        let tun = adopt(tun_fd)?;
        // SAFETY: NULL or NUL-terminated (the caller's promise).
        let text = unsafe { ptr::c_str(config) }?;
        let out = ptr::out(out)?;
        let text = text.to_str().map_err(|_| RwgError::InvalidConfig)?;
        let config = if wg_quick {
            TunnelConfig::WgQuick(text)
        } else {
            TunnelConfig::Uapi(text)
        };
        let id = TUNNELS.insert(Tunnel::start(config, tun)?);
        // SAFETY: `out` points to a writable `rwg_tunnel` (the caller's promise).
        unsafe { out.write(RwgTunnel { id }) };
        Ok(())
    })
}

/// Starts a tunnel on the TUN descriptor `tun_fd` with a UAPI configuration: the lines of a
/// `wg set` request as the configuration socket takes them (`private_key=<hex>`,
/// `listen_port=`, `public_key=<hex>`, `endpoint=`, `allowed_ip=`, ...; without `set=1`;
/// empty lines are skipped). The tunnel runs on threads of its own until `rwg_tunnel_stop`.
///
/// Ownership: the tunnel takes `tun_fd` — it is closed when the tunnel stops, and also when
/// this function fails for any reason but a negative `tun_fd` or one that is not open
/// (`RWG_ERROR_INVALID_ARGUMENT`, nothing to close). `config` is only read during the call;
/// the caller should wipe it (it holds the private key).
///
/// The descriptor may come with or without `IFF_VNET_HDR` (with it, TSO/GRO offloads are
/// used); it must be in `IFF_TUN | IFF_NO_PI` mode, as Android's `VpnService` and Linux give it.
///
/// Errors: `RWG_ERROR_INVALID_CONFIG` (a bad line: the log says which errno),
/// `RWG_ERROR_NOT_TUN`, `RWG_ERROR_ADDRESS_IN_USE` (the listen port), `RWG_ERROR_IO`,
/// `RWG_ERROR_UNSUPPORTED` (a build without the tunnel level).
///
/// Thread-safe.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string; `out` is NULL or points to a writable
/// `rwg_tunnel`; `tun_fd` is a descriptor the caller owns and gives up.
#[no_mangle]
pub unsafe extern "C" fn rwg_tunnel_start(
    config: *const c_char,
    tun_fd: i32,
    out: *mut RwgTunnel,
) -> RwgError {
    // SAFETY: the caller's promises, passed on.
    unsafe { start("rwg_tunnel_start", false, config, tun_fd, out) }
}

/// `rwg_tunnel_start` with a wg-quick configuration file's text (`[Interface]`, `[Peer]`).
/// `PrivateKey`, `ListenPort`, `FwMark` and the peers configure the tunnel; `Address`,
/// `DNS`, `MTU`, `Table` and the `PreUp`/`PostUp`/`PreDown`/`PostDown` commands belong to
/// whoever set up the TUN interface (the app, with `VpnService.Builder` or
/// `NEPacketTunnelNetworkSettings`): they are accepted and ignored. Host names in `Endpoint`
/// are resolved during the call (blocking on the system resolver).
///
/// Ownership of `tun_fd` and `config` as for `rwg_tunnel_start`.
///
/// Errors: as `rwg_tunnel_start`, and `RWG_ERROR_RESOLVE`.
///
/// Thread-safe.
///
/// # Safety
/// As for `rwg_tunnel_start`.
#[no_mangle]
pub unsafe extern "C" fn rwg_tunnel_start_wg_quick(
    config: *const c_char,
    tun_fd: i32,
    out: *mut RwgTunnel,
) -> RwgError {
    // SAFETY: the caller's promises, passed on.
    unsafe { start("rwg_tunnel_start_wg_quick", true, config, tun_fd, out) }
}

/// Reconfigures a running tunnel with the lines of a UAPI `set` request (as for
/// `rwg_tunnel_start`): sessions of peers that stay are kept. A malformed request (an unknown
/// key, a bad value) changes nothing; one that fails while applying (a port in use) leaves the
/// lines before the failing one applied, as on the configuration socket.
///
/// Thread-safe; `set` and `get` calls on one tunnel run one at a time.
///
/// Errors: `RWG_ERROR_INVALID_CONFIG`, `RWG_ERROR_ADDRESS_IN_USE`, `RWG_ERROR_IO`.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rwg_tunnel_set(tunnel: RwgTunnel, config: *const c_char) -> RwgError {
    guard("rwg_tunnel_set", || {
        // SAFETY: NULL or NUL-terminated (the caller's promise).
        let text = unsafe { ptr::c_str(config) }?;
        let text = text.to_str().map_err(|_| RwgError::InvalidConfig)?;
        self::tunnel(tunnel)?.set(text)
    })
}

/// Reads a tunnel's state as the lines of a UAPI `get` reply (`private_key=`,
/// `listen_port=`, rwg's counters as `rwg_*` keys (`rwg_dropped_<reason>=`,
/// `rwg_handshakes_completed=`, ...; skip keys you do not know), then per peer `public_key=`,
/// `endpoint=`, `last_handshake_time_sec=`, `rx_bytes=`, `tx_bytes=`, `allowed_ip=`, ...),
/// NUL-terminated, into `out`.
///
/// `*needed` is always set to the size the text needs, NUL included. If `out_size` is smaller,
/// nothing is written to `out` and the result is `RWG_ERROR_BUFFER_TOO_SMALL`: call again with
/// a larger buffer (the state may have grown meanwhile). `out` may be NULL when `out_size` is
/// 0, to ask for the size. The text holds the private key: the caller should wipe it.
///
/// Thread-safe; `set` and `get` calls on one tunnel run one at a time.
///
/// # Safety
/// `out` is NULL (with `out_size` 0) or valid for `out_size` bytes of writes; `needed` is NULL
/// or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rwg_tunnel_get(
    tunnel: RwgTunnel,
    out: *mut c_char,
    out_size: usize,
    needed: *mut usize,
) -> RwgError {
    guard("rwg_tunnel_get", || {
        // SAFETY: NULL with size 0, or `out_size` writable bytes (the caller's promise).
        let out = unsafe { ptr::bytes_mut(out.cast::<u8>(), out_size) }?;
        let needed = ptr::out(needed)?;
        let text = self::tunnel(tunnel)?.get();
        let size = text.len() + 1;
        // SAFETY: `needed` points to a writable `size_t` (the caller's promise).
        unsafe { needed.write(size) };
        let out = out.get_mut(..size).ok_or(RwgError::BufferTooSmall)?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}

/// After the network changed (the app's connectivity callback): new UDP sockets on the same
/// port, and a handshake with every peer that has an endpoint, so that each learns our new
/// address. Sessions are kept. Blocks for up to about a second (the old sockets' readers must
/// let go of the port). On Android, `protect()` the new descriptors (`rwg_tunnel_socket_fds`).
///
/// Errors: `RWG_ERROR_ADDRESS_IN_USE` if the port was taken meanwhile (the tunnel then sends
/// from a new port).
///
/// Thread-safe; packets keep flowing (from a stand-in port) while it runs.
#[no_mangle]
pub extern "C" fn rwg_tunnel_bump_sockets(tunnel: RwgTunnel) -> RwgError {
    guard("rwg_tunnel_bump_sockets", || {
        self::tunnel(tunnel)?.bump_sockets()
    })
}

/// Writes the descriptors of the tunnel's IPv4 and IPv6 UDP sockets (-1 for a family the host
/// does not have), for an app whose VPN routes would capture the tunnel's own datagrams
/// (Android: `VpnService.protect(fd)`). The tunnel owns them: do not close them. They change
/// with `listen_port` and after `rwg_tunnel_bump_sockets`.
///
/// Thread-safe.
///
/// # Safety
/// `ipv4` and `ipv6` are each NULL or point to a writable `int32_t`.
#[no_mangle]
pub unsafe extern "C" fn rwg_tunnel_socket_fds(
    tunnel: RwgTunnel,
    ipv4: *mut i32,
    ipv6: *mut i32,
) -> RwgError {
    guard("rwg_tunnel_socket_fds", || {
        let (out4, out6) = (ptr::out(ipv4)?, ptr::out(ipv6)?);
        let (v4, v6) = self::tunnel(tunnel)?.socket_fds();
        // SAFETY: both point to writable `int32_t`s (the caller's promise).
        unsafe {
            out4.write(v4);
            out6.write(v6);
        }
        Ok(())
    })
}

/// `RWG_ERROR_OK` while the tunnel runs; `RWG_ERROR_TUNNEL_STOPPED` once it stopped on its own
/// (the TUN interface went away, an I/O thread failed: the reason was logged). A stopped
/// tunnel still needs `rwg_tunnel_stop` to release its handle.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rwg_tunnel_status(tunnel: RwgTunnel) -> RwgError {
    guard("rwg_tunnel_status", || self::tunnel(tunnel)?.status())
}

/// Stops a tunnel and releases its handle (`RWG_ERROR_INVALID_HANDLE` from now on, also for a
/// second stop). Returns once the threads have exited and the TUN descriptor and the sockets
/// are closed (about a second), so the same port can be bound again at once.
///
/// Errors: `RWG_ERROR_IO` if the threads did not exit within 5 seconds (the handle is
/// released anyway; they exit later).
///
/// Thread-safe: calls in progress on the tunnel on other threads finish first.
#[no_mangle]
pub extern "C" fn rwg_tunnel_stop(tunnel: RwgTunnel) -> RwgError {
    guard("rwg_tunnel_stop", || {
        Tunnel::stop(TUNNELS.remove(tunnel.id)?)
    })
}
