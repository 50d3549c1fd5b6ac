//! Two WireGuard-backed stacks over loopback UDP, configured from wg-quick text: a real
//! handshake, TCP both ways and UDP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rwg_config::key::encode_key;
use rwg_config::Config;
use rwg_netstack::{
    DatagramIo, Incoming, NetStack, PlainIo, TcpListener, TcpStream, Tunnel, TunnelHandle,
    TunnelOptions, UdpSocket,
};
use rwg_proto::crypto::PrivateKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loopback() -> TunnelOptions {
    TunnelOptions {
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        ..TunnelOptions::default()
    }
}

/// Two tunnels over loopback: B (10.9.0.2, allowing 10.9.0.1) and A (10.9.0.1, B as its
/// endpoint for 10.9.0.0/24, started with `options_a`). `b_peer` is added to B's [Peer],
/// `a_interface` and `a_peer` to A's sections. Returns (A, B).
async fn tunnel_pair(
    b_peer: &str,
    a_interface: &str,
    a_peer: &str,
    options_a: TunnelOptions,
) -> ((NetStack, TunnelHandle), (NetStack, TunnelHandle)) {
    let key_a = PrivateKey::generate(&mut rand_core::OsRng);
    let key_b = PrivateKey::generate(&mut rand_core::OsRng);
    let conf_b = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.2/24\n[Peer]\nPublicKey = {}\n{b_peer}AllowedIPs = 10.9.0.1/32\n",
        encode_key(key_b.as_bytes()),
        encode_key(key_a.public_key().as_bytes()),
    );
    let conf_b = Config::parse("b.conf", &conf_b).expect("config b");
    let b = Tunnel::start_with(&conf_b, loopback())
        .await
        .expect("start b");
    let conf_a = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.1/24\n{a_interface}[Peer]\nPublicKey = {}\n{a_peer}Endpoint = {}\nAllowedIPs = 10.9.0.0/24\n",
        encode_key(key_a.as_bytes()),
        encode_key(key_b.public_key().as_bytes()),
        b.1.local_addr(),
    );
    let conf_a = Config::parse("a.conf", &conf_a).expect("config a");
    let a = Tunnel::start_with(&conf_a, options_a)
        .await
        .expect("start a");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_talk_tcp_and_udp() {
    let psk = encode_key(&[7u8; 32]);
    let ((stack_a, tunnel_a), (stack_b, tunnel_b)) = tunnel_pair(
        &format!("PresharedKey = {psk}\n"),
        "MTU = 1380\n",
        &format!("PresharedKey = {psk}\nPersistentKeepalive = 25\n"),
        loopback(),
    )
    .await;
    // The persistent keepalive starts the handshake by itself.
    tokio::time::timeout(Duration::from_secs(10), tunnel_a.handshake_completed())
        .await
        .expect("handshake");

    // The first datagrams of a fresh socket must go out (not wait for a retransmit).
    assert_eq!(tunnel_a.stats().tx_errors, 0, "{:?}", tunnel_a.stats());
    let listener = TcpListener::bind(&stack_b, 7000).expect("listen");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).await.expect("read");
        buf.reverse();
        s.write_all(&buf).await.expect("write");
    });
    let mut c = TcpStream::connect(&stack_a, "10.9.0.2:7000".parse().expect("addr"))
        .await
        .expect("connect");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    c.write_all(&data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).await.expect("read back");
    back.reverse();
    assert_eq!(back, data);
    server.await.expect("server");

    let ub = UdpSocket::bind(&stack_b, 5353).expect("bind b");
    let ua = UdpSocket::bind(&stack_a, 0).expect("bind a");
    let to: SocketAddr = "10.9.0.2:5353".parse().expect("addr");
    ua.send_to(b"ping", to).await.expect("send");
    let mut buf = [0u8; 16];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), ub.recv_from(&mut buf))
        .await
        .expect("udp in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(
        from.ip(),
        "10.9.0.1".parse::<std::net::IpAddr>().expect("ip")
    );

    let (a, b) = (tunnel_a.stats(), tunnel_b.stats());
    assert!(a.tx_datagrams > 0 && b.rx_datagrams > 0, "{a:?} {b:?}");
    assert_eq!(a.datagrams_dropped + b.datagrams_dropped, 0, "{a:?} {b:?}");
    assert_eq!(tunnel_a.device().peers().len(), 1);
    tunnel_a.stop();
    tunnel_b.stop();
}

