//! The device's UDP sockets: one IPv4 and one IPv6-only socket on the same port.
//!
//! Port 0 picks a free port for IPv4 and then asks for the same one on IPv6; if another program
//! holds that IPv6 port we try again with a new pick a few times. Either family may be missing
//! on a host, but not both: IPv6 switched off by sysctl (`net.ipv6.conf.all.disable_ipv6`, also
//! what the boot option `ipv6.disable_ipv6=1` sets) or absent from the kernel (`ipv6.disable=1`),
//! or a family the process may not use (systemd's `RestrictAddressFamilies=`). The device then
//! runs on the other family and logs one warning. The API moves slices of datagrams so that
//! recvmmsg/sendmmsg can replace the one-at-a-time calls without changing callers.
//!
//! Sticky source address: on a host with several addresses, a peer expects replies from the
//! address it wrote to (it may filter on it, and a NAT maps that pair only). Each socket reports
//! the local address every datagram arrived at (IP_PKTINFO / IPV6_PKTINFO); the data plane
//! remembers it per peer when a datagram of that peer authenticates ([`UdpSockets::learn_source`]),
//! and handshake replies use the address the handshake message came in on
//! ([`UdpSockets::note_handshake_source`]). Sends to that peer's endpoint then carry it as their
//! source. If the address has gone from the host, the kernel refuses the send: the address is
//! forgotten and the datagram goes again from the route's source.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use rwg_proto::device::PeerId;

use crate::sys;
pub(crate) use crate::sys::udp::{InMsg, LocalAddr, OutMsg, Scratch};

/// Peers whose sticky source is remembered, at most; beyond, the table starts again empty
/// (entries come back with the next authenticated datagram of each peer). Peer ids are never
/// reused, so an entry of a removed peer is only dead weight until then.
const MAX_STICKY_PEERS: usize = 1 << 18;
/// Sources of handshake messages remembered (unauthenticated, so few), at most.
const MAX_HANDSHAKE_SOURCES: usize = 1024;

/// The local addresses replies leave from (see the module's documentation).
#[derive(Debug, Default)]
struct Sticky {
    /// Per peer: the endpoint its authenticated datagram came from and the local address it
    /// was sent to. Used only while the peer's endpoint is still that one.
    peers: RwLock<HashMap<PeerId, (SocketAddr, LocalAddr)>>,
    /// Per source of a handshake message: the local address it was sent to, for the answer
    /// (a handshake response or cookie reply) sent before any data authenticates.
    handshakes: Mutex<HashMap<SocketAddr, LocalAddr>>,
    /// Bumped whenever an entry changes or addresses are forgotten, so that callers caching
    /// what they told know to tell it again.
    generation: AtomicU64,
}

/// How often port 0 is retried when the IPv6 side cannot get IPv4's pick.
const PORT_PICK_ATTEMPTS: usize = 10;

/// The pair of bound sockets.
#[derive(Debug)]
pub struct UdpSockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    port: u16,
    fwmark: u32,
    /// UDP GSO works on the IPv4 / IPv6 socket (cleared at its first EIO/EINVAL).
    gso: [AtomicBool; 2],
    /// A GSO run was refused as too big (EMSGSIZE) and said so in the log.
    told_too_big: AtomicBool,
    sticky: Sticky,
}

/// One datagram received: its length in the caller's buffer and who sent it.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Source address.
    pub from: SocketAddr,
}

/// Binding failed.
#[derive(Debug)]
pub struct BindError {
    /// The port asked for (0 = any).
    pub port: u16,
    /// The underlying error (EADDRINUSE most of the time).
    pub error: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot bind UDP port {}: {}", self.port, self.error)
    }
}

impl std::error::Error for BindError {}

/// Address families unavailable on this host: binding them fails with these, and we go on
/// with the other family. EAFNOSUPPORT is what a kernel booted with `ipv6.disable=1` answers
/// for IPv6, and what a service confined by systemd's `RestrictAddressFamilies=` (a seccomp
/// filter) answers for a family it may not use.
fn family_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

/// The sysctl that turns IPv6 off on every interface (set at run time, or at boot with
/// `ipv6.disable_ipv6=1`). Per network namespace: /proc/sys/net is the reader's namespace's.
const DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/all/disable_ipv6";

