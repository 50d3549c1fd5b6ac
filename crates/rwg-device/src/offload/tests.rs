//! Segmentation and coalescing against packets built by hand, checked with a checksum
//! written here from RFC 1071's definition (byte pairs, end-around carry), not the module's.

use super::*;

/// RFC 1071, the plain way: sum of 16-bit big-endian words with end-around carry.
fn naive_sum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A packet whose checksums are right sums to 0xffff over header (IPv4) and pseudo-header+L4.
fn assert_checksums_valid(p: &[u8]) {
    let v6 = p[0] >> 4 == 6;
    let (l4, proto, src, dst): (usize, u8, &[u8], &[u8]) = if v6 {
        (40, p[6], &p[8..24], &p[24..40])
    } else {
        let ihl = usize::from(p[0] & 15) * 4;
        assert_eq!(naive_sum(&[&p[..ihl]]), 0xffff, "IPv4 header checksum");
        (ihl, p[9], &p[12..16], &p[16..20])
    };
    let total = if v6 {
        40 + usize::from(u16::from_be_bytes([p[4], p[5]]))
    } else {
        usize::from(u16::from_be_bytes([p[2], p[3]]))
    };
    assert_eq!(total, p.len(), "IP length field");
    let l4_len = (total - l4) as u32;
    let pseudo: Vec<u8> = if v6 {
        [src, dst, &l4_len.to_be_bytes(), &[0, 0, 0, proto]].concat()
    } else {
        [src, dst, &[0, proto], &(l4_len as u16).to_be_bytes()].concat()
    };
    assert_eq!(naive_sum(&[&pseudo, &p[l4..]]), 0xffff, "L4 checksum");
}

fn ipv4_header(proto: u8, total: usize, id: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[192, 168, 4, 1]);
    h[16..20].copy_from_slice(&[192, 168, 4, 2]);
    let c = !naive_sum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn ipv6_header(proto: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = proto;
    h[7] = 64;
    h[8] = 0xfd;
    h[23] = 1;
    h[24] = 0xfd;
    h[39] = 2;
    h
}

/// A TCP header with timestamps (12 bytes of options), seq, ack, flags.
fn tcp_header(seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 32];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    t
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A super-packet as the kernel hands it over with TSO: full lengths in the IP header, the TCP
/// checksum field holding the pseudo-header sum (for the whole packet).
fn tso_packet(v6: bool, payload_len: usize, flags: u8) -> (VnetHdr, Vec<u8>) {
    let tcp = tcp_header(1_000_000, 77, flags);
    let data = payload(payload_len, 3);
    let l4_len = tcp.len() + data.len();
    let ip = if v6 {
        ipv6_header(6, l4_len)
    } else {
        ipv4_header(6, 20 + l4_len, 0x1234)
    };
    let mut p = [ip.clone(), tcp, data].concat();
    let l4 = ip.len();
    let pseudo: Vec<u8> = if v6 {
        [
            &p[8..24],
            &p[24..40],
            &(l4_len as u32).to_be_bytes()[..],
            &[0, 0, 0, 6],
        ]
        .concat()
    } else {
        [
            &p[12..16],
            &p[16..20],
            &[0, 6],
            &(l4_len as u16).to_be_bytes()[..],
        ]
        .concat()
    };
    let partial = naive_sum(&[&pseudo]);
    p[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (l4 + 32) as u16,
        gso_size: 1000,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (hdr, p)
}

/// A UDP super-packet as the kernel hands it over with USO: `data` in one datagram of the full
/// length, to be split into `gso_size` pieces.
fn uso_packet(v6: bool, data: &[u8], gso_size: u16) -> (VnetHdr, Vec<u8>) {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    let l4_len = 8 + data.len();
    udp[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    let ip = if v6 {
        ipv6_header(17, l4_len)
    } else {
        ipv4_header(17, 20 + l4_len, 7)
    };
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: (ip.len() + 8) as u16,
        gso_size,
        csum_start: ip.len() as u16,
        csum_offset: 6,
    };
    (hdr, [ip, udp, data.to_vec()].concat())
}

fn split(hdr: &VnetHdr, p: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let stride = 16 + 1600;
    let mut buf = vec![0u8; 64 * stride];
    let mut lens = [0usize; 64];
    let mut out = SegmentsOut {
        buf: &mut buf,
        stride,
        headroom: 16,
        lens: &mut lens,
    };
    let n = segment(hdr, p, &mut out)?;
    Ok((0..n)
        .map(|i| buf[i * stride + 16..i * stride + 16 + lens[i]].to_vec())
        .collect())
}

#[test]
fn rfc1071_example_header() {
    // The IPv4 header example with checksum 0xb861 (wire bytes of a common textbook capture).
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(checksum_finish(checksum_add(0, &h)), 0xb861);
    // Odd lengths pad with a zero byte.
    assert_eq!(
        checksum_finish(checksum_add(0, &[0x01, 0x02, 0x03])),
        !naive_sum(&[&[0x01, 0x02, 0x03]])
    );
}

#[test]
fn tso4_splits_into_mss_segments_with_right_headers() {
    let (hdr, p) = tso_packet(false, 2500, 0x18 /* PSH|ACK */);
    let segs = split(&hdr, &p).expect("valid TSO packet");
    assert_eq!(segs.len(), 3);
    let mut data = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_checksums_valid(s);
        let id = u16::from_be_bytes([s[4], s[5]]);
        assert_eq!(id, 0x1234 + i as u16, "consecutive IPv4 ids");
        let seq = u32::from_be_bytes(s[24..28].try_into().expect("4"));
        assert_eq!(seq, 1_000_000 + 1000 * i as u32);
        let psh = s[20 + 13] & 0x08 != 0;
        assert_eq!(psh, i == 2, "PSH only on the last segment");
        assert_eq!(&s[20 + 20..20 + 32], &p[20 + 20..20 + 32], "options kept");
        data.extend_from_slice(&s[52..]);
    }
    assert_eq!(segs[0].len(), 52 + 1000);
    assert_eq!(segs[2].len(), 52 + 500);
    assert_eq!(data, payload(2500, 3));
}

