//! End to end: the `rwg` daemon driven by the real `wg` tool inside a network namespace.
//!
//! ```text
//!   netns rwgt-<pid>
//!   +--------------------------------------------+
//!   |  rwg [-f] <iface>  <--- /var/run/wireguard/<iface>.sock --- wg set/show/showconf
//!   |     |
//!   |   TUN <iface>  <--- ip link del (shutdown)
//!   +--------------------------------------------+
//! ```
//!
//! Needs root, /dev/net/tun, `ip`, `ss` and `wg`: these tests are `#[ignore]`d, run them with
//! `cargo test -- --ignored` as root, where a missing requirement fails them. The socket
//! directory is shared by all namespaces, so interface names carry the process id.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RWG: &str = env!("CARGO_BIN_EXE_rwg");

const NEEDS_ROOT: &str =
    "needs root, /dev/net/tun, ip, ss and wg: run with cargo test -- --ignored as root";

fn have_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Fails the test (never skips it) when something the daemon tests need is missing.
fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(root, "not root: {NEEDS_ROOT}");
    assert!(
        Path::new("/dev/net/tun").exists(),
        "no /dev/net/tun: {NEEDS_ROOT}"
    );
    for tool in ["ip", "ss", "wg"] {
        assert!(have_tool(tool), "`{tool}` not installed: {NEEDS_ROOT}");
    }
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("rwgt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program).args(args).output().expect("spawn")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn iface(tag: &str) -> String {
    // At most 15 bytes.
    format!("rt{tag}{}", std::process::id() % 1_000_000)
}

fn sock(iface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
}

