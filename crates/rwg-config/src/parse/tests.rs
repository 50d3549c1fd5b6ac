use super::*;
use crate::key::encode_key;

fn k(byte: u8) -> String {
    encode_key(&[byte; 32])
}

fn good() -> String {
    format!(
        "# a comment\n\
         [Interface]\n\
         PrivateKey = {}\n\
         Address = 10.0.0.2/24, fd00::2/64\n\
         address=10.0.1.2\n\
         DNS = 1.1.1.1, example.com,2606:4700::1111\n\
         MTU = 1420\n\
         ListenPort = 51820\n\
         FwMark = 0x10\n\
         Table = off\n\
         PreUp = echo pre\n\
         PostUp = iptables -A x; echo = y\n\
         PostUp = echo second\n\
         PreDown = echo pd\n\
         PostDown = echo down\n\
         SaveConfig = false\n\
         \n\
         [Peer]   # the server\n\
         PublicKey = {}\n\
         PresharedKey = {}\n\
         Endpoint = vpn.example.com:51820\n\
         AllowedIPs = 0.0.0.0/0\n\
         AllowedIPs = ::/0 , 192.168.0.0/16\n\
         PersistentKeepalive = 25\n\
         [peer]\n\
         PUBLICKEY = {}\n\
         Endpoint = [2001:db8::1]:443\n\
         PersistentKeepalive = off\n",
        k(1),
        k(2),
        k(3),
        k(4)
    )
}

#[test]
fn parses_everything() {
    let c = parse("wg0.conf", &good()).expect("valid config");
    let i = &c.interface;
    assert_eq!(i.private_key, PrivateKey::from_bytes([1; 32]));
    let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.2/24", "fd00::2/64", "10.0.1.2/32"]);
    assert_eq!(
        i.dns_servers,
        vec![
            "1.1.1.1".parse::<IpAddr>().expect("ip"),
            "2606:4700::1111".parse().expect("ip")
        ]
    );
    assert_eq!(i.dns_search, vec!["example.com".to_owned()]);
    assert_eq!(i.mtu, Some(1420));
    assert_eq!(i.listen_port, Some(51820));
    assert_eq!(i.fwmark, Some(16));
    assert_eq!(i.table.as_deref(), Some("off"));
    assert_eq!(i.pre_up, ["echo pre"]);
    assert_eq!(i.post_up, ["iptables -A x; echo = y", "echo second"]);
    assert_eq!(i.pre_down, ["echo pd"]);
    assert_eq!(i.post_down, ["echo down"]);
    assert_eq!(i.save_config.as_deref(), Some("false"));

    assert_eq!(c.peers.len(), 2);
    let p = &c.peers[0];
    assert_eq!(p.public_key, PublicKey::from_bytes([2; 32]));
    assert_eq!(p.preshared_key, Some(PresharedKey::from_bytes([3; 32])));
    assert_eq!(
        p.endpoint,
        Some(Endpoint::Host {
            host: "vpn.example.com".into(),
            port: 51820
        })
    );
    assert_eq!(
        p.endpoint.as_ref().map(|e| e.to_string()).as_deref(),
        Some("vpn.example.com:51820")
    );
    assert_eq!(p.allowed_ips.len(), 3);
    assert_eq!(p.persistent_keepalive, Some(25));
    let p = &c.peers[1];
    assert_eq!(p.public_key, PublicKey::from_bytes([4; 32]));
    assert_eq!(p.preshared_key, None);
    assert_eq!(
        p.endpoint.as_ref().and_then(Endpoint::addr),
        Some("[2001:db8::1]:443".parse().expect("addr"))
    );
    assert_eq!(p.persistent_keepalive, None);
    assert!(p.allowed_ips.is_empty());
}

#[test]
fn minimal_and_defaults() {
    let c = parse("m", &format!("[Interface]\nPrivateKey={}", k(9))).expect("valid");
    assert!(c.peers.is_empty());
    assert_eq!(c.interface.mtu, None);
    assert_eq!(c.interface.fwmark, None);
    assert!(c.interface.addresses.is_empty());
    // Peers may come before the interface; CRLF line ends are fine.
    let c = parse(
        "m",
        &format!(
            "[Peer]\r\nPublicKey={}\r\n[Interface]\r\nPrivateKey={}\r\nFwMark = off\r\n",
            k(1),
            k(2)
        ),
    )
    .expect("valid");
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.interface.fwmark, None);
}

#[test]
fn debug_hides_private_key() {
    let c = parse(
        "m",
        &format!(
            "[Interface]\nPrivateKey={}\n[Peer]\nPublicKey={}\nPresharedKey={}",
            k(7),
            k(8),
            k(5)
        ),
    )
    .expect("valid");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(&k(7)), "{dbg}");
    assert!(!dbg.contains(&k(5)), "{dbg}");
    assert!(!dbg.contains("7, 7, 7"), "{dbg}");
    assert!(!dbg.contains("5, 5, 5"), "{dbg}");
}

