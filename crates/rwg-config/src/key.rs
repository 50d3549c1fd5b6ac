//! Base64 encoding of 32-byte WireGuard keys, as `wg(8)` prints and reads them.
//!
//! A key is always 44 characters: 43 of the standard alphabet and one `=`. Like `wg(8)` we
//! reject non-canonical encodings (low bits of the last character set), so every key has
//! exactly one spelling.

use core::fmt;

use zeroize::Zeroizing;

/// Length of a base64-encoded 32-byte key.
pub const ENCODED_KEY_LEN: usize = 44;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a string is not a base64 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The string is not 44 characters long.
    Length(usize),
    /// A character outside the base64 alphabet, at this position.
    Character(usize),
    /// The last character is not `=`, or the one before it has bits that would be discarded.
    NotCanonical,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Length(n) => {
                write!(f, "a key is {ENCODED_KEY_LEN} base64 characters, found {n}")
            }
            KeyError::Character(i) => write!(f, "character {} is not base64", i + 1),
            KeyError::NotCanonical => f.write_str("not a canonical base64 encoding of 32 bytes"),
        }
    }
}

impl std::error::Error for KeyError {}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decode a 44-character base64 key. The result zeroizes itself when dropped.
pub fn decode_key(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let bytes = text.as_bytes();
    if bytes.len() != ENCODED_KEY_LEN {
        return Err(KeyError::Length(text.chars().count()));
    }
    if bytes[43] != b'=' {
        return Err(match sextet(bytes[43]) {
            Some(_) => KeyError::NotCanonical,
            None => KeyError::Character(43),
        });
    }
    let mut out = Zeroizing::new([0u8; 32]);
    // 43 characters carry 258 bits: 32 bytes plus 2 bits that must be zero.
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut pos = 0usize;
    for (i, &c) in bytes[..43].iter().enumerate() {
        let v = sextet(c).ok_or(KeyError::Character(i))?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out[pos] = (acc >> bits) as u8;
            pos += 1;
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err(KeyError::NotCanonical);
    }
    Ok(out)
}

/// Encode 32 bytes as a 44-character base64 key.
pub fn encode_key(key: &[u8; 32]) -> String {
    let mut out = String::with_capacity(ENCODED_KEY_LEN);
    for chunk in key.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for seed in 0u8..=255 {
            let key: [u8; 32] =
                core::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7));
            let text = encode_key(&key);
            assert_eq!(text.len(), ENCODED_KEY_LEN);
            assert_eq!(*decode_key(&text).expect("valid"), key);
        }
    }

    #[test]
    fn known_vector() {
        // 32 zero bytes and 32 0xff bytes, as `wg` prints them.
        assert_eq!(
            encode_key(&[0; 32]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        assert_eq!(
            encode_key(&[0xff; 32]),
            "//////////////////////////////////////////8="
        );
        assert_eq!(
            *decode_key("//////////////////////////////////////////8=").expect("valid"),
            [0xff; 32]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(decode_key("abc").err(), Some(KeyError::Length(3)));
        assert_eq!(decode_key("").err(), Some(KeyError::Length(0)));
        assert_eq!(
            decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").err(),
            Some(KeyError::NotCanonical)
        );
        assert_eq!(
            decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!").err(),
            Some(KeyError::Character(43))
        );
        assert_eq!(
            decode_key("AAAA!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").err(),
            Some(KeyError::Character(4))
        );
        // Low bits of the last sextet set: '9' = 61 = 0b111101.
        assert_eq!(
            decode_key("//////////////////////////////////////////9=").err(),
            Some(KeyError::NotCanonical)
        );
        // Multi-byte characters are counted as characters in the message.
        assert!(matches!(decode_key("é"), Err(KeyError::Length(1))));
        assert!(decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAé=").is_err());
        assert!(KeyError::NotCanonical.to_string().contains("canonical"));
        assert!(KeyError::Length(3).to_string().contains("found 3"));
        assert!(KeyError::Character(0).to_string().contains("character 1"));
    }
}
