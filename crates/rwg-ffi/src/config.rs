//! A wg-quick configuration as the body of a UAPI `set` request, which is what a tunnel
//! applies.
//!
//! The tunnel takes what belongs to WireGuard: `PrivateKey`, `ListenPort`, `FwMark` and the
//! peers. The rest of `[Interface]` — `Address`, `DNS`, `MTU`, `Table`, the `Pre/PostUp/Down`
//! commands, `SaveConfig` — configures the interface and the host, which is the job of
//! whoever created the TUN descriptor (an Android app passes them to `VpnService.Builder`, an
//! iOS app to `NEPacketTunnelNetworkSettings`): they are accepted, named in an info log line,
//! and otherwise ignored.

use std::fmt::Write as _;

use rwg_config::{Config, Endpoint, ErrorKind};
use zeroize::Zeroizing;

use crate::error::RwgError;

/// Names longer than this in an "unknown key" error are not logged: a line holding only a
/// base64 key (which ends in `=`) would otherwise put most of the key in the log.
const MAX_LOGGED_NAME: usize = 24;

/// The `set` body for a wg-quick file: the whole device (`replace_peers=true`). Host names
/// in `Endpoint` are resolved here (blocking on the system resolver).
pub(crate) fn wg_quick_to_uapi(text: &str) -> Result<Zeroizing<String>, RwgError> {
    let mut config = Config::parse("config", text).map_err(|e| {
        tracing::warn!("wg-quick configuration: {}", describe(&e));
        RwgError::InvalidConfig
    })?;
    config.resolve_endpoints().map_err(|e| {
        tracing::warn!("wg-quick configuration: {e}");
        RwgError::Resolve
    })?;
    let i = &config.interface;
    let ignored: Vec<&str> = [
        ("Address", !i.addresses.is_empty()),
        ("DNS", !i.dns_servers.is_empty() || !i.dns_search.is_empty()),
        ("MTU", i.mtu.is_some()),
        ("Table", i.table.is_some()),
        ("PreUp", !i.pre_up.is_empty()),
        ("PostUp", !i.post_up.is_empty()),
        ("PreDown", !i.pre_down.is_empty()),
        ("PostDown", !i.post_down.is_empty()),
        ("SaveConfig", i.save_config.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    if !ignored.is_empty() {
        tracing::info!(
            "wg-quick keys left to the app that created the TUN: {}",
            ignored.join(", ")
        );
    }
    Ok(to_uapi(&config))
}

/// The error without anything that could be secret.
fn describe(e: &rwg_config::ConfigError) -> String {
    let line = e.line.map_or(String::new(), |l| format!("line {l}: "));
    match &e.kind {
        ErrorKind::UnknownKey(k) if k.len() > MAX_LOGGED_NAME => format!("{line}unknown key"),
        ErrorKind::UnknownSection(s) if s.len() > MAX_LOGGED_NAME => {
            format!("{line}unknown section")
        }
        kind => format!("{line}{kind}"),
    }
}

fn hex(out: &mut String, bytes: &[u8; 32]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn to_uapi(config: &Config) -> Zeroizing<String> {
    // Every write goes into the zeroizing buffer, sized up front so it never reallocates
    // (a reallocation would leave a copy of the key behind).
    let mut out = Zeroizing::new(String::with_capacity(256 + config.peers.len() * 512));
    let i = &config.interface;
    out.push_str("private_key=");
    hex(&mut out, i.private_key.as_bytes());
    out.push('\n');
    if let Some(port) = i.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    if let Some(mark) = i.fwmark {
        let _ = writeln!(out, "fwmark={mark}");
    }
    out.push_str("replace_peers=true\n");
    for p in &config.peers {
        out.push_str("public_key=");
        hex(&mut out, p.public_key.as_bytes());
        out.push('\n');
        if let Some(psk) = &p.preshared_key {
            out.push_str("preshared_key=");
            hex(&mut out, psk.as_bytes());
            out.push('\n');
        }
        if let Some(Endpoint::Addr(addr)) = &p.endpoint {
            let _ = writeln!(out, "endpoint={addr}");
        }
        if let Some(secs) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive_interval={secs}");
        }
        out.push_str("replace_allowed_ips=true\n");
        for net in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";

    fn hex_of(b64: &str) -> String {
        let bytes = rwg_config::key::decode_key(b64).expect("key");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_wg_quick_file_becomes_the_whole_device() {
        let text = format!(
            "[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.9.0.1/24\nDNS = 10.9.0.53\n\
             ListenPort = 51820\nMTU = 1380\n\n[Peer]\nPublicKey = {PEER}\nPresharedKey = {PSK}\n\
             Endpoint = 192.0.2.7:51820\nAllowedIPs = 10.9.0.0/24, fd00::/64\nPersistentKeepalive = 25\n"
        );
        let body = wg_quick_to_uapi(&text).expect("valid");
        let expected = format!(
            "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\n\
             preshared_key={}\nendpoint=192.0.2.7:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.9.0.0/24\nallowed_ip=fd00::/64\n",
            hex_of(PRIVATE),
            hex_of(PEER),
            hex_of(PSK)
        );
        assert_eq!(*body, expected);
    }

    #[test]
    fn malformed_files_are_refused() {
        for text in [
            String::new(),
            "[Peer]\nPublicKey = x\n".to_owned(),
            "[Interface]\nPrivateKey = short\n".to_owned(),
            format!("[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 70000\n"),
            format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n"),
            "not ini at all".to_owned(),
        ] {
            assert_eq!(
                wg_quick_to_uapi(&text).err(),
                Some(RwgError::InvalidConfig),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_never_quote_a_key_written_where_a_name_belongs() {
        let text = format!("[Interface]\n{PRIVATE}\n");
        let e = Config::parse("config", &text).expect_err("a key alone on a line");
        let said = describe(&e);
        assert!(!said.contains(&PRIVATE[..20]), "{said}");
        assert!(said.contains("line 2"), "{said}");
        let e = Config::parse("config", "[Interface]\nAdress = 10.0.0.1/24\n").expect_err("typo");
        assert!(describe(&e).contains("Adress"), "short names are named");
    }
}
