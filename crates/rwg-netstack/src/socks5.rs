//! A SOCKS5 server (RFC 1928) with optional username/password authentication (RFC 1929):
//! clients connect to a real local socket, and their CONNECT and UDP ASSOCIATE requests are
//! carried out inside the tunnel through the stack.
//!
//! Each client runs in its own task; anything malformed it sends ends that client only.
//! Failures after the request are answered with the matching SOCKS reply code.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::Resolver;
use crate::metrics::{ProxyMetrics, Service, SocksResult};
use crate::relay::{relay, ConnectionLimit};
use crate::stack::NetStack;
use crate::tcp::TcpStream;
use crate::udp::UdpSocket;

/// How long to pause after a failed accept (for example when out of file descriptors).
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

const VERSION: u8 = 5;
const AUTH_NONE: u8 = 0x00;
const AUTH_PASSWORD: u8 = 0x02;
const AUTH_UNACCEPTABLE: u8 = 0xff;
const PASSWORD_VERSION: u8 = 1;
const CMD_CONNECT: u8 = 1;
const CMD_UDP_ASSOCIATE: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// SOCKS5 reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired.
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

impl Reply {
    fn for_error(e: &io::Error) -> Reply {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::TimedOut | io::ErrorKind::NotFound => Reply::HostUnreachable,
            io::ErrorKind::AddrNotAvailable => Reply::NetworkUnreachable,
            _ => Reply::GeneralFailure,
        }
    }
}

