//! The data plane: the threads that move packets between the TUN device and the UDP sockets
//! through the protocol core, in batches.
//!
//! ```text
//! tun-read:  read (a TSO super-packet, or a packet) ─ segment (offload.rs) ─┐  up to a batch
//!            prepare_send, in order (one DataPath per batch) ─ seal on the workers ─
//!            GSO runs per destination ─ one sendmmsg
//! udp-read:  recvmmsg (each message a GRO run of datagrams) ─ prepare_receive, in order ─
//!            open on the workers ─ finish_receive, in order ─ coalesce TCP (offload.rs) ─
//!            TUN writes ─ after a small round that emptied the socket, one tun-read batch
//!            if nobody is sending one (what the kernel queued on the TUN in answer)
//! ```
//!
//! Order: every batch is handled as a whole by the thread that read it (TUN batches under
//! one lock, whichever thread sends them) — the crypto of a batch
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

use rwg_proto::device::{PeerId, Received, Sent, HEADROOM, TAILROOM};

use crate::batch::extends_run;
use crate::driver::Driver;

use crate::offload::{
    self, Coalescer, SegmentsOut, VnetHdr, MAX_SEGMENTS, MAX_SUPER_PACKET, VNET_HDR_LEN,
};
use crate::tun::{Tun, TunError};
use crate::udp::{self, InMsg, LocalAddr, OutMsg, Scratch};

/// How long a reader blocks in `poll` before it looks at its generation (socket rebinding)
/// and at the stop flag.
pub(crate) const READER_POLL_MS: i32 = 1000;
/// Packets (segments) encrypted per batch, at most.
const SEND_SLOTS: usize = 128;
/// Messages per `recvmmsg`. With GRO each may hold up to 64 datagrams.
const RECV_MESSAGES: usize = 16;
/// Bytes per received message: a GRO run is at most 64 KiB.
const RECV_STRIDE: usize = 65536;
/// A UDP reader sends what its TUN writes were answered with only after rounds of at most
/// this many datagrams (see [`udp_to_tun`]).
const QUIET_ROUND: usize = 8;
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

/// Estimated CPU time to seal or open one packet, besides its bytes: ring's ChaCha20-Poly1305
/// takes about 0.27 µs for 64 bytes and 1.5 µs for 1420 bytes on the machines measured in
/// BENCHMARKS.md ("Crypto primitives"), i.e. about 0.2 µs plus 0.9 ns per byte.
const CRYPTO_NS_PER_PACKET: u64 = 200;
/// Picoseconds per byte of the same estimate (0.9 ns).
const CRYPTO_PS_PER_BYTE: u64 = 900;
/// A batch is shared with the workers only when its crypto is estimated to take at least this
/// long: handing work to a sleeping thread and waiting for it costs a few context switches
/// (5–15 µs each on the 2-core VMs measured), which a ping (one packet) or a burst of small
/// packets would pay without gaining anything. 128 packets of 64 bytes stay on the reading
/// thread; 32 or more full-size packets are shared.
const SHARE_MIN_NS: u64 = 48_000;

/// Estimated nanoseconds of crypto for one packet of `bytes` bytes.
fn crypto_ns(bytes: usize) -> u64 {
    CRYPTO_NS_PER_PACKET + bytes as u64 * CRYPTO_PS_PER_BYTE / 1000
}

/// Spreads the crypto of a batch over worker threads (nothing with one worker). The thread
/// that read the batch does a share itself; small batches stay on it entirely.
#[derive(Debug)]
pub(crate) struct Crypto {
    /// `workers - 1` threads: the reading thread is the other one.
    pool: Option<rayon::ThreadPool>,
    workers: usize,
}