#[test]
fn tso6_and_fin_and_cwr() {
    let (hdr, p) = tso_packet(true, 3000, 0x80 | 0x10 | 0x01 /* CWR|ACK|FIN */);
    let segs = split(&hdr, &p).expect("valid TSO6 packet");
    assert_eq!(segs.len(), 3);
    for (i, s) in segs.iter().enumerate() {
        assert_checksums_valid(s);
        let flags = s[40 + 13];
        assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
        assert_eq!(flags & 0x01 != 0, i == 2, "FIN only on the last");
        assert_eq!(flags & 0x10, 0x10, "ACK on all");
    }
}

#[test]
fn uso_splits_udp_with_lengths_and_checksums() {
    for v6 in [false, true] {
        let data = payload(3000, 9);
        let (hdr, p) = uso_packet(v6, &data, 1200);
        let l4 = if v6 { 40 } else { 20 };
        let segs = split(&hdr, &p).expect("valid USO packet");
        assert_eq!(segs.len(), 3);
        let mut got = Vec::new();
        for s in &segs {
            assert_checksums_valid(s);
            let udp_len = usize::from(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]]));
            assert_eq!(udp_len, s.len() - l4);
            got.extend_from_slice(&s[l4 + 8..]);
        }
        assert_eq!(got, data);
    }
}

#[test]
fn a_plain_packet_needing_a_checksum_gets_it() {
    let (mut hdr, p) = tso_packet(false, 500, 0x18);
    hdr.gso_type = GSO_NONE;
    hdr.gso_size = 0;
    let segs = split(&hdr, &p).expect("plain packet");
    assert_eq!(segs.len(), 1);
    assert_checksums_valid(&segs[0]);
    // Without NEEDS_CSUM it is copied as is.
    hdr.flags = 0;
    assert_eq!(split(&hdr, &p).expect("plain"), vec![p]);
}

#[test]
fn bad_super_packets_are_refused_not_panicked_on() {
    let (hdr, p) = tso_packet(false, 2500, 0x10);
    for cut in [0, 1, 10, 19, 20, 30, 51] {
        assert!(split(&hdr, &p[..cut]).is_err(), "cut at {cut}");
    }
    let mut wrong = hdr;
    wrong.gso_type = GSO_TCPV6;
    assert_eq!(split(&wrong, &p), Err(OffloadError::Malformed));
    wrong.gso_type = 3; // UFO
    assert_eq!(split(&wrong, &p), Err(OffloadError::Unsupported));
    let mut zero = hdr;
    zero.gso_size = 0;
    assert_eq!(split(&zero, &p), Err(OffloadError::Malformed));
    let mut tiny = hdr;
    tiny.gso_size = 1;
    assert_eq!(split(&tiny, &p), Err(OffloadError::TooManySegments));
    // Random headers and bytes: errors or packets, never a panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 200) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(b) = junk.first_mut() {
            *b = [0x45, 0x46, 0x60, 0x4f][(next() % 4) as usize];
        }
        let h = VnetHdr {
            flags: (next() % 2) as u8,
            gso_type: [0, 1, 4, 5, 0x81][(next() % 5) as usize],
            hdr_len: (next() % 80) as u16,
            gso_size: (next() % 100) as u16,
            csum_start: (next() % 80) as u16,
            csum_offset: (next() % 20) as u16,
        };
        let _ = split(&h, &junk);
    }
}

