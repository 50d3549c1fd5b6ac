//! What the stack does to TCP segments on their way between smoltcp and the tunnel, where
//! smoltcp itself falls short:
//!
//! - **Selective retransmission.** smoltcp recovers from a loss by going back N: it sends
//!   everything after the lost segment again. The receiver (with SACK, which smoltcp asks for)
//!   already holds most of that, and on a fast path with random loss the duplicates cost
//!   more than the loss itself: measured, 1 % loss took an upload from 500 to 40 Mbit/s. So
//!   the peer's SACK blocks are remembered per connection ([`Recovery`]), and a retransmitted
//!   segment that lies entirely inside data the peer has acknowledged selectively, and carries
//!   no new acknowledgement or window for the other direction, is not sent. A segment that
//!   starts at the peer's cumulative acknowledgement is always sent, so a receiver that
//!   dropped data it had SACKed (RFC 2018 allows it) still gets it again.
//! - **Path MTU.** An ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) from
//!   inside the tunnel records a smaller MTU for that destination ([`PathMtu`]), and TCP
//!   segments to it that would not fit are split into segments that do (as a NIC splits a
//!   TSO segment); SYNs to it announce an MSS that fits. smoltcp has no PMTU discovery of its
//!   own: without this, a transfer to a peer behind a 1280-byte path stalls for good.
//!
//! - **The receive window's right edge.** With window scaling, smoltcp announces its free
//!   buffer space rounded down to the scale unit, so an ACK that follows new data can move the
//!   right edge of the window back by up to a unit (RFC 9293 asks receivers not to do that,
//!   because the peer may already have sent up to the old edge). smoltcp 0.12 still accepts
//!   data up to its free buffer space, past the edge it last announced, and then panics
//!   computing its window ("attempt to subtract sequence numbers with underflow" in
//!   `last_scaled_window`, smoltcp issue #1048). So the edge smoltcp last announced is
//!   tracked per connection from its outgoing segments ([`ReceiveEdges`]), and incoming data
//!   beyond it is cut off before smoltcp sees it; the peer sends those few bytes again.
//!
//! Everything here reads untrusted packets: each access is bounds-checked and state is
//! capped, so nothing panics or grows without bound.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

const PROTO_TCP: u8 = 6;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Connections whose SACK state is kept at once; more are not tracked (they recover the
/// slow way).
const MAX_FLOWS: usize = 4096;
/// SACKed ranges kept per connection.
const MAX_RANGES: usize = 16;
/// A connection not heard from for this long is forgotten.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// Destinations with a learned path MTU.
const MAX_PATHS: usize = 1024;
/// How long a learned path MTU holds (Linux: 10 minutes).
const PATH_MTU_LIFETIME: Duration = Duration::from_secs(600);
/// Smallest path MTU believed for IPv4 (Linux's min_pmtu is 552; RFC 791 guarantees 576).
const MIN_MTU_V4: usize = 552;
/// Smallest MTU of IPv6 (RFC 8200).
const MIN_MTU_V6: usize = 1280;

/// A TCP segment inside an IP packet: offsets and the fields we need.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the TCP header.
    tcp: usize,
    /// Length of the TCP header.
    tcp_len: usize,
    /// End of the IP packet (total length).
    end: usize,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
}

impl Segment {
    fn payload_len(&self) -> usize {
        self.end - self.tcp - self.tcp_len
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// The IP header of `packet`: (source, destination, protocol, header length, total length).
/// `None` for anything malformed or fragmented (IPv6 with extension headers included).
fn ip_header(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize, usize)> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(be16(packet, 2)?);
            let frag = be16(packet, 6)?;
            if ihl < 20 || total < ihl || total > packet.len() || frag & 0x3fff != 0 {
                return None;
            }
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some((
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                packet[9],
                ihl,
                total,
            ))
        }
        6 => {
            let total = 40 + usize::from(be16(packet, 4)?);
            if total > packet.len() {
                return None;
            }
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some((
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                packet[6],
                40,
                total,
            ))
        }
        _ => None,
    }
}

fn parse_tcp(packet: &[u8]) -> Option<Segment> {
    let (src, dst, proto, tcp, end) = ip_header(packet)?;
    if proto != PROTO_TCP {
        return None;
    }
    let tcp_len = usize::from(*packet.get(tcp + 12)? >> 4) * 4;
    if tcp_len < 20 || tcp + tcp_len > end {
        return None;
    }
    Some(Segment {
        src,
        dst,
        tcp,
        tcp_len,
        end,
        src_port: be16(packet, tcp)?,
        dst_port: be16(packet, tcp + 2)?,
        seq: be32(packet, tcp + 4)?,
        ack: be32(packet, tcp + 8)?,
        flags: *packet.get(tcp + 13)?,
        window: be16(packet, tcp + 14)?,
    })
}

/// `a` comes before `b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    !seq_lt(b, a)
}

/// Our end of a connection first, then the peer's.
pub(crate) type FlowKey = (IpAddr, u16, IpAddr, u16);

#[derive(Debug)]
struct Flow {
    /// The peer's cumulative acknowledgement.
    snd_una: u32,
    /// Ranges above `snd_una` the peer has acknowledged selectively, sorted, disjoint.
    sacked: Vec<(u32, u32)>,
    /// The acknowledgement number and window of our last segment to the peer.
    last_sent: Option<(u32, u16)>,
    last_seen: Instant,
    /// Loss episodes so far: times the SACKed ranges went from none to some.
    episodes: u64,
    /// The acknowledgement number and window field of the peer's last segment.
    last_ack: Option<(u32, u16)>,
    /// The end of the highest segment we sent.
    max_sent: u32,
    /// The sequence number the peer sends next (what a duplicate ACK from it carries).
    peer_next: Option<u32>,
    /// When the cumulative acknowledgement last moved (or data went out with none pending).
    progress: Instant,
    /// The `snd_una` tail loss probes were made for, and how many.
    probed: Option<(u32, u32)>,
    /// A round-trip measurement in progress: the end of the timed segment and when it left.
    timing: Option<(u32, Instant)>,
    /// Smoothed round-trip time.
    srtt: Option<Duration>,
    /// The peer's window scale (from its SYN), if known.
    scale: Option<u8>,
}

