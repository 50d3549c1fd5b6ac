//! The data plane: the threads that move packets between the TUN device and the UDP sockets
//! through the protocol core, in batches.
//!
//! ```text
//! tun-read:  read (a TSO super-packet, or a packet) ─ segment (offload.rs) ─┐  up to a batch
//!            prepare_send, in order (one DataPath per batch) ─ seal on the workers ─
//!            GSO runs per destination ─ one sendmmsg
//! udp-read:  recvmmsg (each message a GRO run of datagrams) ─ prepare_receive, in order ─
//!            open on the workers ─ finish_receive, in order ─ coalesce TCP (offload.rs) ─
//!            TUN writes
//! ```
//!
//! Order: every batch is handled as a whole by the thread that read it — the crypto of a batch
//! is spread over the workers and joined before anything is sent — so packets leave and arrive
//! in the order they were read, per peer and overall, without per-peer queues.
//!
//! Memory: each thread owns fixed buffers sized by the MTU and the batch (at most a few MiB);
//! nothing is allocated per packet and nothing queues between threads, so a flood beyond what
//! the machine can encrypt backs up in the kernel's socket and TUN queues, which drop, instead of
//! growing this process.
//!
//! Each offload can be switched off ([`DataPlaneConfig::from_env`]) to compare or to work
//! around a kernel that misbehaves.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;

use rwg_proto::device::{PeerId, Received, Sent, HEADROOM, TAILROOM};

use crate::driver::Driver;
use crate::lifecycle::{Shutdown, ShutdownHandle};
use crate::offload::{
    self, Coalescer, SegmentsOut, VnetHdr, MAX_SEGMENTS, MAX_SUPER_PACKET, VNET_HDR_LEN,
};
use crate::tun::{Tun, TunError};
use crate::udp::{self, InMsg, OutMsg, Scratch};

/// How long a reader blocks in `poll` before it looks at its generation (socket rebinding)
/// and at the stop flag.
pub(crate) const READER_POLL_MS: i32 = 1000;
/// Packets (segments) encrypted per batch, at most.
const SEND_SLOTS: usize = 128;
/// Messages per `recvmmsg`. With GRO each may hold up to 64 datagrams.
const RECV_MESSAGES: usize = 16;
/// Bytes per received message: a GRO run is at most 64 KiB.
const RECV_STRIDE: usize = 65536;
/// Most UDP payload bytes one GSO send may carry: 65535 − 20 (IPv4) − 8 (UDP). Larger fails
/// with EMSGSIZE.
const MAX_GSO_BYTES: usize = 65507;
/// A batch's slot buffer stays under this many bytes, however large the MTU.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Which parts of the data plane are on. Defaults: everything the host supports, and one
/// crypto worker per core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// TUN offloads (`IFF_VNET_HDR`, TSO/USO, coalescing on receive).
    pub tun_offload: bool,
    /// UDP GSO on send.
    pub udp_gso: bool,
    /// UDP GRO on receive.
    pub udp_gro: bool,
    /// Threads that encrypt and decrypt, counting the reading thread itself (1 = no workers).
    pub workers: usize,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The environment variable that switches offloads off: a comma-separated list of
/// `tun-offload`, `udp-gso`, `udp-gro` (or `all`).
pub const DISABLE_ENV: &str = "RWG_DISABLE";
/// The environment variable that sets the number of crypto threads (1 = none besides the
/// readers).
pub const WORKERS_ENV: &str = "RWG_WORKERS";

impl DataPlaneConfig {
    /// The defaults, with what `RWG_DISABLE` and `RWG_WORKERS` say. An unknown name or a bad
    /// number is an error that says what is accepted.
    pub fn from_env() -> Result<DataPlaneConfig, String> {
        DataPlaneConfig::parse(
            std::env::var(DISABLE_ENV).ok().as_deref(),
            std::env::var(WORKERS_ENV).ok().as_deref(),
        )
    }

