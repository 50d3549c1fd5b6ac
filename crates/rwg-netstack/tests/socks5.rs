//! The SOCKS5 server and the forwards, with real local sockets on one side and the second
//! stack on the other.
//!
//! ```text
//!   tokio client --real TCP/UDP--> Socks5Server(stack A) ==tunnel==> stack B: echo, DNS
//! ```

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{addr, pair, B4, B6};
use rwg_netstack::dns::DnsResolver;
use rwg_netstack::forward::{ForwardSpec, Forwarder};
use rwg_netstack::socks5::{Socks5Config, Socks5Server};
use rwg_netstack::{NetStack, TcpListener, TcpStream, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn echo_tcp(stack: &NetStack, port: u16) {
    let listener = TcpListener::bind(stack, port).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

fn echo_udp(stack: &NetStack, port: u16) {
    let socket = UdpSocket::bind(stack, port).expect("bind");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
}

async fn start_socks(stack: &NetStack, credentials: Option<(&str, &str)>) -> SocketAddr {
    let resolver = Arc::new(DnsResolver::new(stack.clone(), addr(B4, 53)));
    let config = Socks5Config {
        credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ..Socks5Config::default()
    };
    let server = Socks5Server::new(stack.clone(), resolver, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(listener).await });
    local
}

/// Greeting (+ auth) and a request; returns the stream and the reply code.
async fn socks_request(
    proxy: SocketAddr,
    credentials: Option<(&str, &str)>,
    command: u8,
    target: &[u8],
) -> io::Result<(tokio::net::TcpStream, u8, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    let method = if credentials.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    assert_eq!(choice, [5, method]);
    if let Some((u, p)) = credentials {
        let mut auth = vec![1, u.len() as u8];
        auth.extend_from_slice(u.as_bytes());
        auth.push(p.len() as u8);
        auth.extend_from_slice(p.as_bytes());
        s.write_all(&auth).await?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await?;
        if status != [1, 0] {
            return Ok((s, 0xff, Vec::new()));
        }
    }
    let mut request = vec![5, command, 0];
    request.extend_from_slice(target);
    s.write_all(&request).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let addr_len = match head[3] {
        1 => 4,
        4 => 16,
        other => panic!("reply atyp {other}"),
    };
    let mut bound = vec![0u8; addr_len + 2];
    s.read_exact(&mut bound).await?;
    Ok((s, head[1], bound))
}

fn v4_target(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut t = vec![1];
    t.extend_from_slice(&ip);
    t.extend_from_slice(&port.to_be_bytes());
    t
}

fn domain_target(name: &str, port: u16) -> Vec<u8> {
    let mut t = vec![3, name.len() as u8];
    t.extend_from_slice(name.as_bytes());
    t.extend_from_slice(&port.to_be_bytes());
    t
}

async fn assert_echo(s: &mut tokio::net::TcpStream, message: &[u8]) {
    s.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).await.expect("read");
    assert_eq!(back, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_ip_and_by_name() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    common::dns_server(&b, false, false);
    let proxy = start_socks(&a, None).await;
    timeout(LIMIT, async {
        let (mut s, code, bound) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        assert_eq!(&bound[..4], &[10, 0, 0, 1]);
        assert_echo(&mut s, b"by ip").await;

        let (mut s, code, _) = socks_request(proxy, None, 1, &domain_target("echo.test", 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        assert_echo(&mut s, b"by name").await;

        let mut v6 = vec![4];
        v6.extend_from_slice(
            &"fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        v6.extend_from_slice(&7u16.to_be_bytes());
        let (mut s, code, bound) = socks_request(proxy, None, 1, &v6).await.expect("socks");
        assert_eq!(code, 0);
        assert_eq!(bound.len(), 18);
        assert_echo(&mut s, b"by v6").await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies() {
    let (a, b) = pair();
    common::dns_server(&b, false, false);
    let proxy = start_socks(&a, None).await;
    timeout(LIMIT, async {
        // Nobody listens: connection refused.
        let (_, code, _) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 9))
            .await
            .expect("socks");
        assert_eq!(code, 5);
        // The name does not exist: host unreachable.
        let (_, code, _) = socks_request(proxy, None, 1, &domain_target("missing.test", 7))
            .await
            .expect("socks");
        assert_eq!(code, 4);
        // BIND is not supported.
        let (_, code, _) = socks_request(proxy, None, 2, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 7);
        // Unknown address type.
        let (_, code, _) = socks_request(proxy, None, 1, &[9, 1, 2])
            .await
            .expect("socks");
        assert_eq!(code, 8);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    let proxy = start_socks(&a, Some(("alice", "s3cret"))).await;
    timeout(LIMIT, async {
        let (mut s, code, _) = socks_request(
            proxy,
            Some(("alice", "s3cret")),
            1,
            &v4_target([10, 0, 0, 2], 7),
        )
        .await
        .expect("socks");
        assert_eq!(code, 0);
        assert_echo(&mut s, b"authenticated").await;

        let (mut s, code, _) = socks_request(
            proxy,
            Some(("alice", "wrong")),
            1,
            &v4_target([10, 0, 0, 2], 7),
        )
        .await
        .expect("socks");
        assert_eq!(code, 0xff);
        assert_eq!(s.read(&mut [0u8; 1]).await.expect("closed"), 0);

        // A client offering only "no authentication" is told no method is acceptable.
        let mut s = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        s.write_all(&[5, 1, 0]).await.expect("write");
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply, [5, 0xff]);
        assert_eq!(s.read(&mut [0u8; 1]).await.expect("closed"), 0);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_client() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    let proxy = start_socks(&a, None).await;
    timeout(LIMIT, async {
        let (mut good, code, _) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[5, 0],
            &[5, 1, 0, 4, 1, 0, 0xff],
            &[0xff; 300],
        ] {
            let mut bad = tokio::net::TcpStream::connect(proxy)
                .await
                .expect("connect");
            bad.write_all(garbage).await.expect("write");
            let mut rest = Vec::new();
            // The server hangs up (possibly after a reply); it must not wait forever.
            let _ = timeout(Duration::from_secs(12), bad.read_to_end(&mut rest))
                .await
                .expect("closed");
        }
        assert_echo(&mut good, b"still alive").await;
        let (mut again, code, _) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        assert_echo(&mut again, b"new client").await;
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_round_trip() {
    let (a, b) = pair();
    echo_udp(&b, 7);
    common::dns_server(&b, false, false);
    let proxy = start_socks(&a, None).await;
    timeout(LIMIT, async {
        let (control, code, bound) = socks_request(proxy, None, 3, &v4_target([0, 0, 0, 0], 0))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        let relay = SocketAddr::new(
            std::net::IpAddr::from([bound[0], bound[1], bound[2], bound[3]]),
            u16::from_be_bytes([bound[4], bound[5]]),
        );
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut buf = [0u8; 2048];
        for (target, expect_from) in [
            (v4_target([10, 0, 0, 2], 7), vec![1, 10, 0, 0, 2, 0, 7]),
            (domain_target("echo.test", 7), vec![1, 10, 0, 0, 2, 0, 7]),
        ] {
            let mut datagram = vec![0, 0, 0];
            datagram.extend_from_slice(&target);
            datagram.extend_from_slice(b"datagram");
            client.send_to(&datagram, relay).await.expect("send");
            let (n, from) = client.recv_from(&mut buf).await.expect("recv");
            assert_eq!(from, relay);
            assert_eq!(&buf[..3], &[0, 0, 0]);
            assert_eq!(&buf[3..10], &expect_from[..]);
            assert_eq!(&buf[10..n], b"datagram");
        }
        // IPv6 inside the tunnel.
        let mut datagram = vec![0, 0, 0, 4];
        datagram.extend_from_slice(
            &"fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        datagram.extend_from_slice(&[0, 7]);
        datagram.extend_from_slice(b"six");
        client.send_to(&datagram, relay).await.expect("send");
        let (n, _) = client.recv_from(&mut buf).await.expect("recv");
        assert_eq!(buf[3], 4);
        assert_eq!(&buf[22..n], b"six");
        drop(control);
    })
    .await
    .expect("in time");
    let _ = B6;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_resolver_through_tunnel() {
    let (a, b) = pair();
    common::dns_server(&b, false, false);
    let resolver =
        DnsResolver::new(a.clone(), addr(B4, 53)).with_timeout(Duration::from_millis(500), 2);
    timeout(LIMIT, async {
        let all = resolver.resolve_host("echo.test").await.expect("resolves");
        assert_eq!(all, vec![B4, B6]);
        let e = resolver
            .resolve_host("missing.test")
            .await
            .expect_err("nxdomain");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            resolver.resolve_host("10.1.2.3").await.expect("literal"),
            vec!["10.1.2.3".parse::<std::net::IpAddr>().expect("ip")]
        );
        // No server there: times out after the attempts.
        let silent =
            DnsResolver::new(a.clone(), addr(B4, 54)).with_timeout(Duration::from_millis(100), 2);
        assert_eq!(
            silent
                .resolve_host("echo.test")
                .await
                .expect_err("silent")
                .kind(),
            io::ErrorKind::TimedOut
        );
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    echo_udp(&b, 7);
    timeout(LIMIT, async {
        // tcp: local real socket -> stack A -> B's echo.
        let spec: ForwardSpec = "tcp:127.0.0.1:0:10.0.0.2:7".parse().expect("spec");
        let f = Forwarder::bind(&a, spec).await.expect("bind");
        let local = f.local_addr().expect("addr");
        tokio::spawn(f.run());
        let mut s = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        assert_echo(&mut s, b"forwarded").await;

        // udp: local real socket -> stack A -> B's echo.
        let spec: ForwardSpec = "udp:127.0.0.1:0:[fd00::2]:7".parse().expect("spec");
        let f = Forwarder::bind(&a, spec).await.expect("bind");
        let local = f.local_addr().expect("addr");
        tokio::spawn(f.run());
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        client.send_to(b"udp forwarded", local).await.expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).await.expect("recv");
        assert_eq!((&buf[..n], from), (&b"udp forwarded"[..], local));

        // reverse tcp: B connects to A's tunnel port 8080 -> a real local echo server.
        let real = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let real_addr = real.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = real.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let spec: ForwardSpec = format!("reverse tcp:8080:{real_addr}")
            .parse()
            .expect("spec");
        let f = Forwarder::bind(&a, spec).await.expect("bind");
        assert_eq!(f.local_addr(), Some(addr(common::A4, 8080)));
        tokio::spawn(f.run());
        let mut s = TcpStream::connect(&b, addr(common::A4, 8080))
            .await
            .expect("connect");
        s.write_all(b"reverse").await.expect("write");
        let mut back = [0u8; 7];
        s.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"reverse");
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_answers_are_asked_again_over_tcp() {
    let (a, b) = pair();
    common::dns_server(&b, true, true);
    let resolver =
        DnsResolver::new(a.clone(), addr(B4, 53)).with_timeout(Duration::from_millis(500), 2);
    timeout(LIMIT, async {
        assert_eq!(
            resolver.resolve_host("echo.test").await.expect("resolves"),
            vec![B4, B6]
        );
        assert_eq!(
            resolver
                .resolve_host("missing.test")
                .await
                .expect_err("nxdomain")
                .kind(),
            io::ErrorKind::NotFound
        );
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_without_a_tcp_server_fail() {
    let (a, b) = pair();
    common::dns_server(&b, true, false);
    let resolver =
        DnsResolver::new(a.clone(), addr(B4, 53)).with_timeout(Duration::from_millis(500), 2);
    let e = timeout(LIMIT, resolver.resolve_host("echo.test"))
        .await
        .expect("in time")
        .expect_err("no TCP server");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_cap_are_closed_and_counted() {
    use rwg_netstack::metrics::{ProxyMetrics, Service, SocksResult};
    use rwg_netstack::relay::ConnectionLimit;
    use rwg_netstack::socks5::Reply;

    let (a, b) = pair();
    echo_tcp(&b, 7);
    let metrics = ProxyMetrics::new();
    let limit = ConnectionLimit::new(1);
    let server = Socks5Server::new(
        a.clone(),
        Arc::new(DnsResolver::new(a.clone(), addr(B4, 53))),
        Socks5Config::default(),
    )
    .with_limit(limit.clone())
    .with_metrics(metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = listener.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(listener).await });
    timeout(LIMIT, async {
        let (mut held, code, _) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        assert_echo(&mut held, b"first").await;
        assert_eq!(metrics.open_connections(Service::Socks5), 1);

        let mut over = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let _ = over.write_all(&[5, 1, 0]).await;
        let mut rest = Vec::new();
        let _ = over.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "closed without an answer: {rest:?}");
        assert_eq!(metrics.socks(SocksResult::OverLimit), 1);
        assert_eq!(metrics.refused(Service::Socks5), 1);

        drop(held);
        while limit.in_use() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut again, code, _) = socks_request(proxy, None, 1, &v4_target([10, 0, 0, 2], 7))
            .await
            .expect("socks");
        assert_eq!(code, 0);
        assert_echo(&mut again, b"second").await;
    })
    .await
    .expect("in time");
    assert_eq!(metrics.socks(SocksResult::Reply(Reply::Succeeded)), 2);
}
