//! What a device costs as it grows to 100 000 peers: the control path's wake-up (the deadline
//! queue's `poll_timeout`, a `handle_timeout` with nothing due), adding and removing one peer,
//! and the full `peers()` listing behind `wg show`, at 100, 10 000 and 100 000 peers, so that
//! the growth shows in one run.
//!
//! Each peer has a /32 and a /128 and an endpoint, as in BENCHMARKS.md's `wg setconf` figures;
//! one in a hundred has a timer armed (a persistent keepalive of 25 s, which sends a handshake
//! first), the rest are idle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rwg_proto::crypto::{PrivateKey, PublicKey};
use rwg_proto::device::Device;
use rwg_proto::Instant;

const SIZES: [u32; 3] = [100, 10_000, 100_000];

fn key(i: u32) -> PublicKey {
    // Public keys need not belong to anyone here; any 32 bytes do, and making them cheap keeps
    // the setup of 100 000 peers quick.
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[4] = 0x5a;
    PublicKey::from_bytes(k)
}

fn configure(d: &Device, i: u32) {
    let pk = key(i);
    d.add_peer(pk);
    let v4 = Ipv4Addr::from(0x0a00_0000 | i);
    let v6 = Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i));
    d.add_allowed_ip(&pk, IpAddr::V4(v4), 32).expect("peer");
    d.add_allowed_ip(&pk, IpAddr::V6(v6), 128).expect("peer");
    d.set_endpoint(
        &pk,
        SocketAddr::from(([192, 0, 2, 1], 1 + (i % 60000) as u16)),
    )
    .expect("peer");
}

fn device(peers: u32) -> Device {
    let d = Device::new(Box::new(ChaCha20Rng::seed_from_u64(1)));
    d.set_private_key(Some(PrivateKey::from_bytes([7; 32])));
    for i in 0..peers {
        configure(&d, i);
    }
    // A real private key's public key for the timed peers, so that their handshakes can be
    // created (the cheap keys above may be low order, which sends nothing).
    for i in (0..peers).step_by(100) {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        let pk = PrivateKey::from_bytes(k).public_key();
        d.add_peer(pk);
        d.set_endpoint(&pk, SocketAddr::from(([192, 0, 2, 2], 1000)))
            .expect("peer");
        d.set_persistent_keepalive(Instant::from_nanos(1), &pk, 25)
            .expect("peer");
    }
    let mut buf = vec![0u8; 2048];
    while d.poll_transmit(&mut buf).is_some() {}
    d
}

fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for peers in SIZES {
        let d = device(peers);
        let first = d.poll_timeout().expect("armed timers");
        let early = Instant::from_nanos(first.as_nanos() - 1);
        group.bench_function(format!("poll_timeout/{peers}"), |b| {
            b.iter(|| black_box(d.poll_timeout()))
        });
        group.bench_function(format!("handle_timeout_nothing_due/{peers}"), |b| {
            b.iter(|| d.handle_timeout(black_box(early)))
        });
        let mut next = peers + 1_000_000;
        group.bench_function(format!("add_and_remove_peer/{peers}"), |b| {
            b.iter(|| {
                next += 1;
                configure(&d, next);
                d.remove_peer(&key(next))
            })
        });
        if peers <= 10_000 {
            group.bench_function(format!("peers_listing/{peers}"), |b| {
                b.iter_batched(|| (), |()| d.peers().len(), BatchSize::SmallInput)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
