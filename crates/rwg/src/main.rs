#![forbid(unsafe_code)]
//! `rwg`: the userspace WireGuard daemon (a drop-in for wireguard-go under `wg`/`wg-quick`),
//! the key tools (`genkey`, `pubkey`, `genpsk`), the userspace proxy (`proxy`: SOCKS5 and port
//! forwards, no TUN) and a self-contained `demo`.

mod demo;
mod keys;
mod proxy;

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use rwg_device::pipeline::DataPlaneConfig;
use rwg_device::process::{self, TerminationSignals};
use rwg_device::tun::Tun;
use rwg_device::uapi::UapiListener;
use rwg_device::Daemon;

/// Environment variable of the pipe on which a re-executed child reports "serving" (or why
/// it could not start) to its parent. Private to rwg.
const READY_FD_ENV: &str = "RWG_READY_FD";
/// What the child writes on the readiness pipe once serving.
const READY_MESSAGE: &str = "ready";

fn usage() -> String {
    "Usage: rwg [-f/--foreground] INTERFACE-NAME\n       \
     rwg genkey | genpsk | pubkey\n       \
     rwg demo [--bytes N]        two peers in one process over loopback (no root)\n       \
     rwg proxy --config FILE [--socks5 ADDR] [--forward SPEC]... [--reverse SPEC]...\n       \
     \x20                           SOCKS5 and port forwards into the tunnel, no TUN (see rwg proxy --help)\n       \
     rwg --version\n"
        .to_owned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version"] | ["-v"] | ["version"] => {
            println!("rwg v{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help"] | ["-h"] | ["help"] => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        ["genkey"] => keys::genkey(),
        ["genpsk"] => keys::genpsk(),
        ["pubkey"] => keys::pubkey(),
        ["demo", rest @ ..] => demo::main(rest),
        ["proxy", rest @ ..] => proxy::main(rest),
        ["-f" | "--foreground", iface] => daemon_main(iface, true),
        [iface] if !iface.starts_with('-') => daemon_main(iface, false),
        _ => {
            eprint!("{}", usage());
            ExitCode::FAILURE
        }
    }
}

/// `LOG_LEVEL` as wireguard-go reads it (`verbose`/`debug`, `error`, `silent`); anything else,
/// or nothing, means `default`.
pub(crate) fn log_level(default: tracing::Level) -> Option<tracing::Level> {
    match std::env::var("LOG_LEVEL").as_deref() {
        Ok("verbose") | Ok("debug") => Some(tracing::Level::DEBUG),
        Ok("error") => Some(tracing::Level::ERROR),
        Ok("silent") => None,
        _ => Some(default),
    }
}

/// Logs to stderr at `LOG_LEVEL` (or `default`); never called twice with effect.
pub(crate) fn init_logging(default: tracing::Level) {
    if let Some(level) = log_level(default) {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
    }
}

fn env_fd(name: &str) -> Result<Option<i32>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<i32>()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a file descriptor number")),
        Err(_) => Ok(None),
    }
}

fn daemon_main(iface: &str, foreground_flag: bool) -> ExitCode {
    let foreground =
        foreground_flag || std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    init_logging(tracing::Level::ERROR);
    tracing::debug!(interface = iface, "logging started");
    if foreground {
        run_foreground(iface)
    } else {
        daemonize(iface)
    }
}

fn fail(message: &str) -> ExitCode {
    // Not through the logger: the user must see why, whatever LOG_LEVEL says.
    eprintln!("rwg: {message}");
    ExitCode::FAILURE
}

/// Creates the TUN (or adopts `WG_TUN_FD`) and the configuration socket (or adopts
/// `WG_UAPI_FD`). On failure nothing is left behind: the TUN is not persistent and goes away
/// with its descriptor, and the socket is bound last.
fn open_resources(iface: &str, config: &DataPlaneConfig) -> Result<(Tun, UapiListener), String> {
    let tun = match env_fd("WG_TUN_FD")? {
        Some(fd) => Tun::from_inherited(fd).map_err(|e| format!("WG_TUN_FD: {e}"))?,
        None => Tun::create_with(iface, config.tun_offload)
            .map_err(|e| format!("cannot create interface {iface}: {e}"))?,
    };
    let name = tun.name().to_owned();
    let uapi = match env_fd("WG_UAPI_FD")? {
        Some(fd) => {
            UapiListener::from_inherited(fd, &name).map_err(|e| format!("WG_UAPI_FD: {e}"))?
        }
        None => UapiListener::bind(&name).map_err(|e| e.to_string())?,
    };
    Ok((tun, uapi))
}

