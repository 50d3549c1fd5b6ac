//! A UDP relay between a WireGuard peer (the client, whose endpoint is the relay's `listen`
//! address) and another (the upstream). It can lose, duplicate and reorder what it forwards
//! (an impaired path where the kernel has no netem), counts what crosses it by message type,
//! records it, and replays the recording on command: from the relay's own sockets (an on-path
//! attacker replaying captured datagrams from the addresses they came from) or from other
//! sockets (a replayer elsewhere), while counting whatever comes back to those other sockets.
//!
//! Commands arrive as one line on a UDP control socket on loopback (`rwg-abuse ctl`):
//! `stats`, `clear`, `replay same|other to-upstream|to-client|both [TYPES]` (TYPES: e.g.
//! `1,2,4`; default all), `impair LOSS DUP REORDER` (fractions), `quit`. Each gets a one-line
//! answer of `key=value` words.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::check_destination;

/// How long a held-back (reordered) datagram waits for a successor before it goes anyway.
const HOLD: Duration = Duration::from_millis(2);

/// The relay's configuration.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) listen: SocketAddr,
    pub(crate) upstream: SocketAddr,
    pub(crate) bind: Option<IpAddr>,
    pub(crate) other_listen: Option<IpAddr>,
    pub(crate) other_bind: Option<IpAddr>,
    pub(crate) impair: Impair,
    pub(crate) seed: u64,
    pub(crate) control: SocketAddr,
    pub(crate) duration: Duration,
    pub(crate) record: usize,
}

/// Fractions of datagrams lost, duplicated and held back behind their successor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Impair {
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    pub(crate) reorder: f64,
}

impl Impair {
    pub(crate) fn parse(loss: &str, dup: &str, reorder: &str) -> Result<Impair, String> {
        let f = |s: &str| -> Result<f64, String> {
            let v: f64 = s
                .parse()
                .map_err(|_| format!("{s:?}: expected a fraction"))?;
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{s:?}: a fraction from 0 to 1"))
            }
        };
        Ok(Impair {
            loss: f(loss)?,
            dup: f(dup)?,
            reorder: f(reorder)?,
        })
    }
}

/// Direction of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToUpstream = 0,
    ToClient = 1,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::ToUpstream => "to_upstream",
            Dir::ToClient => "to_client",
        }
    }
}

const TYPE_NAMES: [&str; 5] = ["initiation", "response", "cookie", "data", "other"];

/// Index into [`TYPE_NAMES`] of a datagram's WireGuard type (by its type word alone).
fn type_slot(d: &[u8]) -> usize {
    match d {
        [t @ 1..=4, 0, 0, 0, ..] => usize::from(*t) - 1,
        _ => 4,
    }
}

#[derive(Default)]
struct Counters {
    // [direction][type]
    forwarded: [[AtomicU64; 5]; 2],
    lost: [[AtomicU64; 5]; 2],
    duplicated: [[AtomicU64; 5]; 2],
    reordered: [[AtomicU64; 5]; 2],
    keepalives: [AtomicU64; 2],
    replayed: [[AtomicU64; 5]; 2],
    // What came back to the "other" sockets, by the direction it came from.
    other_rx: [[AtomicU64; 5]; 2],
}

struct Relay {
    opts: Options,
    impair: Mutex<Impair>,
    client: Mutex<Option<SocketAddr>>,
    records: Mutex<Vec<(Dir, Vec<u8>)>>,
    counters: Counters,
    stop: AtomicBool,
    listen: UdpSocket,
    up: UdpSocket,
    other_listen: UdpSocket,
    other_up: UdpSocket,
}

