//! Wire formats of the four WireGuard messages (PROTOCOL.md §2) as zero-copy views.
//!
//! Everything the network sends is parsed here, once: [`parse`] checks the type word (byte 0 is
//! the type, bytes 1-3 must be zero) and the exact length of handshake messages, after which
//! the accessors of each view cannot fail. Writers fill caller-provided fixed-size buffers.

use core::fmt;

/// Type word of a handshake initiation.
pub const TYPE_INITIATION: u32 = 1;
/// Type word of a handshake response.
pub const TYPE_RESPONSE: u32 = 2;
/// Type word of a cookie reply.
pub const TYPE_COOKIE_REPLY: u32 = 3;
/// Type word of a transport data message.
pub const TYPE_TRANSPORT: u32 = 4;

/// Exact length of an initiation.
pub const INITIATION_LEN: usize = 148;
/// Exact length of a response.
pub const RESPONSE_LEN: usize = 92;
/// Exact length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the transport header (type, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Smallest transport message: header and the AEAD tag of an empty payload (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + crate::crypto::TAG_LEN;
/// Bytes a transport message adds around the IP packet, before padding.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_MIN_LEN;

/// Byte ranges of each message's fields.
pub(crate) mod field {
    use core::ops::Range;
    pub(crate) const TYPE: Range<usize> = 0..4;

    pub(crate) mod initiation {
        use core::ops::Range;
        pub(crate) const SENDER: Range<usize> = 4..8;
        pub(crate) const EPHEMERAL: Range<usize> = 8..40;
        pub(crate) const STATIC: Range<usize> = 40..88;
        pub(crate) const TIMESTAMP: Range<usize> = 88..116;
        pub(crate) const MAC1: Range<usize> = 116..132;
        pub(crate) const MAC2: Range<usize> = 132..148;
    }
    pub(crate) mod response {
        use core::ops::Range;
        pub(crate) const SENDER: Range<usize> = 4..8;
        pub(crate) const RECEIVER: Range<usize> = 8..12;
        pub(crate) const EPHEMERAL: Range<usize> = 12..44;
        pub(crate) const EMPTY: Range<usize> = 44..60;
        pub(crate) const MAC1: Range<usize> = 60..76;
        pub(crate) const MAC2: Range<usize> = 76..92;
    }
    pub(crate) mod cookie_reply {
        use core::ops::Range;
        pub(crate) const RECEIVER: Range<usize> = 4..8;
        pub(crate) const NONCE: Range<usize> = 8..32;
        pub(crate) const COOKIE: Range<usize> = 32..64;
    }
    pub(crate) mod transport {
        use core::ops::Range;
        pub(crate) const RECEIVER: Range<usize> = 4..8;
        pub(crate) const COUNTER: Range<usize> = 8..16;
    }
}

/// Why a datagram is not a WireGuard message. The peer misbehaved (or it is noise): drop and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Shorter than four bytes, or the type word is not 1..=4 with zero reserved bytes.
    UnknownType,
    /// A handshake message of the wrong length, or a transport message shorter than 32 bytes.
    BadLength,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageError::UnknownType => "unknown message type",
            MessageError::BadLength => "wrong message length",
        })
    }
}

/// A parsed datagram.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(Initiation<'a>),
    /// Type 2.
    Response(Response<'a>),
    /// Type 3.
    CookieReply(CookieReply<'a>),
    /// Type 4.
    Transport(Transport<'a>),
}

/// Reads the type word of a datagram and checks the length that type requires.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, MessageError> {
    let ty = read_u32(buf, field::TYPE).ok_or(MessageError::UnknownType)?;
    let exact = |len: usize| {
        if buf.len() == len {
            Ok(())
        } else {
            Err(MessageError::BadLength)
        }
    };
    match ty {
        TYPE_INITIATION => exact(INITIATION_LEN).map(|()| Message::Initiation(Initiation(buf))),
        TYPE_RESPONSE => exact(RESPONSE_LEN).map(|()| Message::Response(Response(buf))),
        TYPE_COOKIE_REPLY => {
            exact(COOKIE_REPLY_LEN).map(|()| Message::CookieReply(CookieReply(buf)))
        }
        TYPE_TRANSPORT if buf.len() >= TRANSPORT_MIN_LEN => Ok(Message::Transport(Transport(buf))),
        TYPE_TRANSPORT => Err(MessageError::BadLength),
        _ => Err(MessageError::UnknownType),
    }
}

fn read_u32(buf: &[u8], r: core::ops::Range<usize>) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(r)?.try_into().ok()?))
}

