//! The stack itself: a smoltcp interface over a [`PacketTunnel`], the socket table, and the
//! driver task that polls the interface.
//!
//! Locking: one `std::sync::Mutex` ([`Shared::inner`]) guards the interface and every socket;
//! user futures take it briefly to move bytes in or out of a socket buffer and to register
//! their waker, then wake the driver. The ingress queue has its own lock so that the tunnel
//! side never waits for a poll to finish.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::segments::{split, ReceiveEdges, Segments, Verdict};
use crate::tunnel::PacketTunnel;

/// First port of the ephemeral range (IANA), used for `connect` and for binding port 0.
const EPHEMERAL_FIRST: u16 = 49152;
/// Extra egress rounds per poll (each sends at most one segment per socket).
const EGRESS_ROUNDS: usize = 32;
/// How long a dropped TCP stream may take to finish its close before it is reset.
const LINGER: Duration = Duration::from_secs(60);

/// How a [`NetStack`] is set up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The stack's own addresses inside the tunnel, with prefix lengths (the `Address` lines
    /// of a wg-quick file). At most 8.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The tunnel's MTU: the largest IP packet the stack sends.
    pub mtu: usize,
    /// Receive buffer size of each TCP socket, in bytes: the window the stack advertises
    /// (window scaling lets it exceed 64 KiB), which bounds download speed per connection.
    pub tcp_rx_buffer_size: usize,
    /// Send buffer size of each TCP socket, in bytes: the most data in flight per connection.
    /// With congestion control the window adapts to the path, so this only needs to exceed the
    /// path's bandwidth-delay product.
    pub tcp_tx_buffer_size: usize,
    /// How TCP senders react to loss (see [`CongestionControl`]).
    pub congestion_control: CongestionControl,
    /// Most connections a listener holds before they are accepted; SYNs beyond are dropped.
    pub tcp_backlog: usize,
    /// Receive and send buffer size of each UDP socket, in bytes.
    pub udp_buffer_size: usize,
    /// Most received packets waiting for the driver; more are dropped.
    pub receive_queue_len: usize,
    /// How long [`TcpStream::connect`](crate::TcpStream::connect) waits for the handshake.
    pub connect_timeout: Duration,
}

impl StackConfig {
    /// A configuration with these addresses and MTU and default buffer sizes.
    pub fn new(addresses: Vec<(IpAddr, u8)>, mtu: usize) -> Self {
        StackConfig {
            addresses,
            mtu,
            tcp_rx_buffer_size: 512 * 1024,
            tcp_tx_buffer_size: 512 * 1024,
            congestion_control: CongestionControl::default(),
            tcp_backlog: 256,
            udp_buffer_size: 64 * 1024,
            receive_queue_len: 1024,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// The congestion control of the stack's TCP senders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CongestionControl {
    /// The stack's own (the default): each connection may have at most a window of data
    /// unacknowledged, which grows by half of what each acknowledgement covers and shrinks
    /// by 30 % once per loss episode, never below 64 KiB nor above the send buffer; while a
    /// loss is being repaired no new data goes out (so that smoltcp's fast retransmit runs
    /// instead of waiting for a timeout). Random loss thus costs little, and a path that
    /// drops because it is full makes the window shrink to what it carries.
    #[default]
    Adaptive,
    /// None: send as much as the peer's window and the send buffer allow.
    None,
    /// Reno (halve on loss, grow by a segment per acknowledgement).
    Reno,
    /// CUBIC (RFC 8312), as smoltcp implements it.
    Cubic,
}

impl CongestionControl {
    fn smoltcp(self) -> tcp::CongestionControl {
        match self {
            CongestionControl::Adaptive | CongestionControl::None => tcp::CongestionControl::None,
            CongestionControl::Reno => tcp::CongestionControl::Reno,
            CongestionControl::Cubic => tcp::CongestionControl::Cubic,
        }
    }
}

impl std::str::FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "adaptive" => Ok(CongestionControl::Adaptive),
            "none" => Ok(CongestionControl::None),
            "reno" => Ok(CongestionControl::Reno),
            "cubic" => Ok(CongestionControl::Cubic),
            _ => Err(format!(
                "unknown congestion control {s:?}: expected adaptive, none, reno or cubic"
            )),
        }
    }
}

