//! The C ABI as C programs see it: each test compiles a program from `tests/c/` with the
//! system's `cc` against the committed header (`include/rwg.h`) and the library cargo just
//! built (`librwg_ffi.a` or `librwg_ffi.so`), runs it, and fails if it does. The programs check
//! everything themselves and exit non-zero on the first failed check.
//!
//! - `header.c`: the header compiles as C99 and as C++11 with `-Wall -Wextra -Werror -pedantic`.
//! - `core_pair.c`: two peers through the core level (static library).
//! - `bad_calls.c`: NULL pointers, wrong lengths, use after free, malformed configurations
//!   (shared library).
//! - `tunnel_netns.c` (root): a tunnel on a TUN descriptor in a network namespace against
//!   wireguard-go in another.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What a statically linked Rust library needs from the system on Linux
/// (`rustc --print native-static-libs`).
const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the library it built for this test: `target/<profile>/deps`, next to this
/// test's executable. (Not `target/<profile>`: `cargo test` does not copy the library there,
/// so what is there may be an older `cargo build`'s.)
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    for lib in ["librwg_ffi.a", "librwg_ffi.so"] {
        assert!(
            dir.join(lib).exists(),
            "{lib} not built in {}",
            dir.display()
        );
    }
    dir
}

#[derive(Clone, Copy)]
enum Link {
    Static,
    Shared,
}