    /// The defaults with the values of `RWG_DISABLE` and `RWG_WORKERS` applied.
    pub fn parse(disable: Option<&str>, workers: Option<&str>) -> Result<DataPlaneConfig, String> {
        let mut c = DataPlaneConfig::default();
        if let Some(list) = disable {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match name {
                    "tun-offload" => c.tun_offload = false,
                    "udp-gso" => c.udp_gso = false,
                    "udp-gro" => c.udp_gro = false,
                    "all" => {
                        c.tun_offload = false;
                        c.udp_gso = false;
                        c.udp_gro = false;
                    }
                    other => {
                        return Err(format!(
                            "{DISABLE_ENV}: unknown offload {other:?} (use a comma-separated list of tun-offload, udp-gso, udp-gro, all)"
                        ))
                    }
                }
            }
        }
        if let Some(n) = workers {
            c.workers = match n.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "{WORKERS_ENV}: {n:?} is not a number of threads from 1 to 256"
                    ))
                }
            };
        }
        Ok(c)
    }
}

/// Spreads the crypto of a batch over worker threads (nothing with one worker).
#[derive(Debug)]
pub(crate) struct Crypto {
    pool: Option<rayon::ThreadPool>,
}

impl Crypto {
    pub(crate) fn new(workers: usize) -> Crypto {
        let pool = (workers > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .thread_name(|i| format!("crypto-{i}"))
                    .build()
                    .map_err(|e| tracing::warn!(error = %e, "no crypto workers; encrypting on the reading threads"))
                    .ok()
            })
            .flatten();
        Crypto { pool }
    }

    /// Runs `f` on every item, spread over the workers when there are enough items to share.
    fn each<T: Send>(&self, items: &mut [T], f: impl Fn(&mut T) + Sync + Send) {
        use rayon::prelude::*;
        match &self.pool {
            Some(pool) if items.len() >= 4 => pool.install(|| items.par_iter_mut().for_each(f)),
            _ => items.iter_mut().for_each(f),
        }
    }
}

/// One packet of a send batch: its slot, and after `prepare_send` its job and result.
struct SealTask<'a> {
    slot: &'a mut [u8],
    packet_len: usize,
    job: Option<rwg_proto::device::SendJob>,
    /// Length of the sealed message at the start of `slot` (0: nothing to send).
    sealed: usize,
}

