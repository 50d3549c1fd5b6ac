//! Batched datagram I/O on one UDP socket that someone else owns (rwg proxy's): many datagrams
//! per system call, with the daemon's system calls and fallbacks.
//!
//! - **Send**: consecutive datagrams to one address, all of one size but the last, go out as
//!   one UDP GSO message (the kernel cuts it into datagrams); every message of the batch goes
//!   in one `sendmmsg`. A GSO message the kernel refuses with EIO or EINVAL (no GSO here) turns
//!   GSO off for good, logged once; its datagrams and those after go one by one (still one
//!   `sendmmsg` per batch). Never blocks: what a full socket buffer refuses is reported unsent.
//! - **Receive**: `recvmmsg`, with UDP GRO when the kernel has it (a message then holds several
//!   datagrams of one source back to back, with their size).
//!
//! Send and receive keep separate scratch space, so one task may send while another receives.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::offload::MAX_SEGMENTS;
use crate::sys;
use crate::sys::udp::{InMsg, OutMsg, Scratch};

/// Most UDP payload bytes one GSO message may carry: 65535 − 20 (IPv4) − 8 (UDP). Larger fails
/// with EMSGSIZE.
pub(crate) const MAX_GSO_BYTES: usize = 65507;
/// Messages per system call, at most (a batch with more takes more calls).
const MAX_MESSAGES: usize = 64;

/// What one received message held (see [`BatchIo::recv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received in the message.
    pub len: usize,
    /// Their source.
    pub from: SocketAddr,
    /// GRO: each datagram is this long, the last possibly shorter; 0 = one datagram.
    pub segment: usize,
}

/// Batched send and receive on any UDP socket; see the [module documentation](self).
pub struct BatchIo {
    gso: AtomicBool,
    send_scratch: Mutex<Scratch>,
    recv_scratch: Mutex<(Scratch, Vec<InMsg>)>,
}

impl std::fmt::Debug for BatchIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchIo")
            .field("gso", &self.gso.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BatchIo {
    /// Batches with UDP GSO on send if `gso` (and the kernel takes it).
    pub fn new(gso: bool) -> BatchIo {
        BatchIo {
            gso: AtomicBool::new(gso),
            send_scratch: Mutex::new(Scratch::new(MAX_MESSAGES)),
            recv_scratch: Mutex::new((Scratch::new(MAX_MESSAGES), Vec::new())),
        }
    }

    /// Turns UDP GRO on for `socket`; false (logged) if the kernel refused: datagrams then
    /// arrive one per message.
    pub fn enable_gro(socket: &UdpSocket) -> bool {
        match sys::udp::enable_gro(socket) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "UDP GRO not available; receiving datagrams one by one");
                false
            }
        }
    }

    /// Whether sends still use GSO.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends `datagrams` in order on the non-blocking `socket`; `sent[i]` tells whether the
    /// socket took datagram `i` (a full send buffer refuses the rest of the batch).
    pub fn send(&self, socket: &UdpSocket, datagrams: &[(&[u8], SocketAddr)], sent: &mut [bool]) {
        sent.iter_mut().for_each(|s| *s = false);
        let parts: Vec<&[u8]> = datagrams.iter().map(|(d, _)| *d).collect();
        let mut scratch = self.send_scratch.lock().unwrap_or_else(|e| e.into_inner());
        let msgs = group(datagrams, self.gso());
        let mut j = 0;
        while j < msgs.len() {
            match sys::udp::send_mmsg(socket, &msgs[j..], &parts, &mut scratch) {
                Ok(n) if n > 0 => {
                    for m in &msgs[j..j + n] {
                        sent[m.parts.clone()].iter_mut().for_each(|s| *s = true);
                    }
                    j += n;
                }
                Ok(_) => j += 1,
                // The socket buffer is full: the rest is dropped (the caller counts it).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let m = &msgs[j];
                    let refused = m.segment != 0
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
                    if refused && self.gso.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one");
                    }
                    if refused || (m.segment != 0 && e.raw_os_error() == Some(libc::EMSGSIZE)) {
                        // The same datagrams, each its own message.
                        let singles: Vec<OutMsg> = m
                            .parts
                            .clone()
                            .map(|i| OutMsg {
                                to: m.to,
                                parts: i..i + 1,
                                segment: 0,
                                source: None,
                            })
                            .collect();
                        let mut k = 0;
                        while k < singles.len() {
                            match sys::udp::send_mmsg(socket, &singles[k..], &parts, &mut scratch) {
                                Ok(n) if n > 0 => {
                                    for s in &singles[k..k + n] {
                                        sent[s.parts.start] = true;
                                    }
                                    k += n;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                                _ => k += 1,
                            }
                        }
                    } else {
                        tracing::debug!(error = %e, destination = %m.to, "send failed");
                    }
                    j += 1;
                }
            }
        }
    }

    /// Receives up to `out.len()` messages from the non-blocking `socket` with one
    /// `recvmmsg`, message `i` at `buf[i * stride..][..stride]`; `WouldBlock` if none waits.
    pub fn recv(
        &self,
        socket: &UdpSocket,
        buf: &mut [u8],
        stride: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        let mut guard = self.recv_scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (scratch, msgs) = &mut *guard;
        let empty = InMsg {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
            local: None,
        };
        msgs.resize(out.len().min(MAX_MESSAGES), empty);
        let n = sys::udp::recv_mmsg(socket, buf, stride, msgs, scratch)?;
        for (o, m) in out.iter_mut().zip(&msgs[..n]) {
            *o = Received {
                len: m.len,
                from: m.from,
                segment: m.segment,
            };
        }
        Ok(n)
    }
}