fn run_foreground(iface: &str) -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked mask.
    let signals = match TerminationSignals::block() {
        Ok(s) => Some(s),
        Err(e) => return fail(&format!("cannot block signals: {e}")),
    };
    let mut ready = match env_fd(READY_FD_ENV) {
        Ok(Some(fd)) => process::adopt_inherited(fd).ok().map(std::fs::File::from),
        _ => None,
    };
    let mut report = |msg: &str| {
        if let Some(mut pipe) = ready.take() {
            let _ = pipe.write_all(msg.as_bytes());
        }
    };
    let config = match DataPlaneConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return fail(&e);
        }
    };
    let (tun, uapi) = match open_resources(iface, &config) {
        Ok(r) => r,
        Err(e) => {
            report(&e);
            return fail(&e);
        }
    };
    let metrics = match std::env::var("RWG_METRICS") {
        Err(_) => None,
        Ok(v) => {
            match v.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    let e = format!("RWG_METRICS={v:?}: expected IP:PORT to serve metrics on, e.g. 127.0.0.1:9586");
                    report(&e);
                    return fail(&e);
                }
            }
        }
    };
    let daemon = Daemon::new(tun, uapi)
        .with_data_plane(config)
        .with_metrics(metrics);
    tracing::info!(interface = daemon.interface_name(), "starting");
    let mut served = false;
    let result = daemon.run(signals, || {
        served = true;
        report(READY_MESSAGE);
    });
    match result {
        Ok(why) if why.is_clean() => {
            tracing::info!(reason = %why, "stopped");
            ExitCode::SUCCESS
        }
        Ok(why) => fail(&why.to_string()),
        Err(e) => {
            if !served {
                report(&e.to_string());
            }
            fail(&e.to_string())
        }
    }
}

/// The parent: creates the TUN and the socket (so errors show up here, with the user's
/// terminal), hands both to a re-executed child, and exits 0 once the child says it serves.
fn daemonize(iface: &str) -> ExitCode {
    // The child reads the same environment; checking it here reports a mistake on the
    // user's terminal before anything is created.
    let config = match DataPlaneConfig::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (tun, uapi) = match open_resources(iface, &config) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let cleanup_fail = |uapi: &UapiListener, msg: &str| {
        uapi.remove_socket_file();
        fail(msg)
    };
    let (mut ready_read, ready_write) = match process::pipe() {
        Ok(p) => p,
        Err(e) => return cleanup_fail(&uapi, &format!("cannot create a pipe: {e}")),
    };
    for fd in [
        tun.as_fd(),
        uapi.as_unix_listener().as_fd(),
        ready_write.as_fd(),
    ] {
        if let Err(e) = process::inherit_across_exec(&fd) {
            return cleanup_fail(
                &uapi,
                &format!("cannot pass a descriptor to the daemon: {e}"),
            );
        }
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return cleanup_fail(&uapi, &format!("cannot find own executable: {e}")),
    };
    let verbose = log_level(tracing::Level::ERROR) == Some(tracing::Level::DEBUG);
    let output = || {
        if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    use std::os::fd::AsRawFd;
    let mut child = Command::new(exe);
    child
        .args(std::env::args_os().skip(1))
        .env("WG_TUN_FD", tun.as_raw_fd().to_string())
        .env(
            "WG_UAPI_FD",
            uapi.as_unix_listener().as_raw_fd().to_string(),
        )
        .env("WG_PROCESS_FOREGROUND", "1")
        .env(READY_FD_ENV, ready_write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output())
        // Out of the caller's process group: a Ctrl-C meant for `wg-quick` must not kill it.
        .process_group(0);
    let mut child = match child.spawn() {
        Ok(c) => c,
        Err(e) => return cleanup_fail(&uapi, &format!("cannot start the daemon process: {e}")),
    };
    // Only the child may hold the write end now, so EOF means it exited.
    drop(ready_write);
    drop(tun);
    let mut message = String::new();
    let _ = ready_read.read_to_string(&mut message);
    if message == READY_MESSAGE {
        return ExitCode::SUCCESS;
    }
    let _ = child.wait();
    if message.is_empty() {
        message = "the daemon process exited before it was ready".to_owned();
    }
    cleanup_fail(&uapi, &message)
}
