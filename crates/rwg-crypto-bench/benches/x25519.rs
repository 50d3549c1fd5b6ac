//! X25519 shared-secret computation: four per handshake on each side (es, ss, ee, se).
//! Key generation is outside the measured loop; only the scalar multiplication is timed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::Clock;

const SECRET_A: [u8; 32] = [0x11; 32];
const SECRET_B: [u8; 32] = [0x22; 32];

fn dh(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("x25519");
    group.throughput(Throughput::Elements(1));

    {
        use x25519_dalek::{PublicKey, StaticSecret};
        let ours = StaticSecret::from(SECRET_A);
        let theirs = PublicKey::from(&StaticSecret::from(SECRET_B));
        group.bench_function(BenchmarkId::from_parameter("x25519-dalek"), |b| {
            b.iter(|| black_box(ours.diffie_hellman(black_box(&theirs))));
        });
    }

    #[cfg(feature = "aws-lc")]
    {
        use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
        let ours = PrivateKey::from_private_key(&X25519, &SECRET_A).expect("x25519 secret");
        let theirs_priv = PrivateKey::from_private_key(&X25519, &SECRET_B).expect("x25519 secret");
        let theirs_pub = theirs_priv.compute_public_key().expect("public key");
        let theirs = UnparsedPublicKey::new(&X25519, theirs_pub.as_ref().to_vec());
        group.bench_function(BenchmarkId::from_parameter("aws-lc"), |b| {
            b.iter(|| {
                let mut out = [0u8; 32];
                agree(&ours, black_box(&theirs), (), |s| {
                    out.copy_from_slice(s);
                    Ok(())
                })
                .expect("agree");
                black_box(out)
            });
        });
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = dh
}
criterion_main!(benches);
