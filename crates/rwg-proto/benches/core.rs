//! The cost of the protocol core: handshakes per second and transport throughput, each next
//! to the bare cryptography it is built on, so the device's own per-packet work (routing,
//! locks, counters, timers, the replay window) shows up as the ratio between the two.
//!
//! - `handshake/noise`: the four Noise steps called directly (plus mac1 written and checked,
//!   and the first transport message that confirms the keys), no device.
//! - `handshake/device`: the same exchange between two fresh `Device`s, driven the way a driver
//!   does it: `handle_packet` (stages the packet, queues the initiation) → `poll_transmit` →
//!   `handle_datagram` → … until the staged packet (the key confirmation) is delivered.
//! - `seal/*`, `open/*`: 64 packets per iteration (one `data_path` guard per 64), reported
//!   in bytes of IP packet per second, for 64-byte and 1420-byte IPv4 packets, next to
//!   `crypto::aead_seal`/`aead_open` on the same lengths.
//!
//! All devices use seeded RNGs and a fixed virtual clock, so runs compare. On a shared
//! machine compare ratios within one run (device vs raw), not absolute figures across runs;
//! the fastest sample of each benchmark (`sample.json`) is the least disturbed estimate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rwg_proto::cookie::{CookieChecker, CookieState, MacVerdict};
use rwg_proto::crypto::{aead_open, aead_seal, hash, PresharedKey, PrivateKey, SymmetricKey};
use rwg_proto::device::{Device, Received, SendJob, Sent, HEADROOM, TAILROOM};
use rwg_proto::messages::{
    self, write_transport_header, Message, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
    TRANSPORT_MIN_LEN,
};
use rwg_proto::noise::{
    consume_initiation, consume_response, create_initiation, create_response, RemoteStatic,
    StaticIdentity, Tai64N, LABEL_MAC1,
};
use rwg_proto::Instant;

/// Packets per `data_path` guard (and per criterion iteration).
const BATCH: usize = 64;
/// IP packet lengths: a small packet (per-packet overhead dominates) and a full-MTU one.
const SIZES: [usize; 2] = [64, 1420];
/// Bytes reserved per packet in a batch buffer: enough for HEADROOM + 1420 + TAILROOM.
const STRIDE: usize = 2048;

const ADDR_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 51820);
const ADDR_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 51820);
const TUNNEL_A: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);
const TUNNEL_B: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 2);

fn key(byte: u8) -> PrivateKey {
    PrivateKey::from_bytes([byte; 32])
}

/// An IPv4 packet of `len` bytes in total from `src` to `dst` (protocol 253, experiments).
fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).expect("IPv4 length").to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// Two configured devices, A and B, that know each other but have no session yet.
fn device_pair(seed: u64) -> (Device, Device) {
    let a = Device::new(Box::new(ChaCha20Rng::seed_from_u64(seed)));
    let b = Device::new(Box::new(ChaCha20Rng::seed_from_u64(seed + 1)));
    let (ka, kb) = (key(1), key(2));
    for d in [&a, &b] {
        d.set_unix_time(Instant::ZERO, Duration::from_secs(1_700_000_000));
    }
    a.set_private_key(Some(ka.clone()));
    b.set_private_key(Some(kb.clone()));
    a.add_peer(kb.public_key());
    a.set_endpoint(&kb.public_key(), ADDR_B).expect("peer B");
    a.add_allowed_ip(&kb.public_key(), IpAddr::V4(TUNNEL_B), 32)
        .expect("peer B");
    b.add_peer(ka.public_key());
    b.set_endpoint(&ka.public_key(), ADDR_A).expect("peer A");
    b.add_allowed_ip(&ka.public_key(), IpAddr::V4(TUNNEL_A), 32)
        .expect("peer A");
    (a, b)
}

/// Moves datagrams between A and B until both are quiet; returns how many IP packets were
/// delivered (to either side).
fn shuttle(a: &Device, b: &Device, now: &mut Instant, buf: &mut [u8]) -> usize {
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for (from, from_addr, to) in [(a, ADDR_A, b), (b, ADDR_B, a)] {
            while let Some(t) = from.poll_transmit(buf) {
                moved = true;
                if let Received::Packet { .. } =
                    to.handle_datagram(*now, from_addr, &mut buf[..t.len])
                {
                    delivered += 1;
                }
            }
        }
        if !moved {
            return delivered;
        }
        *now += Duration::from_millis(1);
    }
}