/// `buf[r]` as a fixed-size array. Only called on ranges inside the length `parse` checked.
fn array<const N: usize>(buf: &[u8], r: core::ops::Range<usize>) -> &[u8; N] {
    buf[r]
        .try_into()
        .expect("range within the length checked by parse")
}

fn u32_at(buf: &[u8], r: core::ops::Range<usize>) -> u32 {
    u32::from_le_bytes(*array(buf, r))
}

/// A handshake initiation (148 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Initiation<'a>(&'a [u8]);

impl<'a> Initiation<'a> {
    /// The view of a message already known to be one of these (its type is its length).
    pub fn from_array(bytes: &'a [u8; INITIATION_LEN]) -> Self {
        Initiation(bytes)
    }
    /// The whole message.
    pub fn array(&self) -> &'a [u8; INITIATION_LEN] {
        array(self.0, 0..INITIATION_LEN)
    }
    /// The initiator's index.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.0, field::initiation::SENDER)
    }
    /// The initiator's ephemeral public key.
    pub fn ephemeral(&self) -> &'a [u8; 32] {
        array(self.0, field::initiation::EPHEMERAL)
    }
    /// AEAD of the initiator's static public key.
    pub fn encrypted_static(&self) -> &'a [u8; 48] {
        array(self.0, field::initiation::STATIC)
    }
    /// AEAD of the TAI64N timestamp.
    pub fn encrypted_timestamp(&self) -> &'a [u8; 28] {
        array(self.0, field::initiation::TIMESTAMP)
    }
    /// mac1.
    pub fn mac1(&self) -> &'a [u8; 16] {
        array(self.0, field::initiation::MAC1)
    }
    /// mac2 (zeros when the initiator holds no cookie).
    pub fn mac2(&self) -> &'a [u8; 16] {
        array(self.0, field::initiation::MAC2)
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A handshake response (92 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Response<'a>(&'a [u8]);

impl<'a> Response<'a> {
    /// The view of a message already known to be one of these (its type is its length).
    pub fn from_array(bytes: &'a [u8; RESPONSE_LEN]) -> Self {
        Response(bytes)
    }
    /// The whole message.
    pub fn array(&self) -> &'a [u8; RESPONSE_LEN] {
        array(self.0, 0..RESPONSE_LEN)
    }
    /// The responder's index.
    pub fn sender_index(&self) -> u32 {
        u32_at(self.0, field::response::SENDER)
    }
    /// The initiator's index this answers.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, field::response::RECEIVER)
    }
    /// The responder's ephemeral public key.
    pub fn ephemeral(&self) -> &'a [u8; 32] {
        array(self.0, field::response::EPHEMERAL)
    }
    /// AEAD of the empty string.
    pub fn encrypted_nothing(&self) -> &'a [u8; 16] {
        array(self.0, field::response::EMPTY)
    }
    /// mac1.
    pub fn mac1(&self) -> &'a [u8; 16] {
        array(self.0, field::response::MAC1)
    }
    /// mac2 (zeros when the responder holds no cookie).
    pub fn mac2(&self) -> &'a [u8; 16] {
        array(self.0, field::response::MAC2)
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A cookie reply (64 bytes).
#[derive(Clone, Copy, Debug)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    /// The view of a message already known to be one of these (its type is its length).
    pub fn from_array(bytes: &'a [u8; COOKIE_REPLY_LEN]) -> Self {
        CookieReply(bytes)
    }
    /// The whole message.
    pub fn array(&self) -> &'a [u8; COOKIE_REPLY_LEN] {
        array(self.0, 0..COOKIE_REPLY_LEN)
    }
    /// The index of the handshake message this answers.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, field::cookie_reply::RECEIVER)
    }
    /// The XAEAD nonce.
    pub fn nonce(&self) -> &'a [u8; 24] {
        array(self.0, field::cookie_reply::NONCE)
    }
    /// XAEAD of the 16-byte cookie.
    pub fn encrypted_cookie(&self) -> &'a [u8; 32] {
        array(self.0, field::cookie_reply::COOKIE)
    }
}

