//! A configuration-only device: stores what `set` says and reports it in `get`, binds nothing,
//! moves no packets.
//!
//! Test-only: the request-level UAPI tests run against it and, in `driver::tests`, against the
//! daemon's real `DriverConfig`, so that the two agree. The `fuzzing` feature makes it public
//! for the `uapi` fuzz target (fuzz/); no build of the daemon has it.

use std::net::{IpAddr, SocketAddr};

use rwg_proto::crypto::{PresharedKey, PrivateKey};

use crate::uapi::{DeviceSnapshot, Errno, PeerSnapshot, UapiDevice};

/// Stored configuration of one peer.
#[derive(Debug)]
struct MemoryPeer {
    snapshot: PeerSnapshot,
}

/// The configuration store. Peers are kept in creation order.
#[derive(Debug, Default)]
pub struct MemoryDevice {
    private_key: Option<PrivateKey>,
    own_public: Option<[u8; 32]>,
    listen_port: u16,
    fwmark: u32,
    peers: Vec<MemoryPeer>,
}

/// Zeroes the host bits of `addr` beyond `cidr` (the kernel and wireguard-go store prefixes
/// masked, and `wg show` prints them that way).
pub(crate) fn mask_prefix(addr: IpAddr, cidr: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl MemoryDevice {
    /// An empty store; ports and marks are recorded, nothing is bound.
    pub fn new() -> MemoryDevice {
        MemoryDevice::default()
    }

    fn peer_mut(&mut self, pk: &[u8; 32]) -> Result<&mut PeerSnapshot, Errno> {
        self.peers
            .iter_mut()
            .find(|p| p.snapshot.public_key == *pk)
            .map(|p| &mut p.snapshot)
            .ok_or(Errno::UNKNOWN)
    }
}

impl UapiDevice for MemoryDevice {
    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            private_key: self.private_key.clone(),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            counters: Vec::new(),
            peers: self.peers.iter().map(|p| p.snapshot.clone()).collect(),
        }
    }

    fn own_public_key(&self) -> Option<[u8; 32]> {
        self.own_public
    }

    fn set_private_key(&mut self, key: Option<PrivateKey>) -> Result<(), Errno> {
        match key {
            None => {
                self.private_key = None;
                self.own_public = None;
            }
            Some(key) => {
                if self.private_key.as_ref() == Some(&key) {
                    return Ok(());
                }
                let public = *key.public_key().as_bytes();
                self.peers.retain(|p| p.snapshot.public_key != public);
                self.private_key = Some(key);
                self.own_public = Some(public);
            }
        }
        Ok(())
    }

    fn set_listen_port(&mut self, port: u16) -> Result<(), Errno> {
        self.listen_port = port;
        Ok(())
    }

    fn set_fwmark(&mut self, mark: u32) -> Result<(), Errno> {
        self.fwmark = mark;
        Ok(())
    }

    fn remove_all_peers(&mut self) {
        self.peers.clear();
    }

    fn has_peer(&self, pk: &[u8; 32]) -> bool {
        self.peers.iter().any(|p| p.snapshot.public_key == *pk)
    }

    fn create_peer(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
        if !self.has_peer(pk) {
            self.peers.push(MemoryPeer {
                snapshot: PeerSnapshot {
                    public_key: *pk,
                    ..PeerSnapshot::default()
                },
            });
        }
        Ok(())
    }

    fn remove_peer(&mut self, pk: &[u8; 32]) {
        self.peers.retain(|p| p.snapshot.public_key != *pk);
    }

    fn set_preshared_key(&mut self, pk: &[u8; 32], psk: PresharedKey) -> Result<(), Errno> {
        self.peer_mut(pk)?.preshared_key = psk;
        Ok(())
    }

    fn set_endpoint(&mut self, pk: &[u8; 32], ep: SocketAddr) -> Result<(), Errno> {
        self.peer_mut(pk)?.endpoint = Some(ep);
        Ok(())
    }

    fn set_persistent_keepalive(&mut self, pk: &[u8; 32], secs: u16) -> Result<(), Errno> {
        self.peer_mut(pk)?.persistent_keepalive = secs;
        Ok(())
    }

    fn clear_allowed_ips(&mut self, pk: &[u8; 32]) -> Result<(), Errno> {
        self.peer_mut(pk)?.allowed_ips.clear();
        Ok(())
    }

    fn add_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno> {
        let prefix = (mask_prefix(addr, cidr), cidr);
        self.peer_mut(pk)?;
        for p in &mut self.peers {
            if p.snapshot.public_key != *pk {
                p.snapshot.allowed_ips.retain(|a| *a != prefix);
            }
        }
        let peer = self.peer_mut(pk)?;
        if !peer.allowed_ips.contains(&prefix) {
            peer.allowed_ips.push(prefix);
        }
        Ok(())
    }

    fn remove_allowed_ip(&mut self, pk: &[u8; 32], addr: IpAddr, cidr: u8) -> Result<(), Errno> {
        let prefix = (mask_prefix(addr, cidr), cidr);
        self.peer_mut(pk)?.allowed_ips.retain(|a| *a != prefix);
        Ok(())
    }
}
