//! Per-peer state (PROTOCOL.md §5-§7): the handshake in flight, keypair slots, endpoint, timers,
//! staged packets, cookie state, and the timer hooks named after protocol events.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::net::SocketAddr;
use core::sync::atomic::AtomicU64;
use core::time::Duration;

use crate::cookie::CookieState;
use crate::crypto::PublicKey;
use crate::keypair::{Keypair, PeerId};
use crate::noise::{InitiationState, RemoteStatic, Tai64N};
use crate::sync::Mutex;
use crate::time::Instant;
use crate::timers::{
    Jitter, Timer, TimerTable, KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, ZERO_KEY_MATERIAL_AFTER,
};

/// Packets kept per peer while a handshake is pending; the oldest is dropped beyond this.
pub const MAX_STAGED_PACKETS: usize = 128;
/// At most one initiation per peer is accepted per this interval (1 s / 50).
pub const INITIATION_FLOOD_INTERVAL: Duration = Duration::from_millis(20);

/// The keypair slots of a peer (PROTOCOL.md §7).
#[derive(Debug, Default)]
pub(crate) struct Keypairs {
    pub(crate) current: Option<Arc<Keypair>>,
    pub(crate) previous: Option<Arc<Keypair>>,
    pub(crate) next: Option<Arc<Keypair>>,
}

impl Keypairs {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Keypair>> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
    }
}

/// A configured peer. `state` is locked briefly by whichever thread handles its packets.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: PeerId,
    pub(crate) public_key: PublicKey,
    pub(crate) state: Mutex<PeerState>,
    /// UDP payload bytes sent to the peer.
    pub(crate) tx_bytes: AtomicU64,
    /// UDP payload bytes of authenticated packets received from the peer.
    pub(crate) rx_bytes: AtomicU64,
}

/// The mutable part of a peer.
#[derive(Debug)]
pub(crate) struct PeerState {
    pub(crate) remote: RemoteStatic,
    pub(crate) handshake: Option<InitiationState>,
    pub(crate) keypairs: Keypairs,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) timers: TimerTable,
    pub(crate) jitter: Jitter,
    pub(crate) handshake_attempts: u32,
    pub(crate) need_another_keepalive: bool,
    /// Set once we asked for a rekey because the current keypair is about to expire on receive.
    pub(crate) sent_lastminute_handshake: bool,
    /// Persistent keepalive interval in seconds, 0 = off.
    pub(crate) persistent_keepalive: u16,
    pub(crate) last_sent_handshake: Option<Instant>,
    pub(crate) last_initiation_consumed: Option<Instant>,
    pub(crate) latest_timestamp: Tai64N,
    pub(crate) staged: VecDeque<Vec<u8>>,
    pub(crate) cookie: CookieState,
    /// Unix time of the last completed handshake.
    pub(crate) last_handshake_unix: Option<Duration>,
    /// A handshake initiation was asked for on the data path; the control path sends it.
    pub(crate) initiation_wanted: bool,
}

impl PeerState {
    pub(crate) fn new(remote: RemoteStatic, jitter_seed: u64) -> Self {
        PeerState {
            remote,
            handshake: None,
            keypairs: Keypairs::default(),
            endpoint: None,
            timers: TimerTable::default(),
            jitter: Jitter::new(jitter_seed),
            handshake_attempts: 0,
            need_another_keepalive: false,
            sent_lastminute_handshake: false,
            persistent_keepalive: 0,
            last_sent_handshake: None,
            last_initiation_consumed: None,
            latest_timestamp: Tai64N::default(),
            staged: VecDeque::new(),
            cookie: CookieState::default(),
            last_handshake_unix: None,
            initiation_wanted: false,
        }
    }

    /// Keeps a packet until a keypair exists; drops the oldest beyond [`MAX_STAGED_PACKETS`].
    /// Returns whether an older packet was dropped.
    pub(crate) fn stage(&mut self, packet: &[u8]) -> bool {
        let dropped = if self.staged.len() >= MAX_STAGED_PACKETS {
            self.staged.pop_front();
            true
        } else {
            false
        };
        self.staged.push_back(packet.to_vec());
        dropped
    }

    /// Whether an initiation may be sent now: none was sent in the last REKEY_TIMEOUT.
    pub(crate) fn initiation_allowed(&self, now: Instant) -> bool {
        self.last_sent_handshake
            .is_none_or(|t| now - t >= REKEY_TIMEOUT)
    }

    // Timer hooks (PROTOCOL.md §6 "Events"), named after what happened.

    /// A data packet (not a keepalive) was sent.
    pub(crate) fn on_data_sent(&mut self, now: Instant) {
        if !self.timers.is_set(Timer::NewHandshake) {
            let at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter.next();
            self.timers.set(Timer::NewHandshake, at);
        }
    }

    /// A data packet (not a keepalive) was received.
    pub(crate) fn on_data_received(&mut self, now: Instant) {
        if self.timers.is_set(Timer::SendKeepalive) {
            self.need_another_keepalive = true;
        } else {
            self.timers
                .set(Timer::SendKeepalive, now + KEEPALIVE_TIMEOUT);
        }
    }

    /// Any authenticated packet (data, keepalive, handshake) was sent.
    pub(crate) fn on_authenticated_packet_sent(&mut self) {
        self.timers.stop(Timer::SendKeepalive);
    }

    /// Any authenticated packet was received.
    pub(crate) fn on_authenticated_packet_received(&mut self) {
        self.timers.stop(Timer::NewHandshake);
    }

    /// Any authenticated packet was sent or received.
    pub(crate) fn on_authenticated_packet_traversal(&mut self, now: Instant) {
        if self.persistent_keepalive > 0 {
            let at = now + Duration::from_secs(u64::from(self.persistent_keepalive));
            self.timers.set(Timer::PersistentKeepalive, at);
        }
    }

    /// We sent an initiation.
    pub(crate) fn on_handshake_initiated(&mut self, now: Instant) {
        let at = now + REKEY_TIMEOUT + self.jitter.next();
        self.timers.set(Timer::RetransmitHandshake, at);
    }

    /// A handshake completed: response received (initiator) or first packet under the new
    /// keypair received (responder).
    pub(crate) fn on_handshake_complete(&mut self, unix_now: Duration) {
        self.timers.stop(Timer::RetransmitHandshake);
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
        self.last_handshake_unix = Some(unix_now);
    }

    /// New transport keys were derived.
    pub(crate) fn on_session_derived(&mut self, now: Instant) {
        self.timers
            .set(Timer::ZeroKeyMaterial, now + ZERO_KEY_MATERIAL_AFTER);
    }
}
