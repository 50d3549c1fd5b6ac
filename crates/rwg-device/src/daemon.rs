//! The daemon: a TUN device, the UDP sockets and the configuration socket, served until one of
//! the shutdown conditions wireguard-go also has: SIGINT/SIGTERM, the interface deleted
//! (`wg-quick down` runs `ip link del`), or the socket file deleted.
//!
//! Packets are moved by the [`Driver`] (threads around the protocol core); configuration
//! requests are applied to it through [`DriverConfig`].

use std::sync::{Arc, Mutex};

use crate::driver::{Driver, DriverConfig};
use crate::lifecycle::{Shutdown, ShutdownHandle, StartError};
use crate::pipeline::DataPlaneConfig;
use crate::process::TerminationSignals;
use crate::tun::Tun;
use crate::uapi::{UapiDevice, UapiListener};
use rwg_driver::reresolve::NameSource;

/// A TUN device and a configuration socket, ready to serve.
#[derive(Debug)]
pub struct Daemon {
    tun: Tun,
    uapi: UapiListener,
    data_plane: DataPlaneConfig,
    metrics: Option<std::net::SocketAddr>,
    reresolve: Option<Reresolve>,
}

/// Where the daemon finds the host names of endpoints to resolve again when a peer goes silent
/// ([`rwg_driver::reresolve`]), and how often it looks.
pub struct Reresolve {
    /// Lists the peers whose endpoint is a name (called every round: re-read a file here).
    pub names: NameSource,
    /// How often silent peers are looked at.
    pub every: std::time::Duration,
}

impl std::fmt::Debug for Reresolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reresolve")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Takes the two resources the parent (or this process) created.
    pub fn new(tun: Tun, uapi: UapiListener) -> Daemon {
        Daemon {
            tun,
            uapi,
            data_plane: DataPlaneConfig::default(),
            metrics: None,
            reresolve: None,
        }
    }

    /// Resolves endpoint host names again when their peer goes silent, while running.
    pub fn with_reresolve(mut self, reresolve: Option<Reresolve>) -> Daemon {
        self.reresolve = reresolve;
        self
    }

    /// Serves Prometheus metrics (and nothing else) on `addr` while running.
    pub fn with_metrics(mut self, addr: Option<std::net::SocketAddr>) -> Daemon {
        self.metrics = addr;
        self
    }

    /// Sets which offloads and how many crypto workers the data plane uses.
    pub fn with_data_plane(mut self, config: DataPlaneConfig) -> Daemon {
        self.data_plane = config;
        self
    }

    /// The interface name.
    pub fn interface_name(&self) -> &str {
        self.tun.name()
    }

    /// Serves until a shutdown condition; calls `on_serving` once everything runs (the
    /// re-executed child tells its parent there). Removes the socket file on the way out
    /// (unless it is no longer ours). Helper threads blocked in system calls are left behind:
    /// the caller is expected to exit the process.
    ///
    /// `signals` must have been blocked before any thread was created.
    ///
    pub fn run(
        mut self,
        signals: Option<TerminationSignals>,
        on_serving: impl FnOnce(),
    ) -> Result<Shutdown, StartError> {
        let driver = match Driver::with_config(0, self.data_plane) {
            Ok(d) => d,
            Err(e) => {
                self.uapi.remove_socket_file();
                return Err(e);
            }
        };
        let _metrics = match self.metrics {
            None => None,
            Some(addr) => {
                let core = driver.core_arc();
                let render = move |out: &mut String| rwg_driver::metrics::render(&core, out);
                match rwg_driver::metrics::MetricsServer::spawn(addr, Arc::new(render), None) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        self.uapi.remove_socket_file();
                        return Err(StartError(format!("cannot serve metrics on {addr}: {e}")));
                    }
                }
            }
        };
        if let Some(Reresolve { names, every }) = self.reresolve.take() {
            if let Err(e) = driver.spawn_reresolver(names, every) {
                self.uapi.remove_socket_file();
                return Err(StartError(format!("cannot start the re-resolver: {e}")));
            }
        }
        let config = DriverConfig(Arc::clone(&driver));
        self.run_with(
            config,
            move |tun, shutdown| driver.start(tun, shutdown),
            signals,
            on_serving,
        )
    }

    /// Like [`Daemon::run`] with the configuration object and the packet path given: `device`
    /// answers the configuration socket, `packet_path` starts whatever moves packets for the
    /// TUN device (it gets a handle to request shutdown with).
    pub fn run_with<D: UapiDevice + Send + 'static>(
        self,
        device: D,
        packet_path: impl FnOnce(Arc<Tun>, ShutdownHandle) -> Result<(), StartError>,
        signals: Option<TerminationSignals>,
        on_serving: impl FnOnce(),
    ) -> Result<Shutdown, StartError> {
        let result = self.serve(device, packet_path, signals, on_serving);
        self.uapi.remove_socket_file();
        result
    }

    fn serve<D: UapiDevice + Send + 'static>(
        &self,
        device: D,
        packet_path: impl FnOnce(Arc<Tun>, ShutdownHandle) -> Result<(), StartError>,
        signals: Option<TerminationSignals>,
        on_serving: impl FnOnce(),
    ) -> Result<Shutdown, StartError> {
        let (handle, rx) = ShutdownHandle::channel();
        let spawn_err = |what: &str, e: std::io::Error| StartError(format!("{what}: {e}"));
        let device = Arc::new(Mutex::new(device));

        let watch = match self.uapi.watch() {
            Ok(w) => w,
            // Deleted between binding and watching: the stop it asks for, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Shutdown::SocketDeleted)
            }
            Err(e) => return Err(spawn_err("cannot watch the configuration socket", e)),
        };
        let h = handle.clone();
        std::thread::Builder::new()
            .name("uapi-watch".into())
            .spawn(move || {
                match watch.wait_deleted() {
                    Ok(()) => h.shutdown(Shutdown::SocketDeleted),
                    Err(e) => h.shutdown(Shutdown::Failed(format!("watching the socket: {e}"))),
                };
            })
            .map_err(|e| spawn_err("cannot start a thread", e))?;

        if let Some(signals) = signals {
            let h = handle.clone();
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || match signals.wait() {
                    Ok(n) => h.shutdown(Shutdown::Signal(n)),
                    Err(e) => h.shutdown(Shutdown::Failed(format!("waiting for signals: {e}"))),
                })
                .map_err(|e| spawn_err("cannot start a thread", e))?;
        }

        let tun = Arc::new(self.tun.try_clone().map_err(|e| spawn_err("TUN", e))?);
        packet_path(tun, handle.clone())?;

        self.uapi
            .serve(device)
            .map_err(|e| spawn_err("cannot serve the configuration socket", e))?;

        tracing::info!(interface = %self.tun.name(), "serving");
        on_serving();
        let why = rx
            .recv()
            .unwrap_or_else(|_| Shutdown::Failed("all shutdown senders dropped".into()));
        tracing::info!(reason = %why, "shutting down");
        Ok(why)
    }
}