/// Whether IPv6 is switched off by sysctl. IPv6 sockets still bind then, but can send to no
/// one, so the device does not open one. (Missing file: no IPv6 in this kernel at all, which
/// binding finds out.)
fn ipv6_disabled_by_sysctl() -> bool {
    std::fs::read_to_string(DISABLE_IPV6).is_ok_and(|v| v.trim() == "1")
}

/// What binding needs from the host: how to bind one socket, and whether IPv6 is switched off.
/// Tests replace either to play a host without one family.
struct Host<'a> {
    bind: &'a dyn Fn(SocketAddr) -> io::Result<UdpSocket>,
    ipv6_disabled: bool,
}

impl Host<'static> {
    fn real() -> Host<'static> {
        Host {
            bind: &sys::udp::bind,
            ipv6_disabled: ipv6_disabled_by_sysctl(),
        }
    }
}

/// Why a family has no socket.
#[derive(Debug)]
enum Missing {
    Unsupported(io::Error),
    Disabled,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Unsupported(e) => write!(f, "{e}"),
            Missing::Disabled => write!(f, "disabled by sysctl ({DISABLE_IPV6} = 1)"),
        }
    }
}

/// A bound pair, with why a family is missing.
struct Pair {
    v4: Result<UdpSocket, Missing>,
    v6: Result<UdpSocket, Missing>,
    port: u16,
}

fn bind_pair(host: &Host<'_>, port: u16) -> io::Result<Pair> {
    let v4 = match (host.bind)(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    ))) {
        Ok(s) => Ok(s),
        Err(e) if family_unsupported(&e) => Err(Missing::Unsupported(e)),
        Err(e) => return Err(e),
    };
    let port = match &v4 {
        Ok(s) => s.local_addr()?.port(),
        Err(_) => port,
    };
    let v6 = if host.ipv6_disabled {
        Err(Missing::Disabled)
    } else {
        match (host.bind)(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            port,
            0,
            0,
        ))) {
            Ok(s) => Ok(s),
            Err(e) if family_unsupported(&e) => Err(Missing::Unsupported(e)),
            Err(e) => return Err(e),
        }
    };
    let port = match (&v4, &v6) {
        (_, Ok(s)) => s.local_addr()?.port(),
        (Ok(_), Err(_)) => port,
        (Err(a), Err(b)) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this host offers neither IPv4 ({a}) nor IPv6 ({b})"),
            ))
        }
    };
    Ok(Pair { v4, v6, port })
}

/// Whether a warning was logged for a missing IPv4 / IPv6: once per process is enough (the
/// sockets are bound again at every listen-port change).
static MISSING_LOGGED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

fn log_missing(family: usize, why: &Missing) {
    let (name, other) = if family == 0 {
        ("IPv4", "IPv6")
    } else {
        ("IPv6", "IPv4")
    };
    if MISSING_LOGGED[family].swap(true, Ordering::Relaxed) {
        tracing::debug!("{name} unavailable ({why}): UDP on {other} only");
    } else {
        tracing::warn!(
            "{name} unavailable on this host ({why}): UDP on {other} only; peers with {name} endpoints cannot be reached"
        );
    }
}

impl UdpSockets {
    /// Binds both families on `port` (0 = pick one free on both). A host without one family
    /// (IPv6 switched off by sysctl or at boot, a family the process may not use) gets sockets
    /// of the other, with a warning in the log; a host with neither is an error.
    pub fn bind(port: u16) -> Result<UdpSockets, BindError> {
        UdpSockets::bind_on(&Host::real(), port)
    }

