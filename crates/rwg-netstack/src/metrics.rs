//! The proxy's metrics and readiness.
//!
//! [`ProxyMetrics`] counts open connections per service and SOCKS5/HTTP requests by result;
//! [`ProxyMetrics::render`] appends them in the Prometheus text format, to be served together
//! with the device's part (`rwg_driver::metrics::render`) and the stack's
//! ([`render_stack`]). [`Readiness`] answers "is the tunnel usable": every configured peer
//! has completed a handshake recently, or a configured address inside the tunnel answers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::socks5::Reply;
use crate::stack::{NetStack, StackStats};
use crate::tcp::TcpStream;
use crate::wireguard::TunnelHandle;

/// The services that hold client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The SOCKS5 server.
    Socks5,
    /// The HTTP proxy.
    Http,
    /// Port forwards (local to tunnel, and reverse).
    Forward,
    /// The stdio tunnel.
    Stdio,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::Socks5,
        Service::Http,
        Service::Forward,
        Service::Stdio,
    ];

    fn name(self) -> &'static str {
        match self {
            Service::Socks5 => "socks5",
            Service::Http => "http",
            Service::Forward => "forward",
            Service::Stdio => "stdio",
        }
    }
}

/// How a SOCKS5 client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksResult {
    /// The request was answered with this reply code.
    Reply(Reply),
    /// The client's credentials were refused.
    AuthFailed,
    /// The client broke the protocol or hung up before its request was complete.
    ProtocolError,
    /// The client did not finish its greeting and request in time.
    Timeout,
    /// Refused at once: the connection cap was reached.
    OverLimit,
}

const SOCKS_RESULTS: [&str; 13] = [
    "succeeded",
    "general_failure",
    "not_allowed",
    "network_unreachable",
    "host_unreachable",
    "connection_refused",
    "ttl_expired",
    "command_not_supported",
    "address_type_not_supported",
    "auth_failed",
    "protocol_error",
    "timeout",
    "over_limit",
];

impl SocksResult {
    fn index(self) -> usize {
        match self {
            SocksResult::Reply(r) => r as usize,
            SocksResult::AuthFailed => 9,
            SocksResult::ProtocolError => 10,
            SocksResult::Timeout => 11,
            SocksResult::OverLimit => 12,
        }
    }
}

/// The status codes the HTTP proxy sends; anything else is counted as "other".
const HTTP_CODES: [u16; 12] = [200, 400, 403, 405, 407, 408, 414, 431, 502, 503, 504, 505];

