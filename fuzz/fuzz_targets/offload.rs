//! `rwg_device::offload`: the TUN segmenter and the receive-side coalescer (pure code).
//!
//! The first byte picks the mode:
//! - bit 0 clear, **segment**: the rest is a vnet header (10 bytes), the number of output slots
//!   (1 byte), the headroom (1 byte), then the packet. `segment` must not panic, and when it
//!   succeeds: at most as many packets as there are slots, each within its slot; without GSO
//!   the packet comes out unchanged but for the checksum field `NEEDS_CSUM` names, which then
//!   holds the sum from `csum_start` on; with GSO every segment is an IP packet of its own length with a valid IPv4
//!   header checksum and L4 checksum, the same addresses and protocol, consecutive IPv4
//!   identifications and TCP sequence numbers, at most `gso_size` payload (all but the last
//!   exactly that), FIN/PSH only on the last, and the payloads joined are the original payload.
//! - bit 0 set, **round trip**: the rest is a list of packet records (see `Gen`) in batches;
//!   each batch goes through `Coalescer` (bits 1 and 2: join TCP, join UDP), and every packet it
//!   yields through `segment`, as the TUN would. What comes out must be the packets that went in:
//!   the same number, each equal to an input (IPv4 identification and checksums aside: those
//!   are recomputed, and then verified; and the urgent pointer of a segment without URG),
//!   packets of one flow in their original order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwg_device::offload::{
    checksum_add, checksum_finish, segment, Coalescer, SegmentsOut, VnetHdr, F_NEEDS_CSUM, GSO_ECN,
    GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, MAX_SEGMENTS, VNET_HDR_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        segment_one(rest);
    } else {
        round_trip(mode, rest);
    }
});

/// What the checks need of an IP packet, read independently of the code under test.
#[derive(Clone, Copy, Debug)]
struct Ip {
    v6: bool,
    l4: usize,
    proto: u8,
    total: usize,
}

fn parse_ip(p: &[u8]) -> Option<Ip> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let l4 = usize::from(p[0] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            (l4 >= 20 && l4 <= total && total <= p.len()).then_some(Ip {
                v6: false,
                l4,
                proto: p[9],
                total,
            })
        }
        6 if p.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            (total <= p.len()).then_some(Ip {
                v6: true,
                l4: 40,
                proto: p[6],
                total,
            })
        }
        _ => None,
    }
}

/// The sum over the pseudo-header and the L4 bytes: 0 (as finished) when the checksum is right.
fn l4_checksum_ok(p: &[u8], ip: &Ip) -> bool {
    let (src, dst) = if ip.v6 {
        (&p[8..24], &p[24..40])
    } else {
        (&p[12..16], &p[16..20])
    };
    let mut sum = checksum_add(0, src);
    sum = checksum_add(sum, dst);
    sum += u64::from(ip.proto) + (ip.total - ip.l4) as u64;
    checksum_finish(checksum_add(sum, &p[ip.l4..ip.total])) == 0
}

fn ipv4_header_ok(p: &[u8], ip: &Ip) -> bool {
    ip.v6 || checksum_finish(checksum_add(0, &p[..ip.l4])) == 0
}

fn l4_header_len(p: &[u8], ip: &Ip) -> Option<usize> {
    match ip.proto {
        6 => Some(usize::from(*p.get(ip.l4 + 12)? >> 4) * 4).filter(|&d| d >= 20),
        17 => Some(8),
        _ => None,
    }
}

