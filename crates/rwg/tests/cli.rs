//! The command line as users meet it: help, version, errors, shell completions (run in the real
//! shells), the manual page (rendered by man(1)), and `rwg proxy --metrics`. Needs no root;
//! nothing here starts the daemon (that is tests/daemon.rs, in namespaces).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const RWG: &str = env!("CARGO_BIN_EXE_rwg");

/// The subcommands users are told about (README), and the daemon's environment variables.
const SUBCOMMANDS: &[&str] = &["genkey", "pubkey", "genpsk", "demo", "proxy", "completions"];
const ENVIRONMENT: &[&str] = &[
    "WG_PROCESS_FOREGROUND",
    "WG_TUN_FD",
    "WG_UAPI_FD",
    "LOG_LEVEL",
    "RWG_DISABLE",
    "RWG_WORKERS",
    "RWG_METRICS",
];

fn rwg(args: &[&str]) -> Output {
    Command::new(RWG)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rwg")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rwg-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn version_in_every_spelling() {
    let want = format!("rwg v{}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V", "-v", "version"] {
        let o = rwg(&[flag]);
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{flag}");
    }
}

#[test]
fn help_lists_the_daemon_syntax_subcommands_and_environment() {
    let o = rwg(&["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    assert!(help.contains("[INTERFACE-NAME]"), "{help}");
    assert!(help.contains("-f, --foreground"), "{help}");
    assert!(help.contains("--metrics <IP:PORT>"), "{help}");
    for sub in SUBCOMMANDS {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} in {help}"
        );
    }
    for var in ENVIRONMENT {
        assert!(help.contains(var), "{var} in {help}");
    }
    // `-h` is the short form, without the environment.
    let short = stdout(&rwg(&["-h"]));
    assert!(short.contains("Usage: rwg"), "{short}");
    // Each subcommand has its own help.
    let proxy = stdout(&rwg(&["proxy", "--help"]));
    for flag in [
        "--config",
        "--socks5",
        "--socks5-auth",
        "--forward",
        "--reverse",
        "--metrics",
        "--http",
        "--http-auth",
        "--stdio",
        "--health",
        "--max-connections",
        "--idle-timeout",
        "--reresolve-after",
        "--check",
    ] {
        assert!(proxy.contains(flag), "{flag} in {proxy}");
    }
}