impl Flow {
    fn new(snd_una: u32, max_sent: u32, now: Instant) -> Flow {
        Flow {
            snd_una,
            sacked: Vec::new(),
            last_sent: None,
            last_seen: now,
            episodes: 0,
            last_ack: None,
            max_sent,
            peer_next: None,
            progress: now,
            probed: None,
            timing: None,
            srtt: None,
            scale: None,
        }
    }

    fn acknowledge(&mut self, ack: u32) -> bool {
        let moved = seq_lt(self.snd_una, ack);
        if moved {
            self.snd_una = ack;
        }
        let una = self.snd_una;
        self.sacked.retain(|(_, end)| seq_lt(una, *end));
        for range in &mut self.sacked {
            if seq_lt(range.0, una) {
                range.0 = una;
            }
        }
        moved
    }

    fn add_range(&mut self, start: u32, end: u32) {
        if !seq_lt(start, end) || !seq_lt(self.snd_una, end) {
            return;
        }
        let start = if seq_lt(start, self.snd_una) {
            self.snd_una
        } else {
            start
        };
        let (mut start, mut end) = (start, end);
        // Merge with every range it touches.
        self.sacked.retain(|&(s, e)| {
            if seq_le(s, end) && seq_le(start, e) {
                if seq_lt(s, start) {
                    start = s;
                }
                if seq_lt(end, e) {
                    end = e;
                }
                false
            } else {
                true
            }
        });
        let at = self
            .sacked
            .iter()
            .position(|(s, _)| seq_lt(start, *s))
            .unwrap_or(self.sacked.len());
        self.sacked.insert(at, (start, end));
        if self.sacked.len() > MAX_RANGES {
            // Forgetting the highest range only costs a needless retransmission.
            self.sacked.pop();
        }
    }

    fn covers(&self, start: u32, end: u32) -> bool {
        self.sacked
            .iter()
            .any(|&(s, e)| seq_le(s, start) && seq_le(end, e))
    }

    /// Data is out and unacknowledged.
    fn outstanding(&self) -> bool {
        seq_lt(self.snd_una, self.max_sent)
    }

    /// How long without progress before a tail loss probe.
    fn probe_timeout(&self) -> Duration {
        self.srtt.map_or(PROBE_MIN, |rtt| (rtt * 4).max(PROBE_MIN))
    }

    /// When a probe is due, if one may be made: a few round trips without progress, twice
    /// as long after each probe for the same data.
    fn probe_at(&self) -> Option<Instant> {
        if !self.outstanding() || self.peer_next.is_none() {
            return None;
        }
        let made = match self.probed {
            Some((una, n)) if una == self.snd_una => n,
            _ => 0,
        };
        (made < MAX_PROBES).then(|| self.progress + self.probe_timeout() * (1 << made))
    }
}

/// The least time without an acknowledgement before a tail loss probe (smoltcp's own
/// retransmission timeout is at least 47 ms in practice: it keeps whole milliseconds and
/// rounds up).
const PROBE_MIN: Duration = Duration::from_millis(5);
/// Probes for the same unacknowledged data; then smoltcp's own timer takes over.
const MAX_PROBES: u32 = 6;

/// Loss state of the connections that send data. See the [module](self) docs.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    flows: HashMap<FlowKey, Flow>,
    /// Window scales from peers' SYNs, until their connection sends data.
    scales: HashMap<FlowKey, u8>,
    /// Retransmissions not sent because the peer had them.
    pub(crate) suppressed: u64,
    /// Duplicate ACKs whose window was kept.
    pub(crate) normalized: u64,
    /// Loss episodes (all connections).
    pub(crate) episodes: u64,
    /// Segments sent (or suppressed) a second time.
    pub(crate) retransmitted: u64,
    /// Tail loss probes made.
    pub(crate) probes: u64,
}