fn segment_one(data: &[u8]) {
    if data.len() < VNET_HDR_LEN + 2 {
        return;
    }
    let hdr = VnetHdr::parse(data).expect("10 bytes are there");
    let slots = usize::from(data[VNET_HDR_LEN] % (MAX_SEGMENTS as u8 + 1)).max(1);
    let headroom = usize::from(data[VNET_HDR_LEN + 1] & 63);
    let packet = &data[VNET_HDR_LEN + 2..];
    let stride = headroom + packet.len().max(1);
    let mut buf = vec![0xa5u8; slots * stride];
    let mut lens = vec![usize::MAX; slots];
    let mut out = SegmentsOut {
        buf: &mut buf,
        stride,
        headroom,
        lens: &mut lens,
    };
    let Ok(n) = segment(&hdr, packet, &mut out) else {
        return;
    };
    assert!(n >= 1 && n <= slots, "{n} packets for {slots} slots");
    let outs: Vec<&[u8]> = (0..n)
        .map(|i| {
            assert!(
                lens[i] <= stride - headroom,
                "packet {i} overflows its slot"
            );
            &buf[i * stride + headroom..i * stride + headroom + lens[i]]
        })
        .collect();
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        assert_eq!(n, 1);
        let o = outs[0];
        assert_eq!(o.len(), packet.len());
        if hdr.flags & F_NEEDS_CSUM == 0 {
            assert_eq!(o, packet, "a packet without offloads was changed");
        } else {
            let start = usize::from(hdr.csum_start);
            let field = start + usize::from(hdr.csum_offset);
            let mut expected = packet.to_vec();
            expected[field..field + 2].copy_from_slice(&o[field..field + 2]);
            assert_eq!(o, &expected[..], "bytes other than the checksum changed");
            // The field held the pseudo-header sum: the checksum is the sum from csum_start
            // to the end as it was (a UDP zero may be sent as all ones).
            let c = checksum_finish(checksum_add(0, &packet[start..]));
            let got = u16::from_be_bytes([o[field], o[field + 1]]);
            assert!(
                got == c || (c == 0 && got == 0xffff),
                "checksum {got:#x}, not {c:#x}"
            );
        }
        return;
    }
    let ip = parse_ip(packet).expect("segment split a packet it could not parse");
    let hdrs = ip.l4 + l4_header_len(packet, &ip).expect("segment split a non-TCP/UDP packet");
    let payload = &packet[hdrs..ip.total];
    let mss = usize::from(hdr.gso_size);
    let mut joined = Vec::with_capacity(payload.len());
    let first_seq = u32::from_be_bytes(packet[ip.l4 + 4..ip.l4 + 8].try_into().unwrap());
    let first_id = u16::from_be_bytes([packet[4], packet[5]]);
    for (i, o) in outs.iter().enumerate() {
        let last = i + 1 == n;
        let sip = parse_ip(o).expect("a segment does not parse");
        assert_eq!(
            sip.total,
            o.len(),
            "length field disagrees with the segment's length"
        );
        assert_eq!((sip.v6, sip.l4, sip.proto), (ip.v6, ip.l4, ip.proto));
        assert!(ipv4_header_ok(o, &sip), "bad IPv4 header checksum");
        assert!(l4_checksum_ok(o, &sip), "bad L4 checksum");
        if ip.v6 {
            assert_eq!(o[8..40], packet[8..40], "addresses changed");
        } else {
            assert_eq!(o[12..20], packet[12..20], "addresses changed");
            let id = u16::from_be_bytes([o[4], o[5]]);
            assert_eq!(id, first_id.wrapping_add(i as u16), "IPv4 identification");
        }
        assert_eq!(
            o[ip.l4..ip.l4 + 4],
            packet[ip.l4..ip.l4 + 4],
            "ports changed"
        );
        let seg_payload = &o[hdrs..];
        assert!(seg_payload.len() <= mss);
        if !last {
            assert_eq!(
                seg_payload.len(),
                mss,
                "a segment other than the last is short"
            );
        }
        if ip.proto == 6 {
            let seq = u32::from_be_bytes(o[ip.l4 + 4..ip.l4 + 8].try_into().unwrap());
            assert_eq!(seq, first_seq.wrapping_add(joined.len() as u32));
            let flags = o[ip.l4 + 13];
            if !last {
                assert_eq!(flags & 0x09, 0, "FIN or PSH before the last segment");
            }
        } else {
            let udp_len = usize::from(u16::from_be_bytes([o[ip.l4 + 4], o[ip.l4 + 5]]));
            assert_eq!(udp_len, o.len() - ip.l4, "UDP length");
        }
        joined.extend_from_slice(seg_payload);
    }
    assert_eq!(
        joined, payload,
        "the segments' payloads are not the packet's payload"
    );
}

/// Builds packets from the input: mostly well-formed TCP/UDP segments of a few flows (so the
/// coalescer has something to join), sometimes with one header field changed, sometimes raw
/// bytes.
struct Gen {
    /// Per flow: next TCP sequence number, next IPv4 identification, current segment size.
    seq: [u32; 6],
    id: [u16; 6],
    size: [usize; 6],
    counter: u8,
}

