//! An established session between two devices (handshake run in memory at setup). Datagram
//! records go to A (bit 1 of `sel` clear) or B with a transport type word and the receiver's
//! real index overlaid when fixed up; `Special` records are IP packets from the host, given to
//! `handle_packet` of A (bit 0 of `sel` clear) or B, and what comes out is delivered to the other
//! side. With bit 1 of `sel` set the packet gets a valid IPv4 (bit 2 clear) or IPv6 header
//! between the tunnel addresses, and must then arrive intact. Clock ticks move both devices, and
//! whatever either sends (keepalives, rekeys) is delivered to the other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwg_fuzz::{Op, Pair, TUNNEL_A4, TUNNEL_A6, TUNNEL_B4, TUNNEL_B6};
use rwg_proto::device::{DropReason, Received};

fuzz_target!(|data: &[u8]| {
    let mut pair = Pair::established();
    for op in rwg_fuzz::ops(data) {
        match op {
            Op::Datagram { fixup, sel, bytes } => {
                let to_a = sel & 2 == 0;
                let h = if to_a { &mut pair.a } else { &mut pair.b };
                let mut msg = bytes.to_vec();
                if fixup {
                    h.fix_up(sel >> 2, &mut msg);
                }
                let source = h.source(sel);
                h.receive(source, &msg);
                pair.pump();
            }
            Op::Advance(d) => pair.advance(d),
            Op::Special { sel, bytes } => {
                let from_a = sel & 1 == 0;
                let valid = sel & 2 != 0;
                let mut packet = bytes.to_vec();
                let (src4, dst4, src6, dst6) = if from_a {
                    (TUNNEL_A4, TUNNEL_B4, TUNNEL_A6, TUNNEL_B6)
                } else {
                    (TUNNEL_B4, TUNNEL_A4, TUNNEL_B6, TUNNEL_A6)
                };
                let valid = valid
                    && if sel & 4 == 0 && packet.len() >= 20 {
                        packet[0] = 0x45;
                        let len = packet.len() as u16;
                        packet[2..4].copy_from_slice(&len.to_be_bytes());
                        packet[12..16].copy_from_slice(&src4.octets());
                        packet[16..20].copy_from_slice(&dst4.octets());
                        true
                    } else if sel & 4 != 0 && packet.len() >= 40 {
                        packet[0] = 0x60 | (packet[0] & 0x0f);
                        let len = (packet.len() - 40) as u16;
                        packet[4..6].copy_from_slice(&len.to_be_bytes());
                        packet[8..24].copy_from_slice(&src6.octets());
                        packet[24..40].copy_from_slice(&dst6.octets());
                        true
                    } else {
                        false
                    };
                match pair.send(from_a, &packet) {
                    // Staged (no usable session) or dropped before encryption: fine.
                    None => {}
                    Some((received, delivered)) => {
                        if let Some(d) = &delivered {
                            assert_eq!(d[..], packet[..d.len()], "a packet changed in transit");
                        }
                        if valid {
                            // Sent under a live keypair to a peer that holds the same keypair:
                            // it arrives whole, unless the receiver's copy just expired.
                            assert!(
                                delivered.as_deref() == Some(&packet[..])
                                    || received == Received::Dropped(DropReason::ExpiredKey),
                                "a valid packet was lost: {received:?}"
                            );
                        }
                    }
                }
            }
        }
    }
});