/// The TUN → UDP thread.
pub(crate) fn tun_to_udp(d: &Driver, tun: &Tun, shutdown: &ShutdownHandle, crypto: &Crypto) {
    let vnet = tun.offloads().vnet_hdr;
    let mut read_buf = vec![0u8; VNET_HDR_LEN + MAX_SUPER_PACKET];
    let mut slots: Vec<u8> = Vec::new();
    let mut lens = vec![0usize; SEND_SLOTS];
    let mut scratch = Scratch::new(SEND_SLOTS);
    let mut sent: Vec<usize> = Vec::with_capacity(SEND_SLOTS);
    // A packet read but not yet segmented because the batch was full.
    let mut held: Option<usize> = None;
    while !d.stopping() {
        if held.is_none() {
            match tun.wait_readable(READER_POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return d.fail(format!("waiting for the TUN: {e}")),
            }
        }
        let mtu = d.core().mtu().clamp(576, MAX_SUPER_PACKET);
        let stride = (HEADROOM + mtu + TAILROOM).next_multiple_of(64);
        let capacity = (MAX_BATCH_BYTES / stride).clamp(MAX_SEGMENTS, SEND_SLOTS);
        if slots.len() != capacity * stride {
            slots = vec![0u8; capacity * stride];
        }
        // 1. Read and split until the batch is full or the TUN is empty.
        let mut count = 0;
        loop {
            let n = match held.take() {
                Some(n) => n,
                None => match tun.read(&mut read_buf) {
                    Ok(n) => n,
                    Err(TunError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(TunError::Gone) => {
                        d.stop();
                        shutdown.shutdown(Shutdown::InterfaceDeleted);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading from the TUN");
                        break;
                    }
                },
            };
            let (hdr, packet) = if vnet {
                match VnetHdr::parse(&read_buf[..n]) {
                    Some(h) => (h, &read_buf[VNET_HDR_LEN..n]),
                    None => continue,
                }
            } else {
                (VnetHdr::default(), &read_buf[..n])
            };
            let needed = needed_slots(&hdr, packet.len());
            if count + needed > capacity && count > 0 {
                held = Some(n); // next batch
                break;
            }
            let mut out = SegmentsOut {
                buf: &mut slots[count * stride..],
                stride,
                headroom: HEADROOM,
                lens: &mut lens[count..capacity],
            };
            match offload::segment(&hdr, packet, &mut out) {
                Ok(k) => count += k,
                Err(e) => tracing::debug!(?e, len = packet.len(), "TUN packet not split; dropped"),
            }
            if count >= capacity {
                break;
            }
        }
        if count == 0 {
            continue;
        }
        // 2. Route and reserve counters, in order.
        let mut tasks: Vec<SealTask<'_>> = slots
            .chunks_mut(stride)
            .zip(&lens[..count])
            .map(|(slot, &packet_len)| SealTask {
                slot,
                packet_len,
                job: None,
                sealed: 0,
            })
            .collect();
        {
            let data_path = d.core().data_path();
            let now = d.clock().now();
            for t in &mut tasks {
                let packet = &t.slot[HEADROOM..HEADROOM + t.packet_len];
                match data_path.prepare_send(now, packet, stride) {
                    Ok(job) => t.job = Some(job),
                    Err(Sent::Dropped(reason)) => {
                        tracing::trace!(%reason, "outgoing packet dropped")
                    }
                    Err(_) => {}
                }
            }
        }
        // 3. Seal, on the workers.
        crypto.each(&mut tasks, |t| {
            if let Some(job) = &t.job {
                t.sealed = job.seal(t.slot, t.packet_len).unwrap_or(0);
            }
        });
        // 4. Send, in order, equal-sized messages to one destination as one GSO run.
        let sockets = d.sockets();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(count);
        let mut msgs: Vec<OutMsg> = Vec::new();
        // The peer of each message: a GSO run holds one peer's datagrams only, so that what
        // the socket refuses can be taken off the right peer's tx_bytes.
        let mut peers: Vec<PeerId> = Vec::new();
        let udp_gso = d.config().udp_gso;
        for t in &tasks {
            let (Some(job), true) = (&t.job, t.sealed > 0) else {
                continue;
            };
            let to = job.destination;
            let data = &t.slot[..t.sealed];
            let gso = udp_gso && sockets.gso_enabled(&to);
            let joins = gso
                && peers.last() == Some(&job.peer())
                && msgs.last().is_some_and(|m: &OutMsg| {
                    let seg = usize::from(m.segment);
                    let last_len = parts[m.parts.end - 1].len();
                    m.to == to
                        && m.parts.len() < MAX_SEGMENTS
                        && last_len == seg
                        && data.len() <= seg
                        && (m.parts.len() + 1) * seg <= MAX_GSO_BYTES
                });
            parts.push(data);
            if joins {
                if let Some(m) = msgs.last_mut() {
                    m.parts.end += 1;
                }
            } else {
                let at = parts.len() - 1;
                msgs.push(OutMsg {
                    to,
                    parts: at..at + 1,
                    segment: if gso { data.len() as u16 } else { 0 },
                });
                peers.push(job.peer());
            }
        }
        // A run of one needs no GSO header.
        for m in &mut msgs {
            if m.parts.len() == 1 {
                m.segment = 0;
            }
        }
        sent.clear();
        sent.resize(msgs.len(), 0);
        sockets.send_msgs(&msgs, &parts, &mut scratch, &mut sent);
        for ((m, peer), &took) in msgs.iter().zip(&peers).zip(&sent) {
            let wanted: usize = parts[m.parts.clone()].iter().map(|p| p.len()).sum();
            if took < wanted {
                d.core().report_unsent(*peer, (wanted - took) as u64);
            }
        }
    }
}

/// Slots a packet read from the TUN will need once split.
fn needed_slots(hdr: &VnetHdr, len: usize) -> usize {
    if hdr.gso_type & !offload::GSO_ECN == offload::GSO_NONE || hdr.gso_size == 0 {
        1
    } else {
        len.div_ceil(usize::from(hdr.gso_size)).max(1)
    }
}

/// One datagram of a receive batch.
struct OpenTask<'a> {
    datagram: &'a mut [u8],
    from: SocketAddr,
    job: Option<rwg_proto::device::ReceiveJob>,
    opened: bool,
}