impl Recovery {
    /// Learn from a packet that came out of the tunnel (to the stack); may rewrite the window
    /// of a duplicate ACK.
    fn incoming(&mut self, packet: &mut [u8], seg: &Segment, now: Instant) {
        let key = (seg.dst, seg.dst_port, seg.src, seg.src_port);
        if seg.flags & (RST | SYN) != 0 {
            self.flows.remove(&key);
            if seg.flags & SYN != 0 {
                if let Some(scale) = window_scale(&packet[seg.tcp + 20..seg.tcp + seg.tcp_len]) {
                    if self.scales.len() >= MAX_FLOWS {
                        self.scales.clear();
                    }
                    self.scales.insert(key, scale);
                }
            }
            return;
        }
        if seg.flags & ACK == 0 {
            return;
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let blocks = sack_blocks(&packet[seg.tcp + 20..seg.tcp + seg.tcp_len]);
        flow.last_seen = now;
        let len = seg.payload_len() as u32 + u32::from(seg.flags & FIN != 0);
        let next = seg.seq.wrapping_add(len);
        if flow.peer_next.is_none_or(|n| seq_lt(n, next)) {
            flow.peer_next = Some(next);
        }
        if flow.acknowledge(seg.ack) {
            flow.progress = now;
            if let Some((end, sent)) = flow.timing {
                if seq_le(end, seg.ack) {
                    let sample = now.duration_since(sent);
                    flow.srtt = Some(flow.srtt.map_or(sample, |s| (s * 7 + sample) / 8));
                    flow.timing = None;
                }
            }
        }
        let was_clean = flow.sacked.is_empty();
        for &(start, end) in &blocks {
            flow.add_range(start, end);
        }
        if was_clean && !flow.sacked.is_empty() {
            flow.episodes += 1;
            self.episodes += 1;
        }
        // smoltcp retransmits on the third duplicate ACK only if (1) the duplicates' windows
        // are all the same, and Linux changes the window on nearly every one (out-of-order
        // data takes buffer space), and (2) it has no new data to send at that moment, while
        // the peer's window usually lets it go on sending. Either way it would wait for its
        // retransmission timeout (tens of ms). So a duplicate ACK that reports out-of-order
        // data announces a window that ends where our data ends: the same value on every
        // duplicate, and no room for new data (all of which the peer did allow when it was
        // sent). Never zero unless the peer's is: a closed window must get through. The
        // peer's next ACK that moves brings its real window back.
        let mut window = seg.window;
        let duplicate = seg.flags & (SYN | FIN | RST) == 0 && seg.payload_len() == 0;
        if duplicate && !blocks.is_empty() && window != 0 {
            let previous = flow.last_ack.map(|(_, w)| w);
            let fitted = match flow.scale {
                Some(scale) => {
                    let in_flight = flow.max_sent.wrapping_sub(seg.ack);
                    (in_flight >> scale).clamp(1, u32::from(u16::MAX)) as u16
                }
                // Without the scale: at least keep the window steady.
                None => previous.filter(|p| *p != 0).unwrap_or(window),
            };
            if fitted != window {
                set_window(packet, seg, fitted);
                window = fitted;
                self.normalized += 1;
            }
        }
        flow.last_ack = Some((seg.ack, window));
        if seg.flags & FIN != 0 && !flow.outstanding() {
            self.flows.remove(&key);
        }
    }

    /// Whether a segment going into the tunnel should be sent; records what it acknowledges.
    fn outgoing(&mut self, seg: &Segment, now: Instant) -> bool {
        let key = (seg.src, seg.src_port, seg.dst, seg.dst_port);
        if seg.flags & RST != 0 {
            self.flows.remove(&key);
            return true;
        }
        let len = seg.payload_len() as u32;
        let end = seg.seq.wrapping_add(len);
        let flow = match self.flows.get_mut(&key) {
            Some(flow) => flow,
            None if len == 0 || seg.flags & ACK == 0 => return true,
            None => {
                if self.flows.len() >= MAX_FLOWS {
                    self.flows
                        .retain(|_, f| now.duration_since(f.last_seen) < FLOW_IDLE);
                    if self.flows.len() >= MAX_FLOWS {
                        return true;
                    }
                }
                let mut flow = Flow::new(seg.seq, seg.seq, now);
                flow.scale = self.scales.remove(&key);
                self.flows.entry(key).or_insert(flow)
            }
        };
        flow.last_seen = now;
        if len > 0 {
            if seq_lt(seg.seq, flow.max_sent) {
                self.retransmitted += 1;
                // Karn: no round-trip time from a retransmitted range.
                if flow.timing.is_some_and(|(e, _)| seq_lt(seg.seq, e)) {
                    flow.timing = None;
                }
            }
            if seq_lt(flow.max_sent, end) {
                if !flow.outstanding() {
                    flow.progress = now;
                }
                flow.max_sent = end;
                if flow.timing.is_none() {
                    flow.timing = Some((end, now));
                }
            }
        }
        let nothing_new = flow.last_sent == Some((seg.ack, seg.window));
        let redundant = len > 0
            && seg.flags & (SYN | FIN | RST) == 0
            && seq_lt(flow.snd_una, seg.seq)
            && flow.covers(seg.seq, end);
        if redundant && nothing_new {
            self.suppressed += 1;
            return false;
        }
        flow.last_sent = Some((seg.ack, seg.window));
        true
    }

    /// The loss state of a connection (our address and port, the peer's): loss episodes so
    /// far, and whether a loss is being repaired now.
    pub(crate) fn loss_state(&self, key: &FlowKey) -> (u64, bool) {
        self.flows
            .get(key)
            .map_or((0, false), |f| (f.episodes, !f.sacked.is_empty()))
    }

    /// Tail loss probes: for each connection whose data has gone unacknowledged for a few
    /// round trips (the last segments of a flight were lost, so no duplicate ACK comes),
    /// three duplicate ACKs as from the peer, which make smoltcp retransmit at once instead
    /// of after its retransmission timeout. Pushed to `out`; returns when the next probe
    /// may be due.
    fn probes(&mut self, now: Instant, out: &mut impl FnMut(Vec<u8>)) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (&(own, own_port, peer, peer_port), flow) in &mut self.flows {
            let Some(at) = flow.probe_at() else { continue };
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let (Some(seq), Some((_, window))) = (flow.peer_next, flow.last_ack) else {
                continue;
            };
            let made = match flow.probed {
                Some((una, n)) if una == flow.snd_una => n,
                _ => 0,
            };
            flow.probed = Some((flow.snd_una, made + 1));
            self.probes += 1;
            // smoltcp acts on exactly the third duplicate ACK and counts only those with an
            // unchanged window: an ACK with a window one unit different restarts its count,
            // then three duplicates of it follow. (The peer's next real ACK restores the
            // window; one unit of it is nothing.)
            let nudged = if window > 1 { window - 1 } else { window + 1 };
            let packet = build_ack(peer, peer_port, own, own_port, seq, flow.snd_una, nudged);
            if let Some(packet) = packet {
                for _ in 0..4 {
                    out(packet.clone());
                }
            }
        }
        next
    }

