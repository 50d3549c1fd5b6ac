//! Port forwards between real local sockets and addresses inside the tunnel.
//!
//! Spec strings, as given on the command line:
//!
//! - `tcp:LOCAL:REMOTE`: accept TCP on the real `LOCAL` address, connect to `REMOTE` inside
//!   the tunnel, and relay.
//! - `udp:LOCAL:REMOTE`: receive datagrams on the real `LOCAL` address and relay them to
//!   `REMOTE` inside the tunnel, one tunnel socket per local client; replies go back to the
//!   client.
//! - `reverse tcp:PORT:LOCAL` (or `reverse-tcp:PORT:LOCAL`): listen on `PORT` of the stack
//!   and relay each connection to the real `LOCAL` address.
//!
//! Addresses are `IPv4:port` or `[IPv6]:port`, for example
//! `tcp:127.0.0.1:8080:10.0.0.2:80` or `udp:[::1]:5353:[fd00::1]:53`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{OpenConnection, ProxyMetrics, Service};
use crate::relay::{relay, ConnectionLimit, ConnectionPermit};
use crate::socks5::ACCEPT_ERROR_PAUSE;
use crate::stack::NetStack;
use crate::tcp::{TcpListener, TcpStream};
use crate::udp::UdpSocket;

/// How long a TCP forward keeps a connection with no traffic either way, by default.
const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// How long a UDP forward keeps a client's tunnel socket without traffic.
const UDP_IDLE: Duration = Duration::from_secs(120);
/// Most local clients a UDP forward serves at once; datagrams from more are dropped.
const MAX_UDP_SESSIONS: usize = 1024;

/// One forward, parsed from its spec string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardSpec {
    /// `tcp:LOCAL:REMOTE`.
    Tcp {
        /// The real address to listen on.
        local: SocketAddr,
        /// The address inside the tunnel to connect to.
        remote: SocketAddr,
    },
    /// `udp:LOCAL:REMOTE`.
    Udp {
        /// The real address to receive on.
        local: SocketAddr,
        /// The address inside the tunnel to send to.
        remote: SocketAddr,
    },
    /// `reverse tcp:PORT:LOCAL`.
    ReverseTcp {
        /// The stack's port to listen on.
        tunnel_port: u16,
        /// The real address to connect to.
        local: SocketAddr,
    },
}

/// A forward spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    spec: String,
    reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid forward {:?}: {}", self.spec, self.reason)
    }
}

impl std::error::Error for SpecError {}

/// Split `ADDR:PORT` off the front of `s`; returns the address and what follows its port.
fn take_addr<'a>(s: &'a str, what: &str) -> Result<(SocketAddr, &'a str), String> {
    let end = if s.starts_with('[') {
        let close = s
            .find(']')
            .ok_or_else(|| format!("{what}: missing `]` in {s:?}"))?;
        s[close..]
            .find(':')
            .map(|i| close + i)
            .and_then(|colon| s[colon + 1..].find(':').map(|i| colon + 1 + i))
    } else {
        s.find(':')
            .and_then(|colon| s[colon + 1..].find(':').map(|i| colon + 1 + i))
    };
    let (text, rest) = match end {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let addr = text
        .parse::<SocketAddr>()
        .map_err(|_| format!("{what}: {text:?} is not IPv4:port or [IPv6]:port"))?;
    Ok((addr, rest))
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (local, rest) = take_addr(s, "local address")?;
    if rest.is_empty() {
        return Err("expected LOCAL:REMOTE, found only one address".to_owned());
    }
    let (remote, trailing) = take_addr(rest, "remote address")?;
    if !trailing.is_empty() {
        return Err(format!("unexpected {trailing:?} after the remote address"));
    }
    Ok((local, remote))
}

impl FromStr for ForwardSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let error = |reason: String| SpecError {
            spec: spec.to_owned(),
            reason,
        };
        let s = spec.trim();
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (local, remote) = parse_pair(rest).map_err(error)?;
            Ok(ForwardSpec::Tcp { local, remote })
        } else if let Some(rest) = s.strip_prefix("udp:") {
            let (local, remote) = parse_pair(rest).map_err(error)?;
            Ok(ForwardSpec::Udp { local, remote })
        } else if let Some(rest) = s.strip_prefix("reverse-tcp:").or_else(|| {
            s.strip_prefix("reverse")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix("tcp:"))
        }) {
            let (port, local) = rest
                .split_once(':')
                .ok_or_else(|| error("expected reverse tcp:PORT:LOCAL".to_owned()))?;
            let tunnel_port = match port.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(error(format!("tunnel port {port:?} is not 1..=65535"))),
            };
            let (local, trailing) = take_addr(local, "local address").map_err(error)?;
            if !trailing.is_empty() {
                return Err(error(format!(
                    "unexpected {trailing:?} after the local address"
                )));
            }
            Ok(ForwardSpec::ReverseTcp { tunnel_port, local })
        } else {
            Err(error(
                "expected tcp:LOCAL:REMOTE, udp:LOCAL:REMOTE or reverse tcp:PORT:LOCAL".to_owned(),
            ))
        }
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardSpec::Tcp { local, remote } => write!(f, "tcp:{local}:{remote}"),
            ForwardSpec::Udp { local, remote } => write!(f, "udp:{local}:{remote}"),
            ForwardSpec::ReverseTcp { tunnel_port, local } => {
                write!(f, "reverse tcp:{tunnel_port}:{local}")
            }
        }
    }
}

