//! The configuration protocol (`wg(8)`'s cross-platform UAPI): a Unix socket at
//! `/var/run/wireguard/<iface>.sock` speaking `get=1` / `set=1` in `key=value` lines.
//!
//! Two layers:
//! - the pure protocol: [`UapiSession`] takes one line at a time and applies `set` requests to
//!   a [`UapiDevice`] (a narrow trait of primitive operations), and formats `get` replies from a
//!   [`DeviceSnapshot`]. All section semantics live here, so they are tested without sockets.
//! - the socket server: [`UapiListener`] (binding with stale-socket detection, or an inherited
//!   descriptor) and [`UapiListener::serve`], one thread per client with bounded lines, a read
//!   timeout and a cap on concurrent clients (a new client displaces the one quiet longest, so
//!   clients that connect and say nothing cannot lock `wg` out).
//!
//! Requests carry private and preshared keys in hex, and `get` replies send them back: every
//! buffer such text passes through is a [`SecretBuf`]/[`SecretReader`] (own pages, wiped when
//! done), keys are parsed into zeroizing buffers and held in the core's key types, which
//! zeroize on drop and print nothing in `Debug`.
//!
//! A `get` reply carries, after the standard device keys and before the first peer, rwg's
//! counters as extra `rwg_*` keys (drops by reason, handshakes, cookie replies, rate-limited
//! messages, table sizes); `wg(8)` and other clients skip keys they do not know.
//!
//! `set` is applied line by line, not as a transaction (as in wireguard-go and the kernel):
//! what was applied before an error stays applied. After an error the rest of the request is
//! read and discarded, then the error is returned, so the connection stays usable.

use std::fmt;
use std::io::Write as _;
use std::io::{self, BufRead};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rwg_proto::crypto::{PresharedKey, PrivateKey};
use zeroize::Zeroizing;

use crate::secret::{SecretBuf, SecretReader};
use crate::sys;

/// Where `wg` looks for userspace implementations' sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Longest line accepted; a longer one closes the connection. Real lines are under 100
/// bytes; the margin lets absurd values (a 4 KiB "key") get EINVAL like wireguard-go gives.
pub const MAX_LINE_LEN: usize = 65536;
/// A client that sends nothing for this long is disconnected.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; one more displaces the client that has been quiet longest.
pub const MAX_CLIENTS: usize = 64;
/// A `get` reply is written out in pieces of about this many bytes (plus one peer).
pub const WRITE_CHUNK: usize = 64 * 1024;
/// Bytes read from a client at a time.
const READ_BUFFER: usize = 64 * 1024;

/// A positive errno value; the protocol sends it negated (`errno=-22`), and `wg` relies on
/// the sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// I/O error.
    pub const EIO: Errno = Errno(5);
    /// Invalid value or unknown key.
    pub const EINVAL: Errno = Errno(22);
    /// A line without `=`.
    pub const EPROTO: Errno = Errno(71);
    /// Port in use, or the fwmark could not be set.
    pub const EADDRINUSE: Errno = Errno(98);
    /// Anything else (the value wireguard-go uses).
    pub const UNKNOWN: Errno = Errno(55);

    /// The value as written on the wire.
    pub fn wire_value(self) -> i32 {
        -self.0
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

impl std::error::Error for Errno {}

/// A peer as `get` reports it. `Debug` leaves the preshared key out; it is zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// All zeros = none.
    pub preshared_key: PresharedKey,
    /// The current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Unix time of the last completed handshake, if any.
    pub last_handshake: Option<(u64, u32)>,
    /// UDP payload bytes sent to the peer.
    pub tx_bytes: u64,
    /// UDP payload bytes of authenticated packets received from the peer.
    pub rx_bytes: u64,
    /// Seconds, 0 = off.
    pub persistent_keepalive: u16,
    /// Allowed IPs, masked to their prefix length.
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

/// The device as `get` reports it. `Debug` leaves the private key out; it is zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// The private key, if set. Only `get` ever sends it out.
    pub private_key: Option<PrivateKey>,
    /// The port actually bound (0 = not bound).
    pub listen_port: u16,
    /// 0 = none.
    pub fwmark: u32,
    /// rwg's own counters, sent as extra `rwg_*` keys after the device keys.
    pub counters: Vec<Counter>,
    /// Peers in a stable order.
    pub peers: Vec<PeerSnapshot>,
}

/// One extra key of a `get` reply: `rwg_<group><name>=<value>`, e.g. `rwg_dropped_replay=3`
/// (group `dropped_`, name `replay`). Names are lower case, digits and `_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// A prefix shared by a family of counters (`dropped_`), or empty.
    pub group: &'static str,
    /// The rest of the name.
    pub name: &'static str,
    /// The value.
    pub value: u64,
}

/// Prefix of every key rwg adds to a `get` reply; no key of the protocol starts with it.
pub const COUNTER_PREFIX: &str = "rwg_";

/// The core's counters as `get` keys: `rwg_dropped_<reason>` for every drop reason, then the
/// values the Prometheus endpoint also shows ([`rwg_driver::metrics::device_values`]), under
/// the same names without Prometheus' `_total`.
pub fn core_counters(core: &rwg_proto::device::Device) -> Vec<Counter> {
    let values = rwg_driver::metrics::device_values(core);
    let mut out = Vec::with_capacity(rwg_proto::device::DropReason::COUNT + values.len());
    out.extend(core.drop_counts().map(|(reason, value)| Counter {
        group: "dropped_",
        name: reason.name(),
        value,
    }));
    out.extend(values.into_iter().map(|v| Counter {
        group: "",
        name: v.name,
        value: v.value,
    }));
    out
}

impl fmt::Debug for PeerSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSnapshot")
            .field("public_key", &ShortKey(&self.public_key))
            .field("preshared_key", &"(hidden)")
            .field("endpoint", &self.endpoint)
            .field("last_handshake", &self.last_handshake)
            .field("tx_bytes", &self.tx_bytes)
            .field("rx_bytes", &self.rx_bytes)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

impl fmt::Debug for DeviceSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSnapshot")
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "(hidden)"),
            )
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("counters", &self.counters.len())
            .field("peers", &self.peers)
            .finish()
    }
}

/// A public key shortened for logs.
struct ShortKey<'a>(&'a [u8; 32]);

impl fmt::Debug for ShortKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// The primitive operations a `set` request is made of. Every method that can fail returns the
/// errno to send back; the section logic (which key is valid where, `update_only`, `remove`,
/// the own public key) is in [`UapiSession`], not in implementations.
pub trait UapiDevice {
    /// State for `get`.
    fn snapshot(&self) -> DeviceSnapshot;
    /// The public key of the current private key, if one is set.
    fn own_public_key(&self) -> Option<[u8; 32]>;
    /// `None` clears the key. Implementations remove a peer whose key equals the new own
    /// public key, and treat setting the same key again as a no-op.
    fn set_private_key(&mut self, key: Option<PrivateKey>) -> Result<(), Errno>;
    /// 0 = pick a port. Failure to bind => [`Errno::EADDRINUSE`].
    fn set_listen_port(&mut self, port: u16) -> Result<(), Errno>;
    /// 0 clears. Failure => [`Errno::EADDRINUSE`].
    fn set_fwmark(&mut self, mark: u32) -> Result<(), Errno>;
    /// `replace_peers=true`.
    fn remove_all_peers(&mut self);
    /// Whether a peer with this public key exists.
    fn has_peer(&self, pk: &[u8; 32]) -> bool;
    /// Adds a peer with default settings.
    fn create_peer(&mut self, pk: &[u8; 32]) -> Result<(), Errno>;
    /// Adds a peer with default settings unless it exists; returns whether it was created.
    /// This is what a `public_key` line costs, once per peer of a `set`: an implementation
    /// that can look the key up once instead of twice overrides it.
    fn ensure_peer(&mut self, pk: &[u8; 32]) -> Result<bool, Errno> {
        if self.has_peer(pk) {
            Ok(false)
        } else {
            self.create_peer(pk).map(|()| true)
        }
    }
    /// Removes a peer; absent peers are ignored.
    fn remove_peer(&mut self, pk: &[u8; 32]);
    /// All zeros = none.
    fn set_preshared_key(&mut self, pk: &[u8; 32], psk: PresharedKey) -> Result<(), Errno>;
    /// Sets the endpoint.
    fn set_endpoint(&mut self, pk: &[u8; 32], ep: SocketAddr) -> Result<(), Errno>;
    /// Seconds, 0 = off.
    fn set_persistent_keepalive(&mut self, pk: &[u8; 32], secs: u16) -> Result<(), Errno>;
    /// `replace_allowed_ips=true`.
    fn clear_allowed_ips(&mut self, pk: &[u8; 32]) -> Result<(), Errno>;
    /// Adds a prefix, taking it away from any other peer that had it.
    fn add_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno>;
    /// Removes exactly this prefix from this peer.
    fn remove_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno>;
    /// Called when a peer section that was applied ends (at the next `public_key` or the end
    /// of the request, not after an error): the place to act on the section as a whole, e.g.
    /// send a keepalive once both `endpoint` and `persistent_keepalive_interval` are known.
    fn peer_section_done(&mut self, _pk: &[u8; 32]) {}
}

/// What the server must do after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing yet; read the next line.
    Continue,
    /// Send these bytes, then read the next operation.
    Reply(String),
    /// Send the `get` reply for this state ([`write_get`]), then read the next operation.
    /// The server formats it after releasing the device, in pieces.
    Get(DeviceSnapshot),
    /// Close the connection without a reply (unknown operation).
    Close,
}