    /// Drop state of connections idle for long.
    fn expire(&mut self, now: Instant) {
        self.flows
            .retain(|_, f| now.duration_since(f.last_seen) < FLOW_IDLE);
    }
}

/// Connections whose receive edge is tracked at once; when a new one comes, the one that
/// has sent nothing for the longest is forgotten (and goes unguarded).
const MAX_EDGES: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Edge {
    /// The window scale the stack applies to its own announcements on this connection (0
    /// when either side's SYN had no window scale option).
    shift: u8,
    /// The right edge of the window the stack last announced: its last ACK number plus its
    /// last window, shifted, exactly as smoltcp computes it (for a SYN-ACK, whose window is
    /// not scaled on the wire, smoltcp shifts it anyway; the edge follows smoltcp).
    edge: Option<u32>,
    last_seen: Instant,
}

/// The receive window the stack announced, per connection. See the [module](self) docs.
#[derive(Debug, Default)]
pub(crate) struct ReceiveEdges {
    edges: HashMap<FlowKey, Edge>,
    /// Incoming segments cut short because they reached past the announced edge.
    pub(crate) trimmed: u64,
}

impl ReceiveEdges {
    /// Record what a segment the stack sends into the tunnel announces.
    pub(crate) fn outgoing(&mut self, packet: &[u8]) {
        let Some(seg) = parse_tcp(packet) else {
            return;
        };
        let key = (seg.src, seg.src_port, seg.dst, seg.dst_port);
        let now = Instant::now();
        if seg.flags & RST != 0 {
            self.edges.remove(&key);
            return;
        }
        if seg.flags & SYN != 0 {
            // A SYN-ACK carries the option only if the peer's SYN did: then it is final. Our
            // own SYN always carries it; the peer's SYN-ACK may still refuse scaling.
            let shift = window_scale(&packet[seg.tcp + 20..seg.tcp + seg.tcp_len]).unwrap_or(0);
            if self.edges.len() >= MAX_EDGES && !self.edges.contains_key(&key) {
                // Closed connections are never told apart from quiet ones: the one quiet the
                // longest goes.
                let oldest = self.edges.iter().min_by_key(|(_, e)| e.last_seen);
                if let Some((&old, _)) = oldest {
                    self.edges.remove(&old);
                }
            }
            self.edges.insert(
                key,
                Edge {
                    shift,
                    edge: None,
                    last_seen: now,
                },
            );
        }
        let Some(entry) = self.edges.get_mut(&key) else {
            return;
        };
        if seg.flags & ACK != 0 {
            let window = u32::from(seg.window) << entry.shift;
            entry.edge = Some(seg.ack.wrapping_add(window));
        }
        entry.last_seen = now;
    }

    /// Cut an incoming segment's data that lies beyond the edge the stack last announced
    /// (dropping its FIN too if any data goes). `packet` shrinks accordingly and stays valid
    /// (lengths and checksums updated).
    pub(crate) fn incoming(&mut self, packet: &mut Vec<u8>) {
        let Some(seg) = parse_tcp(packet) else {
            return;
        };
        let key = (seg.dst, seg.dst_port, seg.src, seg.src_port);
        if seg.flags & RST != 0 {
            self.edges.remove(&key);
            return;
        }
        let Some(entry) = self.edges.get_mut(&key) else {
            return;
        };
        if seg.flags & SYN != 0 {
            // The peer's SYN-ACK to our SYN: without the option, no scaling either way.
            if window_scale(&packet[seg.tcp + 20..seg.tcp + seg.tcp_len]).is_none() {
                entry.shift = 0;
            }
            return;
        }
        let Some(edge) = entry.edge else {
            return;
        };
        let len = seg.payload_len() as u32;
        let end = seg.seq.wrapping_add(len);
        if len == 0 || seq_le(end, edge) {
            return;
        }
        let keep = if seq_lt(seg.seq, edge) {
            edge.wrapping_sub(seg.seq) as usize
        } else {
            0
        };
        let new_end = seg.tcp + seg.tcp_len + keep;
        match seg.src {
            IpAddr::V4(_) => {
                packet[2..4].copy_from_slice(&(new_end as u16).to_be_bytes());
                packet[10..12].copy_from_slice(&[0, 0]);
                let c = checksum_fold(checksum_add(0, &packet[..seg.tcp]));
                packet[10..12].copy_from_slice(&c.to_be_bytes());
            }
            IpAddr::V6(_) => {
                packet[4..6].copy_from_slice(&((new_end - 40) as u16).to_be_bytes());
            }
        }
        // What follows the cut is not here: no FIN, and nothing to push.
        packet[seg.tcp + 13] &= !(FIN | PSH);
        packet.truncate(new_end);
        let cut = Segment {
            end: new_end,
            ..seg
        };
        fill_tcp_checksum(packet, &cut);
        self.trimmed += 1;
    }
}

/// A pure ACK segment from `src` to `dst`, checksums filled.
fn build_ack(
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
    seq: u32,
    ack: u32,
    window: u16,
) -> Option<Vec<u8>> {
    let mut p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&40u16.to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            let c = checksum_fold(checksum_add(0, &p[..20]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0u8; 60];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&20u16.to_be_bytes());
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&d.octets());
            p
        }
        _ => return None,
    };
    let t = p.len() - 20;
    p[t..t + 2].copy_from_slice(&src_port.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&dst_port.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    p[t + 12] = 5 << 4;
    p[t + 13] = ACK;
    p[t + 14..t + 16].copy_from_slice(&window.to_be_bytes());
    let seg = parse_tcp(&p)?;
    fill_tcp_checksum(&mut p, &seg);
    Some(p)
}

