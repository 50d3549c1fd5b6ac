//! The initiator: a device that staged a packet for its peer and sent an initiation, then fed
//! datagrams and clock ticks (framing in `rwg_fuzz`'s crate doc). Fixed-up records splice the
//! initiation's sender index in as receiver index, so responses, cookie replies and transport
//! messages reach the index table; `make_corpus` seeds a genuine response. Bit 0 of the first
//! byte first replays the device's own initiation to it (a reflected handshake); bit 1 drives
//! it as a batching driver does (queued handshakes). Same checks as the responder target.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let (mut h, initiation) = rwg_fuzz::initiator();
    h.batch = mode & 2 != 0;
    if mode & 1 == 1 {
        let source = h.peer_addr;
        h.receive(source, &initiation);
    }
    for op in rwg_fuzz::ops(script) {
        h.step(op);
    }
});
