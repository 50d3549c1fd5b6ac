//! The datagrams and events a device has produced off the data path (handshake messages, cookie
//! replies, keepalives, flushed staged packets), waiting for the driver.
//!
//! Datagrams are appended to one byte arena, not allocated one by one, and are drained in
//! batches: [`Outbox::pop_batch`] copies consecutive datagrams to one destination into the
//! caller's buffer, equal-sized ones back to back with a [`Transmit::segment_size`], so that a
//! driver can hand the whole batch to one UDP GSO send (quinn's `Transmit` has the same shape).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::SocketAddr;

use crate::constants::{MAX_EVENTS, MAX_OUTBOX_DATAGRAMS};
use crate::device::PeerId;
use crate::outcome::Event;

/// Datagrams to send, produced by [`Device::poll_transmit`](crate::device::Device::poll_transmit)
/// and [`Device::poll_transmit_batch`](crate::device::Device::poll_transmit_batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send them.
    pub destination: SocketAddr,
    /// Total length at the start of the caller's buffer.
    pub len: usize,
    /// The length of each datagram: `len` is a run of datagrams of this size, the last one
    /// possibly shorter (the rule of UDP GSO). Equal to `len` for a single datagram.
    pub segment_size: usize,
    /// The peer they are for (`None`: a cookie reply, which belongs to no peer). If the socket
    /// refuses them, tell the device with [`Device::report_unsent`](crate::device::Device::report_unsent),
    /// so that the peer's `tx_bytes` counts only what went out.
    pub peer: Option<PeerId>,
}

impl Transmit {
    /// The datagrams of this transmit in `buf`, one by one (for a sender without GSO).
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        buf[..self.len].chunks(self.segment_size.max(1))
    }
}

/// Arena kept after draining, to avoid reallocating for every burst; beyond it, capacity is
/// given back once the outbox is empty.
const KEEP_CAPACITY: usize = 256 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// The bytes of the datagrams not yet popped start at `head`.
    bytes: Vec<u8>,
    head: usize,
    datagrams: VecDeque<(SocketAddr, usize, Option<PeerId>)>,
    events: VecDeque<Event>,
}

impl Outbox {
    /// Queues a datagram; returns false (dropping it) if the outbox is full.
    pub(crate) fn push(
        &mut self,
        destination: SocketAddr,
        datagram: &[u8],
        peer: Option<PeerId>,
    ) -> bool {
        if self.datagrams.len() >= MAX_OUTBOX_DATAGRAMS {
            return false;
        }
        self.bytes.extend_from_slice(datagram);
        self.datagrams
            .push_back((destination, datagram.len(), peer));
        true
    }

    pub(crate) fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub(crate) fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn datagrams(&self) -> usize {
        self.datagrams.len()
    }

    pub(crate) fn events(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.datagrams.is_empty() && self.events.is_empty()
    }

    /// Copies the next datagrams into `buf`: as many as `max_segments`, all to one destination,
    /// all of the first one's size except possibly a shorter last one, and as fit in `buf`.
    /// Datagrams longer than `buf` are dropped; the count is returned beside the transmit.
    pub(crate) fn pop_batch(
        &mut self,
        buf: &mut [u8],
        max_segments: usize,
    ) -> (Option<Transmit>, usize) {
        let mut too_long = 0;
        while let Some(&(destination, size, peer)) = self.datagrams.front() {
            if size > buf.len() {
                self.take(size);
                too_long += 1;
                continue;
            }
            let mut len = 0;
            let mut count = 0;
            while let Some(&(d, s, p)) = self.datagrams.front() {
                let fits = len + s <= buf.len();
                let same = d == destination && p == peer;
                if !same || s > size || !fits || count >= max_segments.max(1) {
                    break;
                }
                buf[len..len + s].copy_from_slice(&self.bytes[self.head..self.head + s]);
                self.take(s);
                len += s;
                count += 1;
                if s < size {
                    break; // a shorter datagram ends a GSO batch
                }
            }
            return (
                Some(Transmit {
                    destination,
                    len,
                    segment_size: size,
                    peer,
                }),
                too_long,
            );
        }
        (None, too_long)
    }