    fn bind_on(host: &Host<'_>, port: u16) -> Result<UdpSockets, BindError> {
        let attempts = if port == 0 { PORT_PICK_ATTEMPTS } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            match bind_pair(host, port) {
                Ok(Pair { v4, v6, port }) => {
                    if let Err(why) = &v4 {
                        log_missing(0, why);
                    }
                    if let Err(why) = &v6 {
                        log_missing(1, why);
                    }
                    return Ok(UdpSockets {
                        v4: v4.ok(),
                        v6: v6.ok(),
                        port,
                        fwmark: 0,
                        gso: [AtomicBool::new(true), AtomicBool::new(true)],
                        told_too_big: AtomicBool::new(false),
                        sticky: Sticky::default(),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => last = Some(e),
                Err(error) => return Err(BindError { port, error }),
            }
        }
        Err(BindError {
            port,
            error: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EADDRINUSE)),
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fwmark set on the sockets (0 = none).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// Sets SO_MARK on both sockets; 0 clears it.
    pub fn set_fwmark(&mut self, mark: u32) -> io::Result<()> {
        for s in self.v4.iter().chain(self.v6.iter()) {
            sys::udp::set_mark(s, mark)?;
        }
        self.fwmark = mark;
        Ok(())
    }

    /// The mark the kernel holds for the IPv4 (else IPv6) socket.
    pub fn fwmark_from_kernel(&self) -> io::Result<u32> {
        match self.v4.as_ref().or(self.v6.as_ref()) {
            Some(s) => sys::udp::mark(s),
            None => Ok(0),
        }
    }

    /// Binds a new pair on `port` and, only if that worked, replaces the old one (keeping the
    /// fwmark). On failure the old sockets stay in use.
    pub fn rebind(&mut self, port: u16) -> Result<(), BindError> {
        if port != 0 && port == self.port {
            return Ok(());
        }
        // The old pair still holds its port; a new explicit port that equals it is handled
        // above, anything else does not conflict with it.
        let mut new = UdpSockets::bind(port)?;
        if self.fwmark != 0 {
            new.set_fwmark(self.fwmark)
                .map_err(|error| BindError { port, error })?;
        }
        *self = new;
        Ok(())
    }

    /// The IPv4 socket, if the host has IPv4.
    pub fn v4(&self) -> Option<&UdpSocket> {
        self.v4.as_ref()
    }

    /// The IPv6 socket, if the host has IPv6.
    pub fn v6(&self) -> Option<&UdpSocket> {
        self.v6.as_ref()
    }

    fn socket_for(&self, to: &SocketAddr) -> io::Result<&UdpSocket> {
        let s = match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        s.ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    /// Sends one datagram through the socket of `to`'s family.
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket_for(&to)?.send_to(datagram, to)?;
        Ok(())
    }

    /// Turns UDP GRO on for both sockets (see [`recv_msgs`]); false if the kernel refused.
    pub(crate) fn enable_gro(&self) -> bool {
        let mut ok = true;
        for s in self.v4.iter().chain(self.v6.iter()) {
            if let Err(e) = sys::udp::enable_gro(s) {
                tracing::info!(error = %e, "UDP GRO not available; receiving datagrams one by one");
                ok = false;
            }
        }
        ok
    }

    /// Stops using UDP GSO (a switch, or no GSO on this host).
    pub(crate) fn disable_gso(&self) {
        for g in &self.gso {
            g.store(false, Ordering::Relaxed);
        }
    }

    /// Sends `msgs` (datagrams, or GSO runs of them, gathered from `parts`) in order, IPv4 ones
    /// out of the IPv4 socket and IPv6 ones out of the IPv6 socket, with as few `sendmmsg`
    /// calls as the order allows. A GSO run the kernel refuses with EIO or EINVAL (no GSO on the
    /// path) turns GSO off for that socket, logged once, and goes out datagram by datagram;
    /// any other failure drops that message. `sent[i]` gets the UDP payload bytes the kernel
    /// took of message `i`; the total is returned.
    pub(crate) fn send_msgs(
        &self,
        msgs: &[OutMsg],
        parts: &[&[u8]],
        scratch: &mut Scratch,
        sent: &mut [usize],
    ) -> u64 {
        sent.iter_mut().for_each(|s| *s = 0);
        let mut sent_bytes = 0u64;
        let mut i = 0;
        while i < msgs.len() {
            let v6 = msgs[i].to.is_ipv6();
            let end = msgs[i..]
                .iter()
                .position(|m| m.to.is_ipv6() != v6)
                .map_or(msgs.len(), |p| i + p);
            let Ok(sock) = self.socket_for(&msgs[i].to) else {
                i = end;
                continue;
            };
            let gso = &self.gso[usize::from(v6)];
            let mut j = i;
            while j < end {
                let chunk = &msgs[j..end];
                match sys::udp::send_mmsg(sock, chunk, parts, scratch) {
                    Ok(n) if n > 0 => {
                        for (k, m) in chunk[..n].iter().enumerate() {
                            let bytes: usize = parts[m.parts.clone()].iter().map(|p| p.len()).sum();
                            sent_bytes += bytes as u64;
                            if let Some(s) = sent.get_mut(j + k) {
                                *s = bytes;
                            }
                        }
                        j += n;
                    }
                    Ok(_) => j += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Socket buffer full: wait until it drains a little, then retry.
                        let _ = sys::poll::wait_writable(sock, 100);
                    }
                    Err(e)
                        if chunk[0].source.is_some()
                            && matches!(
                                e.raw_os_error(),
                                Some(
                                    libc::EINVAL
                                        | libc::EADDRNOTAVAIL
                                        | libc::ENETUNREACH
                                        | libc::EHOSTUNREACH
                                )
                            ) =>
                    {
                        // The source address is no longer ours (EINVAL, EADDRNOTAVAIL), or
                        // no route leaves from it (ENETUNREACH, EHOSTUNREACH: what the kernel
                        // answers for an address it does not have when no route matches it):
                        // forget it and send from the route's.
                        let m = &chunk[0];
                        if let Some(source) = m.source {
                            tracing::debug!(error = %e, source = %source.ip, destination = %m.to, "source address refused; forgetting it");
                            self.forget_source(source.ip);
                        }
                        let again = [OutMsg {
                            source: None,
                            ..m.clone()
                        }];
                        let mut took = [0usize];
                        sent_bytes += self.send_msgs(&again, parts, scratch, &mut took);
                        if let Some(s) = sent.get_mut(j) {
                            *s = took[0];
                        }
                        j += 1;
                    }
                    Err(e) => {
                        let m = &chunk[0];
                        let gso_refused = m.segment != 0
                            && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL));
                        if gso_refused && gso.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one on this socket");
                        }
                        // EMSGSIZE: a run longer than one send may be (a caller bug); its
                        // datagrams still go, one by one.
                        let too_big = m.segment != 0 && e.raw_os_error() == Some(libc::EMSGSIZE);
                        if too_big && !self.told_too_big.swap(true, Ordering::Relaxed) {
                            tracing::info!(
                                destination = %m.to,
                                segment = m.segment,
                                "a GSO run was refused as too big (is the tunnel MTU above what the path carries?); sending its datagrams one by one"
                            );
                        }
                        if gso_refused || too_big {
                            let bytes = self.send_unsegmented(sock, m, parts, scratch);
                            sent_bytes += bytes;
                            if let Some(s) = sent.get_mut(j) {
                                *s = bytes as usize;
                            }
                        } else {
                            tracing::debug!(error = %e, destination = %m.to, "send failed");
                        }
                        j += 1;
                    }
                }
            }
            i = end;
        }
        sent_bytes
    }

    /// Whether GSO may be used towards `to`.
    pub(crate) fn gso_enabled(&self, to: &SocketAddr) -> bool {
        self.gso[usize::from(to.is_ipv6())].load(Ordering::Relaxed)
    }

    /// Sends the datagrams of a GSO run one by one.
    fn send_unsegmented(
        &self,
        sock: &UdpSocket,
        m: &OutMsg,
        parts: &[&[u8]],
        scratch: &mut Scratch,
    ) -> u64 {
        let mut whole = Vec::new();
        for p in &parts[m.parts.clone()] {
            whole.extend_from_slice(p);
        }
        let mut sent = 0;
        for d in whole.chunks(usize::from(m.segment).max(1)) {
            let one = [OutMsg {
                to: m.to,
                parts: 0..1,
                segment: 0,
                source: m.source,
            }];
            if let Ok(1) = sys::udp::send_mmsg(sock, &one, &[d], scratch) {
                sent += d.len() as u64;
            }
        }
        sent
    }

    /// Remembers that an authenticated datagram of `peer` came from `endpoint` to `local`:
    /// what goes to that peer at that endpoint leaves from `local`. Cheap when nothing changed
    /// (a read lock).
    pub(crate) fn learn_source(&self, peer: PeerId, endpoint: SocketAddr, local: LocalAddr) {
        let known = self
            .sticky
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|&(e, l)| e == endpoint && l == local);
        if known {
            return;
        }
        let mut peers = self.sticky.peers.write().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_STICKY_PEERS && !peers.contains_key(&peer) {
            peers.clear();
        }
        peers.insert(peer, (endpoint, local));
        // Another reader (the other family's) may cache what it told before this change.
        self.sticky.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers that a handshake message from `from` was sent to `local` (not authenticated:
    /// used only for the answer to `from` until a datagram of the peer authenticates).
    pub(crate) fn note_handshake_source(&self, from: SocketAddr, local: LocalAddr) {
        let mut h = self
            .sticky
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if h.len() >= MAX_HANDSHAKE_SOURCES && !h.contains_key(&from) {
            h.clear();
        }
        h.insert(from, local);
    }

    /// The local address to send to `to` from, for `peer` (None: a cookie reply) — None when
    /// nothing was learned, and the route decides.
    pub(crate) fn source_for(&self, peer: Option<PeerId>, to: SocketAddr) -> Option<LocalAddr> {
        if let Some(peer) = peer {
            let peers = self.sticky.peers.read().unwrap_or_else(|e| e.into_inner());
            if let Some(&(endpoint, local)) = peers.get(&peer) {
                if endpoint == to {
                    return Some(local);
                }
            }
        }
        self.sticky
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .copied()
    }

    /// Forgets every use of the local address `ip` (the kernel refused it as a source).
    fn forget_source(&self, ip: std::net::IpAddr) {
        self.sticky
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, l)| l.ip != ip);
        self.sticky
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| l.ip != ip);
        self.sticky.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes whenever a learned source changes or is forgotten: a caller that skips telling
    /// [`learn_source`](Self::learn_source) what it told before must tell it again then (the
    /// peer may have roamed to the other family's socket and back in between).
    pub(crate) fn sticky_generation(&self) -> u64 {
        self.sticky.generation.load(Ordering::Relaxed)
    }

    /// Sends the datagrams of a control-path transmit (handshake messages, keepalives, staged
    /// packets) one by one to `to`, from the peer's sticky source if one is known. Returns the
    /// bytes the socket took.
    pub(crate) fn send_transmit<'a>(
        &self,
        datagrams: impl Iterator<Item = &'a [u8]>,
        to: SocketAddr,
        peer: Option<PeerId>,
        scratch: &mut Scratch,
    ) -> usize {
        let source = self.source_for(peer, to);
        let mut took = 0;
        for d in datagrams {
            let msg = [OutMsg {
                to,
                parts: 0..1,
                segment: 0,
                source,
            }];
            let mut sent = [0usize];
            self.send_msgs(&msg, &[d], scratch, &mut sent);
            took += sent[0];
        }
        took
    }

    /// Sends datagrams in order; returns how many were sent before the first error (which is
    /// returned only if nothing was sent).
    pub fn send_batch(&self, datagrams: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        for (i, (d, to)) in datagrams.iter().enumerate() {
            if let Err(e) = self.send_to(d, *to) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(datagrams.len())
    }
}

