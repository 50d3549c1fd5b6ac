//! A userspace TCP/IP stack inside a WireGuard tunnel: TCP and UDP sockets with a tokio API,
//! for programs that cannot or should not create a TUN device; plus a SOCKS5 server
//! ([`socks5`]) and port forwards ([`forward`]) built on it.
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
//!   emits, from its driver task. It must not block; drop (and count) when full.
//!   [`ChannelTunnel`] is a ready implementation that copies packets into a bounded tokio
//!   channel.
//! - **In** (tunnel → stack): the glue calls [`NetStack::receive`] with each decrypted IP
//!   packet. It copies the packet into a bounded queue, wakes the driver and returns at once
//!   (`false` when dropped).
//!
//! So the glue can be a single task that owns the UDP socket and the `rwg_proto` device:
//!
//! ```text
//! let (tunnel, mut outgoing) = ChannelTunnel::new(1024);
//! let (stack, driver) = NetStack::new(StackConfig::new(addresses, mtu), tunnel)?;
//! tokio::spawn(driver);
//! loop {
//!     tokio::select! {
//!         Some(packet) = outgoing.recv() => {
//!             for datagram in device.handle_packet(now(), &packet) { udp.send_to(..).await; }
//!         }
//!         Ok((n, src)) = udp.recv_from(&mut buf) => {
//!             if let Some(ip) = device.handle_datagram(now(), src, &mut buf[..n]) {
//!                 stack.receive(ip);
//!             }
//!         }
//!         () = sleep_until(device.poll_timeout()) => device.handle_timeout(now()),
//!     }
//! }
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

pub mod dns;
pub mod forward;
pub mod socks5;
mod stack;
mod tcp;
mod tunnel;
mod udp;
pub mod wireguard;

pub use stack::{NetStack, StackConfig, StackStats};
pub use tcp::{TcpListener, TcpStream};
pub use tunnel::{ChannelTunnel, PacketTunnel};
pub use udp::UdpSocket;
pub use wireguard::{Tunnel, TunnelHandle, TunnelOptions, TunnelStats};