/// Generous bound for the daemon to come up or go away on a loaded machine: a hang guard,
/// not a speed requirement.
const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds; fails the test after [`PATIENCE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a foreground daemon's socket; fails at once if the daemon exits instead.
fn wait_for_socket(name: &str, daemon: &mut Child) {
    wait_for("the configuration socket", || {
        if let Some(status) = daemon.try_wait().expect("try_wait") {
            panic!("daemon exited before serving: {status:?}");
        }
        sock(name).exists()
    });
}

/// Kills the daemon if the test fails before stopping it, so no process outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the daemon to exit (bounded; [`KillOnDrop`] kills it if this fails).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the daemon to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn key_pair() -> (String, String) {
    let private = Command::new(RWG).arg("genkey").output().expect("genkey");
    let private = text(&private).trim().to_owned();
    let public = pubkey_with("wg", &private);
    (private, public)
}

/// `program pubkey` with `private` on its standard input: the public key it prints.
fn pubkey_with(program: &str, private: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("pubkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{private}\n").as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    text(&output).trim().to_owned()
}

#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss and wg: run with cargo test -- --ignored as root"]
fn foreground_configured_by_wg_and_stopped_by_sigterm() {
    require_root_and_tools();
    let ns = Netns::new("fg");
    // A route towards the peer's (unreachable, documentation-range) endpoint, so that the
    // socket accepts the handshake initiation: tx_bytes counts only what the socket took.
    assert!(ns.run("ip", &["link", "set", "lo", "up"]).status.success());
    assert!(ns
        .run("ip", &["route", "add", "192.0.2.0/24", "dev", "lo"])
        .status
        .success());
    let name = iface("f");
    let mut daemon = KillOnDrop(ns.cmd(RWG).args(["-f", &name]).spawn().expect("spawn rwg"));
    let daemon = &mut daemon.0;
    wait_for_socket(&name, daemon);
    // Keys are kept out of swap and core dumps: as root (CAP_IPC_LOCK) all memory is locked.
    // (`ip netns exec` execs rwg, so the child's pid is the daemon's.)
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).expect("status");
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/PID/status");
    assert!(locked_kb > 0, "{status}");
    // The configuration socket is root's alone.
    let mode = std::fs::metadata(sock(&name))
        .expect("stat socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let (private, public) = key_pair();
    let (_, peer) = key_pair();
    let dir = std::env::temp_dir().join(format!("rwg-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let keyfile = dir.join("key");
    std::fs::write(&keyfile, format!("{private}\n")).expect("write key");
    let keyfile = keyfile.to_str().expect("utf8 path");
    let out = ns.run(
        "wg",
        &[
            "set",
            &name,
            "private-key",
            keyfile,
            "listen-port",
            "51999",
            "fwmark",
            "0x42",
            "peer",
            &peer,
            "endpoint",
            "192.0.2.1:51820",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.0.0.0/24,fd00::/64",
        ],
    );
    assert!(
        out.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The initiation leaves from the data path, not from inside `wg set`: wait for it.
    let mut dump = String::new();
    wait_for("the handshake initiation to be counted as sent", || {
        dump = text(&ns.run("wg", &["show", &name, "dump"]));
        dump.lines().nth(1).and_then(|l| l.split('\t').nth(6)) != Some("0")
    });
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    assert_eq!(
        lines[0],
        [private.as_str(), public.as_str(), "51999", "0x42"]
    );
    // Turning persistent keepalive on starts a handshake at once: one initiation (148 bytes)
    // is counted as sent, none received.
    assert_eq!(
        lines[1],
        [
            peer.as_str(),
            "(none)",
            "192.0.2.1:51820",
            "10.0.0.0/24,fd00::/64",
            "0",
            "0",
            "148",
            "25"
        ]
    );
    // wg read all of that past rwg's own keys, which the raw reply does carry: the one
    // initiation counted above.
    let raw = {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(sock(&name)).expect("connect");
        c.write_all(b"get=1\n\n").expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("read");
        reply
    };
    assert!(
        raw.lines().any(|l| l == "rwg_handshake_initiations_sent=1"),
        "{raw}"
    );
    assert!(raw.lines().any(|l| l == "rwg_dropped_replay=0"), "{raw}");
    let conf = text(&ns.run("wg", &["showconf", &name]));
    assert!(conf.contains("ListenPort = 51999"), "{conf}");
    assert!(conf.contains(&format!("PrivateKey = {private}")), "{conf}");
    // The port is really bound, on both families.
    let ss = text(&ns.run("ss", &["-Hulpn", "sport", "=", ":51999"]));
    assert_eq!(ss.lines().count(), 2, "{ss}");

    // A second daemon for the same name fails cleanly and leaves ours alone.
    let second = ns.run(RWG, &["-f", &name]);
    assert!(!second.status.success());
    assert!(sock(&name).exists());

    // Removal through wg.
    let out = ns.run("wg", &["set", &name, "peer", &peer, "remove"]);
    assert!(out.status.success());
    assert_eq!(text(&ns.run("wg", &["show", &name, "peers"])).trim(), "");

    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = wait_exit(daemon);
    assert!(status.success(), "{status:?}");
    assert!(!sock(&name).exists());
    assert!(!ns.run("ip", &["link", "show", &name]).status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss and wg: run with cargo test -- --ignored as root"]
fn daemonized_stops_when_interface_deleted() {
    require_root_and_tools();
    let ns = Netns::new("bg");
    let name = iface("b");
    // The parent exits 0 only once the child serves: the socket must exist right away.
    let out = ns.run(RWG, &[&name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sock(&name).exists());
    let show = ns.run("wg", &["show", &name]);
    assert!(show.status.success());
    // wg-quick down does exactly this.
    assert!(ns.run("ip", &["link", "del", &name]).status.success());
    wait_for("socket removal", || !sock(&name).exists());
}

#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss and wg: run with cargo test -- --ignored as root"]
fn stops_when_socket_deleted_and_refuses_taken_names() {
    require_root_and_tools();
    let ns = Netns::new("sk");
    let name = iface("s");
    let mut daemon = KillOnDrop(ns.cmd(RWG).args(["-f", &name]).spawn().expect("spawn rwg"));
    wait_for_socket(&name, &mut daemon.0);
    std::fs::remove_file(sock(&name)).expect("rm socket");
    let status = wait_exit(&mut daemon.0);
    assert!(status.success(), "{status:?}");
    assert!(!ns.run("ip", &["link", "show", &name]).status.success());

    // A name held by a non-TUN interface: clear error, no socket left behind.
    let out = ns.run(RWG, &["lo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    assert!(!sock("lo").exists());
}

#[test]
#[ignore = "needs wg(8) installed: run with cargo test -- --ignored"]
fn key_tools_match_wg() {
    assert!(have_tool("wg"), "`wg` not installed");
    let (private, public) = key_pair();
    assert_eq!(pubkey_with(RWG, &private), public);
    let psk = text(&Command::new(RWG).arg("genpsk").output().expect("genpsk"));
    assert_eq!(psk.trim().len(), 44);
    assert!(psk.ends_with("=\n"));
}

/// `curl` inside the namespace: the body, or None when nothing answers.
fn fetch(ns: &Netns, url: &str) -> Option<String> {
    let out = ns.run("curl", &["-sf", "--max-time", "5", url]);
    out.status.success().then(|| text(&out))
}

#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss, wg and curl: run with cargo test -- --ignored as root"]
fn metrics_from_the_option_or_the_environment() {
    require_root_and_tools();
    assert!(have_tool("curl"), "`curl` not installed: {NEEDS_ROOT}");
    let ns = Netns::new("me");
    assert!(ns.run("ip", &["link", "set", "lo", "up"]).status.success());
    let name = iface("m");

    // A bad RWG_METRICS: said so, before anything is created.
    let out = ns
        .cmd(RWG)
        .env("RWG_METRICS", "9586")
        .args(["-f", &name])
        .output()
        .expect("spawn rwg");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RWG_METRICS=\"9586\""), "{err}");
    assert!(err.contains("e.g. 127.0.0.1:9586"), "{err}");
    assert!(!ns.run("ip", &["link", "show", &name]).status.success());
    assert!(!sock(&name).exists());

    // The option wins over the environment; the metrics describe the device wg configures.
    let mut daemon = KillOnDrop(
        ns.cmd(RWG)
            .env("RWG_METRICS", "127.0.0.1:9587")
            .args(["-f", "--metrics", "127.0.0.1:9586", &name])
            .spawn()
            .expect("spawn rwg"),
    );
    wait_for_socket(&name, &mut daemon.0);
    let body =
        fetch(&ns, "http://127.0.0.1:9586/metrics").expect("metrics on the option's address");
    assert!(body.lines().any(|l| l == "rwg_peers 0"), "{body}");
    assert_eq!(fetch(&ns, "http://127.0.0.1:9587/metrics"), None);
    let (_, peer) = key_pair();
    let out = ns.run(
        "wg",
        &["set", &name, "peer", &peer, "allowed-ips", "10.0.0.2/32"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = fetch(&ns, "http://127.0.0.1:9586/metrics").expect("metrics");
    assert!(body.lines().any(|l| l == "rwg_peers 1"), "{body}");
    assert!(body.contains(&format!("peer=\"{peer}\"")), "{body}");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    assert!(wait_exit(&mut daemon.0).success());

    // In the background (the parent re-executes itself with the same command line), from the
    // environment alone.
    let out = ns
        .cmd(RWG)
        .env("RWG_METRICS", "127.0.0.1:9588")
        .arg(&name)
        .output()
        .expect("spawn rwg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body =
        fetch(&ns, "http://127.0.0.1:9588/metrics").expect("the background daemon's metrics");
    assert!(body.lines().any(|l| l == "rwg_peers 0"), "{body}");
    assert!(ns.run("ip", &["link", "del", &name]).status.success());
    wait_for("socket removal", || !sock(&name).exists());
}

/// Endpoint host names are resolved again when their peer is silent (RWG_RERESOLVE): the
/// peer's name moves to another address in the namespace's hosts file (`ip netns exec` mounts
/// /etc/netns/NAME/hosts over /etc/hosts), and the daemon follows it without `wg set`.
#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss and wg: run with cargo test -- --ignored as root"]
fn silent_peers_names_are_resolved_again() {
    require_root_and_tools();
    let ns = Netns::new("rr");
    let etc = PathBuf::from(format!("/etc/netns/{}", ns.0));
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/NAME");
    let _etc = RemoveDir(etc.clone());
    let hosts = etc.join("hosts");
    let host = "peer-rr.rwg.test";
    // Written in place (same inode): the bind mount sees the new text.
    std::fs::write(&hosts, format!("127.0.0.2 {host}\n")).expect("hosts");
    let dir = std::env::temp_dir().join(format!("rwg-rr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let _dir = RemoveDir(dir.clone());
    let (private, _) = key_pair();
    let (_, peer) = key_pair();
    let conf = dir.join("wg-rr.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.1/24\n\n\
             [Peer]\nPublicKey = {peer}\nEndpoint = {host}:51999\nAllowedIPs = 10.9.0.2/32\n"
        ),
    )
    .expect("conf");
    let name = iface("r");
    assert!(ns.run("ip", &["link", "set", "lo", "up"]).status.success());

    // A file that is not there is refused before anything is created.
    let bad = ns
        .cmd(RWG)
        .args(["-f", &name])
        .env("RWG_RERESOLVE", dir.join("missing.conf"))
        .output()
        .expect("spawn rwg");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("RWG_RERESOLVE=") && err.contains("no such file"),
        "{err}"
    );
    assert!(!ns.run("ip", &["link", "show", &name]).status.success());

    let mut daemon = KillOnDrop(
        ns.cmd(RWG)
            .args(["-f", &name])
            .env("RWG_RERESOLVE", &conf)
            .env("RWG_RERESOLVE_INTERVAL", "1")
            .spawn()
            .expect("spawn rwg"),
    );
    wait_for_socket(&name, &mut daemon.0);
    // wg resolves the name once, through the namespace's hosts file.
    let keyfile = dir.join("key");
    std::fs::write(&keyfile, format!("{private}\n")).expect("key");
    let out = ns.run(
        "wg",
        &[
            "set",
            &name,
            "private-key",
            keyfile.to_str().expect("utf8"),
            "peer",
            &peer,
            "endpoint",
            &format!("{host}:51999"),
            "allowed-ips",
            "10.9.0.2/32",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = || text(&ns.run("wg", &["show", &name, "endpoints"]));
    assert!(endpoint().contains("127.0.0.2:51999"), "{}", endpoint());
    // The name moves; nobody tells the daemon. The peer never answered, so it is silent.
    std::fs::write(&hosts, format!("127.0.0.3 {host}\n")).expect("hosts");
    wait_for("the endpoint to follow the name", || {
        endpoint().contains("127.0.0.3:51999")
    });
    // And it tried the new address at once: an initiation is counted as sent.
    let dump = text(&ns.run("wg", &["show", &name, "transfer"]));
    assert!(!dump.trim().ends_with("\t0"), "{dump}");
}

/// `ip route get DEST` in `ns`: the source address the kernel picks towards `dest`.
fn route_source(ns: &Netns, dest: &str) -> String {
    let out = text(&ns.run("ip", &["route", "get", dest]));
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no src in `ip route get {dest}`: {out}"))
        .to_owned()
}

/// Runs `ip` in `ns` and fails the test with its error if it fails.
fn ip_ok(ns: &Netns, args: &[&str]) {
    let out = ns.run("ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sticky source address. Namespace "a" has two IPv4 and two IPv6 addresses on one link and
/// runs the daemon under test; namespace "b" runs a second rwg whose endpoint for "a" is the
/// address the route would NOT pick as source. Replies must come from that address: otherwise
/// "b" sees authenticated datagrams from the other one and its endpoint roams there (checked
/// with `wg show endpoints` in "b"). Then the address goes away and the daemon must still reach
/// "b", from the remaining address.
#[test]
#[ignore = "needs root, /dev/net/tun, ip, ss, wg and ping: run with cargo test -- --ignored as root"]
fn replies_leave_from_the_address_the_peer_wrote_to() {
    require_root_and_tools();
    let a = Netns::new("sa");
    let b = Netns::new("sb");
    let n = std::process::id() % 1_000_000;
    let (va, vb) = (format!("sva{n}"), format!("svb{n}"));
    ip_ok(
        &a,
        &[
            "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b.0,
        ],
    );
    for addr in ["10.77.0.1/24", "10.77.0.2/24"] {
        ip_ok(&a, &["addr", "add", addr, "dev", &va]);
    }
    for addr in ["fd77::1/64", "fd77::2/64"] {
        ip_ok(&a, &["addr", "add", addr, "dev", &va, "nodad"]);
    }
    ip_ok(&b, &["addr", "add", "10.77.0.9/24", "dev", &vb]);
    ip_ok(&b, &["addr", "add", "fd77::9/64", "dev", &vb, "nodad"]);
    for (ns, dev) in [(&a, va.as_str()), (&b, vb.as_str())] {
        ip_ok(ns, &["link", "set", "lo", "up"]);
        ip_ok(ns, &["link", "set", dev, "up"]);
    }
    // The address "a" would answer from by itself, and the one "b" writes to instead.
    let other = |picked: &str, pair: [&'static str; 2]| {
        assert!(pair.contains(&picked), "route source {picked}");
        if picked == pair[0] {
            pair[1]
        } else {
            pair[0]
        }
    };
    let routed4 = route_source(&a, "10.77.0.9");
    let target4 = other(&routed4, ["10.77.0.1", "10.77.0.2"]);
    let routed6 = route_source(&a, "fd77::9");
    let target6 = other(&routed6, ["fd77::1", "fd77::2"]);

    let dir = std::env::temp_dir().join(format!("rwg-sticky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _dir = RemoveDir(dir.clone());
    let (ka, pa) = key_pair();
    let (kb, pb) = key_pair();
    let (ia, ib) = (iface("sa"), iface("sb"));
    let mut da = KillOnDrop(a.cmd(RWG).args(["-f", &ia]).spawn().expect("spawn rwg a"));
    let mut db = KillOnDrop(b.cmd(RWG).args(["-f", &ib]).spawn().expect("spawn rwg b"));
    wait_for_socket(&ia, &mut da.0);
    wait_for_socket(&ib, &mut db.0);
    let key_a = dir.join("a.key");
    let key_b = dir.join("b.key");
    std::fs::write(&key_a, format!("{ka}\n")).expect("key");
    std::fs::write(&key_b, format!("{kb}\n")).expect("key");
    let wg_ok = |ns: &Netns, args: &[&str]| {
        let out = ns.run("wg", args);
        assert!(
            out.status.success(),
            "wg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let port = "51820";
    wg_ok(
        &a,
        &[
            "set",
            &ia,
            "private-key",
            key_a.to_str().expect("utf8"),
            "listen-port",
            port,
            "peer",
            &pb,
            "allowed-ips",
            "10.99.0.2/32",
        ],
    );
    let endpoint4 = format!("{target4}:{port}");
    wg_ok(
        &b,
        &[
            "set",
            &ib,
            "private-key",
            key_b.to_str().expect("utf8"),
            "peer",
            &pa,
            "endpoint",
            &endpoint4,
            "allowed-ips",
            "10.99.0.1/32",
        ],
    );
    ip_ok(&a, &["addr", "add", "10.99.0.1/24", "dev", &ia]);
    ip_ok(&a, &["link", "set", &ia, "up"]);
    ip_ok(&b, &["addr", "add", "10.99.0.2/24", "dev", &ib]);
    ip_ok(&b, &["link", "set", &ib, "up"]);
    let pings = |ns: &Netns, to: &str| {
        ns.run("ping", &["-n", "-c", "1", "-W", "1", to])
            .status
            .success()
    };
    let endpoint_of_a = || {
        let out = text(&b.run("wg", &["show", &ib, "endpoints"]));
        out.split_whitespace().nth(1).unwrap_or_default().to_owned()
    };

    // IPv4, through the handshake: "b" initiates to the second address; the response (and
    // then the data) must come from it.
    wait_for("a ping from b through the tunnel (IPv4 underlay)", || {
        pings(&b, "10.99.0.1")
    });
    assert!(pings(&b, "10.99.0.1"), "a second ping");
    assert_eq!(
        endpoint_of_a(),
        endpoint4,
        "b's endpoint for a roamed: a answered from {routed4}, not from {target4}"
    );

    // IPv6, through the data path: "b" moves to a's other IPv6 address; a's replies follow.
    let endpoint6 = format!("[{target6}]:{port}");
    wg_ok(&b, &["set", &ib, "peer", &pa, "endpoint", &endpoint6]);
    wait_for("a ping from b through the tunnel (IPv6 underlay)", || {
        pings(&b, "10.99.0.1")
    });
    assert!(pings(&b, "10.99.0.1"), "a second ping");
    let a_sees = text(&a.run("wg", &["show", &ia, "endpoints"]));
    assert!(
        a_sees.contains("[fd77::9]:"),
        "a learned b's IPv6 endpoint: {a_sees}"
    );
    assert_eq!(
        endpoint_of_a(),
        endpoint6,
        "b's endpoint for a roamed: a answered from {routed6}, not from {target6}"
    );

    // The address goes away: a's next datagrams to b are refused from it and go from the
    // route's address instead; b follows them there.
    ip_ok(&a, &["addr", "del", &format!("{target6}/64"), "dev", &va]);
    wait_for("a ping from a after its address went away", || {
        pings(&a, "10.99.0.2")
    });
    assert_eq!(endpoint_of_a(), format!("[{routed6}]:{port}"));
}