    fn take(&mut self, size: usize) {
        self.datagrams.pop_front();
        self.head += size;
        if self.datagrams.is_empty() {
            self.bytes.clear();
            self.head = 0;
            if self.bytes.capacity() > KEEP_CAPACITY {
                self.bytes.shrink_to(KEEP_CAPACITY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn batches_follow_the_gso_rule() {
        let mut o = Outbox::default();
        for (port, len, fill) in [
            (1, 100, 1),
            (1, 100, 2),
            (1, 60, 3), // shorter: ends the batch
            (1, 100, 4),
            (2, 100, 5), // other destination
            (2, 148, 6), // longer: starts a new batch
        ] {
            assert!(o.push(addr(port), &alloc::vec![fill; len], None));
        }
        let mut buf = [0u8; 4096];
        let (t, _) = o.pop_batch(&mut buf, 64);
        let t = t.expect("batch");
        assert_eq!((t.destination, t.len, t.segment_size), (addr(1), 260, 100));
        let sizes: Vec<(usize, u8)> = t.datagrams(&buf).map(|d| (d.len(), d[0])).collect();
        assert_eq!(sizes, [(100, 1), (100, 2), (60, 3)]);
        let (t, _) = o.pop_batch(&mut buf, 64);
        assert_eq!(t.map(|t| (t.destination, t.len)), Some((addr(1), 100)));
        let (t, _) = o.pop_batch(&mut buf, 64);
        assert_eq!(t.map(|t| (t.destination, t.len)), Some((addr(2), 100)));
        let (t, _) = o.pop_batch(&mut buf, 64);
        let t = t.expect("last");
        assert_eq!((t.len, t.segment_size, buf[0]), (148, 148, 6));
        assert_eq!(o.pop_batch(&mut buf, 64), (None, 0));
        assert!(o.is_empty());
    }

    #[test]
    fn batches_respect_the_buffer_and_the_segment_limit() {
        let mut o = Outbox::default();
        for i in 0..10u8 {
            o.push(addr(1), &[i; 32], None);
        }
        let mut buf = [0u8; 100];
        let (t, _) = o.pop_batch(&mut buf, 64);
        assert_eq!(t.map(|t| t.len), Some(96), "three of 32 fit in 100");
        let (t, _) = o.pop_batch(&mut buf, 2);
        assert_eq!(t.map(|t| t.len), Some(64), "two segments at most");
        assert_eq!(buf[0], 3);
        // A datagram longer than the buffer is dropped and counted, the next one served.
        o.push(addr(1), &[0xee; 200], None);
        let mut small = [0u8; 40];
        let mut got = 0;
        let mut dropped = 0;
        loop {
            let (t, d) = o.pop_batch(&mut small, 1);
            dropped += d;
            match t {
                Some(t) => got += t.len / 32,
                None => break,
            }
        }
        assert_eq!((got, dropped), (5, 1));
    }

    #[test]
    fn full_outbox_refuses_and_events_keep_the_newest() {
        let mut o = Outbox::default();
        for _ in 0..MAX_OUTBOX_DATAGRAMS {
            assert!(o.push(addr(1), &[0; 1], None));
        }
        assert!(!o.push(addr(1), &[0; 1], None));
        let peer = crate::crypto::PublicKey::from_bytes([1; 32]);
        for port in 0..(MAX_EVENTS + 5) as u16 {
            o.push_event(Event::EndpointChanged {
                peer,
                endpoint: addr(port),
            });
        }
        assert_eq!(o.events(), MAX_EVENTS);
        assert_eq!(
            o.pop_event(),
            Some(Event::EndpointChanged {
                peer,
                endpoint: addr(5)
            })
        );
    }
}
