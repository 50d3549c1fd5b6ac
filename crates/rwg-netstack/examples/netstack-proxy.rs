//! A small driver of rwg-netstack's API for end-to-end tests and benchmarks
//! (tests/e2e/proxy_features.sh, benches/proxy.sh), until `rwg proxy` offers the same options.
//!
//! ```text
//! netstack-proxy --config wg0.conf
//!     [--socks5 ADDR] [--http ADDR] [--auth USER:PASS] [--dns IP]
//!     [--forward tcp:LOCAL:REMOTE | udp:LOCAL:REMOTE | reverse-tcp:PORT:LOCAL]...
//!     [--stdio HOST:PORT]
//!     [--metrics ADDR] [--ready-probe IP:PORT] [--ready-age SECS]
//!     [--max-connections N] [--idle-timeout SECS] [--connect-timeout SECS]
//!     [--reresolve-after SECS] [--reresolve-every SECS]
//!     [--cc none|reno|cubic] [--tx-buffer BYTES] [--rx-buffer BYTES]
//! ```
//!
//! Prints `ready` on stderr once every service listens (with --stdio, once connected).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rwg_driver::metrics::MetricsServer;
use rwg_netstack::dns::{connect_host, split_host_port, DnsResolver, Resolver};
use rwg_netstack::forward::{ForwardSpec, Forwarder};
use rwg_netstack::http::{HttpProxy, HttpProxyConfig};
use rwg_netstack::metrics::{render_stack, ProxyMetrics, Readiness, Service};
use rwg_netstack::relay::ConnectionLimit;
use rwg_netstack::socks5::{Socks5Config, Socks5Server};
use rwg_netstack::{Reresolve, Tunnel, TunnelOptions};

#[derive(Default)]
struct Args {
    config: Option<String>,
    socks5: Option<SocketAddr>,
    http: Option<SocketAddr>,
    auth: Option<(String, String)>,
    dns: Option<IpAddr>,
    forwards: Vec<ForwardSpec>,
    stdio: Option<(String, u16)>,
    metrics: Option<SocketAddr>,
    ready_probe: Option<SocketAddr>,
    ready_age: Option<u64>,
    max_connections: Option<usize>,
    idle_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    options: TunnelOptions,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a number"))
}

fn addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not IP:PORT"))
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut reresolve = Reresolve::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        let value = it
            .next()
            .map(String::as_str)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--config" => parsed.config = Some(value.to_owned()),
            "--socks5" => parsed.socks5 = Some(addr(flag, value)?),
            "--http" => parsed.http = Some(addr(flag, value)?),
            "--auth" => {
                let (u, p) = value.split_once(':').ok_or("--auth: USER:PASS")?;
                parsed.auth = Some((u.to_owned(), p.to_owned()));
            }
            "--dns" => {
                parsed.dns = Some(value.parse().map_err(|_| "--dns: an IP address")?);
            }
            "--forward" => parsed
                .forwards
                .push(value.parse().map_err(|e| format!("{e}"))?),
            "--stdio" => {
                parsed.stdio =
                    Some(split_host_port(value, None).ok_or("--stdio: HOST:PORT or [IPv6]:PORT")?);
            }
            "--metrics" => parsed.metrics = Some(addr(flag, value)?),
            "--ready-probe" => parsed.ready_probe = Some(addr(flag, value)?),
            "--ready-age" => parsed.ready_age = Some(number(flag, value)?),
            "--max-connections" => parsed.max_connections = Some(number(flag, value)?),
            "--idle-timeout" => parsed.idle_timeout = Some(number(flag, value)?),
            "--connect-timeout" => parsed.connect_timeout = Some(number(flag, value)?),
            "--reresolve-after" => {
                reresolve.after_silence = Duration::from_secs(number(flag, value)?)
            }
            "--reresolve-every" => {
                reresolve.check_every = Duration::from_millis(number::<u64>(flag, value)? * 1000)
            }
            "--cc" => parsed.options.congestion_control = Some(value.parse()?),
            "--tx-buffer" => parsed.options.tcp_tx_buffer_size = Some(number(flag, value)?),
            "--rx-buffer" => parsed.options.tcp_rx_buffer_size = Some(number(flag, value)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    parsed.options.reresolve = Some(reresolve);
    Ok(parsed)
}

/// Host names are refused without a DNS server, rather than leaked to the local resolver.
struct NoDns;