impl Crypto {
    pub(crate) fn new(workers: usize) -> Crypto {
        let pool = (workers > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers - 1)
                    .thread_name(|i| format!("crypto-{i}"))
                    .build()
                    .map_err(|e| tracing::warn!(error = %e, "no crypto workers; encrypting on the reading threads"))
                    .ok()
            })
            .flatten();
        let workers = if pool.is_some() { workers } else { 1 };
        Crypto { pool, workers }
    }

    /// How many threads a batch of `packets` packets whose crypto is estimated at `ns`
    /// nanoseconds is split over (1: the reading thread alone). Each share carries at least
    /// half of [`SHARE_MIN_NS`], so that on many cores a middling batch is not cut into
    /// hand-offs that cost more than they save.
    fn shares(&self, packets: usize, ns: u64) -> usize {
        if self.workers < 2 || packets < 2 || ns < SHARE_MIN_NS {
            return 1;
        }
        let by_cost = usize::try_from(ns / (SHARE_MIN_NS / 2)).unwrap_or(usize::MAX);
        self.workers.min(packets).min(by_cost)
    }

    /// Runs `f` on every item; `bytes` says how many bytes an item's crypto covers (for the
    /// estimate of whether sharing pays). When it does, the items are cut into contiguous
    /// chunks of about equal estimated cost: the first is done on the calling thread, the
    /// others on the workers, and this returns once all are done. Items stay in place, so
    /// whatever the caller does with them afterwards happens in their order.
    fn each<T: Send>(
        &self,
        items: &mut [T],
        bytes: impl Fn(&T) -> usize,
        f: impl Fn(&mut T) + Sync + Send,
    ) {
        let pool = match &self.pool {
            Some(pool) if items.len() >= 2 => pool,
            _ => return items.iter_mut().for_each(f),
        };
        let total: u64 = items.iter().map(|t| crypto_ns(bytes(t))).sum();
        let shares = self.shares(items.len(), total);
        if shares < 2 {
            return items.iter_mut().for_each(f);
        }
        let target = total.div_ceil(shares as u64);
        // How many leading items of `items` make up one share (at least one): the share ends
        // before or after the item that reaches the target, whichever is nearer to it.
        let cut = |items: &[T]| {
            let mut sum = 0;
            for (i, t) in items.iter().enumerate() {
                let cost = crypto_ns(bytes(t));
                if sum + cost >= target {
                    return if i > 0 && sum + cost - target > target - sum {
                        i
                    } else {
                        i + 1
                    };
                }
                sum += cost;
            }
            items.len()
        };
        let f = &f;
        pool.in_place_scope(|scope| {
            let n = cut(items);
            let (mine, mut rest) = items.split_at_mut(n);
            for share in 1..shares {
                if rest.is_empty() {
                    break;
                }
                let n = if share + 1 == shares {
                    rest.len()
                } else {
                    cut(rest)
                };
                let (theirs, others) = std::mem::take(&mut rest).split_at_mut(n);
                rest = others;
                scope.spawn(move |_| theirs.iter_mut().for_each(f));
            }
            mine.iter_mut().for_each(f);
        });
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

/// The TUN → UDP half's buffers. Whoever holds the lock sends the next batch: the tun-read
/// thread, or a UDP reader that has just written to the TUN and found its socket empty
/// ([`udp_to_tun`]). The second matters for latency, not throughput: a packet written to the
/// TUN is handled by the kernel inside that `write`, so the answer to it (a ping's reply, a
/// TCP acknowledgement) is already queued on the TUN when the write returns, and the UDP
/// reader sends it at once instead of waking the sleeping tun-read thread to do it — a
/// cross-thread wake-up saved per round trip on an idle tunnel. One lock holder at a time
/// keeps batches, and so packets, in the order they were read.
pub(crate) struct TunSender {
    state: std::sync::Mutex<SendState>,
}

struct SendState {
    read_buf: Vec<u8>,
    slots: Vec<u8>,
    lens: Vec<usize>,
    scratch: Scratch,
    sent: Vec<usize>,
    /// A packet read but not yet segmented because the batch was full (`read_buf` holds it).
    held: Option<usize>,
}

/// How a send batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendBatch {
    /// The TUN had nothing more.
    Drained,
    /// More may be waiting: the batch was full, or a packet is held for the next one.
    More,
    /// The interface was deleted.
    Gone,
}