/// A transport data message (at least 32 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Transport<'a>(&'a [u8]);

impl Transport<'_> {
    /// Our index, naming the keypair.
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, field::transport::RECEIVER)
    }
    /// The nonce counter.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array(self.0, field::transport::COUNTER))
    }
    /// Length of ciphertext and tag.
    pub fn payload_len(&self) -> usize {
        self.0.len() - TRANSPORT_HEADER_LEN
    }
}

/// Writes the type word (type, three zero bytes).
pub(crate) fn write_type(buf: &mut [u8], ty: u32) {
    buf[field::TYPE].copy_from_slice(&ty.to_le_bytes());
}

/// Writes a transport header into `buf[..16]`.
pub fn write_transport_header(
    buf: &mut [u8; TRANSPORT_HEADER_LEN],
    receiver_index: u32,
    counter: u64,
) {
    write_type(buf, TYPE_TRANSPORT);
    buf[field::transport::RECEIVER].copy_from_slice(&receiver_index.to_le_bytes());
    buf[field::transport::COUNTER].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_word_and_lengths() {
        let mut init = [0u8; INITIATION_LEN];
        write_type(&mut init, TYPE_INITIATION);
        assert!(matches!(parse(&init), Ok(Message::Initiation(_))));
        assert_eq!(parse(&init[..147]).err(), Some(MessageError::BadLength));
        let mut longer = [0u8; INITIATION_LEN + 1];
        write_type(&mut longer, TYPE_INITIATION);
        assert_eq!(parse(&longer).err(), Some(MessageError::BadLength));
        // Reserved bytes must be zero.
        init[1] = 1;
        assert_eq!(parse(&init).err(), Some(MessageError::UnknownType));

        let mut resp = [0u8; RESPONSE_LEN];
        write_type(&mut resp, TYPE_RESPONSE);
        assert!(matches!(parse(&resp), Ok(Message::Response(_))));
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        write_type(&mut cookie, TYPE_COOKIE_REPLY);
        assert!(matches!(parse(&cookie), Ok(Message::CookieReply(_))));

        let mut t = [0u8; TRANSPORT_MIN_LEN];
        write_transport_header((&mut t[..16]).try_into().expect("16"), 0x0a0b0c0d, 7);
        match parse(&t) {
            Ok(Message::Transport(v)) => {
                assert_eq!(v.receiver_index(), 0x0a0b0c0d);
                assert_eq!(v.counter(), 7);
                assert_eq!(v.payload_len(), 16);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&t[..31]).err(), Some(MessageError::BadLength));
        assert_eq!(parse(&[]).err(), Some(MessageError::UnknownType));
        assert_eq!(parse(&[4, 0, 0]).err(), Some(MessageError::UnknownType));
        assert_eq!(parse(&[5, 0, 0, 0]).err(), Some(MessageError::UnknownType));
        assert_eq!(parse(&[0, 0, 0, 0]).err(), Some(MessageError::UnknownType));
    }

    #[test]
    fn fields_are_little_endian_at_their_offsets() {
        let mut m = [0u8; RESPONSE_LEN];
        write_type(&mut m, TYPE_RESPONSE);
        m[4..8].copy_from_slice(&[1, 2, 3, 4]);
        m[8..12].copy_from_slice(&[5, 6, 7, 8]);
        m[12] = 0xee;
        m[60] = 0xdd;
        let Ok(Message::Response(r)) = parse(&m) else {
            panic!("response")
        };
        assert_eq!(r.sender_index(), 0x04030201);
        assert_eq!(r.receiver_index(), 0x08070605);
        assert_eq!(r.ephemeral()[0], 0xee);
        assert_eq!(r.mac1()[0], 0xdd);
    }
}
