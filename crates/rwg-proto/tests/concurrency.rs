//! The data path from many threads at once, for the same peer: what the crate documentation
//! promises ("Encryption and decryption of transport messages … run concurrently, for the same
//! peer too").
//!
//! Every test body runs under a watchdog: a lock-order bug shows up as a failed test after
//! [`WATCHDOG`], not as a hung test run.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rwg_proto::crypto::{mac, PresharedKey, PrivateKey, PublicKey};
use rwg_proto::device::{
    Device, DropReason, Received, Sent, HEADROOM, TAILROOM, UNDER_LOAD_QUEUE_LEN,
};
use rwg_proto::noise::RemoteStatic;
use rwg_proto::Instant;

const WATCHDOG: Duration = Duration::from_secs(60);
const THREADS: usize = 4;

const ADDR_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 51820);
const ADDR_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 51820);
const TUNNEL_A: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);
const TUNNEL_B: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 2);
/// Room for HEADROOM, the largest packet here and TAILROOM.
const BUF_LEN: usize = 256;

/// Runs `body` on its own thread and fails if it neither returns nor panics within [`WATCHDOG`]
/// (a deadlock); a panic in `body` is re-raised here.
fn with_watchdog(body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("test body".into())
        .spawn(move || {
            body();
            let _ = done.send(());
        })
        .expect("spawn the test body");
    match finished.recv_timeout(WATCHDOG) {
        Ok(()) => handle.join().expect("body finished"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body reports before it returns"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("test body still running after {WATCHDOG:?}: deadlock?")
        }
    }
}

struct Pair {
    a: Device,
    b: Device,
    key_a: PublicKey,
    key_b: PublicKey,
    /// A moment inside the session's lifetime; time stands still in these tests so that no
    /// timer or rekey interferes.
    now: Instant,
}

/// Two devices with a confirmed session in both directions.
fn established() -> Pair {
    let (ka, kb) = (
        PrivateKey::from_bytes([11; 32]),
        PrivateKey::from_bytes([12; 32]),
    );
    let a = Device::new(Box::new(ChaCha20Rng::seed_from_u64(1)));
    let b = Device::new(Box::new(ChaCha20Rng::seed_from_u64(2)));
    for (d, k) in [(&a, &ka), (&b, &kb)] {
        d.set_unix_time(Instant::ZERO, Duration::from_secs(1_700_000_000));
        d.set_private_key(Some(k.clone()));
    }
    let (key_a, key_b) = (ka.public_key(), kb.public_key());
    a.add_peer(key_b);
    a.set_endpoint(&key_b, ADDR_B).expect("peer B");
    a.add_allowed_ip(&key_b, IpAddr::V4(TUNNEL_B), 32)
        .expect("peer B");
    b.add_peer(key_a);
    b.set_endpoint(&key_a, ADDR_A).expect("peer A");
    b.add_allowed_ip(&key_a, IpAddr::V4(TUNNEL_A), 32)
        .expect("peer A");

    let mut now = Instant::from_nanos(1_000_000_000);
    let mut buf = [0u8; BUF_LEN];
    let first = packet(TUNNEL_A, TUNNEL_B, u64::MAX);
    buf[HEADROOM..HEADROOM + first.len()].copy_from_slice(&first);
    assert_eq!(a.handle_packet(now, &mut buf, first.len()), Sent::Staged);
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for (from, from_addr, to) in [(&a, ADDR_A, &b), (&b, ADDR_B, &a)] {
            while let Some(t) = from.poll_transmit(&mut buf) {
                moved = true;
                if let Received::Packet { .. } =
                    to.handle_datagram(now, from_addr, &mut buf[..t.len])
                {
                    delivered += 1;
                }
            }
        }
        if !moved {
            break;
        }
        now += Duration::from_millis(1);
    }
    assert_eq!(delivered, 1, "handshake done, staged packet delivered");
    while a.poll_event().is_some() || b.poll_event().is_some() {}
    Pair {
        a,
        b,
        key_a,
        key_b,
        now,
    }
}

/// An IPv4 packet whose payload is `tag` (8 bytes) followed by a few bytes derived from it.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, tag: u64) -> Vec<u8> {
    let payload_len = 8 + (tag % 61) as usize;
    let total = 20 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..28].copy_from_slice(&tag.to_le_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = tag.wrapping_mul(31).wrapping_add(i as u64) as u8;
    }
    p
}

/// The tag of a decrypted packet, after checking the rest of its payload.
fn tag_of(packet: &[u8]) -> u64 {
    let tag = u64::from_le_bytes(packet[20..28].try_into().expect("8 bytes"));
    assert_eq!(
        packet,
        &self::packet(TUNNEL_A, TUNNEL_B, tag)[..],
        "payload intact"
    );
    tag
}