/// One full handshake through the devices: A gets a packet for B, stages it and initiates; the
/// staged packet is the key confirmation that B must receive.
fn device_handshake(a: &Device, b: &Device, mut now: Instant, packet: &[u8]) -> Instant {
    let mut buf = [0u8; STRIDE];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    assert_eq!(a.handle_packet(now, &mut buf, packet.len()), Sent::Staged);
    assert_eq!(
        shuttle(a, b, &mut now, &mut buf),
        1,
        "staged packet delivered"
    );
    now
}

/// Two devices with an established, confirmed session, and the moment to use it at.
fn established() -> (Device, Device, Instant) {
    let (a, b) = device_pair(1);
    let packet = ipv4_packet(TUNNEL_A, TUNNEL_B, 64);
    let now = device_handshake(&a, &b, Instant::from_nanos(1_000_000_000), &packet);
    while a.poll_event().is_some() || b.poll_event().is_some() {}
    (a, b, now)
}

/// The handshake with the noise functions only: what a `Device` does at the least.
struct NoiseParties {
    a: StaticIdentity,
    b: StaticIdentity,
    /// A's view of B and B's view of A (static-static DH precomputed, as a device does).
    b_at_a: RemoteStatic,
    a_at_b: RemoteStatic,
    mac1_to_a: [u8; 32],
    mac1_to_b: [u8; 32],
    checker_a: CookieChecker,
    checker_b: CookieChecker,
    cookies_a: CookieState,
    cookies_b: CookieState,
    rng: ChaCha20Rng,
}

impl NoiseParties {
    fn new() -> Self {
        let (a, b) = (StaticIdentity::new(key(1)), StaticIdentity::new(key(2)));
        NoiseParties {
            b_at_a: RemoteStatic::new(*b.public_key(), PresharedKey::none()),
            a_at_b: RemoteStatic::new(*a.public_key(), PresharedKey::none()),
            mac1_to_a: hash(&[LABEL_MAC1, a.public_key().as_bytes()]),
            mac1_to_b: hash(&[LABEL_MAC1, b.public_key().as_bytes()]),
            checker_a: CookieChecker::new(Some(&a)),
            checker_b: CookieChecker::new(Some(&b)),
            cookies_a: CookieState::default(),
            cookies_b: CookieState::default(),
            rng: ChaCha20Rng::seed_from_u64(3),
            a,
            b,
        }
    }

    /// Initiation, response and a keepalive under the new keys; returns the two sessions'
    /// (A send, B receive) keys so a test can compare them.
    fn handshake(&mut self, now: Instant, round: u64) -> (SymmetricKey, SymmetricKey) {
        let timestamp = Tai64N::from_unix(Duration::from_secs(1_700_000_000 + round));
        let mut init = [0u8; INITIATION_LEN];
        let state = create_initiation(
            &self.a,
            &mut self.b_at_a,
            7,
            timestamp,
            &mut self.rng,
            &mut init,
        )
        .expect("initiation");
        self.cookies_a.add_macs(now, &self.mac1_to_b, &mut init);

        let verdict = self
            .checker_b
            .verify(now, &mut self.rng, &init, ADDR_A, false);
        assert_eq!(verdict, MacVerdict::ValidMacAndCookie);
        let Ok(Message::Initiation(msg)) = messages::parse(&init) else {
            panic!("an initiation");
        };
        let half = consume_initiation(&self.b, &msg).expect("authentic initiation");
        let received = half
            .finish(&self.b, &mut self.a_at_b, &msg)
            .expect("known peer");
        assert_eq!(received.timestamp, timestamp);
        let mut resp = [0u8; RESPONSE_LEN];
        let keys_b =
            create_response(received, &self.a_at_b, 9, &mut self.rng, &mut resp).expect("response");
        self.cookies_b.add_macs(now, &self.mac1_to_a, &mut resp);

        let verdict = self
            .checker_a
            .verify(now, &mut self.rng, &resp, ADDR_B, false);
        assert_eq!(verdict, MacVerdict::ValidMacAndCookie);
        let Ok(Message::Response(msg)) = messages::parse(&resp) else {
            panic!("a response");
        };
        let keys_a = consume_response(&self.a, &self.b_at_a, &state, &msg).expect("response");

        // Key confirmation: A's first transport message (a keepalive), opened by B.
        let mut confirm = [0u8; TRANSPORT_MIN_LEN];
        let (header, body) = confirm.split_at_mut(TRANSPORT_HEADER_LEN);
        write_transport_header(header.try_into().expect("16 bytes"), 9, 0);
        aead_seal(&keys_a.send, 0, body, &[]);
        aead_open(&keys_b.recv, 0, body, &[]).expect("keys agree");
        (keys_a.send, keys_b.recv)
    }
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    // One element = one complete handshake: `elem/s` is handshakes per second.
    group.throughput(Throughput::Elements(1));

