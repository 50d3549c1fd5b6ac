//! `rwg-abuse`: the attacker and the bad network of rwg's abuse benchmarks and end-to-end
//! tests (benches/abuse.sh, tests/e2e). Not part of rwg and never installed with it.
//!
//! - `flood`: handshake initiations with a correct mac1 for a victim's public key, from many
//!   source addresses and ports, as fast as the sockets take them, answering cookie replies;
//! - `junk`: every kind of malformed WireGuard datagram, up to 65 507 bytes;
//! - `relay`: a UDP relay that loses, duplicates and reorders, records and replays;
//! - `ctl`: a command to a running relay.
//!
//! Every mode is bounded in time (and the senders in count), and sends only to loopback,
//! private IPv4 and unique local IPv6 addresses: a test's own namespaces.

#![forbid(unsafe_code)]

mod blast;
mod common;
mod flood;
mod junk;
mod relay;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rand_chacha::rand_core::{OsRng, RngCore};

use crate::blast::{Bounds, MAX_DATAGRAM};
use crate::common::{bind_all, kv, parse_duration, parse_key, report};
use crate::flood::{Flood, VictimKeys};
use crate::junk::Junk;

#[derive(Parser, Debug)]
#[command(
    name = "rwg-abuse",
    about = "Floods, junk and a bad network for WireGuard tests (only towards a test's own addresses)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Handshake initiations with a valid mac1 (and mac2 once a cookie reply came back)
    Flood {
        #[command(flatten)]
        send: SendArgs,
        /// Ignore cookie replies: never send mac2 (under load, every message then only earns
        /// a cookie reply)
        #[arg(long)]
        no_cookies: bool,
    },
    /// Malformed datagrams of every kind
    Junk {
        #[command(flatten)]
        send: SendArgs,
        /// Also send transport messages with this receiver index (hex, e.g. from a capture of the
        /// victim's traffic) and a bad tag; repeatable
        #[arg(long, value_name = "HEX", value_parser = parse_index)]
        known_index: Vec<u32>,
        /// One datagram in N is oversized, 1501 bytes up to --max-size (0: none)
        #[arg(long, value_name = "N", default_value_t = 32)]
        oversized_every: u64,
        /// Largest oversized datagram
        #[arg(long, value_name = "BYTES", default_value_t = MAX_DATAGRAM)]
        max_size: usize,
    },
    /// A relay between a client (whose endpoint is --listen) and --upstream
    Relay {
        /// Where the client sends
        #[arg(long, value_name = "IP:PORT")]
        listen: SocketAddr,
        /// The peer behind the relay
        #[arg(long, value_name = "IP:PORT")]
        upstream: SocketAddr,
        /// Local address of the socket towards the upstream (default: any)
        #[arg(long, value_name = "IP")]
        bind: Option<IpAddr>,
        /// Replays "from elsewhere" towards the client leave from this address (default: the
        /// --listen address, another port)
        #[arg(long, value_name = "IP")]
        other_listen: Option<IpAddr>,
        /// Replays "from elsewhere" towards the upstream leave from this address (default: the
        /// --bind address, another port)
        #[arg(long, value_name = "IP")]
        other_bind: Option<IpAddr>,
        /// Fraction of datagrams lost
        #[arg(long, default_value = "0")]
        loss: String,
        /// Fraction of datagrams sent twice
        #[arg(long, default_value = "0")]
        dup: String,
        /// Fraction of datagrams held back behind the next one (at most 2 ms)
        #[arg(long, default_value = "0")]
        reorder: String,
        /// Seed of the impairment's random choices (default: random)
        #[arg(long)]
        seed: Option<u64>,
        /// Loopback address of the control socket
        #[arg(long, value_name = "IP:PORT")]
        control: SocketAddr,
        /// Seconds to run
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Datagrams kept for replay (the first ones since the start or the last `clear`)
        #[arg(long, default_value_t = 4096)]
        record: usize,
    },
    /// Sends one command to a relay and prints its answer
    Ctl {
        #[arg(long, value_name = "IP:PORT")]
        control: SocketAddr,
        /// stats | clear | replay same|other to-upstream|to-client|both [TYPES] | impair L D R | quit
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The victim, IPv4 and/or IPv6 (repeatable; each source uses the target of its family)
    #[arg(long = "target", value_name = "IP:PORT", required = true)]
    targets: Vec<SocketAddr>,
    /// The victim's public key (base64, as wg prints it)
    #[arg(long, value_name = "BASE64")]
    key: String,
    /// Local source addresses (repeatable, or comma-separated)
    #[arg(
        long = "source",
        value_name = "IP",
        value_delimiter = ',',
        required = true
    )]
    sources: Vec<IpAddr>,
    /// Sockets (source ports) per source address
    #[arg(long, default_value_t = 1)]
    ports: usize,
    /// Seconds to send
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    /// At most this many datagrams
    #[arg(long, default_value_t = u64::MAX)]
    count: u64,
    /// Datagrams per second (default: as fast as the sockets take them)
    #[arg(long)]
    rate: Option<f64>,
    /// Sending threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the random content (default: random)
    #[arg(long)]
    seed: Option<u64>,
    /// Stop early (and report) once this file exists
    #[arg(long, value_name = "PATH")]
    stop_file: Option<std::path::PathBuf>,
}

