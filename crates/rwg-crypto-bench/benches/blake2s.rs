//! BLAKE2s-256 of 148 bytes (the size of a handshake initiation message): three compression
//! calls, the order of magnitude of every HASH/MAC input in the handshake.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::Clock;

const LEN: usize = 148;

fn hash(c: &mut Criterion<Clock>) {
    let data = [0x5au8; LEN];
    let mut group = c.benchmark_group("blake2s-256/148");
    group.throughput(Throughput::Bytes(LEN as u64));

    group.bench_function(BenchmarkId::from_parameter("blake2s_simd"), |b| {
        b.iter(|| black_box(blake2s_simd::blake2s(black_box(&data))));
    });

    group.bench_function(BenchmarkId::from_parameter("blake2"), |b| {
        use blake2::{Blake2s256, Digest};
        b.iter(|| black_box(Blake2s256::digest(black_box(&data))));
    });

    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = hash
}
criterion_main!(benches);