/// The window scale option (RFC 7323) in a SYN's option area.
fn window_scale(mut options: &[u8]) -> Option<u8> {
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            0 => return None,
            1 => options = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == 3 && len == 3 {
                    return Some(options[2].min(14));
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// The SACK blocks in a TCP option area (RFC 2018), at most four.
fn sack_blocks(mut options: &[u8]) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            0 => break,
            1 => options = rest,
            _ => {
                let Some(&len) = rest.first() else { break };
                let len = usize::from(len);
                if len < 2 || len > options.len() {
                    break;
                }
                if kind == 5 && (len - 2) % 8 == 0 {
                    for block in options[2..len].chunks_exact(8) {
                        if let (Some(s), Some(e)) = (be32(block, 0), be32(block, 4)) {
                            blocks.push((s, e));
                        }
                    }
                }
                options = &options[len..];
            }
        }
    }
    blocks
}

/// Path MTUs learned from ICMP, per destination. See the [module](self) docs.
#[derive(Debug, Default)]
pub(crate) struct PathMtu {
    paths: HashMap<IpAddr, (usize, Instant)>,
}

impl PathMtu {
    /// The path MTU to `dst` if one was learned and is still believed.
    fn get(&self, dst: IpAddr, now: Instant) -> Option<usize> {
        self.paths
            .get(&dst)
            .filter(|(_, at)| now.duration_since(*at) < PATH_MTU_LIFETIME)
            .map(|(mtu, _)| *mtu)
    }

    /// Learn from an ICMP error addressed to one of `own` addresses.
    fn incoming_icmp(
        &mut self,
        packet: &[u8],
        own: &[IpAddr],
        link_mtu: usize,
        now: Instant,
    ) -> Option<(IpAddr, usize)> {
        let (_, _, proto, header, end) = ip_header(packet)?;
        let icmp = packet.get(header..end)?;
        let (mtu, inner, floor) = match proto {
            // Destination unreachable, fragmentation needed and DF set (RFC 1191).
            PROTO_ICMP if icmp.first() == Some(&3) && icmp.get(1) == Some(&4) => {
                (usize::from(be16(icmp, 6)?), icmp.get(8..)?, MIN_MTU_V4)
            }
            // Packet too big (RFC 8201).
            PROTO_ICMPV6 if icmp.first() == Some(&2) => {
                (be32(icmp, 4)? as usize, icmp.get(8..)?, MIN_MTU_V6)
            }
            _ => return None,
        };
        // The quoted packet: ours, to the destination whose path is small. It is usually cut
        // short, so only its addresses are read.
        let (src, dst) = match inner.first()? >> 4 {
            4 => (
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(inner.get(12..16)?).ok()?,
                )),
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(inner.get(16..20)?).ok()?,
                )),
            ),
            6 => (
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(inner.get(8..24)?).ok()?,
                )),
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(inner.get(24..40)?).ok()?,
                )),
            ),
            _ => return None,
        };
        if !own.contains(&src) || src.is_ipv4() != (proto == PROTO_ICMP) {
            return None;
        }
        // An MTU of 0 (old routers) or above ours tells nothing usable.
        if mtu == 0 || mtu >= link_mtu {
            return None;
        }
        let mtu = mtu.max(floor);
        if self.get(dst, now).is_some_and(|known| known <= mtu) {
            return None;
        }
        if self.paths.len() >= MAX_PATHS && !self.paths.contains_key(&dst) {
            self.paths
                .retain(|_, (_, at)| now.duration_since(*at) < PATH_MTU_LIFETIME);
            if self.paths.len() >= MAX_PATHS {
                return None;
            }
        }
        self.paths.insert(dst, (mtu, now));
        Some((dst, mtu))
    }
}

/// The state above, for the stack's device.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    pub(crate) recovery: Recovery,
    pub(crate) paths: PathMtu,
    /// Segments split to fit a path MTU.
    pub(crate) split: u64,
    last_expiry: Option<Instant>,
}

/// What to do with an outgoing packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it as it is (possibly after an MSS option was lowered in place).
    Send,
    /// Do not send it.
    Drop,
    /// Split it into segments of at most this many payload bytes.
    Split(usize),
}

impl Segments {
    /// Learn from a packet that came out of the tunnel, before the stack sees it (which may
    /// rewrite the window of a duplicate ACK, see [`Recovery`]).
    pub(crate) fn incoming(&mut self, packet: &mut [u8], own: &[IpAddr], link_mtu: usize) {
        let now = Instant::now();
        if self
            .last_expiry
            .is_none_or(|t| now.duration_since(t) > FLOW_IDLE)
        {
            self.recovery.expire(now);
            self.last_expiry = Some(now);
        }
        if let Some(seg) = parse_tcp(packet) {
            self.recovery.incoming(packet, &seg, now);
        } else if let Some((dst, mtu)) = self.paths.incoming_icmp(packet, own, link_mtu, now) {
            tracing::debug!(%dst, mtu, "path MTU learned from ICMP");
        }
    }

    /// Tail loss probes due now (see [`Recovery::probes`]), pushed to `out`; returns when
    /// the next one may be due.
    pub(crate) fn probes(&mut self, out: &mut impl FnMut(Vec<u8>)) -> Option<Instant> {
        self.recovery.probes(Instant::now(), out)
    }

    /// Decide about a packet the stack emits; may lower the MSS option of a SYN in place.
    pub(crate) fn outgoing(&mut self, packet: &mut [u8]) -> Verdict {
        let Some(seg) = parse_tcp(packet) else {
            return Verdict::Send;
        };
        if !self.recovery.outgoing(&seg, Instant::now()) {
            return Verdict::Drop;
        }
        if self.paths.paths.is_empty() {
            return Verdict::Send;
        }
        let Some(mtu) = self.paths.get(seg.dst, Instant::now()) else {
            return Verdict::Send;
        };
        if seg.flags & SYN != 0 {
            let mss = mtu.saturating_sub(seg.tcp + 20) as u16;
            lower_mss(packet, &seg, mss);
            return Verdict::Send;
        }
        if seg.end <= mtu || seg.payload_len() == 0 {
            return Verdict::Send;
        }
        let room = mtu.saturating_sub(seg.tcp + seg.tcp_len);
        if room < 8 {
            return Verdict::Send;
        }
        self.split += 1;
        Verdict::Split(room)
    }
}

