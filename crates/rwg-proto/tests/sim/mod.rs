//! A deterministic network for two or more devices: virtual time, a seeded RNG that loses,
//! duplicates and reorders datagrams, and a log of everything that crossed the wire.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::type_complexity
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rwg_proto::crypto::{PrivateKey, PublicKey};
use rwg_proto::device::{Device, Event, Received, Sent, HEADROOM, TAILROOM};
use rwg_proto::Instant;

/// The two nodes of a two-node simulation.
pub const A: usize = 0;
pub const B: usize = 1;
/// Message types, as they appear in byte 0 on the wire.
pub const INITIATION: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const COOKIE: u8 = 3;
pub const TRANSPORT: u8 = 4;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A quiet LAN: 10 ms one way, nothing lost.
pub fn lan() -> Conditions {
    Conditions {
        latency: Duration::from_millis(10),
        ..Conditions::default()
    }
}

/// Conditions of the simulated network.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conditions {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a datagram gets up to `jitter` extra delay (so later ones overtake it).
    pub reorder: f64,
    pub latency: Duration,
    pub jitter: Duration,
}

#[derive(Clone, Debug)]
pub struct WireRecord {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl WireRecord {
    pub fn msg_type(&self) -> u8 {
        self.bytes[0]
    }
    pub fn receiver_index(&self) -> u32 {
        u32::from_le_bytes(self.bytes[4..8].try_into().unwrap())
    }
}

struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

pub struct Node {
    pub device: Device,
    pub addr: SocketAddr,
    pub tunnel_ip: Ipv4Addr,
    pub key: PrivateKey,
    /// IP packets delivered to this node's host, with the time.
    pub delivered: Vec<(Instant, Vec<u8>)>,
    pub events: Vec<(Instant, Event)>,
    pub online: bool,
}

impl Node {
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
}

pub struct Sim {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub conditions: Conditions,
    rng: ChaCha20Rng,
    in_flight: Vec<InFlight>,
    seq: u64,
    pub wire: Vec<WireRecord>,
    pub record_wire: bool,
    /// A filter: return false to drop a datagram before it enters the network.
    pub filter: Option<Box<dyn FnMut(&WireRecord) -> bool>>,
}

pub fn device(seed: u64) -> Device {
    Device::new(Box::new(ChaCha20Rng::seed_from_u64(seed)))
}

/// An IPv4 packet from `src` to `dst` carrying `payload` (protocol 253, for experiments).
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

pub fn payload_of(packet: &[u8]) -> &[u8] {
    &packet[20..]
}

impl Sim {
    /// `n` nodes at 10.0.0.i:51820, tunnel addresses 192.168.4.(i+1)/32, every pair peered
    /// with endpoints known.
    pub fn new(seed: u64, n: usize, conditions: Conditions) -> Sim {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                let key = PrivateKey::from_bytes(k);
                let device = device(rng.next_u64());
                device.set_private_key(Some(key.clone()));
                device.set_unix_time(Instant::ZERO, Duration::from_secs(1_700_000_000));
                Node {
                    device,
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 51820),
                    tunnel_ip: Ipv4Addr::new(192, 168, 4, i as u8 + 1),
                    key,
                    delivered: Vec::new(),
                    events: Vec::new(),
                    online: true,
                }
            })
            .collect();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let pk = nodes[j].public_key();
                let d = &nodes[i].device;
                assert!(d.add_peer(pk));
                d.set_endpoint(&pk, nodes[j].addr).unwrap();
                d.add_allowed_ip(&pk, IpAddr::V4(nodes[j].tunnel_ip), 32)
                    .unwrap();
            }
        }
        for node in &mut nodes {
            node.delivered.clear();
        }
        Sim {
            now: Instant::from_nanos(1_000_000_000),
            nodes,
            conditions,
            rng,
            in_flight: Vec::new(),
            seq: 0,
            wire: Vec::new(),
            record_wire: true,
            filter: None,
        }
    }

    pub fn peer_key(&self, i: usize) -> PublicKey {
        self.nodes[i].public_key()
    }

    /// Sends an IP packet with `payload` from node `from` to node `to` through the tunnel.
    pub fn send(&mut self, from: usize, to: usize, payload: &[u8]) -> Sent {
        let packet = ipv4_packet(
            self.nodes[from].tunnel_ip,
            self.nodes[to].tunnel_ip,
            payload,
        );
        self.send_packet(from, &packet)
    }

    pub fn send_packet(&mut self, from: usize, packet: &[u8]) -> Sent {
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let sent = self.nodes[from]
            .device
            .handle_packet(self.now, &mut buf, packet.len());
        if let Sent::Transmit { destination, len } = sent {
            let src = self.nodes[from].addr;
            self.transmit(src, destination, buf[..len].to_vec());
        }
        self.collect_outputs();
        sent
    }

    /// Puts a datagram on the wire, subject to the network's conditions.
    pub fn transmit(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let record = WireRecord {
            at: self.now,
            from,
            to,
            bytes,
        };
        if let Some(filter) = self.filter.as_mut() {
            if !filter(&record) {
                return;
            }
        }
        if self.record_wire {
            self.wire.push(record.clone());
        }
        let c = self.conditions;
        if self.chance(c.loss) {
            return;
        }
        let copies = if self.chance(c.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = self.now + c.latency;
            if self.chance(c.reorder) && !c.jitter.is_zero() {
                at += Duration::from_nanos(self.rng.next_u64() % c.jitter.as_nanos() as u64);
            }
            self.seq += 1;
            self.in_flight.push(InFlight {
                at,
                seq: self.seq,
                from: record.from,
                to: record.to,
                bytes: record.bytes.clone(),
            });
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// Drains every device's outbox onto the wire and collects events.
    pub fn collect_outputs(&mut self) {
        let mut buf = vec![0u8; 2048];
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].device.poll_transmit(&mut buf) {
                let src = self.nodes[i].addr;
                self.transmit(src, t.destination, buf[..t.len].to_vec());
            }
            while let Some(e) = self.nodes[i].device.poll_event() {
                let now = self.now;
                self.nodes[i].events.push((now, e));
            }
        }
    }

    /// Delivers one datagram to the node that owns its destination address.
    pub fn deliver(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        mut bytes: Vec<u8>,
    ) -> Option<Received> {
        let i = self.nodes.iter().position(|n| n.addr == to && n.online)?;
        let mut buf = vec![0u8; bytes.len().max(HEADROOM)];
        buf[..bytes.len()].copy_from_slice(&bytes);
        bytes.clear();
        let r = self.nodes[i]
            .device
            .handle_datagram(self.now, from, &mut buf);
        if let Received::Packet { len, .. } = r {
            let now = self.now;
            self.nodes[i]
                .delivered
                .push((now, buf[HEADROOM..HEADROOM + len].to_vec()));
        }
        self.collect_outputs();
        Some(r)
    }

    /// The next moment something happens: a delivery or a device deadline.
    fn next_event(&self) -> Option<Instant> {
        let net = self.in_flight.iter().map(|f| f.at).min();
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.device.poll_timeout())
            .min();
        match (net, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances virtual time to `until`, processing deliveries and timers in order.
    pub fn run_until(&mut self, until: Instant) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 50_000_000, "simulation does not settle");
            let Some(t) = self.next_event() else { break };
            if t > until {
                break;
            }
            if t > self.now {
                self.now = t;
            }
            // Deliveries due now, in order of time then sequence.
            let mut due: Vec<InFlight> = Vec::new();
            let mut i = 0;
            while i < self.in_flight.len() {
                if self.in_flight[i].at <= self.now {
                    due.push(self.in_flight.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            due.sort_by_key(|f| (f.at, f.seq));
            for f in due {
                self.deliver(f.from, f.to, f.bytes);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .device
                    .poll_timeout()
                    .is_some_and(|d| d <= self.now)
                {
                    self.nodes[i].device.handle_timeout(self.now);
                }
            }
            self.collect_outputs();
        }
        if until > self.now {
            self.now = until;
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn wire_of_type(&self, ty: u8) -> impl Iterator<Item = &WireRecord> {
        self.wire.iter().filter(move |r| r.msg_type() == ty)
    }

    pub fn drop_count(&self, node: usize, reason: rwg_proto::device::DropReason) -> u64 {
        self.nodes[node]
            .device
            .drop_counts()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .unwrap_or(0)
    }

    pub fn handshakes_completed(&self, node: usize) -> usize {
        self.nodes[node]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::HandshakeCompleted { .. }))
            .count()
    }

    pub fn delivered_payloads(&self, node: usize) -> Vec<Vec<u8>> {
        self.nodes[node]
            .delivered
            .iter()
            .map(|(_, p)| payload_of(p).to_vec())
            .collect()
    }
}

/// Per-node maps from receiver index to the time the handshake that created it completed.
pub fn session_start_by_index(wire: &[WireRecord]) -> BTreeMap<u32, Instant> {
    let mut m = BTreeMap::new();
    for r in wire.iter().filter(|r| r.msg_type() == 2) {
        let sender = u32::from_le_bytes(r.bytes[4..8].try_into().unwrap());
        let receiver = u32::from_le_bytes(r.bytes[8..12].try_into().unwrap());
        m.entry(sender).or_insert(r.at);
        m.entry(receiver).or_insert(r.at);
    }
    m
}
