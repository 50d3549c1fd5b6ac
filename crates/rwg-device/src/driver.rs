//! The driver: threads that move packets between the TUN device, the UDP sockets and the
//! protocol core, and the [`UapiDevice`] that applies `wg set` to the core.
//!
//! Threads:
//! - **tun-read**: reads IP packets in batches (non-blocking reads until the queue is empty,
//!   then `poll`), encrypts each in place under one [`DataPath`](rwg_proto::device::DataPath)
//!   guard per batch, and sends the datagrams.
//! - **udp-read-v4 / udp-read-v6**: receive datagrams in batches, decrypt in place under one
//!   guard per batch, write IP packets to the TUN. Handshake messages are queued by the core.
//! - **control**: sleeps until the core's next deadline (`poll_timeout`) or until a data thread
//!   wakes it because the core needs attention; runs `handle_timeout` and sends what the core
//!   queued (handshakes, keepalives, cookie replies, staged packets). There is no fixed tick.
//!
//! No allocation per packet: each thread owns its batch buffers. No device-wide lock per
//! packet: the core's tables are read-locked once per batch.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rwg_driver::{Clock, Transmitter, Wakeup};
use rwg_proto::crypto::{PresharedKey, PrivateKey, PublicKey};
use rwg_proto::device::{Device, Received, Sent, Transmit, HEADROOM, TAILROOM};

use crate::daemon::{Shutdown, ShutdownHandle, StartError};
use crate::tun::{Tun, TunError};
use crate::uapi::{DeviceSnapshot, Errno, PeerSnapshot, UapiDevice};
use crate::udp::{self, UdpSockets};

/// Packets handled per batch (per read guard of the core's tables).
const BATCH: usize = 32;
/// Largest IP packet a TUN read returns (without offloads).
const MAX_PACKET: usize = 65535;
/// How long a reader blocks in `poll` before it looks at its generation (socket rebinding).
const READER_POLL_MS: i32 = 1000;
/// The control thread re-reads the TUN's MTU at least this often.
const MTU_REFRESH: Duration = Duration::from_secs(30);

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
    stopping: AtomicBool,
}