fn unspecified_like(a: SocketAddr) -> IpAddr {
    if a.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

fn bind(addr: SocketAddr, timeout: Option<Duration>) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    s.set_read_timeout(timeout)
        .map_err(|e| format!("read timeout: {e}"))?;
    Ok(s)
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the relay until its duration is over or `quit` arrives; prints the final counters.
pub(crate) fn run(opts: Options) -> Result<Vec<(String, String)>, String> {
    check_destination(opts.upstream)?;
    if !opts.control.ip().is_loopback() {
        return Err(format!(
            "--control {}: must be a loopback address",
            opts.control
        ));
    }
    let hold = Some(HOLD);
    let bind_ip = opts.bind.unwrap_or_else(|| unspecified_like(opts.upstream));
    let relay = Relay {
        listen: bind(opts.listen, hold)?,
        up: bind(SocketAddr::new(bind_ip, 0), hold)?,
        other_listen: bind(
            SocketAddr::new(opts.other_listen.unwrap_or(opts.listen.ip()), 0),
            Some(Duration::from_millis(5)),
        )?,
        other_up: bind(
            SocketAddr::new(opts.other_bind.unwrap_or(bind_ip), 0),
            Some(Duration::from_millis(5)),
        )?,
        impair: Mutex::new(opts.impair),
        client: Mutex::new(None),
        records: Mutex::new(Vec::new()),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        opts,
    };
    let control = bind(relay.opts.control, Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + relay.opts.duration;
    eprintln!(
        "rwg-abuse relay: {} <-> {} (upstream side {}, replays from {} and {}), control {}",
        relay.listen.local_addr().map_err(|e| e.to_string())?,
        relay.opts.upstream,
        relay.up.local_addr().map_err(|e| e.to_string())?,
        relay.other_listen.local_addr().map_err(|e| e.to_string())?,
        relay.other_up.local_addr().map_err(|e| e.to_string())?,
        control.local_addr().map_err(|e| e.to_string())?,
    );
    std::thread::scope(|s| {
        s.spawn(|| relay.pump(Dir::ToUpstream, deadline));
        s.spawn(|| relay.pump(Dir::ToClient, deadline));
        s.spawn(|| relay.watch_others(deadline));
        let mut buf = [0u8; 512];
        while Instant::now() < deadline && !relay.stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = control.recv_from(&mut buf) else {
                continue;
            };
            let line = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            let answer = relay.command(&line);
            let _ = control.send_to(answer.as_bytes(), from);
        }
        relay.stop.store(true, Ordering::Relaxed);
    });
    Ok(relay
        .stats()
        .split(' ')
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

impl Relay {
    fn impair(&self) -> Impair {
        self.impair.lock().map(|g| *g).unwrap_or_default()
    }

    fn client(&self) -> Option<SocketAddr> {
        self.client.lock().ok().and_then(|g| *g)
    }

    fn record(&self, dir: Dir, d: &[u8]) {
        if let Ok(mut r) = self.records.lock() {
            if r.len() < self.opts.record {
                r.push((dir, d.to_vec()));
            }
        }
    }

    /// Forwards datagrams in one direction until the deadline.
    fn pump(&self, dir: Dir, deadline: Instant) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed.wrapping_add(dir as u64));
        let mut buf = vec![0u8; 65_536];
        let mut held: Option<Vec<u8>> = None;
        let (from_sock, to_sock) = match dir {
            Dir::ToUpstream => (&self.listen, &self.up),
            Dir::ToClient => (&self.up, &self.listen),
        };
        while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            let (n, from) = match from_sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => {
                    // Nothing for a while: a held-back datagram goes now.
                    if let Some(h) = held.take() {
                        self.send(dir, to_sock, &h);
                    }
                    continue;
                }
            };
            match dir {
                Dir::ToUpstream => {
                    if check_destination(from).is_err() {
                        continue;
                    }
                    if let Ok(mut c) = self.client.lock() {
                        *c = Some(from);
                    }
                }
                Dir::ToClient => {
                    if from != self.opts.upstream {
                        continue;
                    }
                }
            }
            let d = &buf[..n];
            self.record(dir, d);
            let slot = type_slot(d);
            let c = &self.counters;
            let imp = self.impair();
            if uniform(&mut rng) < imp.loss {
                c.lost[dir as usize][slot].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let copies = if uniform(&mut rng) < imp.dup {
                c.duplicated[dir as usize][slot].fetch_add(1, Ordering::Relaxed);
                2
            } else {
                1
            };
            if held.is_none() && uniform(&mut rng) < imp.reorder {
                // Goes out after the next datagram of this direction (or after HOLD).
                c.reordered[dir as usize][slot].fetch_add(1, Ordering::Relaxed);
                if copies == 2 {
                    self.send(dir, to_sock, d);
                }
                held = Some(d.to_vec());
                continue;
            }
            for _ in 0..copies {
                self.send(dir, to_sock, d);
            }
            if let Some(h) = held.take() {
                self.send(dir, to_sock, &h);
            }
        }
    }

    fn send(&self, dir: Dir, sock: &UdpSocket, d: &[u8]) {
        let to = match dir {
            Dir::ToUpstream => Some(self.opts.upstream),
            Dir::ToClient => self.client(),
        };
        let Some(to) = to else { return };
        if sock.send_to(d, to).is_ok() {
            let slot = type_slot(d);
            self.counters.forwarded[dir as usize][slot].fetch_add(1, Ordering::Relaxed);
            if slot == 3 && d.len() == 32 {
                self.counters.keepalives[dir as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts what the peers send back to the replaying sockets.
    fn watch_others(&self, deadline: Instant) {
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            // other_up talks to the upstream: what it receives came from there.
            for (sock, from_dir) in [
                (&self.other_up, Dir::ToClient),
                (&self.other_listen, Dir::ToUpstream),
            ] {
                if let Ok(n) = sock.recv(&mut buf) {
                    self.counters.other_rx[from_dir as usize][type_slot(&buf[..n])]
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn command(&self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["stats"] => self.stats(),
            ["clear"] => {
                let n = self.records.lock().map(|mut r| {
                    let n = r.len();
                    r.clear();
                    n
                });
                format!("cleared={}", n.unwrap_or(0))
            }
            ["replay", from, dirs, rest @ ..] if rest.len() <= 1 => {
                self.replay(from, dirs, rest.first().copied())
            }
            ["impair", l, d, r] => match Impair::parse(l, d, r) {
                Ok(imp) => {
                    if let Ok(mut g) = self.impair.lock() {
                        *g = imp;
                    }
                    format!("loss={} dup={} reorder={}", imp.loss, imp.dup, imp.reorder)
                }
                Err(e) => format!("error={}", e.replace(' ', "_")),
            },
            ["quit"] => {
                self.stop.store(true, Ordering::Relaxed);
                "quit=1".into()
            }
            _ => format!("error=unknown_command:{}", line.replace(' ', "_")),
        }
    }

    fn replay(&self, from: &str, dirs: &str, types: Option<&str>) -> String {
        let other = match from {
            "same" => false,
            "other" => true,
            _ => return "error=replay_from_same_or_other".into(),
        };
        let want_dirs: &[Dir] = match dirs {
            "to-upstream" => &[Dir::ToUpstream],
            "to-client" => &[Dir::ToClient],
            "both" => &[Dir::ToUpstream, Dir::ToClient],
            _ => return "error=replay_to-upstream_to-client_or_both".into(),
        };
        let mut want_types = [true; 5];
        if let Some(t) = types {
            want_types = [false; 5];
            for part in t.split(',') {
                match part.parse::<usize>() {
                    Ok(n @ 1..=4) => want_types[n - 1] = true,
                    _ => return format!("error=bad_type:{part}"),
                }
            }
        }
        let records = match self.records.lock() {
            Ok(r) => r.clone(),
            Err(_) => return "error=poisoned".into(),
        };
        let client = self.client();
        let mut n = 0u64;
        for (dir, d) in records {
            let slot = type_slot(&d);
            if !want_dirs.contains(&dir) || slot == 4 || !want_types[slot] {
                continue;
            }
            let (sock, to) = match (dir, other) {
                (Dir::ToUpstream, false) => (&self.up, Some(self.opts.upstream)),
                (Dir::ToUpstream, true) => (&self.other_up, Some(self.opts.upstream)),
                (Dir::ToClient, false) => (&self.listen, client),
                (Dir::ToClient, true) => (&self.other_listen, client),
            };
            if let Some(to) = to {
                if sock.send_to(&d, to).is_ok() {
                    n += 1;
                    self.counters.replayed[dir as usize][slot].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        format!("replayed={n}")
    }

    fn stats(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        let recorded = self.records.lock().map(|r| r.len()).unwrap_or(0);
        let _ = write!(out, "recorded={recorded}");
        for dir in [Dir::ToUpstream, Dir::ToClient] {
            let d = dir as usize;
            for (t, name) in TYPE_NAMES.iter().enumerate() {
                for (what, arr) in [
                    ("fwd", &c.forwarded),
                    ("lost", &c.lost),
                    ("dup", &c.duplicated),
                    ("reord", &c.reordered),
                    ("replayed", &c.replayed),
                ] {
                    let _ = write!(
                        out,
                        " {}_{name}_{what}={}",
                        dir.name(),
                        arr[d][t].load(Ordering::Relaxed)
                    );
                }
                // What the other sockets got from the upstream (dir to_client) or the client.
                let _ = write!(
                    out,
                    " other_rx_{}_{name}={}",
                    dir.name(),
                    c.other_rx[d][t].load(Ordering::Relaxed)
                );
            }
            let _ = write!(
                out,
                " {}_keepalives={}",
                dir.name(),
                c.keepalives[d].load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            " client={}",
            self.client().map_or("none".into(), |a| a.to_string())
        );
        for (name, s) in [
            ("other_upstream_side", &self.other_up),
            ("other_client_side", &self.other_listen),
        ] {
            if let Ok(a) = s.local_addr() {
                let _ = write!(out, " {name}={a}");
            }
        }
        out
    }
}

/// Sends one command to a relay's control socket and returns its answer.
pub(crate) fn control(addr: SocketAddr, command: &str) -> Result<String, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("--control {addr}: must be a loopback address"));
    }
    let s = bind(
        SocketAddr::new(unspecified_like(addr), 0),
        Some(Duration::from_secs(5)),
    )?;
    s.send_to(command.as_bytes(), addr)
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from the relay at {addr} within 5 s: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_on_loopback(
        impair: Impair,
        seed: u64,
    ) -> (
        std::thread::JoinHandle<()>,
        SocketAddr,
        UdpSocket,
        UdpSocket,
        SocketAddr,
    ) {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // Free ports for the relay's listen and control sockets.
        let listen = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let control = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let opts = Options {
            listen,
            upstream: upstream.local_addr().unwrap(),
            bind: Some("127.0.0.1".parse().unwrap()),
            other_listen: None,
            other_bind: None,
            impair,
            seed,
            control,
            duration: Duration::from_secs(20),
            record: 100,
        };
        let h = std::thread::spawn(move || {
            run(opts).unwrap();
        });
        // Wait for the control socket to answer.
        let mut ok = false;
        for _ in 0..50 {
            if control_once(control, "stats").is_some() {
                ok = true;
                break;
            }
        }
        assert!(ok, "relay did not come up");
        (h, listen, client, upstream, control)
    }

    fn control_once(addr: SocketAddr, cmd: &str) -> Option<String> {
        let s = UdpSocket::bind("127.0.0.1:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
        s.send_to(cmd.as_bytes(), addr).ok()?;
        let mut buf = [0u8; 8192];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn stat(stats: &str, key: &str) -> u64 {
        stats
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stats}"))
    }

    fn datagram(ty: u8, seq: u32, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        d[0] = ty;
        d[4..8].copy_from_slice(&seq.to_le_bytes());
        d
    }

    /// A clean relay forwards both ways, in order, learns the client, records, and replays
    /// from its own socket and from another one.
    #[test]
    fn forwards_records_and_replays() {
        let (h, listen, client, upstream, control) = relay_on_loopback(Impair::default(), 1);
        let mut buf = [0u8; 2048];
        for i in 0..10 {
            client.send_to(&datagram(4, i, 32), listen).unwrap();
            let (n, from) = upstream.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &datagram(4, i, 32)[..]);
            upstream.send_to(&datagram(2, i, 92), from).unwrap();
            let (n, from2) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from2, listen);
            assert_eq!(&buf[..n], &datagram(2, i, 92)[..]);
        }
        let s = super::control(control, "stats").unwrap();
        assert_eq!(stat(&s, "to_upstream_data_fwd"), 10);
        assert_eq!(stat(&s, "to_upstream_keepalives"), 10);
        assert_eq!(stat(&s, "to_client_response_fwd"), 10);
        assert_eq!(stat(&s, "recorded"), 20);

        // Replay the data messages from the relay's own upstream-side socket.
        let (_, relay_up) = {
            client.send_to(&datagram(4, 99, 40), listen).unwrap();
            upstream.recv_from(&mut buf).unwrap()
        };
        let r = super::control(control, "replay same to-upstream 4").unwrap();
        assert_eq!(r, "replayed=11");
        for i in 0..10 {
            let (n, from) = upstream.recv_from(&mut buf).unwrap();
            assert_eq!(from, relay_up, "same source");
            assert_eq!(&buf[..n], &datagram(4, i, 32)[..]);
        }
        let (n, _) = upstream.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(4, 99, 40)[..]);
        // From elsewhere: another source port; the upstream's answer is counted.
        assert_eq!(
            super::control(control, "replay other to-upstream 4").unwrap(),
            "replayed=11"
        );
        let (_, other) = upstream.recv_from(&mut buf).unwrap();
        assert_ne!(other, relay_up);
        upstream.send_to(&datagram(3, 0, 64), other).unwrap();
        let mut seen = 0;
        for _ in 0..100 {
            let s = super::control(control, "stats").unwrap();
            seen = stat(&s, "other_rx_to_client_cookie");
            if seen == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen, 1);
        // Toward the client, types filtered.
        assert_eq!(
            super::control(control, "replay same to-client 2").unwrap(),
            "replayed=10"
        );
        assert_eq!(super::control(control, "clear").unwrap(), "cleared=21");
        assert!(super::control(control, "replay sideways both")
            .unwrap()
            .starts_with("error="));
        assert!(super::control(control, "impair 2 0 0")
            .unwrap()
            .starts_with("error="));
        assert_eq!(super::control(control, "quit").unwrap(), "quit=1");
        h.join().unwrap();
    }

    /// Loss, duplication and reordering happen at about the rates asked for, and the counters
    /// account for every datagram.
    #[test]
    fn impairs_at_the_rates_asked_for() {
        let imp = Impair {
            loss: 0.1,
            dup: 0.05,
            reorder: 0.3,
        };
        let (h, listen, client, upstream, control) = relay_on_loopback(imp, 7);
        let total = 2000u32;
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        upstream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // Bursts of 10, each read until 20 ms of silence: socket buffers never overflow, and a
        // datagram held back has successors to be held behind.
        for burst in 0..total / 10 {
            for i in 0..10 {
                client
                    .send_to(&datagram(4, burst * 10 + i, 100), listen)
                    .unwrap();
            }
            while let Ok((_, _)) = upstream.recv_from(&mut buf) {
                got.push(u32::from_le_bytes(buf[4..8].try_into().unwrap()));
            }
        }
        // Stragglers of the last burst on a busy machine: read until the relay's count of
        // forwarded datagrams is all here (bounded).
        upstream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut s = super::control(control, "stats").unwrap();
        for _ in 0..25 {
            if stat(&s, "to_upstream_data_fwd") as usize == got.len() {
                break;
            }
            while let Ok((_, _)) = upstream.recv_from(&mut buf) {
                got.push(u32::from_le_bytes(buf[4..8].try_into().unwrap()));
            }
            s = super::control(control, "stats").unwrap();
        }
        let lost = stat(&s, "to_upstream_data_lost");
        let dup = stat(&s, "to_upstream_data_dup");
        let reord = stat(&s, "to_upstream_data_reord");
        let fwd = stat(&s, "to_upstream_data_fwd");
        assert_eq!(fwd as usize, got.len());
        assert_eq!(fwd, u64::from(total) - lost + dup);
        let frac = |n: u64| n as f64 / f64::from(total);
        assert!((0.07..0.13).contains(&frac(lost)), "loss {lost}");
        assert!((0.03..0.07).contains(&frac(dup)), "dup {dup}");
        assert!((0.15..0.35).contains(&frac(reord)), "reord {reord}");
        let out_of_order = got.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(out_of_order > 0);
        assert_eq!(super::control(control, "quit").unwrap(), "quit=1");
        h.join().unwrap();
    }
}
