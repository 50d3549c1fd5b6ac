#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # rwg-proto: WireGuard as a sans-IO state machine
//!
//! This crate is the whole WireGuard protocol — the Noise_IKpsk2 handshake, cookies, transport
//! keys, the replay window, timers and cryptokey routing — with no I/O at all. It never reads a
//! clock, never draws randomness by itself and never touches a socket: the caller passes in the
//! time, a cryptographic RNG (once, at construction) and the bytes, and gets bytes back.
//! It is `#![no_std]` (with `alloc`) and has no `unsafe` code, so the same core runs in the
//! `rwg` daemon, in the userspace network stack, behind a C ABI and on small devices.
//!
//! ## Vocabulary
//! A [`Device`](device::Device) is one WireGuard interface: a private key, peers, allowed IPs.
//!
//! | direction | call | result |
//! |---|---|---|
//! | host → network | [`handle_packet`](device::Device::handle_packet)`(now, buf, len)` | [`Sent`](device::Sent): a transport message in `buf`, or staged, or dropped |
//! | network → host | [`handle_datagram`](device::Device::handle_datagram)`(now, source, buf)` | [`Received`](device::Received): an IP packet in `buf`, a keepalive, a handshake, or dropped |
//! | time | [`handle_timeout`](device::Device::handle_timeout)`(now)` | timers fire: retransmits, keepalives, rekeys |
//! | outputs | [`poll_transmit`](device::Device::poll_transmit)`(buf)` | handshake messages, cookie replies, keepalives, flushed staged packets |
//! | | [`poll_timeout`](device::Device::poll_timeout)`()` | when `handle_timeout` must run next |
//! | | [`poll_event`](device::Device::poll_event)`()` | handshakes completed, endpoints changed, … |
//! | configuration | `set_private_key`, `add_peer`, `set_endpoint`, `add_allowed_ip`, … | mirrors the configuration socket of `wg(8)` |
//!
//! Buffers belong to the caller and are worked on in place. An IP packet to send sits at
//! `buf[HEADROOM..HEADROOM + len]` with [`TAILROOM`](device::TAILROOM) free bytes after it;
//! the transport message is written to the start of the same buffer. A decrypted packet is
//! left at `buf[HEADROOM..HEADROOM + len]` of the datagram's buffer. No allocation happens per
//! data packet; only handshakes, keepalives and packets staged while a handshake is pending use
//! the device's own (bounded) queues.
//!
//! Time is an [`Instant`]: nanoseconds on the caller's monotonic clock. The wall clock, which
//! the protocol needs for TAI64N timestamps and `wg show`'s "latest handshake", is derived
//! from it after [`set_unix_time`](device::Device::set_unix_time).
//!
//! ## Polling order
//! After any `handle_*` call or configuration change:
//! 1. send every datagram [`poll_transmit`](device::Device::poll_transmit) returns, until `None`;
//! 2. drain [`poll_event`](device::Device::poll_event) if you care about events;
//! 3. wait for I/O or until [`poll_timeout`](device::Device::poll_timeout), then call
//!    [`handle_timeout`](device::Device::handle_timeout) if that moment has come. A deadline in
//!    the past means "now" (the data path deferred work to it).
//!
//! There is no fixed tick: when nothing is due, `poll_timeout` returns `None` or a moment
//! seconds away.
//!
//! ## Threads
//! A `Device` is `Send + Sync` and every method takes `&self`. Encryption and decryption of
//! transport messages — everything per packet — run concurrently, for the same peer too:
//!
//! - [`Device::data_path`](device::Device::data_path) takes the read side of the routing and
//!   index tables **once per batch**; within the batch, each packet takes only its peer's short
//!   lock (counters, timers) and, on receive, its keypair's replay-window lock.
//! - For ordered parallel crypto, split each packet in two: [`DataPath::prepare_send`](device::DataPath::prepare_send)
//!   runs in the order packets must leave and reserves the nonce counter, then
//!   [`SendJob::seal`](device::SendJob::seal) can run on any thread; send the results in the
//!   order of `prepare_send`. On receive, [`prepare_receive`](device::DataPath::prepare_receive)
//!   finds the keypair, [`ReceiveJob::open`](device::ReceiveJob::open) decrypts anywhere, and
//!   [`finish_receive`](device::DataPath::finish_receive) applies the replay window, roaming and
//!   timers.
//! - Handshakes, timers and configuration are serialized on a control lock. Handshake messages
//!   met on the data path are queued (their number is the load signal that turns on cookies)
//!   and handled by the next `handle_timeout`, which `poll_timeout` reports as due at once.
//! - Drop a [`DataPath`](device::DataPath) before calling any other method of the device from
//!   the same thread (they may need the write side of the tables).
//!
//! With the `std` feature the locks are the operating system's; without it they spin.
//!
//! ## Example: two devices through an in-memory network
//! ```
//! use core::net::SocketAddr;
//! use core::time::Duration;
//! use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//! use rwg_proto::crypto::PrivateKey;
//! use rwg_proto::device::{Device, Received, Sent, HEADROOM, TAILROOM};
//! use rwg_proto::Instant;
//!
//! let (key_a, key_b) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
//! let (addr_a, addr_b): (SocketAddr, SocketAddr) = ("10.0.0.1:51820".parse()?, "10.0.0.2:51820".parse()?);
//! let a = Device::new(Box::new(ChaCha20Rng::seed_from_u64(1)));
//! let b = Device::new(Box::new(ChaCha20Rng::seed_from_u64(2)));
//! a.set_private_key(Some(key_a.clone()));
//! b.set_private_key(Some(key_b.clone()));
//! a.add_peer(key_b.public_key());
//! a.set_endpoint(&key_b.public_key(), addr_b)?;
//! a.add_allowed_ip(&key_b.public_key(), "192.168.4.2".parse()?, 32)?;
//! b.add_peer(key_a.public_key());
//! b.add_allowed_ip(&key_a.public_key(), "192.168.4.1".parse()?, 32)?;
//!
//! // An IPv4 packet from 192.168.4.1 to 192.168.4.2 with a 4-byte payload.
//! let mut packet = [0u8; 24];
//! packet[0] = 0x45;
//! packet[3] = 24;
//! packet[12..16].copy_from_slice(&[192, 168, 4, 1]);
//! packet[16..20].copy_from_slice(&[192, 168, 4, 2]);
//! packet[20..].copy_from_slice(b"ping");
//!
//! let mut now = Instant::from_nanos(1);
//! let mut buf = [0u8; 2048];
//! buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
//! // No session yet: the packet is staged and a handshake initiation is queued.
//! assert_eq!(a.handle_packet(now, &mut buf, packet.len()), Sent::Staged);
//!
//! // Shuttle datagrams between the two until both have nothing more to say.
//! let mut delivered = Vec::new();
//! loop {
//!     let mut moved = false;
//!     for (from, from_addr, to) in [(&a, addr_a, &b), (&b, addr_b, &a)] {
//!         while let Some(t) = from.poll_transmit(&mut buf) {
//!             moved = true;
//!             if let Received::Packet { len, .. } = to.handle_datagram(now, from_addr, &mut buf[..t.len]) {
//!                 delivered.push(buf[HEADROOM..HEADROOM + len].to_vec());
//!             }
//!         }
//!     }
//!     if !moved {
//!         break;
//!     }
//!     now += Duration::from_millis(1);
//! }
//! assert_eq!(delivered, vec![packet.to_vec()]);
//! // Nothing is due before the keepalive and rekey timers.
//! assert!(a.poll_timeout().is_some_and(|t| t > now));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## What it defends against
//! Anything can arrive from the network. Every datagram is parsed once, in [`messages`], with
//! exact lengths; nothing the network sends can panic, allocate without bound or block: the
//! handshake queue, the outbox, staged packets, the rate limiter and the index table all have
//! ceilings, and forged transport messages cost one AEAD and change no state. Replays are
//! refused by the 8128-packet window ([`replay`]) and by TAI64N timestamps; floods of
//! initiations by the 20 ms per-peer limit, and under load by cookies and a per-source rate
//! limiter ([`cookie`], [`ratelimiter`]). Secrets — static, ephemeral and preshared keys, chaining
//! keys, session keys — are zeroized on drop and print as `<redacted>` ([`crypto`]).
//!
//! Module by module, the protocol is laid out as in PROTOCOL.md: [`crypto`] (§1),
//! [`messages`] (§2), [`noise`] (§3), [`cookie`] (§4), [`keypair`] and [`replay`] (§5),
//! [`timers`] (§6), [`peer`] and [`index`] (§7), [`allowed_ips`] (§8), [`device`] (all of it).

#[cfg(any(feature = "alloc", test))]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod ip;
pub mod keypair;
pub mod messages;
pub mod noise;
pub mod outcome;
pub mod peer;
pub mod replay;
pub mod single;
mod slot;
pub mod time;
pub mod timers;

#[cfg(feature = "alloc")]
pub mod allowed_ips;
#[cfg(feature = "alloc")]
pub mod device;
#[cfg(feature = "alloc")]
pub mod index;
#[cfg(feature = "alloc")]
mod outbox;
#[cfg(feature = "alloc")]
pub mod ratelimiter;
#[cfg(feature = "alloc")]
mod sync;

#[cfg(feature = "alloc")]
pub use device::Device;
pub use outcome::{DropReason, Event, Received, Sent};
pub use time::Instant;

#[cfg(test)]
mod tests {
    #[test]
    fn device_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::Device>();
        assert_send_sync::<crate::device::SendJob>();
        assert_send_sync::<crate::device::ReceiveJob>();
        assert_send_sync::<crate::peer::Peer>();
    }
}
