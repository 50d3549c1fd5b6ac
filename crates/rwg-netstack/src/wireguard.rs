//! The WireGuard glue: a [`NetStack`] whose packets travel through a real UDP socket,
//! encrypted by an [`rwg_proto::Device`] configured from a wg-quick file.
//!
//! ```text
//!   NetStack driver --send(ip)--> WireGuardTunnel: data_path().encapsulate (encrypt in place)
//!                                   into the turn's batch
//!                   --flush()-->    DatagramIo::send(batch) --> UDP socket
//!   glue task: readable(UDP) --> DatagramIo::recv(many) --> data_path().decapsulate (decrypt in
//!              place, each datagram) --> NetStack::receive
//!              rwg_driver::Driver::turn: queued handshakes, due timers, queued datagrams
//!              --> UDP socket; sleeps until the deadline it returns or the device's waker
//! ```
//!
//! Outgoing packets are encrypted directly in [`PacketTunnel::send`], on the stack's driver
//! task, each into its slot of one reusable batch buffer: no channel, no allocation and no task
//! switch per packet. The stack calls [`PacketTunnel::flush`] at the end of every turn of its
//! driver (before it sleeps), and the batch goes to the socket through the tunnel's
//! [`DatagramIo`] in one call; a batch that fills up is sent at once. Incoming datagrams are
//! read by one task, many per call, into one reusable buffer and decrypted in place; the stack
//! copies each packet into its queue. How many system calls a batch costs is the
//! [`DatagramIo`]'s business: [`PlainIo`] (the default, every platform) makes one per
//! datagram; the rwg binary plugs in `sendmmsg`/UDP GSO and `recvmmsg`/UDP GRO on Linux.
//!
//! # Example
//!
//! ```no_run
//! use rwg_netstack::{Tunnel, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = rwg_config::Config::from_file("wg0.conf")?;
//! let (stack, tunnel) = Tunnel::start(&config).await?;
//! let mut stream = TcpStream::connect(&stack, "10.0.0.1:80".parse()?).await?;
//! stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
//! let mut page = Vec::new();
//! stream.read_to_end(&mut page).await?;
//! println!("{} bytes; {:?}", page.len(), tunnel.stats());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rwg_config::{Config, Endpoint};
use rwg_driver::reresolve::{choose, Choice};
use rwg_driver::{short_key, Clock, Driver, Transmitter};
use rwg_proto::crypto::PublicKey;
use rwg_proto::device::{Event, Received, Sent, Transmit, DEFAULT_MTU, HEADROOM, TAILROOM};
use rwg_proto::Device;
use tokio::io::Interest;
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use crate::datagram::{DatagramIo, Incoming, PlainIo};
use crate::stack::{CongestionControl, NetStack, StackConfig};
use crate::tunnel::PacketTunnel;

/// Bytes per received message: bigger than any transport message of a sane MTU, and than a
/// GRO run of them (at most 64 KiB).
const RECV_STRIDE: usize = 65536;
/// Messages asked for per receive call.
const RECV_MESSAGES: usize = 8;
/// Datagrams read per wake-up (at least; a call may bring more) before the task checks its
/// other duties.
const RECEIVE_BATCH: usize = 64;
/// Receive calls per wake-up, at most.
const RECEIVE_CALLS: usize = 8;
/// Datagrams an outgoing batch holds; a full batch is sent at once. 64 is also the most
/// datagrams one UDP GSO send carries.
const SEND_BATCH: usize = 64;
/// Kernel socket buffers asked for (the kernel may cap them).
const SOCKET_BUFFER: usize = 4 << 20;

/// Resolves the host names of peer endpoints (outside the tunnel).
pub trait EndpointResolver: Send + Sync + 'static {
    /// The addresses of `host` with `port`, preferred first.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system's resolver (`getaddrinfo` and the like, through the standard library), on a
/// blocking thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl EndpointResolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let host = host.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
            })
            .await
            .map_err(io::Error::other)?
        })
    }
}

