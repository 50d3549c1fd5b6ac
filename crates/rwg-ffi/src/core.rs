//! The core level: the sans-IO [`Device`] in the terms of the C ABI — keys as 32-byte arrays,
//! addresses as [`RwgAddr`](crate::types::RwgAddr), one packet at a time with separate input and output buffers.
//!
//! The C functions (`rwg_core_*`) check pointers and lengths and call these methods; the
//! polling order is the core's (see [`rwg_proto`]): after feeding input, drain
//! [`poll_transmit`](Core::poll_transmit) and [`poll_event`](Core::poll_event); when the time
//! reaches [`next_deadline`](Core::next_deadline), call [`tick`](Core::tick) and drain again.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rwg_config::IpNet;
use rwg_proto::crypto::{PresharedKey, PrivateKey, PublicKey};
use rwg_proto::device::{Device, Received, Sent, HEADROOM, TAILROOM};
use rwg_proto::Instant;

use crate::error::RwgError;
use crate::types::{
    RwgCounters, RwgDropReason, RwgEvent, RwgOutcome, RwgPeerStats, RwgResult, RWG_MAX_PACKET,
    RWG_NO_DEADLINE,
};

/// `handle_timeout` runs a budget of due peers per call; a tick calls it at most this many
/// times, and if peers are still due the deadline stays in the past for the caller's next tick.
const MAX_TIMER_ROUNDS: usize = 64;

/// One WireGuard interface with no I/O: see the module documentation.
#[derive(Debug)]
pub struct Core {
    device: Device,
}

fn unknown_peer(e: rwg_proto::device::ConfigError) -> RwgError {
    match e {
        rwg_proto::device::ConfigError::UnknownPeer => RwgError::UnknownPeer,
        rwg_proto::device::ConfigError::InvalidPrefix => RwgError::InvalidArgument,
    }
}

impl Core {
    /// A core with this private key and no peers; randomness from the operating system.
    /// An all-zero key is refused.
    pub fn new(private_key: [u8; 32]) -> Result<Core, RwgError> {
        // The configuration protocol's "no key"; clamping would turn it into a valid one.
        if private_key == [0; 32] {
            return Err(RwgError::InvalidArgument);
        }
        let key = PrivateKey::from_bytes(private_key);
        let device = Device::new(Box::new(rand_core::OsRng));
        device.set_private_key(Some(key));
        Ok(Core { device })
    }

    /// The protocol core.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Maps the caller's monotonic clock onto the wall clock: at `now`, it is `unix` since the
    /// epoch. Handshake timestamps (which a peer checks to be increasing) come from it.
    pub fn set_wall_clock(&self, now: u64, unix_ns: u64) {
        self.device
            .set_unix_time(Instant::from_nanos(now), Duration::from_nanos(unix_ns));
    }

    /// Sets the MTU that padding rounds up to (576 to 65535).
    pub fn set_mtu(&self, mtu: u32) -> Result<(), RwgError> {
        if !(576..=RWG_MAX_PACKET as u32).contains(&mtu) {
            return Err(RwgError::InvalidArgument);
        }
        self.device.set_mtu(mtu as usize);
        Ok(())
    }

    /// Adds a peer; adding one that exists changes nothing. Our own public key is refused.
    pub fn add_peer(&self, public_key: [u8; 32]) -> Result<(), RwgError> {
        let pk = PublicKey::from_bytes(public_key);
        if self.device.public_key() == Some(pk) {
            return Err(RwgError::InvalidArgument);
        }
        self.device.add_peer(pk);
        Ok(())
    }

    /// Removes a peer with its allowed IPs and sessions.
    pub fn remove_peer(&self, public_key: [u8; 32]) -> Result<(), RwgError> {
        if self.device.remove_peer(&PublicKey::from_bytes(public_key)) {
            Ok(())
        } else {
            Err(RwgError::UnknownPeer)
        }
    }

