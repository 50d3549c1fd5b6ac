//! TCP segments on a path that is worse than the tunnel: smaller MTU (ICMP "fragmentation
//! needed" / "packet too big" from a router), and losses (selective retransmission).
//!
//! ```text
//!   stack A --hook: drop, or answer with ICMP--> stack B
//!           <------------------------------------
//! ```

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{pair_with, Hooked, A4, A6, B4, B6};
use rwg_netstack::{NetStack, TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const PATH_MTU: usize = 1280;

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMPv4 "fragmentation needed" from a router at 10.0.0.254, quoting `original`.
fn frag_needed(original: &[u8], mtu: u16) -> Vec<u8> {
    let quoted = &original[..28.min(original.len())];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 254];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&original[12..16]); // To the sender of the original.
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

/// An ICMPv6 "packet too big" from a router at fd00::fe, quoting `original`.
fn packet_too_big(original: &[u8], mtu: u32) -> Vec<u8> {
    let router: std::net::Ipv6Addr = "fd00::fe".parse().expect("ip");
    let quoted = &original[..(PATH_MTU - 48).min(original.len())];
    let mut icmp = vec![2, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&router.octets());
    pseudo.extend_from_slice(&original[8..24]);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 64]);
    p.extend_from_slice(&router.octets());
    p.extend_from_slice(&original[8..24]);
    p.extend_from_slice(&icmp);
    p
}

/// A sink on B's `port` that returns how many bytes it got and their sum.
fn sink(b: &NetStack, port: u16) -> tokio::task::JoinHandle<(usize, u64)> {
    let listener = TcpListener::bind(b, port).expect("bind");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 65536];
        let (mut n, mut sum) = (0usize, 0u64);
        loop {
            let got = s.read(&mut buf).await.expect("read");
            if got == 0 {
                return (n, sum);
            }
            n += got;
            sum += buf[..got].iter().map(|b| u64::from(*b)).sum::<u64>();
        }
    })
}

async fn send_all(a: &NetStack, to: SocketAddr, total: usize) -> u64 {
    let mut s = TcpStream::connect(a, to).await.expect("connect");
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut sent = 0;
    let mut sum = 0u64;
    while sent < total {
        let n = chunk.len().min(total - sent);
        s.write_all(&chunk[..n]).await.expect("write");
        sum += chunk[..n].iter().map(|b| u64::from(*b)).sum::<u64>();
        sent += n;
    }
    s.shutdown().await.expect("shutdown");
    sum
}

