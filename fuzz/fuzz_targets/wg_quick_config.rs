//! `rwg_config::Config::parse`: the wg-quick file parser, on arbitrary text (invalid UTF-8
//! replaced). Checked:
//! - nothing panics; an error names the file and, when it has a line, one that exists;
//! - an error about a line that holds a secret never shows it: a `PrivateKey`/`PresharedKey`
//!   value, or a key pasted on a line of its own (which parses as `Key =`);
//! - a parsed configuration written back in wg-quick syntax parses to an equal `Config`.
//!   rwg-config has no writer: the one here (`write`) prints every field in its plain
//!   spelling, so this checks that whatever the parser accepts has a spelling it accepts
//!   again, with nothing lost or changed on the way (keys, prefixes, endpoints, hooks, DNS).
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use rwg_config::key::{decode_key, encode_key};
use rwg_config::{Config, Endpoint};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse("fuzz.conf", &text) {
        Err(e) => {
            assert_eq!(e.file, "fuzz.conf");
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.lines().count(),
                    "error on line {line}"
                );
            }
            let message = e.to_string();
            for (line, secret) in secrets(&text) {
                if e.line == Some(line) {
                    assert!(
                        !message.contains(secret),
                        "an error shows a secret: {message}"
                    );
                }
            }
        }
        Ok(config) => {
            let written = write(&config);
            let again = Config::parse("written.conf", &written)
                .unwrap_or_else(|e| panic!("the written config does not parse: {e}\n{written}"));
            assert!(
                again == config,
                "written and parsed again, it differs:\n{written}"
            );
        }
    }
});

/// The configuration in wg-quick syntax, one line per value.
fn write(c: &Config) -> String {
    let i = &c.interface;
    let mut out = String::from("[Interface]\n");
    let _ = writeln!(out, "PrivateKey = {}", encode_key(i.private_key.as_bytes()));
    for a in &i.addresses {
        let _ = writeln!(out, "Address = {a}");
    }
    for d in &i.dns_servers {
        let _ = writeln!(out, "DNS = {d}");
    }
    for d in &i.dns_search {
        let _ = writeln!(out, "DNS = {d}");
    }
    if let Some(m) = i.mtu {
        let _ = writeln!(out, "MTU = {m}");
    }
    if let Some(p) = i.listen_port {
        let _ = writeln!(out, "ListenPort = {p}");
    }
    if let Some(m) = i.fwmark {
        let _ = writeln!(out, "FwMark = {m:#x}");
    }
    if let Some(t) = &i.table {
        let _ = writeln!(out, "Table = {t}");
    }
    if let Some(s) = &i.save_config {
        let _ = writeln!(out, "SaveConfig = {s}");
    }
    for (key, hooks) in [
        ("PreUp", &i.pre_up),
        ("PostUp", &i.post_up),
        ("PreDown", &i.pre_down),
        ("PostDown", &i.post_down),
    ] {
        for h in hooks {
            let _ = writeln!(out, "{key} = {h}");
        }
    }
    for p in &c.peers {
        out.push_str("\n[Peer]\n");
        let _ = writeln!(out, "PublicKey = {}", encode_key(p.public_key.as_bytes()));
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(out, "PresharedKey = {}", encode_key(k.as_bytes()));
        }
        match &p.endpoint {
            Some(e @ Endpoint::Addr(_)) | Some(e @ Endpoint::Host { .. }) => {
                let _ = writeln!(out, "Endpoint = {e}");
            }
            None => {}
        }
        for a in &p.allowed_ips {
            let _ = writeln!(out, "AllowedIPs = {a}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {k}");
        }
    }
    out
}

/// What an error about their line must never show (line number, text): the values of `PrivateKey` and `PresharedKey` lines, and
/// keys pasted on lines of their own (without the `=` the line parser splits at).
fn secrets(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            // Key-sized words only: a short value could match a word of the message itself.
            let key_like = value.len() >= 40 && !value.contains(char::is_whitespace);
            if (key == "privatekey" || key == "presharedkey") && key_like {
                out.push((index + 1, value));
            }
        }
        if decode_key(line).is_ok() {
            out.push((index + 1, &line[..43]));
        }
    }
    out
}
