//! The HTTP proxy, with real local sockets on the client side and the second stack as the
//! tunnel's far end.
//!
//! ```text
//!   tokio client --real TCP--> HttpProxy(stack A) ==tunnel==> stack B: origin :80, echo :7,
//!                                                               garbage :81, mute :82, DNS :53
//! ```

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{addr, dns_server, echo_tcp, pair, B4};
use rwg_netstack::dns::DnsResolver;
use rwg_netstack::http::{HttpProxy, HttpProxyConfig};
use rwg_netstack::metrics::{ProxyMetrics, Service};
use rwg_netstack::relay::ConnectionLimit;
use rwg_netstack::{NetStack, TcpListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

/// Read a request head (and a Content-Length body) from `s`.
async fn read_request(s: &mut rwg_netstack::TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.ok()?;
    got.extend_from_slice(&body);
    Some(got)
}

/// Origin servers on B: `:80` answers with the request it received as the body (and
/// hop-by-hop headers the proxy must drop); `:81` answers garbage; `:82` reads the request
/// and hangs up without answering.
fn origins(stack: &NetStack) {
    let listener = TcpListener::bind(stack, 80).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(request) = read_request(&mut s).await else {
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Origin: b\r\n\r\n",
                    request.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&request).await;
                // An origin told "Connection: close" closes; one that was not keeps the
                // connection, and the test would hang on it.
                if String::from_utf8_lossy(&request).contains("\r\nConnection: close\r\n") {
                    let _ = s.shutdown().await;
                } else {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    let garbage = TcpListener::bind(stack, 81).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let _ = read_request(&mut s).await;
            let _ = s.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    });
    let mute = TcpListener::bind(stack, 82).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = mute.accept().await {
            let _ = read_request(&mut s).await;
            drop(s);
        }
    });
}

async fn start_proxy(
    stack: &NetStack,
    config: HttpProxyConfig,
    limit: Option<ConnectionLimit>,
) -> (SocketAddr, Arc<ProxyMetrics>) {
    let resolver = Arc::new(
        DnsResolver::new(stack.clone(), addr(B4, 53)).with_timeout(Duration::from_millis(500), 2),
    );
    let metrics = ProxyMetrics::new();
    let mut proxy = HttpProxy::new(stack.clone(), resolver, config).with_metrics(metrics.clone());
    if let Some(limit) = limit {
        proxy = proxy.with_limit(limit);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move { proxy.serve(listener).await });
    (local, metrics)
}

/// Send `request` on a new connection and read until the proxy closes: status, head, body.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s).await
}

async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String, Vec<u8>) {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    split_response(&all)
}

fn split_response(all: &[u8]) -> (u16, String, Vec<u8>) {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, all[end..].to_vec())
}

