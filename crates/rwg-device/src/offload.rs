//! TUN offloads in userspace: splitting the super-packets a TUN device hands us when TSO/USO is
//! on into packets the tunnel can carry, and joining received TCP segments of one flow back into
//! super-packets the kernel takes in one write (its GRO, done by us). Pure, safe code: the
//! system calls that turn the offloads on are in `sys::tun`.
//!
//! With `IFF_VNET_HDR`, every packet read from or written to the TUN device is preceded by a
//! [`VnetHdr`] (`struct virtio_net_hdr`, 10 bytes, little-endian) that says whether the packet
//! is a GSO super-packet (`gso_type`, `gso_size` = the MSS or UDP segment payload size) and
//! whether its L4 checksum still has to be completed (`NEEDS_CSUM` with `csum_start` and
//! `csum_offset`; the field then holds the pseudo-header sum).
//!
//! - [`segment`]: one packet read from the TUN → IP packets of at most `gso_size` payload each,
//!   with lengths, IPv4 identifications and header checksums adjusted, TCP sequence numbers and
//!   flags per segment (FIN/PSH only on the last, CWR only on the first), and every L4
//!   checksum computed in full. IPv4 and IPv6; TCP (TSO4/TSO6) and UDP (USO).
//! - [`Coalescer`]: decrypted IP packets → TCP segments that continue each other (same flow,
//!   next sequence number, same ACK, flags and options, all but the last of full size) joined
//!   into one packet with a TCPV4/TCPV6 header of `gso_size` = the segment size, checksum left
//!   to the kernel (`NEEDS_CSUM`: the AEAD already authenticated every byte end to end); every
//!   other packet passes through unchanged with a plain header.

use std::net::IpAddr;

/// Size of `struct virtio_net_hdr` (no `num_buffers`: the TUN device's default header size).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into `gso_type` when the packets carry ECN-CE.
pub const GSO_ECN: u8 = 0x80;

/// Largest IP packet: the IPv4 total length field's limit, and the TUN's with TSO.
pub const MAX_SUPER_PACKET: usize = 65535;
/// Most segments one super-packet is split into or one coalesced packet holds (the kernel's
/// GSO and GRO limit).
pub const MAX_SEGMENTS: usize = 64;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// The header in front of every packet on a TUN device with `IFF_VNET_HDR`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` (and `DATA_VALID`, which we never set).
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the IP and L4 headers.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into `out[..VNET_HDR_LEN]`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a packet from the TUN could not be split. The packet is dropped (and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers too short, lengths inconsistent, or the header asks for what the packet isn't.
    Malformed,
    /// A GSO type we did not turn on (UFO, SCTP).
    Unsupported,
    /// More segments than the output has room for.
    TooManySegments,
}

// ----- checksums (RFC 1071) -----

/// Adds `data` to a running ones' complement sum (big-endian 16-bit words).
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves: no overflow of u64 for any realistic packet length.
        sum += w >> 32;
        sum += w & 0xffff_ffff;
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum into the 16-bit ones' complement checksum (complemented).
pub fn checksum_finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum of TCP/UDP (RFC 793, RFC 8200 §8.1).
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u64 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        _ => {}
    }
    sum + u64::from(proto) + l4_len as u64
}

/// What [`segment`] and the coalescer need of an IP packet's headers.
#[derive(Clone, Copy, Debug)]
struct IpInfo {
    v6: bool,
    /// Offset of the L4 header.
    l4: usize,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    /// Total length from the IP header (never more than the buffer).
    total: usize,
}

fn ip_info(p: &[u8]) -> Option<IpInfo> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            // Fragments are passed through whole, never split or joined.
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if total < ihl || total > p.len() || frag & 0x3fff != 0 {
                return None;
            }
            Some(IpInfo {
                v6: false,
                l4: ihl,
                proto: p[9],
                src: IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?),
                dst: IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?),
                total,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            if total > p.len() {
                return None;
            }
            // Extension headers are not walked: packets with them are passed through.
            Some(IpInfo {
                v6: true,
                l4: 40,
                proto: p[6],
                src: IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?),
                dst: IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?),
                total,
            })
        }
        _ => None,
    }
}