fn error_of(text: &str) -> (Option<usize>, String) {
    let e = parse("wg0.conf", text)
        .map(|_| text.to_owned())
        .expect_err("must fail");
    (e.line, e.to_string())
}

#[track_caller]
fn assert_err(text: &str, line: usize, contains: &str) {
    let (l, msg) = error_of(text);
    assert_eq!(l, Some(line), "{msg}");
    assert!(msg.starts_with(&format!("wg0.conf:{line}: ")), "{msg}");
    assert!(
        msg.contains(contains),
        "{msg:?} should contain {contains:?}"
    );
}

#[test]
fn every_error() {
    let pk = format!("[Interface]\nPrivateKey = {}\n", k(1));
    // Syntax and structure.
    assert_err(
        &format!("{pk}garbage\n"),
        3,
        "expected `[Section]` or `Key = Value`",
    );
    assert_err(&format!("{pk}[Interface\n"), 3, "expected");
    assert_err(&format!("{pk} = 5\n"), 3, "expected");
    assert_err("MTU = 1420\n", 1, "key outside of a section");
    assert_err("\n[Wat]\n", 2, "unknown section [Wat]");
    assert_err(
        &format!("{pk}[Interface]\n"),
        3,
        "more than one [Interface] section",
    );
    assert_err(
        &format!("{pk}Frobnicate = 1\n"),
        3,
        "unknown key Frobnicate",
    );
    assert_err(
        &format!("{pk}[Peer]\nPublicKey = {}\nListenPort = 5\n", k(2)),
        5,
        "unknown key ListenPort",
    );
    assert_err(
        &format!("{pk}[Peer]\nEndpoint = 1.2.3.4:5\n"),
        3,
        "section has no PublicKey",
    );
    assert_err(
        &format!("{pk}[Peer]\n[Peer]\nPublicKey = {}\n", k(2)),
        3,
        "section has no PublicKey",
    );
    assert_err(
        "# x\n[Interface]\nMTU = 1420\n",
        2,
        "section has no PrivateKey",
    );
    let (line, msg) = error_of(&format!("[Peer]\nPublicKey = {}\n", k(2)));
    assert_eq!(line, None);
    assert_eq!(msg, "wg0.conf: no [Interface] section");
    let (line, msg) = error_of("");
    assert_eq!(
        (line, msg.as_str()),
        (None, "wg0.conf: no [Interface] section")
    );

    // Duplicates of single-valued keys.
    assert_err(
        &format!("{pk}privatekey = {}\n", k(2)),
        3,
        "PrivateKey given more than once",
    );
    assert_err(
        &format!("{pk}MTU=1420\nMTU=1280\n"),
        4,
        "MTU given more than once",
    );
    assert_err(
        &format!("{pk}ListenPort=1\nListenPort=2\n"),
        4,
        "ListenPort given more than once",
    );
    assert_err(
        &format!("{pk}FwMark=1\nFwMark=2\n"),
        4,
        "FwMark given more than once",
    );
    assert_err(
        &format!("{pk}Table=1\nTable=2\n"),
        4,
        "Table given more than once",
    );
    assert_err(
        &format!("{pk}SaveConfig=true\nSaveConfig=true\n"),
        4,
        "SaveConfig given more than once",
    );
    let peer = format!("{pk}[Peer]\nPublicKey = {}\n", k(2));
    assert_err(
        &format!("{peer}PublicKey = {}\n", k(3)),
        5,
        "PublicKey given more than once",
    );
    assert_err(
        &format!("{peer}PresharedKey = {0}\nPresharedKey = {0}\n", k(3)),
        6,
        "PresharedKey given more than once",
    );
    assert_err(
        &format!("{peer}Endpoint = 1.2.3.4:5\nEndpoint = 1.2.3.4:6\n"),
        6,
        "Endpoint given more than once",
    );
    assert_err(
        &format!("{peer}PersistentKeepalive = 1\nPersistentKeepalive = 2\n"),
        6,
        "PersistentKeepalive given more than once",
    );

    // Keys.
    assert_err(
        "[Interface]\nPrivateKey = abc\n",
        2,
        "invalid PrivateKey: a key is 44 base64 characters, found 3",
    );
    assert_err(
        "[Interface]\nPrivateKey =\n",
        2,
        "invalid PrivateKey: empty value",
    );
    assert_err(
        &format!("{pk}[Peer]\nPublicKey = {}!\n", &k(2)[..43]),
        4,
        "invalid PublicKey: character 44 is not base64",
    );
    assert_err(
        &format!("{peer}PresharedKey = //////////////////////////////////////////9=\n"),
        5,
        "invalid PresharedKey: not a canonical",
    );

    // Addresses.
    assert_err(
        &format!("{pk}Address = 10.0.0.1/33\n"),
        3,
        "invalid Address: prefix length \"33\" is not 0..=32",
    );
    assert_err(
        &format!("{pk}Address = 10.0.0.1, nope\n"),
        3,
        "invalid Address: \"nope\" is not an IP address",
    );
    assert_err(
        &format!("{peer}AllowedIPs = ::/129\n"),
        5,
        "invalid AllowedIPs: prefix length \"129\" is not 0..=128",
    );

    // Numbers.
    assert_err(
        &format!("{pk}MTU = 100\n"),
        3,
        "invalid MTU: 100 is below the minimum of 576",
    );
    assert_err(
        &format!("{pk}MTU = big\n"),
        3,
        "invalid MTU: \"big\" is not a number",
    );
    assert_err(
        &format!("{pk}MTU = 70000\n"),
        3,
        "invalid MTU: 70000 is out of range",
    );
    assert_err(
        &format!("{pk}ListenPort = -1\n"),
        3,
        "invalid ListenPort: \"-1\" is not a number",
    );
    assert_err(
        &format!("{pk}ListenPort =\n"),
        3,
        "invalid ListenPort: empty value",
    );
    assert_err(
        &format!("{pk}FwMark = 0xzz\n"),
        3,
        "invalid FwMark: \"0xzz\" is not `off` or a 32-bit number",
    );
    assert_err(&format!("{pk}FwMark = 0x\n"), 3, "invalid FwMark");
    assert_err(&format!("{pk}FwMark = 4294967296\n"), 3, "invalid FwMark");
    assert_err(&format!("{pk}FwMark = on\n"), 3, "invalid FwMark");
    assert_err(
        &format!("{peer}PersistentKeepalive = 65536\n"),
        5,
        "invalid PersistentKeepalive: 65536 is out of range",
    );
    assert_err(
        &format!("{peer}PersistentKeepalive = sometimes\n"),
        5,
        "invalid PersistentKeepalive",
    );

    // Endpoints.
    for (bad, why) in [
        ("1.2.3.4", "expected host:port"),
        ("[::1:5", "missing `]`"),
        ("[::1]5", "expected `:port` after `]`"),
        ("host:", "bad port: empty value"),
        ("host:x", "bad port"),
        ("host:0", "port 0"),
        (":5", "empty host"),
        ("[nothost]:5", "is not an IPv6 address"),
        ("bad host:5", "is not a host name"),
        ("a..b:5", "is not a host name"),
        ("", "empty value"),
    ] {
        assert_err(
            &format!("{peer}Endpoint = {bad}\n"),
            5,
            "invalid Endpoint: ",
        );
        assert_err(&format!("{peer}Endpoint = {bad}\n"), 5, why);
    }
}

