//! The line parser: sections, `Key = Value` lines and the value grammars of each key.

use std::net::{IpAddr, SocketAddr};

use rwg_proto::crypto::{PresharedKey, PrivateKey, PublicKey};

use crate::error::{ConfigError, ErrorKind};
use crate::key::decode_key;
use crate::{Config, Endpoint, Interface, IpNet, Peer};

#[derive(Default)]
struct InterfaceBuilder {
    line: usize,
    /// A `PrivateKey` line was there, valid or not: a bad one is not also a missing one.
    key_line: bool,
    private_key: Option<PrivateKey>,
    addresses: Vec<IpNet>,
    dns_servers: Vec<IpAddr>,
    dns_search: Vec<String>,
    mtu: Option<u16>,
    listen_port: Option<u16>,
    fwmark: Option<Option<u32>>,
    table: Option<String>,
    pre_up: Vec<String>,
    post_up: Vec<String>,
    pre_down: Vec<String>,
    post_down: Vec<String>,
    save_config: Option<String>,
}

#[derive(Default)]
struct PeerBuilder {
    line: usize,
    /// A `PublicKey` line was there, valid or not.
    key_line: bool,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<Endpoint>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<Option<u16>>,
}

enum Section {
    None,
    Interface,
    Peer(PeerBuilder),
}

type ValueResult<T> = Result<T, String>;

fn invalid(key: &'static str) -> impl Fn(String) -> ErrorKind {
    move |reason| ErrorKind::InvalidValue { key, reason }
}

/// Store `value` in a slot that may be set only once.
fn set_once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), ErrorKind> {
    if slot.is_some() {
        return Err(ErrorKind::DuplicateKey(key));
    }
    *slot = Some(value);
    Ok(())
}

fn non_empty(value: &str) -> ValueResult<&str> {
    if value.is_empty() {
        Err("empty value".to_owned())
    } else {
        Ok(value)
    }
}

/// Comma-separated list; empty items (`a, , b` or an empty value) are skipped like wg-quick does.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_u16(value: &str) -> ValueResult<u16> {
    let v = non_empty(value)?;
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a number"));
    }
    v.parse::<u16>()
        .map_err(|_| format!("{v} is out of range 0..=65535"))
}

fn parse_mtu(value: &str) -> ValueResult<u16> {
    let mtu = parse_u16(value)?;
    // The smallest MTU IPv4 requires every link to carry.
    if mtu < 576 {
        return Err(format!("{mtu} is below the minimum of 576"));
    }
    Ok(mtu)
}

fn parse_fwmark(value: &str) -> ValueResult<Option<u32>> {
    let v = non_empty(value)?;
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if v.bytes().all(|b| b.is_ascii_digit()) => v.parse::<u32>().ok(),
        None => None,
    };
    match parsed {
        Some(0) => Ok(None),
        Some(mark) => Ok(Some(mark)),
        None => Err(format!("{v:?} is not `off` or a 32-bit number")),
    }
}

