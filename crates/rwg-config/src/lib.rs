#![forbid(unsafe_code)]
//! The wg-quick configuration format: `[Interface]` and `[Peer]` sections of `Key = Value` lines.
//!
//! Parsing is pure: [`Config::parse`] turns text into a [`Config`] without touching the network
//! or the file system. Host names in `Endpoint` stay names until [`Config::resolve_endpoints`]
//! looks them up, so a caller decides when (and whether) DNS is used.
//!
//! Keys are matched case-insensitively, as wg-quick does; `#` starts a comment anywhere on a
//! line; blank lines and surrounding whitespace are ignored. Unknown keys and sections are
//! errors, and every error names the file, the line and the problem:
//!
//! ```text
//! wg0.conf:7: invalid PublicKey: a key is 44 base64 characters, found 12
//! ```
//!
//! Keys are held in the `rwg_proto::crypto` newtypes, which zeroize on drop and print nothing
//! secret in `Debug`.

#![warn(missing_docs)]

mod error;
pub mod key;
mod net;
mod parse;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

pub use error::{ConfigError, ErrorKind, ResolveError};
pub use net::IpNet;
pub use parse::Outline;
use rwg_proto::crypto::{PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// A whole wg-quick configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The `[Interface]` section.
    pub interface: Interface,
    /// The `[Peer]` sections, in file order.
    pub peers: Vec<Peer>,
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `PrivateKey`.
    pub private_key: PrivateKey,
    /// `Address`: the addresses of the interface with their prefix lengths.
    pub addresses: Vec<IpNet>,
    /// `DNS` entries that are IP addresses: the resolvers.
    pub dns_servers: Vec<IpAddr>,
    /// `DNS` entries that are not IP addresses: search domains.
    pub dns_search: Vec<String>,
    /// `MTU`.
    pub mtu: Option<u16>,
    /// `ListenPort`.
    pub listen_port: Option<u16>,
    /// `FwMark`; `off` and `0` both mean none.
    pub fwmark: Option<u32>,
    /// `Table`, kept as written (wg-quick's routing table choice).
    pub table: Option<String>,
    /// `PreUp` commands, in file order.
    pub pre_up: Vec<String>,
    /// `PostUp` commands, in file order.
    pub post_up: Vec<String>,
    /// `PreDown` commands, in file order.
    pub pre_down: Vec<String>,
    /// `PostDown` commands, in file order.
    pub post_down: Vec<String>,
    /// `SaveConfig`, kept as written.
    pub save_config: Option<String>,
}

/// A `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `PublicKey`.
    pub public_key: PublicKey,
    /// `PresharedKey`, if given.
    pub preshared_key: Option<PresharedKey>,
    /// `Endpoint`, if given.
    pub endpoint: Option<Endpoint>,
    /// `AllowedIPs`: all lines together, in file order.
    pub allowed_ips: Vec<IpNet>,
    /// `PersistentKeepalive` in seconds; `off` and `0` both mean none.
    pub persistent_keepalive: Option<u16>,
}

/// Where a peer can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A literal address: `192.0.2.1:51820` or `[2001:db8::1]:51820`.
    Addr(SocketAddr),
    /// A host name still to be resolved by [`Config::resolve_endpoints`].
    Host {
        /// The name as written.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Endpoint {
    /// The address, if this endpoint is (or has been resolved to) one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(addr) => Some(*addr),
            Endpoint::Host { .. } => None,
        }
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Endpoint::Addr(addr) => write!(f, "{addr}"),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Config {
    /// Parse configuration text. `file_name` only appears in error messages.
    pub fn parse(file_name: &str, text: &str) -> Result<Config, ConfigError> {
        parse::parse(file_name, text)
    }

    /// Read and parse a file. The text read is zeroized once parsed, since it holds keys.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ConfigError::io(&name, e))?);
        Config::parse(&name, &text)
    }

    /// Parse configuration text and report every problem, not only the first, in line order;
    /// on success, also where each section starts (for checks of the caller's own).
    pub fn parse_all(file_name: &str, text: &str) -> Result<(Config, Outline), Vec<ConfigError>> {
        parse::parse_all(file_name, text)
    }

    /// Read and parse a file with [`Config::parse_all`]. Errors name the file as `path` is
    /// written (what a user typed, so that `file:line` leads back to it). The text read is
    /// zeroized once parsed.
    pub fn from_file_all(path: impl AsRef<Path>) -> Result<(Config, Outline), Vec<ConfigError>> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| vec![ConfigError::io(&name, e)])?,
        );
        Config::parse_all(&name, &text)
    }

    /// Resolve every `Endpoint` host name with the system resolver (`ToSocketAddrs`), in place.
    ///
    /// This blocks while resolving; call it from a thread that may block (in async code,
    /// `spawn_blocking`). The first address the resolver returns is used. On error, endpoints
    /// resolved so far stay resolved.
    pub fn resolve_endpoints(&mut self) -> Result<(), ResolveError> {
        for peer in &mut self.peers {
            if let Some(Endpoint::Host { host, port }) = &peer.endpoint {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| ResolveError::new(host, e.to_string()))?
                    .next()
                    .ok_or_else(|| ResolveError::new(host, "no address found".to_owned()))?;
                peer.endpoint = Some(Endpoint::Addr(addr));
            }
        }
        Ok(())
    }
}
