#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! rwg-proto: the WireGuard protocol as a sans-IO state machine.

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod allowed_ips;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod index;
pub mod keypair;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod ratelimiter;
pub mod replay;
#[allow(dead_code)] // used by device.rs as it lands
mod sync;
pub mod time;
pub mod timers;

pub use time::Instant;
