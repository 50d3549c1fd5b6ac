//! `genkey`, `genpsk`, `pubkey`: the same base64 keys `wg` reads and prints.

use std::io::{Read, Write};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use rwg_proto::crypto::PrivateKey;
use zeroize::Zeroizing;

fn print_key(key: &[u8; 32]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", STANDARD.encode(key)).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rwg: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A new private key (clamped, as `wg genkey` prints it).
pub(crate) fn genkey() -> ExitCode {
    let key = PrivateKey::generate(&mut OsRng);
    print_key(key.as_bytes())
}

/// 32 random bytes.
pub(crate) fn genpsk() -> ExitCode {
    let mut psk = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut *psk);
    print_key(&psk)
}

/// Reads a base64 private key on stdin, prints its public key.
pub(crate) fn pubkey() -> ExitCode {
    // Like `wg pubkey`: a key is 44 characters; read a little more to see trailing junk.
    // Room for all of it from the start: a String that grows leaves its old buffers, with
    // the first characters of the key, unwiped to the allocator.
    const MAX_INPUT: usize = 1024;
    let mut input = Zeroizing::new(String::with_capacity(MAX_INPUT + 64));
    if let Err(e) = std::io::stdin()
        .lock()
        .take(MAX_INPUT as u64)
        .read_to_string(&mut input)
    {
        eprintln!("rwg: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let Some(bytes) = decode_key(input.trim_end_matches(['\n', '\r', ' ', '\t'])) else {
        eprintln!("rwg: Key is not the correct length or format");
        return ExitCode::FAILURE;
    };
    let key = PrivateKey::from_bytes(*bytes);
    print_key(key.public_key().as_bytes())
}

/// Exactly 44 base64 characters ending in `=` that decode to 32 bytes.
fn decode_key(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    if s.len() != 44 || !s.ends_with('=') {
        return None;
    }
    let v = Zeroizing::new(STANDARD.decode(s).ok()?);
    let bytes: [u8; 32] = v.as_slice().try_into().ok()?;
    Some(Zeroizing::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_bad_keys() {
        assert!(decode_key("").is_none());
        assert!(decode_key("AAAA").is_none());
        assert!(decode_key(&"A".repeat(44)).is_none());
        let ok = STANDARD.encode([7u8; 32]);
        assert_eq!(decode_key(&ok).map(|k| *k), Some([7u8; 32]));
    }
}
