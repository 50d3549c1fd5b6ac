//! One pass of the control path, and the loop of a thread that does nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rwg_proto::crypto::PublicKey;
use rwg_proto::device::{Device, Event, Transmit};

use crate::clock::Clock;
use crate::wakeup::Wakeup;

/// Largest batch of datagrams drained at once (UDP GSO takes at most 64 segments).
const MAX_SEGMENTS: usize = 64;
/// Bytes of one drained batch: 64 segments of a full-size datagram fit.
const BATCH_BYTES: usize = 64 * 1024;
/// How often the core is told the wall clock again, so that a wall clock set meanwhile (NTP
/// after boot) reaches TAI64N timestamps and `wg show`.
const WALL_CLOCK_REFRESH: Duration = Duration::from_secs(30);

/// Where a driver sends datagrams: the UDP sockets, an app's callback, a test's queue.
pub trait Transmitter {
    /// Sends `transmit.len` bytes of `datagrams` to `transmit.destination`: one datagram, or
    /// several of `transmit.segment_size` bytes back to back (the last possibly shorter), which
    /// a sender with UDP GSO passes to one system call and any other sends one by one
    /// ([`Transmit::datagrams`]). Returns how many of the bytes the socket took: the rest is
    /// taken off the peer's `tx_bytes`.
    fn transmit(&mut self, transmit: &Transmit, datagrams: &[u8]) -> usize;
}

/// Something to call for each event, besides logging it.
type EventHook = Box<dyn FnMut(&Event) + Send>;

/// The control path of one [`Device`]: see the crate documentation.
pub struct Driver {
    device: Arc<Device>,
    clock: Clock,
    buf: Vec<u8>,
    last_wall_clock: std::time::Instant,
    on_event: Option<EventHook>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `device`, whose time is `clock`'s. Tells the device the wall clock.
    pub fn new(device: Arc<Device>, clock: Clock) -> Driver {
        device.set_unix_time(clock.now(), Clock::unix_now());
        Driver {
            device,
            clock,
            buf: vec![0u8; BATCH_BYTES],
            last_wall_clock: std::time::Instant::now(),
            on_event: None,
        }
    }