/// Sets the IP length fields of a packet of `total` bytes (and the IPv4 header checksum).
fn set_ip_len(p: &mut [u8], info: &IpInfo, total: usize) {
    if info.v6 {
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = checksum_finish(checksum_add(0, &p[..info.l4]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Completes the L4 checksum of a whole packet from scratch.
fn fill_l4_checksum(p: &mut [u8], info: &IpInfo) {
    let l4_len = info.total - info.l4;
    let field = match info.proto {
        PROTO_TCP => info.l4 + 16,
        PROTO_UDP => info.l4 + 6,
        _ => return,
    };
    p[field..field + 2].fill(0);
    let sum = pseudo_header_sum(info.src, info.dst, info.proto, l4_len);
    let mut c = checksum_finish(checksum_add(sum, &p[info.l4..info.total]));
    if info.proto == PROTO_UDP && c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Where [`segment`] writes: packet `i` at `buf[i * stride + headroom..]`, its length in
/// `lens[i]`.
#[derive(Debug)]
pub struct SegmentsOut<'a> {
    /// The output slots, back to back.
    pub buf: &'a mut [u8],
    /// Bytes per slot.
    pub stride: usize,
    /// Bytes left free in front of each packet (for the transport header).
    pub headroom: usize,
    /// The length of each packet written.
    pub lens: &'a mut [usize],
}

impl SegmentsOut<'_> {
    fn slots(&self) -> usize {
        (self.buf.len() / self.stride.max(1)).min(self.lens.len())
    }
    fn slot(&mut self, i: usize, len: usize) -> Result<&mut [u8], OffloadError> {
        if i >= self.slots() || self.headroom + len > self.stride {
            return Err(OffloadError::TooManySegments);
        }
        self.lens[i] = len;
        let at = i * self.stride + self.headroom;
        Ok(&mut self.buf[at..at + len])
    }
}

/// Splits `packet` (read from the TUN after `hdr`) into IP packets carrying at most
/// `hdr.gso_size` payload bytes each. Returns how many were written to `out`. A packet that is
/// not a GSO packet is copied whole, its checksum completed if `NEEDS_CSUM` asks for it.
pub fn segment(
    hdr: &VnetHdr,
    packet: &[u8],
    out: &mut SegmentsOut<'_>,
) -> Result<usize, OffloadError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let dst = out.slot(0, packet.len())?;
        dst.copy_from_slice(packet);
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_partial_checksum(dst, hdr)?;
        }
        return Ok(1);
    }
    let info = ip_info(packet).ok_or(OffloadError::Malformed)?;
    let (proto, v6) = match gso {
        GSO_TCPV4 => (PROTO_TCP, false),
        GSO_TCPV6 => (PROTO_TCP, true),
        GSO_UDP_L4 => (PROTO_UDP, info.v6),
        _ => return Err(OffloadError::Unsupported),
    };
    if info.proto != proto || info.v6 != v6 || hdr.gso_size == 0 {
        return Err(OffloadError::Malformed);
    }
    let l4_hdr = match proto {
        PROTO_TCP => {
            let doff =
                usize::from(*packet.get(info.l4 + 12).ok_or(OffloadError::Malformed)? >> 4) * 4;
            if doff < 20 {
                return Err(OffloadError::Malformed);
            }
            doff
        }
        _ => 8,
    };
    let hdrs = info.l4 + l4_hdr;
    if hdrs > info.total {
        return Err(OffloadError::Malformed);
    }
    let payload = &packet[hdrs..info.total];
    let mss = usize::from(hdr.gso_size);
    let count = payload.len().div_ceil(mss).max(1);
    if count > out.slots() {
        return Err(OffloadError::TooManySegments);
    }
    let first_id = u16::from_be_bytes([packet[4], packet[5]]);
    let seq = u32::from_be_bytes(
        packet
            .get(info.l4 + 4..info.l4 + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Malformed)?,
    );
    for (i, chunk) in payload.chunks(mss).enumerate().chain(
        // An empty payload still yields one (header-only) packet.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        let total = hdrs + chunk.len();
        let p = out.slot(i, total)?;
        p[..hdrs].copy_from_slice(&packet[..hdrs]);
        p[hdrs..].copy_from_slice(chunk);
        let last = i + 1 == count;
        if !info.v6 {
            // Every segment gets the next IPv4 identification, as the kernel's TSO does.
            p[4..6].copy_from_slice(&first_id.wrapping_add(i as u16).to_be_bytes());
        }
        set_ip_len(p, &info, total);
        match proto {
            PROTO_TCP => {
                let s = seq.wrapping_add((i * mss) as u32);
                p[info.l4 + 4..info.l4 + 8].copy_from_slice(&s.to_be_bytes());
                let flags = &mut p[info.l4 + 13];
                if !last {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    *flags &= !TCP_CWR;
                }
            }
            _ => {
                let udp_len = (total - info.l4) as u16;
                p[info.l4 + 4..info.l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
            }
        }
        fill_l4_checksum(p, &IpInfo { total, ..info });
    }
    Ok(count)
}

/// Completes a checksum left partial by the kernel (`NEEDS_CSUM` on a single packet): the field
/// holds the pseudo-header sum, so the sum from `csum_start` to the end is the checksum.
fn complete_partial_checksum(p: &mut [u8], hdr: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > p.len() || start > p.len() {
        return Err(OffloadError::Malformed);
    }
    let mut c = checksum_finish(checksum_add(0, &p[start..]));
    let is_udp = ip_info(p).is_some_and(|i| i.proto == PROTO_UDP && i.l4 == start);
    if is_udp && c == 0 {
        c = 0xffff;
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ----- coalescing (receive side) -----

/// A TCP or UDP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    ports: [u8; 4],
}

/// A run of segments being joined, in a buffer of its own (vnet header, then the packet).
#[derive(Debug, Default)]
struct Run {
    buf: Vec<u8>,
    key: Option<FlowKey>,
    v6: bool,
    /// IP + L4 header length.
    hdrs: usize,
    /// Payload size of the first segment: every other must equal it, but the last may be less.
    seg_size: usize,
    segments: usize,
    next_seq: u32,
    /// A shorter segment, or PSH, ended it: nothing more may join.
    closed: bool,
    /// Lengths and headers are final.
    finished: bool,
}

impl Run {
    fn packet(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }
}

/// Where each packet to write is.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// In `out` at (offset, length), vnet header included.
    Plain(usize, usize),
    /// Run number `n`.
    Run(usize),
}

/// Joins received TCP segments (and, where the TUN does USO, UDP datagrams) into
/// super-packets for the TUN (see the module docs). Feed it the decrypted packets of a batch
/// with [`push`](Self::push), then take the packets to write with [`packets`](Self::packets),
/// and [`clear`](Self::clear) it for the next batch. Memory is bounded: at most [`MAX_RUNS`]
/// runs of at most [`MAX_SUPER_PACKET`] bytes, buffers reused.
#[derive(Debug)]
pub struct Coalescer {
    /// Packets passed through, each preceded by its vnet header.
    out: Vec<u8>,
    pending: Vec<Pending>,
    runs: Vec<Run>,
    /// Runs in use in this batch (`runs[..active]`).
    active: usize,
    join_tcp: bool,
    join_udp: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// Flows joined at once per batch; a segment of a further flow passes through unjoined.
pub const MAX_RUNS: usize = 16;

impl Coalescer {
    /// An empty coalescer that joins TCP only (for a TUN with TSO but not USO).
    pub fn new() -> Coalescer {
        Coalescer::with(true, false)
    }

    /// An empty coalescer that joins what it is told to: TCP needs TSO on the TUN, UDP needs
    /// USO (the kernel must accept GSO_UDP_L4 packets written to it). Neither: pass-through.
    pub fn with(join_tcp: bool, join_udp: bool) -> Coalescer {
        Coalescer {
            out: Vec::new(),
            pending: Vec::new(),
            runs: Vec::new(),
            active: 0,
            join_tcp,
            join_udp,
        }
    }

    /// Adds a decrypted IP packet.
    pub fn push(&mut self, packet: &[u8]) {
        if let Some(seg) = joinable_segment(packet).filter(|s| match s.key.proto {
            PROTO_TCP => self.join_tcp,
            _ => self.join_udp,
        }) {
            if self.append(packet, &seg) {
                return;
            }
            if seg.payload_len > 0 && seg.joinable && self.active < MAX_RUNS {
                self.start_run(packet, &seg);
                return;
            }
        }
        // A packet that does not join may still belong to an open run's flow without saying so
        // (an IPv4 fragment carries no ports after the first; IPv4 options or an IPv6 extension
        // header hide them from us): whatever comes after it between the same two addresses
        // must not be joined into a run written before it. TCP's sequence check would refuse
        // the join anyway; UDP has no such check.
        if let Some((src, dst)) = ip_addresses(packet) {
            for run in &mut self.runs[..self.active] {
                if run.key.is_some_and(|k| k.src == src && k.dst == dst) {
                    run.closed = true;
                }
            }
        }
        self.pass_through(packet);
    }

    /// The packets to write to the TUN, each with its vnet header in front, in order.
    pub fn packets(&mut self) -> impl Iterator<Item = &[u8]> {
        for n in 0..self.active {
            self.finish_run(n);
        }
        let (out, runs) = (&self.out, &self.runs);
        self.pending.iter().map(move |p| match *p {
            Pending::Plain(at, len) => &out[at..at + len],
            Pending::Run(n) => &runs[n].buf[..],
        })
    }

    /// How many packets (after joining) are waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets everything pushed, for the next batch (keeping the buffers).
    pub fn clear(&mut self) {
        self.out.clear();
        self.pending.clear();
        self.active = 0;
    }

    fn pass_through(&mut self, packet: &[u8]) {
        let at = self.out.len();
        self.out.resize(at + VNET_HDR_LEN, 0);
        VnetHdr::default().write(&mut self.out[at..]);
        self.out.extend_from_slice(packet);
        self.pending
            .push(Pending::Plain(at, VNET_HDR_LEN + packet.len()));
    }

    fn start_run(&mut self, packet: &[u8], seg: &Segment) {
        if self.runs.len() == self.active {
            self.runs.push(Run::default());
        }
        let run = &mut self.runs[self.active];
        run.buf.clear();
        run.buf.resize(VNET_HDR_LEN, 0);
        VnetHdr::default().write(&mut run.buf);
        run.buf.extend_from_slice(&packet[..seg.total]);
        run.key = Some(seg.key);
        run.v6 = seg.v6;
        run.hdrs = seg.hdrs;
        run.seg_size = seg.payload_len;
        run.segments = 1;
        run.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        run.closed = seg.flags & TCP_PSH != 0;
        run.finished = false;
        self.pending.push(Pending::Run(self.active));
        self.active += 1;
    }

    /// Appends `packet` to the open run of its flow if it continues it exactly.
    fn append(&mut self, packet: &[u8], seg: &Segment) -> bool {
        let Some(run) = self.runs[..self.active]
            .iter_mut()
            .rev()
            .find(|r| r.key == Some(seg.key) && !r.closed)
        else {
            return false;
        };
        let fits = run.buf.len() - VNET_HDR_LEN + seg.payload_len <= MAX_SUPER_PACKET
            && run.segments < MAX_SEGMENTS;
        let in_sequence = seg.key.proto != PROTO_TCP || seg.seq == run.next_seq;
        let compatible = seg.joinable
            && seg.v6 == run.v6
            && in_sequence
            && run.buf.len() - VNET_HDR_LEN - run.hdrs == run.segments * run.seg_size
            && seg.payload_len > 0
            && seg.payload_len <= run.seg_size
            && seg.hdrs == run.hdrs
            && same_headers_for_joining(
                run.packet(),
                &packet[..seg.hdrs],
                run.v6,
                seg.hdrs,
                seg.key.proto,
            );
        if !compatible || !fits {
            // This flow's run is over; the segment may start the next one.
            run.closed = true;
            return false;
        }
        run.buf.extend_from_slice(&packet[seg.hdrs..seg.total]);
        run.segments += 1;
        run.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        if seg.key.proto == PROTO_TCP && seg.flags & TCP_PSH != 0 {
            let flags_at = VNET_HDR_LEN + l4_offset(run.v6, run.packet()) + 13;
            run.buf[flags_at] |= TCP_PSH;
            run.closed = true;
        }
        if seg.payload_len < run.seg_size {
            run.closed = true;
        }
        true
    }

    /// Writes the final lengths, the partial checksum and the GSO header of a run of two or
    /// more segments (a run of one stays a plain packet).
    fn finish_run(&mut self, n: usize) {
        let run = &mut self.runs[n];
        if run.segments < 2 || run.finished {
            return;
        }
        run.finished = true;
        run.closed = true;
        let Some(proto) = run.key.map(|k| k.proto) else {
            return;
        };
        let len = run.buf.len() - VNET_HDR_LEN;
        let p = &mut run.buf[VNET_HDR_LEN..];
        let Some(info) = ip_info_lenient(p, run.v6, proto) else {
            return;
        };
        set_ip_len(p, &info, len);
        // The checksum field holds the pseudo-header sum; the kernel completes it when it
        // segments again, and trusts it for a local socket (the AEAD authenticated every
        // byte end to end).
        let l4_len = len - info.l4;
        let partial = !checksum_finish(pseudo_header_sum(info.src, info.dst, proto, l4_len));
        let (gso_type, csum_offset) = match (proto, run.v6) {
            (PROTO_TCP, false) => (GSO_TCPV4, 16),
            (PROTO_TCP, true) => (GSO_TCPV6, 16),
            _ => {
                p[info.l4 + 4..info.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                (GSO_UDP_L4, 6)
            }
        };
        let field = info.l4 + usize::from(csum_offset);
        p[field..field + 2].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: run.hdrs as u16,
            gso_size: run.seg_size as u16,
            csum_start: info.l4 as u16,
            csum_offset,
        };
        hdr.write(&mut run.buf[..VNET_HDR_LEN]);
    }
}

fn l4_offset(v6: bool, p: &[u8]) -> usize {
    if v6 {
        40
    } else {
        usize::from(p[0] & 0x0f) * 4
    }
}

/// The source and destination of an IPv4 or IPv6 packet, whatever else is in it.
fn ip_addresses(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 => Some((
            IpAddr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(p.get(16..20)?).ok()?),
        )),
        6 => Some((
            IpAddr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?),
        )),
        _ => None,
    }
}