/// How the server behaves.
#[derive(Clone)]
pub struct Socks5Config {
    /// Required username and password; `None` accepts clients without authentication.
    pub credentials: Option<(String, String)>,
    /// Time a client has to finish its greeting and request.
    pub handshake_timeout: Duration,
    /// Time a CONNECT may take inside the tunnel.
    pub connect_timeout: Duration,
    /// A CONNECT relay with no byte moving either way for this long is closed.
    pub idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for Socks5Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socks5Config")
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<hidden>")),
            )
            .field("handshake_timeout", &self.handshake_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Default for Socks5Config {
    fn default() -> Self {
        Socks5Config {
            credentials: None,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// A destination as a client writes it: an address or a host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name to resolve, and a port.
    Domain(String, u16),
}

/// The SOCKS5 server. Cheap to clone.
#[derive(Clone)]
pub struct Socks5Server {
    stack: NetStack,
    resolver: Arc<dyn Resolver>,
    config: Arc<Socks5Config>,
    limit: Option<ConnectionLimit>,
    metrics: Option<Arc<ProxyMetrics>>,
}

impl std::fmt::Debug for Socks5Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socks5Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a client was dropped. Only for logging: the client has been answered already.
#[derive(Debug)]
pub enum ClientError {
    /// Reading from or writing to the client failed.
    Io(io::Error),
    /// The client broke the protocol.
    Protocol(&'static str),
    /// The client's credentials were refused.
    AuthFailed,
    /// The client took longer than the handshake timeout.
    Timeout,
    /// The request failed and the client got this reply.
    Refused(Reply),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::AuthFailed => f.write_str("authentication failed"),
            ClientError::Timeout => f.write_str("handshake timed out"),
            ClientError::Refused(reply) => write!(f, "request failed: {reply:?}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

async fn read_byte<R: AsyncRead + Unpin>(r: &mut R) -> Result<u8, ClientError> {
    Ok(r.read_u8().await?)
}

/// Read an address as `ATYP ADDR PORT`, the part shared by requests and UDP headers.
async fn read_target<R: AsyncRead + Unpin>(r: &mut R, atyp: u8) -> Result<TargetAddr, ClientError> {
    match atyp {
        ATYP_V4 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            let port = r.read_u16().await?;
            Ok(TargetAddr::Ip(SocketAddr::new(IpAddr::from(b), port)))
        }
        ATYP_V6 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            let port = r.read_u16().await?;
            Ok(TargetAddr::Ip(SocketAddr::new(IpAddr::from(b), port)))
        }
        ATYP_DOMAIN => {
            let len = read_byte(r).await?;
            let mut name = vec![0u8; usize::from(len)];
            r.read_exact(&mut name).await?;
            let port = r.read_u16().await?;
            let name = String::from_utf8(name)
                .map_err(|_| ClientError::Protocol("host name is not UTF-8"))?;
            if name.is_empty() {
                return Err(ClientError::Protocol("empty host name"));
            }
            Ok(TargetAddr::Domain(name, port))
        }
        _ => Err(ClientError::Refused(Reply::AddressTypeNotSupported)),
    }
}

/// The server's side of a SOCKS5 handshake (RFC 1928 §3–§5, RFC 1929 for username and
/// password) on any stream: method selection, authentication when `credentials` are set, and
/// the request. Returns the request's command and target; on a refusal the client has been
/// answered (an unacceptable method, bad credentials), except for a request the caller must
/// answer with the [`Reply`] in [`ClientError::Refused`]. Reads exactly the bytes of the
/// handshake, nothing after it.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    credentials: Option<&(String, String)>,
) -> Result<(u8, TargetAddr), ClientError> {
    if read_byte(client).await? != VERSION {
        return Err(ClientError::Protocol("not SOCKS version 5"));
    }
    let count = read_byte(client).await?;
    let mut methods = vec![0u8; usize::from(count)];
    client.read_exact(&mut methods).await?;
    let wanted = if credentials.is_some() {
        AUTH_PASSWORD
    } else {
        AUTH_NONE
    };
    if !methods.contains(&wanted) {
        client.write_all(&[VERSION, AUTH_UNACCEPTABLE]).await?;
        return Err(ClientError::Protocol("no acceptable authentication method"));
    }
    client.write_all(&[VERSION, wanted]).await?;
    if let Some((user, password)) = credentials {
        if read_byte(client).await? != PASSWORD_VERSION {
            return Err(ClientError::Protocol("bad username/password version"));
        }
        let len = read_byte(client).await?;
        let mut given_user = vec![0u8; usize::from(len)];
        client.read_exact(&mut given_user).await?;
        let len = read_byte(client).await?;
        let mut given_password = vec![0u8; usize::from(len)];
        client.read_exact(&mut given_password).await?;
        let user_ok = same_secret(&given_user, user.as_bytes());
        let password_ok = same_secret(&given_password, password.as_bytes());
        if !(user_ok & password_ok) {
            client.write_all(&[PASSWORD_VERSION, 1]).await?;
            return Err(ClientError::AuthFailed);
        }
        client.write_all(&[PASSWORD_VERSION, 0]).await?;
    }
    let mut head = [0u8; 4];
    client.read_exact(&mut head).await?;
    let [version, command, _reserved, atyp] = head;
    if version != VERSION {
        return Err(ClientError::Protocol("request is not SOCKS version 5"));
    }
    let target = read_target(client, atyp).await?;
    Ok((command, target))
}

/// Parse the header of a UDP ASSOCIATE datagram: `RSV(2) FRAG ATYP ADDR PORT DATA`.
/// Returns the target and the offset of the data; `None` for malformed or fragmented ones.
pub fn parse_udp_header(datagram: &[u8]) -> Option<(TargetAddr, usize)> {
    let (&[0, 0, frag, atyp], rest) = datagram.split_first_chunk::<4>()? else {
        return None;
    };
    if frag != 0 {
        return None; // Fragmentation is optional (RFC 1928 section 7); we drop fragments.
    }
    match atyp {
        ATYP_V4 => {
            let (addr, rest) = rest.split_first_chunk::<4>()?;
            let (port, _) = rest.split_first_chunk::<2>()?;
            Some((
                TargetAddr::Ip(SocketAddr::new(
                    IpAddr::from(*addr),
                    u16::from_be_bytes(*port),
                )),
                10,
            ))
        }
        ATYP_V6 => {
            let (addr, rest) = rest.split_first_chunk::<16>()?;
            let (port, _) = rest.split_first_chunk::<2>()?;
            Some((
                TargetAddr::Ip(SocketAddr::new(
                    IpAddr::from(*addr),
                    u16::from_be_bytes(*port),
                )),
                22,
            ))
        }
        ATYP_DOMAIN => {
            let (&len, rest) = rest.split_first()?;
            let len = usize::from(len);
            let name = rest.get(..len)?;
            let port = rest.get(len..len + 2)?;
            let name = std::str::from_utf8(name).ok()?;
            if name.is_empty() {
                return None;
            }
            Some((
                TargetAddr::Domain(name.to_owned(), u16::from_be_bytes([port[0], port[1]])),
                4 + 1 + len + 2,
            ))
        }
        _ => None,
    }
}

/// Append `ATYP ADDR PORT` for `addr` to `out`.
pub fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => {
                out.push(ATYP_V4);
                out.extend_from_slice(&v4.octets());
            }
            None => {
                out.push(ATYP_V6);
                out.extend_from_slice(&ip.octets());
            }
        },
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

async fn send_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: Reply,
    bound: SocketAddr,
) -> io::Result<()> {
    let mut out = vec![VERSION, reply as u8, 0];
    write_addr(&mut out, bound);
    w.write_all(&out).await
}

fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

/// Constant-time comparison, so response times do not reveal how much of a secret matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Socks5Server {
    /// A server that reaches targets through `stack` and resolves names with `resolver`.
    pub fn new(stack: NetStack, resolver: Arc<dyn Resolver>, config: Socks5Config) -> Self {
        Socks5Server {
            stack,
            resolver,
            config: Arc::new(config),
            limit: None,
            metrics: None,
        }
    }

    /// Share `limit` (a cap on concurrent connections) with other services. A client over
    /// the cap is disconnected before its greeting is read.
    pub fn with_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Count connections and results in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, result: SocksResult) {
        if let Some(m) = &self.metrics {
            m.count_socks(result);
        }
    }

    /// Accept clients forever, each in its own task.
    ///
    /// Accept errors (a client that hung up early, too many open files) do not stop the
    /// server; it pauses briefly and goes on.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> io::Result<()> {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let server = self.clone();
            tokio::spawn(async move {
                // The client has been answered or hung up; nothing more to do with the error.
                let _ = server.handle_client(client).await;
            });
        }
    }

    async fn resolve(&self, target: &TargetAddr) -> Result<SocketAddr, io::Error> {
        match target {
            TargetAddr::Ip(addr) => Ok(*addr),
            TargetAddr::Domain(host, port) => {
                let addresses = self.resolver.resolve(host).await?;
                addresses
                    .first()
                    .map(|ip| SocketAddr::new(*ip, *port))
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                    })
            }
        }
    }

    /// Serve one client on an accepted connection until it is done.
    pub async fn handle_client(&self, client: tokio::net::TcpStream) -> Result<(), ClientError> {
        let _permit = match &self.limit {
            Some(limit) => match limit.try_acquire() {
                Some(p) => Some(p),
                None => {
                    if let Some(m) = &self.metrics {
                        m.count_refused(Service::Socks5);
                    }
                    self.count(SocksResult::OverLimit);
                    return Err(ClientError::Protocol("connection cap reached"));
                }
            },
            None => None,
        };
        let _open = self.metrics.as_ref().map(|m| m.open(Service::Socks5));
        let result = self.serve_client(client).await;
        match &result {
            // Successes are counted when the success reply goes out.
            Ok(()) => {}
            Err(ClientError::Refused(reply)) => self.count(SocksResult::Reply(*reply)),
            Err(ClientError::AuthFailed) => self.count(SocksResult::AuthFailed),
            Err(ClientError::Timeout) => self.count(SocksResult::Timeout),
            Err(ClientError::Protocol(_) | ClientError::Io(_)) => {
                self.count(SocksResult::ProtocolError)
            }
        }
        result
    }

    async fn serve_client(&self, mut client: tokio::net::TcpStream) -> Result<(), ClientError> {
        let request =
            tokio::time::timeout(self.config.handshake_timeout, self.handshake(&mut client))
                .await
                .map_err(|_| ClientError::Timeout)?;
        let (command, target) = match request {
            Ok(r) => r,
            Err(ClientError::Refused(reply)) => {
                let _ = send_reply(&mut client, reply, unspecified()).await;
                return Err(ClientError::Refused(reply));
            }
            Err(e) => return Err(e),
        };
        match command {
            CMD_CONNECT => self.connect(client, target).await,
            CMD_UDP_ASSOCIATE => self.udp_associate(client).await,
            _ => {
                send_reply(&mut client, Reply::CommandNotSupported, unspecified()).await?;
                Err(ClientError::Refused(Reply::CommandNotSupported))
            }
        }
    }

    /// Method selection, authentication and the request; returns the command and target.
    async fn handshake(
        &self,
        client: &mut tokio::net::TcpStream,
    ) -> Result<(u8, TargetAddr), ClientError> {
        negotiate(client, self.config.credentials.as_ref()).await
    }

    async fn connect(
        &self,
        mut client: tokio::net::TcpStream,
        target: TargetAddr,
    ) -> Result<(), ClientError> {
        let attempt = async {
            let candidates = match &target {
                TargetAddr::Ip(addr) => vec![*addr],
                TargetAddr::Domain(host, port) => self
                    .resolver
                    .resolve(host)
                    .await?
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, *port))
                    .collect(),
            };
            // Try each address in turn, as a client library would; report the last failure.
            let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
            for addr in candidates {
                match TcpStream::connect(&self.stack, addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let result = match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        let mut remote = match result {
            Ok(stream) => stream,
            Err(e) => {
                let reply = Reply::for_error(&e);
                send_reply(&mut client, reply, unspecified()).await?;
                return Err(ClientError::Refused(reply));
            }
        };
        send_reply(&mut client, Reply::Succeeded, remote.local_addr()).await?;
        self.count(SocksResult::Reply(Reply::Succeeded));
        // The request succeeded; how the relay ends (reset, idle) is not the client's fault.
        let _ = relay(&mut client, &mut remote, self.config.idle_timeout).await;
        Ok(())
    }

    async fn udp_associate(&self, mut client: tokio::net::TcpStream) -> Result<(), ClientError> {
        let client_ip = client.peer_addr()?.ip();
        // Listen on the address the client reached us on, so the reply names an address it
        // can send to.
        let local =
            tokio::net::UdpSocket::bind(SocketAddr::new(client.local_addr()?.ip(), 0)).await?;
        let tunnel = match UdpSocket::bind(&self.stack, 0) {
            Ok(socket) => socket,
            Err(e) => {
                send_reply(&mut client, Reply::GeneralFailure, unspecified()).await?;
                return Err(ClientError::Io(e));
            }
        };
        send_reply(&mut client, Reply::Succeeded, local.local_addr()?).await?;
        self.count(SocksResult::Reply(Reply::Succeeded));
        // The association is up; its end (control connection closed, a socket failing) is
        // not a failed request.
        let _ = self.udp_relay(client, client_ip, local, tunnel).await;
        Ok(())
    }

    async fn udp_relay(
        &self,
        mut client: tokio::net::TcpStream,
        client_ip: IpAddr,
        local: tokio::net::UdpSocket,
        tunnel: UdpSocket,
    ) -> io::Result<()> {
        // The client's UDP address is learned from its first datagram, which must come from
        // the host of the control connection.
        let mut client_udp: Option<SocketAddr> = None;
        let mut from_client = vec![0u8; 65536];
        let mut from_tunnel = vec![0u8; 65536];
        let mut control = [0u8; 64];
        loop {
            tokio::select! {
                // The association lasts as long as the control connection (RFC 1928 section 7).
                read = client.read(&mut control) => match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                },
                received = local.recv_from(&mut from_client) => {
                    let (n, from) = received?;
                    if from.ip() != client_ip || client_udp.is_some_and(|known| known != from) {
                        continue;
                    }
                    client_udp = Some(from);
                    let Some((target, offset)) = parse_udp_header(&from_client[..n]) else {
                        continue;
                    };
                    let Ok(addr) = self.resolve(&target).await else { continue };
                    // A full tunnel or an unreachable target drops the datagram, as UDP may.
                    let _ = tunnel.send_to(&from_client[offset..n], addr).await;
                }
                received = tunnel.recv_from(&mut from_tunnel[..]) => {
                    let (n, from) = received?;
                    let Some(to) = client_udp else { continue };
                    let mut datagram = Vec::with_capacity(n + 22);
                    datagram.extend_from_slice(&[0, 0, 0]);
                    write_addr(&mut datagram, from);
                    datagram.extend_from_slice(&from_tunnel[..n]);
                    let _ = local.send_to(&datagram, to).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_header_round_trip() {
        for addr in ["10.0.0.2:53", "[fd00::2]:5353"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let mut d = vec![0, 0, 0];
            write_addr(&mut d, addr);
            d.extend_from_slice(b"data");
            let (target, offset) = parse_udp_header(&d).expect("valid");
            assert_eq!(target, TargetAddr::Ip(addr));
            assert_eq!(&d[offset..], b"data");
        }
        let d = b"\0\0\0\x03\x07example\x00\x35xyz";
        let (target, offset) = parse_udp_header(d).expect("valid");
        assert_eq!(target, TargetAddr::Domain("example".into(), 53));
        assert_eq!(&d[offset..], b"xyz");
    }

    #[test]
    fn udp_header_rejects() {
        assert_eq!(parse_udp_header(b""), None);
        assert_eq!(
            parse_udp_header(b"\0\0\x01\x01\x01\x02\x03\x04\0\x35"),
            None,
            "fragment"
        );
        assert_eq!(
            parse_udp_header(b"\0\x01\0\x01\x01\x02\x03\x04\0\x35"),
            None,
            "reserved"
        );
        assert_eq!(
            parse_udp_header(b"\0\0\0\x05\x01\x02\x03\x04\0\x35"),
            None,
            "atyp"
        );
        assert_eq!(
            parse_udp_header(b"\0\0\0\x03\x00\0\x35"),
            None,
            "empty name"
        );
        assert_eq!(
            parse_udp_header(b"\0\0\0\x03\x09ab\0\x35"),
            None,
            "short name"
        );
        for n in 0..10 {
            assert_eq!(
                parse_udp_header(&b"\0\0\0\x01\x01\x02\x03\x04\0\x35"[..n]),
                None
            );
        }
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:5".parse().expect("addr");
        let mut d = Vec::new();
        write_addr(&mut d, mapped);
        assert_eq!(d, [ATYP_V4, 1, 2, 3, 4, 0, 5]);
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(same_secret(b"", b""));
    }
}