    /// Calls `hook` with every event, after logging it.
    pub fn on_event(&mut self, hook: impl FnMut(&Event) + Send + 'static) {
        self.on_event = Some(Box::new(hook));
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// One pass of the control path: handles the handshake messages the data path queued, runs
    /// the timers that are due, then sends everything the device queued and reports its
    /// events. Returns the moment to turn again (`None`: only when woken).
    pub fn turn(&mut self, out: &mut dyn Transmitter) -> Option<std::time::Instant> {
        if self.last_wall_clock.elapsed() >= WALL_CLOCK_REFRESH {
            self.last_wall_clock = std::time::Instant::now();
            self.device
                .set_unix_time(self.clock.now(), Clock::unix_now());
        }
        // Bounded: each call handles what was queued when it began, and at most a budget of
        // due peers; what remains keeps the next deadline in the past.
        let now = self.clock.now();
        self.device.handle_queued_handshakes(now);
        if self.device.poll_timeout().is_some_and(|t| t <= now) {
            self.device.handle_timeout(now);
        }
        self.flush(out);
        let next = if self.device.has_queued_handshakes() {
            Some(now)
        } else {
            self.device.poll_timeout()
        };
        next.map(|t| self.clock.to_std(t))
    }

    /// Sends every queued datagram and reports every queued event.
    pub fn flush(&mut self, out: &mut dyn Transmitter) {
        while let Some(t) = self.device.poll_transmit_batch(&mut self.buf, MAX_SEGMENTS) {
            let sent = out.transmit(&t, &self.buf[..t.len]);
            if let (Some(peer), true) = (t.peer, sent < t.len) {
                self.device.report_unsent(peer, (t.len - sent) as u64);
            }
        }
        while let Some(event) = self.device.poll_event() {
            log_event(&event);
            if let Some(hook) = self.on_event.as_mut() {
                hook(&event);
            }
        }
    }

    /// Runs the control path on the calling thread until `stop` is set: turns, then sleeps until
    /// the next deadline or until the device wakes it (this installs the device's waker). Set
    /// `stop` and call `wakeup.wake()` to end it.
    pub fn run_blocking(
        &mut self,
        wakeup: &Arc<Wakeup>,
        stop: &AtomicBool,
        out: &mut dyn Transmitter,
    ) {
        let w = Arc::clone(wakeup);
        self.device.set_waker(Some(Arc::new(move || w.wake())));
        while !stop.load(Ordering::Acquire) {
            let deadline = self.turn(out);
            wakeup.wait(deadline);
        }
        self.device.set_waker(None);
    }
}

/// A public key for logs: hex of its first bytes tells peers apart and reveals nothing.
pub fn short_key(key: &PublicKey) -> String {
    key.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn log_event(event: &Event) {
    match event {
        Event::HandshakeCompleted { peer } => {
            tracing::info!(peer = %short_key(peer), "handshake completed")
        }
        Event::EndpointChanged { peer, endpoint } => {
            tracing::info!(peer = %short_key(peer), %endpoint, "endpoint changed")
        }
        Event::HandshakeGaveUp { peer } => {
            tracing::warn!(peer = %short_key(peer), "no handshake answer from peer; giving up for now")
        }
        Event::KeysZeroed { peer } => {
            tracing::debug!(peer = %short_key(peer), "session keys erased")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rwg_proto::crypto::PrivateKey;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Vec<(SocketAddr, Vec<u8>)>);
    impl Transmitter for Collect {
        fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) -> usize {
            for d in t.datagrams(datagrams) {
                self.0.push((t.destination, d.to_vec()));
            }
            t.len
        }
    }

    fn device(seed: u64, key: u8) -> Arc<Device> {
        let d = Arc::new(Device::new(Box::new(
            rand_chacha::ChaCha20Rng::seed_from_u64(seed),
        )));
        d.set_private_key(Some(PrivateKey::from_bytes([key; 32])));
        d
    }

    #[test]
    fn a_turn_sends_what_is_due_and_reports_events() {
        let a = device(1, 1);
        let b = device(2, 2);
        let (pa, pb) = (
            PrivateKey::from_bytes([1; 32]).public_key(),
            PrivateKey::from_bytes([2; 32]).public_key(),
        );
        let b_addr: SocketAddr = "10.0.0.2:51820".parse().expect("addr");
        let a_addr: SocketAddr = "10.0.0.1:51820".parse().expect("addr");
        a.add_peer(pb);
        a.set_endpoint(&pb, b_addr).expect("peer");
        b.add_peer(pa);
        let clock = Clock::new();
        let mut da = Driver::new(a.clone(), clock);
        let mut db = Driver::new(b.clone(), clock);
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        da.on_event(move |ev| e.lock().expect("lock").push(*ev));
        // Turning keepalive on with no session starts a handshake: A's turn sends the
        // initiation, B's data path queues it, B's turn answers, A's data path completes it.
        a.set_persistent_keepalive(clock.now(), &pb, 25)
            .expect("peer");
        let mut out = Collect::default();
        let next = da.turn(&mut out);
        assert_eq!(out.0.len(), 1, "the initiation");
        assert_eq!(out.0[0].0, b_addr);
        assert!(next.is_some(), "the retransmit timer");
        let (_, mut init) = out.0.remove(0);
        let dp = b.data_path();
        assert_eq!(
            dp.decapsulate(clock.now(), a_addr, &mut init),
            rwg_proto::Received::Handshake
        );
        drop(dp);
        let mut out_b = Collect::default();
        db.turn(&mut out_b);
        assert_eq!(out_b.0.len(), 1, "the response");
        let (_, mut resp) = out_b.0.remove(0);
        a.data_path().decapsulate(clock.now(), b_addr, &mut resp);
        // Responses go through the queue too; A's next turn handles it and sends the
        // confirming keepalive.
        da.turn(&mut out);
        assert_eq!(out.0.len(), 1, "key confirmation");
        assert_eq!(out.0[0].1.len(), 32);
        assert!(events
            .lock()
            .expect("lock")
            .iter()
            .any(|e| matches!(e, Event::HandshakeCompleted { .. })));
    }

    #[test]
    fn the_blocking_loop_is_woken_by_the_data_path_and_stops() {
        let a = device(3, 3);
        let pb = PrivateKey::from_bytes([4; 32]).public_key();
        a.add_peer(pb);
        a.set_endpoint(&pb, "10.0.0.2:51820".parse().expect("addr"))
            .expect("peer");
        a.add_allowed_ip(&pb, "192.168.4.2".parse().expect("ip"), 32)
            .expect("peer");
        let clock = Clock::new();
        let wakeup = Wakeup::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        struct Chan(std::sync::mpsc::Sender<Vec<u8>>);
        impl Transmitter for Chan {
            fn transmit(&mut self, t: &Transmit, d: &[u8]) -> usize {
                let _ = self.0.send(d[..t.len].to_vec());
                t.len
            }
        }
        let (a2, w2, s2) = (a.clone(), wakeup.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut driver = Driver::new(a2, clock);
            driver.run_blocking(&w2, &s2, &mut Chan(tx));
        });
        // A packet with no session is staged; the peer's deadline becomes "now", which wakes
        // the sleeping control thread, which sends the initiation.
        let mut buf = vec![0u8; 256];
        let p = &mut buf[16..16 + 20];
        p[0] = 0x45;
        p[3] = 20;
        p[16..20].copy_from_slice(&[192, 168, 4, 2]);
        let sent = a.data_path().encapsulate(clock.now(), &mut buf, 20);
        assert_eq!(sent, rwg_proto::Sent::Staged);
        let init = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the control thread sent the initiation");
        assert_eq!((init.len(), init[0]), (148, 1));
        stop.store(true, Ordering::Release);
        wakeup.wake();
        thread.join().expect("no panic");
    }
}