/// A [`DatagramIo`] that moves datagrams the plain way and records how many each send call
/// carried.
#[derive(Default)]
struct Recording {
    sends: Mutex<Vec<usize>>,
}

impl DatagramIo for Recording {
    fn send(
        &self,
        socket: &std::net::UdpSocket,
        datagrams: &[(&[u8], SocketAddr)],
        sent: &mut [bool],
    ) {
        self.sends.lock().expect("lock").push(datagrams.len());
        PlainIo.send(socket, datagrams, sent);
    }

    fn recv(
        &self,
        socket: &std::net::UdpSocket,
        buf: &mut [u8],
        stride: usize,
        out: &mut [Incoming],
    ) -> std::io::Result<usize> {
        PlainIo.recv(socket, buf, stride, out)
    }
}

/// What one driver turn sends leaves as one batch (one flush), and every datagram of every
/// batch arrives: the receiver counts exactly what the sender's socket took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_sends_its_datagrams_as_one_batch_and_all_arrive() {
    let recording = Arc::new(Recording::default());
    let options = TunnelOptions {
        datagram_io: recording.clone(),
        ..loopback()
    };
    let ((stack_a, tunnel_a), (stack_b, tunnel_b)) = tunnel_pair("", "", "", options).await;

    let listener = TcpListener::bind(&stack_b, 7001).expect("listen");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        got
    });
    let mut c = TcpStream::connect(&stack_a, "10.9.0.2:7001".parse().expect("addr"))
        .await
        .expect("connect");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    c.write_all(&data).await.expect("write");
    c.shutdown().await.expect("shutdown");
    let got = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("transfer in time")
        .expect("server");
    assert!(got == data, "the stream arrived changed");

    let sends = recording.sends.lock().expect("lock").clone();
    let batched: usize = sends.iter().sum();
    assert!(
        sends.iter().any(|&n| n > 1),
        "none of {} sends carried more than one datagram",
        sends.len()
    );
    // Bulk data went through the batches (the control path sends the few others itself).
    assert!(batched > 1000, "{batched}");
    assert_eq!(tunnel_a.stats().tx_errors, 0, "{:?}", tunnel_a.stats());
    // Every datagram handed to the socket is counted as sent (the count follows the send
    // call: wait for it), and every datagram A's socket took reaches B (loopback, buffers far
    // larger than a window). A's counters are read before B's, so B having at least as many
    // means all of them arrived.
    let arrived = async {
        loop {
            let (a, b) = (tunnel_a.stats(), tunnel_b.stats());
            if a.tx_datagrams as usize >= batched && b.rx_datagrams >= a.tx_datagrams {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let b = tokio::time::timeout(Duration::from_secs(5), arrived)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{batched} batched; A sent, B received: {:?} {:?}",
                tunnel_a.stats(),
                tunnel_b.stats()
            )
        });
    assert_eq!(b.datagrams_dropped, 0, "{b:?}");
    tunnel_a.stop();
    tunnel_b.stop();
}

#[tokio::test]
async fn a_config_without_address_is_refused() {
    let key = PrivateKey::generate(&mut rand_core::OsRng);
    let text = format!("[Interface]\nPrivateKey = {}\n", encode_key(key.as_bytes()));
    let config = Config::parse("x.conf", &text).expect("config");
    let err = Tunnel::start(&config).await.expect_err("no address");
    assert!(err.to_string().contains("Address"), "{err}");
}

/// A TCP server on `port` of `stack` that answers every connection with `name` and closes.
fn name_server(stack: &rwg_netstack::NetStack, port: u16, name: &'static str) {
    let listener = TcpListener::bind(stack, port).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
}