/// Counters of the stack's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// IP packets accepted by [`NetStack::receive`].
    pub received: u64,
    /// IP packets refused by [`NetStack::receive`] (queue full or larger than the MTU).
    pub receive_dropped: u64,
    /// IP packets handed to the tunnel.
    pub transmitted: u64,
    /// SYNs dropped because a listener's backlog was full.
    pub syn_dropped: u64,
    /// Times the driver polled the interface (a busy loop would show here).
    pub polls: u64,
    /// Outgoing TCP segments split to fit a smaller path MTU learned from ICMP.
    pub segments_split: u64,
    /// TCP retransmissions not sent because the peer had acknowledged them selectively.
    pub retransmits_suppressed: u64,
    /// TCP segments sent a second time (suppressed ones included), on connections that
    /// reported a loss.
    pub retransmitted: u64,
    /// Loss episodes reported by peers (SACK blocks appearing).
    pub loss_episodes: u64,
    /// Duplicate ACKs whose changed window was kept as before, so smoltcp counts them.
    pub dupacks_normalized: u64,
    /// Tail loss probes (duplicate ACKs made up so that smoltcp retransmits at once).
    pub tail_loss_probes: u64,
    /// Incoming TCP segments cut short because their data reached past the window the stack
    /// had announced (see the guard in `segments`).
    pub receive_window_trims: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    receive_dropped: AtomicU64,
    transmitted: AtomicU64,
    syn_dropped: AtomicU64,
    polls: AtomicU64,
    segments_split: AtomicU64,
    suppressed: AtomicU64,
    retransmitted: AtomicU64,
    loss_episodes: AtomicU64,
    normalized: AtomicU64,
    probes: AtomicU64,
    trims: AtomicU64,
}

/// Received packets waiting for the driver, and spare buffers to copy the next ones into.
struct Ingress {
    queue: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

struct IngressQueue {
    state: Mutex<Ingress>,
    capacity: usize,
    mtu: usize,
}

impl IngressQueue {
    fn lock(&self) -> MutexGuard<'_, Ingress> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recycle(&self, mut buf: Vec<u8>) {
        let mut state = self.lock();
        if state.spare.len() < self.capacity {
            buf.clear();
            state.spare.push(buf);
        }
    }
}

/// The smoltcp device: reads from the ingress queue, writes to the tunnel.
pub(crate) struct TunnelDevice {
    ingress: Arc<IngressQueue>,
    /// The batch taken from the ingress queue for this poll (see [`Shared::poll`]).
    batch: VecDeque<Vec<u8>>,
    tunnel: Box<dyn PacketTunnel>,
    mtu: usize,
    transmit_buf: Vec<u8>,
    /// Where split segments are built.
    split_buf: Vec<u8>,
    counters: Arc<Counters>,
    /// SACK state and path MTUs (see [`crate::segments`]).
    pub(crate) segments: Segments,
    /// The receive window each connection announced, shared by both tokens: outgoing
    /// segments record it, incoming ones are cut to it just before smoltcp reads them.
    edges: RefCell<ReceiveEdges>,
}

pub(crate) struct RxToken<'a> {
    packet: Vec<u8>,
    ingress: &'a IngressQueue,
    edges: &'a RefCell<ReceiveEdges>,
}

pub(crate) struct TxToken<'a> {
    tunnel: &'a dyn PacketTunnel,
    buf: &'a mut Vec<u8>,
    split_buf: &'a mut Vec<u8>,
    counters: &'a Counters,
    segments: &'a mut Segments,
    edges: &'a RefCell<ReceiveEdges>,
}

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let mut packet = self.packet;
        // Here, not when the batch is taken: the segments smoltcp sends while it works
        // through the batch move the edge.
        self.edges.borrow_mut().incoming(&mut packet);
        let result = f(&packet);
        self.ingress.recycle(packet);
        result
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.resize(len, 0);
        let result = f(&mut self.buf[..len]);
        let packet = &mut self.buf[..len];
        // smoltcp has taken this segment's window as announced, whatever happens to it here.
        self.edges.borrow_mut().outgoing(packet);
        match self.segments.outgoing(packet) {
            Verdict::Send => {
                self.tunnel.send(packet);
                self.counters.transmitted.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Drop => {
                self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Split(room) => {
                let (tunnel, counters) = (self.tunnel, self.counters);
                counters.segments_split.fetch_add(1, Ordering::Relaxed);
                split(packet, room, self.split_buf, |piece| {
                    tunnel.send(piece);
                    counters.transmitted.fetch_add(1, Ordering::Relaxed);
                });
            }
        }
        result
    }
}

