//! TCP and UDP between two stacks connected back to back.

mod common;

use std::future::Future;
use std::io;
use std::time::Duration;

use common::{addr, pair, A4, A6, B4, B6};
use rwg_netstack::{NetStack, TcpListener, TcpStream, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// A bound on waiting for something that should happen: catches hangs, not slowness.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` on a current-thread runtime whose clock is paused: virtual time advances only
/// when every task is idle, straight to the next timer. So timer behaviour is observed
/// exactly, whatever the machine's load. A task that never goes idle would stop virtual time
/// for good; that fails the test after [`LIMIT`] of real time instead of hanging it.
fn run_in_paused_time(test: impl Future<Output = ()> + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let name = std::thread::current().name().unwrap_or("paused").to_owned();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(test);
        let _ = done.send(());
    });
    let thread = thread.expect("spawn the test thread");
    match finished.recv_timeout(LIMIT) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ends by sending or panicking"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("virtual time stopped: some task never went idle (a busy loop?)")
        }
    }
}

async fn echo_server(stack: &NetStack, port: u16) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(stack, port).expect("bind");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    })
}

async fn round_trip(stack: &NetStack, to: std::net::SocketAddr, message: &[u8]) {
    let mut s = TcpStream::connect(stack, to).await.expect("connect");
    s.write_all(message).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_both_ways_v4_and_v6() {
    let (a, b) = pair();
    let _sa = echo_server(&a, 7).await;
    let _sb = echo_server(&b, 7).await;
    timeout(LIMIT, async {
        round_trip(&a, addr(B4, 7), b"hello from a").await;
        round_trip(&b, addr(A4, 7), b"hello from b").await;
        round_trip(&a, addr(B6, 7), b"hello v6 from a").await;
        round_trip(&b, addr(A6, 7), b"hello v6 from b").await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_reports_peer_and_addresses() {
    let (a, b) = pair();
    let listener = TcpListener::bind(&b, 9000).expect("bind");
    assert_eq!(listener.local_port(), 9000);
    assert_eq!(
        TcpListener::bind(&b, 9000).expect_err("in use").kind(),
        io::ErrorKind::AddrInUse
    );
    let (client, accepted) = timeout(LIMIT, async {
        tokio::join!(TcpStream::connect(&a, addr(B4, 9000)), listener.accept())
    })
    .await
    .expect("in time");
    let client = client.expect("connect");
    let (server, peer) = accepted.expect("accept");
    assert_eq!(peer, client.local_addr());
    assert_eq!(server.local_addr(), addr(B4, 9000));
    assert_eq!(client.peer_addr(), addr(B4, 9000));
    assert_eq!(client.local_addr().ip(), A4);
    assert!(client.local_addr().port() >= 49152);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_verified() {
    let (a, b) = pair();
    let listener = TcpListener::bind(&b, 5001).expect("bind");
    const LEN: usize = 10 * 1024 * 1024;
    let pattern = |i: usize| (i.wrapping_mul(2654435761) >> 13) as u8;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = 0usize;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            for (k, byte) in buf[..n].iter().enumerate() {
                assert_eq!(*byte, pattern(got + k), "byte {}", got + k);
            }
            got += n;
        }
        s.write_all(&(got as u64).to_be_bytes())
            .await
            .expect("write count");
        s.shutdown().await.expect("fin");
        got
    });
    let received = timeout(Duration::from_secs(120), async {
        let mut c = TcpStream::connect(&a, addr(B4, 5001))
            .await
            .expect("connect");
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        for chunk in data.chunks(100_000) {
            c.write_all(chunk).await.expect("write");
        }
        c.shutdown().await.expect("shutdown");
        let mut count = [0u8; 8];
        c.read_exact(&mut count).await.expect("count");
        assert_eq!(c.read(&mut [0u8; 1]).await.expect("eof"), 0);
        u64::from_be_bytes(count) as usize
    })
    .await
    .expect("in time");
    assert_eq!(received, LEN);
    assert_eq!(server.await.expect("server"), LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections() {
    let (a, b) = pair();
    let _server = echo_server(&b, 80).await;
    timeout(Duration::from_secs(60), async {
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let message: Vec<u8> = (0..2000u32).map(|k| (k * 7 + i) as u8).collect();
                round_trip(&a, addr(if i % 2 == 0 { B4 } else { B6 }, 80), &message).await;
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    })
    .await
    .expect("in time");
}

/// Nobody listens: the peer's reset refuses the connection (a refusal that only came from
/// the connect timeout would be `TimedOut`, after 30 s, beyond [`LIMIT`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_reset() {
    let (a, _b) = pair();
    for target in [addr(B4, 4444), addr(B6, 4444)] {
        let err = timeout(LIMIT, TcpStream::connect(&a, target))
            .await
            .expect("refused before the limit")
            .expect_err("nobody listens");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_closes_it() {
    let (a, b) = pair();
    let listener = TcpListener::bind(&b, 6000).expect("bind");
    timeout(LIMIT, async {
        let (client, accepted) =
            tokio::join!(TcpStream::connect(&a, addr(B4, 6000)), listener.accept());
        let mut client = client.expect("connect");
        let (server, _) = accepted.expect("accept");
        client.write_all(b"last words").await.expect("write");
        drop(server);
        // The server dropped with unread data: that is a reset, so reads fail or see EOF.
        let mut buf = [0u8; 16];
        let r = client.read(&mut buf).await;
        assert!(
            matches!(r, Ok(0))
                || r.as_ref().map_err(|e| e.kind()) == Err(io::ErrorKind::ConnectionReset),
            "{r:?}"
        );

        // A clean drop (nothing unread) is a FIN: the peer reads EOF.
        let (client, accepted) =
            tokio::join!(TcpStream::connect(&a, addr(B4, 6000)), listener.accept());
        let client = client.expect("connect");
        let (mut server, _) = accepted.expect("accept");
        drop(client);
        assert_eq!(server.read(&mut buf).await.expect("eof"), 0);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_released() {
    let (a, b) = pair();
    let _server = echo_server(&b, 81).await;
    timeout(LIMIT, async {
        for _ in 0..20 {
            round_trip(&a, addr(B4, 81), b"x").await;
        }
    })
    .await
    .expect("in time");
    let u = UdpSocket::bind(&a, 53).expect("bind");
    assert_eq!(
        UdpSocket::bind(&a, 53).expect_err("in use").kind(),
        io::ErrorKind::AddrInUse
    );
    drop(u);
    UdpSocket::bind(&a, 53).expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trip_v4_and_v6() {
    let (a, b) = pair();
    let server = UdpSocket::bind(&b, 5353).expect("bind");
    let client = UdpSocket::bind(&a, 0).expect("bind");
    assert!(client.local_port() >= 49152);
    timeout(LIMIT, async {
        for target in [addr(B4, 5353), addr(B6, 5353)] {
            client.send_to(b"ping", target).await.expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], b"ping");
            assert_eq!(from.port(), client.local_port());
            assert_eq!(from.ip(), if target.is_ipv4() { A4 } else { A6 });
            server.send_to(b"pong", from).await.expect("reply");
            let (n, from) = client.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], b"pong");
            assert_eq!(from, target);
        }
        // Truncation to the caller's buffer.
        client
            .send_to(&[7u8; 100], addr(B4, 5353))
            .await
            .expect("send");
        let mut small = [0u8; 10];
        let (n, _) = server.recv_from(&mut small).await.expect("recv");
        assert_eq!(n, 10);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_rejects_oversized_and_garbage() {
    let (a, b) = pair();
    assert!(!a.receive(&[]));
    assert!(!a.receive(&vec![0x45; 5000]));
    assert!(a.receive(&[0xff; 60]));
    assert!(a.receive(&[0x45; 20]));
    assert!(a.receive(&[0x60; 48]));
    // Counted by receive itself, before the driver sees anything.
    let stats = a.stats();
    assert_eq!(stats.receive_dropped, 2);
    assert_eq!(stats.received, 3);
    // The garbage queued ahead of it does not stop real traffic.
    let _server = echo_server(&a, 7).await;
    timeout(LIMIT, round_trip(&b, addr(A4, 7), b"after garbage"))
        .await
        .expect("in time");
}

/// An idle driver sleeps until woken: while virtual time runs on for an hour with nothing to
/// do, it does not poll at all (a driver on a fixed tick would poll thousands of times, a
/// busy one would stop virtual time). It wakes for input, and ends with the stack.
#[test]
fn idle_driver_sleeps_and_ends_with_the_stack() {
    run_in_paused_time(async {
        let (tunnel, _outgoing) = rwg_netstack::ChannelTunnel::new(16);
        let config = rwg_netstack::StackConfig::new(vec![(A4, 24)], 1420);
        let (stack, driver) = NetStack::new(config, tunnel).expect("stack");
        let driver = tokio::spawn(driver);
        let listener = TcpListener::bind(&stack, 80).expect("bind");
        let udp = UdpSocket::bind(&stack, 53).expect("bind");
        // Returns once every task is idle: the driver has handled what binding woke it for.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let settled = stack.stats().polls;
        assert!(settled >= 1, "the driver never polled");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(stack.stats().polls, settled, "the idle driver polled");
        // Input wakes it.
        assert!(stack.receive(&[0x45; 20]));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            stack.stats().polls > settled,
            "input did not wake the driver"
        );
        drop((listener, udp, stack));
        // Virtual time: if the driver kept waiting, the runtime would jump 2 s ahead and fail.
        timeout(Duration::from_secs(2), driver)
            .await
            .expect("driver ends")
            .expect("no panic");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused() {
    let (tunnel, _outgoing) = rwg_netstack::ChannelTunnel::new(16);
    let config = rwg_netstack::StackConfig::new(vec![(A6, 64)], 1000);
    assert_eq!(
        NetStack::new(config, tunnel).err().map(|e| e.kind()),
        Some(io::ErrorKind::InvalidInput)
    );
    let (tunnel, _outgoing) = rwg_netstack::ChannelTunnel::new(16);
    let config = rwg_netstack::StackConfig::new(vec![(A4, 33)], 1420);
    assert_eq!(
        NetStack::new(config, tunnel).err().map(|e| e.kind()),
        Some(io::ErrorKind::InvalidInput)
    );
    // A stack with only IPv4 cannot reach IPv6.
    let (tunnel, _outgoing) = rwg_netstack::ChannelTunnel::new(16);
    let (stack, driver) =
        NetStack::new(rwg_netstack::StackConfig::new(vec![(A4, 24)], 1420), tunnel).expect("stack");
    tokio::spawn(driver);
    let err = TcpStream::connect(&stack, addr(B6, 80))
        .await
        .expect_err("no v6");
    assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_unicast_addresses_are_refused() {
    for bad in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1"] {
        let (tunnel, _outgoing) = rwg_netstack::ChannelTunnel::new(16);
        let config = rwg_netstack::StackConfig::new(vec![(bad.parse().expect("ip"), 24)], 1420);
        let err = NetStack::new(config, tunnel).err().expect(bad);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

/// `connect_timeout` is honoured, neither early nor late, measured in virtual time (which the
/// machine's load cannot stretch).
#[test]
fn connect_to_a_silent_address_times_out() {
    run_in_paused_time(async {
        let (tunnel, mut outgoing) = rwg_netstack::ChannelTunnel::new(64);
        let mut config = rwg_netstack::StackConfig::new(vec![(A4, 24)], 1420);
        config.connect_timeout = Duration::from_secs(7);
        let (stack, driver) = NetStack::new(config, tunnel).expect("stack");
        tokio::spawn(driver);
        let started = tokio::time::Instant::now();
        let err = TcpStream::connect(&stack, addr(B4, 80))
            .await
            .expect_err("nobody answers");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_millis(7010),
            "gave up after {waited:?} of virtual time"
        );
        // It did try: SYNs went into the tunnel.
        let mut syns = 0;
        while outgoing.try_recv().is_ok() {
            syns += 1;
        }
        assert!(syns >= 2, "{syns} packets sent");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_packets_do_not_hurt() {
    let (a, b) = pair();
    let _server = echo_server(&b, 80).await;
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..5000 {
        let len = (next() % 120) as usize;
        let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make many of them look like IPv4/IPv6 TCP to reach deeper parsing.
        if let Some(first) = packet.first_mut() {
            *first = if i % 2 == 0 {
                0x45
            } else {
                0x60 | (*first & 0x0f)
            };
        }
        if packet.len() > 9 && i % 4 == 0 {
            packet[9] = 6;
        }
        b.receive(&packet);
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    timeout(LIMIT, round_trip(&a, addr(B4, 80), b"still works"))
        .await
        .expect("in time");
}