/// Read a CONNECT reply head from `s`, byte by byte (the tunnel's data follows it).
async fn connect_reply(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_by_address_and_by_name() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    dns_server(&b, false, false);
    let (proxy, metrics) = start_proxy(&a, HttpProxyConfig::default(), None).await;
    timeout(LIMIT, async {
        for target in ["10.0.0.2:7", "echo.test:7", "[fd00::2]:7"] {
            let mut s = tokio::net::TcpStream::connect(proxy)
                .await
                .expect("connect");
            // Data sent right behind the head (as TLS clients do) must not be lost.
            let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly ");
            s.write_all(request.as_bytes()).await.expect("write");
            let head = connect_reply(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200 "), "{target}: {head}");
            s.write_all(b"bytes").await.expect("write");
            let mut back = [0u8; 11];
            s.read_exact(&mut back).await.expect("echo");
            assert_eq!(&back, b"early bytes", "{target}");
            s.shutdown().await.expect("shutdown");
            assert_eq!(s.read(&mut [0u8; 1]).await.expect("eof"), 0);
        }
    })
    .await
    .expect("in time");
    assert_eq!(metrics.http(200), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_are_forwarded_in_origin_form() {
    let (a, b) = pair();
    origins(&b);
    dns_server(&b, false, false);
    let (proxy, _) = start_proxy(&a, HttpProxyConfig::default(), None).await;
    timeout(LIMIT, async {
        let (status, head, body) = exchange(
            proxy,
            b"GET http://origin.test/path?q=1 HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: t\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("\r\nX-Origin: b\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(!head.contains("X-Hop") && !head.contains("Keep-Alive"), "{head}");
        let seen = String::from_utf8_lossy(&body);
        assert!(seen.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nHost: origin.test\r\n"), "{seen}");
        assert!(seen.contains("\r\nUser-Agent: t\r\n"), "{seen}");
        assert!(seen.contains("\r\nConnection: close\r\n"), "{seen}");
        assert!(
            !seen.contains("Proxy-Connection") && !seen.contains("X-Private"),
            "{seen}"
        );

        // A body goes along; a missing Host is added from the URI.
        let (status, _, body) = exchange(
            proxy,
            b"POST http://10.0.0.2:80/upload HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status, 200);
        let seen = String::from_utf8_lossy(&body);
        assert!(seen.starts_with("POST /upload HTTP/1.0\r\n"), "{seen}");
        assert!(seen.contains("\r\nHost: 10.0.0.2:80\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_authentication() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    origins(&b);
    let config = HttpProxyConfig {
        credentials: Some(("alice".into(), "s3cret".into())),
        ..HttpProxyConfig::default()
    };
    let (proxy, metrics) = start_proxy(&a, config, None).await;
    timeout(LIMIT, async {
        // alice:s3cret and alice:wrong, base64.
        let good = "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n";
        let bad = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n";
        for credentials in ["", bad, "Proxy-Authorization: Bearer xyz\r\n"] {
            let request = format!("CONNECT 10.0.0.2:7 HTTP/1.1\r\n{credentials}\r\n");
            let (status, head, _) = exchange(proxy, request.as_bytes()).await;
            assert_eq!(status, 407, "{credentials}: {head}");
            assert!(
                head.contains("\r\nProxy-Authenticate: Basic realm=\"rwg\"\r\n"),
                "{head}"
            );
        }
        let request = format!("GET http://10.0.0.2/ HTTP/1.1\r\nHost: x\r\n{good}\r\n");
        let (status, _, body) = exchange(proxy, request.as_bytes()).await;
        assert_eq!(status, 200);
        // The credentials are for the proxy, not for the origin.
        assert!(!String::from_utf8_lossy(&body).contains("Proxy-Authorization"));
    })
    .await
    .expect("in time");
    assert_eq!(metrics.http(407), 3);
    assert_eq!(metrics.http(200), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_disturb_nothing() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    origins(&b);
    dns_server(&b, false, false);
    let config = HttpProxyConfig {
        max_head_bytes: 1024,
        head_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(700),
        ..HttpProxyConfig::default()
    };
    let (proxy, metrics) = start_proxy(&a, config, None).await;
    timeout(LIMIT, async {
        // A tunnel that must survive everything below.
        let mut survivor = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        survivor
            .write_all(b"CONNECT 10.0.0.2:7 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert!(connect_reply(&mut survivor).await.starts_with("HTTP/1.1 200"));

        let long_header = format!(
            "GET http://10.0.0.2/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2000)
        );
        let long_line = format!("GET http://10.0.0.2/{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        let cases: Vec<(&[u8], u16)> = vec![
            (b"hello\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET https://10.0.0.2/ HTTP/1.1\r\n\r\n", 400),
            (b"GET http://10.0.0.2/ HTTP/3\r\n\r\n", 505),
            (b"GET http://10.0.0.2/ HTTP/1.1\r\nBroken header\r\n\r\n", 400),
            (b"CONNECT 10.0.0.2 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT 10.0.0.2:0 HTTP/1.1\r\n\r\n", 400),
            (
                b"POST http://10.0.0.2/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (long_header.as_bytes(), 431),
            (long_line.as_bytes(), 414),
            // Nobody listens on port 9: refused, a bad gateway.
            (b"CONNECT 10.0.0.2:9 HTTP/1.1\r\n\r\n", 502),
            (b"CONNECT missing.test:7 HTTP/1.1\r\n\r\n", 502),
            // Nobody has 10.0.0.3: no answer at all, a gateway timeout.
            (b"CONNECT 10.0.0.3:7 HTTP/1.1\r\n\r\n", 504),
            // Upstream answers garbage, or nothing.
            (b"GET http://10.0.0.2:81/ HTTP/1.1\r\n\r\n", 502),
            (b"GET http://10.0.0.2:82/ HTTP/1.1\r\n\r\n", 502),
        ];
        for (request, want) in &cases {
            let (status, head, _) = exchange(proxy, request).await;
            assert_eq!(
                status,
                *want,
                "{}: {head}",
                String::from_utf8_lossy(&request[..request.len().min(60)])
            );
        }

        // A client that stops sending in the middle of its head: 408 once the time is up.
        let mut slow = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        slow.write_all(b"GET http://10.0.0.2/ HTTP/1.1\r\nHost:")
            .await
            .expect("write");
        assert_eq!(read_response(&mut slow).await.0, 408);
        // One that half-closes in the middle: 400.
        let mut cut = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        cut.write_all(b"GET http://10.0.0.2/ HTTP/1.1\r\nHo")
            .await
            .expect("write");
        cut.shutdown().await.expect("shutdown");
        assert_eq!(read_response(&mut cut).await.0, 400);
        // One that vanishes in the middle: nothing to answer, nothing left behind.
        let mut gone = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        gone.write_all(b"GET http://10.0.0.2/ HTT")
            .await
            .expect("write");
        drop(gone);

        survivor.write_all(b"still here").await.expect("write");
        let mut back = [0u8; 10];
        survivor.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"still here");
        let (status, _, _) = exchange(proxy, b"GET http://10.0.0.2/ HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        drop(survivor);
        // Every connection above ends: none is left open.
        while metrics.open_connections(Service::Http) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("in time");
    assert_eq!(metrics.http(400), 9);
    assert_eq!(metrics.http(502), 4);
    assert_eq!(metrics.http(504), 1);
    assert_eq!(metrics.http(431), 1);
    assert_eq!(metrics.http(414), 1);
    assert_eq!(metrics.http(408), 1);
    assert_eq!(metrics.http(505), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503() {
    let (a, b) = pair();
    echo_tcp(&b, 7);
    let limit = ConnectionLimit::new(2);
    let (proxy, metrics) = start_proxy(&a, HttpProxyConfig::default(), Some(limit.clone())).await;
    timeout(LIMIT, async {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(proxy)
                .await
                .expect("connect");
            s.write_all(b"CONNECT 10.0.0.2:7 HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            assert!(connect_reply(&mut s).await.starts_with("HTTP/1.1 200"));
            held.push(s);
        }
        assert_eq!(limit.in_use(), 2);
        let (status, _, _) = exchange(proxy, b"CONNECT 10.0.0.2:7 HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 503);
        drop(held);
        while limit.in_use() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut s = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        s.write_all(b"CONNECT 10.0.0.2:7 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert!(connect_reply(&mut s).await.starts_with("HTTP/1.1 200"));
    })
    .await
    .expect("in time");
    assert_eq!(metrics.http(503), 1);
    assert_eq!(metrics.refused(Service::Http), 1);
}

/// The idle timeout is about silence, not duration: a plain-HTTP response that takes longer
/// than the timeout but keeps moving arrives whole; one that goes silent after its head is cut
/// off after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_ends_silent_responses_not_long_ones() {
    const CHUNKS: usize = 12;
    const GAP: Duration = Duration::from_millis(150);
    let (a, b) = pair();
    // :83 trickles its body, a chunk every GAP (1.8 s in all); :84 sends its head and a first
    // chunk, then nothing while the connection stays open.
    let trickle = TcpListener::bind(&b, 83).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = trickle.accept().await {
            tokio::spawn(async move {
                let _ = read_request(&mut s).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    CHUNKS * 100
                );
                let _ = s.write_all(head.as_bytes()).await;
                for i in 0..CHUNKS {
                    tokio::time::sleep(GAP).await;
                    let _ = s.write_all(&[b'a' + i as u8; 100]).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let silent = TcpListener::bind(&b, 84).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            tokio::spawn(async move {
                let _ = read_request(&mut s).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst")
                    .await;
                std::future::pending::<()>().await;
            });
        }
    });
    let idle = Duration::from_millis(600);
    let config = HttpProxyConfig {
        idle_timeout: Some(idle),
        ..HttpProxyConfig::default()
    };
    let (proxy, _) = start_proxy(&a, config, None).await;
    timeout(LIMIT, async {
        let started = tokio::time::Instant::now();
        let (status, head, body) = exchange(
            proxy,
            b"GET http://10.0.0.2:83/ HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{head}");
        let want: Vec<u8> = (0..CHUNKS).flat_map(|i| [b'a' + i as u8; 100]).collect();
        assert_eq!(body, want, "the whole trickled body");
        assert!(
            started.elapsed() > idle * 2,
            "it lasted longer than the idle timeout"
        );

        let started = tokio::time::Instant::now();
        let (status, _, body) = exchange(
            proxy,
            b"GET http://10.0.0.2:84/ HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!((status, body.as_slice()), (200, &b"first"[..]));
        assert!(
            started.elapsed() >= idle,
            "closed only after the idle timeout"
        );
    })
    .await
    .expect("in time");
}
