//! A small driver of rwg-netstack's API for end-to-end tests and benchmarks (tests/e2e/
//! proxy_features.sh, benches/proxy.sh), until `rwg proxy` grows the same options.
//!
//! ```text
//! netstack-proxy --config wg0.conf [--forward tcp:LOCAL:REMOTE]... [--cc none|reno|cubic]
//!                [--tx-buffer BYTES] [--rx-buffer BYTES]
//! ```
//!
//! Prints `ready` on stdout once every service listens.

use std::process::ExitCode;

use rwg_netstack::forward::{ForwardSpec, Forwarder};
use rwg_netstack::{Tunnel, TunnelOptions};

#[derive(Default)]
struct Args {
    config: Option<String>,
    forwards: Vec<ForwardSpec>,
    options: TunnelOptions,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--config" => parsed.config = Some(value()?.to_owned()),
            "--forward" => parsed
                .forwards
                .push(value()?.parse().map_err(|e| format!("{e}"))?),
            "--cc" => parsed.options.congestion_control = Some(value()?.parse()?),
            "--tx-buffer" => {
                parsed.options.tcp_tx_buffer_size =
                    Some(value()?.parse().map_err(|_| "--tx-buffer: a byte count")?)
            }
            "--rx-buffer" => {
                parsed.options.tcp_rx_buffer_size =
                    Some(value()?.parse().map_err(|_| "--rx-buffer: a byte count")?)
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(parsed)
}

async fn run(args: Args) -> Result<(), String> {
    let path = args.config.ok_or("--config FILE is required")?;
    let config = rwg_config::Config::from_file(&path).map_err(|e| e.to_string())?;
    let (stack, _tunnel) = Tunnel::start_with(&config, args.options)
        .await
        .map_err(|e| format!("cannot start the tunnel: {e}"))?;
    let mut tasks = tokio::task::JoinSet::new();
    for spec in args.forwards {
        let forwarder = Forwarder::bind(&stack, spec)
            .await
            .map_err(|e| format!("forward {spec}: {e}"))?;
        tasks.spawn(async move { forwarder.run().await.map_err(|e| e.to_string()) });
    }
    println!("ready");
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            return Err(e);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("netstack-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netstack-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netstack-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
