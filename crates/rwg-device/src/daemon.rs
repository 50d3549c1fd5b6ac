//! The daemon: a TUN device, the UDP sockets and the configuration socket, served until one of
//! the shutdown conditions wireguard-go also has: SIGINT/SIGTERM, the interface deleted
//! (`wg-quick down` runs `ip link del`), or the socket file deleted.
//!
//! Packets are moved by the [`Driver`] (threads around the protocol core); configuration
//! requests are applied to it through [`DriverConfig`].

use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::driver::{Driver, DriverConfig};
use crate::process::TerminationSignals;
use crate::tun::Tun;
use crate::uapi::{UapiDevice, UapiListener};

/// Why the daemon stopped serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGINT or SIGTERM (the number).
    Signal(i32),
    /// The TUN interface was deleted.
    InterfaceDeleted,
    /// The configuration socket file was deleted or replaced.
    SocketDeleted,
    /// A helper thread failed for good.
    Failed(String),
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shutdown::Signal(n) => write!(f, "received signal {n}"),
            Shutdown::InterfaceDeleted => write!(f, "the interface was deleted"),
            Shutdown::SocketDeleted => write!(f, "the configuration socket was deleted"),
            Shutdown::Failed(why) => write!(f, "{why}"),
        }
    }
}

impl Shutdown {
    /// Whether this is an orderly stop (exit status 0) rather than a failure.
    pub fn is_clean(&self) -> bool {
        !matches!(self, Shutdown::Failed(_))
    }
}

/// The daemon could not start serving.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A handle that asks a running daemon to stop.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(mpsc::Sender<Shutdown>);

impl ShutdownHandle {
    /// Requests shutdown; ignored if the daemon already stopped.
    pub fn shutdown(&self, why: Shutdown) {
        let _ = self.0.send(why);
    }
}

/// A TUN device and a configuration socket, ready to serve.
#[derive(Debug)]
pub struct Daemon {
    tun: Tun,
    uapi: UapiListener,
}

impl Daemon {
    /// Takes the two resources the parent (or this process) created.
    pub fn new(tun: Tun, uapi: UapiListener) -> Daemon {
        Daemon { tun, uapi }
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
        self,
        signals: Option<TerminationSignals>,
        on_serving: impl FnOnce(),
    ) -> Result<Shutdown, StartError> {
        let driver = match Driver::new(0) {
            Ok(d) => d,
            Err(e) => {
                self.uapi.remove_socket_file();
                return Err(e);
            }
        };
        let config = DriverConfig(Arc::clone(&driver));
        self.run_with(
            config,
            move |tun, _config, shutdown| driver.start(tun, shutdown),
            signals,
            on_serving,
        )
    }

    /// Like [`Daemon::run`] with the configuration object and the packet path given.
    pub fn run_with<D: UapiDevice + Send + 'static>(
        self,
        device: D,
        packet_path: impl FnOnce(Arc<Tun>, Arc<Mutex<D>>, ShutdownHandle) -> Result<(), StartError>,
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
        packet_path: impl FnOnce(Arc<Tun>, Arc<Mutex<D>>, ShutdownHandle) -> Result<(), StartError>,
        signals: Option<TerminationSignals>,
        on_serving: impl FnOnce(),
    ) -> Result<Shutdown, StartError> {
        let (tx, rx) = mpsc::channel();
        let handle = ShutdownHandle(tx);
        let spawn_err = |what: &str, e: std::io::Error| StartError(format!("{what}: {e}"));
        let device = Arc::new(Mutex::new(device));

        let watch = self
            .uapi
            .watch()
            .map_err(|e| spawn_err("cannot watch the configuration socket", e))?;
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
        packet_path(tun, Arc::clone(&device), handle.clone())?;

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