#[derive(Debug)]
enum State {
    /// Expecting an operation line.
    Idle,
    /// After `get=1`: expecting the empty line.
    Get,
    /// Inside a `set=1` request.
    Set(Section),
    /// A `set` failed: discard lines up to the empty line, then reply with the error.
    Failed(Errno),
}

#[derive(Debug)]
enum Section {
    Device,
    Peer(PeerSection),
}

#[derive(Debug)]
struct PeerSection {
    key: [u8; 32],
    /// This section created the peer (so `update_only` undoes it).
    created: bool,
    /// Lines are parsed and validated but not applied: own public key, removed, update_only.
    ignored: bool,
}

/// One connection's protocol state: feed it lines without their `\n`.
#[derive(Debug)]
pub struct UapiSession {
    state: State,
}

impl Default for UapiSession {
    fn default() -> Self {
        UapiSession::new()
    }
}

impl UapiSession {
    /// A session waiting for an operation.
    pub fn new() -> UapiSession {
        UapiSession { state: State::Idle }
    }

    /// Whether the session is in the middle of a request (EOF now would cut it short).
    pub fn in_request(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Handles one line (without its terminating `\n`).
    pub fn handle_line(&mut self, line: &str, device: &mut dyn UapiDevice) -> Response {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => match line {
                "get=1" => {
                    self.state = State::Get;
                    Response::Continue
                }
                "set=1" => {
                    self.state = State::Set(Section::Device);
                    Response::Continue
                }
                _ => Response::Close,
            },
            State::Get => {
                if line.is_empty() {
                    Response::Get(device.snapshot())
                } else {
                    // The request is over either way; what follows is the next operation.
                    Response::Reply(errno_reply(Errno::EINVAL))
                }
            }
            State::Failed(errno) => {
                if line.is_empty() {
                    Response::Reply(errno_reply(errno))
                } else {
                    self.state = State::Failed(errno);
                    Response::Continue
                }
            }
            State::Set(mut section) => {
                if line.is_empty() {
                    if let Section::Peer(p) = &section {
                        if !p.ignored {
                            device.peer_section_done(&p.key);
                        }
                    }
                    return Response::Reply(errno_reply(Errno(0)));
                }
                match apply_set_line(&mut section, line, device) {
                    Ok(()) => self.state = State::Set(section),
                    Err(errno) => self.state = State::Failed(errno),
                }
                Response::Continue
            }
        }
    }
}

fn errno_reply(errno: Errno) -> String {
    format!("errno={}\n\n", errno.wire_value())
}

fn apply_set_line(
    section: &mut Section,
    line: &str,
    device: &mut dyn UapiDevice,
) -> Result<(), Errno> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(Errno::EPROTO);
    };
    if key == "public_key" {
        let pk = parse_key(value)?;
        if let Section::Peer(p) = section {
            if !p.ignored {
                device.peer_section_done(&p.key);
            }
        }
        let own = device.own_public_key().is_some_and(|own| own == pk);
        let created = !own && device.ensure_peer(&pk)?;
        *section = Section::Peer(PeerSection {
            key: pk,
            created,
            ignored: own,
        });
        return Ok(());
    }
    match section {
        Section::Device => apply_device_line(key, value, device),
        Section::Peer(peer) => apply_peer_line(peer, key, value, device),
    }
}

fn apply_device_line(key: &str, value: &str, device: &mut dyn UapiDevice) -> Result<(), Errno> {
    match key {
        "private_key" => {
            let k = parse_secret(value)?;
            device.set_private_key(if *k == [0; 32] {
                None
            } else {
                Some(PrivateKey::from_bytes(*k))
            })
        }
        "listen_port" => device.set_listen_port(parse_decimal(value)?),
        "fwmark" => device.set_fwmark(parse_decimal(value)?),
        "replace_peers" => {
            parse_true(value)?;
            device.remove_all_peers();
            Ok(())
        }
        _ => Err(Errno::EINVAL),
    }
}

fn apply_peer_line(
    peer: &mut PeerSection,
    key: &str,
    value: &str,
    device: &mut dyn UapiDevice,
) -> Result<(), Errno> {
    let pk = peer.key;
    // Every value is validated even in an ignored section (as wireguard-go does), so a typo
    // is reported whatever the section's fate.
    match key {
        "update_only" => {
            parse_true(value)?;
            // Only a peer this very section created is undone; an existing peer is updated.
            if peer.created && !peer.ignored {
                device.remove_peer(&pk);
                peer.ignored = true;
            }
            Ok(())
        }
        "remove" => {
            parse_true(value)?;
            if !peer.ignored {
                device.remove_peer(&pk);
            }
            peer.ignored = true;
            Ok(())
        }
        "preshared_key" => {
            let psk = PresharedKey::from_bytes(*parse_secret(value)?);
            apply(peer, |d| d.set_preshared_key(&pk, psk), device)
        }
        "endpoint" => {
            let ep: SocketAddr = value.parse().map_err(|_| Errno::EINVAL)?;
            apply(peer, |d| d.set_endpoint(&pk, ep), device)
        }
        "persistent_keepalive_interval" => {
            let secs: u16 = parse_decimal(value)?;
            apply(peer, |d| d.set_persistent_keepalive(&pk, secs), device)
        }
        "replace_allowed_ips" => {
            parse_true(value)?;
            apply(peer, |d| d.clear_allowed_ips(&pk), device)
        }
        "allowed_ip" => {
            if let Some(rest) = value.strip_prefix('-') {
                let (addr, cidr) = parse_prefix(rest)?;
                apply(peer, |d| d.remove_allowed_ip(&pk, addr, cidr), device)
            } else {
                let (addr, cidr) = parse_prefix(value)?;
                apply(peer, |d| d.add_allowed_ip(&pk, addr, cidr), device)
            }
        }
        "protocol_version" => {
            if value == "1" {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            }
        }
        _ => Err(Errno::EINVAL),
    }
}

fn apply(
    peer: &PeerSection,
    op: impl FnOnce(&mut dyn UapiDevice) -> Result<(), Errno>,
    device: &mut dyn UapiDevice,
) -> Result<(), Errno> {
    if peer.ignored {
        Ok(())
    } else {
        op(device)
    }
}

/// 64 hex digits, either case: a public key.
pub fn parse_key(value: &str) -> Result<[u8; 32], Errno> {
    parse_secret(value).map(|k| *k)
}

