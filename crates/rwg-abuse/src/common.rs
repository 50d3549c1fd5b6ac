//! What every mode shares: where it may send, for how long, the victim's key, the sockets of
//! the sources, and the `key=value` report.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rwg_proto::crypto::PublicKey;

/// The longest any mode runs, whatever it is asked.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Refuses destinations that cannot be a test's own network: only loopback, the private IPv4
/// ranges (10/8, 172.16/12, 192.168/16), the benchmarking range 198.18/15, and IPv6 loopback
/// and unique local addresses (fc00::/7). A typo must not send a flood to the internet.
pub(crate) fn check_destination(addr: SocketAddr) -> Result<(), String> {
    let ok = match addr.ip().to_canonical() {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || is_benchmarking(a),
        IpAddr::V6(a) => a.is_loopback() || is_unique_local(a),
    };
    if addr.port() == 0 {
        return Err(format!("{addr}: port 0"));
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback, private (10/8, 172.16/12, 192.168/16, 198.18/15) or \
             unique local (fc00::/7) address: this tool only sends into a test's own network"
        ))
    }
}

fn is_benchmarking(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 198 && (o[1] & 0xfe) == 18
}

fn is_unique_local(a: Ipv6Addr) -> bool {
    (a.segments()[0] & 0xfe00) == 0xfc00
}

/// A `wg`-style base64 public key.
pub(crate) fn parse_key(s: &str) -> Result<PublicKey, String> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| format!("public key {s:?}: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("public key {s:?}: not 32 bytes"))?;
    Ok(PublicKey::from_bytes(bytes))
}

/// A duration in seconds, at most [`MAX_DURATION`].
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?}: expected seconds"))?;
    if !(secs > 0.0 && secs <= MAX_DURATION.as_secs_f64()) {
        return Err(format!(
            "{s:?}: must be more than 0 and at most {} seconds",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Non-blocking UDP sockets, `per_source` on each source address (each on its own port),
/// connected to `target`. Every source must be of the target's family.
pub(crate) fn bind_sources(
    sources: &[IpAddr],
    per_source: usize,
    target: SocketAddr,
) -> Result<Vec<UdpSocket>, String> {
    if sources.is_empty() {
        return Err("no --source address".into());
    }
    let mut out = Vec::with_capacity(sources.len() * per_source);
    for &ip in sources {
        if ip.is_ipv4() != target.is_ipv4() {
            return Err(format!("source {ip} is not of the family of {target}"));
        }
        for _ in 0..per_source {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("cannot bind {ip}: {e} (is it an address of this host?)"))?;
            s.connect(target)
                .map_err(|e| format!("cannot connect {ip} to {target}: {e}"))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("non-blocking: {e}"))?;
            out.push(s);
        }
    }
    Ok(out)
}

/// Splits `sources` by family and binds each group to the target of its family.
pub(crate) fn bind_all(
    sources: &[IpAddr],
    per_source: usize,
    targets: &[SocketAddr],
) -> Result<Vec<(UdpSocket, SocketAddr)>, String> {
    for t in targets {
        check_destination(*t)?;
    }
    let mut out = Vec::new();
    for &t in targets {
        let mine: Vec<IpAddr> = sources
            .iter()
            .copied()
            .filter(|s| s.is_ipv4() == t.is_ipv4())
            .collect();
        if mine.is_empty() {
            continue;
        }
        out.extend(
            bind_sources(&mine, per_source, t)?
                .into_iter()
                .map(|s| (s, t)),
        );
    }
    let orphans: Vec<String> = sources
        .iter()
        .filter(|s| !targets.iter().any(|t| t.is_ipv4() == s.is_ipv4()))
        .map(ToString::to_string)
        .collect();
    if !orphans.is_empty() {
        return Err(format!(
            "no --target of the family of source(s) {}",
            orphans.join(", ")
        ));
    }
    Ok(out)
}

/// Whether a send error means "the socket buffer is full" (counted apart from real errors).
pub(crate) fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(105) // ENOBUFS
}

/// Paces a sender to `rate` messages per second (none: as fast as it can).
#[derive(Debug)]
pub(crate) struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    pub(crate) fn new(rate: Option<f64>) -> Self {
        Pacer {
            start: Instant::now(),
            rate: rate.filter(|r| *r > 0.0),
        }
    }

    /// Sleeps while `sent` is ahead of the schedule.
    pub(crate) fn pace(&self, sent: u64) {
        let Some(rate) = self.rate else { return };
        let due = Duration::from_secs_f64(sent as f64 / rate);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
        }
    }
}

/// Prints `key=value` lines, the report every mode ends with (easy to read from a shell).
pub(crate) fn report(lines: &[(String, String)]) {
    for (k, v) in lines {
        println!("{k}={v}");
    }
}

/// A `(key, value)` pair for [`report`].
pub(crate) fn kv(k: impl Into<String>, v: impl ToString) -> (String, String) {
    (k.into(), v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tests_own_addresses_are_destinations() {
        for ok in [
            "10.0.0.1:51820",
            "172.16.5.1:1",
            "172.31.255.255:1",
            "192.168.1.1:1",
            "127.0.0.1:1",
            "198.18.0.1:1",
            "198.19.255.1:1",
            "[fd00::1]:51820",
            "[fc00::1]:1",
            "[::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert_eq!(check_destination(ok.parse().unwrap()), Ok(()), "{ok}");
        }
        for bad in [
            "1.1.1.1:53",
            "172.32.0.1:1",
            "198.20.0.1:1",
            "8.8.8.8:51820",
            "[2001:db8::1]:1",
            "[2606:4700::1111]:1",
            "[fe80::1]:1",
            "[::ffff:8.8.8.8]:1",
            "10.0.0.1:0",
        ] {
            assert!(check_destination(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_durations_are_checked() {
        let k = parse_key("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
        assert_eq!(k.as_bytes(), &[1u8; 32]);
        assert!(parse_key("AQEB").is_err());
        assert!(parse_key("not base64!").is_err());
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "x", "3601", "NaN", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_must_match_a_target_family() {
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = bind_all(&["::1".parse().unwrap()], 1, &[v4]).unwrap_err();
        assert!(err.contains("no --target of the family"), "{err}");
        let socks = bind_all(&["127.0.0.1".parse().unwrap()], 3, &[v4]).unwrap();
        assert_eq!(socks.len(), 3);
        assert!(bind_all(
            &["127.0.0.1".parse().unwrap()],
            1,
            &["8.8.8.8:53".parse().unwrap()]
        )
        .is_err());
    }
}