impl std::fmt::Debug for TunSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunSender").finish_non_exhaustive()
    }
}

impl TunSender {
    pub(crate) fn new() -> TunSender {
        TunSender {
            state: std::sync::Mutex::new(SendState {
                read_buf: vec![0u8; VNET_HDR_LEN + MAX_SUPER_PACKET],
                slots: Vec::new(),
                lens: vec![0usize; SEND_SLOTS],
                scratch: Scratch::new(SEND_SLOTS),
                sent: Vec::with_capacity(SEND_SLOTS),
                held: None,
            }),
        }
    }

    /// Sends one batch if nobody else is sending, without waiting for the TUN, and without
    /// leaving a packet held: a batch that fills up stops before reading more, so the TUN
    /// stays readable for the tun-read thread.
    fn try_send(&self, d: &Driver, tun: &Tun, crypto: &Crypto) {
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        if send_batch(d, tun, crypto, &mut st, false) == SendBatch::Gone {
            d.interface_gone();
        }
    }
}

/// The TUN → UDP thread.
pub(crate) fn tun_to_udp(d: &Driver, tun: &Tun, sender: &TunSender, crypto: &Crypto) {
    // Whether the last batch ended because the TUN had nothing more (else more is waiting).
    let mut drained = true;
    // Whether the last try found a UDP reader sending (see below).
    let mut contended = false;
    let readable = crate::sys::poll::Readable::new(tun);
    while !d.stopping() {
        if drained {
            match readable.wait(READER_POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return d.fail(format!("waiting for the TUN: {e}")),
            }
        }
        // A UDP reader holding the lock is most likely sending what woke us (the answer to
        // what it wrote): wait for the TUN again rather than for the lock, which would cost
        // both threads a futex call and this one a wake-up to find the TUN empty. If the TUN
        // is still readable after that, wait for the lock.
        let mut st = match sender.state.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::WouldBlock) if !contended => {
                contended = true;
                drained = true;
                std::thread::yield_now();
                continue;
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                sender.state.lock().unwrap_or_else(|e| e.into_inner())
            }
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        };
        contended = false;
        match send_batch(d, tun, crypto, &mut st, true) {
            SendBatch::Drained => drained = true,
            SendBatch::More => drained = false,
            SendBatch::Gone => return d.interface_gone(),
        }
    }
}

