//! The sending loop the flood and the junk storm share: threads, each with its share of the
//! sockets, send one datagram per socket in turn as fast as the sockets take them (or at a
//! given rate), read whatever comes back now and then, and stop at the deadline or the count.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{is_full, Pacer};

/// Largest datagram a producer may write.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// Makes the datagrams of one thread and hears what comes back to its sockets.
pub(crate) trait Producer {
    /// Writes the next datagram for socket `socket` (an index into this thread's sockets) at
    /// the start of `buf` and returns its length.
    fn next(&mut self, socket: usize, buf: &mut [u8]) -> usize;
    /// A datagram arrived on socket `socket`.
    fn received(&mut self, socket: usize, datagram: &[u8]);
    /// Counters to add to the report (summed over threads).
    fn counters(&self) -> Vec<(String, u64)>;
}

/// Limits of one run.
#[derive(Clone, Debug)]
pub(crate) struct Bounds {
    pub(crate) duration: Duration,
    pub(crate) count: u64,
    /// Datagrams per second over all threads; `None`: as fast as possible.
    pub(crate) rate: Option<f64>,
    /// Stop early once this file exists (checked every few milliseconds).
    pub(crate) stop_file: Option<std::path::PathBuf>,
}

/// Datagrams claimed from the shared count at a time.
const CHUNK: u64 = 64;

/// Runs `threads` threads over `sockets` (dealt round-robin) until the deadline or the count,
/// and returns the summed counters: `sent`, `full` (the socket buffer was full), `errors`,
/// `received` and `elapsed_ms`, `sent_per_s`, plus each producer's own.
pub(crate) fn run<P, F>(
    sockets: Vec<UdpSocket>,
    threads: usize,
    bounds: Bounds,
    make: F,
) -> Vec<(String, u64)>
where
    P: Producer,
    F: Fn(usize, usize) -> P + Sync,
{
    let threads = threads.clamp(1, sockets.len().max(1));
    let mut shares: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in sockets.into_iter().enumerate() {
        shares[i % threads].push(s);
    }
    let budget = AtomicU64::new(bounds.count);
    let start = Instant::now();
    let deadline = start + bounds.duration;
    let per_thread_rate = bounds.rate.map(|r| r / threads as f64);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(t, socks)| {
                let budget = &budget;
                let make = &make;
                let stop = &stop;
                scope.spawn(move || {
                    let producer = make(t, socks.len());
                    one_thread(socks, producer, budget, deadline, per_thread_rate, stop)
                })
            })
            .collect();
        if let Some(path) = &bounds.stop_file {
            while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
                if path.exists() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for h in handles {
            // A thread that panicked contributes nothing; the panic is printed by the runtime.
            if let Ok(counters) = h.join() {
                for (k, v) in counters {
                    *totals.entry(k).or_default() += v;
                }
            }
        }
    });
    let elapsed = start.elapsed();
    let sent = totals.get("sent").copied().unwrap_or(0);
    totals.insert("elapsed_ms".into(), elapsed.as_millis() as u64);
    totals.insert(
        "sent_per_s".into(),
        (sent as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
    );
    totals.into_iter().collect()
}

fn claim(budget: &AtomicU64) -> u64 {
    let mut got = 0;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        got = left.min(CHUNK);
        Some(left - got)
    });
    got
}

fn one_thread<P: Producer>(
    socks: Vec<UdpSocket>,
    mut producer: P,
    budget: &AtomicU64,
    deadline: Instant,
    rate: Option<f64>,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(String, u64)> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut rx = vec![0u8; 2048];
    let pacer = Pacer::new(rate);
    let (mut sent, mut full, mut errors, mut received) = (0u64, 0u64, 0u64, 0u64);
    let mut turn = 0usize;
    // Read what came back after every pass over the sockets, and at least every 64 sends.
    let drain_every = socks.len().clamp(1, 64);
    if socks.is_empty() {
        return Vec::new();
    }
    'run: loop {
        let n = claim(budget);
        if n == 0 || Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        for _ in 0..n {
            let i = turn % socks.len();
            turn = turn.wrapping_add(1);
            let len = producer.next(i, &mut buf);
            match socks[i].send(&buf[..len]) {
                Ok(_) => sent += 1,
                Err(e) if is_full(&e) => full += 1,
                Err(_) => errors += 1,
            }
            if turn % drain_every == 0 {
                for (j, s) in socks.iter().enumerate() {
                    while let Ok(got) = s.recv(&mut rx) {
                        received += 1;
                        producer.received(j, &rx[..got]);
                    }
                }
            }
        }
        pacer.pace(sent + full + errors);
        if Instant::now() >= deadline {
            break 'run;
        }
    }
    // Replies still in flight: one last look.
    std::thread::sleep(Duration::from_millis(20));
    for (j, s) in socks.iter().enumerate() {
        while let Ok(got) = s.recv(&mut rx) {
            received += 1;
            producer.received(j, &rx[..got]);
        }
    }
    let mut out = vec![
        ("sent".to_string(), sent),
        ("full".to_string(), full),
        ("errors".to_string(), errors),
        ("received".to_string(), received),
    ];
    out.extend(producer.counters());
    out
}