#[test]
fn bad_command_lines_say_what_is_wrong_and_change_nothing() {
    // No argument at all: the help, on stderr, and a failure.
    let o = rwg(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage: rwg"), "{}", stderr(&o));
    for (args, wants) in [
        (
            &["-f"][..],
            &[
                "<INTERFACE-NAME>",
                "Usage: rwg --foreground <INTERFACE-NAME>",
            ][..],
        ),
        (
            &["--metrics", "9586", "wg0"],
            &["'9586'", "--metrics", "e.g. 127.0.0.1:9586"],
        ),
        (&["--metrics", "127.0.0.1:9586"], &["<INTERFACE-NAME>"]),
        (
            &["wg0", "wg1"],
            &["'wg1'", "one INTERFACE-NAME per process"],
        ),
        (&["--frobnicate"], &["unexpected argument '--frobnicate'"]),
        (
            &["genkey", "extra"],
            &["unexpected argument 'extra'", "Usage: rwg genkey"],
        ),
        (&["completions"], &["<SHELL>"]),
        (&["completions", "tcsh"], &["'tcsh'", "bash, zsh, fish"]),
        (&["proxy"], &["--config <FILE>"]),
        (
            &["proxy", "--config", "wg0.conf"],
            &[
                "nothing to do",
                "at least one of --socks5, --http, --forward, --reverse, --stdio",
            ],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--http-auth",
                "alice:pw",
                "--socks5",
                "127.0.0.1:1",
            ],
            &["--http <ADDR>"],
        ),
        (
            &["proxy", "-c", "wg0.conf", "--http", "8080"],
            &["'8080'", "--http", "e.g. 127.0.0.1:1080"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--stdio",
                "10.0.0.1:22",
                "--http",
                "127.0.0.1:1",
            ],
            &["--stdio <HOST:PORT>", "cannot be used with", "--http"],
        ),
        (
            &["proxy", "-c", "wg0.conf", "--stdio", "10.0.0.1"],
            &["'10.0.0.1'", "HOST:PORT"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--http",
                "127.0.0.1:1",
                "--max-connections",
                "0",
            ],
            &["--max-connections", "'0'"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--http",
                "127.0.0.1:1",
                "--idle-timeout",
                "5m",
            ],
            &["--idle-timeout", "'5m'"],
        ),
        (
            &["proxy", "-c", "wg0.conf", "--socks5", "localhost"],
            &["'localhost'", "e.g. 127.0.0.1:1080"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--socks5",
                "127.0.0.1:1",
                "--socks5",
                "127.0.0.1:2",
            ],
            &["'--socks5 <ADDR>' cannot be used multiple times"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--socks5-auth",
                "alice:pw",
                "--forward",
                "tcp:127.0.0.1:1:10.0.0.1:1",
            ],
            &["--socks5 <ADDR>"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--socks5",
                "127.0.0.1:1",
                "--socks5-auth",
                "alicepw",
            ],
            &["USER:PASS", "a colon between user name and password"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--forward",
                "http:80:10.0.0.1:80",
            ],
            &["--forward", "tcp:LOCAL:REMOTE or udp:LOCAL:REMOTE"],
        ),
        (
            &["proxy", "-c", "wg0.conf", "--reverse", "tcp:0:127.0.0.1:22"],
            &["--reverse", "tunnel port"],
        ),
        (
            &[
                "proxy",
                "-c",
                "wg0.conf",
                "--socks5",
                "127.0.0.1:1",
                "--metrics",
                "x",
            ],
            &["'x'", "e.g. 127.0.0.1:9586"],
        ),
    ] {
        let o = rwg(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        for want in wants {
            assert!(err.contains(want), "{args:?}: want {want:?} in:\n{err}");
        }
    }
    // The password of a rejected command line is not echoed back.
    let o = rwg(&["proxy", "-c", "x.conf", "--socks5-auth", "alice:hunter2"]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
}

/// Runs `script` in `shell` (`-c`), returns its standard output.
fn run_shell(shell: &str, args: &[&str], script: &str) -> String {
    let o = Command::new(shell)
        .args(args)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("{shell} not installed ({e}): run scripts/install-deps"));
    assert!(
        o.status.success(),
        "{shell}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn completion_script(dir: &TempDir, shell: &str) -> PathBuf {
    let o = rwg(&["completions", shell]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = dir.0.join(format!("rwg.{shell}"));
    std::fs::write(&path, &o.stdout).expect("write script");
    path
}

#[test]
fn bash_completes_subcommands_and_options() {
    let dir = TempDir::new("bash");
    let script = completion_script(&dir, "bash");
    // What bash's programmable completion does on TAB: COMP_WORDS, COMP_CWORD, then the
    // function with (command, word, previous word).
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        run_shell(
            "bash",
            &["--norc", "-c"],
            &format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _rwg rwg '{cur}' '{prev}'; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ),
        )
    };
    let top = complete("rwg ''", 1, "", "rwg");
    for sub in SUBCOMMANDS {
        assert!(top.lines().any(|l| l == *sub), "{sub} in {top}");
    }
    let proxy = complete("rwg proxy --so", 2, "--so", "proxy");
    let got: Vec<&str> = proxy.lines().collect();
    assert_eq!(got, ["--socks5", "--socks5-auth"], "{proxy}");
    let shells = complete("rwg completions ''", 2, "", "completions");
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shell} in {shells}");
    }
}

