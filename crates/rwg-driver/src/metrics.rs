//! Metrics: a device's counters as Prometheus text, and a small HTTP endpoint that serves them
//! (`/metrics`) and a readiness check (`/readyz`). The daemon and `rwg proxy` both use it, so
//! the names are the same everywhere. Off unless asked for.
//!
//! The endpoint is deliberately small: one thread, one connection at a time, a request of at
//! most 8 KiB read within two seconds, the connection closed after each answer. A client that
//! connects and sends nothing holds it for two seconds at most and never touches the data path.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rwg_proto::device::{Device, DropReason};

/// Longest request read; longer ones get 431.
const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request line and headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a [`DeviceValue`] only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Monotonic since the device was created: `rwg_<name>_total` in Prometheus.
    Counter,
    /// A current size: `rwg_<name>` in Prometheus.
    Gauge,
}

/// A device-wide number, as every output shows it: Prometheus (`rwg_<name>_total` or
/// `rwg_<name>`) and the configuration socket's `get` reply (`rwg_<name>=<value>`). One list,
/// so that the outputs cannot disagree. Drops by reason are in [`Device::drop_counts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceValue {
    /// Lower case, digits and `_`, without the `rwg_` prefix.
    pub name: &'static str,
    /// One line for humans.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: ValueKind,
    /// The value now.
    pub value: u64,
}

/// The device's handshake counters and table sizes, in a fixed order.
pub fn device_values(device: &Device) -> Vec<DeviceValue> {
    let c = device.counters();
    let stats = device.stats();
    let rate_limited = device
        .drop_counts()
        .find(|(r, _)| *r == DropReason::RateLimited)
        .map_or(0, |(_, n)| n);
    let counter = |name, help, value| DeviceValue {
        name,
        help,
        kind: ValueKind::Counter,
        value,
    };
    let gauge = |name, help, value: usize| DeviceValue {
        name,
        help,
        kind: ValueKind::Gauge,
        value: value as u64,
    };
    vec![
        gauge("peers", "Configured peers.", stats.peers),
        counter(
            "handshake_initiations_sent",
            "Handshake initiations sent.",
            c.initiations_sent,
        ),
        counter(
            "handshake_responses_sent",
            "Handshake responses sent.",
            c.responses_sent,
        ),
        counter(
            "cookie_replies_sent",
            "Cookie replies sent (under load).",
            c.cookie_replies_sent,
        ),
        counter(
            "handshakes_completed",
            "Handshakes completed.",
            c.handshakes_completed,
        ),
        counter(
            "handshake_messages_received",
            "Handshake messages received.",
            c.handshake_messages_received,
        ),
        counter(
            "handshakes_given_up",
            "Handshakes given up after 90 s of retries.",
            c.handshakes_given_up,
        ),
        counter(
            "rate_limited",
            "Handshake messages refused by the per-source rate limiter under load.",
            rate_limited,
        ),
        gauge(
            "index_entries",
            "Entries in the receiver index table (handshakes in flight and sessions).",
            stats.indices,
        ),
        gauge(
            "staged_packets",
            "Packets waiting for a session, across all peers.",
            stats.staged_packets,
        ),
        gauge(
            "queued_handshakes",
            "Handshake messages waiting for the control path.",
            stats.queued_handshakes,
        ),
    ]
}

