//! The driver: the state the daemon's threads share, the threads themselves, and the
//! [`UapiDevice`] that applies `wg set` to the core.
//!
//! Threads:
//! - **tun-read** and **udp-read-v4 / udp-read-v6**: the data plane, in batches, with the
//!   offloads and the crypto workers of [`crate::pipeline`].
//! - **control**: [`rwg_driver`]'s loop: sleeps until the core's next deadline or until the
//!   core's waker fires (a handshake message queued, a timer armed earlier, an output queued),
//!   then handles queued handshakes and due timers and sends what the core queued. There is no
//!   fixed tick.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rwg_driver::{Clock, Transmitter, Wakeup};
use rwg_proto::crypto::{PresharedKey, PrivateKey, PublicKey};
use rwg_proto::device::{Device, Transmit};

use crate::lifecycle::{Shutdown, ShutdownHandle, StartError};
use crate::pipeline::{canonical, Crypto, DataPlaneConfig, TunSender};
use crate::tun::Tun;
use crate::uapi::{DeviceSnapshot, Errno, PeerSnapshot, UapiDevice};
use crate::udp::UdpSockets;

/// The control thread re-reads the TUN's MTU at least this often.
const MTU_REFRESH: Duration = Duration::from_secs(30);
/// The control thread's nice value (handshakes, timers, the control path's sends): under CPU
/// contention each data-path thread weighs about ten times as much (CFS weights 1024 : 110).
const CONTROL_NICE: i32 = 10;
/// How long [`Driver::rebind_sockets`] waits for the old sockets' readers to let go of the port
/// (they look at their generation at least once a second).
const REBIND_WAIT: Duration = Duration::from_secs(3);

/// State shared by the driver's threads and the configuration socket.
#[derive(Debug)]
pub struct Driver {
    core: Arc<Device>,
    clock: Clock,
    sockets: RwLock<Arc<UdpSockets>>,
    /// Bumped when the sockets are replaced: readers of an older generation exit.
    generation: AtomicU64,
    fwmark: AtomicU32,
    waker: Arc<Wakeup>,
    tun: Mutex<Option<Arc<Tun>>>,
    shutdown: Mutex<Option<ShutdownHandle>>,
    pub(crate) stopping: AtomicBool,
    config: DataPlaneConfig,
    crypto: Mutex<Option<Arc<Crypto>>>,
    /// The TUN → UDP half's batch state, shared by the tun-read thread and the UDP readers.
    tun_sender: Arc<TunSender>,
}

impl Driver {
    /// A driver around a fresh core (OS RNG) with UDP sockets bound on `port` (0 = any), with
    /// every offload the host has.
    pub fn new(port: u16) -> Result<Arc<Driver>, StartError> {
        Driver::with_config(port, DataPlaneConfig::default())
    }

    /// [`Driver::new`] with the data plane configured.
    pub fn with_config(port: u16, config: DataPlaneConfig) -> Result<Arc<Driver>, StartError> {
        let sockets = UdpSockets::bind(port).map_err(|e| StartError(e.to_string()))?;
        configure_sockets(&sockets, &config);
        let clock = Clock::new();
        let core = Arc::new(Device::new(Box::new(rand_core::OsRng)));
        core.set_listen_port(sockets.port());
        Ok(Arc::new(Driver {
            core,
            clock,
            sockets: RwLock::new(Arc::new(sockets)),
            generation: AtomicU64::new(0),
            fwmark: AtomicU32::new(0),
            waker: Wakeup::new(),
            tun: Mutex::new(None),
            shutdown: Mutex::new(None),
            stopping: AtomicBool::new(false),
            config,
            crypto: Mutex::new(None),
            tun_sender: Arc::new(TunSender::new()),
        }))
    }

    /// The protocol core.
    pub fn core(&self) -> &Device {
        &self.core
    }

    /// The protocol core, shared (for threads that outlive a borrow, like the metrics server).
    pub fn core_arc(&self) -> Arc<Device> {
        Arc::clone(&self.core)
    }

