//! Resolving endpoint host names again when a peer goes silent: what wg-quick users run
//! `reresolve-dns.sh` from a timer for, built in. `wg` resolves a name once, when it
//! configures the peer; if the peer's address changes later (a dynamic-DNS home server, a
//! moved VM), the tunnel stays dead until someone sets the endpoint again.
//!
//! The rule is the script's: a peer whose latest handshake is older than [`SILENCE`] (or that
//! never completed one) has its name resolved again, every [`CHECK_EVERY`]; if the name no
//! longer includes the current endpoint, the endpoint moves to the first address the socket can
//! send to and a handshake starts there.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rwg_proto::crypto::PublicKey;
use rwg_proto::device::Device;

use crate::{short_key, Clock};

/// How long a peer must have gone without a handshake before its name is resolved again
/// (`reresolve-dns.sh`'s 135 s: a handshake is due every 120 s while traffic flows, plus
/// REKEY_TIMEOUT and some).
pub const SILENCE: Duration = Duration::from_secs(135);

/// How often silent peers are looked at (the interval `reresolve-dns.sh` is usually run at).
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// A peer whose endpoint was given as a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedEndpoint {
    /// The peer.
    pub peer: PublicKey,
    /// The host name (or address literal) as configured.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// What to do with a peer's endpoint after resolving its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The name still includes the current endpoint (or the name has no address we could use
    /// instead): leave it.
    Keep,
    /// Move the endpoint here.
    Move(SocketAddr),
    /// The name has no address of a family the socket can send to.
    NoUsableAddress,
}

/// Decides where a peer's endpoint should be, given what its name resolved to now, where the
/// endpoint is, and which addresses the UDP socket can send to. Pure, so that the daemon and
/// the network stack decide alike.
pub fn choose(
    resolved: &[SocketAddr],
    current: Option<SocketAddr>,
    usable: impl Fn(&SocketAddr) -> bool,
) -> Choice {
    let mut candidates = resolved.iter().filter(|a| usable(a));
    let Some(&first) = candidates.clone().next() else {
        return Choice::NoUsableAddress;
    };
    if current.is_some_and(|c| candidates.any(|&a| a == c)) {
        return Choice::Keep;
    }
    Choice::Move(first)
}

/// Whether a peer counts as silent: no handshake completed for [`SILENCE`], by the wall clock
/// (`last_handshake` and `now` are times since the Unix epoch, as the core reports them).
/// A peer that never completed one is silent, as in `reresolve-dns.sh`.
pub fn is_silent(last_handshake: Option<Duration>, now: Duration) -> bool {
    last_handshake.is_none_or(|t| now.saturating_sub(t) > SILENCE)
}

/// Lists the named endpoints (an error says why, e.g. `wg0.conf:3: ...`).
pub type NameSource = Box<dyn FnMut() -> Result<Vec<NamedEndpoint>, String> + Send>;
/// Resolves a host name and port to addresses.
pub type Resolve = Box<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send>;

/// Where the names come from (re-read every round, so that an edited file takes effect), and
/// how they are resolved. Errors are logged once until they change.
pub struct Reresolver {
    device: Arc<Device>,
    clock: Clock,
    names: NameSource,
    resolve: Resolve,
    usable: Box<dyn Fn(&SocketAddr) -> bool + Send>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Reresolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reresolver").finish_non_exhaustive()
    }
}

impl Reresolver {
    /// Re-resolves the names `names` returns for `device`'s silent peers with the system's
    /// resolver (`getaddrinfo`), moving endpoints only to addresses `usable` accepts.
    pub fn new(
        device: Arc<Device>,
        clock: Clock,
        names: impl FnMut() -> Result<Vec<NamedEndpoint>, String> + Send + 'static,
        usable: impl Fn(&SocketAddr) -> bool + Send + 'static,
    ) -> Reresolver {
        Reresolver {
            device,
            clock,
            names: Box::new(names),
            resolve: Box::new(|host, port| (host, port).to_socket_addrs().map(Iterator::collect)),
            usable: Box::new(usable),
            last_error: None,
        }
    }

    /// Uses `resolve` instead of the system's resolver (for tests).
    pub fn with_resolver(
        mut self,
        resolve: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + 'static,
    ) -> Reresolver {
        self.resolve = Box::new(resolve);
        self
    }