#[test]
fn fish_completes_subcommands_and_options() {
    let dir = TempDir::new("fish");
    let script = completion_script(&dir, "fish");
    let complete = |line: &str| {
        run_shell(
            "fish",
            &["--no-config", "-c"],
            &format!("source {}; complete -C '{line}'", script.display()),
        )
    };
    let top = complete("rwg ");
    for sub in SUBCOMMANDS {
        assert!(
            top.lines().any(|l| l.starts_with(&format!("{sub}\t"))),
            "{sub} in {top}"
        );
    }
    let proxy = complete("rwg proxy --so");
    let got: Vec<&str> = proxy
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    assert_eq!(got, ["--socks5", "--socks5-auth"], "{proxy}");
}

#[test]
fn zsh_completion_is_valid_and_complete() {
    let dir = TempDir::new("zsh");
    let script = completion_script(&dir, "zsh");
    // Parses (zsh -n), and loads as a completion function into a real compsys.
    run_shell("zsh", &["-f", "-n"], script.to_str().expect("utf-8"));
    let out = run_shell(
        "zsh",
        &["-f", "-c"],
        &format!(
            "autoload -Uz compinit && compinit -u -d {}/zcompdump && source {} && \
             whence -w _rwg && print -r -- $_comps[rwg]",
            dir.0.display(),
            script.display()
        ),
    );
    assert!(out.contains("_rwg: function"), "{out}");
    assert!(
        out.trim_end().ends_with("_rwg"),
        "compdef registered: {out}"
    );
    let text = std::fs::read_to_string(&script).expect("script");
    for word in SUBCOMMANDS
        .iter()
        .chain(&["--socks5-auth", "--foreground", "--metrics"])
    {
        assert!(text.contains(word), "{word} in the zsh script");
    }
}