/// A path of 1280 bytes between A and B: larger packets from A are dropped and answered with
/// the ICMP error a router would send (only while `icmp` is set: without it the path is a
/// black hole).
fn small_path(icmp: Arc<AtomicBool>, too_big: Arc<AtomicU64>) -> impl FnMut(Vec<u8>) -> Hooked {
    move |packet| {
        if packet.len() <= PATH_MTU {
            return Hooked {
                to_b: Some(packet),
                to_a: None,
            };
        }
        too_big.fetch_add(1, Ordering::Relaxed);
        let error = icmp.load(Ordering::Relaxed).then(|| match packet[0] >> 4 {
            4 => frag_needed(&packet, PATH_MTU as u16),
            _ => packet_too_big(&packet, PATH_MTU as u32),
        });
        Hooked {
            to_b: None,
            to_a: error,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_path_mtu_learned_from_icmp_does_not_stall_a_transfer() {
    for (target, port) in [(B4, 9000u16), (B6, 9001)] {
        let too_big = Arc::new(AtomicU64::new(0));
        let (a, b) = pair_with(
            1420,
            small_path(Arc::new(AtomicBool::new(true)), too_big.clone()),
        );
        let received = sink(&b, port);
        let total = 2 << 20;
        let sum = timeout(LIMIT, send_all(&a, SocketAddr::new(target, port), total))
            .await
            .expect("the upload must not stall");
        let (n, got) = timeout(LIMIT, received)
            .await
            .expect("in time")
            .expect("sink");
        assert_eq!((n, got), (total, sum), "{target}");
        // The path did refuse large packets, and the stack split its segments to fit.
        assert!(too_big.load(Ordering::Relaxed) > 0);
        assert!(a.stats().segments_split > 0, "{target}: {:?}", a.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_icmp_error_the_same_path_is_a_black_hole() {
    // The control for the test above: the same path with the ICMP error withheld stalls,
    // so the test above passes because of the ICMP handling.
    let (a, b) = pair_with(
        1420,
        small_path(
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        ),
    );
    let _received = sink(&b, 9000);
    let result = timeout(
        Duration::from_secs(3),
        send_all(&a, SocketAddr::new(B4, 9000), 2 << 20),
    )
    .await;
    assert!(result.is_err(), "a black-holed path cannot carry 2 MiB");
    assert_eq!(a.stats().segments_split, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syns_announce_an_mss_that_fits_the_tunnel_mtu() {
    for mtu in [1420usize, 1280] {
        let syns = Arc::new(Mutex::new(Vec::new()));
        let s = syns.clone();
        let (a, b) = pair_with(mtu, move |packet: Vec<u8>| {
            let (ip, proto) = match packet[0] >> 4 {
                4 => (20, packet[9]),
                _ => (40, packet[6]),
            };
            if proto == 6 && packet[ip + 13] & 0x02 != 0 {
                s.lock().expect("lock").push(packet.clone());
            }
            Hooked {
                to_b: Some(packet),
                to_a: None,
            }
        });
        let listener = TcpListener::bind(&b, 80).expect("bind");
        for target in [B4, B6] {
            let _c = timeout(LIMIT, TcpStream::connect(&a, SocketAddr::new(target, 80)))
                .await
                .expect("in time")
                .expect("connect");
            let _ = listener.accept().await.expect("accept");
        }
        let syns = syns.lock().expect("lock").clone();
        assert_eq!(syns.len(), 2);
        for syn in syns {
            let (ip, src): (usize, IpAddr) = match syn[0] >> 4 {
                4 => (20, A4),
                _ => (40, A6),
            };
            // The MSS option (kind 2, length 4) among the options.
            let options = &syn[ip + 20..ip + usize::from(syn[ip + 12] >> 4) * 4];
            let at = options
                .windows(2)
                .position(|w| w == [2, 4])
                .expect("an MSS option");
            let mss = usize::from(u16::from_be_bytes([options[at + 2], options[at + 3]]));
            assert_eq!(mss, mtu - ip - 20, "{src} with MTU {mtu}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_are_repaired_without_resending_what_the_peer_has() {
    // Drop every 29th data segment from A to B, once each (a retransmission goes through).
    let mut count = 0u64;
    let (a, b) = pair_with(1420, move |packet: Vec<u8>| {
        let carries_data = packet.len() > 20 + 32 + 1;
        count += 1;
        let drop = carries_data && count % 29 == 0;
        Hooked {
            to_b: (!drop).then_some(packet),
            to_a: None,
        }
    });
    let received = sink(&b, 9000);
    let total = 4 << 20;
    let sum = timeout(LIMIT, send_all(&a, SocketAddr::new(B4, 9000), total))
        .await
        .expect("in time");
    let (n, got) = timeout(LIMIT, received)
        .await
        .expect("in time")
        .expect("sink");
    assert_eq!((n, got), (total, sum));
    let stats = a.stats();
    assert!(
        stats.retransmits_suppressed > 0,
        "go-back-N retransmissions of SACKed data must be suppressed: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_is_probed_for_instead_of_waiting_for_the_timeout() {
    // Drop the first transmission of the last data segments (those just before the FIN):
    // no later segment makes the peer send duplicate ACKs, so only a timeout, or a probe,
    // can repair them.
    let total = 300_000usize;
    let mut isn = None;
    let mut dropped_seqs = std::collections::HashSet::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let (a, b) = pair_with(1420, move |packet: Vec<u8>| {
        let tcp = 20; // IPv4 without options, as the stack sends.
        let flags = packet[tcp + 13];
        let seq = u32::from_be_bytes([
            packet[tcp + 4],
            packet[tcp + 5],
            packet[tcp + 6],
            packet[tcp + 7],
        ]);
        if flags & 0x02 != 0 {
            isn = Some(seq);
        }
        let payload = packet.len() - tcp - usize::from(packet[tcp + 12] >> 4) * 4;
        let offset = isn.map_or(0, |isn| seq.wrapping_sub(isn).wrapping_sub(1) as usize);
        let in_tail = payload > 0 && offset + payload > total - 4000 && offset < total;
        let drop = in_tail && dropped_seqs.insert(seq);
        if drop {
            d.fetch_add(1, Ordering::Relaxed);
        }
        Hooked {
            to_b: (!drop).then_some(packet),
            to_a: None,
        }
    });
    let received = sink(&b, 9000);
    let sum = timeout(LIMIT, send_all(&a, SocketAddr::new(B4, 9000), total))
        .await
        .expect("in time");
    let (n, got) = timeout(LIMIT, received)
        .await
        .expect("in time")
        .expect("sink");
    assert_eq!((n, got), (total, sum));
    assert!(dropped.load(Ordering::Relaxed) > 0, "the tail was dropped");
    let stats = a.stats();
    assert!(stats.tail_loss_probes > 0, "{stats:?}");
}
