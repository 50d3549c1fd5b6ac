//! Two stacks wired back to back through in-memory tunnels.
//!
//! ```text
//!   A: 10.0.0.1, fd00::1  --ChannelTunnel-->  pump  --receive-->  B: 10.0.0.2, fd00::2
//!                          <--receive-- pump <--ChannelTunnel--
//! ```
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rwg_netstack::{ChannelTunnel, NetStack, StackConfig};

pub const A4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
pub const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
pub const A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
pub const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));

pub fn addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn stack(v4: IpAddr, v6: IpAddr) -> (NetStack, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let (tunnel, outgoing) = ChannelTunnel::new(4096);
    let (stack, driver) =
        NetStack::new(StackConfig::new(vec![(v4, 24), (v6, 64)], 1420), tunnel).expect("stack");
    tokio::spawn(driver);
    (stack, outgoing)
}

fn pump(mut from: tokio::sync::mpsc::Receiver<Vec<u8>>, to: NetStack) {
    tokio::spawn(async move {
        while let Some(packet) = from.recv().await {
            to.receive(&packet);
        }
    });
}

/// Must be called inside a tokio runtime.
pub fn pair() -> (NetStack, NetStack) {
    let (a, a_out) = stack(A4, A6);
    let (b, b_out) = stack(B4, B6);
    pump(a_out, b.clone());
    pump(b_out, a.clone());
    (a, b)
}

/// A TCP echo server on `port` of `stack`.
pub fn echo_tcp(stack: &NetStack, port: u16) {
    use tokio::io::AsyncWriteExt;
    let listener = rwg_netstack::TcpListener::bind(stack, port).expect("bind");
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

/// The answer of a tiny DNS server to `query`: every A query gets B4, every AAAA gets B6,
/// except `missing.test` (NXDOMAIN). With `truncate`, no answer and the TC bit instead.
pub fn dns_answer(query: &[u8], truncate: bool) -> Vec<u8> {
    let n = query.len();
    let qtype = u16::from_be_bytes([query[n - 4], query[n - 3]]);
    let mut r = query.to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    if truncate {
        r[2] |= 0x02;
    } else if query[12..].starts_with(b"\x07missing\x04test") {
        r[3] |= 3;
    } else {
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
        match qtype {
            1 => {
                r.extend_from_slice(&[0, 4]);
                r.extend_from_slice(&[10, 0, 0, 2]);
            }
            _ => {
                r.extend_from_slice(&[0, 16]);
                r.extend_from_slice(
                    &"fd00::2"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("ip")
                        .octets(),
                );
            }
        }
    }
    r
}

/// A DNS server on port 53 of `stack` (UDP, and TCP when `tcp`), answering with
/// [`dns_answer`]; UDP answers are truncated when `truncate_udp`.
pub fn dns_server(stack: &NetStack, truncate_udp: bool, tcp: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = rwg_netstack::UdpSocket::bind(stack, 53).expect("bind");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket
                .send_to(&dns_answer(&buf[..n], truncate_udp), from)
                .await;
        }
    });
    if !tcp {
        return;
    }
    let listener = rwg_netstack::TcpListener::bind(stack, 53).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Several length-prefixed queries may come on one connection.
                loop {
                    let Ok(len) = s.read_u16().await else { return };
                    let mut query = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let answer = dns_answer(&query, false);
                    let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&answer);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// What a [`pair_with`] hook does with a packet from A to B.
pub struct Hooked {
    /// Delivered to B (or dropped if `None`).
    pub to_b: Option<Vec<u8>>,
    /// Delivered to A (an ICMP error, say).
    pub to_a: Option<Vec<u8>>,
}

/// Like [`pair`], with `mtu` for both stacks and every packet from A to B passed through
/// `hook` first. Must be called inside a tokio runtime.
pub fn pair_with(
    mtu: usize,
    mut hook: impl FnMut(Vec<u8>) -> Hooked + Send + 'static,
) -> (NetStack, NetStack) {
    let make = |v4, v6| {
        let (tunnel, outgoing) = ChannelTunnel::new(4096);
        let (stack, driver) =
            NetStack::new(StackConfig::new(vec![(v4, 24), (v6, 64)], mtu), tunnel).expect("stack");
        tokio::spawn(driver);
        (stack, outgoing)
    };
    let (a, mut a_out) = make(A4, A6);
    let (b, b_out) = make(B4, B6);
    let (a2, b2) = (a.clone(), b.clone());
    tokio::spawn(async move {
        while let Some(packet) = a_out.recv().await {
            let h = hook(packet);
            if let Some(p) = h.to_b {
                b2.receive(&p);
            }
            if let Some(p) = h.to_a {
                a2.receive(&p);
            }
        }
    });
    pump(b_out, a.clone());
    (a, b)
}
