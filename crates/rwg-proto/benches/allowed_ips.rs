//! Lookup cost of the cryptokey routing table, the per-packet part of routing.
//!
//! Tables of 10 000 and 1 000 000 random prefixes per family (seeded, so runs compare), looked
//! up with addresses that hit a prefix and with addresses that match none.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rwg_proto::allowed_ips::AllowedIps;
use std::net::IpAddr;

const SIZES: [usize; 2] = [10_000, 1_000_000];
const ADDRESSES: usize = 1_024;

/// Clears the host bits of `addr` past `cidr`.
fn mask(addr: &mut [u8], cidr: u32) {
    for i in cidr as usize..addr.len() * 8 {
        addr[i / 8] &= !(0x80 >> (i % 8));
    }
}

/// A table of random prefixes with lengths in `min_cidr..=bits`, plus addresses inside them
/// (hits) and addresses outside all of them (misses).
fn setup<const N: usize>(
    size: usize,
    seed: u64,
    min_cidr: u32,
) -> (AllowedIps<u32>, Vec<[u8; N]>, Vec<[u8; N]>)
where
    IpAddr: From<[u8; N]>,
{
    let bits = (N * 8) as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut table = AllowedIps::new();
    let mut prefixes = Vec::with_capacity(size);
    while table.len() < size {
        let mut addr = [0u8; N];
        rng.fill_bytes(&mut addr);
        let cidr = min_cidr + rng.next_u32() % (bits - min_cidr + 1);
        mask(&mut addr, cidr);
        // Values as peers: 100 000 of them, as in a large deployment.
        let value = rng.next_u32() % 100_000;
        table
            .insert(IpAddr::from(addr), cidr as u8, value)
            .expect("valid prefix");
        prefixes.push((addr, cidr));
    }
    let mut hits = Vec::with_capacity(ADDRESSES);
    while hits.len() < ADDRESSES {
        let (prefix, cidr) = prefixes[rng.next_u32() as usize % prefixes.len()];
        let mut addr = [0u8; N];
        rng.fill_bytes(&mut addr);
        for i in 0..cidr as usize {
            let bit = 0x80 >> (i % 8);
            addr[i / 8] = (addr[i / 8] & !bit) | (prefix[i / 8] & bit);
        }
        hits.push(addr);
    }
    let mut misses = Vec::with_capacity(ADDRESSES);
    // Bounded: a table that covers (almost) everything would otherwise spin here forever.
    for _ in 0..1000 * ADDRESSES {
        if misses.len() == ADDRESSES {
            break;
        }
        let mut addr = [0u8; N];
        rng.fill_bytes(&mut addr);
        if table.lookup(IpAddr::from(addr)).is_none() {
            misses.push(addr);
        }
    }
    assert_eq!(
        misses.len(),
        ADDRESSES,
        "the table leaves too few addresses unrouted"
    );
    (table, hits, misses)
}

fn lookups(c: &mut Criterion) {
    for size in SIZES {
        // IPv4 prefixes /16../32 leave part of the space unrouted for misses even with a
        // million of them (about a third of addresses); IPv6 prefixes /32../128 leave most.
        let (v4, hits4, misses4) = setup::<4>(size, 4, 16);
        let (v6, hits6, misses6) = setup::<16>(size, 6, 32);
        assert!(hits4.iter().all(|a| v4.lookup_v4(*a).is_some()));
        assert!(hits6.iter().all(|a| v6.lookup_v6(*a).is_some()));

        let mut group = c.benchmark_group(format!("allowed_ips_lookup_{size}"));
        group.throughput(Throughput::Elements(ADDRESSES as u64));
        group.bench_function("v4_hit", |b| {
            b.iter(|| {
                hits4
                    .iter()
                    .filter_map(|a| v4.lookup_v4(black_box(*a)))
                    .count()
            })
        });
        group.bench_function("v4_miss", |b| {
            b.iter(|| {
                misses4
                    .iter()
                    .filter_map(|a| v4.lookup_v4(black_box(*a)))
                    .count()
            })
        });
        group.bench_function("v6_hit", |b| {
            b.iter(|| {
                hits6
                    .iter()
                    .filter_map(|a| v6.lookup_v6(black_box(*a)))
                    .count()
            })
        });
        group.bench_function("v6_miss", |b| {
            b.iter(|| {
                misses6
                    .iter()
                    .filter_map(|a| v6.lookup_v6(black_box(*a)))
                    .count()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