impl Resolver for NoDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot resolve {host}: no DNS server"),
            ))
        })
    }
}

async fn run(args: Args) -> Result<(), String> {
    let path = args.config.ok_or("--config FILE is required")?;
    let config = rwg_config::Config::from_file(&path).map_err(|e| e.to_string())?;
    let (stack, tunnel) = Tunnel::start_with(&config, args.options)
        .await
        .map_err(|e| format!("cannot start the tunnel: {e}"))?;
    let resolver: Arc<dyn Resolver> =
        match args.dns.or(config.interface.dns_servers.first().copied()) {
            Some(ip) => Arc::new(DnsResolver::new(stack.clone(), SocketAddr::new(ip, 53))),
            None => Arc::new(NoDns),
        };
    let metrics = ProxyMetrics::new();
    let idle = Some(Duration::from_secs(args.idle_timeout.unwrap_or(600)));
    let connect_timeout = args
        .connect_timeout
        .map_or(Duration::from_secs(15), Duration::from_secs);

    if let Some((host, port)) = args.stdio {
        let stream = connect_host(&stack, &*resolver, &host, port)
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        eprintln!("ready");
        let _open = metrics.open(Service::Stdio);
        return rwg_netstack::stdio::splice(stream, tokio::io::stdin(), tokio::io::stdout())
            .await
            .map(|_| ())
            .map_err(|e| format!("stdio: {e}"));
    }

    let limit = args.max_connections.map(ConnectionLimit::new);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = args.socks5 {
        let mut server = Socks5Server::new(
            stack.clone(),
            resolver.clone(),
            Socks5Config {
                credentials: args.auth.clone(),
                idle_timeout: idle,
                connect_timeout,
                ..Socks5Config::default()
            },
        )
        .with_metrics(metrics.clone());
        if let Some(limit) = &limit {
            server = server.with_limit(limit.clone());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--socks5 {addr}: {e}"))?;
        tasks.spawn(async move { server.serve(listener).await.map_err(|e| e.to_string()) });
    }
    if let Some(addr) = args.http {
        let mut proxy = HttpProxy::new(
            stack.clone(),
            resolver.clone(),
            HttpProxyConfig {
                credentials: args.auth.clone(),
                idle_timeout: idle,
                connect_timeout,
                ..HttpProxyConfig::default()
            },
        )
        .with_metrics(metrics.clone());
        if let Some(limit) = &limit {
            proxy = proxy.with_limit(limit.clone());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--http {addr}: {e}"))?;
        tasks.spawn(async move { proxy.serve(listener).await.map_err(|e| e.to_string()) });
    }
    for spec in args.forwards {
        let mut forwarder = Forwarder::bind(&stack, spec)
            .await
            .map_err(|e| format!("forward {spec}: {e}"))?
            .with_metrics(metrics.clone())
            .with_idle_timeout(idle);
        if let Some(limit) = &limit {
            forwarder = forwarder.with_limit(limit.clone());
        }
        tasks.spawn(async move { forwarder.run().await.map_err(|e| e.to_string()) });
    }
    let _server = match args.metrics {
        Some(addr) => {
            let mut readiness = Readiness::new(
                tunnel.clone(),
                Duration::from_secs(args.ready_age.unwrap_or(180)),
            );
            if let Some(probe) = args.ready_probe {
                readiness = readiness.with_probe(&stack, probe, Duration::from_secs(2));
            }
            let (device, stack, tunnel, metrics) = (
                tunnel.device().clone(),
                stack.clone(),
                tunnel.clone(),
                metrics.clone(),
            );
            let source = Arc::new(move |out: &mut String| {
                rwg_driver::metrics::render(&device, out);
                render_stack(&stack.stats(), out);
                metrics.render(out);
                let t = tunnel.stats();
                out.push_str(&format!(
                    "# HELP rwg_proxy_udp_tx_errors_total Datagrams the UDP socket refused.\n# TYPE rwg_proxy_udp_tx_errors_total counter\nrwg_proxy_udp_tx_errors_total {}\n",
                    t.tx_errors
                ));
            });
            let ready = Arc::new(move || readiness.check());
            Some(
                MetricsServer::spawn(addr, source, Some(ready))
                    .map_err(|e| format!("--metrics {addr}: {e}"))?,
            )
        }
        None => None,
    };
    eprintln!("ready");
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
    let result = runtime.block_on(run(args));
    // stdin is read on a blocking thread that cannot be interrupted: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netstack-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