/// Flows: 0, 1 IPv4 TCP; 2 IPv6 TCP; 3 IPv4 UDP; 4 IPv6 UDP; 5 IPv4 TCP with options.
fn flow_shape(flow: usize) -> (bool, u8, usize) {
    match flow {
        0 | 1 => (false, 6, 20),
        2 => (true, 6, 20),
        3 => (false, 17, 8),
        4 => (true, 17, 8),
        _ => (false, 6, 32),
    }
}

impl Gen {
    fn new() -> Gen {
        Gen {
            seq: [1000, 0xffff_ff00, 7, 0, 0, 42],
            id: [1, 0xfffe, 0, 9, 0, 300],
            size: [100; 6],
            counter: 0,
        }
    }

    /// One record: `k` (flow = k % 6 … see below), then a tweak byte and a size byte as needed.
    /// `k >> 5`: 0–3 a segment of the flow continuing it at the current size, 4 with a new
    /// size (next byte × 8, 0 allowed), 5 out of sequence, 6 with a tweak (next byte), 7 raw
    /// bytes (next byte = length).
    fn packet(&mut self, data: &mut &[u8]) -> Option<Vec<u8>> {
        let (&k, rest) = data.split_first()?;
        *data = rest;
        let take = |data: &mut &[u8]| {
            let (&b, rest) = data.split_first().unwrap_or((&0, &[]));
            *data = rest;
            b
        };
        let flow = usize::from(k & 7) % 6;
        let kind = k >> 5;
        let mut tweak = 0u8;
        match kind {
            4 => self.size[flow] = usize::from(take(data)) * 8,
            5 => self.seq[flow] = self.seq[flow].wrapping_add(1 + u32::from(take(data))),
            6 => tweak = take(data),
            7 => {
                let len = usize::from(take(data)).min(data.len());
                let (raw, rest) = data.split_at(len);
                *data = rest;
                return Some(raw.to_vec());
            }
            _ => {}
        }
        // Bits 3–4 of k: the last segment of a run is shorter (1), or carries PSH (2).
        let short = k & 0x18 == 0x08;
        let psh = k & 0x18 == 0x10;
        let (v6, proto, l4_len) = flow_shape(flow);
        let mut payload_len = self.size[flow];
        if short {
            payload_len /= 2;
        }
        let l4 = if v6 { 40 } else { 20 };
        let total = l4 + l4_len + payload_len;
        let mut p = vec![0u8; total];
        self.counter = self.counter.wrapping_add(1);
        for (i, b) in p[l4 + l4_len..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ self.counter;
        }
        let (src, dst): (&[u8], &[u8]) = if v6 {
            (
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            )
        } else {
            (&[10, 0, 0, 2], &[10, 0, 0, 1])
        };
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = proto;
            p[7] = 64;
            p[8..24].copy_from_slice(src);
            p[24..40].copy_from_slice(dst);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&self.id[flow].to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = proto;
            p[12..16].copy_from_slice(src);
            p[16..20].copy_from_slice(dst);
        }
        self.id[flow] = self.id[flow].wrapping_add(1);
        // Ports: flows 0 and 1 differ only here.
        p[l4..l4 + 4].copy_from_slice(&[0xc0, flow as u8, 0x01, 0xbb]);
        if proto == 6 {
            p[l4 + 4..l4 + 8].copy_from_slice(&self.seq[flow].to_be_bytes());
            self.seq[flow] = self.seq[flow].wrapping_add(payload_len as u32);
            p[l4 + 8..l4 + 12].copy_from_slice(&0x5555_0000u32.to_be_bytes());
            p[l4 + 12] = ((l4_len / 4) as u8) << 4;
            p[l4 + 13] = 0x10 | if psh { 0x08 } else { 0 };
            p[l4 + 14..l4 + 16].copy_from_slice(&[0x01, 0x00]);
            if l4_len > 20 {
                // NOP NOP timestamp
                p[l4 + 20..l4 + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
            }
        } else {
            p[l4 + 4..l4 + 6].copy_from_slice(&((total - l4) as u16).to_be_bytes());
        }
        if tweak != 0 {
            // Change one header byte (TTL, TOS, ACK, window, flags, options, a length ...).
            let at = usize::from(tweak) % (l4 + l4_len);
            p[at] ^= 1 << (tweak >> 5);
        }
        fill_checksums(&mut p);
        Some(p)
    }
}