    /// The UDP sockets in use now (an app protects their descriptors from its own VPN routes;
    /// they change when the port does or after [`rebind_sockets`](Self::rebind_sockets)).
    pub fn sockets(&self) -> Arc<UdpSockets> {
        Arc::clone(&self.sockets.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    pub(crate) fn config(&self) -> DataPlaneConfig {
        self.config
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn fail(&self, why: String) {
        self.end(Shutdown::Failed(why));
    }

    /// The TUN was deleted under us: every thread stops, and the daemon says why.
    pub(crate) fn interface_gone(&self) {
        self.end(Shutdown::InterfaceDeleted);
    }

    fn end(&self, why: Shutdown) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(h) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown(why);
        }
    }

    /// Asks every thread of this driver to exit: the control thread at once, the readers
    /// within a second. Returns without waiting; the threads hold the driver until they exit,
    /// so an embedder that waits for the last `Arc<Driver>` to go (a `Weak` that no longer
    /// upgrades) waits for them, and for the TUN descriptor and the sockets to be closed.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.waker.wake();
    }

    /// After a network change (an app's "network changed" callback): new UDP sockets on the
    /// same port, then a handshake with every peer that has an endpoint, so that each learns
    /// where we are now. Sessions are kept.
    ///
    /// The readers of the old sockets hold copies of them until they notice the new
    /// generation, so the port is bound again only once they let go of it; meanwhile datagrams
    /// go out of a stand-in pair on a fresh port. If the port is still taken after
    /// [`REBIND_WAIT`] (another program took it), the stand-in stays in use and this fails.
    pub fn rebind_sockets(self: &Arc<Self>) -> Result<(), StartError> {
        let port = self.sockets().port();
        let stand_in = self.bind_like_current(0)?;
        self.replace_sockets(stand_in);
        let deadline = std::time::Instant::now() + REBIND_WAIT;
        let sockets = loop {
            match self.bind_like_current(port) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::trace!(error = %e, "port still held by the old sockets' readers");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let _ = self.spawn_udp_readers();
                    return Err(e);
                }
            }
        };
        self.replace_sockets(sockets);
        self.spawn_udp_readers()
            .map_err(|e| StartError(format!("cannot start UDP readers: {e}")))?;
        let now = self.clock.now();
        for peer in self.core.peers() {
            if peer.endpoint.is_some() {
                // Refused only within REKEY_TIMEOUT of the last attempt, which is as good.
                let _ = self.core.initiate_handshake(now, &peer.public_key);
            }
        }
        tracing::info!(port, "UDP sockets rebound");
        Ok(())
    }

    /// A new pair on `port` with the current sockets' switches and fwmark.
    fn bind_like_current(&self, port: u16) -> Result<UdpSockets, StartError> {
        let mut new = UdpSockets::bind(port).map_err(|e| StartError(e.to_string()))?;
        configure_sockets(&new, &self.config);
        let mark = self.fwmark.load(Ordering::Relaxed);
        if mark != 0 {
            new.set_fwmark(mark)
                .map_err(|e| StartError(format!("cannot set the fwmark: {e}")))?;
        }
        Ok(new)
    }

    /// Puts `new` in place of the current sockets; readers of the old ones exit.
    fn replace_sockets(&self, new: UdpSockets) {
        let mut sockets = self.sockets.write().unwrap_or_else(|e| e.into_inner());
        self.core.set_listen_port(new.port());
        *sockets = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts the packet threads; the shape [`crate::Daemon::run_with`] expects.
    pub fn start(
        self: &Arc<Self>,
        tun: Arc<Tun>,
        shutdown: ShutdownHandle,
    ) -> Result<(), StartError> {
        if let Ok(mtu) = tun.mtu() {
            self.core.set_mtu(mtu as usize);
        }
        tun.set_nonblocking(true)
            .map_err(|e| StartError(format!("TUN: {e}")))?;
        *self.tun.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&tun));
        *self.shutdown.lock().unwrap_or_else(|e| e.into_inner()) = Some(shutdown.clone());
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(|_| ())
                .map_err(|e| StartError(format!("cannot start thread {name}: {e}")))
        };
        let crypto = Arc::new(Crypto::new(self.config.workers));
        *self.crypto.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&crypto));
        tracing::info!(
            offloads = ?tun.offloads(),
            workers = self.config.workers,
            udp_gso = self.config.udp_gso,
            udp_gro = self.config.udp_gro,
            "data plane"
        );
        let me = Arc::clone(self);
        let t = Arc::clone(&tun);
        spawn(
            "tun-read",
            Box::new(move || crate::pipeline::tun_to_udp(&me, &t, &me.tun_sender, &crypto)),
        )?;
        let me = Arc::clone(self);
        spawn("control", Box::new(move || me.control_loop()))?;
        self.watch_link(&tun, spawn)?;
        self.spawn_udp_readers()
            .map_err(|e| StartError(format!("cannot start UDP readers: {e}")))
    }

    /// Follows the TUN's MTU through link events, so that `ip link set mtu` (which wg-quick
    /// runs right after starting us) takes effect at once. Without a netlink socket (a
    /// sandbox may forbid one) the control loop's slow poll still catches up.
    fn watch_link(
        self: &Arc<Self>,
        tun: &Arc<Tun>,
        spawn: impl Fn(&str, Box<dyn FnOnce() + Send>) -> Result<(), StartError>,
    ) -> Result<(), StartError> {
        let events = match (crate::sys::netlink::LinkEvents::open(), tun.ifindex()) {
            (Ok(events), Ok(ifindex)) => (events, ifindex),
            (Err(e), _) => {
                tracing::warn!(error = %e, "no link events: MTU changes are noticed within {}s", MTU_REFRESH.as_secs());
                return Ok(());
            }
            (_, Err(e)) => {
                tracing::warn!(error = %e, "no interface index: MTU changes are noticed within {}s", MTU_REFRESH.as_secs());
                return Ok(());
            }
        };
        // Opened before this re-read, so a change between the two is not missed.
        if let Ok(mtu) = tun.mtu() {
            self.core.set_mtu(mtu as usize);
        }
        let me = Arc::clone(self);
        let tun = Arc::clone(tun);
        spawn(
            "link-watch",
            Box::new(move || {
                let (events, ifindex) = events;
                while !me.stopping() {
                    match crate::sys::poll::wait_readable(&events, crate::pipeline::READER_POLL_MS)
                    {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return tracing::warn!(error = %e, "link events"),
                    }
                    let mtu = match crate::link::drain(&events, ifindex) {
                        Ok(crate::link::LinkNews::Nothing) => continue,
                        Ok(crate::link::LinkNews::Mtu(mtu)) => Some(mtu),
                        Ok(crate::link::LinkNews::Overrun) => tun.mtu().ok(),
                        Err(e) => return tracing::warn!(error = %e, "link events"),
                    };
                    if let Some(mtu) = mtu {
                        if mtu as usize != me.core.mtu() {
                            tracing::debug!(mtu, "TUN MTU changed");
                            me.core.set_mtu(mtu as usize);
                        }
                    }
                }
            }),
        )
    }

    /// Resolves the endpoint host names `names` lists again whenever their peer goes silent
    /// (see [`rwg_driver::reresolve`]), on a thread of its own (resolving blocks), every
    /// `every`, until the driver stops.
    pub fn spawn_reresolver(
        self: &Arc<Self>,
        names: impl FnMut() -> Result<Vec<rwg_driver::reresolve::NamedEndpoint>, String>
            + Send
            + 'static,
        every: Duration,
    ) -> io::Result<()> {
        let me = Arc::downgrade(self);
        let usable = move |a: &std::net::SocketAddr| {
            me.upgrade().is_some_and(|d| {
                let sockets = d.sockets();
                if a.is_ipv4() {
                    sockets.v4().is_some()
                } else {
                    sockets.v6().is_some()
                }
            })
        };
        let r = rwg_driver::reresolve::Reresolver::new(self.core_arc(), self.clock, names, usable);
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("reresolve".into())
            .spawn(move || r.run_blocking(every, || me.stopping()))
            .map(|_| ())
    }

    fn spawn_udp_readers(self: &Arc<Self>) -> io::Result<()> {
        let Some(tun) = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(()); // not started yet: `start` spawns them
        };
        let Some(crypto) = self
            .crypto
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let generation = self.generation.load(Ordering::Acquire);
        let sockets = self.sockets();
        for (name, socket) in [("udp-read-v4", sockets.v4()), ("udp-read-v6", sockets.v6())] {
            let Some(socket) = socket else { continue };
            let socket = socket.try_clone()?;
            socket.set_nonblocking(true)?;
            let me = Arc::clone(self);
            let tun = Arc::clone(&tun);
            let crypto = Arc::clone(&crypto);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    crate::pipeline::udp_to_tun(
                        &me,
                        &socket,
                        &tun,
                        generation,
                        &crypto,
                        &me.tun_sender,
                    )
                })?;
        }
        Ok(())
    }

    /// The control path (rwg-driver's loop) plus this driver's own housekeeping: the TUN's MTU.
    fn control_loop(&self) {
        // When the CPU is short, the data path goes first: a handshake flood then backs up in
        // the core's bounded handshake queue, which drops what it cannot hold before any
        // crypto, instead of taking the CPU from the tunnel's traffic (as the kernel's
        // handshake workqueue yields to its packet processing). Timers are in seconds; with
        // CPU to spare this changes nothing. See BENCHMARKS.md, "Under attack".
        if let Err(e) = crate::sys::sched::set_thread_nice(CONTROL_NICE) {
            tracing::debug!(error = %e, "control thread keeps its priority");
        }
        let mut driver = rwg_driver::Driver::new(Arc::clone(&self.core), self.clock);
        let w = Arc::clone(&self.waker);
        self.core.set_waker(Some(Arc::new(move || w.wake())));
        let mut out = UdpOut(self, crate::udp::Scratch::new(1));
        let mut last_mtu = std::time::Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            let deadline = driver.turn(&mut out);
            if last_mtu.elapsed() >= MTU_REFRESH {
                last_mtu = std::time::Instant::now();
                let tun = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(mtu) = tun.and_then(|t| t.mtu().ok()) {
                    self.core.set_mtu(mtu as usize);
                }
            }
            let cap = std::time::Instant::now() + MTU_REFRESH;
            self.waker.wait(Some(deadline.map_or(cap, |d| d.min(cap))));
        }
        self.core.set_waker(None);
    }
}