/// 64 hex digits, either case, into a buffer that is zeroized on drop (also when a bad digit
/// cuts decoding short): a private or preshared key.
pub fn parse_secret(value: &str) -> Result<Zeroizing<[u8; 32]>, Errno> {
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return Err(Errno::EINVAL);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (out, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_digit(pair[0]).ok_or(Errno::EINVAL)?;
        let lo = hex_digit(pair[1]).ok_or(Errno::EINVAL)?;
        *out = (hi << 4) | lo;
    }
    Ok(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Unsigned decimal digits only (no sign, no spaces), within the target type's range.
fn parse_decimal<T: std::str::FromStr>(value: &str) -> Result<T, Errno> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    value.parse().map_err(|_| Errno::EINVAL)
}

fn parse_true(value: &str) -> Result<(), Errno> {
    if value == "true" {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

/// `addr/cidr`; the prefix length is required and bounded by the family.
fn parse_prefix(value: &str) -> Result<(IpAddr, u8), Errno> {
    let (addr, cidr) = value.split_once('/').ok_or(Errno::EINVAL)?;
    let addr: IpAddr = addr.parse().map_err(|_| Errno::EINVAL)?;
    if cidr.len() > 3 {
        return Err(Errno::EINVAL);
    }
    let cidr: u8 = parse_decimal(cidr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err(Errno::EINVAL);
    }
    Ok((addr, cidr))
}

/// Appends the 64 lowercase hex digits of `key`. (A `write!` per byte was half the time of a
/// large `get`.) The stack copy is zeroized: it may be a private key.
fn hex(out: &mut SecretBuf, key: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = Zeroizing::new([0u8; 64]);
    for (pair, b) in buf.chunks_exact_mut(2).zip(key) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    out.extend_from_slice(&*buf);
}

/// Appends `n` in decimal.
fn decimal(out: &mut SecretBuf, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `key=n\n`.
fn number_line(out: &mut SecretBuf, key: &str, n: u64) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    decimal(out, n);
    out.push(b'\n');
}

/// Appends an address as `Display` writes it; IPv4 without the formatting machinery.
fn address(out: &mut SecretBuf, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// The device part of a `get` reply: the standard keys, then rwg's counters.
fn format_device(out: &mut SecretBuf, s: &DeviceSnapshot) {
    if let Some(k) = &s.private_key {
        if !k.is_zero() {
            out.extend_from_slice(b"private_key=");
            hex(out, k.as_bytes());
            out.push(b'\n');
        }
    }
    if s.listen_port != 0 {
        number_line(out, "listen_port", s.listen_port.into());
    }
    if s.fwmark != 0 {
        number_line(out, "fwmark", s.fwmark.into());
    }
    for c in &s.counters {
        out.extend_from_slice(COUNTER_PREFIX.as_bytes());
        out.extend_from_slice(c.group.as_bytes());
        number_line(out, c.name, c.value);
    }
}

/// One peer of a `get` reply.
fn format_peer(out: &mut SecretBuf, p: &PeerSnapshot) {
    out.extend_from_slice(b"public_key=");
    hex(out, &p.public_key);
    out.extend_from_slice(b"\npreshared_key=");
    hex(out, p.preshared_key.as_bytes());
    out.extend_from_slice(b"\nprotocol_version=1\n");
    match p.endpoint {
        Some(SocketAddr::V4(ep)) => {
            out.extend_from_slice(b"endpoint=");
            address(out, &IpAddr::V4(*ep.ip()));
            out.push(b':');
            decimal(out, ep.port().into());
            out.push(b'\n');
        }
        // Brackets, and a scope id if there is one.
        Some(ep @ SocketAddr::V6(_)) => {
            let _ = writeln!(out, "endpoint={ep}");
        }
        None => {}
    }
    let (sec, nsec) = p.last_handshake.unwrap_or((0, 0));
    number_line(out, "last_handshake_time_sec", sec);
    number_line(out, "last_handshake_time_nsec", nsec.into());
    number_line(out, "tx_bytes", p.tx_bytes);
    number_line(out, "rx_bytes", p.rx_bytes);
    number_line(
        out,
        "persistent_keepalive_interval",
        p.persistent_keepalive.into(),
    );
    for (addr, cidr) in &p.allowed_ips {
        out.extend_from_slice(b"allowed_ip=");
        address(out, addr);
        out.push(b'/');
        decimal(out, (*cidr).into());
        out.push(b'\n');
    }
}

/// The `get` reply body (without the final `errno=0` and empty line), zeroized on drop.
pub fn format_get(s: &DeviceSnapshot) -> Zeroizing<String> {
    let mut out = SecretBuf::with_capacity(256 + s.peers.len() * 384);
    format_device(&mut out, s);
    for p in &s.peers {
        format_peer(&mut out, p);
    }
    // Sized once, so the String never reallocates (which would leave a copy behind).
    let mut text = Zeroizing::new(String::with_capacity(out.len()));
    // Everything above is ASCII (addresses included).
    text.push_str(out.as_str().unwrap_or_default());
    text
}

/// Writes the whole `get` reply — the state, `errno=0` and the empty line — to `w`, in pieces
/// of about [`WRITE_CHUNK`] bytes: the reply for many peers never exists whole in memory.
pub fn write_get(s: &DeviceSnapshot, w: &mut impl io::Write) -> io::Result<()> {
    let mut buf = SecretBuf::with_capacity(WRITE_CHUNK + 4096);
    format_device(&mut buf, s);
    for p in &s.peers {
        format_peer(&mut buf, p);
        if buf.len() >= WRITE_CHUNK {
            w.write_all(buf.as_bytes())?;
            buf.clear();
        }
    }
    buf.extend_from_slice(b"errno=0\n\n");
    w.write_all(buf.as_bytes())
}

/// Why the configuration socket could not be set up.
#[derive(Debug)]
pub enum UapiError {
    /// Another live process answers on the socket.
    InUse(PathBuf),
    /// Creating the directory or socket was refused (needs root).
    PermissionDenied(PathBuf),
    /// Anything else.
    Io(PathBuf, io::Error),
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UapiError::InUse(p) => write!(
                f,
                "configuration socket {} is already in use by another process",
                p.display()
            ),
            UapiError::PermissionDenied(p) => write!(
                f,
                "permission denied creating configuration socket {} (needs root)",
                p.display()
            ),
            UapiError::Io(p, e) => write!(f, "configuration socket {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for UapiError {}

/// The socket path for an interface under `dir`.
pub fn socket_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.sock"))
}

/// The listening configuration socket.
#[derive(Debug)]
pub struct UapiListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created or were handed, to tell "our file" from a
    /// file someone put at the same path later.
    ident: Option<(u64, u64)>,
}

impl UapiListener {
    /// Binds `/var/run/wireguard/<iface>.sock`.
    pub fn bind(iface: &str) -> Result<UapiListener, UapiError> {
        UapiListener::bind_in(Path::new(SOCKET_DIR), iface)
    }

    /// Binds `<dir>/<iface>.sock`: creates `dir` (0755) if needed, removes a stale socket (one
    /// that refuses connections), refuses if a live process answers, binds under umask 077 and
    /// leaves the socket at mode 0600 (only its owner, root for the daemon, may configure).
    pub fn bind_in(dir: &Path, iface: &str) -> Result<UapiListener, UapiError> {
        let path = socket_path(dir, iface);
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied => UapiError::PermissionDenied(path.clone()),
            _ => UapiError::Io(path.clone(), e),
        };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err)?;
            // The mode above is filtered by the umask; the directory must be searchable by
            // everyone whatever the umask (the socket itself is what is private).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err)?;
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            match UnixStream::connect(&path) {
                Ok(_) => return Err(UapiError::InUse(path)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale configuration socket");
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        // Bind and listen under a temporary name, then link it into place: `wg` deletes a
        // socket that refuses connections as stale, and a socket that is bound but not yet
        // listening does refuse them. Linking fails if the name was taken meanwhile.
        let tmp = dir.join(format!(".{iface}.sock.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = sys::fd::with_umask(0o077, || UnixListener::bind(&tmp)).map_err(io_err)?;
        // 0600: only the owner (root, for the daemon) may connect. The umask above kept
        // everyone else out from the start; execute means nothing on a socket.
        if let Err(e) = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                UapiError::InUse(path.clone())
            } else {
                io_err(e)
            }
        })?;
        let ident = sys::fd::lstat_ident(&path).ok();
        Ok(UapiListener {
            listener,
            path,
            ident,
        })
    }

    /// Adopts a listening socket a parent process bound (`WG_UAPI_FD`) for interface `iface`.
    pub fn from_fd(fd: OwnedFd, iface: &str) -> UapiListener {
        UapiListener::from_fd_in(fd, Path::new(SOCKET_DIR), iface)
    }

    /// Like [`UapiListener::from_fd`] with the socket directory given.
    pub fn from_fd_in(fd: OwnedFd, dir: &Path, iface: &str) -> UapiListener {
        let path = socket_path(dir, iface);
        let ident = sys::fd::lstat_ident(&path).ok();
        UapiListener {
            listener: UnixListener::from(fd),
            path,
            ident,
        }
    }

    /// Adopts the inherited descriptor number `fd` (the value of `WG_UAPI_FD`).
    pub fn from_inherited(fd: RawFd, iface: &str) -> io::Result<UapiListener> {
        Ok(UapiListener::from_fd(sys::fd::adopt_inherited(fd)?, iface))
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the socket file at our path is still the one we bound.
    pub fn socket_file_is_ours(&self) -> bool {
        match (self.ident, sys::fd::lstat_ident(&self.path)) {
            (Some(ours), Ok(now)) => ours == now,
            _ => false,
        }
    }

    /// Removes the socket file if it is still ours (never another daemon's socket that took
    /// the name after ours was deleted).
    pub fn remove_socket_file(&self) {
        if self.socket_file_is_ours() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
            }
        }
    }

    /// Watches the socket file; the returned watcher's [`SocketWatch::wait_deleted`] returns
    /// once the file is deleted or replaced.
    pub fn watch(&self) -> io::Result<SocketWatch> {
        Ok(SocketWatch {
            inotify: sys::inotify::Inotify::watch(&self.path)?,
            path: self.path.clone(),
            ident: self.ident,
        })
    }

    /// The listening socket itself (to hand it to a child process).
    pub fn as_unix_listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts clients on a new thread, each served on its own thread, against `device`.
    pub fn serve<D: UapiDevice + Send + 'static>(
        &self,
        device: Arc<Mutex<D>>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new()
            .name("uapi-accept".into())
            .spawn(move || accept_loop(listener, device))
    }
}

/// Waits for the configuration socket file to disappear.
#[derive(Debug)]
pub struct SocketWatch {
    inotify: sys::inotify::Inotify,
    path: PathBuf,
    ident: Option<(u64, u64)>,
}

impl SocketWatch {
    /// Blocks until the socket file is deleted or replaced by another file.
    pub fn wait_deleted(&self) -> io::Result<()> {
        loop {
            match sys::fd::lstat_ident(&self.path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Ok(now) if Some(now) != self.ident => return Ok(()),
                _ => {}
            }
            self.inotify.wait()?;
        }
    }
}

fn accept_loop<D: UapiDevice + Send + 'static>(listener: UnixListener, device: Arc<Mutex<D>>) {
    let clients = Arc::new(ClientTable::new());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a configuration client failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let last_read = match clients.admit(id, &stream) {
            Ok(stamp) => stamp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a configuration client");
                continue;
            }
        };
        let device = Arc::clone(&device);
        let table = Arc::clone(&clients);
        let spawned = std::thread::Builder::new()
            .name("uapi-client".into())
            .spawn(move || {
                if let Err(e) = serve_client(stream, &*device, &table, &last_read) {
                    tracing::debug!(error = %e, "configuration client closed");
                }
                table.leave(id);
            });
        if let Err(e) = spawned {
            clients.leave(id);
            tracing::warn!(error = %e, "cannot start a thread for a configuration client");
        }
    }
}

/// The clients being served. At most [`MAX_CLIENTS`]; when full, a new client displaces the
/// one that has been quiet longest (its connection is shut down), so that clients which
/// connect and send nothing, or stop reading, cannot lock out `wg`: a new client is always
/// served.
struct ClientTable {
    epoch: Instant,
    slots: Mutex<Vec<ClientSlot>>,
}

struct ClientSlot {
    id: u64,
    /// A second handle to the connection, to shut it down.
    stream: UnixStream,
    /// When the client last sent something, in milliseconds since `epoch`.
    last_read: Arc<AtomicU64>,
}