async fn ask(stack: &rwg_netstack::NetStack, to: &str) -> String {
    let mut s = TcpStream::connect(stack, to.parse().expect("addr"))
        .await
        .expect("connect");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    answer
}

/// A peer tunnel (B or C) whose only peer is A at 10.9.0.1.
async fn peer(
    key: &PrivateKey,
    address: &str,
    a: &PrivateKey,
) -> (rwg_netstack::NetStack, rwg_netstack::TunnelHandle) {
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = {address}/32\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.9.0.1/32\n",
        encode_key(key.as_bytes()),
        encode_key(a.public_key().as_bytes()),
    );
    let config = Config::parse("peer.conf", &text).expect("config");
    Tunnel::start_with(&config, loopback())
        .await
        .expect("start peer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_are_routed_by_their_allowed_ips() {
    use rwg_netstack::metrics::Readiness;

    let (ka, kb, kc) = (
        PrivateKey::generate(&mut rand_core::OsRng),
        PrivateKey::generate(&mut rand_core::OsRng),
        PrivateKey::generate(&mut rand_core::OsRng),
    );
    let (stack_b, tunnel_b) = peer(&kb, "10.9.1.2", &ka).await;
    let (stack_c, tunnel_c) = peer(&kc, "10.9.2.2", &ka).await;
    name_server(&stack_b, 7, "B");
    name_server(&stack_c, 7, "C");
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.1/32\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 10.9.1.0/24\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 10.9.2.0/24, fd09:2::/64\n",
        encode_key(ka.as_bytes()),
        encode_key(kb.public_key().as_bytes()),
        tunnel_b.local_addr(),
        encode_key(kc.public_key().as_bytes()),
        tunnel_c.local_addr(),
    );
    let config = Config::parse("a.conf", &text).expect("config a");
    let (stack_a, tunnel_a) = Tunnel::start_with(&config, loopback())
        .await
        .expect("start a");
    assert_eq!(tunnel_a.device().peers().len(), 2);
    let ready = Readiness::new(tunnel_a.clone(), Duration::from_secs(180));
    let (is_ready, why) = ready.check();
    assert!(!is_ready, "{why}");

    tokio::time::timeout(Duration::from_secs(20), async {
        assert_eq!(ask(&stack_a, "10.9.1.2:7").await, "B");
        // One peer is not enough for readiness.
        let (is_ready, why) = ready.check();
        assert!(!is_ready && why.contains("no handshake"), "{why}");
        assert_eq!(ask(&stack_a, "10.9.2.2:7").await, "C");
        assert_eq!(ask(&stack_a, "10.9.1.2:7").await, "B");
    })
    .await
    .expect("in time");
    let (is_ready, why) = ready.check();
    assert!(is_ready, "{why}");
    for key in [kb.public_key(), kc.public_key()] {
        assert!(tunnel_a.since_handshake(&key).is_some());
    }
    // Each peer saw only its own traffic.
    let (b, c) = (tunnel_b.stats(), tunnel_c.stats());
    assert!(b.handshakes == 1 && c.handshakes == 1, "{b:?} {c:?}");
    for t in [&tunnel_a, &tunnel_b, &tunnel_c] {
        t.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_by_probe() {
    use rwg_netstack::metrics::Readiness;

    let (ka, kb) = (
        PrivateKey::generate(&mut rand_core::OsRng),
        PrivateKey::generate(&mut rand_core::OsRng),
    );
    let (stack_b, tunnel_b) = peer(&kb, "10.9.1.2", &ka).await;
    name_server(&stack_b, 7, "B");
    // A second configured peer that does not exist: handshakes alone never make A ready.
    let ghost = PrivateKey::generate(&mut rand_core::OsRng).public_key();
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.1/32\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 10.9.1.0/24\n\
         [Peer]\nPublicKey = {}\nEndpoint = 127.0.0.1:9\nAllowedIPs = 10.9.3.0/24\n",
        encode_key(ka.as_bytes()),
        encode_key(kb.public_key().as_bytes()),
        tunnel_b.local_addr(),
        encode_key(ghost.as_bytes()),
    );
    let config = Config::parse("a.conf", &text).expect("config a");
    let (stack_a, tunnel_a) = Tunnel::start_with(&config, loopback())
        .await
        .expect("start a");
    let by_handshake = Readiness::new(tunnel_a.clone(), Duration::from_secs(180));
    let by_probe = Readiness::new(tunnel_a.clone(), Duration::from_secs(180)).with_probe(
        &stack_a,
        "10.9.1.2:7".parse().expect("addr"),
        Duration::from_millis(200),
    );
    let unreachable = Readiness::new(tunnel_a.clone(), Duration::from_secs(180)).with_probe(
        &stack_a,
        "10.9.3.2:7".parse().expect("addr"),
        Duration::from_millis(200),
    );
    tokio::time::timeout(Duration::from_secs(20), async {
        while !by_probe.check().0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the probe makes it ready");
    let (ready, why) = by_handshake.check();
    assert!(!ready, "{why}");
    let (ready, why) = unreachable.check();
    assert!(!ready, "{why}");
    tunnel_a.stop();
    tunnel_b.stop();
}

/// Resolves every name to whatever address the test says.
struct MovableName(std::sync::Mutex<SocketAddr>);

impl rwg_netstack::EndpointResolver for MovableName {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        let addr = *self.0.lock().expect("lock");
        Box::pin(async move { Ok(vec![addr]) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_found_again_at_the_new_address_of_its_name() {
    let (ka, kb) = (
        PrivateKey::generate(&mut rand_core::OsRng),
        PrivateKey::generate(&mut rand_core::OsRng),
    );
    let (stack_b1, tunnel_b1) = peer(&kb, "10.9.1.2", &ka).await;
    name_server(&stack_b1, 7, "first");
    let names = std::sync::Arc::new(MovableName(std::sync::Mutex::new(tunnel_b1.local_addr())));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.1/32\n\
         [Peer]\nPublicKey = {}\nEndpoint = peer.test:51820\nAllowedIPs = 10.9.1.0/24\n",
        encode_key(ka.as_bytes()),
        encode_key(kb.public_key().as_bytes()),
    );
    let config = Config::parse("a.conf", &text).expect("config a");
    let options = TunnelOptions {
        endpoint_resolver: names.clone(),
        reresolve: Some(rwg_netstack::Reresolve {
            after_silence: Duration::from_secs(1),
            check_every: Duration::from_millis(200),
        }),
        ..loopback()
    };
    let (stack_a, tunnel_a) = Tunnel::start_with(&config, options).await.expect("start a");
    let kb_pub = kb.public_key();
    assert_eq!(
        tunnel_a.device().peer(&kb_pub).and_then(|p| p.endpoint),
        Some(tunnel_b1.local_addr())
    );
    tokio::time::timeout(Duration::from_secs(20), async {
        assert_eq!(ask(&stack_a, "10.9.1.2:7").await, "first");
    })
    .await
    .expect("in time");

    // The peer moves: the old one goes away, the same key comes up elsewhere, the name
    // follows it.
    tunnel_b1.stop();
    drop(stack_b1);
    let (stack_b2, tunnel_b2) = peer(&kb, "10.9.1.2", &ka).await;
    name_server(&stack_b2, 7, "second");
    *names.0.lock().expect("lock") = tunnel_b2.local_addr();
    tokio::time::timeout(Duration::from_secs(30), async {
        // Silent for a second, then re-resolved, then a handshake with the new address.
        while tunnel_b2.stats().handshakes == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ask(&stack_a, "10.9.1.2:7").await, "second");
    })
    .await
    .expect("the peer is found at its new address");
    assert_eq!(
        tunnel_a.device().peer(&kb_pub).and_then(|p| p.endpoint),
        Some(tunnel_b2.local_addr())
    );
    // Asking again finds nothing new; a literal endpoint cannot be re-resolved.
    assert_eq!(tunnel_a.reresolve(&kb_pub).await.expect("resolves"), None);
    let e = tunnel_b2
        .reresolve(&ka.public_key())
        .await
        .expect_err("not a name");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    tunnel_a.stop();
    tunnel_b2.stop();
}
