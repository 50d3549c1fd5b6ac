#![forbid(unsafe_code)]
//! A userspace TCP/IP stack inside a WireGuard tunnel: TCP and UDP sockets with a tokio API,
//! for programs that cannot or should not create a TUN device; plus, built on it, a SOCKS5
//! server ([`socks5`]), an HTTP proxy ([`http`]), port forwards ([`forward`]), a stdio
//! tunnel ([`stdio`]), their bounds ([`relay`]: connection cap, idle timeout) and metrics
//! ([`metrics`]).
//!
//! # Data flow
//!
//! ```text
//!   TcpStream / TcpListener / UdpSocket          (user tasks; lock, copy, register waker)
//!                 |  ^
//!                 v  |
//!   smoltcp Interface + SocketSet  <-- driver task: poll, sleep until poll_delay or woken
//!                 |  ^
//!   PacketTunnel::send(ip packet)  |  NetStack::receive(ip packet)
//!                 v  |
//!   WireGuard glue: rwg_proto device (encrypt / decrypt) + UDP socket
//! ```
//!
//! # The boundary to the WireGuard side
//!
//! - **Out** (stack → tunnel): the stack calls [`PacketTunnel::send`] with each IP packet it
//!   emits, from its driver task, and [`PacketTunnel::flush`] at the end of each turn (a tunnel
//!   may batch until then). It must not block; drop (and count) when full.
//!   [`ChannelTunnel`] is a ready implementation that copies packets into a bounded tokio
//!   channel.
//! - **In** (tunnel → stack): the glue calls [`NetStack::receive`] with each decrypted IP
//!   packet. It copies the packet into a bounded queue, wakes the driver and returns at once
//!   (`false` when dropped).
//!
//! So the glue can be a single task that owns the UDP socket and the `rwg_proto` device, with
//! `rwg_driver` running its control path (handshakes, timers). [`Tunnel::start`] is such a
//! glue, ready made; written out, the shape is:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use rwg_driver::{Clock, Driver, Transmitter};
//! use rwg_netstack::{ChannelTunnel, NetStack, StackConfig};
//! use rwg_proto::device::{Device, Received, Sent, Transmit, HEADROOM};
//!
//! /// The control path's datagrams go out of the UDP socket.
//! struct Udp<'a>(&'a std::net::UdpSocket);
//! impl Transmitter for Udp<'_> {
//!     fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) -> usize {
//!         t.datagrams(datagrams)
//!             .filter(|d| self.0.send_to(d, t.destination).is_ok())
//!             .map(<[u8]>::len)
//!             .sum()
//!     }
//! }
//!
//! # async fn glue() -> Result<(), Box<dyn std::error::Error>> {
//! let socket = std::net::UdpSocket::bind("0.0.0.0:51820")?;
//! socket.set_nonblocking(true)?;
//! let udp = tokio::net::UdpSocket::from_std(socket.try_clone()?)?;
//! let device = Arc::new(Device::new(Box::new(rand_core::OsRng)));
//! // ... set_private_key, add_peer, set_endpoint, add_allowed_ip ...
//! let woken = Arc::new(tokio::sync::Notify::new());
//! let w = woken.clone();
//! device.set_waker(Some(Arc::new(move || w.notify_one())));
//!
//! let (tunnel, mut outgoing) = ChannelTunnel::new(1024);
//! let config = StackConfig::new(vec![("10.0.0.2".parse()?, 32)], 1420);
//! let (stack, stack_driver) = NetStack::new(config, tunnel)?;
//! tokio::spawn(stack_driver);
//!
//! let mut control = Driver::new(device.clone(), Clock::new());
//! let clock = control.clock();
//! let mut buf = vec![0u8; 65536];
//! loop {
//!     // Queued handshakes, due timers, and what they produced, sent; then the next deadline.
//!     let deadline = control.turn(&mut Udp(&socket));
//!     let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
//!     tokio::select! {
//!         Some(packet) = outgoing.recv() => {
//!             buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
//!             let sent = device.data_path().encapsulate(clock.now(), &mut buf, packet.len());
//!             if let Sent::Transmit { destination, len } = sent {
//!                 socket.send_to(&buf[..len], destination)?;
//!             }
//!         }
//!         Ok((n, source)) = udp.recv_from(&mut buf) => {
//!             let received = device.data_path().decapsulate(clock.now(), source, &mut buf[..n]);
//!             if let Received::Packet { len, .. } = received {
//!                 stack.receive(&buf[HEADROOM..HEADROOM + len]);
//!             }
//!         }
//!         () = woken.notified() => {}
//!         () = tokio::time::sleep_until(deadline.unwrap_or(far).into()) => {}
//!     }
//! }
//! # }
//! ```
//!
//! # Example
//!
//! ```no_run
//! use std::net::{Ipv4Addr, SocketAddr};
//!
//! use rwg_netstack::{ChannelTunnel, NetStack, StackConfig, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn example() -> std::io::Result<()> {
//! let (tunnel, mut outgoing) = ChannelTunnel::new(1024);
//! let config = StackConfig::new(vec![(Ipv4Addr::new(10, 0, 0, 2).into(), 32)], 1420);
//! let (stack, driver) = NetStack::new(config, tunnel)?;
//! tokio::spawn(driver);
//! // Hand `outgoing` packets to WireGuard, and decrypted packets to `stack.receive(..)`.
//! # tokio::spawn(async move { while outgoing.recv().await.is_some() {} });
//!
//! let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 80));
//! let mut stream = TcpStream::connect(&stack, server).await?;
//! stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
//! let mut response = Vec::new();
//! stream.read_to_end(&mut response).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The driver
//!
//! [`NetStack::new`] returns a future that must be spawned. It polls the smoltcp interface,
//! which wakes the tasks of sockets whose state changed (smoltcp's per-socket wakers), then
//! sleeps until smoltcp's next deadline (`poll_delay`), a received packet, or a socket
//! operation that has something to send. It never busy-loops; it ends when the stack and all
//! its sockets are dropped.

#![warn(missing_docs)]

pub mod datagram;
pub mod dns;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod relay;
mod segments;
pub mod socks5;
mod stack;
pub mod stdio;
mod tcp;
mod tunnel;
mod udp;
pub mod wireguard;

pub use datagram::{DatagramIo, Incoming, PlainIo};
pub use stack::{CongestionControl, NetStack, StackConfig, StackStats};
pub use tcp::{TcpListener, TcpStream};
pub use tunnel::{ChannelTunnel, PacketTunnel};
pub use udp::UdpSocket;
pub use wireguard::{
    EndpointResolver, Reresolve, SystemResolver, Tunnel, TunnelHandle, TunnelOptions, TunnelStats,
};