impl Device for TunnelDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.batch.pop_front()?;
        Some((
            RxToken {
                packet,
                ingress: &self.ingress,
                edges: &self.edges,
            },
            TxToken {
                tunnel: &*self.tunnel,
                buf: &mut self.transmit_buf,
                split_buf: &mut self.split_buf,
                counters: &self.counters,
                segments: &mut self.segments,
                edges: &self.edges,
            },
        ))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tunnel: &*self.tunnel,
            buf: &mut self.transmit_buf,
            split_buf: &mut self.split_buf,
            counters: &self.counters,
            segments: &mut self.segments,
            edges: &self.edges,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// Which ports are taken, per protocol, and where the next ephemeral search starts.
pub(crate) struct Ports {
    used: HashSet<u16>,
    next: u16,
}

impl Ports {
    fn new(seed: u64) -> Self {
        let span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        Ports {
            used: HashSet::new(),
            next: EPHEMERAL_FIRST + (seed % span) as u16,
        }
    }

    /// Take `port`, or a free ephemeral port when `port` is 0.
    pub(crate) fn take(&mut self, port: u16) -> io::Result<u16> {
        if port != 0 {
            return if self.used.insert(port) {
                Ok(port)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("port {port} is in use"),
                ))
            };
        }
        let span = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        for _ in 0..span {
            let candidate = self.next;
            self.next = if self.next == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                self.next + 1
            };
            if self.used.insert(candidate) {
                return Ok(candidate);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free ephemeral port",
        ))
    }

    pub(crate) fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

/// A TCP socket nobody holds any more, finishing its close.
struct Orphan {
    handle: SocketHandle,
    port: Option<u16>,
    deadline: Instant,
}

/// A listening port: its sockets in Listen, SynReceived, or established and not yet accepted.
pub(crate) struct ListenerState {
    pub(crate) backlog: Vec<SocketHandle>,
    /// The waker of the task in `accept`, registered on sockets added while it waits.
    pub(crate) acceptor: Option<std::task::Waker>,
}

pub(crate) struct Inner {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) device: TunnelDevice,
    pub(crate) tcp_ports: Ports,
    pub(crate) udp_ports: Ports,
    orphans: Vec<Orphan>,
    pub(crate) listeners: HashMap<u16, ListenerState>,
    epoch: Instant,
}

impl Inner {
    pub(crate) fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Give up a TCP socket: close it gracefully (or reset it if data would be lost) and
    /// remove it once the close is done. `port` is released with it.
    pub(crate) fn orphan_tcp(&mut self, handle: SocketHandle, port: Option<u16>) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        // Like Linux: unread data means the application did not take everything, so reset.
        if socket.recv_queue() > 0
            || matches!(
                socket.state(),
                tcp::State::SynSent | tcp::State::SynReceived
            )
        {
            socket.abort();
        } else {
            socket.close();
        }
        self.orphans.push(Orphan {
            handle,
            port,
            deadline: Instant::now() + LINGER,
        });
    }

    pub(crate) fn new_tcp_socket(&mut self, config: &StackConfig) -> tcp::Socket<'static> {
        new_tcp_socket(config)
    }

    fn reap_orphans(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.orphans.len() {
            let orphan = &self.orphans[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(orphan.handle);
            let done = match socket.state() {
                // Closed with no tuple: the final RST (if any) has gone out.
                tcp::State::Closed => socket.remote_endpoint().is_none(),
                tcp::State::TimeWait => true,
                _ => false,
            };
            if done {
                let orphan = self.orphans.swap_remove(i);
                self.sockets.remove(orphan.handle);
                if let Some(port) = orphan.port {
                    self.tcp_ports.release(port);
                }
            } else {
                if now >= orphan.deadline {
                    socket.abort();
                }
                i += 1;
            }
        }
    }

    /// Make sure each listener has a Listen socket for every SYN waiting in the queue; drop
    /// SYNs beyond the backlog so the peer retries later instead of being refused.
    fn prepare_listeners(&mut self, config: &StackConfig, counters: &Counters) {
        if self.listeners.is_empty() {
            return;
        }
        let mut wanted: HashMap<u16, usize> = HashMap::new();
        let Inner {
            listeners,
            sockets,
            device,
            ..
        } = self;
        device.batch.retain(|packet| {
            let Some(port) = syn_destination_port(packet) else {
                return true;
            };
            let Some(listener) = listeners.get_mut(&port) else {
                return true;
            };
            let count = wanted.entry(port).or_insert(0);
            *count += 1;
            let idle = listener
                .backlog
                .iter()
                .filter(|h| sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen)
                .count();
            if *count <= idle {
                return true;
            }
            if listener.backlog.len() >= config.tcp_backlog {
                counters.syn_dropped.fetch_add(1, Ordering::Relaxed);
                *count -= 1;
                return false;
            }
            let mut socket = new_tcp_socket(config);
            if socket.listen(port).is_err() {
                return false;
            }
            if let Some(waker) = &listener.acceptor {
                socket.register_recv_waker(waker);
            }
            listener.backlog.push(sockets.add(socket));
            true
        });
    }
}