/// `ip_info` for a packet whose length fields are not yet updated.
fn ip_info_lenient(p: &[u8], v6: bool, proto: u8) -> Option<IpInfo> {
    let l4 = l4_offset(v6, p);
    Some(IpInfo {
        v6,
        l4,
        proto,
        src: if v6 {
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)
        } else {
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?)
        },
        dst: if v6 {
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)
        } else {
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?)
        },
        total: p.len(),
    })
}

/// Whether two segments' headers allow joining: IP fields other than length, ID and checksum
/// equal (TTL, TOS, flags); for TCP also ACK, window, flags other than PSH, the reserved bits
/// next to them (AccECN's AE), and options. Not the urgent pointer: it means nothing without
/// URG, and a segment with URG never joins (the kernel's GRO does the same).
fn same_headers_for_joining(a: &[u8], b: &[u8], v6: bool, hdrs: usize, proto: u8) -> bool {
    if a.len() < hdrs || b.len() < hdrs {
        return false;
    }
    let l4 = l4_offset(v6, a);
    let ip_same = if v6 {
        // version/class/flow label, next header, hop limit
        a[..4] == b[..4] && a[6..8] == b[6..8]
    } else {
        a[0..2] == b[0..2] && a[6..10] == b[6..10] && a[20..l4] == b[20..l4]
    };
    if proto != PROTO_TCP {
        return ip_same;
    }
    let flags_mask = !TCP_PSH;
    ip_same
        && a[l4 + 8..l4 + 12] == b[l4 + 8..l4 + 12] // ack
        && a[l4 + 12] == b[l4 + 12] // data offset, reserved bits, AE
        && (a[l4 + 13] & flags_mask) == (b[l4 + 13] & flags_mask)
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16] // window
        && a[l4 + 20..hdrs] == b[l4 + 20..hdrs] // options
}