/// When endpoints given as host names are resolved again: what `reresolve-dns.sh` does for
/// wg-quick users, built in. A peer whose last handshake is older than `after_silence` (or
/// that never completed one that long after the start) has its name resolved again, at
/// most once per `check_every`; if the name now points elsewhere, the endpoint moves there
/// and a handshake starts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reresolve {
    /// Silence after which a peer's name is resolved again. A tunnel in use rekeys every
    /// 2 minutes, so anything above that means the peer stopped answering.
    pub after_silence: Duration,
    /// How often silent peers are looked at (and so the most often a name is resolved).
    pub check_every: Duration,
}

impl Default for Reresolve {
    fn default() -> Self {
        Reresolve {
            after_silence: Duration::from_secs(135),
            check_every: Duration::from_secs(30),
        }
    }
}

/// Options for [`Tunnel::start_with`].
#[derive(Clone)]
pub struct TunnelOptions {
    /// The local UDP address to bind. Default: `0.0.0.0` (or `[::]` if every peer endpoint
    /// is IPv6) with the config's `ListenPort`, or any free port.
    pub bind: Option<SocketAddr>,
    /// Per-socket TCP receive buffer size of the stack; default: [`StackConfig::new`]'s.
    pub tcp_rx_buffer_size: Option<usize>,
    /// Per-socket TCP send buffer size of the stack; default: [`StackConfig::new`]'s.
    pub tcp_tx_buffer_size: Option<usize>,
    /// Congestion control of the stack's TCP senders; default: [`StackConfig::new`]'s.
    pub congestion_control: Option<CongestionControl>,
    /// Resolves endpoint host names, at the start and again when a peer goes silent;
    /// default: [`SystemResolver`].
    pub endpoint_resolver: Arc<dyn EndpointResolver>,
    /// When endpoint host names are resolved again; `None`: never (only at the start).
    /// Default: [`Reresolve::default`].
    pub reresolve: Option<Reresolve>,
    /// How datagrams move through the UDP socket; default: [`PlainIo`] (one system call per
    /// datagram).
    pub datagram_io: Arc<dyn DatagramIo>,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            bind: None,
            tcp_rx_buffer_size: None,
            tcp_tx_buffer_size: None,
            congestion_control: None,
            endpoint_resolver: Arc::new(SystemResolver),
            reresolve: Some(Reresolve::default()),
            datagram_io: Arc::new(PlainIo),
        }
    }
}

impl std::fmt::Debug for TunnelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelOptions")
            .field("bind", &self.bind)
            .field("tcp_rx_buffer_size", &self.tcp_rx_buffer_size)
            .field("tcp_tx_buffer_size", &self.tcp_tx_buffer_size)
            .field("congestion_control", &self.congestion_control)
            .field("reresolve", &self.reresolve)
            .finish_non_exhaustive()
    }
}

/// Counters of the glue's UDP traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Datagrams sent to peers (data, handshakes, keepalives).
    pub tx_datagrams: u64,
    /// Bytes of those datagrams (UDP payload).
    pub tx_bytes: u64,
    /// Datagrams received from the socket.
    pub rx_datagrams: u64,
    /// Bytes of those datagrams.
    pub rx_bytes: u64,
    /// Datagrams dropped because the socket's send buffer was full or sending failed.
    pub tx_errors: u64,
    /// IP packets the device refused to encrypt (no route, no endpoint, …).
    pub packets_dropped: u64,
    /// Datagrams the device refused (not authentic, replayed, malformed, …).
    pub datagrams_dropped: u64,
    /// Completed handshakes.
    pub handshakes: u64,
}

#[derive(Default)]
struct Counters {
    tx_datagrams: AtomicU64,
    tx_bytes: AtomicU64,
    rx_datagrams: AtomicU64,
    rx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    packets_dropped: AtomicU64,
    datagrams_dropped: AtomicU64,
}