/// Whether a datagram of `len` bytes to `to` may join the GSO message `m` (whose last datagram
/// is `last_len` bytes): same destination, every datagram so far of the segment size (only the
/// last may be shorter), room for one more segment (`MAX_SEGMENTS`, the kernel's limit on
/// older kernels) and within [`MAX_GSO_BYTES`]. The daemon's send path uses it too.
pub(crate) fn extends_run(m: &OutMsg, last_len: usize, to: SocketAddr, len: usize) -> bool {
    let seg = usize::from(m.segment);
    m.to == to
        && m.parts.len() < MAX_SEGMENTS
        && last_len == seg
        && len <= seg
        && (m.parts.len() + 1) * seg <= MAX_GSO_BYTES
}

/// The messages for `datagrams`: runs to one address of equal sizes (the last may be shorter)
/// become one GSO message when `gso`, everything else a message each. `parts` of each message
/// index `datagrams`.
fn group(datagrams: &[(&[u8], SocketAddr)], gso: bool) -> Vec<OutMsg> {
    let mut msgs: Vec<OutMsg> = Vec::new();
    for (i, (data, to)) in datagrams.iter().enumerate() {
        let joins = gso
            && msgs.last().is_some_and(|m| {
                extends_run(m, datagrams[m.parts.end - 1].0.len(), *to, data.len())
            });
        match msgs.last_mut() {
            Some(m) if joins => m.parts.end += 1,
            _ => msgs.push(OutMsg {
                to: *to,
                parts: i..i + 1,
                // A datagram too big for a GSO segment size goes alone.
                segment: if gso {
                    u16::try_from(data.len()).unwrap_or(0)
                } else {
                    0
                },
                source: None,
            }),
        }
    }
    // A run of one needs no GSO header.
    for m in &mut msgs {
        if m.parts.len() == 1 {
            m.segment = 0;
        }
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn runs_of_one_size_to_one_address_become_one_message() {
        let (a, b, c) = (vec![1u8; 100], vec![2u8; 100], vec![3u8; 60]);
        let d = vec![4u8; 100];
        let batch: Vec<(&[u8], SocketAddr)> = vec![
            (&a, addr(1)),
            (&b, addr(1)),
            (&c, addr(1)), // shorter: ends the run
            (&d, addr(1)),
            (&a, addr(2)), // another address
            (&b, addr(2)),
        ];
        let shape = |gso| {
            group(&batch, gso)
                .iter()
                .map(|m| (m.parts.clone(), m.segment))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(true), vec![(0..3, 100), (3..4, 0), (4..6, 100)]);
        assert_eq!(
            shape(false),
            (0..6).map(|i| (i..i + 1, 0)).collect::<Vec<_>>()
        );
        // A longer datagram after the run starts a new message.
        let big = vec![5u8; 200];
        let grow: Vec<(&[u8], SocketAddr)> = vec![(&a, addr(1)), (&big, addr(1))];
        let got: Vec<_> = group(&grow, true).iter().map(|m| m.parts.clone()).collect();
        assert_eq!(got, vec![0..1, 1..2]);
    }

    #[test]
    fn a_batch_arrives_whole_with_and_without_offloads() {
        for (gso, gro) in [(true, true), (false, false), (true, false), (false, true)] {
            let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            rx.set_nonblocking(true).expect("nonblocking");
            let got_gro = gro && BatchIo::enable_gro(&rx);
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            tx.set_nonblocking(true).expect("nonblocking");
            let to = rx.local_addr().expect("addr");
            // 20 full datagrams, one short, then 5 more: two GSO runs and a single.
            let payloads: Vec<Vec<u8>> = (0..26u8)
                .map(|i| vec![i; if i == 20 { 300 } else { 1200 }])
                .collect();
            let batch: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
            let io = BatchIo::new(gso);
            let mut sent = vec![false; batch.len()];
            io.send(&tx, &batch, &mut sent);
            assert!(sent.iter().all(|s| *s), "gso {gso}: {sent:?}");

            let stride = 65536;
            let mut buf = vec![0u8; 4 * stride];
            let mut out = [Received {
                len: 0,
                from: to,
                segment: 0,
            }; 4];
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut coalesced = false;
            // Loopback has them all queued once send returns; bounded in case it has not.
            for _ in 0..10_000 {
                if seen.len() >= payloads.len() {
                    break;
                }
                let n = match io.recv(&rx, &mut buf, stride, &mut out) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::yield_now();
                        continue;
                    }
                    Err(e) => panic!("recv: {e}"),
                };
                for (i, m) in out[..n].iter().enumerate() {
                    assert_eq!(m.from, tx.local_addr().expect("addr"));
                    let message = &buf[i * stride..i * stride + m.len];
                    let step = if m.segment == 0 { m.len } else { m.segment };
                    coalesced |= m.segment != 0 && m.len > m.segment;
                    seen.extend(message.chunks(step).map(<[u8]>::to_vec));
                }
            }
            // (length, first byte) of each datagram: readable when it fails.
            let shape = |d: &[Vec<u8>]| d.iter().map(|p| (p.len(), p[0])).collect::<Vec<_>>();
            assert_eq!(shape(&seen), shape(&payloads), "gso {gso} gro {gro}");
            assert!(seen == payloads, "gso {gso} gro {gro}: contents differ");
            if !got_gro {
                assert!(!coalesced, "no GRO asked, none given");
            }
        }
    }
}