fn new_tcp_socket(config: &StackConfig) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0; config.tcp_rx_buffer_size]);
    let tx = tcp::SocketBuffer::new(vec![0; config.tcp_tx_buffer_size]);
    let mut socket = tcp::Socket::new(rx, tx);
    socket.set_congestion_control(config.congestion_control.smoltcp());
    socket
}

/// smoltcp panics on addresses that are not unicast; check them first.
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// The destination port of a TCP SYN (without ACK), or `None` for anything else.
fn syn_destination_port(packet: &[u8]) -> Option<u16> {
    let (protocol, payload) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            (ip.next_header(), ip.payload())
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            (ip.next_header(), ip.payload())
        }
        _ => return None,
    };
    if protocol != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(payload).ok()?;
    (tcp.syn() && !tcp.ack()).then(|| tcp.dst_port())
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// The stack's addresses, for checking ICMP errors are about our packets.
    own_addresses: Vec<IpAddr>,
    ingress: Arc<IngressQueue>,
    wake: Arc<Notify>,
    counters: Arc<Counters>,
    pub(crate) config: StackConfig,
    /// Why the stack stopped (its driver panicked), once it has.
    failure: watch::Sender<Option<String>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the stack has an address of `ip`'s family, to send from. smoltcp would pick
    /// a loopback source instead of failing, and the connection would hang.
    pub(crate) fn can_reach(&self, ip: IpAddr) -> bool {
        self.config
            .addresses
            .iter()
            .any(|(own, _)| own.is_ipv4() == ip.is_ipv4())
    }

    /// An error if the stack has stopped (see [`NetStack::failure`]): nothing moves any more.
    pub(crate) fn check_running(&self) -> io::Result<()> {
        match &*self.failure.borrow() {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!(
                "the network stack stopped: {why}"
            ))),
        }
    }

    /// Ask the driver to poll soon: something was queued or a buffer changed.
    pub(crate) fn wake_driver(&self) {
        self.wake.notify_one();
    }

    /// Poll the interface once; return how long the driver may sleep.
    fn poll(&self) -> Option<Duration> {
        let mut inner = self.lock();
        let probe_at;
        // Work on a batch taken out of the queue, so that packets arriving during the poll
        // wait for the next one instead of slipping past prepare_listeners.
        {
            let mut ingress = self.ingress.lock();
            let Ingress { queue, .. } = &mut *ingress;
            std::mem::swap(queue, &mut inner.device.batch);
        }
        {
            let TunnelDevice {
                batch, segments, ..
            } = &mut inner.device;
            for packet in batch.iter_mut() {
                segments.incoming(packet, &self.own_addresses, self.config.mtu);
            }
            probe_at = segments.probes(&mut |packet| batch.push_back(packet));
        }
        inner.prepare_listeners(&self.config, &self.counters);
        let now = inner.now();
        let Inner {
            iface,
            sockets,
            device,
            ..
        } = &mut *inner;
        iface.poll(now, device, sockets);
        // smoltcp sends one segment per socket per poll: send more while there is more, a
        // bounded number of rounds, before letting the tasks that fill the buffers run.
        for _ in 0..EGRESS_ROUNDS {
            let before = self.counters.transmitted.load(Ordering::Relaxed)
                + self.counters.suppressed.load(Ordering::Relaxed);
            iface.poll_egress(now, device, sockets);
            let after = self.counters.transmitted.load(Ordering::Relaxed)
                + self.counters.suppressed.load(Ordering::Relaxed);
            if after == before {
                break;
            }
        }
        // What this turn sent leaves now, as one batch, before the driver sleeps.
        device.tunnel.flush();
        inner.reap_orphans();
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        {
            let r = &inner.device.segments.recovery;
            let c = &self.counters;
            c.retransmitted.store(r.retransmitted, Ordering::Relaxed);
            c.loss_episodes.store(r.episodes, Ordering::Relaxed);
            c.normalized.store(r.normalized, Ordering::Relaxed);
            c.probes.store(r.probes, Ordering::Relaxed);
            let trims = inner.device.edges.get_mut().trimmed;
            c.trims.store(trims, Ordering::Relaxed);
        }
        let Inner {
            iface,
            sockets,
            orphans,
            ..
        } = &mut *inner;
        let smoltcp_delay = iface
            .poll_delay(now, sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        // Lingering orphans must be reset on time even if nothing else happens.
        let linger_delay = orphans
            .iter()
            .map(|o| o.deadline.saturating_duration_since(Instant::now()))
            .chain(probe_at.map(|t| t.saturating_duration_since(Instant::now())))
            .min();
        match (smoltcp_delay, linger_delay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Tell the driver the last handle is gone.
        self.wake.notify_one();
    }
}

/// A TCP/IP stack inside the tunnel. Cheap to clone: every clone is the same stack.
///
/// Created with [`NetStack::new`], which also returns the driver future that must be spawned
/// on a tokio runtime. Sockets ([`TcpStream`](crate::TcpStream),
/// [`TcpListener`](crate::TcpListener), [`UdpSocket`](crate::UdpSocket)) keep the stack alive.
#[derive(Clone)]
pub struct NetStack {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for NetStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetStack")
            .field("addresses", &self.shared.config.addresses)
            .field("mtu", &self.shared.config.mtu)
            .finish_non_exhaustive()
    }
}