/// State shared by the stack side ([`WireGuardTunnel`]) and the glue task.
struct Glue {
    device: Arc<Device>,
    /// Receives, in the glue task.
    socket: TokioUdpSocket,
    /// The same socket (a duplicated descriptor) for sending: a plain non-blocking
    /// `send_to`, because tokio's `try_send_to` refuses to even try until the reactor has
    /// seen the socket writable, which loses the first datagrams of a new socket. Batches go
    /// through `io` on it too, and so do receives (inside the tokio socket's `try_io`, which
    /// keeps the reactor's readiness right).
    sender: std::net::UdpSocket,
    io: Arc<dyn DatagramIo>,
    clock: Clock,
    counters: Counters,
    /// Wakes the glue task when the device has work for it (the device's waker).
    attention: Notify,
    /// When the tunnel started.
    started: std::time::Instant,
    /// When the last handshake with each peer completed.
    handshake_at: Mutex<HashMap<PublicKey, std::time::Instant>>,
    /// Peers whose endpoint was given as a host name: the name and port.
    hosts: Vec<(PublicKey, String, u16)>,
    resolver: Arc<dyn EndpointResolver>,
}

impl Glue {
    fn now(&self) -> rwg_proto::Instant {
        self.clock.now()
    }

    /// Sends one datagram; returns whether the socket took it.
    fn send(&self, datagram: &[u8], to: SocketAddr) -> bool {
        match self.sender.send_to(datagram, to) {
            Ok(_) => {
                self.counters.tx_datagrams.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add(datagram.len() as u64, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// What the control path sends goes out of the glue's socket, counted.
struct GlueOut<'a>(&'a Glue);

impl Transmitter for GlueOut<'_> {
    fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) -> usize {
        t.datagrams(datagrams)
            .filter(|d| self.0.send(d, t.destination))
            .map(<[u8]>::len)
            .sum()
    }
}

/// The datagrams sealed since the last flush, each in its slot of one buffer.
struct OutBatch {
    /// Slot `i` is `buf[i * stride..][..stride]`; its datagram starts at the slot's start.
    buf: Vec<u8>,
    stride: usize,
    /// Per datagram: its length, destination and peer.
    datagrams: Vec<(usize, SocketAddr, rwg_proto::device::PeerId)>,
    /// What the socket took, per datagram (reused between flushes).
    sent: Vec<bool>,
}

/// The [`PacketTunnel`] of a WireGuard-backed stack: encrypts each packet in place into the
/// current batch, which [`flush`](PacketTunnel::flush) sends. Created by [`Tunnel::start`];
/// public so that the stack's type can be named.
pub struct WireGuardTunnel {
    glue: Arc<Glue>,
    batch: Mutex<OutBatch>,
}

impl std::fmt::Debug for WireGuardTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuardTunnel").finish_non_exhaustive()
    }
}