enum Bound {
    Tcp(tokio::net::TcpListener, SocketAddr),
    Udp(Arc<tokio::net::UdpSocket>, SocketAddr),
    Reverse(TcpListener, SocketAddr),
}

/// A forward whose listening socket is bound; [`run`](Forwarder::run) serves it.
pub struct Forwarder {
    stack: NetStack,
    bound: Bound,
    limit: Option<ConnectionLimit>,
    metrics: Option<Arc<ProxyMetrics>>,
    idle_timeout: Option<Duration>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Bind the listening side of `spec`, so that errors such as "address in use" show up
    /// before anything runs.
    pub async fn bind(stack: &NetStack, spec: ForwardSpec) -> io::Result<Forwarder> {
        let bound = match spec {
            ForwardSpec::Tcp { local, remote } => {
                Bound::Tcp(tokio::net::TcpListener::bind(local).await?, remote)
            }
            ForwardSpec::Udp { local, remote } => {
                Bound::Udp(Arc::new(tokio::net::UdpSocket::bind(local).await?), remote)
            }
            ForwardSpec::ReverseTcp { tunnel_port, local } => {
                Bound::Reverse(TcpListener::bind(stack, tunnel_port)?, local)
            }
        };
        Ok(Forwarder {
            stack: stack.clone(),
            bound,
            limit: None,
            metrics: None,
            idle_timeout: Some(DEFAULT_IDLE),
        })
    }

    /// Share `limit` (a cap on concurrent connections) with other services: a TCP connection
    /// over the cap is closed at once. (UDP forwards have their own cap on sessions.)
    pub fn with_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Count open connections in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Close a TCP connection after this long with no byte moving either way (default 10
    /// minutes; `None`: never).
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// A permit for one more connection and its open-connection count, or `None` (counted as
    /// refused) at the cap.
    fn admit(&self) -> Option<(Option<ConnectionPermit>, Option<OpenConnection>)> {
        let permit = match &self.limit {
            Some(limit) => match limit.try_acquire() {
                Some(p) => Some(p),
                None => {
                    if let Some(m) = &self.metrics {
                        m.count_refused(Service::Forward);
                    }
                    return None;
                }
            },
            None => None,
        };
        let open = self.metrics.as_ref().map(|m| m.open(Service::Forward));
        Some((permit, open))
    }

    /// The address listened on: the real local address, or for a reverse forward the
    /// stack's first address with the tunnel port.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.bound {
            Bound::Tcp(l, _) => l.local_addr().ok(),
            Bound::Udp(s, _) => s.local_addr().ok(),
            Bound::Reverse(l, _) => self
                .stack
                .addresses()
                .first()
                .map(|(ip, _)| SocketAddr::new(*ip, l.local_port())),
        }
    }

    /// Serve forever. A reverse forward stops if its listener fails, a UDP forward if its
    /// socket fails; accept errors on a real TCP socket only pause it.
    pub async fn run(self) -> io::Result<()> {
        let idle = self.idle_timeout;
        match &self.bound {
            Bound::Tcp(listener, remote) => loop {
                let Ok((mut client, from)) = listener.accept().await else {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                let Some(admitted) = self.admit() else {
                    continue; // Dropped: closed at once.
                };
                let _ = client.set_nodelay(true);
                let (stack, remote) = (self.stack.clone(), *remote);
                tokio::spawn(async move {
                    let _admitted = admitted;
                    match TcpStream::connect(&stack, remote).await {
                        Ok(mut tunnel) => {
                            let _ = relay(&mut client, &mut tunnel, idle).await;
                        }
                        // The client sees its connection closed; the reason goes to the log.
                        Err(e) => tracing::warn!(
                            client = %from,
                            "forward: cannot connect to {remote} through the tunnel: {e}"
                        ),
                    }
                });
            },
            Bound::Reverse(listener, local) => loop {
                let (mut tunnel, _) = listener.accept().await?;
                let Some(admitted) = self.admit() else {
                    continue;
                };
                let local = *local;
                tokio::spawn(async move {
                    let _admitted = admitted;
                    match tokio::net::TcpStream::connect(local).await {
                        Ok(mut client) => {
                            let _ = client.set_nodelay(true);
                            let _ = relay(&mut tunnel, &mut client, idle).await;
                        }
                        Err(e) => {
                            tracing::warn!("reverse forward: cannot connect to {local}: {e}")
                        }
                    }
                });
            },
            Bound::Udp(socket, remote) => {
                run_udp(self.stack.clone(), socket.clone(), *remote).await
            }
        }
    }
}