    /// One round: every silent peer with a name is resolved (blocking) and moved if its name
    /// moved. Returns the peers moved and where to.
    pub fn round(&mut self) -> Vec<(PublicKey, SocketAddr)> {
        let names = match (self.names)() {
            Ok(names) => {
                self.last_error = None;
                names
            }
            Err(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!("endpoint re-resolution: {e}");
                    self.last_error = Some(e);
                }
                return Vec::new();
            }
        };
        let now_unix = Clock::unix_now();
        let mut moved = Vec::new();
        for NamedEndpoint { peer, host, port } in names {
            let Some(info) = self.device.peer(&peer) else {
                continue; // in the file, not (or no longer) configured
            };
            if !is_silent(info.last_handshake, now_unix) {
                continue;
            }
            let resolved = match (self.resolve)(&host, port) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(peer = %short_key(&peer), %host, "cannot resolve: {e}");
                    continue;
                }
            };
            match choose(&resolved, info.endpoint, &self.usable) {
                Choice::Keep => {}
                Choice::NoUsableAddress => {
                    tracing::debug!(peer = %short_key(&peer), %host, "no address the socket can reach")
                }
                Choice::Move(to) => {
                    if self.device.set_endpoint(&peer, to).is_ok() {
                        // Skipped if an initiation went out within REKEY_TIMEOUT: its retry
                        // goes to the new address anyway.
                        let _ = self.device.initiate_handshake(self.clock.now(), &peer);
                        tracing::info!(peer = %short_key(&peer), %host, endpoint = %to, "endpoint re-resolved");
                        moved.push((peer, to));
                    }
                }
            }
        }
        moved
    }

    /// Runs a round every `every` until `stop` says so (checked at least once a second).
    pub fn run_blocking(mut self, every: Duration, stop: impl Fn() -> bool) {
        let slice = Duration::from_secs(1).min(every);
        loop {
            let mut waited = Duration::ZERO;
            while waited < every {
                if stop() {
                    return;
                }
                std::thread::sleep(slice);
                waited += slice;
            }
            self.round();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rwg_proto::crypto::PrivateKey;
    use std::sync::Mutex;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn choose_keeps_a_current_endpoint_the_name_still_has() {
        let any = |_: &SocketAddr| true;
        let r = [a("192.0.2.1:1"), a("192.0.2.2:1")];
        assert_eq!(choose(&r, Some(a("192.0.2.2:1")), any), Choice::Keep);
        assert_eq!(
            choose(&r, Some(a("192.0.2.9:1")), any),
            Choice::Move(a("192.0.2.1:1"))
        );
        assert_eq!(choose(&r, None, any), Choice::Move(a("192.0.2.1:1")));
        assert_eq!(choose(&[], None, any), Choice::NoUsableAddress);
        // Only addresses the socket can send to count, also for keeping.
        let v6: [SocketAddr; 2] = [a("[2001:db8::1]:1"), a("192.0.2.3:1")];
        let v4_only = |s: &SocketAddr| s.is_ipv4();
        assert_eq!(
            choose(&v6, Some(a("[2001:db8::1]:1")), v4_only),
            Choice::Move(a("192.0.2.3:1"))
        );
        assert_eq!(
            choose(&v6[..1], Some(a("192.0.2.3:1")), v4_only),
            Choice::NoUsableAddress
        );
    }

    #[test]
    fn silence_is_the_scripts_rule() {
        let now = Duration::from_secs(1_000_000);
        assert!(is_silent(None, now));
        assert!(!is_silent(Some(now - SILENCE), now));
        assert!(is_silent(Some(now - SILENCE - Duration::from_secs(1)), now));
        // A handshake "in the future" (the wall clock went back) is not silence.
        assert!(!is_silent(Some(now + Duration::from_secs(60)), now));
    }

    #[test]
    fn a_round_moves_silent_peers_whose_name_moved_and_logs_file_errors_once() {
        let device = Arc::new(Device::new(Box::new(
            rand_chacha::ChaCha20Rng::seed_from_u64(7),
        )));
        device.set_private_key(Some(PrivateKey::from_bytes([1; 32])));
        let moving = PrivateKey::from_bytes([2; 32]).public_key();
        let steady = PrivateKey::from_bytes([3; 32]).public_key();
        let unknown = PrivateKey::from_bytes([4; 32]).public_key();
        for (k, at) in [(moving, "192.0.2.1:51820"), (steady, "192.0.2.5:51820")] {
            device.add_peer(k);
            device.set_endpoint(&k, a(at)).expect("peer");
        }
        let answers = Arc::new(Mutex::new(vec![
            ("moving.test", vec![a("192.0.2.2:51820")]),
            ("steady.test", vec![a("192.0.2.5:51820")]),
            ("unknown.test", vec![a("192.0.2.7:51820")]),
        ]));
        let table = Arc::clone(&answers);
        let fail = Arc::new(Mutex::new(false));
        let failing = Arc::clone(&fail);
        let names = move || {
            if *failing.lock().expect("lock") {
                return Err("wg0.conf:3: bad line".to_owned());
            }
            Ok([
                ("moving.test", moving),
                ("steady.test", steady),
                ("unknown.test", unknown),
            ]
            .into_iter()
            .map(|(h, peer)| NamedEndpoint {
                peer,
                host: h.to_owned(),
                port: 51820,
            })
            .collect())
        };
        let mut r = Reresolver::new(Arc::clone(&device), Clock::new(), names, |_| true)
            .with_resolver(move |host, _| {
                let t = table.lock().expect("lock");
                let found = t.iter().find(|(h, _)| *h == host).map(|(_, a)| a.clone());
                found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
            });
        assert_eq!(r.round(), vec![(moving, a("192.0.2.2:51820"))]);
        assert_eq!(
            device.peer(&moving).and_then(|p| p.endpoint),
            Some(a("192.0.2.2:51820"))
        );
        assert_eq!(
            device.peer(&steady).and_then(|p| p.endpoint),
            Some(a("192.0.2.5:51820"))
        );
        assert!(device.peer(&unknown).is_none(), "names never add peers");
        // The handshake it started is queued for the new address.
        let mut out = [0u8; 2048];
        let t = device.poll_transmit(&mut out).expect("an initiation");
        assert_eq!((out[0], t.destination), (1, a("192.0.2.2:51820")));
        // Nothing moved since: a second round changes nothing.
        assert!(r.round().is_empty());
        // A name that stops resolving leaves the endpoint alone.
        answers
            .lock()
            .expect("lock")
            .retain(|(h, _)| *h != "moving.test");
        assert!(r.round().is_empty());
        assert_eq!(
            device.peer(&moving).and_then(|p| p.endpoint),
            Some(a("192.0.2.2:51820"))
        );
        // A file that stops parsing: nothing happens, the error is remembered (logged once).
        *fail.lock().expect("lock") = true;
        assert!(r.round().is_empty());
        assert_eq!(r.last_error.as_deref(), Some("wg0.conf:3: bad line"));
        *fail.lock().expect("lock") = false;
        r.round();
        assert_eq!(r.last_error, None);
    }
}