fn random_seed() -> u64 {
    // Seeds TCP initial sequence numbers and the ephemeral port search; std's SipHash keys are
    // random per process, which is enough for that (this is not key material).
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

impl NetStack {
    /// Create a stack with `config.addresses` inside the tunnel, sending its packets to
    /// `tunnel`. Returns the stack and its driver, which must be spawned (for example with
    /// `tokio::spawn`); the driver ends once the stack and all its sockets are dropped.
    pub fn new(
        config: StackConfig,
        tunnel: impl PacketTunnel,
    ) -> io::Result<(NetStack, impl Future<Output = ()> + Send + 'static)> {
        if config.mtu < 1280 && config.addresses.iter().any(|(a, _)| a.is_ipv6()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IPv6 needs an MTU of at least 1280",
            ));
        }
        if config.mtu < 576 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "MTU below 576"));
        }
        let counters = Arc::new(Counters::default());
        let ingress = Arc::new(IngressQueue {
            state: Mutex::new(Ingress {
                queue: VecDeque::with_capacity(config.receive_queue_len),
                spare: Vec::new(),
            }),
            capacity: config.receive_queue_len.max(1),
            mtu: config.mtu,
        });
        let mut device = TunnelDevice {
            ingress: ingress.clone(),
            batch: VecDeque::new(),
            tunnel: Box::new(tunnel),
            mtu: config.mtu,
            transmit_buf: Vec::with_capacity(config.mtu),
            split_buf: Vec::with_capacity(config.mtu),
            counters: counters.clone(),
            segments: Segments::default(),
            edges: RefCell::new(ReceiveEdges::default()),
        };
        let seed = random_seed();
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let epoch = Instant::now();
        let mut iface = Interface::new(iface_config, &mut device, SmolInstant::from_micros(0));
        if let Some((addr, _)) = config.addresses.iter().find(|(a, _)| !is_unicast(*a)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is not a unicast address"),
            ));
        }
        let mut invalid = None;
        iface.update_ip_addrs(|addrs| {
            for (addr, prefix) in &config.addresses {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if *prefix > max
                    || addrs
                        .push(IpCidr::new(IpAddress::from(*addr), *prefix))
                        .is_err()
                {
                    invalid = Some(format!("cannot use address {addr}/{prefix}"));
                }
            }
        });
        if let Some(message) = invalid {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        // Everything not on a local prefix goes into the tunnel: a default route per family.
        // With an IP medium the gateway is never looked up, so our own address serves.
        for (addr, _) in &config.addresses {
            let result = match addr {
                IpAddr::V4(v4) => iface.routes_mut().add_default_ipv4_route(*v4).map(|_| ()),
                IpAddr::V6(v6) => iface.routes_mut().add_default_ipv6_route(*v6).map(|_| ()),
            };
            if result.is_err() {
                return Err(io::Error::other("route table full"));
            }
        }
        let inner = Inner {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            tcp_ports: Ports::new(seed),
            udp_ports: Ports::new(seed.rotate_left(17)),
            orphans: Vec::new(),
            listeners: HashMap::new(),
            epoch,
        };
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            own_addresses: config.addresses.iter().map(|(a, _)| *a).collect(),
            ingress,
            wake: wake.clone(),
            counters,
            config,
            failure: watch::Sender::new(None),
        });
        let driver = drive(Arc::downgrade(&shared), wake);
        Ok((NetStack { shared }, driver))
    }

    /// Hand the stack an IP packet that came out of the tunnel (decrypted). Copies the packet
    /// and returns at once; returns `false` if it was dropped because the receive queue is
    /// full or the packet is empty or larger than the MTU.
    pub fn receive(&self, packet: &[u8]) -> bool {
        let shared = &self.shared;
        let counters = &shared.counters;
        let ingress = &shared.ingress;
        if packet.is_empty() || packet.len() > ingress.mtu {
            counters.receive_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        {
            let mut state = ingress.lock();
            if state.queue.len() >= ingress.capacity {
                drop(state);
                counters.receive_dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let mut buf = state.spare.pop().unwrap_or_default();
            buf.extend_from_slice(packet);
            state.queue.push_back(buf);
        }
        counters.received.fetch_add(1, Ordering::Relaxed);
        shared.wake_driver();
        true
    }

    /// Wait until the stack stops for good, and say why. It stops only if its driver panics
    /// (a bug, in smoltcp or here): the panic is logged, every socket operation from then on
    /// fails, and operations already waiting may never finish; nothing moves through the
    /// stack any more. A program should treat this as fatal (`rwg proxy` exits non-zero, for
    /// its service manager to restart it) rather than go on as a black hole.
    pub async fn failure(&self) -> String {
        let mut failure = self.shared.failure.subscribe();
        let why = match failure.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The sender lives in `Shared`, which `self` holds.
            Err(_) => return std::future::pending().await,
        };
        why
    }

    /// The stack's addresses, as configured.
    pub fn addresses(&self) -> &[(IpAddr, u8)] {
        &self.shared.config.addresses
    }

    /// The tunnel MTU the stack was configured with.
    pub fn mtu(&self) -> usize {
        self.shared.config.mtu
    }

    /// Traffic counters.
    pub fn stats(&self) -> StackStats {
        let c = &self.shared.counters;
        StackStats {
            received: c.received.load(Ordering::Relaxed),
            receive_dropped: c.receive_dropped.load(Ordering::Relaxed),
            transmitted: c.transmitted.load(Ordering::Relaxed),
            syn_dropped: c.syn_dropped.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            segments_split: c.segments_split.load(Ordering::Relaxed),
            retransmits_suppressed: c.suppressed.load(Ordering::Relaxed),
            retransmitted: c.retransmitted.load(Ordering::Relaxed),
            loss_episodes: c.loss_episodes.load(Ordering::Relaxed),
            dupacks_normalized: c.normalized.load(Ordering::Relaxed),
            tail_loss_probes: c.probes.load(Ordering::Relaxed),
            receive_window_trims: c.trims.load(Ordering::Relaxed),
        }
    }
}