/// Appends the device's metrics in the Prometheus text format (version 0.0.4).
pub fn render(device: &Device, out: &mut String) {
    let peers = device.peers();
    let values = device_values(device);
    // The peer count first, as before the other values.
    for v in values.iter().filter(|v| v.name == "peers") {
        gauge(out, &format!("rwg_{}", v.name), v.help, v.value);
    }
    let _ = writeln!(
        out,
        "# HELP rwg_dropped_total Datagrams and packets dropped, by reason."
    );
    let _ = writeln!(out, "# TYPE rwg_dropped_total counter");
    for (reason, n) in device.drop_counts() {
        let _ = writeln!(out, "rwg_dropped_total{{reason=\"{}\"}} {n}", reason.name());
    }
    for v in values.iter().filter(|v| v.name != "peers") {
        match v.kind {
            ValueKind::Counter => counter(out, &format!("rwg_{}_total", v.name), v.help, v.value),
            ValueKind::Gauge => gauge(out, &format!("rwg_{}", v.name), v.help, v.value),
        }
    }
    let _ = writeln!(
        out,
        "# HELP rwg_peer_tx_bytes_total UDP payload bytes sent to a peer."
    );
    let _ = writeln!(out, "# TYPE rwg_peer_tx_bytes_total counter");
    for p in &peers {
        let _ = writeln!(
            out,
            "rwg_peer_tx_bytes_total{{peer=\"{}\"}} {}",
            base64(p.public_key.as_bytes()),
            p.tx_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP rwg_peer_rx_bytes_total UDP payload bytes of authenticated packets from a peer."
    );
    let _ = writeln!(out, "# TYPE rwg_peer_rx_bytes_total counter");
    for p in &peers {
        let _ = writeln!(
            out,
            "rwg_peer_rx_bytes_total{{peer=\"{}\"}} {}",
            base64(p.public_key.as_bytes()),
            p.rx_bytes
        );
    }
    let _ = writeln!(out, "# HELP rwg_peer_last_handshake_seconds Unix time of the last completed handshake (0: never).");
    let _ = writeln!(out, "# TYPE rwg_peer_last_handshake_seconds gauge");
    for p in &peers {
        let t = p.last_handshake.map_or(0, |d| d.as_secs());
        let _ = writeln!(
            out,
            "rwg_peer_last_handshake_seconds{{peer=\"{}\"}} {t}",
            base64(p.public_key.as_bytes())
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Standard base64 with padding, as `wg` prints keys.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Produces the body of `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;
/// Answers `/readyz`: ready or not, and a one-line reason.
pub type ReadinessSource = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// A running endpoint. Dropping the handle does not stop it; [`stop`](Self::stop) does.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl MetricsServer {
    /// Binds `addr` and serves `/metrics` (and `/readyz` when `readiness` is given) on a thread
    /// of its own.
    pub fn spawn(
        addr: SocketAddr,
        metrics: MetricsSource,
        readiness: Option<ReadinessSource>,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(stream) = conn {
                        if let Err(e) = serve(stream, &metrics, readiness.as_ref()) {
                            tracing::debug!(error = %e, "metrics client");
                        }
                    }
                }
            })?;
        tracing::info!(%local_addr, "serving metrics");
        Ok(MetricsServer { local_addr, stop })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving (after the connection in progress, if any).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
    }
}

fn serve(
    mut stream: TcpStream,
    metrics: &MetricsSource,
    readiness: Option<&ReadinessSource>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
        {
            break true;
        }
        if request.len() > MAX_REQUEST {
            break false;
        }
        match stream.read(&mut buf) {
            Ok(0) => break !request.is_empty(),
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return respond(
                    &mut stream,
                    "408 Request Timeout",
                    "request not received in time\n",
                );
            }
            Err(e) => return Err(e),
        }
    };
    if !complete {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "request too large\n",
        );
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "only GET\n");
    }
    match (path, readiness) {
        ("/metrics", _) => {
            let mut body = String::new();
            metrics(&mut body);
            respond(&mut stream, "200 OK", &body)
        }
        ("/readyz", Some(check)) => {
            let (ready, why) = check();
            let status = if ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut stream, status, &format!("{why}\n"))
        }
        _ => respond(&mut stream, "404 Not Found", "not found: try /metrics\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rwg_proto::crypto::PrivateKey;

    /// Sends `request` and reads the reply until the server closes (a reset after a reply to
    /// a request it did not read whole still leaves the reply).
    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(request);
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn metrics_and_readiness_over_http() {
        let device = Arc::new(Device::new(Box::new(
            rand_chacha::ChaCha20Rng::seed_from_u64(1),
        )));
        device.set_private_key(Some(PrivateKey::from_bytes([1; 32])));
        let peer = PrivateKey::from_bytes([2; 32]).public_key();
        device.add_peer(peer);
        let d = device.clone();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let server = MetricsServer::spawn(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(move |out: &mut String| render(&d, out)),
            Some(Arc::new(move || {
                let ok = r.load(Ordering::Relaxed);
                (
                    ok,
                    if ok {
                        "ready".into()
                    } else {
                        "no handshake yet".into()
                    },
                )
            })),
        )
        .expect("bind");
        let addr = server.local_addr();
        let reply = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\nrwg_peers 1\n"), "{reply}");
        assert!(reply.contains("rwg_dropped_total{reason=\"replay\"} 0\n"));
        let b64 = base64(peer.as_bytes());
        assert!(reply.contains(&format!("rwg_peer_tx_bytes_total{{peer=\"{b64}\"}} 0\n")));
        // No private key in any form.
        let private = PrivateKey::from_bytes([1; 32]);
        assert!(!reply.contains(&base64(private.as_bytes())));
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let huge = [b'a'; 20_000];
        assert!(get(addr, &huge).starts_with("HTTP/1.1 431"));
        // A client that sends nothing is cut off, and the next one is served.
        let idle = TcpStream::connect(addr).expect("connect");
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        drop(idle);
        server.stop();
    }
}
