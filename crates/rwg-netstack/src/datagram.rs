//! How the tunnel's UDP socket moves datagrams: [`DatagramIo`], with [`PlainIo`] (one
//! `send_to` / `recv_from` per datagram, the standard library's, on every platform) as the
//! default.
//!
//! The WireGuard glue hands an implementation whole batches: what one turn of the stack's
//! driver sent, and as many received datagrams as fit its buffer. An implementation that moves
//! a batch with fewer system calls (on Linux, `sendmmsg` with UDP GSO and `recvmmsg` with UDP
//! GRO: the rwg binary's, over rwg-device) plugs in through
//! [`TunnelOptions::datagram_io`](crate::TunnelOptions::datagram_io); this crate stays free of
//! platform code.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// What one received message held: `len` bytes from `from`, one datagram, or with GRO several
/// datagrams of `segment` bytes each back to back (the last possibly shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// Bytes received in this message.
    pub len: usize,
    /// Where they came from.
    pub from: SocketAddr,
    /// 0: one datagram; otherwise the size of each datagram in the message.
    pub segment: usize,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
        }
    }
}

impl Incoming {
    /// The datagrams of this message, as ranges of its `len` bytes.
    pub fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (len, step) = (
            self.len,
            if self.segment == 0 {
                self.len
            } else {
                self.segment
            },
        );
        (0..len)
            .step_by(step.max(1))
            .map(move |start| start..(start + step).min(len))
    }
}

/// Datagram I/O on the tunnel's non-blocking UDP socket. Called from two tasks at once (the
/// stack's driver sends, the glue task receives), so implementations keep separate state per
/// direction. Must never block.
pub trait DatagramIo: Send + Sync + 'static {
    /// Called once with the socket before any traffic (for example to turn GRO on).
    fn prepare(&self, _socket: &UdpSocket) {}

    /// Send `datagrams` in order, each to its address. `sent[i]` (as long as `datagrams`) is
    /// set to whether the socket took datagram `i`; a full socket buffer refuses the rest (the
    /// caller counts them as dropped: TCP inside the tunnel retransmits).
    fn send(&self, socket: &UdpSocket, datagrams: &[(&[u8], SocketAddr)], sent: &mut [bool]);

    /// Receive up to `out.len()` messages, message `i` into `buf[i * stride..][..stride]`;
    /// returns how many. `WouldBlock` when nothing is waiting.
    fn recv(
        &self,
        socket: &UdpSocket,
        buf: &mut [u8],
        stride: usize,
        out: &mut [Incoming],
    ) -> io::Result<usize>;
}

/// The portable path: one `send_to` and one `recv_from` per datagram.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainIo;

impl DatagramIo for PlainIo {
    fn send(&self, socket: &UdpSocket, datagrams: &[(&[u8], SocketAddr)], sent: &mut [bool]) {
        for ((d, to), ok) in datagrams.iter().zip(sent.iter_mut()) {
            *ok = socket.send_to(d, *to).is_ok();
        }
    }

    fn recv(
        &self,
        socket: &UdpSocket,
        buf: &mut [u8],
        stride: usize,
        out: &mut [Incoming],
    ) -> io::Result<usize> {
        let stride = stride.max(1);
        let room = out.len().min(buf.len() / stride);
        let mut got = 0;
        // Bounded: each error skips a datagram (or ends the call), each success fills a slot.
        for _ in 0..room * 2 {
            if got == room {
                break;
            }
            match socket.recv_from(&mut buf[got * stride..(got + 1) * stride]) {
                Ok((len, from)) => {
                    out[got] = Incoming {
                        len,
                        from,
                        segment: 0,
                    };
                    got += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if got == 0 { Err(e) } else { Ok(got) };
                }
                // ICMP errors (port unreachable) surface here: nothing to do.
                Err(_) => {}
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_splits_into_its_datagrams() {
        let whole = |len, segment| {
            Incoming {
                len,
                segment,
                ..Incoming::default()
            }
            .datagrams()
            .collect::<Vec<_>>()
        };
        assert_eq!(whole(100, 0), vec![0..100]);
        assert_eq!(whole(100, 40), vec![0..40, 40..80, 80..100]);
        assert_eq!(whole(80, 40), vec![0..40, 40..80]);
        assert_eq!(whole(0, 0), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn plain_io_moves_every_datagram_of_a_batch() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        b.set_nonblocking(true).expect("nonblocking");
        let to = b.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let batch: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let mut sent = vec![false; batch.len()];
        PlainIo.send(&a, &batch, &mut sent);
        assert!(sent.iter().all(|s| *s), "{sent:?}");
        let mut buf = vec![0u8; 8 * 64];
        let mut out = [Incoming::default(); 8];
        let mut seen = Vec::new();
        // Loopback delivers at once, but reads may still race the sends: bounded retries.
        for _ in 0..1000 {
            match PlainIo.recv(&b, &mut buf, 64, &mut out) {
                Ok(n) => seen.extend(
                    out[..n]
                        .iter()
                        .enumerate()
                        .map(|(i, m)| buf[i * 64..i * 64 + m.len].to_vec()),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv: {e}"),
            }
            if seen.len() == payloads.len() {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(seen, payloads);
        assert_eq!(
            PlainIo
                .recv(&b, &mut buf, 64, &mut out)
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
    }
}
