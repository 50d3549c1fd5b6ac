//! Name resolution through the tunnel: a minimal DNS A/AAAA codec (RFC 1035, RFC 3596) and a
//! resolver that asks a DNS server inside the tunnel over the stack's UDP.
//!
//! The codec parses untrusted packets: every read is bounds-checked, compression pointers
//! are only skipped (never followed), and record counts are capped, so no input can make it
//! panic, loop or allocate without bound.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::NetStack;
use crate::tcp::TcpStream;
use crate::udp::UdpSocket;

/// Resolves host names for the SOCKS5 server and forwards.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host`, preferred first. An empty list is not an error; the caller
    /// treats it as "host unreachable".
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The record types the codec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// IPv4 address (type 1).
    A,
    /// IPv6 address (type 28).
    Aaaa,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
        }
    }
}

/// Why a DNS exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name cannot be put in a query (empty label, label over 63 or name over 253 bytes).
    InvalidName,
    /// The response is malformed or does not answer our query.
    Malformed,
    /// The server says the name does not exist (NXDOMAIN).
    NotFound,
    /// The server answered with this error code.
    Server(u8),
    /// The response was truncated (TC bit): the answer must be asked for over TCP.
    Truncated,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::InvalidName => f.write_str("invalid host name"),
            DnsError::Malformed => f.write_str("malformed DNS response"),
            DnsError::NotFound => f.write_str("no such host"),
            DnsError::Server(code) => write!(f, "DNS server error {code}"),
            DnsError::Truncated => f.write_str("truncated DNS response"),
        }
    }
}

impl std::error::Error for DnsError {}

const HEADER_LEN: usize = 12;
const CLASS_IN: u16 = 1;
/// More records than this in one response are ignored.
const MAX_RECORDS: u16 = 64;

/// Build a recursive query for `name` with this transaction `id`.
pub fn encode_query(id: u16, name: &str, record: RecordType) -> Result<Vec<u8>, DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::InvalidName);
    }
    let mut packet = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // RD: ask for recursion.
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // One question.
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::InvalidName);
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&record.code().to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(packet)
}

/// A bounds-checked reader over a packet.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Malformed)?;
        let bytes = self.data.get(self.pos..end).ok_or(DnsError::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DnsError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skip a (possibly compressed) name. A pointer ends the name in this position, so
    /// skipping never jumps and cannot loop.
    fn skip_name(&mut self) -> Result<(), DnsError> {
        for _ in 0..128 {
            let len = self.u8()?;
            match len & 0xc0 {
                0x00 if len == 0 => return Ok(()),
                0x00 => {
                    self.take(usize::from(len))?;
                }
                0xc0 => {
                    self.u8()?;
                    return Ok(());
                }
                _ => return Err(DnsError::Malformed),
            }
        }
        Err(DnsError::Malformed)
    }
}

/// Parse the response to query `id` for `record`: the addresses of the matching answers.
pub fn parse_response(id: u16, packet: &[u8], record: RecordType) -> Result<Vec<IpAddr>, DnsError> {
    let mut c = Cursor {
        data: packet,
        pos: 0,
    };
    let got_id = c.u16()?;
    let flags = c.u16()?;
    let questions = c.u16()?;
    let answers = c.u16()?;
    c.take(4)?; // Authority and additional counts: not needed.
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if got_id != id || !is_response || opcode != 0 {
        return Err(DnsError::Malformed);
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Truncated);
    }
    match (flags & 0xf) as u8 {
        0 => {}
        3 => return Err(DnsError::NotFound),
        code => return Err(DnsError::Server(code)),
    }
    if questions > MAX_RECORDS {
        return Err(DnsError::Malformed);
    }
    for _ in 0..questions {
        c.skip_name()?;
        c.take(4)?;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers.min(MAX_RECORDS) {
        c.skip_name()?;
        let rtype = c.u16()?;
        let class = c.u16()?;
        c.take(4)?; // TTL
        let len = c.u16()?;
        let data = c.take(usize::from(len))?;
        if class != CLASS_IN || rtype != record.code() {
            continue; // CNAMEs and others: the addresses follow in the same answer.
        }
        match (record, data.len()) {
            (RecordType::A, 4) => {
                addresses.push(IpAddr::V4(Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                )));
            }
            (RecordType::Aaaa, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                addresses.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => return Err(DnsError::Malformed),
        }
    }
    Ok(addresses)
}

