//! ChaCha20-Poly1305 seal in place, the operation on every transport data packet.
//!
//! Sizes: 1420 bytes (a full-MTU inner packet with wg-quick's default MTU of 1420) and 64 bytes
//! (a small packet: TCP ACK, DNS query). Associated data is empty, as in WireGuard transport data.
//! The counter nonce advances every iteration, like the real sender. The tag is returned from the
//! closure, so criterion black-boxes it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::Clock;

const SIZES: [usize; 2] = [64, 1420];
const KEY: [u8; 32] = [0x42; 32];

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn seal(c: &mut Criterion<Clock>) {
    for size in SIZES {
        let mut group = c.benchmark_group(format!("seal/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];

        // ring, key built once: what a long-lived key object would cost.
        {
            use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
            let key =
                LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).expect("32-byte key"));
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::from_parameter("ring"), |b| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter));
                    key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf)
                        .expect("seal")
                });
            });

            // ring, key built per packet: what rwg-proto's crypto::aead_seal does today.
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::from_parameter("ring-key-per-packet"), |b| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let key = LessSafeKey::new(
                        UnboundKey::new(&CHACHA20_POLY1305, black_box(&KEY)).expect("32-byte key"),
                    );
                    let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter));
                    key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf)
                        .expect("seal")
                });
            });
        }

        // RustCrypto chacha20poly1305 (pure Rust, runtime-detected AVX2/SSE2 backends).
        {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
            let cipher = ChaCha20Poly1305::new(Key::from_slice(&KEY));
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::from_parameter("rustcrypto"), |b| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let n = nonce_bytes(counter);
                    cipher
                        .encrypt_in_place_detached(Nonce::from_slice(&n), &[], &mut buf)
                        .expect("seal")
                });
            });
        }

        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
            let key =
                LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).expect("32-byte key"));
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::from_parameter("aws-lc"), |b| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter));
                    key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf)
                        .expect("seal")
                });
            });

            let mut counter = 0u64;
            group.bench_function(BenchmarkId::from_parameter("aws-lc-key-per-packet"), |b| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let key = LessSafeKey::new(
                        UnboundKey::new(&CHACHA20_POLY1305, black_box(&KEY)).expect("32-byte key"),
                    );
                    let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter));
                    key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf)
                        .expect("seal")
                });
            });
        }

        group.finish();
    }
}

/// The cost the per-packet variants add: building the key object alone.
fn key_setup(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("key-setup");
    group.bench_function(BenchmarkId::from_parameter("ring"), |b| {
        use ring::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
        b.iter(|| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, black_box(&KEY)).expect("32-byte key"),
            )
        });
    });
    #[cfg(feature = "aws-lc")]
    group.bench_function(BenchmarkId::from_parameter("aws-lc"), |b| {
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};
        b.iter(|| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, black_box(&KEY)).expect("32-byte key"),
            )
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = seal, key_setup
}
criterion_main!(benches);