/// Compiles `tests/c/<source>` into `<name>` with `compiler` and `flags`, linked with the
/// library; panics with the compiler's output if it fails.
fn compile(compiler: &str, flags: &[&str], source: &str, name: &str, link: Link) -> PathBuf {
    // One directory per user: scripts/test runs the root tests through sudo, and a directory
    // root made would be read-only for the next run as the user.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("c-{uid}"));
    std::fs::create_dir_all(&out_dir).expect("output directory");
    let out = out_dir.join(name);
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(flags)
        .arg("-Wall")
        .arg("-Wextra")
        .arg("-Werror")
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("tests/c").join(source))
        .arg("-o")
        .arg(&out);
    match link {
        Link::Static => {
            cmd.arg(lib.join("librwg_ffi.a")).args(NATIVE_LIBS);
        }
        Link::Shared => {
            cmd.arg("-L")
                .arg(&lib)
                .arg("-lrwg_ffi")
                .arg("-lpthread")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        output.status.success(),
        "{compiler} {source} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Waits for `child` at most `limit`; kills it if it takes longer.
fn wait(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "still running after {limit:?}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs a compiled program to completion; panics with its output unless it succeeded.
fn run(program: &Path, expect_prefix: &str) -> String {
    // cargo's LD_LIBRARY_PATH would win over the program's run path and may name a directory
    // with an older copy of the library.
    let child = Command::new(program)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = wait(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with(expect_prefix), "{stdout}");
    stdout
}

#[test]
fn header_compiles_as_c99_and_as_cpp() {
    let c = compile(
        "cc",
        &["-std=c99", "-pedantic", "-Wstrict-prototypes"],
        "header.c",
        "header-c99",
        Link::Shared,
    );
    run(&c, "header: rwg ");
    let cpp = compile(
        "c++",
        &["-x", "c++", "-std=c++11", "-pedantic"],
        "header.c",
        "header-cpp",
        Link::Shared,
    );
    run(&cpp, "header: rwg ");
}

#[test]
fn two_core_level_peers_in_c() {
    let program = compile(
        "cc",
        &["-std=c11"],
        "core_pair.c",
        "core_pair",
        Link::Static,
    );
    let out = run(&program, "core_pair: ");
    println!("{out}");
}

#[test]
fn bad_calls_from_c_get_error_codes() {
    let program = compile(
        "cc",
        &["-std=c11"],
        "bad_calls.c",
        "bad_calls",
        Link::Shared,
    );
    let out = run(&program, "bad_calls: ok");
    println!("{out}");
}

/// Runs a command; panics with its output unless it succeeds.
fn sh(args: &[&str]) -> String {
    sh_in(args, None)
}

fn sh_in(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = wait(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Namespaces and processes of one test, removed when it ends (however it ends).
struct Scene {
    namespaces: Vec<String>,
    daemons: Vec<Child>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
#[ignore = "needs root, /dev/net/tun, ip, wg and wireguard-go: run with cargo test -- --ignored as root"]
fn tunnel_level_against_wireguard_go_in_namespaces() {
    let program = compile(
        "cc",
        &["-std=c11"],
        "tunnel_netns.c",
        "tunnel_netns",
        Link::Static,
    );
    let id = std::process::id() % 100_000;
    let (ns_a, ns_b) = (format!("rwgffi{id}a"), format!("rwgffi{id}b"));
    let (tun, wg_b) = (format!("rwf{id}t"), format!("rwf{id}g"));
    let mut scene = Scene {
        namespaces: Vec::new(),
        daemons: Vec::new(),
    };
    for ns in [&ns_a, &ns_b] {
        sh(&["ip", "netns", "add", ns]);
        scene.namespaces.push(ns.clone());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (veth_a, veth_b) = (format!("rwf{id}va"), format!("rwf{id}vb"));
    sh(&[
        "ip", "link", "add", &veth_a, "netns", &ns_a, "type", "veth", "peer", "name", &veth_b,
        "netns", &ns_b,
    ]);
    sh(&[
        "ip",
        "-n",
        &ns_a,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        &veth_a,
    ]);
    sh(&[
        "ip",
        "-n",
        &ns_b,
        "addr",
        "add",
        "192.168.77.2/24",
        "dev",
        &veth_b,
    ]);
    sh(&["ip", "-n", &ns_a, "link", "set", &veth_a, "up"]);
    sh(&["ip", "-n", &ns_b, "link", "set", &veth_b, "up"]);
    // Unprivileged ICMP sockets for the program once it dropped to uid 65534.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns_a,
        "sysctl",
        "-qw",
        "net.ipv4.ping_group_range=0 2147483647",
    ]);
    // The TUN device the "system" prepares; the program attaches to it.
    sh(&[
        "ip", "-n", &ns_a, "tuntap", "add", "dev", &tun, "mode", "tun",
    ]);
    sh(&["ip", "-n", &ns_a, "addr", "add", "10.9.0.1/24", "dev", &tun]);
    sh(&["ip", "-n", &ns_a, "link", "set", &tun, "up"]);

    // wireguard-go in B.
    let daemon = Command::new("ip")
        .args(["netns", "exec", &ns_b, "wireguard-go", "-f", &wg_b])
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("wireguard-go (scripts/install-deps installs it)");
    scene.daemons.push(daemon);
    let started = Instant::now();
    while !Command::new("ip")
        .args(["netns", "exec", &ns_b, "wg", "show", &wg_b])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "wireguard-go did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (private_a, private_b) = (sh(&["wg", "genkey"]), sh(&["wg", "genkey"]));
    let public_a = sh_in(&["wg", "pubkey"], Some(&private_a));
    let public_b = sh_in(&["wg", "pubkey"], Some(&private_b));
    sh_in(
        &[
            "ip",
            "netns",
            "exec",
            &ns_b,
            "wg",
            "set",
            &wg_b,
            "private-key",
            "/dev/stdin",
            "listen-port",
            "51820",
            "peer",
            &public_a,
            "allowed-ips",
            "10.9.0.1/32",
        ],
        Some(&private_b),
    );
    sh(&[
        "ip",
        "-n",
        &ns_b,
        "addr",
        "add",
        "10.9.0.2/24",
        "dev",
        &wg_b,
    ]);
    sh(&["ip", "-n", &ns_b, "link", "set", &wg_b, "up"]);

    // Address and DNS are for the app (they are already on the TUN); the tunnel ignores them.
    let config = format!(
        "[Interface]\nPrivateKey = {private_a}\nListenPort = 40001\nAddress = 10.9.0.1/24\n\
         DNS = 10.9.0.53\n\n[Peer]\nPublicKey = {public_b}\nEndpoint = 192.168.77.2:51820\n\
         AllowedIPs = 10.9.0.0/24\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns_a])
        .arg(&program)
        .args([&tun, &public_b, "10.9.0.2", "40002", "65534"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.as_bytes())
        .expect("config");
    let out = wait(child, Duration::from_secs(90));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "tunnel_netns failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.starts_with("tunnel_netns: ok"), "{stdout}");
    // Shown with --nocapture: the program's log lines.
    println!("{stdout}{stderr}");

    // wireguard-go's side: it learned the new port, and traffic came through.
    let endpoints = sh(&[
        "ip",
        "netns",
        "exec",
        &ns_b,
        "wg",
        "show",
        &wg_b,
        "endpoints",
    ]);
    assert!(endpoints.contains("192.168.77.1:40002"), "{endpoints}");
    let transfer = sh(&[
        "ip", "netns", "exec", &ns_b, "wg", "show", &wg_b, "transfer",
    ]);
    let rx: u64 = transfer
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rx > 0, "{transfer}");
    let alive = scene.daemons[0].try_wait().expect("wait");
    assert!(alive.is_none(), "wireguard-go exited: {alive:?}");
}
