//! The driver's clock: the core's [`Instant`] (nanoseconds from an origin) and the wall clock.
//!
//! # Suspended time counts
//!
//! WireGuard's timers are about real time: a session key must not be used more than 180 s after
//! it was made, whatever the machine did meanwhile. A laptop that sleeps for an hour and wakes
//! must see its sessions as an hour older, so that the first packet after waking starts a new
//! handshake instead of going out under a key the peer threw away long ago (which costs the
//! user minutes of silence until the rekey timers notice). `std::time::Instant` does not count
//! suspended time on Linux (it is `CLOCK_MONOTONIC`), so the default [`TimeSource`] here reads
//! `CLOCK_BOOTTIME` there, which does. Elsewhere it falls back to `std::time::Instant` (which
//! counts suspended time on Windows but not on macOS).
//!
//! Sleeping is still done on `std::time::Instant` (condition variables and tokio timers use the
//! monotonic clock): [`Clock::to_std`] converts a core deadline into a `std` one relative to
//! *now* on both clocks, so a jump of the source while asleep never makes a sleep longer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rwg_proto::Instant;

/// Where a [`Clock`] reads the time: a monotonic count from some fixed point in the past that
/// should include time the machine was suspended.
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Time since the source's fixed point. Never decreases.
    fn now(&self) -> Duration;
}

/// The system's clock: `CLOCK_BOOTTIME` on Linux (counts suspended time), `std::time::Instant`
/// elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[cfg(target_os = "linux")]
impl TimeSource for SystemClock {
    fn now(&self) -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        // The kernel never reports a negative boot time or nanoseconds out of range.
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
}

#[cfg(not(target_os = "linux"))]
impl TimeSource for SystemClock {
    fn now(&self) -> Duration {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        BASE.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// The default source of every [`Clock::new`].
static SYSTEM: SystemClock = SystemClock;

/// A source that moves only when told to: for tests and simulations that need to jump in time
/// (a suspend) or hold it still. Its fixed point is its creation.
#[derive(Debug, Default)]
pub struct ManualTime {
    nanos: AtomicU64,
}

impl ManualTime {
    /// A source at zero, leaked so that [`Clock`]s (which are `Copy`) can refer to it.
    pub fn leaked() -> &'static ManualTime {
        Box::leak(Box::default())
    }

    /// Moves the time forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(d))
            });
    }
}

impl TimeSource for ManualTime {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// A monotonic clock starting at its creation, in the core's terms, that counts time the
/// machine was suspended (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: &'static dyn TimeSource,
    origin: Duration,
}

impl Clock {
    /// A clock on the system's source ([`SystemClock`]) whose origin is now.
    pub fn new() -> Clock {
        Clock::with_source(&SYSTEM)
    }

    /// A clock on `source` whose origin is now (for tests: [`ManualTime`]).
    pub fn with_source(source: &'static dyn TimeSource) -> Clock {
        Clock {
            source,
            origin: source.now(),
        }
    }

    /// The current time for the core.
    pub fn now(&self) -> Instant {
        Instant::from_duration(self.source.now().saturating_sub(self.origin))
    }