/// The control path's datagrams go out of the current UDP sockets, from the peer's sticky
/// source address when one is known.
struct UdpOut<'a>(&'a Driver, crate::udp::Scratch);

impl Transmitter for UdpOut<'_> {
    fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) -> usize {
        self.0
            .sockets()
            .send_transmit(t.datagrams(datagrams), t.destination, t.peer, &mut self.1)
    }
}

/// Applies the data plane's socket switches: GRO on (if wanted), GSO off (if not).
fn configure_sockets(sockets: &UdpSockets, config: &DataPlaneConfig) {
    if config.udp_gro {
        sockets.enable_gro();
    }
    if !config.udp_gso {
        sockets.disable_gso();
    }
}

/// The configuration socket's view of the driver.
#[derive(Debug)]
pub struct DriverConfig(pub Arc<Driver>);

fn unknown_peer<T>(r: Result<T, rwg_proto::device::ConfigError>) -> Result<T, Errno> {
    r.map_err(|e| match e {
        rwg_proto::device::ConfigError::UnknownPeer => Errno::UNKNOWN,
        rwg_proto::device::ConfigError::InvalidPrefix => Errno::EINVAL,
    })
}

// No method here wakes the control thread: the core calls its waker (installed by the control
// loop) whenever a change gives the control path work (output queued, an earlier deadline).
// Waking it per peer made a `set` of N peers cost N thread switches and lock contention.
impl UapiDevice for DriverConfig {
    fn snapshot(&self) -> DeviceSnapshot {
        let d = &self.0;
        // Borrowed, not moved out: a key moved out of the Vec's buffer would be freed with it
        // unzeroized; each PeerInfo zeroizes its own key when the Vec is dropped.
        let peers = d.core.peers();
        DeviceSnapshot {
            private_key: d.core.private_key(),
            listen_port: d.core.listen_port(),
            fwmark: d.fwmark.load(Ordering::Relaxed),
            counters: crate::uapi::core_counters(&d.core),
            peers: peers
                .iter()
                .map(|p| PeerSnapshot {
                    public_key: *p.public_key.as_bytes(),
                    preshared_key: p.preshared_key.clone(),
                    endpoint: p.endpoint,
                    last_handshake: p.last_handshake.map(|t| (t.as_secs(), t.subsec_nanos())),
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: p.allowed_ips.clone(),
                })
                .collect(),
        }
    }