/// Replace the window field of the segment, updating the checksum incrementally (RFC 1624).
fn set_window(packet: &mut [u8], seg: &Segment, window: u16) {
    let at = seg.tcp + 14;
    let old = u16::from_be_bytes([packet[at], packet[at + 1]]);
    let check = u16::from_be_bytes([packet[seg.tcp + 16], packet[seg.tcp + 17]]);
    let sum = u32::from(!check) + u32::from(!old) + u32::from(window);
    let new_check = checksum_fold(sum);
    packet[at..at + 2].copy_from_slice(&window.to_be_bytes());
    packet[seg.tcp + 16..seg.tcp + 18].copy_from_slice(&new_check.to_be_bytes());
}

/// Lower the MSS option of a SYN to `mss` if it is larger, fixing the checksum.
fn lower_mss(packet: &mut [u8], seg: &Segment, mss: u16) {
    let mut i = seg.tcp + 20;
    let end = seg.tcp + seg.tcp_len;
    while i < end {
        match packet[i] {
            0 => return,
            1 => i += 1,
            kind => {
                let Some(&len) = packet.get(i + 1) else {
                    return;
                };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    return;
                }
                if kind == 2 && len == 4 {
                    if be16(packet, i + 2).is_some_and(|m| m > mss) {
                        packet[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                        fill_tcp_checksum(packet, seg);
                    }
                    return;
                }
                i += len;
            }
        }
    }
}

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recompute the TCP checksum of the segment in `packet` (pseudo-header included).
fn fill_tcp_checksum(packet: &mut [u8], seg: &Segment) {
    let tcp_total = seg.end - seg.tcp;
    packet[seg.tcp + 16..seg.tcp + 18].copy_from_slice(&[0, 0]);
    let mut sum = 0u32;
    match (seg.src, seg.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum += u32::from(PROTO_TCP) + tcp_total as u32;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum += tcp_total as u32 + u32::from(PROTO_TCP);
        }
        _ => return,
    }
    sum = checksum_add(sum, &packet[seg.tcp..seg.end]);
    let c = checksum_fold(sum);
    packet[seg.tcp + 16..seg.tcp + 18].copy_from_slice(&c.to_be_bytes());
}