fn parse_index(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rwg-abuse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn send_setup(a: &SendArgs) -> Result<(Vec<std::net::UdpSocket>, VictimKeys, Bounds, u64), String> {
    if a.ports == 0 || a.threads == 0 {
        return Err("--ports and --threads must be at least 1".into());
    }
    let key = parse_key(&a.key)?;
    let socks = bind_all(&a.sources, a.ports, &a.targets)?;
    let bounds = Bounds {
        duration: a.duration,
        count: a.count,
        rate: a.rate,
        stop_file: a.stop_file.clone(),
    };
    let seed = a.seed.unwrap_or_else(|| OsRng.next_u64());
    Ok((
        socks.into_iter().map(|(s, _)| s).collect(),
        VictimKeys::new(key),
        bounds,
        seed,
    ))
}

fn header(a: &SendArgs, sockets: usize) -> Vec<(String, String)> {
    let v6 = a.sources.iter().filter(|s| s.is_ipv6()).count();
    vec![
        kv("sources", a.sources.len()),
        kv("sources_v6", v6),
        kv("sockets", sockets),
        kv("threads", a.threads),
    ]
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.mode {
        Mode::Flood { send, no_cookies } => {
            let (socks, keys, bounds, seed) = send_setup(&send)?;
            let mut out = header(&send, socks.len());
            let counters = blast::run(socks, send.threads, bounds, |t, n| {
                Flood::new(keys.clone(), !no_cookies, seed.wrapping_add(t as u64), n)
            });
            out.extend(counters.into_iter().map(|(k, v)| (k, v.to_string())));
            report(&out);
        }
        Mode::Junk {
            send,
            known_index,
            oversized_every,
            max_size,
        } => {
            let (socks, keys, bounds, seed) = send_setup(&send)?;
            let mut out = header(&send, socks.len());
            let counters = blast::run(socks, send.threads, bounds, |t, _| {
                Junk::new(
                    keys.clone(),
                    known_index.clone(),
                    max_size,
                    oversized_every,
                    seed.wrapping_add(t as u64),
                )
            });
            out.extend(counters.into_iter().map(|(k, v)| (k, v.to_string())));
            report(&out);
        }
        Mode::Relay {
            listen,
            upstream,
            bind,
            other_listen,
            other_bind,
            loss,
            dup,
            reorder,
            seed,
            control,
            duration,
            record,
        } => {
            let opts = relay::Options {
                listen,
                upstream,
                bind,
                other_listen,
                other_bind,
                impair: relay::Impair::parse(&loss, &dup, &reorder)?,
                seed: seed.unwrap_or_else(|| OsRng.next_u64()),
                control,
                duration,
                record,
            };
            report(&relay::run(opts)?);
        }
        Mode::Ctl { control, command } => {
            println!("{}", relay::control(control, &command.join(" "))?);
        }
    }
    Ok(())
}