    fn own_public_key(&self) -> Option<[u8; 32]> {
        self.0.core.public_key().map(|k| *k.as_bytes())
    }

    fn set_private_key(&mut self, key: Option<PrivateKey>) -> Result<(), Errno> {
        self.0.core.set_private_key(key);
        Ok(())
    }

    fn set_listen_port(&mut self, port: u16) -> Result<(), Errno> {
        let d = &self.0;
        {
            let mut sockets = d.sockets.write().unwrap_or_else(|e| e.into_inner());
            if port != 0 && port == sockets.port() {
                return Ok(());
            }
            let mut new = UdpSockets::bind(port).map_err(|_| Errno::EADDRINUSE)?;
            configure_sockets(&new, &d.config);
            let mark = d.fwmark.load(Ordering::Relaxed);
            if mark != 0 {
                new.set_fwmark(mark).map_err(|_| Errno::EADDRINUSE)?;
            }
            d.core.set_listen_port(new.port());
            *sockets = Arc::new(new);
            d.generation.fetch_add(1, Ordering::AcqRel);
        }
        d.spawn_udp_readers().map_err(|_| Errno::EIO)
    }

    fn set_fwmark(&mut self, mark: u32) -> Result<(), Errno> {
        let d = &self.0;
        // Held for writing so a concurrent rebind cannot miss the new mark.
        let sockets = d.sockets.write().unwrap_or_else(|e| e.into_inner());
        // The sockets are shared with the readers; the option applies to the socket itself.
        for s in [sockets.v4(), sockets.v6()].into_iter().flatten() {
            crate::udp::set_socket_mark(s, mark).map_err(|_| Errno::EADDRINUSE)?;
        }
        d.fwmark.store(mark, Ordering::Relaxed);
        Ok(())
    }

