//! The responder: a device with a private key and one peer, fed datagrams from the network and
//! clock ticks (framing in `rwg_fuzz`'s crate doc). Bit 0 of the first byte puts the device
//! under load (`report_handshake_load(10_000)`), so mac2, cookie replies and the rate limiter
//! run; bit 1 drives it as a batching driver does (handshake messages queued by the data path,
//! handled by `handle_queued_handshakes`). Checked: verdicts match the bytes, drops are counted, datagrams sent are well formed and
//! go only to addresses seen, tables and queues stay bounded, timers do not spin.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let mut h = rwg_fuzz::responder(mode & 1 == 1);
    h.batch = mode & 2 != 0;
    for op in rwg_fuzz::ops(script) {
        h.step(op);
    }
});
