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
//! - A [`Peer`](peer::Peer) is one remote party as a state machine: its handshake, keypairs,
//!   timers, cookie and staged packets, and every per-peer rule of the protocol as a method
//!   that takes `&mut self`, the time (and, where it may start a handshake, a
//!   [`Context`](peer::Context) with our identity and an RNG) and pushes effects — datagrams,
//!   events, indices taken and given back — into a [`Sink`](peer::Sink).
//! - A [`Device`] is one WireGuard interface: a private key, many peers, allowed
//!   IPs. It only demultiplexes (receiver index → peer, allowed IPs → peer, mac1/cookies and the
//!   rate limiter at the door), holds the locks, keeps one deadline queue for all peers and
//!   applies the effects its peers push. It needs the `alloc` feature.
//! - A [`SinglePeer`](single::SinglePeer) is the same door for exactly one peer with no heap:
//!   a small device talking to one server, with the `alloc` feature off.
//!
//! | direction | call | result |
//! |---|---|---|
//! | host → network | [`DataPath::encapsulate`](device::DataPath::encapsulate)`(now, buf, len)` (or [`prepare_send`](device::DataPath::prepare_send) + [`SendJob::seal`](device::SendJob::seal)) | [`Sent`]: a transport message in `buf`, or staged, or dropped |
//! | network → host | [`DataPath::decapsulate`](device::DataPath::decapsulate)`(now, source, buf)` (or `prepare_receive` + `open` + `finish_receive`) | [`Received`]: an IP packet in `buf`, a keepalive, a handshake message queued, or dropped |
//! | handshakes | [`handle_queued_handshakes`](device::Device::handle_queued_handshakes)`(now)` | the queued initiations, responses and cookie replies answered |
//! | time | [`handle_timeout`](device::Device::handle_timeout)`(now)` | due timers fire: retransmits, keepalives, rekeys, key erasure |
//! | outputs | [`poll_transmit_batch`](device::Device::poll_transmit_batch)`(buf, n)` | datagrams to one destination, back to back for one GSO send ([`Transmit`](device::Transmit)) |
//! | | [`poll_timeout`](device::Device::poll_timeout)`()` | when `handle_timeout` must run next (a pure getter) |
//! | | [`poll_event`](device::Device::poll_event)`()` | handshakes completed, endpoints changed, … |
//! | configuration | `set_private_key`, `add_peer`, `set_endpoint`, `add_allowed_ip`, … | mirrors the configuration socket of `wg(8)` |
//!
//! [`Device::handle_packet`](device::Device::handle_packet) and
//! [`Device::handle_datagram`](device::Device::handle_datagram) are one-packet conveniences that
//! do the above for a single input (a handshake message is answered at once, and whatever
//! became due runs). Batching drivers use a [`DataPath`](device::DataPath) per batch.
//!
//! Buffers belong to the caller and are worked on in place. An IP packet to send sits at
//! `buf[HEADROOM..HEADROOM + len]` with [`TAILROOM`](peer::TAILROOM) free bytes after it;
//! the transport message is written to the start of the same buffer. A decrypted packet is
//! left at `buf[HEADROOM..HEADROOM + len]` of the datagram's buffer. No allocation happens per
//! data packet; only packets staged while a handshake is pending are copied.
//!
//! Time is an [`Instant`]: nanoseconds on the caller's monotonic clock. The wall clock, which
//! the protocol needs for TAI64N timestamps and `wg show`'s "latest handshake", is derived
//! from it after [`set_unix_time`](device::Device::set_unix_time).
//!
//! ## Where each rule lives
//! One rule, one module, each with its tests, in the order of PROTOCOL.md:
//!
//! | rule | module |
//! |---|---|
//! | every protocol constant (timers, limits, load) | [`constants`] |
//! | primitives: HASH, MAC, HMAC, KDF, AEAD, XAEAD, DH; secret key types (§1) | [`crypto`] |
//! | wire format: message types, lengths, views parsed once (§2) | [`messages`] |
//! | the Noise_IKpsk2 handshake (§3) | [`noise`] |
//! | mac1, mac2, cookie replies, the cookie checker (§4) | [`cookie`] |
//! | rate limiting under load (§4) | [`ratelimiter`] |
//! | the replay window (§5) | [`replay`] |
//! | keypairs and their rotation: install as initiator/responder, confirm next, clear (§5, §7) | [`keypair`] |
//! | the timers: which events arm them and what each does when it fires (§6) | [`timers`] |
//! | everything one peer does: consuming handshakes, sending, receiving, staging (§3–§7) | [`peer`] |
//! | the inner packet's addresses and length (§5, §8) | [`ip`] |
//! | cryptokey routing (§8) | [`allowed_ips`] |
//! | receiver indices (§7) | [`index`] |
//! | demultiplexing, locks, the deadline queue, outputs | [`device`] |
//!
//! Names follow DESIGN.md; what it does not name: `constants`, `outcome` (verdicts and events
//! shared by peer and device), `ip`, `single` (the heapless one-peer owner) and the private
//! `outbox` and `slot`. The driver loop DESIGN.md asks for is the `rwg-driver` crate (it
//! needs `std` and logs with `tracing`, which this crate must not).
//!
//! ## Polling order
//! After any input (`decapsulate`/`encapsulate` batches, configuration changes):
//! 1. if [`has_queued_handshakes`](device::Device::has_queued_handshakes), call
//!    [`handle_queued_handshakes`](device::Device::handle_queued_handshakes);
//! 2. if [`poll_timeout`](device::Device::poll_timeout) is at or before now, call
//!    [`handle_timeout`](device::Device::handle_timeout) (it handles at most
//!    [`TIMER_BUDGET`](constants::TIMER_BUDGET) peers, so call again while still due);
//! 3. send everything [`poll_transmit_batch`](device::Device::poll_transmit_batch) returns, and
//!    drain [`poll_event`](device::Device::poll_event);
//! 4. sleep until `poll_timeout` or until the device's waker
//!    ([`set_waker`](device::Device::set_waker)) is called: it is, from whichever thread, when
//!    a handshake message is queued, an output is queued, or a peer's deadline moved earlier
//!    than every other. There is no fixed tick.
//!
//! `rwg_driver::Driver::turn` is exactly steps 1–3.
//!
//! ## Threads
//! A `Device` is `Send + Sync` and every method takes `&self`. Encryption and decryption of
//! transport messages — everything per packet — run concurrently, for the same peer too:
//!
//! - [`Device::data_path`](device::Device::data_path) takes the read side of the routing and
//!   index tables **once per batch**; within the batch, each packet takes only its peer's lock,
//!   briefly (counters, timers, the replay window) — never a device-wide one.
//! - For ordered parallel crypto, split each packet in two: [`DataPath::prepare_send`](device::DataPath::prepare_send)
//!   runs in the order packets must leave and reserves the nonce counter (copying the send
//!   key into the job), then [`SendJob::seal`](device::SendJob::seal) can run on any thread;
//!   send the results in the order of `prepare_send`. On receive, [`prepare_receive`](device::DataPath::prepare_receive)
//!   finds the keypair, [`ReceiveJob::open`](device::ReceiveJob::open) decrypts anywhere, and
//!   [`finish_receive`](device::DataPath::finish_receive) applies the replay window, roaming and
//!   timers.
//! - Handshakes, timers and configuration are serialized on a control lock. Handshake messages
//!   met on the data path are queued (their number is the load signal that turns on cookies).
//! - Drop a [`DataPath`](device::DataPath) before calling any other method of the device from
//!   the same thread (they may need the write side of the tables).
//!
//! With the `std` feature the locks are the operating system's; without it they spin.
//!
//! ## Features
//! - `alloc` (default): the multi-peer [`Device`]. Without it: [`peer`] and [`single`] only,
//!   no heap at all (`noalloc-check/` proves it links with no global allocator).
//! - `ring` (default): ring's ChaCha20-Poly1305 for transport data; RustCrypto's without it.
//! - `precomputed-tables` (default): basepoint tables for faster ephemeral keys (~30 KiB).
//! - `std`: the operating system's locks.
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