/// Relay datagrams from each local client through its own tunnel socket, so replies can be
/// told apart; sessions idle for [`UDP_IDLE`] are closed.
async fn run_udp(
    stack: NetStack,
    local: Arc<tokio::net::UdpSocket>,
    remote: SocketAddr,
) -> io::Result<()> {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            ended = ended_rx.recv() => {
                if let Some(client) = ended {
                    sessions.remove(&client);
                }
            }
            received = local.recv_from(&mut buf) => {
                let (n, client) = received?;
                let socket = match sessions.get(&client) {
                    Some(socket) => socket.clone(),
                    // Each session holds a tunnel socket and its buffers: bound their number.
                    None if sessions.len() >= MAX_UDP_SESSIONS => continue,
                    None => {
                        let Ok(socket) = UdpSocket::bind(&stack, 0) else { continue };
                        let socket = Arc::new(socket);
                        sessions.insert(client, socket.clone());
                        tokio::spawn(udp_replies(socket.clone(), local.clone(), client, remote, ended_tx.clone()));
                        socket
                    }
                };
                let _ = socket.send_to(&buf[..n], remote).await;
            }
        }
    }
}

async fn udp_replies(
    tunnel: Arc<UdpSocket>,
    local: Arc<tokio::net::UdpSocket>,
    client: SocketAddr,
    remote: SocketAddr,
    ended: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, from))) = tokio::time::timeout(UDP_IDLE, tunnel.recv_from(&mut buf)).await {
        if from == remote {
            let _ = local.send_to(&buf[..n], client).await;
        }
    }
    let _ = ended.send(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn parses_specs() {
        assert_eq!(
            "tcp:127.0.0.1:8080:10.0.0.2:80".parse(),
            Ok(ForwardSpec::Tcp {
                local: sa("127.0.0.1:8080"),
                remote: sa("10.0.0.2:80")
            })
        );
        assert_eq!(
            "udp:[::1]:5353:[fd00::1]:53".parse(),
            Ok(ForwardSpec::Udp {
                local: sa("[::1]:5353"),
                remote: sa("[fd00::1]:53")
            })
        );
        assert_eq!(
            "udp:0.0.0.0:53:[fd00::1]:53".parse(),
            Ok(ForwardSpec::Udp {
                local: sa("0.0.0.0:53"),
                remote: sa("[fd00::1]:53")
            })
        );
        let reverse = ForwardSpec::ReverseTcp {
            tunnel_port: 8080,
            local: sa("127.0.0.1:80"),
        };
        assert_eq!("reverse tcp:8080:127.0.0.1:80".parse(), Ok(reverse));
        assert_eq!("reverse-tcp:8080:127.0.0.1:80".parse(), Ok(reverse));
        assert_eq!(reverse.to_string().parse(), Ok(reverse));
        let tcp: ForwardSpec = "tcp:[::1]:1:[fd00::2]:2".parse().expect("valid");
        assert_eq!(tcp.to_string(), "tcp:[::1]:1:[fd00::2]:2");
    }

    #[test]
    fn rejects_specs() {
        for (spec, reason) in [
            ("", "expected tcp:LOCAL:REMOTE"),
            ("sctp:1.2.3.4:5:6.7.8.9:10", "expected tcp:LOCAL:REMOTE"),
            ("tcp:127.0.0.1:8080", "found only one address"),
            (
                "tcp:127.0.0.1:8080:10.0.0.2",
                "remote address: \"10.0.0.2\" is not IPv4:port",
            ),
            (
                "tcp:localhost:80:10.0.0.2:80",
                "local address: \"localhost:80\" is not",
            ),
            ("tcp:[::1:80:10.0.0.2:80", "missing `]`"),
            (
                "udp:1.2.3.4:5:6.7.8.9:10:11",
                "unexpected \"11\" after the remote address",
            ),
            ("tcp:1.2.3.4:99999:6.7.8.9:10", "local address"),
            ("reverse tcp:8080", "expected reverse tcp:PORT:LOCAL"),
            (
                "reverse tcp:0:127.0.0.1:80",
                "tunnel port \"0\" is not 1..=65535",
            ),
            ("reverse tcp:x:127.0.0.1:80", "tunnel port \"x\""),
            ("reverse tcp:80:127.0.0.1", "local address"),
            (
                "reverse tcp:80:127.0.0.1:80:1",
                "unexpected \"1\" after the local address",
            ),
        ] {
            let e = spec.parse::<ForwardSpec>().expect_err(spec);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("invalid forward {spec:?}: ")),
                "{text}"
            );
            assert!(text.contains(reason), "{spec}: {text}");
        }
    }
}