/// Words of `text` joined by single spaces (man justifies lines with extra spaces).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// man(1)'s rendering of a page, as plain text.
fn render_man(page: &Path) -> String {
    let o = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "250")
        .env_remove("MAN_KEEP_FORMATTING")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("man(1) not installed: run scripts/install-deps");
    assert!(o.status.success(), "{}", stderr(&o));
    // groff's warnings (bad requests, unknown escapes) go to stderr.
    assert!(o.stderr.is_empty(), "man warnings: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn the_manual_page_is_rwg_8_and_documents_everything() {
    let dir = TempDir::new("man");
    let o = rwg(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let roff = stdout(&o);
    assert!(roff.contains(".TH rwg 8 "), "section 8 title: {roff}");
    let page = dir.0.join("rwg.8");
    std::fs::write(&page, &o.stdout).expect("write");
    let text = render_man(&page);
    for heading in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "SUBCOMMANDS",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(text.lines().any(|l| l == heading), "{heading} in {text}");
    }
    for word in SUBCOMMANDS.iter().chain(ENVIRONMENT).chain(&[
        "--foreground",
        "--metrics",
        "/var/run/wireguard/INTERFACE-NAME.sock",
    ]) {
        assert!(words(&text).contains(word), "{word} in {text}");
    }

    // Every page, written into a directory: rwg.8 and one per subcommand.
    let pages = dir.0.join("pages");
    let o = rwg(&["man", "--dir", pages.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut listed: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    listed.sort();
    let mut want: Vec<String> = SUBCOMMANDS
        .iter()
        .map(|s| format!("rwg-{s}.8"))
        .chain(["rwg.8".to_owned()])
        .map(|f| pages.join(f).display().to_string())
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let proxy = render_man(&pages.join("rwg-proxy.8"));
    for word in [
        "rwg proxy",
        "--config",
        "--socks5-auth",
        "--reverse",
        "--metrics",
        "--http",
        "--stdio",
        "--health",
        "--check",
        "At least one of",
    ] {
        assert!(words(&proxy).contains(word), "{word} in {proxy}");
    }
    // The page on stdout is the file.
    assert_eq!(
        std::fs::read_to_string(pages.join("rwg.8")).expect("rwg.8"),
        roff
    );
}

// --- rwg proxy --check -------------------------------------------------------------------------

#[test]
fn proxy_check_reports_every_problem_and_starts_nothing() {
    let dir = TempDir::new("check");
    let private = key(&["genkey"], None);
    let peer_private = key(&["genkey"], None);
    let peer = key(&["pubkey"], Some(&format!("{peer_private}\n")));
    // Problems on lines 3, 5, 6 and 11 of this text (counted here, not by rwg).
    let bad = dir.0.join("bad.conf");
    std::fs::write(
        &bad,
        format!(
            "[Interface]\nPrivateKey = {private}\nListenPort = many\nAddress = 10.9.0.2/32\n\
             Colour = blue\n[Peer]\nEndpoint = 192.0.2.1:51820\n\n[Peer]\nPublicKey = {peer}\n\
             AllowedIPs = 10.9.0.1/32, nonsense\n"
        ),
    )
    .expect("write");
    // --check wins over the services: a proxy that started would not exit by itself.
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let http = taken.local_addr().expect("addr").to_string();
    let bad_name = bad.to_str().expect("utf-8");
    let o = rwg(&["proxy", "--config", bad_name, "--check", "--http", &http]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    let want = [
        format!("{bad_name}:3: invalid ListenPort"),
        format!("{bad_name}:5: unknown key Colour"),
        format!("{bad_name}:6: section has no PublicKey"),
        format!("{bad_name}:11: invalid AllowedIPs"),
    ];
    assert_eq!(lines.len(), want.len(), "{out}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} should start with {want:?}"
        );
    }
    assert!(stderr(&o).contains("4 problems"), "{}", stderr(&o));
    assert!(!out.contains(&private), "never the private key");

    // A valid file: 0, and what it holds.
    let good = dir.0.join("good.conf");
    std::fs::write(
        &good,
        format!(
            "[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.2/32\n\n\
             [Peer]\nPublicKey = {peer}\nAllowedIPs = 10.9.0.1/32\n"
        ),
    )
    .expect("write");
    let good_name = good.to_str().expect("utf-8");
    let o = rwg(&["proxy", "--config", good_name, "--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{good_name}: ok (1 peer)\n"));

    // Valid for wg-quick but not for the proxy: no Address, reported at [Interface].
    let no_address = dir.0.join("noaddr.conf");
    std::fs::write(
        &no_address,
        format!("# a comment\n[Interface]\nPrivateKey = {private}\n"),
    )
    .expect("write");
    let name = no_address.to_str().expect("utf-8");
    let o = rwg(&["proxy", "--config", name, "--check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).starts_with(&format!("{name}:2: [Interface] has no Address")),
        "{}",
        stdout(&o)
    );
    // Started for real, the proxy refuses the same file with the same words.
    let o = rwg(&["proxy", "--config", bad_name, "--http", &http]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("rwg proxy: {bad_name}:11: invalid AllowedIPs")),
        "{}",
        stderr(&o)
    );
    drop(taken);
}

/// RWG_DISABLE chooses how the proxy's UDP socket moves datagrams (batched, or one system call
/// each with `all`); a name it does not know stops the proxy before anything starts.
#[cfg(target_os = "linux")]
#[test]
fn proxy_refuses_an_unknown_rwg_disable_name() {
    let dir = TempDir::new("disable");
    let private = key(&["genkey"], None);
    let peer_private = key(&["genkey"], None);
    let peer = key(&["pubkey"], Some(&format!("{peer_private}\n")));
    let conf = dir.0.join("wg.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.2/32\n\n\
             [Peer]\nPublicKey = {peer}\nAllowedIPs = 10.9.0.1/32\n"
        ),
    )
    .expect("write");
    // If the name were accepted the proxy would fail on this taken port instead (and not hang).
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let http = taken.local_addr().expect("addr").to_string();
    let o = Command::new(RWG)
        .args([
            "proxy",
            "--config",
            conf.to_str().expect("utf-8"),
            "--http",
            &http,
        ])
        .env("RWG_DISABLE", "udp-gso,sendmmsg")
        .stdin(Stdio::null())
        .output()
        .expect("run rwg");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("rwg proxy: RWG_DISABLE: unknown offload \"sendmmsg\"")
            && err.contains("udp-gso, udp-gro, all"),
        "{err}"
    );
    drop(taken);
}

