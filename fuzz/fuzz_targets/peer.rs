//! `rwg_proto::peer::Peer` driven directly: two peers, their owners' doors and index tables,
//! and a network the input controls (deliver, duplicate, drop, corrupt, forge, replay), the
//! clock, sends, spurious wake-ups and reconfiguration. The op encoding and the invariants
//! checked after every op are in the doc of `rwg_fuzz::peer_sim`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rwg_fuzz::peer_sim::Sim::new().run(data);
});