/// Seals `packet` on `device`'s data path; returns the datagram.
fn seal(device: &Device, now: Instant, packet: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; BUF_LEN];
    assert!(HEADROOM + packet.len() + TAILROOM <= BUF_LEN);
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    match device.data_path().encapsulate(now, &mut buf, packet.len()) {
        Sent::Transmit { len, .. } => buf[..len].to_vec(),
        other => panic!("not sealed: {other:?}"),
    }
}

fn counter_of(datagram: &[u8]) -> u64 {
    u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes"))
}

fn total_drops(device: &Device) -> Vec<(DropReason, u64)> {
    device.drop_counts().filter(|&(_, n)| n > 0).collect()
}

fn shuffle<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// 4 threads seal for the same peer at once, then 4 threads open the shuffled datagrams at
/// once: every packet arrives exactly once, and the nonce counters never repeat.
#[test]
fn same_peer_from_four_threads_each_way() {
    // Per thread. 4 × 1500 = 6000 datagrams: however they are shuffled, every counter stays
    // within the 8128-counter replay window of the highest, so none may be dropped.
    const PER_THREAD: u64 = 1500;
    const BATCH: usize = 32;
    with_watchdog(|| {
        let Pair { a, b, now, .. } = established();

        let start = Barrier::new(THREADS);
        let sealed: Vec<Vec<Vec<u8>>> = thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS as u64)
                .map(|t| {
                    let (a, start) = (&a, &start);
                    s.spawn(move || {
                        start.wait();
                        let tags: Vec<u64> = (0..PER_THREAD).map(|i| t * PER_THREAD + i).collect();
                        let mut out = Vec::new();
                        for chunk in tags.chunks(BATCH) {
                            // One guard per batch, as a driver does.
                            let path = a.data_path();
                            for &tag in chunk {
                                let p = packet(TUNNEL_A, TUNNEL_B, tag);
                                let mut buf = [0u8; BUF_LEN];
                                buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
                                match path.encapsulate(now, &mut buf, p.len()) {
                                    Sent::Transmit { destination, len } => {
                                        assert_eq!(destination, ADDR_B);
                                        out.push(buf[..len].to_vec());
                                    }
                                    other => panic!("thread {t}: {other:?}"),
                                }
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("sender thread"))
                .collect()
        });

        let mut all: Vec<Vec<u8>> = sealed.into_iter().flatten().collect();
        let total = THREADS * PER_THREAD as usize;
        assert_eq!(all.len(), total);
        let mut counters: Vec<u64> = all.iter().map(|d| counter_of(d)).collect();
        counters.sort_unstable();
        counters.dedup();
        assert_eq!(counters.len(), total, "a nonce counter was used twice");
        // Nobody else sent: the counters are one contiguous run after the handshake's packet.
        assert_eq!(counters[total - 1] - counters[0], total as u64 - 1);

        shuffle(&mut all, &mut ChaCha20Rng::seed_from_u64(99));
        let received: Vec<Vec<u64>> = thread::scope(|s| {
            let workers: Vec<_> = all
                .chunks(total.div_ceil(THREADS))
                .map(|share| {
                    let (b, start) = (&b, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut tags = Vec::with_capacity(share.len());
                        for batch in share.chunks(BATCH) {
                            let path = b.data_path();
                            for datagram in batch {
                                let mut buf = datagram.clone();
                                match path.decapsulate(now, ADDR_A, &mut buf) {
                                    Received::Packet { len, .. } => {
                                        tags.push(tag_of(&buf[HEADROOM..HEADROOM + len]));
                                    }
                                    other => panic!("counter {}: {other:?}", counter_of(datagram)),
                                }
                            }
                        }
                        tags
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("receiver thread"))
                .collect()
        });

        let mut seen = vec![0u32; total];
        for tag in received.into_iter().flatten() {
            seen[usize::try_from(tag).expect("small tag")] += 1;
        }
        let wrong: Vec<(usize, u32)> = seen
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n != 1)
            .map(|(i, &n)| (i, n))
            .collect();
        assert!(wrong.is_empty(), "(tag, times delivered): {wrong:?}");
        assert_eq!(total_drops(&a), vec![]);
        assert_eq!(total_drops(&b), vec![]);
    });
}

/// The same datagram delivered by two threads at the same moment: the replay window must let
/// exactly one of them through. Both threads walk the same list in the same order, so they
/// collide on nearly every datagram.
#[test]
fn replayed_datagram_raced_from_two_threads_is_accepted_once() {
    const DATAGRAMS: u64 = 2000;
    with_watchdog(|| {
        let Pair { a, b, now, .. } = established();
        let datagrams: Vec<Vec<u8>> = (0..DATAGRAMS)
            .map(|tag| seal(&a, now, &packet(TUNNEL_A, TUNNEL_B, tag)))
            .collect();

        // Lockstep: both threads pass the barrier, then deliver the same datagram at once.
        let round = Barrier::new(2);
        let accepted: Vec<Vec<u64>> = thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (b, datagrams, round) = (&b, &datagrams, &round);
                    s.spawn(move || {
                        let mut tags = Vec::new();
                        for datagram in datagrams {
                            let mut buf = datagram.clone();
                            round.wait();
                            match b.data_path().decapsulate(now, ADDR_A, &mut buf) {
                                Received::Packet { len, .. } => {
                                    tags.push(tag_of(&buf[HEADROOM..HEADROOM + len]));
                                }
                                Received::Dropped(DropReason::Replay) => {}
                                other => panic!("{other:?}"),
                            }
                        }
                        tags
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("receiver thread"))
                .collect()
        });

        // Which thread won is up to the scheduler; shown for the curious (`--nocapture`).
        eprintln!(
            "replay race won by thread 0: {}, thread 1: {}",
            accepted[0].len(),
            accepted[1].len()
        );
        let mut times: BTreeMap<u64, u32> = BTreeMap::new();
        for tag in accepted.iter().flatten() {
            *times.entry(*tag).or_default() += 1;
        }
        assert_eq!(times.len() as u64, DATAGRAMS, "every datagram accepted");
        assert!(times.values().all(|&n| n == 1), "a datagram accepted twice");
        assert_eq!(
            total_drops(&b),
            vec![(DropReason::Replay, DATAGRAMS)],
            "every second copy refused as a replay"
        );
    });
}

/// One thread reconfigures both devices — other peers come and go, allowed IPs are added and
/// removed, timers run, keepalives are switched on and off — while four threads send and
/// receive for the established peer. Nothing may deadlock or panic, and the established peer's
/// traffic must be untouched.
#[test]
fn configuration_changes_while_the_data_path_runs() {
    const ROUNDS: u64 = 200;
    const SENDS_PER_THREAD: u64 = 2000;
    with_watchdog(|| {
        let pair = established();
        let Pair {
            a,
            b,
            key_a,
            key_b,
            now,
        } = &pair;
        let now = *now;
        let others: Vec<PublicKey> = (0..8u8)
            .map(|i| PrivateKey::from_bytes([100 + i; 32]).public_key())
            .collect();

        let delivered: Vec<u64> = thread::scope(|s| {
            let config = s.spawn(|| {
                let mut rng = ChaCha20Rng::seed_from_u64(7);
                let mut buf = [0u8; 2048];
                for round in 0..ROUNDS {
                    let other = &others[(round % others.len() as u64) as usize];
                    let third = (round % 250) as u8 + 1;
                    for (d, main_peer) in [(a, key_b), (b, key_a)] {
                        d.add_peer(*other);
                        d.set_endpoint(other, SocketAddr::new([10, 1, 0, third].into(), 9))
                            .expect("just added");
                        d.add_allowed_ip(other, [172, 16, third, 0].into(), 24)
                            .expect("valid");
                        // Extra prefixes for the established peer too, and one moved away
                        // from it to the other peer.
                        d.add_allowed_ip(main_peer, [10, 200, third, 0].into(), 24)
                            .expect("valid");
                        d.add_allowed_ip(other, [10, 200, third, 0].into(), 24)
                            .expect("valid");
                        let _ = d.peers();
                        let _ = d.stats();
                        d.remove_allowed_ip(other, [172, 16, third, 0].into(), 24)
                            .expect("valid");
                        if rng.next_u32() % 2 == 0 {
                            assert!(d.remove_peer(other));
                        } else {
                            d.clear_allowed_ips(other).expect("exists");
                            assert!(d.remove_peer(other));
                        }
                        d.remove_allowed_ip(main_peer, [10, 200, third, 0].into(), 24)
                            .expect("valid");
                        if round % 20 == 0 {
                            // Sends a keepalive through the outbox (control path).
                            d.set_persistent_keepalive(now, main_peer, 25)
                                .expect("exists");
                            d.set_persistent_keepalive(now, main_peer, 0)
                                .expect("exists");
                        }
                        d.handle_timeout(now);
                        let _ = d.poll_timeout();
                        while d.poll_event().is_some() {}
                    }
                    // Deliver what the control path queued (keepalives) the driver's way.
                    for (from, from_addr, to) in [(a, ADDR_A, b), (b, ADDR_B, a)] {
                        while let Some(t) = from.poll_transmit(&mut buf) {
                            let r = to.handle_datagram(now, from_addr, &mut buf[..t.len]);
                            assert_eq!(r, Received::Keepalive);
                        }
                    }
                    thread::yield_now();
                }
            });

            // Two threads each way: seal on one device, open on the other, in small batches,
            // each batch under its own data-path guards (never both at once in one thread).
            let workers: Vec<_> = (0..THREADS as u64)
                .map(|t| {
                    let (from, to, from_addr, src, dst) = if t % 2 == 0 {
                        (a, b, ADDR_A, TUNNEL_A, TUNNEL_B)
                    } else {
                        (b, a, ADDR_B, TUNNEL_B, TUNNEL_A)
                    };
                    s.spawn(move || {
                        let mut delivered = 0;
                        for i in 0..SENDS_PER_THREAD / 8 {
                            let mut batch = Vec::with_capacity(8);
                            {
                                let path = from.data_path();
                                for j in 0..8 {
                                    let p = packet(src, dst, t * SENDS_PER_THREAD + i * 8 + j);
                                    let mut buf = vec![0u8; BUF_LEN];
                                    buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
                                    match path.encapsulate(now, &mut buf, p.len()) {
                                        Sent::Transmit { len, .. } => {
                                            buf.truncate(len);
                                            batch.push((p, buf));
                                        }
                                        other => panic!("thread {t}: {other:?}"),
                                    }
                                }
                            }
                            let path = to.data_path();
                            for (p, mut datagram) in batch {
                                match path.decapsulate(now, from_addr, &mut datagram) {
                                    Received::Packet { len, .. } => {
                                        assert_eq!(&datagram[HEADROOM..HEADROOM + len], &p[..]);
                                        delivered += 1;
                                    }
                                    other => panic!("thread {t}: {other:?}"),
                                }
                            }
                        }
                        delivered
                    })
                })
                .collect();
            let delivered = workers
                .into_iter()
                .map(|w| w.join().expect("data thread"))
                .collect();
            config.join().expect("config thread");
            delivered
        });

        assert_eq!(delivered, vec![SENDS_PER_THREAD; THREADS]);
        for d in [a, b] {
            assert_eq!(total_drops(d), vec![]);
            assert_eq!(d.peers().len(), 1, "only the established peer is left");
        }
    });
}

/// A handshake flood must not stall the data path. While a data-path batch holds its read
/// guards, the control path still gets through a queue of flooded initiations (mac1 right, no
/// mac2: under load each earns a cookie reply), because the door takes no write lock. Before,
/// the whole queue was handled under the index table's write lock, and every receive and send
/// batch waited for it.
#[test]
fn the_door_lets_a_flood_through_while_a_data_path_batch_is_open() {
    /// How long the control path may take before it counts as blocked: far more than 256 mac
    /// checks need, far less than the watchdog.
    const BLOCKED: Duration = Duration::from_secs(20);
    with_watchdog(|| {
        let pair = established();
        let (a, now) = (&pair.a, pair.now);
        let flood = 2 * UNDER_LOAD_QUEUE_LEN;
        let mac1_key = RemoteStatic::new(pair.key_a, PresharedKey::none()).mac1_key();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        {
            let path = a.data_path();
            for i in 0..flood {
                let mut msg = [0u8; 148];
                msg[0] = 1;
                msg[4..8].copy_from_slice(&(i as u32).to_le_bytes());
                rng.fill_bytes(&mut msg[8..116]);
                let mac1 = mac(&mac1_key, &[&msg[..116]]);
                msg[116..132].copy_from_slice(&mac1);
                let from = SocketAddr::new([10, 9, (i >> 8) as u8, i as u8].into(), 40000);
                assert_eq!(path.decapsulate(now, from, &mut msg), Received::Handshake);
            }
        }
        let cookies_before = a.counters().cookie_replies_sent;
        let batch = a.data_path();
        let (done, handled) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(move || {
                let _ = done.send(a.handle_queued_handshakes(now));
            });
            let handled = handled.recv_timeout(BLOCKED);
            // Lets a blocked control path finish either way.
            drop(batch);
            assert_eq!(
                handled,
                Ok(flood),
                "the control path waited for the data path's batch"
            );
        });
        assert_eq!(
            a.counters().cookie_replies_sent - cookies_before,
            flood as u64
        );
    });
}

#[test]
fn watchdog_reraises_panics() {
    let result = std::panic::catch_unwind(|| with_watchdog(|| panic!("inner")));
    assert!(result.is_err());
}