/// Sets SO_MARK on one socket (0 clears it); [`UdpSockets::set_fwmark`] for the pair.
pub fn set_socket_mark(socket: &UdpSocket, mark: u32) -> io::Result<()> {
    sys::udp::set_mark(socket, mark)
}

/// Waits until `socket` has a datagram or `timeout_ms` passes; returns whether it has.
pub fn wait_readable(socket: &UdpSocket, timeout_ms: i32) -> io::Result<bool> {
    sys::poll::wait_readable(socket, timeout_ms)
}

/// Receives up to `out.len()` messages from one socket with one `recvmmsg`, message `i` at
/// `buf[i * stride..]`. With GRO on, a message may hold several datagrams of one source back to
/// back ([`InMsg::segment`] long each, the last possibly shorter).
pub(crate) fn recv_msgs(
    socket: &UdpSocket,
    buf: &mut [u8],
    stride: usize,
    out: &mut [InMsg],
    scratch: &mut Scratch,
) -> io::Result<usize> {
    sys::udp::recv_mmsg(socket, buf, stride, out, scratch)
}

/// Receives from one socket of the pair. Each family is read by its own thread.
pub fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [&mut [u8]],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
        return Ok(0);
    };
    loop {
        match socket.recv_from(buf) {
            Ok((len, from)) => {
                *m = RecvMeta { len, from };
                return Ok(1);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_meta() -> RecvMeta {
        RecvMeta {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    #[test]
    fn explicit_port_taken_and_rebind() {
        let mut s = UdpSockets::bind(0).expect("bind");
        let port = s.port();
        assert_ne!(port, 0);
        let v4 = s.v4().expect("the host has IPv4");
        assert_eq!(v4.local_addr().expect("addr").port(), port);
        // Another pair cannot take an explicit port we hold.
        let taken = UdpSockets::bind(port).expect_err("port is taken");
        assert_eq!(taken.error.raw_os_error(), Some(libc::EADDRINUSE));
        // Rebinding to a taken port leaves the old sockets in place.
        let other = UdpSockets::bind(0).expect("bind other");
        assert!(s.rebind(other.port()).is_err());
        assert_eq!(s.port(), port);
        assert_eq!(s.v4().expect("v4").local_addr().expect("addr").port(), port);
        s.rebind(0).expect("rebind");
        assert_ne!(s.port(), 0);
        assert_eq!(
            s.v4().expect("v4").local_addr().expect("addr").port(),
            s.port()
        );
        // Loopback round trip over the new sockets.
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(b"hello", ("127.0.0.1", s.port()))
            .expect("send");
        let mut buf = [0u8; 64];
        let mut meta = [no_meta()];
        let v4 = s.v4().expect("v4");
        let n = recv_batch(v4, &mut [&mut buf[..]], &mut meta).expect("recv");
        assert_eq!(n, 1);
        assert_eq!(&buf[..meta[0].len], b"hello");
        assert_eq!(meta[0].from, peer.local_addr().expect("addr"));
        s.send_batch(&[(b"back", meta[0].from)]).expect("send back");
        let (len, _) = peer.recv_from(&mut buf).expect("recv back");
        assert_eq!(&buf[..len], b"back");
    }

    /// `sent[i]` is what the kernel took of message `i`: the whole message when it went out
    /// (alone or as a GSO run), nothing when it was refused. Drivers take the difference off
    /// the peer's tx_bytes, so a success counted as zero would zero the counter.
    #[test]
    fn send_msgs_reports_what_each_message_delivered() {
        let s = UdpSockets::bind(0).expect("bind");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        let to = peer.local_addr().expect("addr");
        // Port 0 is refused by the kernel (EINVAL) without touching the other messages.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
        let parts: [&[u8]; 5] = [b"hello", b"x", b"abcd", b"efgh", b"ij"];
        let msgs = [
            OutMsg {
                to,
                parts: 0..1,
                segment: 0,
                source: None,
            },
            OutMsg {
                to: nowhere,
                parts: 1..2,
                segment: 0,
                source: None,
            },
            // A GSO run of two 4-byte segments and a shorter last one.
            OutMsg {
                to,
                parts: 2..5,
                segment: 4,
                source: None,
            },
        ];
        let mut scratch = Scratch::new(8);
        let mut sent = [usize::MAX; 3];
        let total = s.send_msgs(&msgs, &parts, &mut scratch, &mut sent);
        assert_eq!(sent, [5, 0, 10]);
        assert_eq!(total, 15);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            let (len, _) = peer.recv_from(&mut buf).expect("recv");
            got.push(buf[..len].to_vec());
        }
        assert_eq!(got, [&b"hello"[..], b"abcd", b"efgh", b"ij"]);
    }

    /// Replies to a handshake leave from the address it came to; an address the host does not
    /// have is forgotten at the first refused send, and that datagram goes from the route's.
    #[test]
    fn replies_leave_from_the_noted_source_and_a_refused_one_is_dropped() {
        let s = UdpSockets::bind(0).expect("bind");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let to = peer.local_addr().expect("addr");
        let mut scratch = Scratch::new(1);
        let mut buf = [0u8; 64];
        assert_eq!(s.source_for(None, to), None, "nothing learned yet");
        let two = LocalAddr {
            ip: [127, 0, 0, 2].into(),
            ifindex: 0,
        };
        s.note_handshake_source(to, two);
        assert_eq!(s.source_for(None, to), Some(two));
        let took = s.send_transmit([&b"hello"[..]].into_iter(), to, None, &mut scratch);
        assert_eq!(took, 5);
        let (len, from) = peer.recv_from(&mut buf).expect("reply");
        assert_eq!((&buf[..len], from.ip()), (&b"hello"[..], two.ip));
        // Another destination is not affected.
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], to.port().wrapping_add(1)));
        assert_eq!(s.source_for(None, elsewhere), None);

        let generation = s.sticky_generation();
        let gone = LocalAddr {
            ip: [192, 0, 2, 1].into(),
            ifindex: 0,
        };
        s.note_handshake_source(to, gone);
        let took = s.send_transmit([&b"again"[..]].into_iter(), to, None, &mut scratch);
        assert_eq!(took, 5, "sent after all, from the route's address");
        let (len, from) = peer.recv_from(&mut buf).expect("reply");
        assert_eq!(
            (&buf[..len], from.ip()),
            (&b"again"[..], std::net::IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(
            s.source_for(None, to),
            None,
            "the refused address is forgotten"
        );
        assert_ne!(s.sticky_generation(), generation);
    }

    #[test]
    #[ignore = "needs IPv6 on the host (an address on lo): run with cargo test -- --ignored"]
    fn both_families_on_one_port() {
        let mut s = UdpSockets::bind(0).expect("bind");
        for _ in 0..2 {
            let port = s.port();
            let v4 = s.v4().expect("IPv4 socket");
            let v6 = s.v6().expect("IPv6 socket: does the host have IPv6?");
            assert_eq!(v4.local_addr().expect("addr").port(), port);
            assert_eq!(v6.local_addr().expect("addr").port(), port);
            // The IPv6 socket is IPv6-only (else it could not share the port) and works.
            let peer = UdpSocket::bind("[::1]:0").expect("IPv6 peer");
            peer.send_to(b"six", ("::1", port)).expect("send");
            let mut buf = [0u8; 16];
            let mut meta = [no_meta()];
            let n = recv_batch(v6, &mut [&mut buf[..]], &mut meta).expect("recv");
            assert_eq!(n, 1);
            assert_eq!(&buf[..meta[0].len], b"six");
            assert_eq!(meta[0].from, peer.local_addr().expect("addr"));
            s.send_to(b"back", meta[0].from).expect("send back");
            let (len, _) = peer.recv_from(&mut buf).expect("recv back");
            assert_eq!(&buf[..len], b"back");
            // Rebinding keeps both families on one new port.
            s.rebind(0).expect("rebind");
        }
    }

    /// A host where binding `family` fails with `errno`, and the other family binds for real.
    fn failing(v6: bool, errno: i32) -> impl Fn(SocketAddr) -> io::Result<UdpSocket> {
        move |addr: SocketAddr| {
            if addr.is_ipv6() == v6 {
                Err(io::Error::from_raw_os_error(errno))
            } else {
                sys::udp::bind(addr)
            }
        }
    }

    #[test]
    fn without_ipv4_the_device_runs_on_ipv6_alone() {
        // What socket(AF_INET) answers under systemd's RestrictAddressFamilies=AF_INET6.
        let bind = failing(false, libc::EAFNOSUPPORT);
        let host = Host {
            bind: &bind,
            ipv6_disabled: false,
        };
        let s = UdpSockets::bind_on(&host, 0).expect("IPv6 alone is enough");
        assert!(s.v4().is_none());
        let v6 = s.v6().expect("the IPv6 socket");
        assert_ne!(s.port(), 0);
        assert_eq!(v6.local_addr().expect("addr").port(), s.port());
        // Sending to an IPv4 peer fails cleanly instead of going anywhere.
        let err = s
            .send_to(b"x", SocketAddr::from(([127, 0, 0, 1], 9)))
            .expect_err("no IPv4 socket");
        assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT));
    }

    #[test]
    fn with_ipv6_off_the_device_runs_on_ipv4_alone() {
        let bind = |addr: SocketAddr| {
            assert!(addr.is_ipv4(), "no IPv6 socket is even tried: {addr}");
            sys::udp::bind(addr)
        };
        let host = Host {
            bind: &bind,
            ipv6_disabled: true,
        };
        let s = UdpSockets::bind_on(&host, 0).expect("IPv4 alone is enough");
        assert!(s.v6().is_none());
        let v4 = s.v4().expect("the IPv4 socket");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(b"four", ("127.0.0.1", s.port()))
            .expect("send");
        let mut buf = [0u8; 16];
        let mut meta = [no_meta()];
        assert_eq!(
            recv_batch(v4, &mut [&mut buf[..]], &mut meta).expect("recv"),
            1
        );
        assert_eq!(&buf[..meta[0].len], b"four");
        // A kernel without IPv6 at all (ipv6.disable=1) answers EAFNOSUPPORT: the same result.
        let bind = failing(true, libc::EAFNOSUPPORT);
        let host = Host {
            bind: &bind,
            ipv6_disabled: false,
        };
        let s = UdpSockets::bind_on(&host, 0).expect("IPv4 alone is enough");
        assert!(s.v6().is_none() && s.v4().is_some());
    }

    #[test]
    fn a_host_with_neither_family_is_an_error_that_says_why() {
        let bind = |_: SocketAddr| -> io::Result<UdpSocket> {
            Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
        };
        let host = Host {
            bind: &bind,
            ipv6_disabled: false,
        };
        let e = UdpSockets::bind_on(&host, 51820).expect_err("nothing to bind");
        let text = e.to_string();
        assert!(text.contains("51820"), "{text}");
        assert!(text.contains("neither IPv4"), "{text}");
        assert!(text.contains("nor IPv6"), "{text}");
        let bind = failing(false, libc::EAFNOSUPPORT);
        let host = Host {
            bind: &bind,
            ipv6_disabled: true,
        };
        let text = UdpSockets::bind_on(&host, 0)
            .expect_err("IPv4 missing, IPv6 off")
            .to_string();
        assert!(text.contains("disable_ipv6 = 1"), "{text}");
    }

    #[test]
    fn other_bind_errors_are_not_taken_for_a_missing_family() {
        // Permission denied (an LSM) is a problem to report, not a family to do without.
        for v6 in [false, true] {
            let bind = failing(v6, libc::EACCES);
            let host = Host {
                bind: &bind,
                ipv6_disabled: false,
            };
            let e = UdpSockets::bind_on(&host, 0).expect_err("EACCES is an error");
            assert_eq!(e.error.raw_os_error(), Some(libc::EACCES), "v6 {v6}");
        }
    }

    /// Whether this process may use SO_RCVBUFFORCE (CAP_NET_ADMIN in its effective set).
    fn has_net_admin() -> bool {
        const CAP_NET_ADMIN: u32 = 12;
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff line");
        let eff = u64::from_str_radix(eff.trim(), 16).expect("hex capabilities");
        eff & (1 << CAP_NET_ADMIN) != 0
    }

    fn sysctl(name: &str) -> libc::c_int {
        let path = format!("/proc/sys/net/core/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.trim().parse().expect("number")
    }

    #[test]
    fn socket_buffers_are_raised() {
        let s = UdpSockets::bind(0).expect("bind");
        for sock in [s.v4(), s.v6()].into_iter().flatten() {
            for (option, max) in [
                (libc::SO_RCVBUF, sysctl("rmem_max")),
                (libc::SO_SNDBUF, sysctl("wmem_max")),
            ] {
                let got = sys::udp::int_option(sock, libc::SOL_SOCKET, option).expect("getsockopt");
                // The kernel stores (and reports) double the size set. With CAP_NET_ADMIN the
                // FORCE option ignores the system maximum; without, the plain one is capped.
                let asked = if has_net_admin() {
                    sys::udp::SOCKET_BUFFER
                } else {
                    sys::udp::SOCKET_BUFFER.min(max)
                };
                assert_eq!(got, 2 * asked, "option {option}, rmem/wmem_max {max}");
            }
        }
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN for SO_MARK: run with cargo test -- --ignored as root"]
    fn fwmark_set_and_clear() {
        let mut s = UdpSockets::bind(0).expect("bind");
        s.set_fwmark(0x1234)
            .expect("set_fwmark (needs CAP_NET_ADMIN)");
        assert_eq!(s.fwmark(), 0x1234);
        for sock in [s.v4(), s.v6()].into_iter().flatten() {
            assert_eq!(sys::udp::mark(sock).expect("mark"), 0x1234);
        }
        // A new pair keeps the mark.
        s.rebind(0).expect("rebind");
        for sock in [s.v4(), s.v6()].into_iter().flatten() {
            assert_eq!(sys::udp::mark(sock).expect("mark"), 0x1234);
        }
        s.set_fwmark(0).expect("clear");
        assert_eq!(s.fwmark_from_kernel().expect("mark"), 0);
        for sock in [s.v4(), s.v6()].into_iter().flatten() {
            assert_eq!(sys::udp::mark(sock).expect("mark"), 0);
        }
    }
}
