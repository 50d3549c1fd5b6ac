//! The boundary between the stack and the WireGuard side: IP packets out through
//! [`PacketTunnel`], IP packets in through [`NetStack::receive`](crate::NetStack::receive).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// Where the stack's outgoing IP packets go: in production, a WireGuard device that encrypts
/// them and sends the datagrams to the peer.
///
/// `send` is called from the stack's driver task while it holds the stack's lock, once per
/// packet. It must not block and must not call back into the stack; when the tunnel is full it
/// drops the packet (TCP retransmits; UDP is unreliable anyway) and should count the drop.
///
/// A tunnel may keep what `send` gives it and pass it on in batches: the driver calls `flush`
/// once at the end of each turn, after the last `send` of that turn and before it sleeps, so
/// nothing waits longer than the turn that produced it.
pub trait PacketTunnel: Send + 'static {
    /// Hand one outgoing IP packet (IPv4 or IPv6, no link header) to the tunnel.
    fn send(&self, packet: &[u8]);

    /// Pass on whatever `send` kept back. The default does nothing (`send` passed each
    /// packet on at once).
    fn flush(&self) {}
}

/// A [`PacketTunnel`] that copies each packet into a bounded channel, for glue code that runs
/// its own task: that task receives the packets and feeds them to the WireGuard device.
#[derive(Debug)]
pub struct ChannelTunnel {
    sender: mpsc::Sender<Vec<u8>>,
    dropped: AtomicU64,
}

impl ChannelTunnel {
    /// A tunnel and the receiving end of its channel, which holds at most `capacity` packets.
    pub fn new(capacity: usize) -> (ChannelTunnel, mpsc::Receiver<Vec<u8>>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            ChannelTunnel {
                sender,
                dropped: AtomicU64::new(0),
            },
            receiver,
        )
    }

    /// Packets dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl PacketTunnel for ChannelTunnel {
    fn send(&self, packet: &[u8]) {
        if self.sender.try_send(packet.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