/// The UDP → TUN thread of one socket.
pub(crate) fn udp_to_tun(
    d: &Driver,
    socket: &UdpSocket,
    tun: &Tun,
    generation: u64,
    crypto: &Crypto,
) {
    let offloads = tun.offloads();
    let vnet = offloads.vnet_hdr;
    let join = offloads.tso || offloads.uso;
    let mut buf = vec![0u8; RECV_MESSAGES * RECV_STRIDE];
    let mut metas = vec![
        InMsg {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
        };
        RECV_MESSAGES
    ];
    let mut scratch = Scratch::new(RECV_MESSAGES);
    let mut coalescer = Coalescer::with(offloads.tso, offloads.uso);
    let mut plain = vec![0u8; VNET_HDR_LEN + MAX_SUPER_PACKET];
    while !d.stopping() && d.generation() == generation {
        match udp::wait_readable(socket, READER_POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return d.fail(format!("waiting for UDP: {e}")),
        }
        let n = match udp::recv_msgs(socket, &mut buf, RECV_STRIDE, &mut metas, &mut scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
                tracing::trace!(error = %e, "UDP receive");
                continue;
            }
        };
        // Split GRO runs into their datagrams.
        let mut tasks: Vec<OpenTask<'_>> = Vec::new();
        for (msg, region) in metas[..n].iter().zip(buf.chunks_mut(RECV_STRIDE)) {
            let from = canonical(msg.from);
            let data = &mut region[..msg.len];
            let size = if msg.segment == 0 {
                msg.len.max(1)
            } else {
                msg.segment
            };
            for datagram in data.chunks_mut(size) {
                tasks.push(OpenTask {
                    datagram,
                    from,
                    job: None,
                    opened: false,
                });
            }
        }
        // Find the keypairs, in order; handshake messages are queued by the core.
        {
            let data_path = d.core().data_path();
            let now = d.clock().now();
            for t in &mut tasks {
                match data_path.prepare_receive(now, t.from, t.datagram) {
                    Ok(job) => t.job = Some(job),
                    Err(Received::Dropped(reason)) => {
                        tracing::trace!(%reason, from = %t.from, "datagram dropped")
                    }
                    Err(_) => {}
                }
            }
        }
        // Decrypt on the workers: only what has a keypair, so that a batch of handshake
        // messages or junk (a flood) never waits for a worker to be scheduled.
        tasks.retain(|t| t.job.is_some());
        crypto.each(&mut tasks, |t| {
            if let Some(job) = &t.job {
                t.opened = job.open(t.datagram).is_ok();
            }
        });
        // Replay window, roaming, timers and source checks, in order; then to the TUN.
        coalescer.clear();
        {
            let data_path = d.core().data_path();
            let now = d.clock().now();
            for t in &mut tasks {
                let Some(job) = t.job.take() else { continue };
                if !t.opened {
                    continue;
                }
                let Received::Packet { len, .. } = data_path.finish_receive(now, job, t.datagram)
                else {
                    continue;
                };
                let packet = &t.datagram[HEADROOM..HEADROOM + len];
                if join {
                    coalescer.push(packet);
                } else if vnet {
                    // The transport header in front is free: the plain virtio-net header fits.
                    let start = HEADROOM - VNET_HDR_LEN;
                    VnetHdr::default().write(&mut t.datagram[start..HEADROOM]);
                    write_tun(tun, &t.datagram[start..HEADROOM + len], &mut plain);
                } else {
                    write_tun(tun, packet, &mut plain);
                }
            }
        }
        if join {
            for packet in coalescer.packets() {
                write_tun(tun, packet, &mut plain);
            }
        }
    }
}