    /// The `std` instant at which the core instant `t` will be reached (to sleep until it),
    /// assuming no suspend in between: now, plus what is left until `t` on this clock. A `t` in
    /// the past is now.
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        let left = t.saturating_duration_since(self.now());
        let now = std::time::Instant::now();
        now.checked_add(left).unwrap_or(now)
    }

    /// The wall clock: time since the Unix epoch (zero if the system clock is before it).
    pub fn unix_now() -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Driver, Transmitter};
    use rand_chacha::rand_core::SeedableRng;
    use rwg_proto::crypto::PrivateKey;
    use rwg_proto::device::{Device, Transmit};
    use rwg_proto::{Received, Sent};
    use std::net::SocketAddr;
    use std::sync::Arc;

    #[test]
    fn manual_time_moves_only_when_told() {
        let source = ManualTime::leaked();
        let c = Clock::with_source(source);
        assert_eq!(c.now(), Instant::ZERO);
        source.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Instant::from_nanos(1_500_000_000));
        // A clock made later has its own origin on the same source.
        let later = Clock::with_source(source);
        assert_eq!(later.now(), Instant::ZERO);
        source.advance(Duration::MAX);
        assert_eq!(later.now().as_nanos(), u64::MAX - 1_500_000_000);
    }

    #[test]
    fn to_std_is_relative_to_now_on_both_clocks() {
        let source = ManualTime::leaked();
        let c = Clock::with_source(source);
        let deadline = c.now().saturating_add(Duration::from_secs(5));
        let before = std::time::Instant::now();
        let at = c.to_std(deadline);
        let after = std::time::Instant::now();
        assert!(at >= before + Duration::from_secs(5) && at <= after + Duration::from_secs(5));
        // The source jumps an hour (the machine slept): that deadline is long past, so a
        // sleeper must not wait at all, let alone an hour.
        source.advance(Duration::from_secs(3600));
        assert!(c.to_std(deadline) <= std::time::Instant::now());
    }

    #[derive(Default)]
    struct Collect(Vec<Vec<u8>>);
    impl Transmitter for Collect {
        fn transmit(&mut self, t: &Transmit, datagrams: &[u8]) -> usize {
            for d in t.datagrams(datagrams) {
                self.0.push(d.to_vec());
            }
            t.len
        }
    }

    /// An IPv4 packet header of 20 bytes to 192.168.4.2, at the core's headroom in `buf`.
    fn packet(buf: &mut [u8]) {
        let p = &mut buf[16..16 + 20];
        p.fill(0);
        p[0] = 0x45;
        p[3] = 20;
        p[16..20].copy_from_slice(&[192, 168, 4, 2]);
    }

    /// A and B complete a handshake, A on `a_time`; returns A's device and clock, with a
    /// session to B that A has confirmed.
    fn established(a_time: &'static ManualTime) -> (Arc<Device>, Clock) {
        let dev = |seed: u64, key: u8| {
            let d = Arc::new(Device::new(Box::new(
                rand_chacha::ChaCha20Rng::seed_from_u64(seed),
            )));
            d.set_private_key(Some(PrivateKey::from_bytes([key; 32])));
            d
        };
        let (a, b) = (dev(1, 1), dev(2, 2));
        let pa = PrivateKey::from_bytes([1; 32]).public_key();
        let pb = PrivateKey::from_bytes([2; 32]).public_key();
        let a_addr: SocketAddr = "10.0.0.1:51820".parse().expect("addr");
        let b_addr: SocketAddr = "10.0.0.2:51820".parse().expect("addr");
        a.add_peer(pb);
        a.set_endpoint(&pb, b_addr).expect("peer");
        a.add_allowed_ip(&pb, "192.168.4.2".parse().expect("ip"), 32)
            .expect("peer");
        b.add_peer(pa);
        let (ca, cb) = (
            Clock::with_source(a_time),
            Clock::with_source(ManualTime::leaked()),
        );
        let (mut da, mut db) = (Driver::new(a.clone(), ca), Driver::new(b.clone(), cb));
        let mut buf = vec![0u8; 256];
        packet(&mut buf);
        assert_eq!(
            a.data_path().encapsulate(ca.now(), &mut buf, 20),
            Sent::Staged
        );
        let mut out = Collect::default();
        da.turn(&mut out);
        let mut init = out.0.pop().expect("initiation");
        assert_eq!(
            b.data_path().decapsulate(cb.now(), a_addr, &mut init),
            Received::Handshake
        );
        let mut out_b = Collect::default();
        db.turn(&mut out_b);
        let mut resp = out_b.0.pop().expect("response");
        a.data_path().decapsulate(ca.now(), b_addr, &mut resp);
        // A's turn handles the response and sends the staged packet under the new session.
        let mut out = Collect::default();
        da.turn(&mut out);
        assert_eq!(out.0.len(), 1, "the staged packet, encrypted");
        (a, ca)
    }

    #[test]
    fn a_session_is_used_while_fresh() {
        let source = ManualTime::leaked();
        let (a, clock) = established(source);
        source.advance(Duration::from_secs(60));
        let mut buf = vec![0u8; 256];
        packet(&mut buf);
        assert!(matches!(
            a.data_path().encapsulate(clock.now(), &mut buf, 20),
            Sent::Transmit { .. }
        ));
    }

    #[test]
    fn after_a_suspend_the_stale_session_is_not_used() {
        let source = ManualTime::leaked();
        let (a, clock) = established(source);
        // The machine sleeps for an hour: the source (CLOCK_BOOTTIME in the daemon) jumps.
        source.advance(Duration::from_secs(3600));
        let mut buf = vec![0u8; 256];
        packet(&mut buf);
        // The session is older than Reject-After-Time: the packet waits for a new handshake
        // instead of going out under a key the peer has long erased.
        assert_eq!(
            a.data_path().encapsulate(clock.now(), &mut buf, 20),
            Sent::Staged
        );
        let mut driver = Driver::new(a.clone(), clock);
        let mut out = Collect::default();
        driver.turn(&mut out);
        assert!(
            out.0.iter().any(|d| d.len() == 148 && d[0] == 1),
            "a new initiation at once"
        );
    }

    /// `/proc/uptime`'s first field: time since boot, suspended time included (10 ms steps).
    #[cfg(target_os = "linux")]
    fn uptime() -> Duration {
        let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
        let secs = text.split_whitespace().next().expect("a field");
        Duration::from_secs_f64(secs.parse::<f64>().expect("seconds"))
    }

    /// The system source is the kernel's time since boot, which counts suspended time.
    #[cfg(target_os = "linux")]
    #[test]
    fn system_source_is_time_since_boot() {
        let before = uptime();
        let now = SystemClock.now();
        let after = uptime();
        let step = Duration::from_millis(10);
        assert!(
            now + step >= before && now <= after + step,
            "source {now:?}, /proc/uptime {before:?}..{after:?}"
        );
    }

    /// On a machine that never slept, `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` agree, and the
    /// test above could not tell them apart. A time namespace with a boot-time offset makes
    /// them differ: the test above, run there, passes only if the source is `CLOCK_BOOTTIME`.
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "needs root and unshare(1) (a time namespace): run with cargo test -- --ignored as root"]
    fn system_source_counts_a_boot_time_offset() {
        let offset = "1000000";
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new("unshare")
            .args(["--time", "--boottime", offset])
            .arg(&exe)
            .args([
                "--exact",
                "clock::tests::system_source_is_time_since_boot",
                "--nocapture",
            ])
            .output()
            .expect("run unshare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the test ran: {stdout}");
        // And the offset took effect there.
        let inner = std::process::Command::new("unshare")
            .args(["--time", "--boottime", offset, "cat", "/proc/uptime"])
            .output()
            .expect("run unshare");
        let secs: f64 = String::from_utf8_lossy(&inner.stdout)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("uptime");
        assert!(secs >= 1e6, "boot time offset applied: {secs}");
    }
}