/// The driver: poll, then sleep until smoltcp's next deadline or until woken by new input
/// or a socket operation. Holds the stack only weakly, so it ends when everything else is
/// dropped.
async fn drive(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let delay = match shared.upgrade() {
            Some(shared) => match std::panic::catch_unwind(AssertUnwindSafe(|| shared.poll())) {
                Ok(delay) => delay,
                Err(panic) => {
                    // The socket set may be half-updated, and the same state would panic
                    // again on the next poll: stop, and say so where it cannot be missed.
                    let why = panic_message(&*panic);
                    tracing::error!(
                        "the network stack's driver panicked, the stack is stopped: {why}"
                    );
                    shared
                        .failure
                        .send_replace(Some(format!("its driver panicked: {why}")));
                    return;
                }
            },
            None => return,
        };
        match delay {
            // More to send right away (smoltcp emits one segment per socket per poll): go
            // round again, letting other tasks run in between.
            Some(d) if d.is_zero() => tokio::task::yield_now().await,
            Some(d) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_do_not_collide() {
        let mut ports = Ports::new(12345);
        let mut seen = HashSet::new();
        for _ in 0..(u32::from(u16::MAX - EPHEMERAL_FIRST) + 1) {
            let p = ports.take(0).expect("free port");
            assert!(p >= EPHEMERAL_FIRST);
            assert!(seen.insert(p));
        }
        assert_eq!(
            ports.take(0).map_err(|e| e.kind()),
            Err(io::ErrorKind::AddrInUse)
        );
        ports.release(50000);
        assert_eq!(ports.take(0).ok(), Some(50000));
        assert_eq!(ports.take(80).ok(), Some(80));
        assert_eq!(
            ports.take(80).map_err(|e| e.kind()),
            Err(io::ErrorKind::AddrInUse)
        );
    }

    #[test]
    fn syn_detection() {
        assert_eq!(syn_destination_port(&[]), None);
        assert_eq!(syn_destination_port(&[0x45; 10]), None);
        assert_eq!(syn_destination_port(&[0x60; 50]), None);
        // A minimal IPv4 + TCP SYN to port 80.
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 6;
        p[20 + 2..20 + 4].copy_from_slice(&80u16.to_be_bytes());
        p[20 + 12] = 5 << 4;
        p[20 + 13] = 0x02;
        assert_eq!(syn_destination_port(&p), Some(80));
        p[20 + 13] = 0x12;
        assert_eq!(syn_destination_port(&p), None);
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    /// A tunnel whose `send` panics, as a bug inside the driver's poll would.
    struct Broken;

    impl PacketTunnel for Broken {
        fn send(&self, _packet: &[u8]) {
            panic!("broken tunnel for the test");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_the_driver_stops_the_stack_visibly() {
        let config = StackConfig::new(vec![(IpAddr::from([10, 0, 0, 1]), 24)], 1420);
        let (stack, driver) = NetStack::new(config, Broken).expect("stack");
        let driver = tokio::spawn(driver);
        let to = std::net::SocketAddr::from(([10, 0, 0, 2], 80));
        // The SYN makes the tunnel panic; this connect is left waiting.
        let first = tokio::spawn({
            let stack = stack.clone();
            async move { crate::TcpStream::connect(&stack, to).await }
        });
        let why = tokio::time::timeout(Duration::from_secs(20), stack.failure())
            .await
            .expect("the failure is reported");
        assert!(why.contains("broken tunnel for the test"), "{why}");
        // The driver task ended normally (the panic did not escape into the runtime).
        driver.await.expect("driver ended without unwinding");
        // From now on, operations fail at once instead of hanging.
        let e = crate::TcpStream::connect(&stack, to)
            .await
            .expect_err("connect on a stopped stack");
        assert!(e.to_string().contains("stopped"), "{e}");
        assert!(crate::TcpListener::bind(&stack, 80).is_err());
        assert!(crate::UdpSocket::bind(&stack, 0).is_err());
        first.abort();
    }
}

#[cfg(test)]
mod window_edge_tests {
    //! smoltcp 0.12 against a peer that sends up to the largest window edge it was shown,
    //! through the stack's real device (see the receive-edge guard in `segments`).

    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    const OWN: [u8; 4] = [10, 0, 0, 1];
    const PEER: [u8; 4] = [10, 0, 0, 2];
    const PORT: u16 = 80;
    const PEER_PORT: u16 = 40000;
    /// 2^17 bytes: smoltcp scales its window by 2 bits.
    const RX: usize = 1 << 17;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

    impl PacketTunnel for Capture {
        fn send(&self, packet: &[u8]) {
            self.0.lock().expect("capture").push(packet.to_vec());
        }
    }

    fn byte(i: usize) -> u8 {
        (i % 251) as u8
    }

    /// A segment from the peer, emitted with smoltcp's own wire code.
    fn from_peer(repr: &TcpRepr<'_>) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: Ipv4Address::from(PEER),
            dst_addr: Ipv4Address::from(OWN),
            next_header: IpProtocol::Tcp,
            payload_len: repr.buffer_len(),
            hop_limit: 64,
        };
        let mut p = vec![0u8; ip.buffer_len() + repr.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut packet = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.emit(&mut packet, &caps);
        let mut tcp = TcpPacket::new_unchecked(packet.payload_mut());
        repr.emit(
            &mut tcp,
            &IpAddress::from(Ipv4Address::from(PEER)),
            &IpAddress::from(Ipv4Address::from(OWN)),
            &caps,
        );
        p
    }

    fn segment(seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        from_peer(&TcpRepr {
            src_port: PEER_PORT,
            dst_port: PORT,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: Some(TcpSeqNumber(ack as i32)),
            window_len: 4096,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        })
    }

    /// (seq, ack, window field, window scale option) of the segments the stack sent.
    fn sent(capture: &Capture) -> Vec<(u32, Option<u32>, u16, Option<u8>)> {
        let packets = std::mem::take(&mut *capture.0.lock().expect("capture"));
        packets
            .iter()
            .map(|p| {
                let ip = Ipv4Packet::new_checked(&p[..]).expect("ipv4");
                let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
                let caps = ChecksumCapabilities::default();
                let src = IpAddress::from(ip.src_addr());
                let dst = IpAddress::from(ip.dst_addr());
                let repr = TcpRepr::parse(&tcp, &src, &dst, &caps).expect("repr");
                (
                    repr.seq_number.0 as u32,
                    repr.ack_number.map(|a| a.0 as u32),
                    repr.window_len,
                    repr.window_scale,
                )
            })
            .collect()
    }

    #[test]
    fn data_past_a_receding_window_edge_does_not_panic_the_stack() {
        let capture = Capture::default();
        let mut config = StackConfig::new(vec![(IpAddr::from(OWN), 24)], 1500);
        config.tcp_rx_buffer_size = RX;
        let (stack, _driver) = NetStack::new(config, capture.clone()).expect("stack");
        let _listener = crate::TcpListener::bind(&stack, PORT).expect("listen");
        let shared = &stack.shared;

        // Handshake: the peer offers window scaling and a 1000-byte MSS.
        let peer_isn = 1000u32;
        stack.receive(&from_peer(&TcpRepr {
            src_port: PEER_PORT,
            dst_port: PORT,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(peer_isn as i32),
            ack_number: None,
            window_len: 65535,
            window_scale: Some(7),
            max_seg_size: Some(1000),
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        }));
        shared.poll();
        let (own_isn, _, _, shift) = sent(&capture)
            .into_iter()
            .find(|s| s.3.is_some())
            .expect("a SYN-ACK with a window scale");
        let shift = shift.unwrap_or(0);
        assert_eq!(shift, 2, "a 128 KiB buffer is announced in 4-byte units");
        let ack = own_isn.wrapping_add(1);
        let start = peer_isn.wrapping_add(1);
        stack.receive(&segment(start, ack, &[]));
        shared.poll();
        sent(&capture);

        // The application reads nothing for now. Pairs of segments (each pair makes the stack
        // acknowledge at once) fill the buffer; every announced edge is the buffer's end, as
        // long as the free space is a multiple of the 4-byte unit.
        let socket = {
            let mut inner = shared.lock();
            let Inner {
                listeners, sockets, ..
            } = &mut *inner;
            listeners[&PORT]
                .backlog
                .iter()
                .copied()
                .find(|h| sockets.get::<tcp::Socket>(*h).state() == tcp::State::Established)
        }
        .expect("established");
        let buffer_end = RX;
        let mut next = 0usize;
        // Sends the segments, polls, and returns the edge the stack's last ACK announced.
        let send = |next: &mut usize, sizes: &[usize]| -> Option<usize> {
            for size in sizes {
                let payload: Vec<u8> = (*next..*next + size).map(byte).collect();
                stack.receive(&segment(start.wrapping_add(*next as u32), ack, &payload));
                *next += size;
            }
            shared.poll();
            sent(&capture).iter().rev().find_map(|&(_, a, window, _)| {
                let a = a?.wrapping_sub(start) as usize;
                Some(a + (usize::from(window) << shift))
            })
        };
        let mut edge = None;
        while next + 2000 <= buffer_end - 3000 {
            edge = send(&mut next, &[1000, 1000]);
        }
        assert_eq!(edge, Some(buffer_end), "full units: the edge is the end");
        // Then the free space is 999 bytes: 249 units, the edge moves back 3 bytes.
        let free = 999;
        let rest = buffer_end - free - next - 1036;
        let edge = send(&mut next, &[1036, rest]);
        assert_eq!(edge, Some(buffer_end - 3));
        // The peer had been allowed up to the buffer's end and sends that far. smoltcp takes
        // it all (it fits the buffer) and, without the guard, panics when it next computes its
        // window.
        send(&mut next, &[free]);
        assert_eq!(next, buffer_end);
        assert_eq!(stack.stats().receive_window_trims, 1);

        // The application reads; the peer resends what was not acknowledged; nothing is lost.
        let mut received = Vec::new();
        let read = |received: &mut Vec<u8>| {
            let mut inner = shared.lock();
            let s = inner.sockets.get_mut::<tcp::Socket>(socket);
            let mut buf = vec![0u8; RX];
            let n = s.recv_slice(&mut buf).expect("recv");
            received.extend_from_slice(&buf[..n]);
        };
        read(&mut received);
        assert_eq!(
            received.len(),
            buffer_end - 3,
            "data up to the edge is kept"
        );
        // The window opened: the stack says so, and the peer resends.
        let edge = send(&mut next, &[]).expect("a window update");
        assert!(edge > buffer_end, "{edge}");
        let mut resend = received.len();
        send(&mut resend, &[3]);
        read(&mut received);
        assert_eq!(received.len(), buffer_end);
        assert!(received.iter().enumerate().all(|(i, b)| *b == byte(i)));
    }
}