    /// Sets a peer's preshared key (all zeros: none).
    pub fn set_preshared_key(&self, public_key: [u8; 32], psk: [u8; 32]) -> Result<(), RwgError> {
        self.device
            .set_preshared_key(
                &PublicKey::from_bytes(public_key),
                PresharedKey::from_bytes(psk),
            )
            .map_err(unknown_peer)
    }

    /// Sets a peer's endpoint.
    pub fn set_endpoint(&self, public_key: [u8; 32], endpoint: SocketAddr) -> Result<(), RwgError> {
        self.device
            .set_endpoint(&PublicKey::from_bytes(public_key), endpoint)
            .map_err(unknown_peer)
    }

    /// Adds an allowed IP (`10.0.0.0/24`, `fd00::1/128`, or a bare address for a host) to a
    /// peer; a prefix another peer had moves to this one.
    pub fn add_allowed_ip(&self, public_key: [u8; 32], prefix: &str) -> Result<(), RwgError> {
        let net = IpNet::from_str(prefix.trim()).map_err(|_| RwgError::InvalidArgument)?;
        self.device
            .add_allowed_ip(&PublicKey::from_bytes(public_key), net.addr, net.prefix_len)
            .map_err(unknown_peer)
    }

    /// Sets a peer's persistent keepalive (0: off); turning it on sends one at once (or a
    /// handshake), to be drained with [`poll_transmit`](Self::poll_transmit).
    pub fn set_persistent_keepalive(
        &self,
        now: u64,
        public_key: [u8; 32],
        seconds: u16,
    ) -> Result<(), RwgError> {
        self.device
            .set_persistent_keepalive(
                Instant::from_nanos(now),
                &PublicKey::from_bytes(public_key),
                seconds,
            )
            .map_err(unknown_peer)
    }