impl ClientTable {
    fn new() -> ClientTable {
        ClientTable {
            epoch: Instant::now(),
            slots: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a client, displacing the quietest one if full; returns its activity stamp.
    fn admit(&self, id: u64, stream: &UnixStream) -> io::Result<Arc<AtomicU64>> {
        let handle = stream.try_clone()?;
        let stamp = Arc::new(AtomicU64::new(self.now_ms()));
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_CLIENTS {
            let quietest = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.last_read.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            if let Some(i) = quietest {
                let victim = slots.swap_remove(i);
                // Its thread sees end of file (or a failed write) and exits.
                let _ = victim.stream.shutdown(std::net::Shutdown::Both);
                tracing::warn!(
                    "too many configuration clients; disconnected the one quiet longest"
                );
            }
        }
        slots.push(ClientSlot {
            id,
            stream: handle,
            last_read: Arc::clone(&stamp),
        });
        Ok(stamp)
    }

    fn leave(&self, id: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.id != id);
    }
}

/// A client's connection that notes the time of every read that brought data.
struct Stamped<'a> {
    stream: UnixStream,
    table: &'a ClientTable,
    last_read: &'a AtomicU64,
}

impl io::Read for Stamped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if n > 0 {
            self.last_read.store(self.table.now_ms(), Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Reads `\n`-terminated lines of at most [`MAX_LINE_LEN`] bytes. `Ok(false)` at a clean EOF.
/// A longer line is an error as soon as it is seen to be too long: memory stays bounded
/// whatever the client sends.
fn read_line_bounded(reader: &mut impl BufRead, line: &mut SecretBuf) -> io::Result<bool> {
    line.clear();
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if line.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "line cut short",
            ));
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if line.len() + chunk.len() > MAX_LINE_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(true);
        }
    }
}

/// Serves one client until it closes, misbehaves, times out or is displaced.
fn serve_client<D: UapiDevice>(
    stream: UnixStream,
    device: &Mutex<D>,
    table: &ClientTable,
    last_read: &AtomicU64,
) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let reader = Stamped {
        stream,
        table,
        last_read,
    };
    // A `set` of many peers is megabytes: read it in large pieces.
    serve_lines(
        SecretReader::with_capacity(READ_BUFFER, reader),
        &mut writer,
        device,
    )
}

/// What a line that is not UTF-8 is handled as. No valid line contains anything but ASCII,
/// so such a line is an error whatever it says; this stand-in gets the same answer (EPROTO
/// without `=`, EINVAL with one, the connection closed as an operation) without a copy of
/// the line, which may hold a key.
fn not_utf8_stand_in(line: &[u8]) -> &'static str {
    if line.contains(&b'=') {
        "\u{fffd}=\u{fffd}"
    } else {
        "\u{fffd}"
    }
}