impl Driver {
    /// A driver around a fresh core (OS RNG) with UDP sockets bound on `port` (0 = any).
    pub fn new(port: u16) -> Result<Arc<Driver>, StartError> {
        let sockets = UdpSockets::bind(port).map_err(|e| StartError(e.to_string()))?;
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
        }))
    }

    /// The protocol core.
    pub fn core(&self) -> &Device {
        &self.core
    }

    fn sockets(&self) -> Arc<UdpSockets> {
        Arc::clone(&self.sockets.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn fail(&self, why: String) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(h) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown(Shutdown::Failed(why));
        }
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
        let me = Arc::clone(self);
        let t = Arc::clone(&tun);
        spawn("tun-read", Box::new(move || me.tun_reader(&t, &shutdown)))?;
        let me = Arc::clone(self);
        spawn("control", Box::new(move || me.control_loop()))?;
        self.spawn_udp_readers()
            .map_err(|e| StartError(format!("cannot start UDP readers: {e}")))
    }

    fn spawn_udp_readers(self: &Arc<Self>) -> io::Result<()> {
        let Some(tun) = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(()); // not started yet: `start` spawns them
        };
        let generation = self.generation.load(Ordering::Acquire);
        let sockets = self.sockets();
        for (name, socket) in [("udp-read-v4", sockets.v4()), ("udp-read-v6", sockets.v6())] {
            let Some(socket) = socket else { continue };
            let socket = socket.try_clone()?;
            socket.set_nonblocking(true)?;
            let me = Arc::clone(self);
            let tun = Arc::clone(&tun);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || me.udp_reader(&socket, &tun, generation))?;
        }
        Ok(())
    }

    fn tun_reader(&self, tun: &Tun, shutdown: &ShutdownHandle) {
        let mut bufs = vec![vec![0u8; HEADROOM + MAX_PACKET + TAILROOM]; BATCH];
        let mut out: Vec<(usize, SocketAddr, usize)> = Vec::with_capacity(BATCH);
        while !self.stopping.load(Ordering::Relaxed) {
            match tun.wait_readable(READER_POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return self.fail(format!("waiting for the TUN: {e}")),
            }
            out.clear();
            {
                let data_path = self.core.data_path();
                let now = self.clock.now();
                for (i, buf) in bufs.iter_mut().enumerate() {
                    let n = match tun.read(&mut buf[HEADROOM..HEADROOM + MAX_PACKET]) {
                        Ok(n) => n,
                        Err(TunError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(TunError::Gone) => {
                            self.stopping.store(true, Ordering::Relaxed);
                            shutdown.shutdown(Shutdown::InterfaceDeleted);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading from the TUN");
                            break;
                        }
                    };
                    match data_path.encapsulate(now, buf, n) {
                        Sent::Transmit { destination, len } => out.push((i, destination, len)),
                        Sent::Staged => {}
                        Sent::Dropped(reason) => {
                            tracing::trace!(%reason, "outgoing packet dropped")
                        }
                    }
                }
            }
            let sockets = self.sockets();
            for &(i, destination, len) in &out {
                if let Err(e) = sockets.send_to(&bufs[i][..len], destination) {
                    tracing::debug!(error = %e, %destination, "send failed");
                }
            }
        }
    }

    fn udp_reader(&self, socket: &UdpSocket, tun: &Tun, generation: u64) {
        let mut bufs = vec![vec![0u8; MAX_PACKET]; BATCH];
        let mut out: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
        while !self.stopping.load(Ordering::Relaxed)
            && self.generation.load(Ordering::Acquire) == generation
        {
            match udp::wait_readable(socket, READER_POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return self.fail(format!("waiting for UDP: {e}")),
            }
            out.clear();
            {
                let data_path = self.core.data_path();
                let now = self.clock.now();
                for (i, buf) in bufs.iter_mut().enumerate() {
                    let (n, from) = match socket.recv_from(buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
                            tracing::trace!(error = %e, "UDP receive");
                            continue;
                        }
                    };
                    let from = canonical(from);
                    match data_path.decapsulate(now, from, &mut buf[..n]) {
                        Received::Packet { len, .. } => out.push((i, len)),
                        Received::Keepalive | Received::Handshake => {}
                        Received::Dropped(reason) => {
                            tracing::trace!(%reason, %from, "datagram dropped")
                        }
                    }
                }
            }
            for &(i, len) in &out {
                match tun.write(&bufs[i][HEADROOM..HEADROOM + len]) {
                    Ok(_) => {}
                    Err(TunError::Gone) => return,
                    Err(e) => tracing::debug!(error = %e, "TUN write"),
                }
            }
        }
    }

    /// The control path (rwg-driver's loop) plus this driver's own housekeeping: the TUN's MTU.
    fn control_loop(&self) {
        let mut driver = rwg_driver::Driver::new(Arc::clone(&self.core), self.clock);
        let w = Arc::clone(&self.waker);
        self.core.set_waker(Some(Arc::new(move || w.wake())));
        let mut out = UdpOut(self);
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

/// The control path's datagrams go out of the current UDP sockets.
struct UdpOut<'a>(&'a Driver);

impl Transmitter for UdpOut<'_> {
    fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) {
        let sockets = self.0.sockets();
        for d in t.datagrams(datagrams) {
            if let Err(e) = sockets.send_to(d, t.destination) {
                tracing::debug!(error = %e, destination = %t.destination, "send failed");
            }
        }
    }
}

/// IPv4-mapped IPv6 sources are reported as IPv4, so that replies go out of the IPv4 socket.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
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
        DeviceSnapshot {
            private_key: d.core.private_key().map(|k| *k.as_bytes()),
            listen_port: d.core.listen_port(),
            fwmark: d.fwmark.load(Ordering::Relaxed),
            peers: d
                .core
                .peers()
                .into_iter()
                .map(|p| PeerSnapshot {
                    public_key: *p.public_key.as_bytes(),
                    preshared_key: *p.preshared_key.as_bytes(),
                    endpoint: p.endpoint,
                    last_handshake: p.last_handshake.map(|t| (t.as_secs(), t.subsec_nanos())),
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: p.allowed_ips,
                })
                .collect(),
        }
    }

    fn own_public_key(&self) -> Option<[u8; 32]> {
        self.0.core.public_key().map(|k| *k.as_bytes())
    }

    fn set_private_key(&mut self, key: Option<[u8; 32]>) -> Result<(), Errno> {
        self.0.core.set_private_key(key.map(PrivateKey::from_bytes));
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

    fn set_preshared_key(&mut self, pk: &[u8; 32], psk: [u8; 32]) -> Result<(), Errno> {
        unknown_peer(
            self.0
                .core
                .set_preshared_key(&PublicKey::from_bytes(*pk), PresharedKey::from_bytes(psk)),
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
