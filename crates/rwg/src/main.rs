#![forbid(unsafe_code)]
//! `rwg`: the userspace WireGuard daemon (a drop-in for wireguard-go under `wg`/`wg-quick`),
//! the key tools (`genkey`, `pubkey`, `genpsk`), the userspace proxy (`proxy`: SOCKS5 and port
//! forwards, no TUN) and a self-contained `demo`. The command line is defined in [`cli`].
//!
//! The daemon needs rwg-device, which is Linux-only: elsewhere the binary has everything but
//! the daemon, and says so when asked to serve an interface.

mod cli;
#[cfg(target_os = "linux")]
mod daemon;
mod demo;
mod keys;
mod proxy;
#[cfg(target_os = "linux")]
mod reresolve;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Large blocks (`rwg proxy`'s socket buffers, 512 KiB each) on mappings of their own, so that
/// the memory of closed connections goes back to the system; see `MapLarge`.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: rwg_device::process::MapLarge = rwg_device::process::MapLarge;

fn main() -> ExitCode {
    // Exits 0 after --help/--version, 2 with clap's message for a command line it rejects.
    let cli = Cli::parse();
    if let Err(e) = cli.check() {
        e.exit();
    }
    match cli.command {
        Some(Command::Genkey) => keys::genkey(),
        Some(Command::Pubkey) => keys::pubkey(),
        Some(Command::Genpsk) => keys::genpsk(),
        Some(Command::Demo(args)) => demo::main(&args),
        Some(Command::Proxy(args)) => proxy::main(*args),
        Some(Command::Completions { shell }) => {
            let mut out = std::io::stdout().lock();
            cli::completions(shell, &mut out);
            ExitCode::SUCCESS
        }
        Some(Command::Man { dir }) => man(dir.as_deref()),
        Some(Command::Version) => {
            println!("rwg v{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None => match cli.interface {
            Some(iface) => serve(&iface, cli.foreground, cli.metrics),
            // arg_required_else_help and `requires` leave no other case; still, say so.
            None => {
                eprintln!("rwg: no INTERFACE-NAME given (see rwg --help)");
                ExitCode::from(2)
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn serve(iface: &str, foreground: bool, metrics: Option<std::net::SocketAddr>) -> ExitCode {
    daemon::main(iface, foreground, metrics)
}

#[cfg(not(target_os = "linux"))]
fn serve(_iface: &str, _foreground: bool, _metrics: Option<std::net::SocketAddr>) -> ExitCode {
    eprintln!(
        "rwg: the daemon (rwg INTERFACE-NAME) runs on Linux only; rwg proxy, rwg demo and the \
         key tools work on this system"
    );
    ExitCode::FAILURE
}

/// `rwg man [--dir DIR]`.
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    let result = match dir {
        None => cli::man_page(&mut std::io::stdout().lock()),
        Some(dir) => cli::write_man_pages(dir).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rwg man: {e}");
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
