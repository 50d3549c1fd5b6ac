#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # rwg-driver: the one loop that drives a [`Device`]
//!
//! The protocol core ([`rwg_proto`]) does no I/O and reads no clock. Something has to own a
//! clock, run the core's timers when they are due, hand it the handshake messages its data path
//! queued, send what it produced and log what happened. That something is the same whether the
//! packets come from a TUN device on threads (the daemon, `rwg-device`) or from a userspace TCP
//! stack on tokio (`rwg-netstack`), or from an app through the C ABI; only how the loop *waits*
//! differs. So this crate has the part that is the same:
//!
//! - [`Clock`]: the core's monotonic [`Instant`] (counting suspended time: `CLOCK_BOOTTIME`
//!   on Linux) and the wall clock it needs, from one origin;
//! - [`Driver::turn`]: one pass of the control path, in the crate documentation's polling
//!   order: queued handshake messages, then due timers, then every datagram queued (in GSO
//!   batches, to a [`Transmitter`]) and every event (logged, and to an optional hook); it
//!   returns when to turn again;
//! - [`Wakeup`]: a latch a thread sleeps on until that moment or until the device calls its
//!   waker ([`Device::set_waker`]), for drivers that run the control path on a thread of its
//!   own ([`Driver::run_blocking`]).
//!
//! The data path (encrypting and decrypting in batches) stays with the caller, which knows its
//! buffers and threads.
//!
//! ```
//! use std::sync::Arc;
//! use rwg_driver::{Clock, Driver, Transmitter};
//! use rwg_proto::device::{Device, Transmit};
//! # use rand_chacha::rand_core::SeedableRng;
//!
//! struct Nowhere;
//! impl Transmitter for Nowhere {
//!     fn transmit(&mut self, _t: &Transmit, _datagrams: &[u8]) -> usize {
//!         0
//!     }
//! }
//! let device = Arc::new(Device::new(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(1))));
//! let mut driver = Driver::new(device, Clock::new());
//! // Nothing configured: nothing to do, and no deadline.
//! assert_eq!(driver.turn(&mut Nowhere), None);
//! ```

mod clock;
mod control;
pub mod metrics;
pub mod reresolve;
mod wakeup;

pub use clock::{Clock, ManualTime, SystemClock, TimeSource};
pub use control::{short_key, Driver, Transmitter};
pub use rwg_proto::device::Device;
pub use rwg_proto::Instant;
pub use wakeup::Wakeup;
