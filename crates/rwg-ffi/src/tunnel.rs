//! The tunnel level: a whole WireGuard interface on a TUN descriptor the app got from the
//! operating system, run by rwg-device's `Driver` on threads the library owns (a TUN
//! reader, a UDP reader per address family, the control thread, crypto workers).
//!
//! Configuration is the UAPI `set`/`get` language that `wg(8)` speaks over the daemon's
//! socket — the same lines, without the socket: [`Tunnel::set`] takes the lines of a `set`
//! request (without `set=1` and the final empty line), [`Tunnel::get`] returns those of a
//! `get` reply (without `errno=0`). `set` is applied line by line, not as a transaction, as
//! on the socket: what came before a bad line stays applied.
//!
//! Nothing here needs root: the TUN descriptor comes from the caller, the UDP ports are
//! unprivileged unless the configuration names one below 1024, and only `fwmark` needs
//! `CAP_NET_ADMIN`.
//!
//! Without the `tunnel` feature (platforms rwg-device does not support yet) every entry
//! point returns [`RwgError::Unsupported`](crate::error::RwgError::Unsupported).

/// Where a tunnel's configuration comes from.
#[derive(Clone, Copy, Debug)]
pub enum TunnelConfig<'a> {
    /// The lines of a UAPI `set` request.
    Uapi(&'a str),
    /// A wg-quick file (see the crate's `config` module for the keys that are the app's).
    WgQuick(&'a str),
}

#[cfg(feature = "tunnel")]
pub use imp::Tunnel;
#[cfg(not(feature = "tunnel"))]
pub use stub::Tunnel;

#[cfg(feature = "tunnel")]
mod imp {
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::sync::{Arc, Mutex, PoisonError, Weak};
    use std::time::{Duration, Instant};

    use rwg_device::driver::{Driver, DriverConfig};
    use rwg_device::pipeline::DataPlaneConfig;
    use rwg_device::tun::{Tun, TunError};
    use rwg_device::uapi::{
        format_get, DeviceSnapshot, Errno, Response, UapiDevice, UapiSession, MAX_LINE_LEN,
    };
    use rwg_device::{Shutdown, ShutdownHandle};
    use rwg_proto::crypto::{PresharedKey, PrivateKey};
    use zeroize::Zeroizing;

    use super::TunnelConfig;
    use crate::error::RwgError;

    /// How long [`Tunnel::stop`] waits for the threads to exit (they notice within a second).
    const STOP_WAIT: Duration = Duration::from_secs(5);

    /// A running tunnel.
    #[derive(Debug)]
    pub struct Tunnel {
        /// What `set` and `get` apply to; one request at a time.
        config: Mutex<DriverConfig>,
        /// Why the tunnel stopped on its own, once it has.
        stopped: Arc<Mutex<Option<Shutdown>>>,
    }

    impl Tunnel {
        /// Starts a tunnel on `tun`. The descriptor is the tunnel's from now on: closed when
        /// it stops, or at once if starting fails.
        pub fn start(config: TunnelConfig<'_>, tun: OwnedFd) -> Result<Tunnel, RwgError> {
            let body = match config {
                TunnelConfig::Uapi(text) => Zeroizing::new(text.to_owned()),
                TunnelConfig::WgQuick(text) => crate::config::wg_quick_to_uapi(text)?,
            };
            // A malformed configuration is refused before anything is bound or adopted.
            run_set(&mut Validator, &body)?;
            let tun = Tun::from_fd(tun).map_err(|e| {
                tracing::warn!("TUN descriptor: {e}");
                match e {
                    TunError::NotTun => RwgError::NotTun,
                    _ => RwgError::Io,
                }
            })?;
            let driver = Driver::with_config(0, DataPlaneConfig::default()).map_err(|e| {
                tracing::warn!("cannot bind UDP sockets: {e}");
                RwgError::AddressInUse
            })?;
            let mut config = DriverConfig(Arc::clone(&driver));
            apply_set(&mut config, &body)?;
            drop(body);
            let (handle, requests) = ShutdownHandle::channel();
            let stopped = Arc::new(Mutex::new(None));
            if let Err(e) = driver.start(Arc::new(tun), handle) {
                driver.request_stop();
                tracing::warn!("cannot start the tunnel: {e}");
                return Err(RwgError::Io);
            }
            // The driver reports why it stopped (the TUN went away, a thread failed) on this
            // channel; the channel closes when the driver is gone.
            let weak = Arc::downgrade(&driver);
            let record = Arc::clone(&stopped);
            let watcher = std::thread::Builder::new()
                .name("rwg-ffi-watch".into())
                .spawn(move || {
                    if let Ok(why) = requests.recv() {
                        if why.is_clean() {
                            tracing::info!("tunnel stopped: {why}");
                        } else {
                            tracing::error!("tunnel stopped: {why}");
                        }
                        *record.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                        if let Some(d) = weak.upgrade() {
                            d.request_stop();
                        }
                    }
                });
            if let Err(e) = watcher {
                driver.request_stop();
                tracing::warn!("cannot start a thread: {e}");
                return Err(RwgError::Io);
            }
            tracing::info!(port = driver.core().listen_port(), "tunnel started");
            Ok(Tunnel {
                config: Mutex::new(config),
                stopped,
            })
        }

        fn driver(&self) -> Arc<Driver> {
            Arc::clone(&self.config.lock().unwrap_or_else(PoisonError::into_inner).0)
        }

        /// Applies the lines of a UAPI `set` request.
        pub fn set(&self, body: &str) -> Result<(), RwgError> {
            let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            apply_set(&mut *config, body)
        }

        /// The lines of a UAPI `get` reply: the private key, the port, rwg's counters
        /// (`rwg_*` keys), every peer with its counters. The caller owns the only copy that
        /// is not zeroized (the snapshot's keys zeroize themselves).
        pub fn get(&self) -> Zeroizing<String> {
            let snapshot = self
                .config
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot();
            format_get(&snapshot)
        }

        /// New UDP sockets on the same port and a handshake with every peer, after a network
        /// change; sessions are kept.
        pub fn bump_sockets(&self) -> Result<(), RwgError> {
            self.driver().rebind_sockets().map_err(|e| {
                tracing::warn!("rebinding the UDP sockets: {e}");
                RwgError::AddressInUse
            })
        }

        /// The descriptors of the IPv4 and IPv6 UDP sockets (-1 for a family the host lacks),
        /// for an app that must exempt them from its own VPN routes (Android's
        /// `VpnService.protect`). They change when the port changes and after a bump.
        pub fn socket_fds(&self) -> (RawFd, RawFd) {
            let sockets = self.driver().sockets();
            let fd = |s: Option<&std::net::UdpSocket>| s.map_or(-1, |s| s.as_raw_fd());
            (fd(sockets.v4()), fd(sockets.v6()))
        }

        /// `Err(TunnelStopped)` once the tunnel stopped on its own.
        pub fn status(&self) -> Result<(), RwgError> {
            match *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(_) => Err(RwgError::TunnelStopped),
                None => Ok(()),
            }
        }

        /// Stops the tunnel and waits (about a second) until its threads are gone and the TUN
        /// descriptor and the sockets are closed. Calls in progress on other threads finish
        /// first.
        pub fn stop(tunnel: Arc<Tunnel>) -> Result<(), RwgError> {
            let driver = tunnel.driver();
            driver.request_stop();
            let gone: Weak<Driver> = Arc::downgrade(&driver);
            drop(driver);
            drop(tunnel);
            // The threads own the last references to the driver; there is no join handle to
            // wait on, so watch the references go, bounded.
            let started = Instant::now();
            while gone.strong_count() > 0 {
                if started.elapsed() > STOP_WAIT {
                    tracing::warn!("tunnel threads still running after {STOP_WAIT:?}");
                    return Err(RwgError::Io);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            tracing::info!("tunnel stopped");
            Ok(())
        }
    }

    /// Applies the lines of a `set` request. They are first run against a [`Validator`], so
    /// that a malformed request changes nothing (on the socket, lines before a bad one stay
    /// applied); what can only fail while applying (a port in use) may still leave the lines
    /// before it applied.
    fn apply_set(device: &mut dyn UapiDevice, body: &str) -> Result<(), RwgError> {
        run_set(&mut Validator, body)?;
        run_set(device, body)
    }

    /// A device that accepts every operation and keeps nothing: the session still checks
    /// every key and value.
    struct Validator;

    impl UapiDevice for Validator {
        fn snapshot(&self) -> DeviceSnapshot {
            DeviceSnapshot::default()
        }
        fn own_public_key(&self) -> Option<[u8; 32]> {
            None
        }
        fn set_private_key(&mut self, _: Option<PrivateKey>) -> Result<(), Errno> {
            Ok(())
        }
        fn set_listen_port(&mut self, _: u16) -> Result<(), Errno> {
            Ok(())
        }
        fn set_fwmark(&mut self, _: u32) -> Result<(), Errno> {
            Ok(())
        }
        fn remove_all_peers(&mut self) {}
        fn has_peer(&self, _: &[u8; 32]) -> bool {
            false
        }
        fn create_peer(&mut self, _: &[u8; 32]) -> Result<(), Errno> {
            Ok(())
        }
        fn remove_peer(&mut self, _: &[u8; 32]) {}
        fn set_preshared_key(&mut self, _: &[u8; 32], _: PresharedKey) -> Result<(), Errno> {
            Ok(())
        }
        fn set_endpoint(&mut self, _: &[u8; 32], _: SocketAddr) -> Result<(), Errno> {
            Ok(())
        }
        fn set_persistent_keepalive(&mut self, _: &[u8; 32], _: u16) -> Result<(), Errno> {
            Ok(())
        }
        fn clear_allowed_ips(&mut self, _: &[u8; 32]) -> Result<(), Errno> {
            Ok(())
        }
        fn add_allowed_ip(&mut self, _: &[u8; 32], _: IpAddr, _: u8) -> Result<(), Errno> {
            Ok(())
        }
        fn remove_allowed_ip(&mut self, _: &[u8; 32], _: IpAddr, _: u8) -> Result<(), Errno> {
            Ok(())
        }
    }

    /// Runs the lines of a `set` request through a UAPI session, as the configuration socket
    /// would. Empty lines are skipped: on the socket one would end the request.
    fn run_set(device: &mut dyn UapiDevice, body: &str) -> Result<(), RwgError> {
        let mut session = UapiSession::new();
        session.handle_line("set=1", device);
        for (number, line) in body.lines().enumerate() {
            if line.len() > MAX_LINE_LEN {
                tracing::warn!("configuration line {} is too long", number + 1);
                return Err(RwgError::InvalidConfig);
            }
            if line.trim().is_empty() {
                continue;
            }
            match session.handle_line(line, device) {
                Response::Continue => {}
                other => {
                    tracing::error!("unexpected UAPI response inside a set: {other:?}");
                    return Err(RwgError::Internal);
                }
            }
        }
        match session.handle_line("", device) {
            Response::Reply(reply) => match errno_of(&reply) {
                Some(0) => Ok(()),
                errno => {
                    tracing::warn!(
                        "configuration refused: errno={}",
                        errno.map_or("?".to_owned(), |e| e.to_string())
                    );
                    Err(match errno {
                        Some(-98) => RwgError::AddressInUse,
                        Some(-5) => RwgError::Io,
                        _ => RwgError::InvalidConfig,
                    })
                }
            },
            other => {
                tracing::error!("unexpected UAPI response to a set: {other:?}");
                Err(RwgError::Internal)
            }
        }
    }

    /// The number of an `errno=N` reply.
    fn errno_of(reply: &str) -> Option<i32> {
        reply.lines().next()?.strip_prefix("errno=")?.parse().ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn set_replies_map_onto_error_codes() {
            assert_eq!(errno_of("errno=0\n\n"), Some(0));
            assert_eq!(errno_of("errno=-22\n\n"), Some(-22));
            assert_eq!(errno_of("garbage"), None);
        }

        #[test]
        fn a_set_applies_to_the_driver_and_bad_lines_say_so() {
            let driver = Driver::new(0).expect("bind");
            let mut config = DriverConfig(Arc::clone(&driver));
            let k1 = "11".repeat(32);
            let k2 = "22".repeat(32);
            let body = format!("private_key={k1}\n\npublic_key={k2}\r\nallowed_ip=10.0.0.0/8\n");
            assert_eq!(apply_set(&mut config, &body), Ok(()));
            let peers = driver.core().peers();
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].allowed_ips.len(), 1);
            let k3 = "33".repeat(32);
            for bad in [
                "bogus=1".to_owned(),
                "no equals sign".to_owned(),
                "listen_port=70000".to_owned(),
                "set=1".to_owned(),
                // Good lines before a bad one are not applied either.
                format!("replace_peers=true\npublic_key={k3}\nallowed_ip=10.0.0.0/33"),
            ] {
                assert_eq!(
                    apply_set(&mut config, &bad),
                    Err(RwgError::InvalidConfig),
                    "{bad}"
                );
            }
            let peers = driver.core().peers();
            assert_eq!(peers.len(), 1, "nothing changed");
            assert_eq!(peers[0].public_key.as_bytes(), &[0x22; 32]);
            let taken = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            let port = taken.local_addr().expect("addr").port();
            assert_eq!(
                apply_set(&mut config, &format!("listen_port={port}")),
                Err(RwgError::AddressInUse)
            );
        }
    }
}