/// Reads a batch from the TUN (a TSO super-packet, or packets, until the batch is full or the
/// TUN is empty), seals it and sends it. With `hold`, a packet that does not fit is kept for
/// the next batch; without, reading stops while a super-packet could still not fit.
fn send_batch(d: &Driver, tun: &Tun, crypto: &Crypto, st: &mut SendState, hold: bool) -> SendBatch {
    let SendState {
        read_buf,
        slots,
        lens,
        scratch,
        sent,
        held,
    } = st;
    let vnet = tun.offloads().vnet_hdr;
    let mtu = d.core().mtu().clamp(576, MAX_SUPER_PACKET);
    let stride = (HEADROOM + mtu + TAILROOM).next_multiple_of(64);
    let capacity = (MAX_BATCH_BYTES / stride).clamp(MAX_SEGMENTS, SEND_SLOTS);
    if slots.len() != capacity * stride {
        *slots = vec![0u8; capacity * stride];
    }
    // 1. Read and split until the batch is full or the TUN is empty.
    let mut count = 0;
    let mut ended = SendBatch::More;
    loop {
        if held.is_none() && !may_read(hold, count, capacity) {
            break;
        }
        let n = match held.take() {
            Some(n) => n,
            None => match tun.read(read_buf) {
                Ok(n) => n,
                Err(TunError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    ended = SendBatch::Drained;
                    break;
                }
                Err(TunError::Gone) => return SendBatch::Gone,
                Err(e) => {
                    tracing::warn!(error = %e, "reading from the TUN");
                    ended = SendBatch::Drained;
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
            *held = Some(n); // next batch
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
        return ended;
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
    // 3. Seal, shared with the workers if the batch is big enough.
    crypto.each(
        &mut tasks,
        |t| t.packet_len,
        |t| {
            if let Some(job) = &t.job {
                t.sealed = job.seal(t.slot, t.packet_len).unwrap_or(0);
            }
        },
    );
    // 4. Send, in order, equal-sized messages to one destination as one GSO run.
    let sockets = d.sockets();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(count);
    let mut msgs: Vec<OutMsg> = Vec::new();
    // The peer of each message: a GSO run holds one peer's datagrams only, so that what
    // the socket refuses can be taken off the right peer's tx_bytes.
    let mut peers: Vec<PeerId> = Vec::new();
    let udp_gso = d.config().udp_gso;
    // The sticky source of the last destination looked up (one lookup per peer and run).
    let mut source_of: Option<(PeerId, SocketAddr, Option<LocalAddr>)> = None;
    for t in &tasks {
        let (Some(job), true) = (&t.job, t.sealed > 0) else {
            continue;
        };
        let to = job.destination;
        let data = &t.slot[..t.sealed];
        let gso = udp_gso && sockets.gso_enabled(&to);
        let joins = gso
            && peers.last() == Some(&job.peer())
            && msgs
                .last()
                .is_some_and(|m| extends_run(m, parts[m.parts.end - 1].len(), to, data.len()));
        let source = match source_of {
            Some((p, a, source)) if p == job.peer() && a == to => source,
            _ => {
                let source = sockets.source_for(Some(job.peer()), to);
                source_of = Some((job.peer(), to, source));
                source
            }
        };
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
                source,
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
    sockets.send_msgs(&msgs, &parts, scratch, sent);
    for ((m, peer), &took) in msgs.iter().zip(&peers).zip(sent.iter()) {
        let wanted: usize = parts[m.parts.clone()].iter().map(|p| p.len()).sum();
        if took < wanted {
            d.core().report_unsent(*peer, (wanted - took) as u64);
        }
    }
    ended
}

/// Whether a batch holding `count` of `capacity` slots may read another packet from the TUN.
/// With `hold` it always may (a packet that does not fit waits for the next batch); without,
/// only while even a super-packet of [`MAX_SEGMENTS`] segments would fit, so that a batch
/// sent by a UDP reader never leaves a packet behind that nobody is awake to send.
fn may_read(hold: bool, count: usize, capacity: usize) -> bool {
    hold || count + MAX_SEGMENTS <= capacity
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
    /// The local address it was sent to (for replies to leave from it).
    local: Option<LocalAddr>,
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
    sender: &TunSender,
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
            local: None,
        };
        RECV_MESSAGES
    ];
    let sockets = d.sockets();
    // What was last told to `learn_source`, and the sticky generation then: told again only
    // when it changes (a read lock per datagram otherwise).
    let mut learned: Option<(PeerId, SocketAddr, LocalAddr, u64)> = None;
    let mut scratch = Scratch::new(RECV_MESSAGES);
    let mut coalescer = Coalescer::with(offloads.tso, offloads.uso);
    let mut plain = vec![0u8; VNET_HDR_LEN + MAX_SUPER_PACKET];
    // Whether the last receive left the socket's queue empty: only then is it worth waiting
    // (under load the next recvmmsg has messages at once, and a poll first is a wasted call).
    let mut drained = true;
    let readable = crate::sys::poll::Readable::new(socket);
    while !d.stopping() && d.generation() == generation {
        if drained {
            match readable.wait(READER_POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return d.fail(format!("waiting for UDP: {e}")),
            }
        }
        let n = match udp::recv_msgs(socket, &mut buf, RECV_STRIDE, &mut metas, &mut scratch) {
            Ok(n) => {
                drained = n < RECV_MESSAGES;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                continue;
            }
            Err(e) => {
                // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
                tracing::trace!(error = %e, "UDP receive");
                drained = true;
                continue;
            }
        };
        let mut wrote = false;
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
                    local: msg.local,
                    job: None,
                    opened: false,
                });
            }
        }
        let datagrams = tasks.len();
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
                    Err(Received::Handshake) => {
                        if let Some(local) = t.local {
                            sockets.note_handshake_source(t.from, local);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        // Decrypt, shared with the workers if the batch is big enough: only what has a
        // keypair, so that a batch of handshake messages or junk (a flood) costs no crypto
        // scheduling at all.
        tasks.retain(|t| t.job.is_some());
        crypto.each(
            &mut tasks,
            |t| t.datagram.len(),
            |t| {
                if let Some(job) = &t.job {
                    t.opened = job.open(t.datagram).is_ok();
                }
            },
        );
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
                let peer = job.peer();
                let received = data_path.finish_receive(now, job, t.datagram);
                if let (Received::Packet { .. } | Received::Keepalive, Some(local)) =
                    (&received, t.local)
                {
                    // Authenticated: replies to this peer leave from where it wrote to.
                    let generation = sockets.sticky_generation();
                    if learned != Some((peer, t.from, local, generation)) {
                        sockets.learn_source(peer, t.from, local);
                        learned = Some((peer, t.from, local, generation));
                    }
                }
                let Received::Packet { len, .. } = received else {
                    continue;
                };
                let packet = &t.datagram[HEADROOM..HEADROOM + len];
                wrote = true;
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
                wrote = true;
            }
        }
        // What answers the packets just written (a ping's reply) is on the TUN by now. Only
        // after a small round: that is a quiet tunnel, where the wake-up saved is most of the
        // latency; under load the read it costs (often for nothing, on a one-way flow) is
        // not worth it, and the answers go out with tun-read's next batch.
        if wrote && drained && datagrams <= QUIET_ROUND {
            sender.try_send(d, tun, crypto);
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

    /// The name of the thread each item was handled on, for a batch of packets of the given
    /// sizes given to `crypto`.
    fn threads_used(crypto: &Crypto, sizes: &[usize]) -> Vec<String> {
        let mut items: Vec<(usize, usize, Option<String>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i, n, None))
            .collect();
        crypto.each(
            &mut items,
            |(_, size, _)| *size,
            |(_, _, on)| {
                assert!(on.is_none(), "an item handled twice");
                *on = std::thread::current().name().map(str::to_owned);
            },
        );
        // Every item handled once, and in place.
        for (i, (index, _, on)) in items.iter().enumerate() {
            assert_eq!(*index, i);
            assert!(on.is_some(), "item {i} was not handled");
        }
        items
            .into_iter()
            .map(|(_, _, on)| on.unwrap_or_default())
            .collect()
    }

    fn me() -> String {
        std::thread::current()
            .name()
            .map(str::to_owned)
            .unwrap_or_default()
    }

    #[test]
    fn small_batches_stay_on_the_reading_thread_and_big_ones_are_shared() {
        let me = me();
        let two = Crypto::new(2);
        // A ping, and a burst of 128 small packets: too little crypto to pay for a hand-off.
        for (packets, size) in [(1, 84), (3, 1420), (SEND_SLOTS, 64)] {
            let on = threads_used(&two, &vec![size; packets]);
            assert!(on.iter().all(|t| *t == me), "{packets} × {size} B: {on:?}");
        }
        // A batch of full-size packets: the first half here, the second on the worker.
        let on = threads_used(&two, &[1420; 64]);
        assert!(on[..32].iter().all(|t| *t == me), "{on:?}");
        assert!(on[32..].iter().all(|t| t == "crypto-0"), "{on:?}");
        // One worker: everything stays here, however big.
        let one = Crypto::new(1);
        assert!(threads_used(&one, &[1420; SEND_SLOTS])
            .iter()
            .all(|t| *t == me));
        // Three: three contiguous chunks, two of them on the pool's two threads.
        let three = Crypto::new(3);
        let on = threads_used(&three, &[1420; 90]);
        assert!(on[..30].iter().all(|t| *t == me), "{on:?}");
        assert!(on[30..].iter().all(|t| t.starts_with("crypto-")), "{on:?}");
        assert!(on[30..60].windows(2).all(|w| w[0] == w[1]), "{on:?}");
        assert!(on[60..].windows(2).all(|w| w[0] == w[1]), "{on:?}");
    }

    #[test]
    fn shares_are_cut_by_estimated_cost_not_by_count() {
        let me = me();
        // 40 full-size packets, then 40 ACK-sized ones: half the items are far less than half
        // the work, so the reading thread's share ends well before the middle.
        let sizes: Vec<usize> = [1420; 40].into_iter().chain([64; 40]).collect();
        let on = threads_used(&Crypto::new(2), &sizes);
        let mine = on.iter().take_while(|t| **t == me).count();
        assert!(on[mine..].iter().all(|t| t == "crypto-0"), "{on:?}");
        assert!(
            (1..40).contains(&mine),
            "the reading thread took {mine} of {on:?}"
        );
        // The two shares differ by at most one packet's estimate.
        let cost = |s: &[usize]| s.iter().map(|&n| crypto_ns(n)).sum::<u64>();
        let (here, there) = (cost(&sizes[..mine]), cost(&sizes[mine..]));
        assert!(
            here.abs_diff(there) <= crypto_ns(1420),
            "{here} ns here, {there} ns there"
        );
    }

    #[test]
    fn the_sharing_estimate_follows_packets_and_bytes() {
        // ≈ 0.27 µs for 64 bytes and ≈ 1.5 µs for 1420 (BENCHMARKS.md, crypto primitives).
        assert!((250..300).contains(&crypto_ns(64)));
        assert!((1400..1600).contains(&crypto_ns(1420)));
        let two = Crypto::new(2);
        assert_eq!(
            two.shares(1, crypto_ns(65535)),
            1,
            "one packet is never split"
        );
        assert_eq!(two.shares(SEND_SLOTS, SEND_SLOTS as u64 * crypto_ns(64)), 1);
        assert_eq!(two.shares(40, 40 * crypto_ns(1420)), 2);
        let eight = Crypto::new(8);
        assert_eq!(
            eight.shares(3, 3 * crypto_ns(65535)),
            3,
            "no more shares than packets"
        );
        // On many cores a batch just big enough to share is not cut eight ways.
        assert_eq!(eight.shares(40, 40 * crypto_ns(1420)), 2);
        assert_eq!(
            eight.shares(SEND_SLOTS, SEND_SLOTS as u64 * crypto_ns(1420)),
            7
        );
        assert_eq!(Crypto::new(1).shares(SEND_SLOTS, u64::MAX), 1);
    }

    #[test]
    fn a_batch_that_may_not_hold_stops_while_any_packet_still_fits() {
        // Every batch can take a whole super-packet first.
        let smallest = MAX_SEGMENTS;
        assert!(may_read(false, 0, smallest));
        assert!(!may_read(false, 1, smallest));
        for capacity in [MAX_SEGMENTS, SEND_SLOTS] {
            for count in 0..=capacity {
                // Without holding, whatever is read next fits: the worst case is a
                // super-packet of MAX_SEGMENTS segments.
                if may_read(false, count, capacity) {
                    assert!(count + MAX_SEGMENTS <= capacity, "{count}/{capacity}");
                }
                assert!(may_read(true, count, capacity));
            }
            // ... and it still fills up: it stops only with fewer than MAX_SEGMENTS free.
            assert!(may_read(false, capacity - MAX_SEGMENTS, capacity));
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