/// A TCP segment or UDP datagram that may take part in coalescing.
#[derive(Clone, Copy, Debug)]
struct Segment {
    key: FlowKey,
    v6: bool,
    hdrs: usize,
    total: usize,
    payload_len: usize,
    /// TCP only.
    seq: u32,
    /// TCP only.
    flags: u8,
    /// TCP: only ACK (and PSH) set, nothing that must stay on its own (SYN, FIN, RST, URG,
    /// CWR). UDP: its length field agrees with the IP header.
    joinable: bool,
}

fn joinable_segment(p: &[u8]) -> Option<Segment> {
    let info = ip_info(p)?;
    if !info.v6 && info.l4 != 20 {
        return None; // IPv4 options: leave alone
    }
    let l4 = info.l4;
    let key = FlowKey {
        proto: info.proto,
        src: info.src,
        dst: info.dst,
        ports: p.get(l4..l4 + 4)?.try_into().ok()?,
    };
    match info.proto {
        PROTO_TCP => {
            let doff = usize::from(*p.get(l4 + 12)? >> 4) * 4;
            if doff < 20 || l4 + doff > info.total {
                return None;
            }
            let flags = p[l4 + 13];
            let special = flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0;
            Some(Segment {
                key,
                v6: info.v6,
                hdrs: l4 + doff,
                total: info.total,
                payload_len: info.total - l4 - doff,
                seq: u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().ok()?),
                flags,
                joinable: !special,
            })
        }
        PROTO_UDP => {
            if l4 + 8 > info.total {
                return None;
            }
            let udp_len = usize::from(u16::from_be_bytes([p[l4 + 4], p[l4 + 5]]));
            Some(Segment {
                key,
                v6: info.v6,
                hdrs: l4 + 8,
                total: info.total,
                payload_len: info.total - l4 - 8,
                seq: 0,
                flags: 0,
                joinable: udp_len == info.total - l4,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