    let mut parties = NoiseParties::new();
    let (send, recv) = parties.handshake(Instant::from_nanos(1), 0);
    assert_eq!(
        send, recv,
        "initiator's send key is the responder's receive key"
    );
    let mut round = 1;
    group.bench_function("noise", |bench| {
        bench.iter(|| {
            round += 1;
            black_box(parties.handshake(Instant::from_nanos(1), round))
        })
    });

    // Fresh devices for every handshake (set up outside the measurement): a handshake on a
    // pair that already has a session would be held back by the rekey and flood limits, or
    // need the virtual clock moved by minutes, which runs every timer in between.
    let packet = ipv4_packet(TUNNEL_A, TUNNEL_B, 64);
    group.bench_function("device", |bench| {
        bench.iter_batched(
            || device_pair(1),
            |(a, b)| {
                device_handshake(&a, &b, Instant::from_nanos(1_000_000_000), &packet);
                // Returned so that dropping them is not measured.
                (a, b)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A batch of `BATCH` buffers, each `STRIDE` bytes, holding `packet` at `HEADROOM`.
fn batch_of(packet: &[u8]) -> Vec<u8> {
    let mut bufs = vec![0u8; BATCH * STRIDE];
    for buf in bufs.chunks_exact_mut(STRIDE) {
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    }
    bufs
}

fn transport(c: &mut Criterion) {
    let (a, b, now) = established();
    let raw_key = SymmetricKey::from_bytes([5; 32]);

    // Seal. Sealing works in place, so every packet is copied back into its buffer before it
    // is sealed again; the raw AEAD does the same copy, so the ratio compares like with like.
    let mut group = c.benchmark_group("seal");
    for size in SIZES {
        let packet = ipv4_packet(TUNNEL_A, TUNNEL_B, size);
        assert!(HEADROOM + size + TAILROOM <= STRIDE);
        group.throughput(Throughput::Bytes((BATCH * size) as u64));
        let mut bufs = batch_of(&packet);

        let mut counter = 0u64;
        group.bench_function(format!("raw_aead/{size}"), |bench| {
            bench.iter(|| {
                for buf in bufs.chunks_exact_mut(STRIDE) {
                    buf[HEADROOM..HEADROOM + size].copy_from_slice(&packet);
                    counter += 1;
                    aead_seal(
                        &raw_key,
                        counter,
                        &mut buf[HEADROOM..HEADROOM + size + 16],
                        &[],
                    );
                }
                black_box(&mut bufs);
            })
        });

        group.bench_function(format!("device/{size}"), |bench| {
            bench.iter(|| {
                let path = a.data_path();
                for buf in bufs.chunks_exact_mut(STRIDE) {
                    buf[HEADROOM..HEADROOM + size].copy_from_slice(&packet);
                    let sent = path.encapsulate(now, buf, size);
                    assert!(matches!(sent, Sent::Transmit { .. }), "{sent:?}");
                }
                black_box(&mut bufs);
            })
        });

        // All counters of the batch reserved first (in order), then all sealed: the shape of a
        // driver that hands the seals to other threads.
        let mut jobs: Vec<SendJob> = Vec::with_capacity(BATCH);
        group.bench_function(format!("device_split/{size}"), |bench| {
            bench.iter(|| {
                let path = a.data_path();
                for buf in bufs.chunks_exact_mut(STRIDE) {
                    buf[HEADROOM..HEADROOM + size].copy_from_slice(&packet);
                    let job = path
                        .prepare_send(now, &buf[HEADROOM..HEADROOM + size], STRIDE)
                        .expect("session established");
                    jobs.push(job);
                }
                for (job, buf) in jobs.drain(..).zip(bufs.chunks_exact_mut(STRIDE)) {
                    black_box(job.seal(buf, size).expect("the batch buffer fits"));
                }
            })
        });
    }
    group.finish();

    // Open. The replay window accepts each counter once, so the same sealed datagrams cannot be
    // opened twice. Method: `iter_batched` — its setup closure, which criterion runs outside
    // the timed region, has A seal 64 fresh datagrams (new counters, increasing, so always
    // inside B's window); only B's opening of them is timed. The raw AEAD gets the same
    // treatment (fresh copies of 64 sealed messages from an untimed setup), so both read
    // freshly written, equally warm buffers.
    let mut group = c.benchmark_group("open");
    for size in SIZES {
        let packet = ipv4_packet(TUNNEL_A, TUNNEL_B, size);
        let wire_len = TRANSPORT_HEADER_LEN + size + 16;
        group.throughput(Throughput::Bytes((BATCH * size) as u64));

        let mut sealed_raw = batch_of(&packet);
        for (i, buf) in sealed_raw.chunks_exact_mut(STRIDE).enumerate() {
            aead_seal(&raw_key, i as u64, &mut buf[HEADROOM..wire_len], &[]);
        }
        group.bench_function(format!("raw_aead/{size}"), |bench| {
            bench.iter_batched(
                || sealed_raw.clone(),
                |mut bufs| {
                    for (i, buf) in bufs.chunks_exact_mut(STRIDE).enumerate() {
                        aead_open(&raw_key, i as u64, &mut buf[HEADROOM..wire_len], &[])
                            .expect("authentic");
                    }
                    bufs
                },
                BatchSize::SmallInput,
            )
        });

        let fresh_from_a = || {
            let mut bufs = batch_of(&packet);
            let path = a.data_path();
            for buf in bufs.chunks_exact_mut(STRIDE) {
                let sent = path.encapsulate(now, buf, size);
                assert_eq!(
                    sent,
                    Sent::Transmit {
                        destination: ADDR_B,
                        len: wire_len
                    }
                );
            }
            bufs
        };
        group.bench_function(format!("device/{size}"), |bench| {
            bench.iter_batched(
                fresh_from_a,
                |mut bufs| {
                    let path = b.data_path();
                    for buf in bufs.chunks_exact_mut(STRIDE) {
                        let received = path.decapsulate(now, ADDR_A, &mut buf[..wire_len]);
                        assert!(matches!(received, Received::Packet { .. }), "{received:?}");
                    }
                    bufs
                },
                BatchSize::SmallInput,
            )
        });

        group.bench_function(format!("device_split/{size}"), |bench| {
            bench.iter_batched(
                fresh_from_a,
                |mut bufs| {
                    let path = b.data_path();
                    for buf in bufs.chunks_exact_mut(STRIDE) {
                        let buf = &mut buf[..wire_len];
                        let job = path.prepare_receive(now, ADDR_A, buf).expect("known index");
                        job.open(buf).expect("authentic");
                        let received = path.finish_receive(now, job, buf);
                        assert!(matches!(received, Received::Packet { .. }), "{received:?}");
                    }
                    bufs
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // The data path must have stayed on the fast path throughout: nothing dropped, nothing
    // deferred to the control path.
    for d in [&a, &b] {
        let drops: u64 = d.drop_counts().map(|(_, n)| n).sum();
        assert_eq!(drops, 0, "{:?}", d.drop_counts().collect::<Vec<_>>());
    }
}

criterion_group!(benches, handshakes, transport);
criterion_main!(benches);