#[test]
fn values_accepted() {
    assert_eq!(parse_fwmark("0"), Ok(None));
    assert_eq!(parse_fwmark("OFF"), Ok(None));
    assert_eq!(parse_fwmark("1234"), Ok(Some(1234)));
    assert_eq!(parse_fwmark("0XfF"), Ok(Some(255)));
    assert_eq!(parse_keepalive("0"), Ok(None));
    assert_eq!(parse_keepalive("65535"), Ok(Some(65535)));
    assert_eq!(
        parse_endpoint("1.2.3.4:5"),
        Ok(Endpoint::Addr("1.2.3.4:5".parse().expect("addr")))
    );
    assert_eq!(
        parse_endpoint("[1.2.3.4]:5"),
        Ok(Endpoint::Addr("1.2.3.4:5".parse().expect("addr")))
    );
    assert!(parse_endpoint("[fe80::1%2]:5").is_ok());
    assert_eq!(
        parse_endpoint("my_host-1.lan:9"),
        Ok(Endpoint::Host {
            host: "my_host-1.lan".into(),
            port: 9
        })
    );
    assert_eq!(parse_mtu("65535"), Ok(65535));
    // Like wg(8), the last colon separates the port from an unbracketed address.
    assert_eq!(
        parse_endpoint("::1:5"),
        Ok(Endpoint::Addr("[::1]:5".parse().expect("addr")))
    );
}