fn parse_keepalive(value: &str) -> ValueResult<Option<u16>> {
    let v = non_empty(value)?;
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match parse_u16(v)? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

fn parse_key_bytes(value: &str) -> ValueResult<zeroize::Zeroizing<[u8; 32]>> {
    decode_key(non_empty(value)?).map_err(|e| e.to_string())
}

/// `host:port`, `[v6]:port` or `v4:port`. Host names are kept for later resolution.
fn parse_endpoint(value: &str) -> ValueResult<Endpoint> {
    let v = non_empty(value)?;
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(Endpoint::Addr(addr));
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{v:?}: missing `]`"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{v:?}: expected `:port` after `]`"))?;
        (host, port)
    } else {
        v.rsplit_once(':')
            .ok_or_else(|| format!("{v:?}: expected host:port"))?
    };
    let port = parse_u16(port).map_err(|e| format!("bad port: {e}"))?;
    if port == 0 {
        return Err("port 0".to_owned());
    }
    if host.is_empty() {
        return Err(format!("{v:?}: empty host"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        // `[1.2.3.4]:5` and the like: an address, just bracketed unusually.
        return Ok(Endpoint::Addr(SocketAddr::new(ip, port)));
    }
    if v.starts_with('[') || host.contains(':') {
        return Err(format!("{host:?} is not an IPv6 address"));
    }
    let valid_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return Err(format!("{host:?} is not a host name"));
    }
    Ok(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

fn parse_nets(value: &str, into: &mut Vec<IpNet>) -> ValueResult<()> {
    for item in list(value) {
        into.push(item.parse::<IpNet>()?);
    }
    Ok(())
}

fn interface_line(b: &mut InterfaceBuilder, key: &str, value: &str) -> Result<(), ErrorKind> {
    match key.to_ascii_lowercase().as_str() {
        "privatekey" => {
            b.key_line = true;
            let bytes = parse_key_bytes(value).map_err(invalid("PrivateKey"))?;
            set_once(
                &mut b.private_key,
                "PrivateKey",
                PrivateKey::from_bytes(*bytes),
            )
        }
        "address" => parse_nets(value, &mut b.addresses).map_err(invalid("Address")),
        "dns" => {
            for item in list(value) {
                match item.parse::<IpAddr>() {
                    Ok(ip) => b.dns_servers.push(ip),
                    Err(_) => b.dns_search.push(item.to_owned()),
                }
            }
            Ok(())
        }
        "mtu" => {
            let mtu = parse_mtu(value).map_err(invalid("MTU"))?;
            set_once(&mut b.mtu, "MTU", mtu)
        }
        "listenport" => {
            let port = parse_u16(value).map_err(invalid("ListenPort"))?;
            set_once(&mut b.listen_port, "ListenPort", port)
        }
        "fwmark" => {
            let mark = parse_fwmark(value).map_err(invalid("FwMark"))?;
            set_once(&mut b.fwmark, "FwMark", mark)
        }
        "table" => set_once(&mut b.table, "Table", value.to_owned()),
        "saveconfig" => set_once(&mut b.save_config, "SaveConfig", value.to_owned()),
        "preup" => {
            b.pre_up.push(value.to_owned());
            Ok(())
        }
        "postup" => {
            b.post_up.push(value.to_owned());
            Ok(())
        }
        "predown" => {
            b.pre_down.push(value.to_owned());
            Ok(())
        }
        "postdown" => {
            b.post_down.push(value.to_owned());
            Ok(())
        }
        _ => Err(ErrorKind::UnknownKey(shown_name(key))),
    }
}

fn peer_line(b: &mut PeerBuilder, key: &str, value: &str) -> Result<(), ErrorKind> {
    match key.to_ascii_lowercase().as_str() {
        "publickey" => {
            b.key_line = true;
            let bytes = parse_key_bytes(value).map_err(invalid("PublicKey"))?;
            set_once(
                &mut b.public_key,
                "PublicKey",
                PublicKey::from_bytes(*bytes),
            )
        }
        "presharedkey" => {
            let bytes = parse_key_bytes(value).map_err(invalid("PresharedKey"))?;
            set_once(
                &mut b.preshared_key,
                "PresharedKey",
                PresharedKey::from_bytes(*bytes),
            )
        }
        "endpoint" => {
            let endpoint = parse_endpoint(value).map_err(invalid("Endpoint"))?;
            set_once(&mut b.endpoint, "Endpoint", endpoint)
        }
        "allowedips" => parse_nets(value, &mut b.allowed_ips).map_err(invalid("AllowedIPs")),
        "persistentkeepalive" => {
            let k = parse_keepalive(value).map_err(invalid("PersistentKeepalive"))?;
            set_once(&mut b.persistent_keepalive, "PersistentKeepalive", k)
        }
        _ => Err(ErrorKind::UnknownKey(shown_name(key))),
    }
}

/// The peer, or the problem to report: none when its `PublicKey` line was already reported
/// as invalid.
fn finish_peer(file: &str, b: PeerBuilder) -> Result<Peer, Option<ConfigError>> {
    let Some(public_key) = b.public_key else {
        return Err((!b.key_line)
            .then(|| ConfigError::at(file, b.line, ErrorKind::MissingKey("PublicKey"))));
    };
    Ok(Peer {
        public_key,
        preshared_key: b.preshared_key,
        endpoint: b.endpoint,
        allowed_ips: b.allowed_ips,
        persistent_keepalive: b.persistent_keepalive.flatten(),
    })
}

/// Where the sections of a parsed file start (1-based lines), for checks that a caller makes
/// on top of the format's own, such as "this program needs an Address".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outline {
    /// The line of `[Interface]`.
    pub interface: usize,
    /// The line of each `[Peer]`, in the order of [`Config::peers`].
    pub peers: Vec<usize>,
}

pub(crate) fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    parse_in_order(file, text)
        .map(|(config, _)| config)
        .map_err(|problems| {
            // The first one met is what a one-error parse reports (never empty on failure).
            problems.into_iter().next().unwrap_or(ConfigError {
                file: file.to_owned(),
                line: None,
                kind: ErrorKind::Syntax,
            })
        })
}