    /// Encrypts the IP packet `packet` for the peer its destination routes to. On
    /// [`RwgOutcome::Transmit`] the datagram is `out[..len]`. `out` must hold
    /// `packet.len() + RWG_MAX_OVERHEAD` bytes.
    pub fn encapsulate(
        &self,
        now: u64,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<RwgResult, RwgError> {
        if packet.len() > RWG_MAX_PACKET {
            return Err(RwgError::InvalidArgument);
        }
        let needed = HEADROOM + packet.len() + TAILROOM;
        let Some(buf) = out.get_mut(..needed) else {
            return Err(RwgError::BufferTooSmall);
        };
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        Ok(
            match self
                .device
                .handle_packet(Instant::from_nanos(now), buf, packet.len())
            {
                Sent::Transmit { destination, len } => RwgResult {
                    len,
                    addr: destination.into(),
                    ..RwgResult::of(RwgOutcome::Transmit)
                },
                Sent::Staged => RwgResult::of(RwgOutcome::Staged),
                Sent::Dropped(reason) => dropped(reason),
            },
        )
    }

    /// Handles the datagram `datagram` that arrived from `source`. On [`RwgOutcome::Packet`]
    /// the IP packet is `out[..len]`; on [`RwgOutcome::Handshake`] the answers wait in
    /// [`poll_transmit`](Self::poll_transmit). `out` must hold `datagram.len()` bytes.
    pub fn decapsulate(
        &self,
        now: u64,
        source: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<RwgResult, RwgError> {
        if datagram.len() > RWG_MAX_PACKET {
            return Err(RwgError::InvalidArgument);
        }
        let Some(buf) = out.get_mut(..datagram.len()) else {
            return Err(RwgError::BufferTooSmall);
        };
        buf.copy_from_slice(datagram);
        Ok(
            match self
                .device
                .handle_datagram(Instant::from_nanos(now), source, buf)
            {
                Received::Packet { peer, len } => {
                    out.copy_within(HEADROOM..HEADROOM + len, 0);
                    RwgResult {
                        len,
                        peer: *peer.as_bytes(),
                        ..RwgResult::of(RwgOutcome::Packet)
                    }
                }
                Received::Keepalive => RwgResult::of(RwgOutcome::Keepalive),
                Received::Handshake => RwgResult::of(RwgOutcome::Handshake),
                Received::Dropped(reason) => dropped(reason),
            },
        )
    }

    /// Runs what is due at `now`: queued handshake messages and timers (retries, keepalives,
    /// rekeys, key erasure). Their datagrams wait in [`poll_transmit`](Self::poll_transmit).
    pub fn tick(&self, now: u64) {
        let now = Instant::from_nanos(now);
        if self.device.has_queued_handshakes() {
            self.device.handle_queued_handshakes(now);
        }
        for _ in 0..MAX_TIMER_ROUNDS {
            if self.device.poll_timeout().is_none_or(|t| t > now) {
                break;
            }
            self.device.handle_timeout(now);
        }
    }

    /// When [`tick`](Self::tick) must run next, on the caller's clock
    /// ([`RWG_NO_DEADLINE`] if never; a time in the past means now).
    pub fn next_deadline(&self) -> u64 {
        if self.device.has_queued_handshakes() {
            return 0;
        }
        self.device
            .poll_timeout()
            .map_or(RWG_NO_DEADLINE, |t| t.as_nanos())
    }

    /// The next datagram to send, copied to `out[..len]`, or [`RwgOutcome::None`]. A datagram
    /// longer than `out` is dropped and counted ([`RwgDropReason::BufferTooSmall`]).
    pub fn poll_transmit(&self, out: &mut [u8]) -> RwgResult {
        match self.device.poll_transmit(out) {
            Some(t) => RwgResult {
                len: t.len,
                addr: t.destination.into(),
                ..RwgResult::of(RwgOutcome::Transmit)
            },
            None => RwgResult::of(RwgOutcome::None),
        }
    }

    /// The next event, or one of kind `None`.
    pub fn poll_event(&self) -> RwgEvent {
        self.device
            .poll_event()
            .map_or(RwgEvent::NONE, RwgEvent::of)
    }

    /// A peer's counters and settings.
    pub fn peer_stats(&self, public_key: [u8; 32]) -> Result<RwgPeerStats, RwgError> {
        let info = self
            .device
            .peer(&PublicKey::from_bytes(public_key))
            .ok_or(RwgError::UnknownPeer)?;
        Ok(RwgPeerStats {
            tx_bytes: info.tx_bytes,
            rx_bytes: info.rx_bytes,
            last_handshake_unix_ns: info
                .last_handshake
                .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
            endpoint: info
                .endpoint
                .map_or(crate::types::RwgAddr::NONE, Into::into),
            persistent_keepalive: info.persistent_keepalive,
            allowed_ips: u32::try_from(info.allowed_ips.len()).unwrap_or(u32::MAX),
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> RwgCounters {
        let c = self.device.counters();
        RwgCounters {
            peers: self.device.stats().peers as u64,
            initiations_sent: c.initiations_sent,
            responses_sent: c.responses_sent,
            cookie_replies_sent: c.cookie_replies_sent,
            handshakes_completed: c.handshakes_completed,
            handshake_messages_received: c.handshake_messages_received,
            handshakes_given_up: c.handshakes_given_up,
            dropped: self.device.drop_counts().map(|(_, n)| n).sum(),
        }
    }

    /// How many packets and datagrams were dropped for one reason.
    pub fn dropped(&self, reason: i32) -> Result<u64, RwgError> {
        let reason = RwgDropReason::to_core(reason).ok_or(RwgError::InvalidArgument)?;
        Ok(self
            .device
            .drop_counts()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n))
    }
}

fn dropped(reason: rwg_proto::DropReason) -> RwgResult {
    RwgResult {
        drop_reason: RwgDropReason::of(reason),
        ..RwgResult::of(RwgOutcome::Dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(private: [u8; 32]) -> [u8; 32] {
        *PrivateKey::from_bytes(private).public_key().as_bytes()
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + payload.len()];
        p[0] = 0x45;
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..].copy_from_slice(payload);
        p
    }

    #[test]
    fn two_cores_exchange_a_packet_in_caller_buffers() {
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let (a, b) = (Core::new(ka).expect("a"), Core::new(kb).expect("b"));
        let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1000".parse().expect("addr"),
            "192.0.2.2:2000".parse().expect("addr"),
        );
        a.add_peer(public(kb)).expect("peer");
        a.set_endpoint(public(kb), addr_b).expect("endpoint");
        a.add_allowed_ip(public(kb), "10.0.0.2/32")
            .expect("allowed");
        b.add_peer(public(ka)).expect("peer");
        b.add_allowed_ip(public(ka), "10.0.0.1").expect("allowed");

        let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"through the tunnel");
        let mut out = vec![0u8; packet.len() + crate::types::RWG_MAX_OVERHEAD];
        assert_eq!(
            a.encapsulate(1, &packet, &mut out[..packet.len() + 46]),
            Err(RwgError::BufferTooSmall)
        );
        assert_eq!(
            a.encapsulate(1, &packet, &mut out).expect("ok").kind,
            RwgOutcome::Staged
        );

        let mut delivered = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut inner = vec![0u8; 2048];
        for round in 0..10 {
            let mut moved = false;
            for (from, from_addr, to) in [(&a, addr_a, &b), (&b, addr_b, &a)] {
                loop {
                    let t = from.poll_transmit(&mut buf);
                    if t.kind == RwgOutcome::None {
                        break;
                    }
                    moved = true;
                    let r = to
                        .decapsulate(2 + round, from_addr, &buf[..t.len], &mut inner)
                        .expect("ok");
                    if r.kind == RwgOutcome::Packet {
                        assert_eq!(r.peer, public(ka));
                        delivered.push(inner[..r.len].to_vec());
                    }
                }
            }
            if !moved {
                break;
            }
        }
        assert_eq!(delivered, vec![packet]);
        assert_eq!(a.stats().handshakes_completed, 1);
        assert_eq!(b.stats().handshakes_completed, 1);
        let sa = a.peer_stats(public(kb)).expect("stats");
        let sb = b.peer_stats(public(ka)).expect("stats");
        assert_eq!((sa.tx_bytes, sb.tx_bytes), (sb.rx_bytes, sa.rx_bytes));
        assert_ne!(a.next_deadline(), RWG_NO_DEADLINE);
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        assert_eq!(Core::new([0; 32]).err(), Some(RwgError::InvalidArgument));
        let c = Core::new([3; 32]).expect("core");
        assert_eq!(c.add_peer(public([3; 32])), Err(RwgError::InvalidArgument));
        assert_eq!(c.remove_peer([9; 32]), Err(RwgError::UnknownPeer));
        assert_eq!(
            c.add_allowed_ip([9; 32], "10.0.0.0/8"),
            Err(RwgError::UnknownPeer)
        );
        c.add_peer([9; 32]).expect("peer");
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense", "", "10.0.0.0/"] {
            assert_eq!(
                c.add_allowed_ip([9; 32], bad),
                Err(RwgError::InvalidArgument),
                "{bad}"
            );
        }
        assert_eq!(c.peer_stats([9; 32]).expect("peer").allowed_ips, 0);
        assert_eq!(c.set_mtu(100), Err(RwgError::InvalidArgument));
        assert_eq!(c.dropped(0), Err(RwgError::InvalidArgument));
        let mut out = [0u8; 64];
        let r = c
            .decapsulate(1, "192.0.2.9:1".parse().expect("addr"), &[7; 40], &mut out)
            .expect("a verdict");
        assert_eq!(
            (r.kind, r.drop_reason),
            (RwgOutcome::Dropped, RwgDropReason::Malformed)
        );
        assert_eq!(c.dropped(RwgDropReason::Malformed as i32), Ok(1));
        assert_eq!(c.stats().dropped, 1);
    }
}
