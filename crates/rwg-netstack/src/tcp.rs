//! TCP through the stack: [`TcpStream`] (tokio `AsyncRead` + `AsyncWrite`) and [`TcpListener`].

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stack::{CongestionControl, ListenerState, NetStack, Shared};

pub(crate) fn to_std(endpoint: IpEndpoint) -> SocketAddr {
    SocketAddr::new(endpoint.addr.into(), endpoint.port)
}

/// The smallest send window of the adaptive congestion control.
const MIN_WINDOW: usize = 64 * 1024;

/// The step by which the window grows per window's worth of acknowledged data once it has
/// met a loss: about one full segment through a 1420-byte tunnel.
const GROWTH_STEP: usize = 1380;

/// The state of [`CongestionControl::Adaptive`](crate::CongestionControl) for one stream.
///
/// Until the first loss the window grows by half of what is acknowledged (1.5× per round
/// trip). A loss cuts it to 7/10 and remembers that size as the threshold; at or above the
/// threshold it grows by [`GROWTH_STEP`] per window acknowledged, about one segment per
/// round trip (RFC 5681 §3.1's congestion avoidance with byte counting, RFC 3465), so that
/// it approaches the size that lost again slowly instead of overshooting it within a few
/// round trips: the standing queue at the peer, and the drops when its socket buffer
/// overflows, stay small.
#[derive(Debug, Default)]
struct SendWindow {
    /// Bytes allowed unacknowledged; 0 until the first write (then [`MIN_WINDOW`]).
    window: usize,
    /// Bytes put into the socket so far, and of those, acknowledged.
    written: u64,
    acked: u64,
    /// Loss episodes already reacted to.
    episodes: u64,
    /// The window after the last loss (0: no loss yet).
    threshold: usize,
    /// Bytes acknowledged towards the next [`GROWTH_STEP`] above the threshold.
    credit: usize,
}

impl SendWindow {
    /// How many more bytes may be written now, given the socket's send queue, its buffer
    /// size, and the connection's loss state.
    fn room(&mut self, queued: usize, capacity: usize, loss: (u64, bool)) -> usize {
        let floor = MIN_WINDOW.min(capacity);
        if self.window == 0 {
            self.window = floor;
        }
        let acked_total = self.written.saturating_sub(queued as u64);
        if acked_total > self.acked {
            let newly = (acked_total - self.acked) as usize;
            self.acked = acked_total;
            self.grow(newly, capacity);
        }
        let (episodes, repairing) = loss;
        if episodes != self.episodes {
            self.episodes = episodes;
            self.window = (self.window * 7 / 10).max(floor);
            self.threshold = self.window;
            self.credit = 0;
        }
        if repairing {
            return 0;
        }
        self.window.saturating_sub(queued)
    }

    fn grow(&mut self, newly: usize, capacity: usize) {
        if self.threshold == 0 || self.window < self.threshold {
            self.window += newly / 2;
        } else {
            self.credit += newly;
            while self.credit >= self.window {
                self.credit -= self.window;
                self.window += GROWTH_STEP;
            }
        }
        self.window = self.window.min(capacity);
    }
}

/// A TCP connection through the tunnel.
///
/// Reads wait for data and writes wait for send-buffer space (back-pressure, no unbounded
/// buffering). `shutdown` sends FIN after the buffered data. Dropping the stream closes it
/// gracefully in the background, or resets it if received data was left unread.
pub struct TcpStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    /// The send window of [`CongestionControl::Adaptive`](crate::CongestionControl).
    window: SendWindow,
    /// The ephemeral port this stream owns (connected streams); accepted streams share their
    /// listener's port.
    owned_port: Option<u16>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn io_error(kind: io::ErrorKind, message: &str) -> io::Error {
    io::Error::new(kind, message.to_owned())
}

