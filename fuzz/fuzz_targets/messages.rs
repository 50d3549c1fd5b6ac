//! `rwg_proto::messages::parse` on arbitrary bytes; every accessor of the view it returns is
//! read and checked against an independent reading of PROTOCOL.md §2 (offsets, lengths,
//! little-endian), and a transport header re-written from the parsed fields is byte-identical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwg_proto::messages::{self, Message, MessageError};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// What PROTOCOL.md §2 says `parse` must conclude, written without looking at messages.rs.
fn expected(data: &[u8]) -> Result<u32, MessageError> {
    if data.len() < 4 || data[1..4] != [0, 0, 0] {
        return Err(MessageError::UnknownType);
    }
    let ok = match data[0] {
        1 => data.len() == 148,
        2 => data.len() == 92,
        3 => data.len() == 64,
        4 => data.len() >= 32,
        _ => return Err(MessageError::UnknownType),
    };
    if ok {
        Ok(u32::from(data[0]))
    } else {
        Err(MessageError::BadLength)
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = messages::parse(data);
    match (&parsed, expected(data)) {
        (Err(e), Err(want)) => assert_eq!(*e, want),
        (Ok(m), Ok(ty)) => {
            let got = match m {
                Message::Initiation(_) => 1,
                Message::Response(_) => 2,
                Message::CookieReply(_) => 3,
                Message::Transport(_) => 4,
            };
            assert_eq!(got, ty);
        }
        (got, want) => panic!("parse gave {got:?}, the spec says {want:?}"),
    }
    let _ = format!("{parsed:?}");
    match parsed {
        Ok(Message::Initiation(m)) => {
            assert_eq!(m.sender_index(), le32(data, 4));
            assert_eq!(&m.ephemeral()[..], &data[8..40]);
            assert_eq!(&m.encrypted_static()[..], &data[40..88]);
            assert_eq!(&m.encrypted_timestamp()[..], &data[88..116]);
            assert_eq!(&m.mac1()[..], &data[116..132]);
            assert_eq!(&m.mac2()[..], &data[132..148]);
            assert_eq!(m.bytes(), data);
        }
        Ok(Message::Response(m)) => {
            assert_eq!(m.sender_index(), le32(data, 4));
            assert_eq!(m.receiver_index(), le32(data, 8));
            assert_eq!(&m.ephemeral()[..], &data[12..44]);
            assert_eq!(&m.encrypted_nothing()[..], &data[44..60]);
            assert_eq!(&m.mac1()[..], &data[60..76]);
            assert_eq!(&m.mac2()[..], &data[76..92]);
            assert_eq!(m.bytes(), data);
        }
        Ok(Message::CookieReply(m)) => {
            assert_eq!(m.receiver_index(), le32(data, 4));
            assert_eq!(&m.nonce()[..], &data[8..32]);
            assert_eq!(&m.encrypted_cookie()[..], &data[32..64]);
        }
        Ok(Message::Transport(m)) => {
            assert_eq!(m.receiver_index(), le32(data, 4));
            assert_eq!(
                m.counter(),
                u64::from_le_bytes(data[8..16].try_into().unwrap())
            );
            assert_eq!(m.payload_len(), data.len() - 16);
            let mut header = [0u8; messages::TRANSPORT_HEADER_LEN];
            messages::write_transport_header(&mut header, m.receiver_index(), m.counter());
            assert_eq!(&header[..], &data[..16], "header round trip");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
