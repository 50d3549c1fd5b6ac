#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Proof that `rwg-proto`, with its default features, builds without `std`: this crate is
//! `#![no_std]` and defines its own `#[panic_handler]`, and since `std` defines one too and a crate
//! graph may hold only one, anything in `rwg-proto`'s dependency tree that links `std` (a
//! dependency's `std` feature switched on, a new dependency that is not `no_std`) makes
//! `cargo build -p rwg-nostd-check` fail with "found duplicate lang item `panic_impl`". It calls a
//! few `rwg-proto` items so that the dependency is really linked. Build it on its own: Cargo unifies
//! features across one invocation, so once a `std` crate of the workspace enables `rwg-proto/std`,
//! workspace-wide builds must `--exclude rwg-nostd-check`.

use core::panic::PanicInfo;

use rwg_proto::crypto;
use rwg_proto::replay::ReplayWindow;

/// Touches `rwg-proto` so that it is linked: hashes `data` and runs a fresh replay window.
pub fn exercise(data: &[u8]) -> ([u8; crypto::KEY_LEN], bool) {
    let digest = crypto::hash(&[data]);
    let mut window = ReplayWindow::new();
    (digest, window.check_and_update(0))
}

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
