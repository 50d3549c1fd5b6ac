#![deny(unsafe_code)]
//! OS I/O for rwg on Linux: the TUN device, the UDP sockets, the configuration socket (UAPI)
//! and the daemon that ties them to the protocol core.
//!
//! All `unsafe` code is in the private `sys` module (the compiler enforces it:
//! `#![deny(unsafe_code)]` here, allowed on `sys` only); everything public is safe.

pub mod batch;
pub mod daemon;
pub mod driver;
pub mod lifecycle;
mod link;
#[cfg(any(test, feature = "fuzzing"))]
pub mod memory;
pub mod offload;
pub mod pipeline;
pub mod process;
pub mod secret;
pub mod tun;
pub mod uapi;
pub mod udp;

// The one place with unsafe code: each block says why it is sound (`// SAFETY:`).
#[allow(unsafe_code)]
mod sys;

pub use daemon::{Daemon, Reresolve};
pub use lifecycle::{Shutdown, ShutdownHandle, StartError};
