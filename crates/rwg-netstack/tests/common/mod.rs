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