#[test]
fn resolve_endpoints() {
    let mut c = parse(
        "m",
        &format!("[Interface]\nPrivateKey={}\n[Peer]\nPublicKey={}\nEndpoint=localhost:51820\n[Peer]\nPublicKey={}\nEndpoint=127.0.0.9:1\n", k(1), k(2), k(3)),
    )
    .expect("valid");
    c.resolve_endpoints().expect("localhost resolves");
    let a = c.peers[0]
        .endpoint
        .as_ref()
        .and_then(Endpoint::addr)
        .expect("resolved");
    assert!(a.ip().is_loopback());
    assert_eq!(a.port(), 51820);
    assert_eq!(
        c.peers[1].endpoint.as_ref().and_then(Endpoint::addr),
        Some("127.0.0.9:1".parse().expect("addr"))
    );

    let mut c = parse(
        "m",
        &format!(
            "[Interface]\nPrivateKey={}\n[Peer]\nPublicKey={}\nEndpoint=no-such-host.invalid:1\n",
            k(1),
            k(2)
        ),
    )
    .expect("valid");
    let e = c.resolve_endpoints().expect_err("must not resolve");
    assert_eq!(e.host, "no-such-host.invalid");
    assert!(e
        .to_string()
        .starts_with("cannot resolve endpoint no-such-host.invalid: "));
}

#[test]
fn from_file() {
    let dir = std::env::temp_dir().join(format!("rwg-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("wg7.conf");
    std::fs::write(
        &path,
        format!("[Interface]\nPrivateKey={}\nBogus=1\n", k(1)),
    )
    .expect("write");
    let e = crate::Config::from_file(&path).expect_err("bogus key");
    assert_eq!(e.to_string(), "wg7.conf:3: unknown key Bogus");
    std::fs::write(&path, good()).expect("write");
    assert!(crate::Config::from_file(&path).is_ok());
    let e = crate::Config::from_file(dir.join("missing.conf")).expect_err("missing");
    assert!(matches!(e.kind, ErrorKind::Io(_)));
    assert!(std::error::Error::source(&e).is_some());
    assert!(
        e.to_string().starts_with("missing.conf: cannot read: "),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_pasted_on_a_line_of_its_own_is_not_printed_in_the_error() {
    // A base64 key ends in `=`, so the line reads as an unknown key with an empty value.
    let secret = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    let text = format!("[Interface]\nPrivateKey = {secret}\n{secret}\n");
    let e = Config::parse("wg0.conf", &text).expect_err("unknown key");
    let shown = e.to_string();
    assert!(shown.starts_with("wg0.conf:3: unknown key"), "{shown}");
    assert!(!shown.contains(&secret[..20]), "{shown}");
    // Short unknown names are still shown, to be fixed.
    let e = Config::parse("wg0.conf", "[Interface]\nPrivatKey = x\n").expect_err("typo");
    assert!(e.to_string().contains("PrivatKey"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_line() {
    // Five mistakes: each is reported once, in line order; the lines of an unknown section
    // are not reported again one by one.
    let text = format!(
        "[Interface]\n\
         PrivateKey = {}\n\
         MTU = 12\n\
         Bogus = 1\n\
         [Peer]\n\
         Endpoint = nowhere\n\
         AllowedIPs = 10.0.0.0/8\n\
         [Wat]\n\
         Anything = goes\n\
         Whatever = too\n\
         [Peer]\n\
         PublicKey = {}\n\
         AllowedIPs = 10.1.0.0/33\n",
        k(1),
        k(2)
    );
    let problems = parse_all("wg0.conf", &text).expect_err("five problems");
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let lines: Vec<Option<usize>> = problems.iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        [Some(3), Some(4), Some(5), Some(6), Some(8), Some(13)],
        "{shown:#?}"
    );
    for (i, want) in [
        "wg0.conf:3: invalid MTU",
        "wg0.conf:4: unknown key Bogus",
        "wg0.conf:5: section has no PublicKey",
        "wg0.conf:6: invalid Endpoint",
        "wg0.conf:8: unknown section [Wat]",
        "wg0.conf:13: invalid AllowedIPs",
    ]
    .iter()
    .enumerate()
    {
        assert!(shown[i].starts_with(want), "{} vs {want}", shown[i]);
    }
    // The first of them is what parse() reports.
    assert_eq!(
        parse("wg0.conf", &text).expect_err("invalid").to_string(),
        shown[0]
    );
    // A file without [Interface] and with a bad line says both.
    let problems = parse_all("x.conf", "[Peer]\nPublicKey = x\n").expect_err("two problems");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[1].to_string(), "x.conf: no [Interface] section");
    // An invalid PrivateKey is one problem, not also a missing one; a misspelt key is two.
    let problems = parse_all("y.conf", "[Interface]\nPrivateKey = x\n").expect_err("one");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, Some(2));
    let problems = parse_all("y.conf", "[Interface]\nPrivatKey = x\n").expect_err("two");
    let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(1), Some(2)], "{problems:?}");
}

#[test]
fn the_outline_gives_each_section_its_line() {
    let (config, outline) = parse_all("wg0.conf", &good()).expect("valid");
    assert_eq!(outline.interface, 2);
    assert_eq!(outline.peers, [18, 25]);
    assert_eq!(outline.peers.len(), config.peers.len());
}