impl WireGuardTunnel {
    fn new(glue: Arc<Glue>, mtu: usize) -> WireGuardTunnel {
        let stride = HEADROOM + mtu + TAILROOM;
        WireGuardTunnel {
            glue,
            batch: Mutex::new(OutBatch {
                buf: vec![0u8; stride * SEND_BATCH],
                stride,
                datagrams: Vec::with_capacity(SEND_BATCH),
                sent: Vec::with_capacity(SEND_BATCH),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutBatch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Send what `batch` holds and empty it; count what went and what the socket refused.
    fn send_batch(&self, batch: &mut OutBatch) {
        if batch.datagrams.is_empty() {
            return;
        }
        let glue = &self.glue;
        let OutBatch {
            buf,
            stride,
            datagrams,
            sent,
        } = batch;
        let list: Vec<(&[u8], SocketAddr)> = datagrams
            .iter()
            .enumerate()
            .map(|(i, &(len, to, _))| (&buf[i * *stride..i * *stride + len], to))
            .collect();
        sent.clear();
        sent.resize(list.len(), false);
        glue.io.send(&glue.sender, &list, sent);
        let c = &glue.counters;
        for (&(len, _, peer), &took) in datagrams.iter().zip(sent.iter()) {
            if took {
                c.tx_datagrams.fetch_add(1, Ordering::Relaxed);
                c.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            } else {
                // A datagram the socket refused is not counted as sent to the peer.
                c.tx_errors.fetch_add(1, Ordering::Relaxed);
                glue.device.report_unsent(peer, len as u64);
            }
        }
        datagrams.clear();
    }
}

impl PacketTunnel for WireGuardTunnel {
    fn send(&self, packet: &[u8]) {
        let glue = &self.glue;
        let mut batch = self.lock();
        let needed = HEADROOM + packet.len() + TAILROOM;
        if needed > batch.stride {
            // Larger than the MTU the slots were made for (not from this stack): bigger slots.
            self.send_batch(&mut batch);
            batch.stride = needed;
            batch.buf.resize(needed * SEND_BATCH, 0);
        }
        if batch.datagrams.len() >= SEND_BATCH {
            self.send_batch(&mut batch);
        }
        let (i, stride) = (batch.datagrams.len(), batch.stride);
        let slot = &mut batch.buf[i * stride..(i + 1) * stride];
        slot[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let job = glue
            .device
            .data_path()
            .prepare_send(glue.now(), packet, stride);
        match job {
            Ok(job) => {
                let Ok(len) = job.seal(slot, packet.len()) else {
                    return;
                };
                batch.datagrams.push((len, job.destination, job.peer()));
            }
            // The handshake it needs is the control path's: the device wakes the glue task.
            Err(Sent::Staged) => {}
            Err(_) => {
                glue.counters
                    .packets_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {
        let mut batch = self.lock();
        self.send_batch(&mut batch);
    }
}

/// Starts WireGuard-backed stacks. See the [module documentation](self).
#[derive(Debug)]
pub struct Tunnel;

/// The running glue of a [`Tunnel`]: counters, the device, and the task. Cheap to clone;
/// dropping it does not stop the tunnel; [`TunnelHandle::stop`] does.
#[derive(Clone)]
pub struct TunnelHandle {
    glue: Arc<Glue>,
    tasks: Vec<AbortHandle>,
    local_addr: SocketAddr,
    handshakes: watch::Receiver<u64>,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TunnelHandle {
    /// The local address of the UDP socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WireGuard device (for its public key, peers and counters).
    pub fn device(&self) -> &Arc<Device> {
        &self.glue.device
    }

    /// Traffic counters.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.glue.counters;
        TunnelStats {
            tx_datagrams: c.tx_datagrams.load(Ordering::Relaxed),
            tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
            rx_datagrams: c.rx_datagrams.load(Ordering::Relaxed),
            rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
            tx_errors: c.tx_errors.load(Ordering::Relaxed),
            packets_dropped: c.packets_dropped.load(Ordering::Relaxed),
            datagrams_dropped: c.datagrams_dropped.load(Ordering::Relaxed),
            handshakes: *self.handshakes.borrow(),
        }
    }

    /// Wait until at least one handshake has completed since the tunnel started (it starts
    /// with the first packet sent, or with a persistent keepalive).
    pub async fn handshake_completed(&self) {
        let mut rx = self.handshakes.clone();
        // Only fails when the task is gone, in which case no handshake will come.
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Stop the glue task (and the re-resolution task). The stack stays usable but its
    /// packets go nowhere.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// How long ago the last handshake with `peer` completed; `None` if none has.
    pub fn since_handshake(&self, peer: &PublicKey) -> Option<Duration> {
        self.glue.since_handshake(peer)
    }

    /// Resolve `peer`'s endpoint host name again now and, if it points elsewhere, move the
    /// endpoint there and start a handshake. Returns the new endpoint, or `None` if it did
    /// not change. Fails with `InvalidInput` for a peer whose endpoint was not a host name.
    pub async fn reresolve(&self, peer: &PublicKey) -> io::Result<Option<SocketAddr>> {
        self.glue.reresolve(peer).await
    }
}

impl Glue {
    fn since_handshake(&self, peer: &PublicKey) -> Option<Duration> {
        self.handshake_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .map(std::time::Instant::elapsed)
    }

    /// Whether `peer` has been silent longer than `limit`.
    fn silent(&self, peer: &PublicKey, limit: Duration) -> bool {
        self.since_handshake(peer)
            .unwrap_or_else(|| self.started.elapsed())
            > limit
    }

    async fn reresolve(&self, peer: &PublicKey) -> io::Result<Option<SocketAddr>> {
        let Some((_, host, port)) = self.hosts.iter().find(|(k, _, _)| k == peer) else {
            return Err(invalid(format!(
                "peer {}: its endpoint is not a host name",
                short_key(peer)
            )));
        };
        let local = self.sender.local_addr()?;
        let addresses = self.resolver.resolve(host, *port).await?;
        let current = self.device.peer(peer).and_then(|p| p.endpoint);
        // Only an address the socket can send to; the current one if the name still has it.
        let new = match choose(&addresses, current, |a| a.is_ipv4() == local.is_ipv4()) {
            Choice::Keep => return Ok(None),
            Choice::Move(new) => new,
            Choice::NoUsableAddress => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} has no address of the UDP socket's family"),
                ))
            }
        };
        let err =
            |e: rwg_proto::device::ConfigError| invalid(format!("peer {}: {e}", short_key(peer)));
        self.device.set_endpoint(peer, new).map_err(err)?;
        // If a handshake went out in the last 5 s this waits for its retry, which now goes
        // to the new address.
        let _ = self.device.initiate_handshake(self.now(), peer);
        tracing::info!(peer = %short_key(peer), %host, endpoint = %new, "endpoint re-resolved");
        Ok(Some(new))
    }
}

/// Resolve the names of silent peers again, per `policy`, while the glue lives.
async fn reresolve_loop(glue: std::sync::Weak<Glue>, policy: Reresolve) {
    loop {
        tokio::time::sleep(policy.check_every).await;
        let Some(glue) = glue.upgrade() else { return };
        for (peer, host, _) in &glue.hosts {
            if !glue.silent(peer, policy.after_silence) {
                continue;
            }
            if let Err(e) = glue.reresolve(peer).await {
                tracing::debug!(peer = %short_key(peer), %host, "re-resolving the endpoint: {e}");
            }
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Configure `device` from the wg-quick `config`; endpoints must be resolved already.
fn configure(device: &Device, config: &Config, now: rwg_proto::Instant) -> io::Result<()> {
    device.set_private_key(Some(config.interface.private_key.clone()));
    if let Some(mtu) = config.interface.mtu {
        device.set_mtu(usize::from(mtu));
    }
    for peer in &config.peers {
        let key = peer.public_key;
        if !device.add_peer(key) {
            return Err(invalid(format!(
                "peer {} appears twice",
                short_key(&peer.public_key)
            )));
        }
        let err =
            |e: rwg_proto::device::ConfigError| invalid(format!("peer {}: {e}", short_key(&key)));
        if let Some(psk) = &peer.preshared_key {
            device.set_preshared_key(&key, psk.clone()).map_err(err)?;
        }
        match &peer.endpoint {
            Some(Endpoint::Addr(addr)) => device.set_endpoint(&key, *addr).map_err(err)?,
            Some(Endpoint::Host { host, .. }) => {
                return Err(invalid(format!("endpoint {host} is not resolved")))
            }
            None => {}
        }
        for net in &peer.allowed_ips {
            device
                .add_allowed_ip(&key, net.addr, net.prefix_len)
                .map_err(err)?;
        }
    }
    // Last: turning keepalives on sends at once, which needs endpoints.
    for peer in &config.peers {
        if let Some(seconds) = peer.persistent_keepalive.filter(|s| *s > 0) {
            device
                .set_persistent_keepalive(now, &peer.public_key, seconds)
                .map_err(|e| invalid(e.to_string()))?;
        }
    }
    Ok(())
}

fn bind_socket(addr: SocketAddr) -> io::Result<(TokioUdpSocket, std::net::UdpSocket)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    // Larger buffers absorb bursts; the kernel caps them, which is fine.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let socket: std::net::UdpSocket = socket.into();
    let sender = socket.try_clone()?;
    Ok((TokioUdpSocket::from_std(socket)?, sender))
}

fn default_bind(config: &Config) -> SocketAddr {
    let port = config.interface.listen_port.unwrap_or(0);
    let endpoints: Vec<SocketAddr> = config
        .peers
        .iter()
        .filter_map(|p| p.endpoint.as_ref().and_then(Endpoint::addr))
        .collect();
    if !endpoints.is_empty() && endpoints.iter().all(SocketAddr::is_ipv6) {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

impl Tunnel {
    /// Start a stack inside the WireGuard tunnel described by `config` (a wg-quick file):
    /// its `Address`es become the stack's, `MTU` its MTU (default 1420); peers, preshared
    /// keys, endpoints (host names are resolved now, with the system resolver), allowed IPs
    /// and persistent keepalives configure the device. Must be called inside a tokio runtime;
    /// the stack's driver and the glue task are spawned on it.
    pub async fn start(config: &Config) -> io::Result<(NetStack, TunnelHandle)> {
        Tunnel::start_with(config, TunnelOptions::default()).await
    }

    /// [`Tunnel::start`] with options.
    pub async fn start_with(
        config: &Config,
        options: TunnelOptions,
    ) -> io::Result<(NetStack, TunnelHandle)> {
        if config.interface.addresses.is_empty() {
            return Err(invalid(
                "the configuration has no Address: the stack needs an address inside the tunnel"
                    .to_owned(),
            ));
        }
        let mut config = config.clone();
        let mut hosts = Vec::new();
        for peer in &mut config.peers {
            if let Some(Endpoint::Host { host, port }) = &peer.endpoint {
                let found = options
                    .endpoint_resolver
                    .resolve(host, *port)
                    .await
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("cannot resolve {host}: {e}"),
                        )
                    })?;
                // IPv4 first: the default socket is IPv4 unless every endpoint is IPv6.
                let addr = found
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(found.first())
                    .copied()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                    })?;
                hosts.push((peer.public_key, host.clone(), *port));
                peer.endpoint = Some(Endpoint::Addr(addr));
            }
        }
        let (socket, sender) = bind_socket(options.bind.unwrap_or_else(|| default_bind(&config)))?;
        let local_addr = socket.local_addr()?;

        let clock = Clock::new();
        let device = Arc::new(Device::new(Box::new(rand_core::OsRng)));
        device.set_unix_time(clock.now(), Clock::unix_now());
        let now = clock.now();
        let mtu = config.interface.mtu.map_or(DEFAULT_MTU, usize::from);
        let glue = Arc::new(Glue {
            device,
            socket,
            sender,
            clock,
            counters: Counters::default(),
            attention: Notify::new(),
            started: std::time::Instant::now(),
            handshake_at: Mutex::new(HashMap::new()),
            hosts,
            resolver: options.endpoint_resolver.clone(),
            io: options.datagram_io.clone(),
        });
        glue.io.prepare(&glue.sender);
        configure(&glue.device, &config, now)?;

        let addresses = config
            .interface
            .addresses
            .iter()
            .map(|n| (n.addr, n.prefix_len))
            .collect();
        let mut stack_config = StackConfig::new(addresses, mtu);
        if let Some(size) = options.tcp_rx_buffer_size {
            stack_config.tcp_rx_buffer_size = size;
        }
        if let Some(size) = options.tcp_tx_buffer_size {
            stack_config.tcp_tx_buffer_size = size;
        }
        if let Some(cc) = options.congestion_control {
            stack_config.congestion_control = cc;
        }
        let tunnel = WireGuardTunnel::new(glue.clone(), mtu);
        let (stack, driver) = NetStack::new(stack_config, tunnel)?;
        tokio::spawn(driver);
        let (handshakes_tx, handshakes) = watch::channel(0u64);
        let mut tasks =
            vec![tokio::spawn(run(glue.clone(), stack.clone(), handshakes_tx)).abort_handle()];
        if let Some(policy) = options.reresolve.filter(|_| !glue.hosts.is_empty()) {
            tasks.push(tokio::spawn(reresolve_loop(Arc::downgrade(&glue), policy)).abort_handle());
        }
        tracing::debug!(%local_addr, peers = config.peers.len(), "tunnel started");
        Ok((
            stack,
            TunnelHandle {
                glue,
                tasks,
                local_addr,
                handshakes,
            },
        ))
    }
}

/// The glue task: datagrams in, and the control path (rwg-driver's turn) whenever it is due
/// or the device wakes it.
async fn run(glue: Arc<Glue>, stack: NetStack, handshakes: watch::Sender<u64>) {
    let mut buf = vec![0u8; RECV_STRIDE * RECV_MESSAGES];
    let mut messages = [Incoming::default(); RECV_MESSAGES];
    let mut driver = Driver::new(glue.device.clone(), glue.clock);
    let weak = Arc::downgrade(&glue);
    driver.on_event(move |event| {
        if let Event::HandshakeCompleted { peer } = event {
            if let Some(glue) = weak.upgrade() {
                glue.handshake_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(*peer, std::time::Instant::now());
            }
            handshakes.send_modify(|n| *n += 1);
        }
    });
    // Weak: the device must not keep the glue (and so itself) alive after the task ends.
    let g = Arc::downgrade(&glue);
    glue.device.set_waker(Some(Arc::new(move || {
        if let Some(g) = g.upgrade() {
            g.attention.notify_one();
        }
    })));
    loop {
        let deadline = driver.turn(&mut GlueOut(&glue));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            readable = glue.socket.readable() => {
                if let Err(e) = readable {
                    tracing::error!("UDP socket failed: {e}");
                    glue.device.set_waker(None);
                    return;
                }
                receive_batch(&glue, &stack, &mut buf, &mut messages);
            }
            () = glue.attention.notified() => {}
            () = sleep => {}
        }
    }
}

/// Read what the socket holds, up to about [`RECEIVE_BATCH`] datagrams, and hand the packets
/// to the stack.
fn receive_batch(glue: &Glue, stack: &NetStack, buf: &mut [u8], messages: &mut [Incoming]) {
    let mut datagrams = 0;
    for _ in 0..RECEIVE_CALLS {
        if datagrams >= RECEIVE_BATCH {
            return;
        }
        // try_io: a WouldBlock clears the reactor's readiness, so the task sleeps until more.
        let got = glue.socket.try_io(Interest::READABLE, || {
            glue.io.recv(&glue.sender, buf, RECV_STRIDE, messages)
        });
        let got = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // ICMP errors (port unreachable) surface here on Linux; nothing to do.
            Err(_) => continue,
        };
        for (i, m) in messages[..got].iter().enumerate() {
            let message = &mut buf[i * RECV_STRIDE..i * RECV_STRIDE + m.len.min(RECV_STRIDE)];
            for range in m.datagrams() {
                datagrams += 1;
                receive_one(glue, stack, m.from, &mut message[range]);
            }
        }
    }
}

/// Decrypt one datagram in place and hand its packet to the stack.
fn receive_one(glue: &Glue, stack: &NetStack, source: SocketAddr, datagram: &mut [u8]) {
    glue.counters.rx_datagrams.fetch_add(1, Ordering::Relaxed);
    glue.counters
        .rx_bytes
        .fetch_add(datagram.len() as u64, Ordering::Relaxed);
    let received = glue
        .device
        .data_path()
        .decapsulate(glue.now(), source, datagram);
    match received {
        Received::Packet { len, .. } => {
            stack.receive(&datagram[HEADROOM..HEADROOM + len]);
        }
        Received::Keepalive | Received::Handshake => {}
        Received::Dropped(_) => {
            glue.counters
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