/// A resolver that queries a DNS server inside the tunnel (the `DNS` line of a wg-quick
/// file) through the stack's UDP.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    stack: NetStack,
    server: SocketAddr,
    timeout: Duration,
    attempts: u32,
}

impl DnsResolver {
    /// Ask `server` (usually port 53), waiting 2 s per attempt, 3 attempts.
    pub fn new(stack: NetStack, server: SocketAddr) -> Self {
        DnsResolver {
            stack,
            server,
            timeout: Duration::from_secs(2),
            attempts: 3,
        }
    }

    /// Change the wait per attempt and the number of attempts (at least 1).
    pub fn with_timeout(mut self, timeout: Duration, attempts: u32) -> Self {
        self.timeout = timeout;
        self.attempts = attempts.max(1);
        self
    }

    /// Look up one record type.
    pub async fn lookup(&self, name: &str, record: RecordType) -> io::Result<Vec<IpAddr>> {
        let socket = UdpSocket::bind(&self.stack, 0)?;
        let mut buf = vec![0u8; 1500];
        for _ in 0..self.attempts {
            let id = random_id();
            let query = encode_query(id, name, record)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            socket.send_to(&query, self.server).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
                let Ok(received) = received else { break };
                let (n, from) = received?;
                if from != self.server {
                    continue;
                }
                match parse_response(id, &buf[..n], record) {
                    Ok(addresses) => return Ok(addresses),
                    // Too big for a datagram: ask again over TCP (RFC 7766).
                    Err(DnsError::Truncated) => return self.lookup_tcp(name, record).await,
                    // Stale answers to an earlier attempt, or junk: keep waiting.
                    Err(DnsError::Malformed) => continue,
                    Err(DnsError::NotFound) => {
                        return Err(io::Error::new(io::ErrorKind::NotFound, DnsError::NotFound))
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from DNS server {}", self.server),
        ))
    }

    /// Look up one record type over TCP (two-byte length, then the message).
    pub async fn lookup_tcp(&self, name: &str, record: RecordType) -> io::Result<Vec<IpAddr>> {
        let id = random_id();
        let query = encode_query(id, name, record)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let exchange = async {
            let mut stream = TcpStream::connect(&self.stack, self.server).await?;
            let mut message = (query.len() as u16).to_be_bytes().to_vec();
            message.extend_from_slice(&query);
            stream.write_all(&message).await?;
            let len = stream.read_u16().await?;
            let mut response = vec![0u8; usize::from(len)];
            stream.read_exact(&mut response).await?;
            Ok::<Vec<u8>, io::Error>(response)
        };
        let limit = self.timeout * self.attempts;
        let response = match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer over TCP from DNS server {}", self.server),
                ))
            }
        };
        match parse_response(id, &response, record) {
            Ok(addresses) => Ok(addresses),
            Err(DnsError::NotFound) => {
                Err(io::Error::new(io::ErrorKind::NotFound, DnsError::NotFound))
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// IPv4 addresses first, then IPv6. A literal IP address is returned as is.
    pub async fn resolve_host(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![ip]);
        }
        let (v4, v6) = tokio::join!(
            self.lookup(host, RecordType::A),
            self.lookup(host, RecordType::Aaaa)
        );
        match (v4, v6) {
            (Err(e), Err(_)) => Err(e),
            (v4, v6) => {
                let mut all = v4.unwrap_or_default();
                all.extend(v6.unwrap_or_default());
                Ok(all)
            }
        }
    }
}

impl Resolver for DnsResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(self.resolve_host(host))
    }
}

/// Split `host:port` (or `[IPv6]:port`) into a host (name or address) and a port; the port
/// defaults to `default_port` if absent. `None` if either part is malformed.
pub fn split_host_port(authority: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 address is ambiguous with a port: it needs brackets.
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return None,
        },
        None => default_port?,
    };
    let valid_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !(host.parse::<IpAddr>().is_ok() || valid_name(host)) {
        return None;
    }
    Some((host.to_owned(), port))
}