impl TcpStream {
    /// Open a connection to `addr` inside the tunnel from an ephemeral local port.
    ///
    /// Fails with `ConnectionRefused` when the peer answers with a reset, `AddrNotAvailable`
    /// when the stack has no address of that family, `TimedOut` after
    /// [`StackConfig::connect_timeout`](crate::StackConfig::connect_timeout).
    pub async fn connect(stack: &NetStack, addr: SocketAddr) -> io::Result<TcpStream> {
        let shared = stack.shared.clone();
        shared.check_running()?;
        if !shared.can_reach(addr.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no local address of the family of {addr}"),
            ));
        }
        let (handle, port) = {
            let mut inner = shared.lock();
            let port = inner.tcp_ports.take(0)?;
            let mut socket = inner.new_tcp_socket(&shared.config);
            let remote = IpEndpoint::from(addr);
            let cx = inner.iface.context();
            if let Err(e) = socket.connect(cx, remote, port) {
                inner.tcp_ports.release(port);
                let kind = match e {
                    tcp::ConnectError::Unaddressable => io::ErrorKind::AddrNotAvailable,
                    tcp::ConnectError::InvalidState => io::ErrorKind::InvalidInput,
                };
                return Err(io::Error::new(
                    kind,
                    format!("cannot connect to {addr}: {e}"),
                ));
            }
            (inner.sockets.add(socket), port)
        };
        shared.wake_driver();
        // From here on the stream owns the socket, so an error or a cancelled connect drops
        // it and cleans up.
        let mut stream = TcpStream {
            shared,
            handle,
            window: SendWindow::default(),
            owned_port: Some(port),
            local: SocketAddr::new(addr.ip(), port),
            peer: addr,
        };
        let limit = stream.shared.config.connect_timeout;
        match tokio::time::timeout(limit, poll_fn(|cx| stream.poll_connected(cx))).await {
            Ok(result) => result.map(|()| stream),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )),
        }
    }

    fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        let mut inner = self.shared.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            // A SYN-SENT socket only closes on a reset (or a timeout, which we do not set).
            tcp::State::Closed => Poll::Ready(Err(io_error(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
            _ => {
                if let Some(local) = socket.local_endpoint() {
                    self.local = to_std(local);
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The local address of the connection (our tunnel address and port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Enable or disable Nagle's algorithm (enabled by default, as in smoltcp).
    pub fn set_nodelay(&self, nodelay: bool) {
        let mut inner = self.shared.lock();
        inner
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .set_nagle_enabled(!nodelay);
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        let mut inner = self.shared.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.recv_slice(buf.initialize_unfilled()) {
            Ok(0) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                buf.advance(n);
                drop(inner);
                // The receive window opened: let the driver announce it.
                self.shared.wake_driver();
                Poll::Ready(Ok(()))
            }
            Err(tcp::RecvError::Finished) => Poll::Ready(Ok(())),
            Err(tcp::RecvError::InvalidState) => Poll::Ready(Err(io_error(
                io::ErrorKind::ConnectionReset,
                "connection reset",
            ))),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        let this = &mut *self;
        let mut inner = this.shared.lock();
        let adaptive = this.shared.config.congestion_control == CongestionControl::Adaptive;
        let room = if adaptive {
            let key = (
                this.local.ip(),
                this.local.port(),
                this.peer.ip(),
                this.peer.port(),
            );
            let loss = inner.device.segments.recovery.loss_state(&key);
            let socket = inner.sockets.get_mut::<tcp::Socket>(this.handle);
            this.window
                .room(socket.send_queue(), socket.send_capacity(), loss)
        } else {
            usize::MAX
        };
        let socket = inner.sockets.get_mut::<tcp::Socket>(this.handle);
        if !socket.may_send() {
            let kind = if socket.state() == tcp::State::Closed {
                io::ErrorKind::ConnectionReset
            } else {
                io::ErrorKind::BrokenPipe
            };
            return Poll::Ready(Err(io_error(kind, "connection closed for sending")));
        }
        if room == 0 {
            // An acknowledgement (which frees buffer space) wakes us.
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        match socket.send_slice(&data[..data.len().min(room)]) {
            Ok(0) => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                drop(inner);
                this.window.written += n as u64;
                this.shared.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(tcp::SendError::InvalidState) => Poll::Ready(Err(io_error(
                io::ErrorKind::BrokenPipe,
                "connection closed for sending",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Like tokio's TcpStream: written bytes are already in the socket's send buffer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut inner = self.shared.lock();
            inner.sockets.get_mut::<tcp::Socket>(self.handle).close();
        }
        self.shared.wake_driver();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.orphan_tcp(self.handle, self.owned_port);
        }
        self.shared.wake_driver();
    }
}

/// A TCP port listening inside the tunnel, for peers that connect in.
///
/// Connections are established by the stack before `accept` is called, up to
/// [`StackConfig::tcp_backlog`](crate::StackConfig::tcp_backlog) of them; further SYNs are
/// dropped (the peer retries) rather than refused.
pub struct TcpListener {
    shared: Arc<Shared>,
    port: u16,
    /// One acceptor at a time: the listener's sockets each hold a single waker.
    accepting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// How many listening sockets a new listener starts with; more are added as SYNs arrive.
const INITIAL_LISTEN_SOCKETS: usize = 4;

impl TcpListener {
    /// Listen on `port` (every address of the stack, IPv4 and IPv6); `0` picks an ephemeral
    /// port. Fails with `AddrInUse` when the port is taken by a listener or a connection.
    pub fn bind(stack: &NetStack, port: u16) -> io::Result<TcpListener> {
        let shared = stack.shared.clone();
        shared.check_running()?;
        {
            let mut inner = shared.lock();
            let port = inner.tcp_ports.take(port)?;
            let mut backlog = Vec::new();
            for _ in 0..INITIAL_LISTEN_SOCKETS.min(shared.config.tcp_backlog.max(1)) {
                let mut socket = inner.new_tcp_socket(&shared.config);
                socket
                    .listen(IpListenEndpoint { addr: None, port })
                    .map_err(|e| io::Error::other(format!("cannot listen on {port}: {e}")))?;
                backlog.push(inner.sockets.add(socket));
            }
            inner.listeners.insert(
                port,
                ListenerState {
                    backlog,
                    acceptor: None,
                },
            );
            drop(inner);
            Ok(TcpListener {
                shared: shared.clone(),
                port,
                accepting: tokio::sync::Mutex::new(()),
            })
        }
    }

    /// The port listened on.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Wait for a connection and return it with the peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let _one_at_a_time = self.accepting.lock().await;
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        if let Err(e) = self.shared.check_running() {
            return Poll::Ready(Err(e));
        }
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let Some(listener) = inner.listeners.get_mut(&self.port) else {
            return Poll::Ready(Err(io_error(
                io::ErrorKind::NotConnected,
                "listener closed",
            )));
        };
        if !listener
            .acceptor
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            listener.acceptor = Some(cx.waker().clone());
        }
        let mut ready = None;
        for (i, handle) in listener.backlog.iter().enumerate() {
            let socket = inner.sockets.get_mut::<tcp::Socket>(*handle);
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => {
                    socket.register_recv_waker(cx.waker());
                }
                tcp::State::Closed => {
                    // Reset or timed out before we got to it: listen again.
                    socket.register_recv_waker(cx.waker());
                    let _ = socket.listen(IpListenEndpoint {
                        addr: None,
                        port: self.port,
                    });
                }
                _ => {
                    if let (Some(local), Some(remote)) =
                        (socket.local_endpoint(), socket.remote_endpoint())
                    {
                        ready = Some((i, to_std(local), to_std(remote)));
                        break;
                    }
                }
            }
        }
        let Some((i, local, peer)) = ready else {
            return Poll::Pending;
        };
        let handle = listener.backlog.swap_remove(i);
        drop(guard);
        self.shared.wake_driver();
        Poll::Ready(Ok((
            TcpStream {
                shared: self.shared.clone(),
                handle,
                window: SendWindow::default(),
                owned_port: None,
                local,
                peer,
            },
            peer,
        )))
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            if let Some(listener) = inner.listeners.remove(&self.port) {
                for handle in listener.backlog {
                    let socket = inner.sockets.get_mut::<tcp::Socket>(handle);
                    // Connections nobody accepted are reset, as Linux does.
                    socket.abort();
                    inner.orphan_tcp(handle, None);
                }
            }
            inner.tcp_ports.release(self.port);
        }
        self.shared.wake_driver();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 512 * 1024;

    #[test]
    fn the_window_starts_at_the_floor_and_grows_by_half_of_what_is_acked() {
        let mut w = SendWindow::default();
        assert_eq!(w.room(0, CAP, (0, false)), MIN_WINDOW);
        w.written = MIN_WINDOW as u64;
        // Nothing acknowledged yet: no room.
        assert_eq!(w.room(MIN_WINDOW, CAP, (0, false)), 0);
        // 20 000 bytes acknowledged: the window grows by 10 000.
        let queued = MIN_WINDOW - 20_000;
        assert_eq!(
            w.room(queued, CAP, (0, false)),
            MIN_WINDOW + 10_000 - queued
        );
        assert_eq!(w.window, MIN_WINDOW + 10_000);
        // Never above the send buffer.
        w.written += 10_000_000;
        let _ = w.room(0, CAP, (0, false));
        assert_eq!(w.window, CAP);
    }

    #[test]
    fn each_loss_episode_shrinks_the_window_once_and_repair_stops_new_data() {
        let mut w = SendWindow {
            window: 400_000,
            ..SendWindow::default()
        };
        assert_eq!(w.room(0, CAP, (1, true)), 0, "nothing new while repairing");
        assert_eq!(w.window, 280_000);
        // The same episode again: no second cut.
        assert_eq!(w.room(0, CAP, (1, false)), 280_000);
        // A new one: cut again, but never below the floor.
        for episode in 2..20 {
            let _ = w.room(0, CAP, (episode, false));
        }
        assert_eq!(w.window, MIN_WINDOW);
        // A send buffer smaller than the floor is the limit.
        let mut small = SendWindow::default();
        assert_eq!(small.room(0, 16_384, (0, false)), 16_384);
    }

    #[test]
    fn after_a_loss_the_window_grows_by_one_step_per_window_acknowledged() {
        let mut w = SendWindow::default();
        let _ = w.room(0, CAP, (0, false));
        w.window = 200_000;
        // A loss: cut to 140 000, which becomes the threshold.
        assert_eq!(w.room(0, CAP, (1, false)), 140_000);
        assert_eq!(w.threshold, 140_000);
        // Half a window acknowledged: no growth yet.
        w.written += 70_000;
        let _ = w.room(0, CAP, (1, false));
        assert_eq!(w.window, 140_000);
        // The other half: one step.
        w.written += 70_000;
        let _ = w.room(0, CAP, (1, false));
        assert_eq!(w.window, 140_000 + GROWTH_STEP);
        // Ten windows' worth in one acknowledgement: a little under ten steps, never the
        // half of it that growth before the first loss would add.
        w.written += 10 * 141_380;
        let _ = w.room(0, CAP, (1, false));
        assert!(
            (140_000 + 9 * GROWTH_STEP..=140_000 + 10 * GROWTH_STEP).contains(&w.window),
            "{}",
            w.window
        );
        // A window cut below the threshold by the floor grows fast again up to it.
        let mut w = SendWindow {
            window: MIN_WINDOW,
            threshold: 2 * MIN_WINDOW,
            ..SendWindow::default()
        };
        w.written = 40_000;
        let _ = w.room(0, CAP, (0, false));
        assert_eq!(w.window, MIN_WINDOW + 20_000);
    }
}
