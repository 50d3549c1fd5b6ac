//! Which file the daemon reads endpoint host names from, for re-resolving them when a peer
//! goes silent (rwg_driver::reresolve has the rule). `wg` resolves names before the daemon sees
//! them, so the names come from the configuration file, as `reresolve-dns.sh` reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rwg_config::{Config, Endpoint};
use rwg_device::Reresolve;
use rwg_driver::reresolve::{NamedEndpoint, CHECK_EVERY};

/// Where wg-quick (and wg-quick@.service) keeps `INTERFACE.conf`.
const WG_QUICK_DIR: &str = "/etc/wireguard";

/// What `RWG_RERESOLVE` and `RWG_RERESOLVE_INTERVAL` ask for. Unset: the interface's file
/// under /etc/wireguard if there is one; `off`: nothing; a path: that file, which must exist.
pub(crate) fn from_env(iface: &str) -> Result<Option<Reresolve>, String> {
    let every = match std::env::var("RWG_RERESOLVE_INTERVAL") {
        Err(_) => CHECK_EVERY,
        Ok(v) => parse_interval(&v).map_err(|e| format!("RWG_RERESOLVE_INTERVAL={v:?}: {e}"))?,
    };
    let path = match std::env::var_os("RWG_RERESOLVE") {
        Some(v) if v == "off" => return Ok(None),
        Some(v) => {
            let path = PathBuf::from(v);
            if !path.is_file() {
                return Err(format!(
                    "RWG_RERESOLVE={}: no such file (name the wg-quick configuration whose \
                     Endpoint host names to resolve again, or set it to off)",
                    path.display()
                ));
            }
            path
        }
        None => {
            let path = Path::new(WG_QUICK_DIR).join(format!("{iface}.conf"));
            if !path.is_file() {
                return Ok(None);
            }
            path
        }
    };
    tracing::debug!(file = %path.display(), every = ?every, "endpoint host names re-resolved from");
    Ok(Some(Reresolve {
        names: Box::new(move || names_in(&path)),
        every,
    }))
}

fn parse_interval(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(s @ 1..=86_400) => Ok(Duration::from_secs(s)),
        _ => Err("expected whole seconds from 1 to 86400".to_owned()),
    }
}

/// The peers of `path` whose endpoint is a host name.
fn names_in(path: &Path) -> Result<Vec<NamedEndpoint>, String> {
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    Ok(config
        .peers
        .iter()
        .filter_map(|p| match &p.endpoint {
            Some(Endpoint::Host { host, port }) => Some(NamedEndpoint {
                peer: p.public_key,
                host: host.clone(),
                port: *port,
            }),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("86400"), Ok(Duration::from_secs(86_400)));
        for bad in ["0", "86401", "-1", "1.5", "", "30s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_come_from_host_name_endpoints_only() {
        let dir = std::env::temp_dir().join(format!("rwg-reresolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("wg9.conf");
        let k = |b: u8| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode([b; 32])
        };
        std::fs::write(
            &file,
            format!(
                "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.1/24\nPostUp = true\n\n\
                 [Peer]\nPublicKey = {}\nEndpoint = vpn.example.test:51820\nAllowedIPs = 10.0.0.2/32\n\n\
                 [Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.0.0.3/32\n\n\
                 [Peer]\nPublicKey = {}\nAllowedIPs = 10.0.0.4/32\n",
                k(1),
                k(2),
                k(3),
                k(4)
            ),
        )
        .expect("write");
        let names = names_in(&file).expect("parses");
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(names[0].host, "vpn.example.test");
        assert_eq!(names[0].port, 51820);
        assert_eq!(names[0].peer.as_bytes(), &[2u8; 32]);
        // A broken file is an error naming the line, and never quotes a key.
        std::fs::write(
            &file,
            format!("[Interface]\nPrivateKey = {}\nbogus\n", k(1)),
        )
        .expect("write");
        let e = names_in(&file).expect_err("bad line");
        assert!(e.starts_with("wg9.conf:3:"), "{e}");
        assert!(!e.contains(&k(1)), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
