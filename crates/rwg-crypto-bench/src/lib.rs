#![forbid(unsafe_code)]
//! This crate exists only for benchmarks: `benches/` compares candidate implementations of
//! the primitives rwg needs (ChaCha20-Poly1305, X25519, BLAKE2s) so that the choice recorded in
//! `BENCHMARKS.md` at the repository root can be reproduced. It has no API.
//!
//! `cargo bench -p rwg-crypto-bench [--features aws-lc]`