/// Writes one packet (with its virtio-net header when the TUN has them). A coalesced packet
/// the kernel refuses is split again and written segment by segment.
fn write_tun(tun: &Tun, packet: &[u8], spare: &mut [u8]) {
    match tun.write(packet) {
        Ok(_) => {}
        Err(TunError::Gone) => {}
        Err(TunError::Io(e))
            if tun.offloads().vnet_hdr && e.raw_os_error() == Some(libc::EINVAL) =>
        {
            let Some(hdr) = VnetHdr::parse(packet) else {
                return;
            };
            if hdr.gso_type == offload::GSO_NONE {
                return tracing::debug!(error = %e, "TUN write");
            }
            tracing::debug!(error = %e, "TUN refused a coalesced packet; writing its segments");
            let stride = VNET_HDR_LEN + usize::from(hdr.hdr_len) + usize::from(hdr.gso_size) + 64;
            let mut lens = [0usize; MAX_SEGMENTS];
            let room = spare.len() / stride.max(1);
            let mut out = SegmentsOut {
                buf: spare,
                stride,
                headroom: VNET_HDR_LEN,
                lens: &mut lens[..room.min(MAX_SEGMENTS)],
            };
            let Ok(k) = offload::segment(&hdr, &packet[VNET_HDR_LEN..], &mut out) else {
                return;
            };
            for i in 0..k {
                let slot = &mut spare[i * stride..i * stride + VNET_HDR_LEN + lens[i]];
                VnetHdr::default().write(slot);
                let _ = tun.write(slot);
            }
        }
        Err(e) => tracing::debug!(error = %e, "TUN write"),
    }
}

/// IPv4-mapped IPv6 sources are reported as IPv4, so that replies go out of the IPv4 socket.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl Driver {
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_and_bad_values_say_what_is_accepted() {
        let all_on = DataPlaneConfig::parse(None, None).expect("defaults");
        assert!(all_on.tun_offload && all_on.udp_gso && all_on.udp_gro);
        assert!(all_on.workers >= 1);
        let c = DataPlaneConfig::parse(Some("udp-gso, tun-offload"), Some("3")).expect("valid");
        assert!(!c.udp_gso && !c.tun_offload && c.udp_gro);
        assert_eq!(c.workers, 3);
        let c = DataPlaneConfig::parse(Some("all"), Some("1")).expect("valid");
        assert!(!c.udp_gso && !c.tun_offload && !c.udp_gro);
        assert_eq!(c.workers, 1);
        let e = DataPlaneConfig::parse(Some("tso"), None).expect_err("unknown name");
        assert!(e.contains("tun-offload, udp-gso, udp-gro, all"), "{e}");
        for bad in ["0", "-1", "many", "257"] {
            let e = DataPlaneConfig::parse(None, Some(bad)).expect_err("bad number");
            assert!(e.contains("from 1 to 256"), "{e}");
        }
    }

    #[test]
    fn needed_slots_counts_segments() {
        let gso = VnetHdr {
            gso_type: offload::GSO_TCPV4,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        assert_eq!(needed_slots(&gso, 2500), 3);
        assert_eq!(needed_slots(&gso, 1000), 1);
        assert_eq!(needed_slots(&VnetHdr::default(), 60000), 1);
    }
}
