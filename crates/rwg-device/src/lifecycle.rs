//! How a daemon ends: the shutdown conditions, the handle that requests one, and the error of
//! a daemon that could not start. Shared by the [`Daemon`](crate::Daemon) that waits for them
//! and the [`Driver`](crate::driver::Driver) threads that report them.

use std::fmt;
use std::sync::mpsc;

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
    /// A handle and the receiving end its requests arrive at (public for embedders that start
    /// a [`Driver`](crate::driver::Driver) without a [`Daemon`](crate::Daemon)).
    pub fn channel() -> (ShutdownHandle, mpsc::Receiver<Shutdown>) {
        let (tx, rx) = mpsc::channel();
        (ShutdownHandle(tx), rx)
    }
}

impl ShutdownHandle {
    /// Requests shutdown; ignored if the daemon already stopped.
    pub fn shutdown(&self, why: Shutdown) {
        let _ = self.0.send(why);
    }
}
