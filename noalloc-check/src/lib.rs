#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Proof that `rwg-proto` without its `alloc` feature — the [`Peer`](rwg_proto::peer::Peer)
//! state machine behind [`SinglePeer`] — runs on a device with no heap: this crate is
//! `#![no_std]`, declares no `#[global_allocator]` and is built as a static library, a final
//! artifact for which rustc must settle the allocator. If anything in `rwg-proto`'s dependency
//! tree used `alloc` (a `Box` in the peer, a dependency's `alloc` feature), the build would fail
//! with "no global memory allocator found but one is required".
//!
//! The functions below call the whole path — a handshake message created and consumed, a packet
//! sealed and opened, timers — so that none of it can be left out of the link. That it also
//! *works* without an allocator is shown by `crates/rwg-proto/tests/single_peer.rs`, which
//! `scripts/test` runs with `--no-default-features`.

use core::net::SocketAddr;
use core::panic::PanicInfo;

use rand_core::{CryptoRng, RngCore};
use rwg_proto::crypto::PrivateKey;
use rwg_proto::single::{Output, SinglePeer};
use rwg_proto::{Instant, Received, Sent};

/// A counter-based generator, enough to link the RNG path (not for real keys).
struct Counter(u64);

impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Only to link the code path in this proof; a real device passes its hardware RNG.
impl CryptoRng for Counter {}

/// Keeps the last datagram in a fixed buffer.
struct LastDatagram {
    buf: [u8; 256],
    len: usize,
}

impl Output for LastDatagram {
    fn transmit(&mut self, _destination: SocketAddr, datagram: &[u8]) {
        let n = datagram.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&datagram[..n]);
        self.len = n;
    }
}

/// A handshake between two heapless peers, then one packet each way. Returns the number of
/// packets delivered (2 when everything works).
pub fn handshake_and_data(seed: u64) -> usize {
    let (ka, kb) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let mut a = SinglePeer::new(ka, pb, seed);
    let mut b = SinglePeer::new(kb, pa, seed + 1);
    let addr_a = SocketAddr::from(([10, 0, 0, 1], 51820));
    let addr_b = SocketAddr::from(([10, 0, 0, 2], 51820));
    a.peer_mut().set_endpoint(Some(addr_b));
    let mut rng = Counter(seed);
    let now = Instant::from_nanos(1);
    let mut out_a = LastDatagram { buf: [0; 256], len: 0 };
    let mut out_b = LastDatagram { buf: [0; 256], len: 0 };

    a.handle_timeout(now, &mut rng, &mut out_a);
    let mut packet = [0u8; 16 + 20 + 32];
    packet[16] = 0x45;
    packet[19] = 20;
    // No session: the packet is dropped and the initiation goes out.
    let _ = a.handle_packet(now, &mut packet, 20, &mut out_a);
    a.handle_timeout(now, &mut rng, &mut out_a);
    let _ = b.handle_datagram(now, addr_a, &mut out_a.buf[..out_a.len], &mut rng, &mut out_b);
    let _ = a.handle_datagram(now, addr_b, &mut out_b.buf[..out_b.len], &mut rng, &mut out_a);
    let _ = b.handle_datagram(now, addr_a, &mut out_a.buf[..out_a.len], &mut rng, &mut out_b);

    one_way(&mut a, &mut b, addr_a, &mut rng) + one_way(&mut b, &mut a, addr_b, &mut rng)
}

/// One 20-byte IPv4 packet from `from` to `to`; 1 if it arrived.
fn one_way(from: &mut SinglePeer, to: &mut SinglePeer, from_addr: SocketAddr, rng: &mut Counter) -> usize {
    let now = Instant::from_nanos(2);
    let mut buf = [0u8; 16 + 20 + 32];
    buf[16] = 0x45;
    buf[19] = 20;
    let mut sink = LastDatagram { buf: [0; 256], len: 0 };
    if let Sent::Transmit { len, .. } = from.handle_packet(now, &mut buf, 20, &mut sink) {
        if let Received::Packet { .. } = to.handle_datagram(now, from_addr, &mut buf[..len], rng, &mut sink) {
            return 1;
        }
    }
    0
}

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