/// Sets a well-formed packet's IPv4 header and L4 checksums (after a tweak, whatever it still
/// parses as).
fn fill_checksums(p: &mut [u8]) {
    let Some(ip) = parse_ip(p) else {
        return;
    };
    if !ip.v6 {
        p[10..12].fill(0);
        let c = checksum_finish(checksum_add(0, &p[..ip.l4]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let field = match ip.proto {
        6 if ip.l4 + 20 <= ip.total => ip.l4 + 16,
        17 if ip.l4 + 8 <= ip.total => ip.l4 + 6,
        _ => return,
    };
    p[field..field + 2].fill(0);
    let (src, dst) = if ip.v6 {
        (p[8..24].to_vec(), p[24..40].to_vec())
    } else {
        (p[12..16].to_vec(), p[16..20].to_vec())
    };
    let mut sum = checksum_add(checksum_add(0, &src), &dst);
    sum += u64::from(ip.proto) + (ip.total - ip.l4) as u64;
    let c = checksum_finish(checksum_add(sum, &p[ip.l4..ip.total]));
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// A packet as the round trip must preserve it: cut to its IP length, with the IPv4
/// identification and the checksums blanked (the segmenter writes them afresh).
fn canonical(p: &[u8]) -> Vec<u8> {
    let Some(ip) = parse_ip(p) else {
        return p.to_vec();
    };
    let mut c = p[..ip.total].to_vec();
    if !ip.v6 {
        c[4..6].fill(0);
        c[10..12].fill(0);
    }
    match ip.proto {
        6 if ip.l4 + 20 <= ip.total => {
            c[ip.l4 + 16..ip.l4 + 18].fill(0);
            // The urgent pointer means nothing without URG (and URG segments never join):
            // a joined run carries its first segment's, as the kernel's GRO does.
            if c[ip.l4 + 13] & 0x20 == 0 {
                c[ip.l4 + 18..ip.l4 + 20].fill(0);
            }
        }
        6 if ip.l4 + 18 <= ip.total => c[ip.l4 + 16..ip.l4 + 18].fill(0),
        17 if ip.l4 + 8 <= ip.total => c[ip.l4 + 6..ip.l4 + 8].fill(0),
        _ => {}
    }
    c
}

/// An input packet not yet matched to an output: its canonical form, its flow and its
/// addresses (see `canonical`, `flow_of`, `addresses_of`).
struct Pending {
    canonical: Vec<u8>,
    flow: Option<Vec<u8>>,
    addresses: Option<Vec<u8>>,
}

/// Source and destination, read as the coalescer reads them for a packet that cannot join:
/// whatever else the packet holds.
fn addresses_of(p: &[u8]) -> Option<Vec<u8>> {
    match p.first()? >> 4 {
        4 => p.get(12..20).map(<[u8]>::to_vec),
        6 => p.get(8..40).map(<[u8]>::to_vec),
        _ => None,
    }
}

/// Protocol, addresses and ports: segments of one flow must stay in order. A packet without
/// one (an IPv4 fragment or a packet with IPv4 options, an IPv6 extension header, another
/// protocol, bytes that do not parse) may belong to any flow between its two addresses: it
/// must stay in order with every packet between them (see README.md, "Findings").
fn flow_of(p: &[u8]) -> Option<Vec<u8>> {
    let ip = parse_ip(p)?;
    if !matches!(ip.proto, 6 | 17) || ip.l4 + 4 > ip.total {
        return None;
    }
    if !ip.v6 && (ip.l4 != 20 || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0) {
        return None;
    }
    let mut key = vec![ip.proto];
    key.extend_from_slice(if ip.v6 { &p[8..40] } else { &p[12..20] });
    key.extend_from_slice(&p[ip.l4..ip.l4 + 4]);
    Some(key)
}

fn round_trip(mode: u8, mut data: &[u8]) {
    let mut coalescer = Coalescer::with(mode & 2 != 0, mode & 4 != 0);
    let mut gen = Gen::new();
    // Output slots for `segment`, reused across batches (only what it writes is read).
    let mut buf = Vec::new();
    // Batches end at a 0xff record byte (or the input's end); at most 8 batches of 96 packets.
    for _ in 0..8 {
        let mut batch = Vec::new();
        while batch.len() < 96 {
            match data.first() {
                None => break,
                Some(0xff) => {
                    data = &data[1..];
                    break;
                }
                Some(_) => {}
            }
            if let Some(p) = gen.packet(&mut data) {
                batch.push(p);
            }
        }
        if batch.is_empty() && data.is_empty() {
            break;
        }
        check_batch(&mut coalescer, &batch, &mut buf);
    }
}

fn check_batch(coalescer: &mut Coalescer, batch: &[Vec<u8>], buf: &mut Vec<u8>) {
    coalescer.clear();
    for p in batch {
        coalescer.push(p);
    }
    let stride = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
    if buf.len() < MAX_SEGMENTS * stride {
        buf.resize(MAX_SEGMENTS * stride, 0);
    }
    let mut lens = vec![0usize; MAX_SEGMENTS];
    let mut outputs = Vec::new();
    let written = coalescer.len();
    let mut seen = 0;
    for framed in coalescer.packets() {
        seen += 1;
        let hdr = VnetHdr::parse(framed).expect("every packet has a vnet header");
        let packet = &framed[VNET_HDR_LEN..];
        assert!(packet.len() <= 65535, "a coalesced packet is over 64 KiB");
        if hdr.gso_type != GSO_NONE {
            assert!(matches!(hdr.gso_type, GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4));
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
        }
        let mut out = SegmentsOut {
            buf,
            stride,
            headroom: 0,
            lens: &mut lens,
        };
        let n = segment(&hdr, packet, &mut out)
            .unwrap_or_else(|e| panic!("the coalescer wrote a packet segment refuses: {e:?}"));
        assert!(
            hdr.gso_type == GSO_NONE || n >= 2,
            "a run of one got a GSO header"
        );
        for i in 0..n {
            let o = &buf[i * stride..i * stride + lens[i]];
            if hdr.gso_type != GSO_NONE {
                let ip = parse_ip(o).expect("a segment of a run does not parse");
                assert!(
                    ipv4_header_ok(o, &ip) && l4_checksum_ok(o, &ip),
                    "bad checksum"
                );
            }
            outputs.push(o.to_vec());
        }
    }
    assert_eq!(seen, written, "len() disagrees with packets()");
    assert_eq!(outputs.len(), batch.len(), "packets were lost or made up");
    // Inputs not matched yet: canonical form and flow.
    let mut pending: Vec<Option<Pending>> = batch
        .iter()
        .map(|p| {
            Some(Pending {
                canonical: canonical(p),
                flow: flow_of(p),
                addresses: addresses_of(p),
            })
        })
        .collect();
    for o in &outputs {
        let c = canonical(o);
        let at = pending
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.canonical == c))
            .unwrap_or_else(|| {
                dump(batch, &outputs);
                panic!("an output packet is not one of the inputs: {}", summary(o))
            });
        let Some(this) = pending[at].take() else {
            unreachable!("position() found a pending packet")
        };
        // Everything still pending before it came first in the batch.
        for earlier in pending[..at].iter().flatten() {
            let same_flow = this.flow.is_some() && earlier.flow == this.flow;
            let portless = this.flow.is_none() || earlier.flow.is_none();
            let same_addresses = this.addresses.is_some() && earlier.addresses == this.addresses;
            if same_flow || (portless && same_addresses) {
                dump(batch, &outputs);
                panic!("packets of one flow were reordered: {}", summary(o));
            }
        }
    }
}

/// Length, flow, TCP sequence number and flags of a packet, for failure messages.
fn summary(p: &[u8]) -> String {
    match parse_ip(p) {
        Some(ip) if ip.proto == 6 && ip.l4 + 20 <= ip.total => format!(
            "len {} total {} v6 {} port {:02x} seq {:#x} doff {:02x} flags {:02x} payload {:02x?}",
            p.len(),
            ip.total,
            ip.v6,
            p[ip.l4 + 1],
            u32::from_be_bytes(p[ip.l4 + 4..ip.l4 + 8].try_into().unwrap()),
            p[ip.l4 + 12],
            p[ip.l4 + 13],
            &p[ip.total.min(ip.l4 + 40).min(p.len())..ip.total.min(ip.l4 + 44)]
        ),
        _ => format!("{:02x?}", &p[..p.len().min(48)]),
    }
}

/// The batch and what came out, on stderr, when a check fails.
fn dump(batch: &[Vec<u8>], outputs: &[Vec<u8>]) {
    for p in batch {
        eprintln!("in  {}", summary(p));
    }
    for p in outputs {
        eprintln!("out {}", summary(p));
    }
}