    fn remove_all_peers(&mut self) {
        self.0.core.remove_all_peers();
    }

    fn has_peer(&self, pk: &[u8; 32]) -> bool {
        self.0.core.has_peer(&PublicKey::from_bytes(*pk))
    }

    fn create_peer(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
        self.0.core.add_peer(PublicKey::from_bytes(*pk));
        Ok(())
    }

    fn ensure_peer(&mut self, pk: &[u8; 32]) -> Result<bool, Errno> {
        Ok(self.0.core.add_peer(PublicKey::from_bytes(*pk)))
    }

    fn remove_peer(&mut self, pk: &[u8; 32]) {
        self.0.core.remove_peer(&PublicKey::from_bytes(*pk));
    }

    fn set_preshared_key(&mut self, pk: &[u8; 32], psk: PresharedKey) -> Result<(), Errno> {
        unknown_peer(
            self.0
                .core
                .set_preshared_key(&PublicKey::from_bytes(*pk), psk),
        )
    }

    fn set_endpoint(&mut self, pk: &[u8; 32], ep: SocketAddr) -> Result<(), Errno> {
        unknown_peer(
            self.0
                .core
                .set_endpoint(&PublicKey::from_bytes(*pk), canonical(ep)),
        )
    }

    fn set_persistent_keepalive(&mut self, pk: &[u8; 32], secs: u16) -> Result<(), Errno> {
        let d = &self.0;
        // What this queues or schedules wakes the control thread through the core's waker.
        unknown_peer(d.core.set_persistent_keepalive(
            d.clock.now(),
            &PublicKey::from_bytes(*pk),
            secs,
        ))
    }

    fn clear_allowed_ips(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
        unknown_peer(self.0.core.clear_allowed_ips(&PublicKey::from_bytes(*pk)))
    }

    fn add_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno> {
        unknown_peer(
            self.0
                .core
                .add_allowed_ip(&PublicKey::from_bytes(*pk), addr, cidr),
        )
    }

    fn remove_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno> {
        unknown_peer(
            self.0
                .core
                .remove_allowed_ip(&PublicKey::from_bytes(*pk), addr, cidr),
        )
    }
}

#[cfg(test)]
mod tests;