#[test]
fn coalescing_rebuilds_the_super_packet_and_segmenting_it_gives_back_the_segments() {
    for v6 in [false, true] {
        let (hdr, p) = tso_packet(v6, 5500, 0x18);
        let segs = split(&hdr, &p).expect("valid");
        assert_eq!(segs.len(), 6);
        let mut c = Coalescer::new();
        for s in &segs {
            c.push(s);
        }
        let out: Vec<Vec<u8>> = c.packets().map(<[u8]>::to_vec).collect();
        assert_eq!(out.len(), 1, "one super-packet");
        let h = VnetHdr::parse(&out[0]).expect("header");
        assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(h.gso_size, 1000);
        assert_eq!(h.flags, F_NEEDS_CSUM);
        let joined = &out[0][VNET_HDR_LEN..];
        assert_eq!(joined.len(), p.len());
        // The kernel would split it with the header we wrote: the same segments come out.
        let again = split(&h, joined).expect("our own header is valid");
        assert_eq!(again, segs);
    }
}

#[test]
fn only_continuing_segments_of_one_flow_join() {
    let (hdr, p) = tso_packet(false, 4000, 0x10);
    let segs = split(&hdr, &p).expect("valid");
    let mut other_flow = segs.clone();
    for s in &mut other_flow {
        s[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another source port
    }
    // Interleaved flows both join.
    let mut c = Coalescer::new();
    for (a, b) in segs.iter().zip(&other_flow) {
        c.push(a);
        c.push(b);
    }
    assert_eq!(c.packets().count(), 2);
    c.clear();
    // A gap in the sequence ends the run.
    c.push(&segs[0]);
    c.push(&segs[2]);
    c.push(&segs[3]);
    let sizes: Vec<usize> = c.packets().map(|p| p.len() - VNET_HDR_LEN).collect();
    assert_eq!(sizes, [52 + 1000, 52 + 2000]);
    c.clear();
    // A different ACK number does not join.
    let mut acked = segs[1].clone();
    acked[28..32].copy_from_slice(&78u32.to_be_bytes());
    c.push(&segs[0]);
    c.push(&acked);
    assert_eq!(c.packets().count(), 2);
    c.clear();
    // Nor do segments that differ in the reserved bits before the flags (AccECN's AE): the
    // joined packet carries the first one's, and segmenting it again would change the second.
    // (Found by the `offload` fuzz target's round trip.)
    let mut ae = segs[1].clone();
    ae[32] |= 0x01;
    c.push(&segs[0]);
    c.push(&ae);
    assert_eq!(c.packets().count(), 2);
    c.clear();
    // SYN, FIN, RST never join; UDP and ICMP pass through unchanged.
    let mut fin = segs[1].clone();
    fin[33] |= 0x01;
    c.push(&segs[0]);
    c.push(&fin);
    let plain: Vec<Vec<u8>> = c.packets().map(<[u8]>::to_vec).collect();
    assert_eq!(plain.len(), 2);
    assert_eq!(
        &plain[1][VNET_HDR_LEN..],
        &fin[..],
        "passed through unchanged"
    );
    assert_eq!(VnetHdr::parse(&plain[1]), Some(VnetHdr::default()));
    c.clear();
    // A short segment ends the run; the next full one starts another.
    let (hdr2, p2) = tso_packet(false, 1500, 0x10);
    let short = split(&hdr2, &p2).expect("valid");
    c.push(&short[0]);
    c.push(&short[1]);
    let mut next = segs[0].clone();
    next[24..28].copy_from_slice(&(1_000_000u32 + 1500).to_be_bytes());
    c.push(&next);
    assert_eq!(c.packets().count(), 2);
}

#[test]
fn runs_stop_at_64_kib() {
    let (hdr, p) = tso_packet(false, 64_000, 0x10);
    let mut big = hdr;
    big.gso_size = 1000;
    let segs = split(&big, &p).expect("valid");
    assert_eq!(segs.len(), 64);
    let (hdr2, p2) = tso_packet(false, 2000, 0x10);
    let mut more = split(&hdr2, &p2).expect("valid");
    for (i, s) in more.iter_mut().enumerate() {
        let seq = 1_000_000u32 + 64_000 + 1000 * i as u32;
        s[24..28].copy_from_slice(&seq.to_be_bytes());
    }
    let mut c = Coalescer::new();
    for s in segs.iter().chain(&more) {
        c.push(s);
    }
    let sizes: Vec<usize> = c.packets().map(|p| p.len() - VNET_HDR_LEN).collect();
    assert!(sizes.iter().all(|&s| s <= MAX_SUPER_PACKET));
    assert_eq!(sizes.iter().map(|s| s - 52).sum::<usize>() % 1000, 0);
    assert!(sizes.len() >= 2);
}

#[test]
fn udp_datagrams_of_one_flow_join_where_uso_is_on() {
    for v6 in [false, true] {
        let (hdr, p) = uso_packet(v6, &payload(3000, 5), 1200);
        let datagrams = split(&hdr, &p).expect("valid");
        // Without USO they pass through one by one.
        let mut c = Coalescer::new();
        for d in &datagrams {
            c.push(d);
        }
        assert_eq!(c.packets().count(), 3);
        // With it they join, and splitting the result gives them back.
        let mut c = Coalescer::with(true, true);
        for d in &datagrams {
            c.push(d);
        }
        let out: Vec<Vec<u8>> = c.packets().map(<[u8]>::to_vec).collect();
        assert_eq!(out.len(), 1);
        let h = VnetHdr::parse(&out[0]).expect("header");
        assert_eq!(
            (h.gso_type, h.gso_size, h.csum_offset),
            (GSO_UDP_L4, 1200, 6)
        );
        assert_eq!(
            split(&h, &out[0][VNET_HDR_LEN..]).expect("valid"),
            datagrams
        );
        // A datagram of another size in the middle ends the run.
        let mut c = Coalescer::with(true, true);
        c.push(&datagrams[0]);
        c.push(&datagrams[2]); // 600 bytes: shorter, ends it
        c.push(&datagrams[1]);
        let sizes: Vec<usize> = c.packets().map(|p| p.len() - VNET_HDR_LEN).collect();
        assert_eq!(sizes.len(), 2);
    }
}

/// A datagram (or segment) of a flow that the coalescer cannot join (here: an IPv4 fragment,
/// an IPv4 packet with options, a v6 packet with a hop-by-hop header, all between the same
/// two addresses) ends the flow's run: the next datagram is written after it, not joined
/// into a run written before it.
#[test]
fn an_unjoinable_packet_between_the_same_addresses_ends_the_run() {
    for v6 in [false, true] {
        let (hdr, p) = uso_packet(v6, &payload(3600, 9), 1200);
        let datagrams = split(&hdr, &p).expect("valid");
        let odd: Vec<Vec<u8>> = if v6 {
            // Hop-by-hop options header (next header 0) in front of the UDP datagram.
            let d = &datagrams[1];
            let mut q = d[..40].to_vec();
            q[6] = 0;
            let plen = u16::from_be_bytes([q[4], q[5]]) + 8;
            q[4..6].copy_from_slice(&plen.to_be_bytes());
            q.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
            q.extend_from_slice(&d[40..]);
            vec![q]
        } else {
            let d = &datagrams[1];
            // The same datagram as a first fragment (MF set) ...
            let mut frag = d.clone();
            frag[6] |= 0x20;
            // ... and with 4 bytes of IP options (NOP NOP NOP EOL).
            let mut opts = vec![0x46];
            opts.extend_from_slice(&d[1..20]);
            opts.extend_from_slice(&[1, 1, 1, 0]);
            opts.extend_from_slice(&d[20..]);
            let total = (opts.len() as u16).to_be_bytes();
            opts[2..4].copy_from_slice(&total);
            vec![frag, opts]
        };
        for o in &odd {
            let mut c = Coalescer::with(true, true);
            c.push(&datagrams[0]);
            c.push(o);
            c.push(&datagrams[2]);
            let out: Vec<Vec<u8>> = c.packets().map(|p| p[VNET_HDR_LEN..].to_vec()).collect();
            assert_eq!(
                out,
                vec![datagrams[0].clone(), o.clone(), datagrams[2].clone()],
                "v6={v6}: written in the order received, nothing joined across the odd packet"
            );
        }
        // Another pair of addresses in the middle does not end it.
        let mut other = datagrams[1].clone();
        if v6 {
            other[23] = 9;
        } else {
            other[15] = 9;
        }
        let mut c = Coalescer::with(true, true);
        c.push(&datagrams[0]);
        c.push(&other);
        c.push(&datagrams[2]);
        assert_eq!(
            c.packets().count(),
            2,
            "v6={v6}: the run joins across another flow"
        );
    }
}