/// Connect to `host:port` through `stack`: an address literal directly, a name through
/// `resolver`, trying each of its addresses in turn (the last failure is returned).
pub async fn connect_host(
    stack: &NetStack,
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
) -> io::Result<TcpStream> {
    let addresses = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => vec![ip],
        Err(_) => resolver.resolve(host).await?,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for ip in addresses {
        match TcpStream::connect(stack, SocketAddr::new(ip, port)).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: u16, rcode: u8, answers: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x81, 0x80 | rcode]);
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        for (rtype, data) in answers {
            p.extend_from_slice(&[0xc0, 12]);
            p.extend_from_slice(&rtype.to_be_bytes());
            p.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            p.extend_from_slice(&(data.len() as u16).to_be_bytes());
            p.extend_from_slice(data);
        }
        p
    }

    #[test]
    fn query_encoding() {
        let q = encode_query(0x1234, "example.com.", RecordType::Aaaa).expect("valid");
        assert_eq!(
            q,
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x1c\x00\x01"
        );
        assert_eq!(
            encode_query(1, "", RecordType::A),
            Err(DnsError::InvalidName)
        );
        assert_eq!(
            encode_query(1, "a..b", RecordType::A),
            Err(DnsError::InvalidName)
        );
        assert_eq!(
            encode_query(1, &"a".repeat(64), RecordType::A),
            Err(DnsError::InvalidName)
        );
        assert_eq!(
            encode_query(1, &"a.".repeat(128), RecordType::A),
            Err(DnsError::InvalidName)
        );
    }

    #[test]
    fn parses_answers_skipping_cnames() {
        let p = response(
            7,
            0,
            &[
                (5, b"\x03www\x00"),
                (1, &[192, 0, 2, 1]),
                (1, &[192, 0, 2, 2]),
            ],
        );
        assert_eq!(
            parse_response(7, &p, RecordType::A),
            Ok(vec![
                "192.0.2.1".parse().expect("ip"),
                "192.0.2.2".parse().expect("ip")
            ])
        );
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let p = response(7, 0, &[(28, &v6)]);
        assert_eq!(
            parse_response(7, &p, RecordType::Aaaa),
            Ok(vec!["2001:db8::1".parse().expect("ip")])
        );
        assert_eq!(parse_response(7, &p, RecordType::A), Ok(vec![]));
    }

    #[test]
    fn rejects_bad_responses() {
        let good = response(7, 0, &[(1, &[1, 2, 3, 4])]);
        assert_eq!(
            parse_response(8, &good, RecordType::A),
            Err(DnsError::Malformed)
        );
        assert_eq!(
            parse_response(7, &response(7, 3, &[]), RecordType::A),
            Err(DnsError::NotFound)
        );
        assert_eq!(
            parse_response(7, &response(7, 2, &[]), RecordType::A),
            Err(DnsError::Server(2))
        );
        let mut truncated = good.clone();
        truncated[2] |= 0x02;
        assert_eq!(
            parse_response(7, &truncated, RecordType::A),
            Err(DnsError::Truncated)
        );
        let mut query = good.clone();
        query[2] &= 0x7f;
        assert_eq!(
            parse_response(7, &query, RecordType::A),
            Err(DnsError::Malformed)
        );
        let bad_len = response(7, 0, &[(1, &[1, 2, 3])]);
        assert_eq!(
            parse_response(7, &bad_len, RecordType::A),
            Err(DnsError::Malformed)
        );
        // Every prefix of a valid response is either an error or the answer: never a panic.
        for n in 0..good.len() {
            let _ = parse_response(7, &good[..n], RecordType::A);
        }
    }

    #[test]
    fn never_panics_on_noise() {
        // A cheap deterministic fuzz: mutate a valid response and random buffers.
        let good = response(7, 0, &[(5, b"\x03www\xc0\x0c"), (1, &[1, 2, 3, 4])]);
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut p = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            let cut = (next() as usize) % (p.len() + 1);
            let _ = parse_response(7, &p[..cut], RecordType::A);
            let _ = parse_response(7, &p, RecordType::Aaaa);
            let noise: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let _ = parse_response(
                u16::from_be_bytes([
                    noise.first().copied().unwrap_or(0),
                    noise.get(1).copied().unwrap_or(0),
                ]),
                &noise,
                RecordType::A,
            );
        }
    }
}
