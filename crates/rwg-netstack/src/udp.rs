//! UDP through the stack: [`UdpSocket`] with `send_to` and `recv_from`.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use crate::stack::{NetStack, Shared};
use crate::tcp::to_std;

/// Packets each UDP socket buffers per direction, whatever their size.
const UDP_PACKET_SLOTS: usize = 256;

/// A UDP socket inside the tunnel, bound to a port on all of the stack's addresses.
///
/// One task may wait in `recv_from` and another in `send_to` at the same time; two tasks
/// both receiving on one socket are not supported (only the last one is woken).
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    port: u16,
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl UdpSocket {
    /// Bind `port` (`0` for an ephemeral one). Fails with `AddrInUse` when taken.
    pub fn bind(stack: &NetStack, port: u16) -> io::Result<UdpSocket> {
        let shared = stack.shared.clone();
        shared.check_running()?;
        let size = shared.config.udp_buffer_size;
        let handle = {
            let mut inner = shared.lock();
            let port = inner.udp_ports.take(port)?;
            let rx = udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKET_SLOTS],
                vec![0; size],
            );
            let tx = udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKET_SLOTS],
                vec![0; size],
            );
            let mut socket = udp::Socket::new(rx, tx);
            if let Err(e) = socket.bind(IpListenEndpoint { addr: None, port }) {
                inner.udp_ports.release(port);
                return Err(io::Error::other(format!(
                    "cannot bind UDP port {port}: {e}"
                )));
            }
            (inner.sockets.add(socket), port)
        };
        Ok(UdpSocket {
            shared,
            handle: handle.0,
            port: handle.1,
        })
    }

    /// The bound port.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// The largest payload `send_to` accepts.
    pub fn max_payload(&self) -> usize {
        let mut inner = self.shared.lock();
        inner
            .sockets
            .get_mut::<udp::Socket>(self.handle)
            .payload_send_capacity()
    }

    /// Send one datagram to `target`; waits while the send buffer is full.
    pub async fn send_to(&self, data: &[u8], target: SocketAddr) -> io::Result<usize> {
        poll_fn(|cx| self.poll_send_to(cx, data, target)).await
    }

    /// Poll form of [`send_to`](Self::send_to).
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        data: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        if !self.shared.can_reach(target.ip()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no local address of the family of {target}"),
            )));
        }
        let mut inner = self.shared.lock();
        let socket = inner.sockets.get_mut::<udp::Socket>(self.handle);
        if data.len() > socket.payload_send_capacity() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram of {} bytes is larger than the send buffer",
                    data.len()
                ),
            )));
        }
        match socket.send_slice(data, IpEndpoint::from(target)) {
            Ok(()) => {
                drop(inner);
                self.shared.wake_driver();
                Poll::Ready(Ok(data.len()))
            }
            Err(udp::SendError::BufferFull) => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Err(udp::SendError::Unaddressable) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("cannot send to {target}"),
            ))),
        }
    }

    /// Receive one datagram into `buf`; a datagram longer than `buf` is truncated. Returns
    /// the bytes copied and the sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Poll form of [`recv_from`](Self::recv_from).
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        let mut inner = self.shared.lock();
        let socket = inner.sockets.get_mut::<udp::Socket>(self.handle);
        match socket.recv() {
            Ok((payload, meta)) => {
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Poll::Ready(Ok((n, to_std(meta.endpoint))))
            }
            Err(udp::RecvError::Exhausted | udp::RecvError::Truncated) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        // Datagrams still queued for sending are discarded with the socket.
        inner.sockets.remove(self.handle);
        inner.udp_ports.release(self.port);
    }
}