/// The line loop, over any reader and writer so tests drive it with in-memory buffers.
fn serve_lines<D: UapiDevice>(
    mut reader: impl BufRead,
    writer: &mut impl io::Write,
    device: &Mutex<D>,
) -> io::Result<()> {
    let mut session = UapiSession::new();
    // One page; grows (wiping what it leaves) only for absurdly long lines.
    let mut line = SecretBuf::with_capacity(128);
    while read_line_bounded(&mut reader, &mut line)? {
        let text = match line.as_str() {
            Ok(text) => text,
            Err(_) => not_utf8_stand_in(line.as_bytes()),
        };
        // One lock per line: a client that stalls mid-request never blocks the others, and a
        // `set` is not a transaction anyway.
        let response = {
            let mut guard = device
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            session.handle_line(text, &mut *guard)
        };
        match response {
            Response::Continue => {}
            Response::Reply(out) => {
                writer.write_all(out.as_bytes())?;
                writer.flush()?;
            }
            // Formatted with the device released.
            Response::Get(snapshot) => {
                write_get(&snapshot, writer)?;
                writer.flush()?;
            }
            Response::Close => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::MemoryDevice;
    use std::fmt::Write as _;
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub(crate) const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    pub(crate) const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    pub(crate) const K3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    pub(crate) const ZERO: &str =
        "0000000000000000000000000000000000000000000000000000000000000000";

    pub(crate) fn key(s: &str) -> [u8; 32] {
        parse_key(s).expect("test key")
    }

    /// Runs `input` through a session against `dev`, returning everything written back.
    pub(crate) fn talk<D: UapiDevice>(dev: &Mutex<D>, input: &str) -> String {
        let mut out = Vec::new();
        let _ = serve_lines(io::Cursor::new(input.as_bytes().to_vec()), &mut out, dev);
        String::from_utf8(out).expect("utf8 reply")
    }

    pub(crate) fn set<D: UapiDevice>(dev: &Mutex<D>, body: &str) -> String {
        talk(dev, &format!("set=1\n{body}\n"))
    }

    fn device() -> Mutex<MemoryDevice> {
        Mutex::new(MemoryDevice::new())
    }

    pub(crate) fn snap<D: UapiDevice>(dev: &Mutex<D>) -> DeviceSnapshot {
        dev.lock().expect("lock").snapshot()
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = DeviceSnapshot {
            private_key: Some(PrivateKey::from_bytes([0xab; 32])),
            peers: vec![PeerSnapshot {
                preshared_key: PresharedKey::from_bytes([0xcd; 32]),
                ..PeerSnapshot::default()
            }],
            ..DeviceSnapshot::default()
        };
        let text = format!("{s:?}");
        // Neither as numbers, nor as hex (either case), nor in wg's base64.
        for needle in [
            "171", "ab, ab", "abab", "ABAB", "q6ur", "205", "cdcd", "CDCD", "zc3N",
        ] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
        // The same for a session's buffers and a reply's.
        let mut buf = SecretBuf::new();
        format_device(&mut buf, &s);
        assert!(buf.as_str().expect("ascii").contains("abab"));
        assert!(!format!("{buf:?}").contains("abab"));
        assert!(!format!(
            "{:?}",
            SecretReader::with_capacity(64, &b"private_key=abab"[..])
        )
        .contains("abab"));
    }

    #[test]
    fn get_on_empty_device() {
        let dev = device();
        assert_eq!(talk(&dev, "get=1\n\n"), "errno=0\n\n");
    }

    #[test]
    fn get_formats_every_field_in_order() {
        let s = DeviceSnapshot {
            // Unchanged by clamping.
            private_key: Some(PrivateKey::from_bytes([0x48; 32])),
            listen_port: 51820,
            fwmark: 0x20,
            counters: Vec::new(),
            peers: vec![
                PeerSnapshot {
                    public_key: [1; 32],
                    preshared_key: PresharedKey::none(),
                    endpoint: Some("[2001:db8::1]:51820".parse().expect("addr")),
                    last_handshake: Some((1_700_000_000, 42)),
                    tx_bytes: 10,
                    rx_bytes: 20,
                    persistent_keepalive: 25,
                    allowed_ips: vec![
                        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24),
                        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                    ],
                },
                PeerSnapshot {
                    public_key: [2; 32],
                    ..PeerSnapshot::default()
                },
            ],
        };
        let expected = format!(
            "private_key={}\nlisten_port=51820\nfwmark=32\n\
             public_key={}\npreshared_key={ZERO}\nprotocol_version=1\n\
             endpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=42\ntx_bytes=10\nrx_bytes=20\n\
             persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/24\nallowed_ip=::/0\n\
             public_key={}\npreshared_key={ZERO}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\n",
            "48".repeat(32),
            "01".repeat(32),
            "02".repeat(32),
        );
        assert_eq!(*format_get(&s), expected);
        // Zero/unset device fields are omitted.
        assert_eq!(*format_get(&DeviceSnapshot::default()), "");
    }

    #[test]
    fn get_with_trailing_line_is_einval_and_connection_continues() {
        let dev = device();
        assert_eq!(
            talk(&dev, "get=1\nx\nget=1\n\n"),
            "errno=-22\n\nerrno=0\n\n"
        );
    }

    #[test]
    fn unknown_operation_closes_without_reply() {
        let dev = device();
        for op in [
            "get=2\n\n",
            "set=0\n\n",
            "\n",
            "hello\n",
            "GET=1\n\n",
            "get=1 \n\n",
        ] {
            assert_eq!(talk(&dev, op), "", "{op:?}");
        }
        // An earlier operation on the connection is still answered.
        assert_eq!(talk(&dev, "get=1\n\nbogus\nget=1\n\n"), "errno=0\n\n");
    }

    #[test]
    fn several_operations_per_connection() {
        let dev = device();
        let out = talk(
            &dev,
            "set=1\nlisten_port=1234\n\nget=1\n\nset=1\nfwmark=7\n\nget=1\n\n",
        );
        assert_eq!(
            out,
            "errno=0\n\nlisten_port=1234\nerrno=0\n\nerrno=0\n\nlisten_port=1234\nfwmark=7\nerrno=0\n\n"
        );
    }

    #[test]
    fn device_keys() {
        let dev = device();
        assert_eq!(
            set(
                &dev,
                &format!("private_key={K1}\nlisten_port=51820\nfwmark=4294967295\n")
            ),
            "errno=0\n\n"
        );
        let s = snap(&dev);
        assert_eq!(s.listen_port, 51820);
        assert_eq!(s.fwmark, u32::MAX);
        // Clamped as X25519 keys are stored.
        let mut clamped = key(K1);
        clamped[0] &= 248;
        clamped[31] = (clamped[31] & 127) | 64;
        assert_eq!(s.private_key.as_ref().map(|k| *k.as_bytes()), Some(clamped));
        // Zeros clear the key; 0 clears the mark.
        assert_eq!(
            set(&dev, &format!("private_key={ZERO}\nfwmark=0\n")),
            "errno=0\n\n"
        );
        let s = snap(&dev);
        assert_eq!(s.private_key, None);
        assert_eq!(s.fwmark, 0);
        // Upper-case hex is accepted.
        assert_eq!(
            set(&dev, &format!("private_key={}\n", "AB".repeat(32))),
            "errno=0\n\n"
        );
        assert!(snap(&dev).private_key.is_some());
    }

    #[test]
    fn device_key_errors() {
        let cases = [
            "private_key=11",
            "private_key=zz11111111111111111111111111111111111111111111111111111111111111",
            "private_key=",
            "listen_port=65536",
            "listen_port=-1",
            "listen_port=+1",
            "listen_port= 1",
            "listen_port=",
            "listen_port=0x10",
            "fwmark=4294967296",
            "fwmark=0x1",
            "fwmark=-1",
            "replace_peers=false",
            "replace_peers=True",
            "replace_peers=1",
            "bogus=1",
            // Peer keys before any public_key.
            "endpoint=1.2.3.4:5",
            "allowed_ip=10.0.0.0/8",
            "protocol_version=1",
        ];
        for line in cases {
            assert_eq!(
                set(&device(), &format!("{line}\n")),
                "errno=-22\n\n",
                "{line}"
            );
        }
        assert_eq!(set(&device(), "listen_port\n"), "errno=-71\n\n");
    }

    #[test]
    fn replace_peers() {
        shared::replace_peers(&device());
    }

    #[test]
    fn peer_keys() {
        shared::peer_keys(&device());
    }

    #[test]
    fn allowed_ip_moves_between_peers() {
        shared::allowed_ip_moves_between_peers(&device());
    }

    #[test]
    fn persistent_keepalive_on_and_off() {
        shared::persistent_keepalive_on_and_off(&device());
    }

    #[test]
    fn peer_key_errors() {
        let cases = [
            "preshared_key=123",
            "endpoint=192.0.2.1",
            "endpoint=example.com:51820",
            "endpoint=2001:db8::1:51820",
            "endpoint=192.0.2.1:65536",
            "persistent_keepalive_interval=65536",
            "persistent_keepalive_interval=-1",
            "replace_allowed_ips=false",
            "allowed_ip=10.0.0.0",
            "allowed_ip=10.0.0.0/33",
            "allowed_ip=::/129",
            "allowed_ip=10.0.0.0/-1",
            "allowed_ip=10.0.0.0/+8",
            "allowed_ip=10.0.0.0/0008",
            "allowed_ip=010.0.0.0/8",
            "allowed_ip=fe80::1%eth0/64",
            "allowed_ip=--10.0.0.0/8",
            "allowed_ip=",
            "protocol_version=2",
            "protocol_version=",
            "update_only=1",
            "remove=yes",
            "bogus=1",
            // Device keys inside a peer section.
            "private_key=1111111111111111111111111111111111111111111111111111111111111111",
            "listen_port=1",
            "fwmark=1",
            "replace_peers=true",
        ];
        for line in cases {
            let dev = device();
            assert_eq!(
                set(&dev, &format!("public_key={K1}\n{line}\n")),
                "errno=-22\n\n",
                "{line}"
            );
        }
        assert_eq!(
            set(&device(), &format!("public_key={K1}\nendpoint\n")),
            "errno=-71\n\n"
        );
        assert_eq!(set(&device(), "public_key=abc\n"), "errno=-22\n\n");
    }

    #[test]
    fn applied_before_error_stays_applied_and_rest_is_skipped() {
        let dev = device();
        let body = format!(
            "listen_port=1000\npublic_key={K1}\nallowed_ip=10.0.0.0/8\nallowed_ip=bad\n\
             allowed_ip=11.0.0.0/8\npublic_key={K2}\n"
        );
        assert_eq!(set(&dev, &body), "errno=-22\n\n");
        let s = snap(&dev);
        assert_eq!(s.listen_port, 1000);
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            s.peers[0].allowed_ips,
            vec![("10.0.0.0".parse().expect("a"), 8)]
        );
        // The connection is usable after the error.
        let out = talk(&dev, "set=1\nbogus=1\nlisten_port=5\n\nget=1\n\n");
        assert!(out.starts_with("errno=-22\n\nlisten_port=1000\n"), "{out}");
    }

    #[test]
    fn update_only() {
        shared::update_only(&device());
    }

    #[test]
    fn remove() {
        shared::remove(&device());
    }

    #[test]
    fn own_public_key_section_is_ignored() {
        shared::own_public_key_section_is_ignored(&device());
    }

    #[test]
    fn peer_section_done_hook() {
        #[derive(Default)]
        struct Recorder {
            inner: MemoryDevice,
            done: Vec<[u8; 32]>,
        }
        impl UapiDevice for Recorder {
            fn snapshot(&self) -> DeviceSnapshot {
                self.inner.snapshot()
            }
            fn own_public_key(&self) -> Option<[u8; 32]> {
                self.inner.own_public_key()
            }
            fn set_private_key(&mut self, k: Option<PrivateKey>) -> Result<(), Errno> {
                self.inner.set_private_key(k)
            }
            fn set_listen_port(&mut self, p: u16) -> Result<(), Errno> {
                self.inner.set_listen_port(p)
            }
            fn set_fwmark(&mut self, m: u32) -> Result<(), Errno> {
                self.inner.set_fwmark(m)
            }
            fn remove_all_peers(&mut self) {
                self.inner.remove_all_peers()
            }
            fn has_peer(&self, pk: &[u8; 32]) -> bool {
                self.inner.has_peer(pk)
            }
            fn create_peer(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
                self.inner.create_peer(pk)
            }
            fn remove_peer(&mut self, pk: &[u8; 32]) {
                self.inner.remove_peer(pk)
            }
            fn set_preshared_key(&mut self, pk: &[u8; 32], k: PresharedKey) -> Result<(), Errno> {
                self.inner.set_preshared_key(pk, k)
            }
            fn set_endpoint(&mut self, pk: &[u8; 32], e: SocketAddr) -> Result<(), Errno> {
                self.inner.set_endpoint(pk, e)
            }
            fn set_persistent_keepalive(&mut self, pk: &[u8; 32], s: u16) -> Result<(), Errno> {
                self.inner.set_persistent_keepalive(pk, s)
            }
            fn clear_allowed_ips(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
                self.inner.clear_allowed_ips(pk)
            }
            fn add_allowed_ip(&mut self, pk: &[u8; 32], a: IpAddr, c: u8) -> Result<(), Errno> {
                self.inner.add_allowed_ip(pk, a, c)
            }
            fn remove_allowed_ip(&mut self, pk: &[u8; 32], a: IpAddr, c: u8) -> Result<(), Errno> {
                self.inner.remove_allowed_ip(pk, a, c)
            }
            fn peer_section_done(&mut self, pk: &[u8; 32]) {
                self.done.push(*pk)
            }
        }
        let mut dev = Recorder::default();
        let mut session = UapiSession::new();
        let lines =
            format!("set=1\npublic_key={K1}\npublic_key={K2}\nremove=true\npublic_key={K3}\n");
        for line in lines.lines() {
            assert_eq!(session.handle_line(line, &mut dev), Response::Continue);
        }
        assert!(session.in_request());
        assert_eq!(
            session.handle_line("", &mut dev),
            Response::Reply("errno=0\n\n".into())
        );
        assert!(!session.in_request());
        assert_eq!(dev.done, vec![key(K1), key(K3)]);
    }

    #[test]
    fn line_limits_and_garbage() {
        let dev = device();
        // An overlong line closes the connection without a reply.
        let long = format!("set=1\nprivate_key={}\n\n", "a".repeat(MAX_LINE_LEN));
        assert_eq!(talk(&dev, &long), "");
        // Invalid UTF-8 is an invalid value, not a crash.
        let mut out = Vec::new();
        let input = b"set=1\nlisten_port=\xff\xfe\n\n".to_vec();
        let _ = serve_lines(io::Cursor::new(input), &mut out, &dev);
        assert_eq!(out, b"errno=-22\n\n");
        // EOF in the middle of a request: no reply, nothing breaks.
        assert_eq!(talk(&dev, "set=1\nlisten_port=9"), "");
        assert_eq!(talk(&dev, "set=1\nlisten_port=9\n"), "");
        assert_eq!(snap(&dev).listen_port, 9);
        // NUL bytes and CR are just invalid values.
        assert_eq!(talk(&dev, "set=1\nlisten_port=1\r\n\n"), "errno=-22\n\n");
        assert_eq!(talk(&dev, "set=1\nlisten\0port=1\n\n"), "errno=-22\n\n");
    }

    /// Random sequences of plausible and implausible lines: never a panic, and every reply is
    /// well formed.
    #[test]
    fn random_lines_never_panic() {
        let tokens = [
            "get=1",
            "set=1",
            "",
            "public_key=",
            "private_key=",
            "listen_port=",
            "fwmark=",
            "replace_peers=",
            "update_only=",
            "remove=",
            "preshared_key=",
            "endpoint=",
            "persistent_keepalive_interval=",
            "replace_allowed_ips=",
            "allowed_ip=",
            "allowed_ip=-",
            "protocol_version=",
            "=",
            "x",
        ];
        let values = [
            K1,
            K2,
            ZERO,
            "true",
            "1",
            "0",
            "65535",
            "65536",
            "4294967295",
            "10.0.0.0/8",
            "::/0",
            "[::1]:1",
            "1.2.3.4:5",
            "/",
            "-",
            "\u{fffd}",
            "ff",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut dev = MemoryDevice::new();
            let mut session = UapiSession::new();
            for _ in 0..(next() % 30) {
                let t = tokens[(next() % tokens.len() as u64) as usize];
                let line = if t.ends_with('=') && next() % 4 != 0 {
                    format!("{t}{}", values[(next() % values.len() as u64) as usize])
                } else {
                    t.to_owned()
                };
                match session.handle_line(&line, &mut dev) {
                    Response::Reply(r) => {
                        assert!(r.ends_with("\n\n"), "{r:?}");
                        assert!(r.contains("errno="), "{r:?}");
                    }
                    Response::Get(s) => {
                        let mut out = Vec::new();
                        write_get(&s, &mut out).expect("write to memory");
                        assert!(out.ends_with(b"errno=0\n\n"), "{out:?}");
                    }
                    Response::Close => session = UapiSession::new(),
                    Response::Continue => {}
                }
            }
        }
    }

    /// Hex keys, decimal numbers and addresses at their extremes, checked against `format!`
    /// (an implementation independent of the hand-rolled formatting under test).
    #[test]
    fn get_formats_extreme_values() {
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xf0);
        let psk: [u8; 32] = std::array::from_fn(|i| 255 - i as u8);
        let fmt_key = |k: &[u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let private = PrivateKey::from_bytes(psk);
        let peer = |endpoint: &str| PeerSnapshot {
            public_key: key,
            preshared_key: PresharedKey::from_bytes(psk),
            endpoint: Some(endpoint.parse().expect("endpoint")),
            last_handshake: Some((u64::MAX, 999_999_999)),
            tx_bytes: u64::MAX,
            rx_bytes: 1 << 40,
            persistent_keepalive: u16::MAX,
            allowed_ips: vec![
                (IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)), 32),
                (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 0),
                (IpAddr::V4(Ipv4Addr::new(100, 9, 10, 199)), 9),
                (IpAddr::V6("2001:db8::".parse().expect("v6")), 128),
            ],
        };
        for endpoint in ["255.255.255.255:65535", "0.0.0.0:0", "[fe80::1%7]:51820"] {
            let s = DeviceSnapshot {
                private_key: Some(private.clone()),
                listen_port: u16::MAX,
                fwmark: u32::MAX,
                counters: vec![
                    Counter {
                        group: "",
                        name: "x",
                        value: u64::MAX,
                    },
                    Counter {
                        group: "dropped_",
                        name: "y",
                        value: 0,
                    },
                ],
                peers: vec![peer(endpoint)],
            };
            let expected = format!(
                "private_key={private}\nlisten_port=65535\nfwmark=4294967295\n\
                 rwg_x=18446744073709551615\nrwg_dropped_y=0\n\
                 public_key={key}\npreshared_key={psk}\nprotocol_version=1\n\
                 endpoint={endpoint}\nlast_handshake_time_sec=18446744073709551615\n\
                 last_handshake_time_nsec=999999999\ntx_bytes=18446744073709551615\n\
                 rx_bytes=1099511627776\npersistent_keepalive_interval=65535\n\
                 allowed_ip=255.255.255.255/32\nallowed_ip=0.0.0.0/0\n\
                 allowed_ip=100.9.10.199/9\nallowed_ip=2001:db8::/128\n",
                private = fmt_key(private.as_bytes()),
                psk = fmt_key(&psk),
                key = fmt_key(&key),
            );
            assert_eq!(*format_get(&s), expected);
        }
    }

    /// A large `get` goes out in pieces of about [`WRITE_CHUNK`] bytes (never as one buffer
    /// of the whole reply), and the pieces are exactly the reply.
    #[test]
    fn a_large_get_is_written_in_pieces() {
        struct Pieces(Vec<Vec<u8>>);
        impl io::Write for Pieces {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let s = DeviceSnapshot {
            listen_port: 1,
            peers: (0..3000u32)
                .map(|i| PeerSnapshot {
                    public_key: [i as u8; 32],
                    endpoint: Some(SocketAddr::from(([192, 0, 2, 1], i as u16))),
                    allowed_ips: vec![(IpAddr::V4(Ipv4Addr::from(i)), 32)],
                    ..PeerSnapshot::default()
                })
                .collect(),
            ..DeviceSnapshot::default()
        };
        let mut w = Pieces(Vec::new());
        write_get(&s, &mut w).expect("write to memory");
        let whole = format_get(&s).to_string() + "errno=0\n\n";
        assert!(whole.len() > 10 * WRITE_CHUNK, "{}", whole.len());
        assert_eq!(w.0.concat(), whole.as_bytes());
        assert!(
            w.0.len() >= whole.len() / (WRITE_CHUNK + 1024),
            "{}",
            w.0.len()
        );
        let largest = w.0.iter().map(Vec::len).max().unwrap_or(0);
        assert!(largest < WRITE_CHUNK + 1024, "a piece of {largest} bytes");
    }

    /// A [`MemoryDevice`] that counts what a request asks of it.
    #[derive(Default)]
    struct Counting {
        inner: MemoryDevice,
        snapshots: std::cell::Cell<usize>,
        lookups: std::cell::Cell<usize>,
        calls: usize,
    }

    impl UapiDevice for Counting {
        fn snapshot(&self) -> DeviceSnapshot {
            self.snapshots.set(self.snapshots.get() + 1);
            self.inner.snapshot()
        }
        fn own_public_key(&self) -> Option<[u8; 32]> {
            self.inner.own_public_key()
        }
        fn set_private_key(&mut self, key: Option<PrivateKey>) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_private_key(key)
        }
        fn set_listen_port(&mut self, port: u16) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_listen_port(port)
        }
        fn set_fwmark(&mut self, mark: u32) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_fwmark(mark)
        }
        fn remove_all_peers(&mut self) {
            self.calls += 1;
            self.inner.remove_all_peers()
        }
        fn has_peer(&self, pk: &[u8; 32]) -> bool {
            self.lookups.set(self.lookups.get() + 1);
            self.inner.has_peer(pk)
        }
        fn create_peer(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.create_peer(pk)
        }
        fn ensure_peer(&mut self, pk: &[u8; 32]) -> Result<bool, Errno> {
            self.lookups.set(self.lookups.get() + 1);
            let created = !self.inner.has_peer(pk);
            self.inner.create_peer(pk)?;
            Ok(created)
        }
        fn remove_peer(&mut self, pk: &[u8; 32]) {
            self.calls += 1;
            self.inner.remove_peer(pk)
        }
        fn set_preshared_key(&mut self, pk: &[u8; 32], psk: PresharedKey) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_preshared_key(pk, psk)
        }
        fn set_endpoint(&mut self, pk: &[u8; 32], ep: SocketAddr) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_endpoint(pk, ep)
        }
        fn set_persistent_keepalive(&mut self, pk: &[u8; 32], secs: u16) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.set_persistent_keepalive(pk, secs)
        }
        fn clear_allowed_ips(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.clear_allowed_ips(pk)
        }
        fn add_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.add_allowed_ip(pk, addr, cidr)
        }
        fn remove_allowed_ip(
            &mut self,
            pk: &[u8; 32],
            addr: IpAddr,
            cidr: u8,
        ) -> Result<(), Errno> {
            self.calls += 1;
            self.inner.remove_allowed_ip(pk, addr, cidr)
        }
    }

    /// The public key of peer `i` of [`setconf_body`], in hex.
    pub(crate) fn numbered_key(i: usize) -> String {
        let mut pk = [0u8; 32];
        pk[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        pk.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The body of the `set` that `wg setconf` sends for `n` peers, each with an endpoint, an
    /// IPv4 /32 (10.0.i/256.i%256 for i < 65536) and an IPv6 /128 (fd00::i) of its own.
    pub(crate) fn setconf_body(n: usize) -> String {
        let mut body = format!("private_key={K1}\nreplace_peers=true\n");
        for i in 0..n {
            let _ = write!(
                body,
                "public_key={}\nendpoint=203.0.113.{}:{}\nreplace_allowed_ips=true\n\
                 allowed_ip=10.{}.{}.{}/32\nallowed_ip=fd00::{:x}/128\n",
                numbered_key(i),
                i % 254 + 1,
                1024 + i,
                i >> 16,
                (i >> 8) & 255,
                i & 255,
                i
            );
        }
        body
    }

    /// A `set` of N peers asks the device one thing per line and one lookup per peer: no
    /// snapshot, no per-peer pass over all peers (the shape that made `wg setconf` quadratic).
    /// Counted, not timed.
    #[test]
    fn a_set_costs_one_device_call_per_line() {
        for n in [1, 10, 300] {
            let body = setconf_body(n);
            let lines = body.lines().count();
            let mut dev = Counting::default();
            let mut session = UapiSession::new();
            let mut replies = Vec::new();
            for line in format!("set=1\n{body}\n").lines() {
                if let Response::Reply(r) = session.handle_line(line, &mut dev) {
                    replies.push(r);
                }
            }
            assert_eq!(replies, vec!["errno=0\n\n".to_owned()]);
            assert_eq!(dev.lookups.get(), n, "one lookup per public_key line");
            assert_eq!(dev.snapshots.get(), 0);
            // Every other line is one primitive call (5 per peer here, 2 for the device).
            assert_eq!(dev.calls, lines - n, "calls for {lines} lines of {n} peers");
            assert_eq!(dev.inner.snapshot().peers.len(), n);
        }
    }

    /// A `get` takes one snapshot whatever the number of peers, and lists each peer once.
    #[test]
    fn a_get_takes_one_snapshot() {
        let n = 300;
        let dev = Mutex::new(Counting::default());
        assert_eq!(set(&dev, &setconf_body(n)), "errno=0\n\n");
        assert_eq!(dev.lock().expect("lock").snapshots.get(), 0);
        let reply = talk(&dev, "get=1\n\n");
        assert_eq!(dev.lock().expect("lock").snapshots.get(), 1);
        assert_eq!(reply.matches("\npublic_key=").count(), n);
        assert!(reply.ends_with("errno=0\n\n"));
    }

    /// Held by tests that bind a listener: binding swaps the process-wide umask, so two
    /// binds on parallel test threads can restore each other's umask at the wrong moment
    /// (seen: a socket created 0755).
    static BINDING: Mutex<()> = Mutex::new(());

    fn binding() -> std::sync::MutexGuard<'static, ()> {
        BINDING.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rwg-uapi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn socket_server_end_to_end() {
        use std::io::{Read, Write};
        let _binding = binding();
        let dir = temp_dir("e2e");
        let listener = UapiListener::bind_in(&dir, "wgt0").expect("bind");
        let path = listener.path().to_path_buf();
        // Only the owner may connect: 0600.
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let dmode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(dmode & 0o777, 0o755);
        // A second daemon for the same name is refused while the first one serves.
        assert!(matches!(
            UapiListener::bind_in(&dir, "wgt0"),
            Err(UapiError::InUse(_))
        ));
        let dev = Arc::new(Mutex::new(MemoryDevice::new()));
        listener.serve(Arc::clone(&dev)).expect("serve");

        // A client that sends garbage and one that hangs do not affect a well-behaved one.
        let mut bad = UnixStream::connect(&path).expect("connect");
        bad.write_all(b"set=1\nlisten_port=\x00\x01")
            .expect("write");
        let _hanging = UnixStream::connect(&path).expect("connect");
        let mut good = UnixStream::connect(&path).expect("connect");
        good.write_all(b"set=1\nlisten_port=4242\n\nget=1\n\n")
            .expect("write");
        good.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut reply = String::new();
        good.read_to_string(&mut reply).expect("read");
        assert_eq!(reply, "errno=0\n\nlisten_port=4242\nerrno=0\n\n");

        // Deleting the socket file is noticed.
        let watch = listener.watch().expect("watch");
        // The inotify watch exists from here on, so the waiter cannot miss the deletion
        // whenever it starts waiting.
        let waiter = std::thread::spawn(move || watch.wait_deleted());
        assert!(listener.socket_file_is_ours());
        std::fs::remove_file(&path).expect("rm");
        waiter.join().expect("join").expect("wait");
        assert!(!listener.socket_file_is_ours());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A running server on a fresh socket with a [`MemoryDevice`].
    fn serving(tag: &str) -> (UapiListener, PathBuf, PathBuf) {
        serving_device(tag, Arc::new(Mutex::new(MemoryDevice::new())))
    }

    /// A running server on a fresh socket for `dev`.
    fn serving_device(
        tag: &str,
        dev: Arc<Mutex<MemoryDevice>>,
    ) -> (UapiListener, PathBuf, PathBuf) {
        let _binding = binding();
        let dir = temp_dir(tag);
        let listener = UapiListener::bind_in(&dir, "wgt0").expect("bind");
        let path = listener.path().to_path_buf();
        listener.serve(dev).expect("serve");
        (listener, path, dir)
    }

    /// A client that stops mid-line and one that asks for a large `get` and does not read it
    /// hold nothing: the device, which every other client needs, is free while their threads
    /// wait, and another client's `set` is applied meanwhile. (The data path never takes this
    /// lock; the reply is written from a snapshot, so no lock of the core is held either.)
    #[test]
    fn stalled_clients_hold_no_lock() {
        use std::io::{Read, Write};
        const PEERS: usize = 4000;
        let dev = Arc::new(Mutex::new(MemoryDevice::new()));
        let mut body = String::from("set=1\n");
        for i in 1..=PEERS {
            let _ = writeln!(body, "public_key={i:064x}");
        }
        body.push('\n');
        assert_eq!(talk(&dev, &body), "errno=0\n\n");
        let (_listener, path, dir) = serving_device("stalled", Arc::clone(&dev));

        let mut mid_line = UnixStream::connect(&path).expect("connect");
        mid_line.write_all(b"set=1\npublic_k").expect("write");
        let mut slow = UnixStream::connect(&path).expect("connect");
        slow.write_all(b"get=1\n\n").expect("write");
        // The reply (about 1 MiB) is far more than the socket holds: once its first byte
        // arrives, the server is writing and will block until this client reads on.
        slow.set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        let mut first = [0u8; 1];
        slow.read_exact(&mut first)
            .expect("first byte of the reply");
        assert!(
            dev.try_lock().is_ok(),
            "the device is locked while a client's reply waits"
        );
        let mut other = UnixStream::connect(&path).expect("connect");
        other
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        other
            .write_all(b"set=1\nlisten_port=4242\n\n")
            .expect("write");
        let mut answer = [0u8; 9];
        other.read_exact(&mut answer).expect("answer");
        assert_eq!(&answer, b"errno=0\n\n");
        assert_eq!(dev.lock().expect("lock").snapshot().listen_port, 4242);
        // The slow client still gets all of its reply.
        let mut reply = String::from(char::from(first[0]));
        slow.shutdown(std::net::Shutdown::Write).expect("shutdown");
        slow.read_to_string(&mut reply).expect("read");
        assert!(reply.ends_with("errno=0\n\n"));
        assert_eq!(reply.matches("public_key=").count(), PEERS);
        drop(mid_line);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One complete `get` on a new connection: the reply, or what went wrong.
    fn get_over_socket(path: &Path) -> io::Result<String> {
        use std::io::{Read, Write};
        let mut c = UnixStream::connect(path)?;
        c.set_read_timeout(Some(CLIENT_TIMEOUT * 2))?;
        c.write_all(b"get=1\n\n")?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        c.read_to_string(&mut reply)?;
        Ok(reply)
    }

    /// Clients that connect and send nothing, as many as the server serves at once, do not
    /// lock a real client out: it displaces the one quiet longest and is answered. (Before,
    /// it was refused until one of them timed out.)
    #[test]
    fn silent_clients_at_the_limit_do_not_lock_wg_out() {
        use std::io::Read;
        let (_listener, path, dir) = serving("full");
        let mut silent: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        // Answered, so the server took every earlier connection (it accepts in order).
        assert_eq!(get_over_socket(&path).expect("get"), "errno=0\n\n");
        // Exactly one silent client was displaced, before the request was served: it sees
        // end of file, the others nothing yet.
        let mut closed = 0;
        for c in &mut silent {
            c.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 1];
            if matches!(c.read(&mut b), Ok(0)) {
                closed += 1;
            }
        }
        assert_eq!(closed, 1);
        drop(silent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A client that sends one endless line is cut off after [`MAX_LINE_LEN`] bytes (plus
    /// what the socket buffers hold), and the server stays usable meanwhile and after.
    #[test]
    fn an_endless_line_is_cut_off() {
        use std::io::Write;
        let (_listener, path, dir) = serving("endless");
        let mut flood = UnixStream::connect(&path).expect("connect");
        flood
            .set_write_timeout(Some(CLIENT_TIMEOUT * 2))
            .expect("timeout");
        let chunk = [b'a'; 4096];
        let mut sent = 0usize;
        let mut served_meanwhile = false;
        // Bounded: 64 MiB is far beyond the line limit plus any socket buffer.
        let cut = loop {
            if sent > 64 << 20 {
                break false;
            }
            match flood.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break true,
            }
            if sent >= MAX_LINE_LEN && !served_meanwhile {
                // Another client is served while the flood goes on.
                assert_eq!(get_over_socket(&path).expect("get"), "errno=0\n\n");
                served_meanwhile = true;
            }
        };
        assert!(cut, "still accepted after {sent} bytes");
        assert_eq!(get_over_socket(&path).expect("get"), "errno=0\n\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The line buffer never grows past the line limit, whatever a client sends.
    #[test]
    fn line_memory_is_bounded() {
        // Finite (four times the limit), so that a missing bound fails here instead of
        // exhausting memory.
        let endless = io::Read::take(io::repeat(b'x'), 4 * MAX_LINE_LEN as u64);
        let mut reader = io::BufReader::new(endless);
        let mut line = SecretBuf::new();
        let e = read_line_bounded(&mut reader, &mut line).expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(line.len() <= MAX_LINE_LEN);
        assert!(line.capacity() <= 2 * MAX_LINE_LEN, "{}", line.capacity());
    }

    /// Keys that pass through a configuration connection — a `set` with a private and a
    /// preshared key, then a `get` that sends them back — leave no copy in heap memory that is
    /// freed: the connection's buffers, the parsed keys, the snapshot, the reply. Checked with
    /// the test allocator of `sys::heap_probe`, which searches every block as it is freed (see
    /// there for what this does not cover). Also run against the daemon's real device.
    pub(crate) fn keys_leave_no_copies_in_freed_memory<D: UapiDevice + Send>(dev: D) {
        use std::io::{Read, Write};
        // Arbitrary bytes, already clamped (so the reply spells the private key as the
        // request does), unlike anything another test uses.
        let mut private: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(151) ^ 0x3c);
        private[0] &= 248;
        private[31] = (private[31] & 127) | 64;
        let psk: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(89) ^ 0xc5);
        let hex_of =
            |k: &[u8; 32]| Zeroizing::new(k.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let (private_hex, psk_hex) = (hex_of(&private), hex_of(&psk));
        let request = Zeroizing::new(format!(
            "set=1\nprivate_key={}\npublic_key={K1}\npreshared_key={}\n\nget=1\n\n",
            &*private_hex, &*psk_hex
        ));
        // Read into a buffer that never grows (a growing Vec here would be the test's leak).
        let mut reply = Zeroizing::new(vec![0u8; 1 << 16]);
        let dev = Mutex::new(dev);
        let table = ClientTable::new();
        let stamp = AtomicU64::new(0);

        let probe = sys::heap_probe::Probe::arm(&[
            &private_hex.as_bytes()[..32],
            &psk_hex.as_bytes()[..32],
            &private[..16],
            &psk[..16],
        ]);
        let (mut client, server) = UnixStream::pair().expect("pair");
        let len = std::thread::scope(|scope| {
            let served = scope.spawn(|| serve_client(server, &dev, &table, &stamp));
            client.write_all(request.as_bytes()).expect("write");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let mut len = 0;
            loop {
                match client.read(&mut reply[len..]).expect("read") {
                    0 => break,
                    n => len += n,
                }
            }
            served.join().expect("server thread").expect("served");
            len
        });
        drop(dev);
        let hits = probe.hits();
        drop(probe);

        let text = std::str::from_utf8(&reply[..len]).expect("ascii");
        // The keys really went through (in both directions).
        assert!(text.starts_with("errno=0\n\n"), "{}", text.len());
        assert!(text.contains(&format!("private_key={}\n", &*private_hex)));
        assert!(text.contains(&format!("preshared_key={}\n", &*psk_hex)));
        assert_eq!(hits, 0, "freed heap blocks held key material");
    }

    #[test]
    fn keys_leave_no_copies_in_freed_memory_memory_device() {
        keys_leave_no_copies_in_freed_memory(MemoryDevice::new());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let _binding = binding();
        let dir = temp_dir("stale");
        {
            let first = UapiListener::bind_in(&dir, "wgt1").expect("bind");
            assert!(first.path().exists());
            // Dropped without removing the file: a crashed daemon's leftover.
        }
        let second = UapiListener::bind_in(&dir, "wgt1").expect("rebind over stale socket");
        assert!(second.socket_file_is_ours());
        second.remove_socket_file();
        assert!(!second.path().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Request-level behaviour every [`UapiDevice`] must show: run above against
    /// [`MemoryDevice`] and in `driver::tests` against the daemon's real `DriverConfig`.
    pub(crate) mod shared {
        use super::*;

        pub(crate) fn replace_peers<D: UapiDevice>(dev: &Mutex<D>) {
            set(dev, &format!("public_key={K1}\npublic_key={K2}\n"));
            assert_eq!(snap(dev).peers.len(), 2);
            assert_eq!(
                set(dev, &format!("replace_peers=true\npublic_key={K3}\n")),
                "errno=0\n\n"
            );
            let peers = snap(dev).peers;
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].public_key, key(K3));
        }

        pub(crate) fn peer_keys<D: UapiDevice>(dev: &Mutex<D>) {
            let body = format!(
                "public_key={K1}\npreshared_key={K2}\nendpoint=192.0.2.1:51820\n\
                 persistent_keepalive_interval=25\nprotocol_version=1\nallowed_ip=10.0.0.1/24\n\
                 allowed_ip=fd00::1/64\nallowed_ip=0.0.0.0/0\n"
            );
            assert_eq!(set(dev, &body), "errno=0\n\n");
            let p = &snap(dev).peers[0];
            assert_eq!(p.public_key, key(K1));
            assert_eq!(*p.preshared_key.as_bytes(), key(K2));
            assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().expect("addr")));
            assert_eq!(p.persistent_keepalive, 25);
            // Masked; the order is the device's own (MemoryDevice: as added).
            let mut ips = p.allowed_ips.clone();
            ips.sort();
            assert_eq!(
                ips,
                vec![
                    ("0.0.0.0".parse().expect("a"), 0),
                    ("10.0.0.0".parse().expect("a"), 24),
                    ("fd00::".parse().expect("a"), 64),
                ]
            );
            // IPv6 endpoint, removal of one prefix, replacement, psk cleared.
            let body = format!(
                "public_key={K1}\nendpoint=[2001:db8::2]:1\nallowed_ip=-fd00::/64\npreshared_key={ZERO}\n"
            );
            assert_eq!(set(dev, &body), "errno=0\n\n");
            let p = &snap(dev).peers[0];
            assert_eq!(p.endpoint, Some("[2001:db8::2]:1".parse().expect("addr")));
            assert_eq!(p.allowed_ips.len(), 2);
            assert!(p.preshared_key.is_none());
            let body =
                format!("public_key={K1}\nreplace_allowed_ips=true\nallowed_ip=192.168.0.0/16\n");
            assert_eq!(set(dev, &body), "errno=0\n\n");
            assert_eq!(
                snap(dev).peers[0].allowed_ips,
                vec![("192.168.0.0".parse().expect("a"), 16)]
            );
        }

        pub(crate) fn allowed_ip_moves_between_peers<D: UapiDevice>(dev: &Mutex<D>) {
            set(
                dev,
                &format!(
                    "public_key={K1}\nallowed_ip=10.0.0.0/8\npublic_key={K2}\nallowed_ip=10.1.2.3/8\n"
                ),
            );
            let peers = snap(dev).peers;
            assert!(peers[0].allowed_ips.is_empty());
            assert_eq!(
                peers[1].allowed_ips,
                vec![("10.0.0.0".parse().expect("a"), 8)]
            );
            // A prefix of another length inside it is a different prefix: nothing moves.
            set(
                dev,
                &format!(
                    "public_key={K1}
allowed_ip=10.0.0.0/16
"
                ),
            );
            let peers = snap(dev).peers;
            assert_eq!(
                peers[0].allowed_ips,
                vec![("10.0.0.0".parse().expect("a"), 16)]
            );
            assert_eq!(
                peers[1].allowed_ips,
                vec![("10.0.0.0".parse().expect("a"), 8)]
            );
            // And back again; removing it from a peer that no longer has it changes nothing.
            assert_eq!(
                set(
                    dev,
                    &format!(
                        "public_key={K1}\nallowed_ip=10.0.0.0/8\n\
                         public_key={K2}\nallowed_ip=-10.0.0.0/8\n"
                    )
                ),
                "errno=0\n\n"
            );
            let peers = snap(dev).peers;
            let mut ips = peers[0].allowed_ips.clone();
            ips.sort();
            assert_eq!(
                ips,
                vec![
                    ("10.0.0.0".parse().expect("a"), 8),
                    ("10.0.0.0".parse().expect("a"), 16),
                ]
            );
            assert!(peers[1].allowed_ips.is_empty());
        }

        pub(crate) fn persistent_keepalive_on_and_off<D: UapiDevice>(dev: &Mutex<D>) {
            let keepalive = |dev: &Mutex<D>| snap(dev).peers[0].persistent_keepalive;
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\npersistent_keepalive_interval=25\n")
                ),
                "errno=0\n\n"
            );
            assert_eq!(keepalive(dev), 25);
            let get = talk(dev, "get=1\n\n");
            assert!(get.contains("persistent_keepalive_interval=25\n"), "{get}");
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\npersistent_keepalive_interval=0\n")
                ),
                "errno=0\n\n"
            );
            assert_eq!(keepalive(dev), 0);
            let get = talk(dev, "get=1\n\n");
            assert!(get.contains("persistent_keepalive_interval=0\n"), "{get}");
            // The largest value the protocol allows, and a section without the key keeps it.
            set(
                dev,
                &format!("public_key={K1}\npersistent_keepalive_interval=65535\n"),
            );
            set(dev, &format!("public_key={K1}\nendpoint=192.0.2.1:1\n"));
            assert_eq!(keepalive(dev), 65535);
        }

        pub(crate) fn update_only<D: UapiDevice>(dev: &Mutex<D>) {
            // A new peer with update_only is not created.
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\nupdate_only=true\nallowed_ip=10.0.0.0/8\n")
                ),
                "errno=0\n\n"
            );
            assert!(snap(dev).peers.is_empty());
            // Even when update_only comes after other lines of the section.
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\nendpoint=1.2.3.4:5\nupdate_only=true\n")
                ),
                "errno=0\n\n"
            );
            assert!(snap(dev).peers.is_empty());
            // An existing peer is updated.
            set(dev, &format!("public_key={K1}\n"));
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\nupdate_only=true\nendpoint=1.2.3.4:5\n")
                ),
                "errno=0\n\n"
            );
            let s = snap(dev);
            assert_eq!(s.peers.len(), 1);
            assert_eq!(
                s.peers[0].endpoint,
                Some("1.2.3.4:5".parse().expect("addr"))
            );
        }

        pub(crate) fn remove<D: UapiDevice>(dev: &Mutex<D>) {
            set(dev, &format!("public_key={K1}\npublic_key={K2}\n"));
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K1}\nremove=true\nallowed_ip=10.0.0.0/8\n")
                ),
                "errno=0\n\n"
            );
            let peers = snap(dev).peers;
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].public_key, key(K2));
            // Removing a peer that does not exist creates nothing.
            assert_eq!(
                set(dev, &format!("public_key={K3}\nremove=true\n")),
                "errno=0\n\n"
            );
            assert_eq!(snap(dev).peers.len(), 1);
            // Values in a removed section are still validated.
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={K2}\nremove=true\nallowed_ip=bad\n")
                ),
                "errno=-22\n\n"
            );
            assert!(snap(dev).peers.is_empty());
        }

        pub(crate) fn own_public_key_section_is_ignored<D: UapiDevice>(dev: &Mutex<D>) {
            set(dev, &format!("private_key={K1}\n"));
            let own = dev.lock().expect("lock").own_public_key().expect("own key");
            let own_hex: String = own.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                set(
                    dev,
                    &format!("public_key={own_hex}\nallowed_ip=10.0.0.0/8\npublic_key={K2}\n")
                ),
                "errno=0\n\n"
            );
            let peers = snap(dev).peers;
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].public_key, key(K2));
            // Setting a private key whose public key is a peer's removes that peer.
            set(dev, &format!("private_key={ZERO}\npublic_key={own_hex}\n"));
            assert_eq!(snap(dev).peers.len(), 2);
            set(dev, &format!("private_key={K1}\n"));
            assert_eq!(snap(dev).peers.len(), 1);
        }
    }
}