/// Split the TCP segment in `packet` into segments of at most `room` payload bytes each,
/// calling `emit` with each finished packet (`scratch` holds it).
pub(crate) fn split(
    packet: &[u8],
    room: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) {
    let Some(seg) = parse_tcp(packet) else {
        emit(packet);
        return;
    };
    let headers = seg.tcp + seg.tcp_len;
    let payload = &packet[headers..seg.end];
    let pieces = payload.len().div_ceil(room);
    for (i, chunk) in payload.chunks(room).enumerate() {
        let last = i + 1 == pieces;
        let total = headers + chunk.len();
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(chunk);
        let seq = seg.seq.wrapping_add((i * room) as u32);
        scratch[seg.tcp + 4..seg.tcp + 8].copy_from_slice(&seq.to_be_bytes());
        if !last {
            // FIN and PSH belong to the last piece only.
            scratch[seg.tcp + 13] &= !(FIN | PSH);
        }
        match seg.src {
            IpAddr::V4(_) => {
                scratch[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                // Fresh identification per piece is not needed with DF; keep the header valid.
                scratch[10..12].copy_from_slice(&[0, 0]);
                let c = checksum_fold(checksum_add(0, &scratch[..seg.tcp]));
                scratch[10..12].copy_from_slice(&c.to_be_bytes());
            }
            IpAddr::V6(_) => {
                scratch[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            }
        }
        let piece = Segment { end: total, ..seg };
        fill_tcp_checksum(scratch, &piece);
        emit(scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};

    const US: [u8; 4] = [10, 0, 0, 1];
    const THEM: [u8; 4] = [10, 0, 0, 2];

    /// An IPv4 TCP segment from `src` to `dst` with a valid checksum.
    fn segment(
        src: [u8; 4],
        dst: [u8; 4],
        seq: u32,
        ack: u32,
        flags: u8,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let total = 20 + tcp_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum_fold(checksum_add(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let t = 20;
        p[t..t + 2].copy_from_slice(&(if src == US { 50000u16 } else { 80 }).to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&(if src == US { 80u16 } else { 50000 }).to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&1000u16.to_be_bytes());
        p[t + 20..t + tcp_len].copy_from_slice(options);
        p[t + tcp_len..].copy_from_slice(payload);
        let seg = parse_tcp(&p).expect("tcp");
        fill_tcp_checksum(&mut p, &seg);
        p
    }

    fn sack_option(blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut o = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
        for (s, e) in blocks {
            o.extend_from_slice(&s.to_be_bytes());
            o.extend_from_slice(&e.to_be_bytes());
        }
        o
    }

    fn valid(p: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(p).expect("ip");
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        ip.verify_checksum()
            && tcp.verify_checksum(
                &IpAddress::from(ip.src_addr()),
                &IpAddress::from(ip.dst_addr()),
            )
    }

    #[test]
    fn test_segments_have_valid_checksums() {
        let p = segment(US, THEM, 1, 2, ACK | PSH, &[], b"hello");
        assert!(valid(&p));
        let mut bad = p.clone();
        bad[44] ^= 1;
        assert!(!valid(&bad), "the checker must notice a flipped bit");
    }

    #[test]
    fn sacked_retransmissions_are_suppressed() {
        let own = [IpAddr::from(US)];
        let mut s = Segments::default();
        let data = [0u8; 100];
        // We sent 1000..1500 in five segments; the first was lost, the peer SACKs the rest.
        for seq in [1000u32, 1100, 1200, 1300, 1400] {
            let mut p = segment(US, THEM, seq, 7, ACK, &[], &data);
            assert_eq!(s.outgoing(&mut p), Verdict::Send);
        }
        let mut ack = segment(THEM, US, 7, 1000, ACK, &sack_option(&[(1100, 1500)]), &[]);
        s.incoming(&mut ack, &own, 1420);
        // Go-back-N: the hole goes out, the rest does not.
        let mut hole = segment(US, THEM, 1000, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut hole), Verdict::Send);
        for seq in [1100u32, 1200, 1300, 1400] {
            let mut p = segment(US, THEM, seq, 7, ACK, &[], &data);
            assert_eq!(s.outgoing(&mut p), Verdict::Drop, "{seq}");
        }
        // New data beyond the SACKed range, and a segment that carries a new ACK, go out.
        let mut fresh = segment(US, THEM, 1500, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut fresh), Verdict::Send);
        let mut news = segment(US, THEM, 1200, 8, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut news), Verdict::Send);
        // Partly outside the range: sent.
        let mut straddle = segment(US, THEM, 1450, 8, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut straddle), Verdict::Send);
        assert_eq!(s.recovery.suppressed, 4);
        // A FIN is never suppressed.
        let mut fin = segment(US, THEM, 1100, 8, ACK | FIN, &[], &data);
        assert_eq!(s.outgoing(&mut fin), Verdict::Send);
    }

    #[test]
    fn the_segment_at_the_cumulative_ack_always_goes_out() {
        let own = [IpAddr::from(US)];
        let mut s = Segments::default();
        let data = [0u8; 100];
        let mut p = segment(US, THEM, 1000, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut p), Verdict::Send);
        s.incoming(
            &mut segment(THEM, US, 7, 1000, ACK, &sack_option(&[(1100, 1300)]), &[]),
            &own,
            1420,
        );
        // The hole is filled: the cumulative ACK reaches the SACKed range...
        s.incoming(&mut segment(THEM, US, 7, 1100, ACK, &[], &[]), &own, 1420);
        // ...and a receiver that dropped what it had SACKed (reneging) gets it again.
        let mut p = segment(US, THEM, 1100, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut p), Verdict::Send);
        let mut p = segment(US, THEM, 1200, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut p), Verdict::Drop);
        // A reset forgets the connection.
        s.incoming(&mut segment(THEM, US, 7, 1100, RST, &[], &[]), &own, 1420);
        let mut p = segment(US, THEM, 1200, 7, ACK, &[], &data);
        assert_eq!(s.outgoing(&mut p), Verdict::Send);
    }

    /// Like [`segment`], with a window field.
    fn with_window(mut p: Vec<u8>, window: u16) -> Vec<u8> {
        let seg = parse_tcp(&p).expect("tcp");
        p[seg.tcp + 14..seg.tcp + 16].copy_from_slice(&window.to_be_bytes());
        fill_tcp_checksum(&mut p, &seg);
        p
    }

    #[test]
    fn duplicate_acks_get_a_steady_window_that_ends_at_our_data() {
        let own = [IpAddr::from(US)];
        let dup = |window, blocks: &[(u32, u32)]| {
            with_window(
                segment(THEM, US, 7, 1000, ACK, &sack_option(blocks), &[]),
                window,
            )
        };
        // The peer's SYN said nothing of scaling: the duplicates keep the first one's window.
        let mut s = Segments::default();
        let mut data = segment(US, THEM, 1000, 7, ACK, &[], &[0u8; 500]);
        assert_eq!(s.outgoing(&mut data), Verdict::Send);
        let mut first = dup(900, &[(1100, 1200)]);
        s.incoming(&mut first, &own, 1420);
        assert_eq!(be16(&first, 34), Some(900));
        for (window, end) in [(880u16, 1300u32), (860, 1400), (0, 1500)] {
            let mut p = dup(window, &[(1100, end)]);
            s.incoming(&mut p, &own, 1420);
            let want = if window == 0 { 0 } else { 900 };
            assert_eq!(be16(&p, 34), Some(want), "window {window}");
            assert!(valid(&p), "the checksum follows the new window");
        }
        // A new cumulative ACK keeps its own window; so does an ACK without SACK blocks.
        let mut p = with_window(segment(THEM, US, 7, 1500, ACK, &[], &[]), 700);
        s.incoming(&mut p, &own, 1420);
        assert_eq!(be16(&p, 34), Some(700));
        let mut p = with_window(segment(THEM, US, 7, 1500, ACK, &[], &[]), 1200);
        s.incoming(&mut p, &own, 1420);
        assert_eq!(be16(&p, 34), Some(1200));
        assert_eq!(s.recovery.normalized, 2);

        // With a window scale of 7 (128-byte units), duplicates announce the data in flight:
        // 1000..2280 is 1280 bytes, 10 units.
        let mut s = Segments::default();
        let mut syn = segment(THEM, US, 6, 999, SYN | ACK, &[3, 3, 7, 1], &[]);
        s.incoming(&mut syn, &own, 1420);
        let mut data = segment(US, THEM, 1000, 7, ACK, &[], &[0u8; 1280]);
        assert_eq!(s.outgoing(&mut data), Verdict::Send);
        for (window, end) in [(1087u16, 1500u32), (1090, 1800), (1000, 2280)] {
            let mut p = dup(window, &[(1200, end)]);
            s.incoming(&mut p, &own, 1420);
            assert_eq!(be16(&p, 34), Some(10), "window {window}");
            assert!(valid(&p));
        }
    }

    #[test]
    fn ranges_merge_and_wrap() {
        let mut f = Flow::new(u32::MAX - 100, u32::MAX - 100, Instant::now());
        f.add_range(u32::MAX - 50, 50);
        f.add_range(100, 200);
        f.add_range(40, 120);
        assert_eq!(f.sacked, vec![(u32::MAX - 50, 200)]);
        assert!(f.covers(u32::MAX - 10, 10));
        assert!(!f.covers(u32::MAX - 60, 10));
        f.acknowledge(150);
        assert_eq!(f.sacked, vec![(150, 200)]);
        // Ranges at or below the cumulative ACK and empty ones are ignored.
        f.add_range(100, 150);
        f.add_range(300, 300);
        assert_eq!(f.sacked, vec![(150, 200)]);
        for i in 0..40u32 {
            f.add_range(1000 + i * 10, 1005 + i * 10);
        }
        assert_eq!(f.sacked.len(), MAX_RANGES);
    }

    #[test]
    fn option_parsing_survives_garbage() {
        assert_eq!(
            sack_blocks(&sack_option(&[(1, 2), (3, 4)])),
            vec![(1, 2), (3, 4)]
        );
        assert_eq!(sack_blocks(&[5, 10, 0, 0, 0, 1, 0, 0, 0, 2]), vec![(1, 2)]);
        for options in [
            &[5u8, 0][..],
            &[5, 1],
            &[5, 200, 1, 2],
            &[2],
            &[5, 9, 0, 0, 0, 1, 0, 0, 0, 2],
        ] {
            let _ = sack_blocks(options);
        }
        let mut state = 0x2545f4914f6cdd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            let mut p = segment(THEM, US, 1, 2, ACK, &[], &[]);
            let i = (state % p.len() as u64) as usize;
            p[i] = bytes[0];
            p.truncate(p.len() - usize::from(bytes[1] % 8));
            let mut s = Segments::default();
            s.incoming(&mut p, &[IpAddr::from(US)], 1420);
            let _ = s.outgoing(&mut p);
        }
    }

    /// An ICMPv4 "fragmentation needed" quoting our packet to `THEM`.
    fn frag_needed(mtu: u16, quoted_src: [u8; 4]) -> Vec<u8> {
        let quoted = segment(quoted_src, THEM, 1, 2, ACK, &[], &[0u8; 16]);
        let mut p = vec![0u8; 20 + 8 + 28];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[9] = PROTO_ICMP;
        p[12..16].copy_from_slice(&[10, 0, 0, 9]);
        p[16..20].copy_from_slice(&US);
        p[20] = 3;
        p[21] = 4;
        p[26..28].copy_from_slice(&mtu.to_be_bytes());
        p[28..].copy_from_slice(&quoted[..28]);
        p
    }

    #[test]
    fn path_mtu_from_icmp_splits_segments() {
        let own = [IpAddr::from(US)];
        let mut s = Segments::default();
        // Not ours, useless, or not smaller: ignored.
        s.incoming(&mut frag_needed(1280, [10, 0, 0, 7]), &own, 1420);
        s.incoming(&mut frag_needed(0, US), &own, 1420);
        s.incoming(&mut frag_needed(1500, US), &own, 1420);
        assert!(s.paths.paths.is_empty());
        s.incoming(&mut frag_needed(1280, US), &own, 1420);
        assert_eq!(s.paths.get(IpAddr::from(THEM), Instant::now()), Some(1280));
        // Absurdly small values are raised to the floor.
        let mut t = Segments::default();
        t.incoming(&mut frag_needed(68, US), &own, 1420);
        assert_eq!(
            t.paths.get(IpAddr::from(THEM), Instant::now()),
            Some(MIN_MTU_V4)
        );

        let payload: Vec<u8> = (0..1380u32).map(|i| (i % 251) as u8).collect();
        let mut big = segment(US, THEM, 5000, 7, ACK | PSH | FIN, &[], &payload);
        assert_eq!(big.len(), 1420);
        let Verdict::Split(room) = s.outgoing(&mut big) else {
            panic!("a 1420-byte segment to a 1280-byte path must be split");
        };
        assert_eq!(room, 1240);
        let mut pieces = Vec::new();
        split(&big, room, &mut Vec::new(), |p| pieces.push(p.to_vec()));
        assert_eq!(pieces.len(), 2);
        let mut joined = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() <= 1280);
            assert!(valid(p), "piece {i} has a bad checksum");
            let seg = parse_tcp(p).expect("tcp");
            assert_eq!(seg.seq, 5000 + joined.len() as u32);
            let last = i + 1 == pieces.len();
            assert_eq!(seg.flags & (FIN | PSH) != 0, last);
            joined.extend_from_slice(&p[seg.tcp + seg.tcp_len..]);
        }
        assert_eq!(joined, payload);
        // Small segments and other destinations are left alone.
        let mut small = segment(US, THEM, 1, 7, ACK, &[], &[0u8; 100]);
        assert_eq!(s.outgoing(&mut small), Verdict::Send);
        let mut other = segment(US, [10, 0, 0, 3], 1, 7, ACK, &[], &payload);
        assert_eq!(s.outgoing(&mut other), Verdict::Send);
        // A SYN to that destination announces an MSS that fits.
        let mut syn = segment(US, THEM, 1, 0, SYN, &[2, 4, 0x05, 0x64], &[]);
        assert_eq!(s.outgoing(&mut syn), Verdict::Send);
        assert_eq!(be16(&syn, 42), Some(1240));
        assert!(valid(&syn));
    }
}
