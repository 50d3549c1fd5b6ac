//! Two WireGuard-backed stacks over loopback UDP, configured from wg-quick text: a real
//! handshake, TCP both ways and UDP.

use std::net::SocketAddr;
use std::time::Duration;

use rwg_config::key::encode_key;
use rwg_config::Config;
use rwg_netstack::{TcpListener, TcpStream, Tunnel, TunnelOptions, UdpSocket};
use rwg_proto::crypto::PrivateKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loopback() -> TunnelOptions {
    TunnelOptions {
        bind: Some("127.0.0.1:0".parse().expect("addr")),
        ..TunnelOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_talk_tcp_and_udp() {
    let key_a = PrivateKey::generate(&mut rand_core::OsRng);
    let key_b = PrivateKey::generate(&mut rand_core::OsRng);
    let psk = encode_key(&[7u8; 32]);
    let conf_b = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.2/24\n[Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = 10.9.0.1/32\n",
        encode_key(key_b.as_bytes()),
        encode_key(key_a.public_key().as_bytes()),
    );
    let conf_b = Config::parse("b.conf", &conf_b).expect("config b");
    let (stack_b, tunnel_b) = Tunnel::start_with(&conf_b, loopback())
        .await
        .expect("start b");
    let conf_a = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.9.0.1/24\nMTU = 1380\n[Peer]\nPublicKey = {}\nPresharedKey = {psk}\nEndpoint = {}\nAllowedIPs = 10.9.0.0/24\nPersistentKeepalive = 25\n",
        encode_key(key_a.as_bytes()),
        encode_key(key_b.public_key().as_bytes()),
        tunnel_b.local_addr(),
    );
    let conf_a = Config::parse("a.conf", &conf_a).expect("config a");
    let (stack_a, tunnel_a) = Tunnel::start_with(&conf_a, loopback())
        .await
        .expect("start a");
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

#[tokio::test]
async fn a_config_without_address_is_refused() {
    let key = PrivateKey::generate(&mut rand_core::OsRng);
    let text = format!("[Interface]\nPrivateKey = {}\n", encode_key(key.as_bytes()));
    let config = Config::parse("x.conf", &text).expect("config");
    let err = Tunnel::start(&config).await.expect_err("no address");
    assert!(err.to_string().contains("Address"), "{err}");
}