/// Parses the whole file, going on after each problem: every problem is reported, in line
/// order (a section's missing key at its header line; problems of the whole file last).
pub(crate) fn parse_all(file: &str, text: &str) -> Result<(Config, Outline), Vec<ConfigError>> {
    parse_in_order(file, text).map_err(|mut problems| {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        problems
    })
}

/// [`parse_all`]'s work, with the problems in the order they were met (a section's missing
/// key once the section has ended).
fn parse_in_order(file: &str, text: &str) -> Result<(Config, Outline), Vec<ConfigError>> {
    let mut interface: Option<InterfaceBuilder> = None;
    let mut peers = Vec::new();
    let mut peer_lines = Vec::new();
    // Lines of a section that could not be opened (unknown, malformed or a second
    // [Interface]) are skipped: each would be one more error about the same mistake.
    let mut skipping = false;
    let mut section = Section::None;
    let mut problems = Vec::new();

    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |kind| ConfigError::at(file, line_no, kind);
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if let Section::Peer(done) = std::mem::replace(&mut section, Section::None) {
                let at = done.line;
                match finish_peer(file, done) {
                    Ok(peer) => {
                        peers.push(peer);
                        peer_lines.push(at);
                    }
                    Err(e) => problems.extend(e),
                }
            }
            skipping = true;
            let Some(name) = rest.strip_suffix(']').map(str::trim) else {
                problems.push(err(ErrorKind::Syntax));
                continue;
            };
            if name.eq_ignore_ascii_case("interface") {
                if interface.is_some() {
                    problems.push(err(ErrorKind::DuplicateInterface));
                    continue;
                }
                interface = Some(InterfaceBuilder {
                    line: line_no,
                    ..InterfaceBuilder::default()
                });
                section = Section::Interface;
            } else if name.eq_ignore_ascii_case("peer") {
                section = Section::Peer(PeerBuilder {
                    line: line_no,
                    ..PeerBuilder::default()
                });
            } else {
                problems.push(err(ErrorKind::UnknownSection(shown_name(name))));
                continue;
            }
            skipping = false;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            problems.push(err(ErrorKind::Syntax));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            problems.push(err(ErrorKind::Syntax));
            continue;
        }
        if skipping {
            continue;
        }
        let result = match &mut section {
            Section::None => Err(ErrorKind::OutsideSection),
            Section::Interface => match interface.as_mut() {
                Some(b) => interface_line(b, key, value),
                None => Err(ErrorKind::OutsideSection),
            },
            Section::Peer(b) => peer_line(b, key, value),
        };
        if let Err(kind) = result {
            problems.push(err(kind));
        }
    }
    if let Section::Peer(done) = section {
        let at = done.line;
        match finish_peer(file, done) {
            Ok(peer) => {
                peers.push(peer);
                peer_lines.push(at);
            }
            Err(e) => problems.extend(e),
        }
    }

    let Some(b) = interface else {
        problems.push(ConfigError {
            file: file.to_owned(),
            line: None,
            kind: ErrorKind::MissingInterface,
        });
        return Err(problems);
    };
    let Some(private_key) = b.private_key else {
        // A PrivateKey line that was there has been reported as invalid already.
        if !b.key_line {
            problems.push(ConfigError::at(
                file,
                b.line,
                ErrorKind::MissingKey("PrivateKey"),
            ));
        }
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let outline = Outline {
        interface: b.line,
        peers: peer_lines,
    };
    let config = Config {
        interface: Interface {
            private_key,
            addresses: b.addresses,
            dns_servers: b.dns_servers,
            dns_search: b.dns_search,
            mtu: b.mtu,
            listen_port: b.listen_port,
            fwmark: b.fwmark.flatten(),
            table: b.table,
            pre_up: b.pre_up,
            post_up: b.post_up,
            pre_down: b.pre_down,
            post_down: b.post_down,
            save_config: b.save_config,
        },
        peers,
    };
    Ok((config, outline))
}

/// The name of an unknown key or section as an error may show it. Every real name is short; a
/// long one is most likely a key pasted on a line of its own (a base64 key ends in `=`, so the
/// line parses as `Key = `), and an error must never print key material.
fn shown_name(name: &str) -> String {
    const LONGEST_SHOWN: usize = 24;
    if name.chars().count() <= LONGEST_SHOWN {
        name.to_owned()
    } else {
        format!(
            "(a {}-character name, not shown in case it is a key)",
            name.chars().count()
        )
    }
}

#[cfg(test)]
mod tests;