// --- rwg proxy --metrics ------------------------------------------------------------------------

fn key(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new(RWG)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rwg");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).expect("write");
    }
    drop(stdin);
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success());
    stdout(&o).trim().to_owned()
}

/// The proxy, killed on drop; its stderr lines arrive on `lines`.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(args: &[&str]) -> Proxy {
        let mut child = Command::new(RWG)
            .arg("proxy")
            .args(args)
            .env("LOG_LEVEL", "verbose")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rwg proxy");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proxy { child, lines }
    }

    /// The first log line containing `what` within 20 s (a hang guard, not a speed requirement).
    fn wait_line(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no log line with {what:?} ({e}); got:\n{}", seen.join("\n")),
            }
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    reply
}

/// The value of the metric line that starts with `name` (name and labels).
fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn proxy_serves_its_tunnels_metrics() {
    let dir = TempDir::new("metrics");
    let private = key(&["genkey"], None);
    let peer_private = key(&["genkey"], None);
    let peer = key(&["pubkey"], Some(&format!("{peer_private}\n")));
    // The peer's endpoint is a UDP port nobody answers on: the handshake is only attempted.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let endpoint = silent.local_addr().expect("addr");
    let conf = dir.0.join("wg.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.2/32\n\n\
             [Peer]\nPublicKey = {peer}\nEndpoint = {endpoint}\nAllowedIPs = 10.9.0.1/32\n"
        ),
    )
    .expect("write config");
    let forward_port = free_port();
    let forward = format!("tcp:127.0.0.1:{forward_port}:10.9.0.1:80");
    let proxy = Proxy::start(&[
        "--config",
        conf.to_str().expect("utf-8"),
        "--forward",
        &forward,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let line = proxy.wait_line("serving metrics");
    let addr: SocketAddr = line
        .split("local_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("metrics address in {line:?}"));
    proxy.wait_line("ready");

    let reply = http_get(addr, "/metrics");
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
    assert_eq!(metric(&reply, "rwg_peers"), Some(1), "{reply}");
    let tx = format!("rwg_peer_tx_bytes_total{{peer=\"{peer}\"}}");
    assert_eq!(metric(&reply, &tx), Some(0), "{reply}");
    assert_eq!(
        metric(&reply, "rwg_handshake_initiations_sent_total"),
        Some(0),
        "{reply}"
    );
    assert!(!reply.contains(&private), "never the private key");

    // A connection to the forward makes the tunnel start a handshake: the counters move.
    let _client = TcpStream::connect(("127.0.0.1", forward_port)).expect("forward listens");
    let mut body = String::new();
    for _ in 0..200 {
        body = http_get(addr, "/metrics");
        if metric(&body, "rwg_handshake_initiations_sent_total").is_some_and(|n| n >= 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric(&body, "rwg_handshake_initiations_sent_total").is_some_and(|n| n >= 1),
        "{body}"
    );
    assert!(metric(&body, &tx).is_some_and(|n| n >= 148), "{body}");
    drop(silent);
}

#[test]
fn proxy_metrics_on_a_taken_port_is_an_error() {
    let dir = TempDir::new("metrics-taken");
    let private = key(&["genkey"], None);
    let conf = dir.0.join("wg.conf");
    std::fs::write(
        &conf,
        format!("[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.2/32\n"),
    )
    .expect("write config");
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut child = Command::new(RWG)
        .args([
            "proxy",
            "--config",
            conf.to_str().expect("utf-8"),
            "--socks5",
            "127.0.0.1:0",
            "--metrics",
            &addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rwg proxy");
    // It must give up by itself; a proxy that serves on regardless is killed and fails the test.
    let mut status = None;
    for _ in 0..400 {
        status = child.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rwg proxy still runs 20 s after being given a taken metrics port");
    }
    let o = child.wait_with_output().expect("output");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
}