#[cfg(not(feature = "tunnel"))]
mod stub {
    use std::os::fd::{OwnedFd, RawFd};
    use std::sync::Arc;

    use super::TunnelConfig;
    use crate::error::RwgError;

    /// No tunnel can exist in this build.
    #[derive(Debug)]
    pub enum Tunnel {}

    impl Tunnel {
        /// Always `Err(Unsupported)`; the descriptor is closed, as on every failure.
        pub fn start(_config: TunnelConfig<'_>, tun: OwnedFd) -> Result<Tunnel, RwgError> {
            drop(tun);
            Err(RwgError::Unsupported)
        }

        /// Unreachable: there is no tunnel.
        pub fn set(&self, _body: &str) -> Result<(), RwgError> {
            match *self {}
        }

        /// Unreachable: there is no tunnel.
        pub fn get(&self) -> zeroize::Zeroizing<String> {
            match *self {}
        }

        /// Unreachable: there is no tunnel.
        pub fn bump_sockets(&self) -> Result<(), RwgError> {
            match *self {}
        }

        /// Unreachable: there is no tunnel.
        pub fn socket_fds(&self) -> (RawFd, RawFd) {
            match *self {}
        }

        /// Unreachable: there is no tunnel.
        pub fn status(&self) -> Result<(), RwgError> {
            match *self {}
        }

        /// Unreachable: there is no tunnel.
        pub fn stop(tunnel: Arc<Tunnel>) -> Result<(), RwgError> {
            match *tunnel {}
        }
    }
}