/// Counters of the proxy's services. Share one `Arc` between all of them.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    open: [AtomicU64; 4],
    refused: [AtomicU64; 4],
    socks: [AtomicU64; 13],
    http: [AtomicU64; 13],
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<ProxyMetrics>,
    service: Service,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open[self.service as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProxyMetrics {
    /// Fresh counters.
    pub fn new() -> Arc<ProxyMetrics> {
        Arc::new(ProxyMetrics::default())
    }

    /// Count a connection of `service` as open until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, service: Service) -> OpenConnection {
        self.open[service as usize].fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            metrics: self.clone(),
            service,
        }
    }

    /// Connections of `service` open now.
    pub fn open_connections(&self, service: Service) -> u64 {
        self.open[service as usize].load(Ordering::Relaxed)
    }

    /// Count a connection of `service` refused because the connection cap was reached.
    pub fn count_refused(&self, service: Service) {
        self.refused[service as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections of `service` refused at the cap so far.
    pub fn refused(&self, service: Service) -> u64 {
        self.refused[service as usize].load(Ordering::Relaxed)
    }

    /// Count a SOCKS5 client's result.
    pub fn count_socks(&self, result: SocksResult) {
        self.socks[result.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// SOCKS5 clients that ended with `result` so far.
    pub fn socks(&self, result: SocksResult) -> u64 {
        self.socks[result.index()].load(Ordering::Relaxed)
    }

    fn http_index(status: u16) -> usize {
        HTTP_CODES
            .iter()
            .position(|c| *c == status)
            .unwrap_or(HTTP_CODES.len())
    }

    /// Count an HTTP proxy request answered with `status` (200 for a CONNECT tunnel or a
    /// forwarded request whose response came back, whatever its own status).
    pub fn count_http(&self, status: u16) {
        self.http[Self::http_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP proxy requests answered with `status` so far (statuses the proxy does not send
    /// share one "other" counter).
    pub fn http(&self, status: u16) -> u64 {
        self.http[Self::http_index(status)].load(Ordering::Relaxed)
    }

    /// Append the counters in the Prometheus text format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP rwg_proxy_open_connections Client connections open now, by service.\n\
             # TYPE rwg_proxy_open_connections gauge"
        );
        for s in Service::ALL {
            let _ = writeln!(
                out,
                "rwg_proxy_open_connections{{service=\"{}\"}} {}",
                s.name(),
                self.open_connections(s)
            );
        }
        let _ = writeln!(
            out,
            "# HELP rwg_proxy_refused_connections_total Client connections refused at the connection cap, by service.\n\
             # TYPE rwg_proxy_refused_connections_total counter"
        );
        for s in Service::ALL {
            let _ = writeln!(
                out,
                "rwg_proxy_refused_connections_total{{service=\"{}\"}} {}",
                s.name(),
                self.refused(s)
            );
        }
        let _ = writeln!(
            out,
            "# HELP rwg_proxy_socks5_requests_total SOCKS5 clients, by result.\n\
             # TYPE rwg_proxy_socks5_requests_total counter"
        );
        for (i, name) in SOCKS_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "rwg_proxy_socks5_requests_total{{result=\"{name}\"}} {}",
                self.socks[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP rwg_proxy_http_requests_total HTTP proxy requests, by the status the proxy answered.\n\
             # TYPE rwg_proxy_http_requests_total counter"
        );
        for (i, code) in HTTP_CODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "rwg_proxy_http_requests_total{{code=\"{code}\"}} {}",
                self.http[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "rwg_proxy_http_requests_total{{code=\"other\"}} {}",
            self.http[HTTP_CODES.len()].load(Ordering::Relaxed)
        );
    }
}

/// Append the stack's counters in the Prometheus text format.
pub fn render_stack(stats: &StackStats, out: &mut String) {
    for (name, help, value) in [
        (
            "rwg_netstack_received_packets_total",
            "IP packets from the tunnel accepted by the stack.",
            stats.received,
        ),
        (
            "rwg_netstack_receive_dropped_packets_total",
            "IP packets from the tunnel the stack dropped (queue full, too large).",
            stats.receive_dropped,
        ),
        (
            "rwg_netstack_transmitted_packets_total",
            "IP packets the stack sent into the tunnel.",
            stats.transmitted,
        ),
        (
            "rwg_netstack_syn_dropped_total",
            "Connection attempts dropped because a listener's backlog was full.",
            stats.syn_dropped,
        ),
        (
            "rwg_netstack_segments_split_total",
            "TCP segments split to fit a smaller path MTU learned from ICMP.",
            stats.segments_split,
        ),
        (
            "rwg_netstack_retransmits_suppressed_total",
            "TCP retransmissions not sent because the peer had acknowledged them selectively.",
            stats.retransmits_suppressed,
        ),
        (
            "rwg_netstack_retransmitted_segments_total",
            "TCP segments sent a second time, on connections that reported a loss.",
            stats.retransmitted,
        ),
        (
            "rwg_netstack_loss_episodes_total",
            "Loss episodes reported by peers (SACK blocks appearing).",
            stats.loss_episodes,
        ),
        (
            "rwg_netstack_dupacks_normalized_total",
            "Duplicate ACKs whose changed window was kept as before, so that they count.",
            stats.dupacks_normalized,
        ),
        (
            "rwg_netstack_tail_loss_probes_total",
            "Tail loss probes: duplicate ACKs made up so that smoltcp retransmits at once.",
            stats.tail_loss_probes,
        ),
        (
            "rwg_netstack_receive_window_trims_total",
            "Incoming TCP segments cut to the receive window the stack had announced.",
            stats.receive_window_trims,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// When the last probe of a [`Readiness`] succeeded, and what the last one said.
#[derive(Debug, Default)]
struct ProbeState {
    last_success: Option<tokio::time::Instant>,
    last_error: Option<String>,
}

/// Whether the tunnel is usable: every configured peer completed a handshake within
/// `max_handshake_age`, or, when a probe is configured, a TCP connection to the probe
/// address through the tunnel succeeded recently.
#[derive(Debug, Clone)]
pub struct Readiness {
    tunnel: TunnelHandle,
    max_handshake_age: Duration,
    probe: Option<(SocketAddr, Duration, Arc<Mutex<ProbeState>>)>,
}

impl Readiness {
    /// Ready when every peer's last handshake is at most `max_handshake_age` old (180 s, the
    /// session lifetime plus a margin, is a good value: a live tunnel rekeys every 120 s
    /// while it carries traffic).
    pub fn new(tunnel: TunnelHandle, max_handshake_age: Duration) -> Self {
        Readiness {
            tunnel,
            max_handshake_age,
            probe: None,
        }
    }

    /// Also ready while a TCP connection to `target` through `stack` succeeded within the last
    /// two `interval`s. Spawns the probing task (a connection every `interval`, closed at
    /// once), which ends after every clone of this `Readiness` is dropped. Must be called
    /// inside a tokio runtime.
    pub fn with_probe(mut self, stack: &NetStack, target: SocketAddr, interval: Duration) -> Self {
        let state = Arc::new(Mutex::new(ProbeState::default()));
        let weak_state = Arc::downgrade(&state);
        let stack = stack.clone();
        tokio::spawn(async move {
            loop {
                let result = tokio::time::timeout(interval, TcpStream::connect(&stack, target))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "timed out",
                        ))
                    });
                let Some(state) = weak_state.upgrade() else {
                    return;
                };
                {
                    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(_) => {
                            s.last_success = Some(tokio::time::Instant::now());
                            s.last_error = None;
                        }
                        Err(e) => s.last_error = Some(e.to_string()),
                    }
                }
                drop(state);
                tokio::time::sleep(interval).await;
            }
        });
        self.probe = Some((target, interval, state));
        self
    }

    /// Ready or not, and a one-line reason.
    pub fn check(&self) -> (bool, String) {
        if let Some((target, interval, state)) = &self.probe {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = s.last_success {
                if t.elapsed() <= *interval * 2 {
                    return (true, format!("ready: {target} answered"));
                }
            }
        }
        let peers = self.tunnel.device().peers();
        if peers.is_empty() {
            return (false, "not ready: no peers configured".to_owned());
        }
        let stale: Vec<String> = peers
            .iter()
            .filter(|p| {
                self.tunnel
                    .since_handshake(&p.public_key)
                    .is_none_or(|age| age > self.max_handshake_age)
            })
            .map(|p| rwg_driver::short_key(&p.public_key))
            .collect();
        if stale.is_empty() {
            return (
                true,
                format!("ready: {} peer(s) with a recent handshake", peers.len()),
            );
        }
        let mut why = format!(
            "not ready: no handshake within {} s with {}",
            self.max_handshake_age.as_secs(),
            stale.join(", ")
        );
        if let Some((target, _, state)) = &self.probe {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = write!(
                why,
                "; {target}: {}",
                s.last_error.as_deref().unwrap_or("no answer yet")
            );
        }
        (false, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = ProxyMetrics::new();
        let a = m.open(Service::Socks5);
        let b = m.open(Service::Socks5);
        let _h = m.open(Service::Http);
        drop(a);
        m.count_socks(SocksResult::Reply(Reply::Succeeded));
        m.count_socks(SocksResult::Reply(Reply::HostUnreachable));
        m.count_socks(SocksResult::AuthFailed);
        m.count_socks(SocksResult::AuthFailed);
        m.count_http(407);
        m.count_http(299);
        m.count_refused(Service::Http);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "rwg_proxy_open_connections{service=\"socks5\"} 1",
            "rwg_proxy_open_connections{service=\"http\"} 1",
            "rwg_proxy_open_connections{service=\"forward\"} 0",
            "rwg_proxy_socks5_requests_total{result=\"succeeded\"} 1",
            "rwg_proxy_socks5_requests_total{result=\"host_unreachable\"} 1",
            "rwg_proxy_socks5_requests_total{result=\"auth_failed\"} 2",
            "rwg_proxy_socks5_requests_total{result=\"over_limit\"} 0",
            "rwg_proxy_http_requests_total{code=\"407\"} 1",
            "rwg_proxy_http_requests_total{code=\"other\"} 1",
            "rwg_proxy_refused_connections_total{service=\"http\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
        drop(b);
        assert_eq!(m.open_connections(Service::Socks5), 0);
        // Every sample line belongs to a declared metric.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(out.contains(&format!("# TYPE {name} ")), "{line}");
        }
        // The SOCKS5 result names line up with the reply codes.
        for (code, name) in [
            (Reply::Succeeded, "succeeded"),
            (Reply::AddressTypeNotSupported, "address_type_not_supported"),
            (Reply::ConnectionRefused, "connection_refused"),
        ] {
            assert_eq!(SOCKS_RESULTS[SocksResult::Reply(code).index()], name);
        }
    }
}
