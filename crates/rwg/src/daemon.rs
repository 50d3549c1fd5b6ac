//! The daemon: wireguard-go's behaviour under `wg` and `wg-quick` (Linux only).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use rwg_device::pipeline::DataPlaneConfig;
use rwg_device::process::{self, TerminationSignals};
use rwg_device::tun::Tun;
use rwg_device::uapi::UapiListener;
use rwg_device::Daemon;

use crate::{init_logging, log_level};

/// Environment variable of the pipe on which a re-executed child reports "serving" (or why
/// it could not start) to its parent. Private to rwg.
const READY_FD_ENV: &str = "RWG_READY_FD";
/// What the child writes on the readiness pipe once serving.
const READY_MESSAGE: &str = "ready";

fn env_fd(name: &str) -> Result<Option<i32>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<i32>()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a file descriptor number")),
        Err(_) => Ok(None),
    }
}

/// `rwg [-f] [--metrics IP:PORT] INTERFACE-NAME`.
pub(crate) fn main(iface: &str, foreground_flag: bool, metrics: Option<SocketAddr>) -> ExitCode {
    let foreground =
        foreground_flag || std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    init_logging(tracing::Level::ERROR);
    tracing::debug!(interface = iface, "logging started");
    // The option wins over the environment; a bad RWG_METRICS is an error either way, found
    // before anything is created.
    let metrics = match (metrics, metrics_from_env()) {
        (Some(addr), _) => Some(addr),
        (None, Ok(addr)) => addr,
        (None, Err(e)) => return fail(&e),
    };
    if foreground {
        run_foreground(iface, metrics)
    } else {
        daemonize(iface)
    }
}

/// `RWG_METRICS`, if set.
fn metrics_from_env() -> Result<Option<SocketAddr>, String> {
    match std::env::var("RWG_METRICS") {
        Err(_) => Ok(None),
        Ok(v) => crate::cli::parse_metrics_addr(&v)
            .map(Some)
            .map_err(|e| format!("RWG_METRICS={v:?}: {e}")),
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

fn run_foreground(iface: &str, metrics: Option<SocketAddr>) -> ExitCode {
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
    // Checked before anything is created, which a failure would leave behind. A TUN adopted
    // from WG_TUN_FD is named by the caller's IFACE too.
    let reresolve = match crate::reresolve::from_env(iface) {
        Ok(r) => r,
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
    let daemon = Daemon::new(tun, uapi)
        .with_data_plane(config)
        .with_metrics(metrics)
        .with_reresolve(reresolve);
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
    if let Err(e) = crate::reresolve::from_env(iface) {
        return fail(&e);
    }
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
