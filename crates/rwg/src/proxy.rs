//! `rwg proxy`: SOCKS5, an HTTP proxy, port forwards and a stdio tunnel into a WireGuard
//! network, through a userspace TCP/IP stack: no TUN device, no root. The services, their
//! bounds (connection cap, idle timeout), metrics and readiness are rwg-netstack's; this
//! module wires them to the command line.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rwg_driver::metrics::MetricsServer;
use rwg_netstack::dns::{connect_host, DnsResolver, Resolver};
use rwg_netstack::forward::Forwarder;
use rwg_netstack::http::{HttpProxy, HttpProxyConfig};
use rwg_netstack::metrics::{render_stack, ProxyMetrics, Readiness, Service};
use rwg_netstack::relay::ConnectionLimit;
use rwg_netstack::socks5::{Socks5Config, Socks5Server};
use rwg_netstack::{Reresolve, Tunnel, TunnelOptions};

use crate::cli::ProxyArgs;

/// How long `--stdio` waits for its connection (name resolution included).
const STDIO_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `--ready-probe` tries its address.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Entry point: the arguments after `proxy`, parsed.
pub(crate) fn main(args: ProxyArgs) -> ExitCode {
    if let Err(e) = args.check() {
        e.exit();
    }
    if args.check {
        return check_file(&args.config);
    }
    // With --stdio, standard error is the user's terminal (ssh passes it through): only errors.
    let level = if args.stdio.is_some() {
        tracing::Level::ERROR
    } else {
        tracing::Level::INFO
    };
    crate::init_logging(level);
    // Before the key is read: no core dumps, memory locked where the privileges allow (as the
    // daemon does). (Socket buffers get mappings of their own from the binary's allocator, so
    // that memory follows the connections open now, not all that ever were.)
    #[cfg(target_os = "linux")]
    {
        let protection = rwg_device::secret::protect_process();
        tracing::debug!(?protection, "process protection");
    }
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("rwg proxy: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(serve(config, args));
    // --stdio reads standard input on a blocking thread that cannot be interrupted: do not
    // wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("rwg proxy: {message}");
    ExitCode::FAILURE
}

/// Reads and parses the file; every problem, as `file:line: problem`, in line order: the
/// format's own and what the proxy needs on top of it.
pub(crate) fn load(path: &Path) -> Result<rwg_config::Config, Vec<String>> {
    let (config, outline) = rwg_config::Config::from_file_all(path)
        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if config.interface.addresses.is_empty() {
        return Err(vec![format!(
            "{}:{}: [Interface] has no Address: rwg proxy needs an address inside the tunnel",
            path.display(),
            outline.interface
        )]);
    }
    Ok(config)
}

/// `--check`: every problem on standard output, exit 1 if there is one.
fn check_file(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} peer{})",
                path.display(),
                config.peers.len(),
                if config.peers.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!(
                "rwg proxy: {} problem{} in {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Used when the configuration has no `DNS`: host names are refused rather than leaked to
/// the local resolver.
struct NoDns;

impl Resolver for NoDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse() {
                return Ok(vec![ip]);
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot resolve {host}: the configuration has no DNS server"),
            ))
        })
    }
}

/// How the tunnel's UDP socket moves datagrams. On Linux: many per system call (`sendmmsg`
/// with UDP GSO, `recvmmsg` with UDP GRO, as the daemon does), each offload switched off by
/// `RWG_DISABLE=udp-gso` / `udp-gro`, and `RWG_DISABLE=all` the portable path of one system
/// call per datagram (what other systems use). Elsewhere always the portable path.
#[cfg(target_os = "linux")]
fn datagram_io() -> Result<Arc<dyn rwg_netstack::DatagramIo>, String> {
    let disable = std::env::var(rwg_device::pipeline::DISABLE_ENV).ok();
    let config = rwg_device::pipeline::DataPlaneConfig::parse(disable.as_deref(), None)?;
    let all_off = !config.udp_gso && !config.udp_gro && !config.tun_offload;
    if all_off {
        tracing::info!("RWG_DISABLE=all: one system call per datagram");
        return Ok(Arc::new(rwg_netstack::PlainIo));
    }
    Ok(Arc::new(LinuxBatches {
        io: rwg_device::batch::BatchIo::new(config.udp_gso),
        gro: config.udp_gro,
    }))
}

#[cfg(not(target_os = "linux"))]
fn datagram_io() -> Result<Arc<dyn rwg_netstack::DatagramIo>, String> {
    Ok(Arc::new(rwg_netstack::PlainIo))
}

/// rwg-device's batched system calls behind rwg-netstack's interface.
#[cfg(target_os = "linux")]
struct LinuxBatches {
    io: rwg_device::batch::BatchIo,
    gro: bool,
}

#[cfg(target_os = "linux")]
impl rwg_netstack::DatagramIo for LinuxBatches {
    fn prepare(&self, socket: &std::net::UdpSocket) {
        if self.gro {
            rwg_device::batch::BatchIo::enable_gro(socket);
        }
    }

    fn send(
        &self,
        socket: &std::net::UdpSocket,
        datagrams: &[(&[u8], SocketAddr)],
        sent: &mut [bool],
    ) {
        self.io.send(socket, datagrams, sent);
    }

    fn recv(
        &self,
        socket: &std::net::UdpSocket,
        buf: &mut [u8],
        stride: usize,
        out: &mut [rwg_netstack::Incoming],
    ) -> std::io::Result<usize> {
        const MOST: usize = 16;
        let mut got = [rwg_device::batch::Received {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
        }; MOST];
        let room = out.len().min(MOST);
        let n = self.io.recv(socket, buf, stride, &mut got[..room])?;
        for (o, m) in out.iter_mut().zip(&got[..n]) {
            *o = rwg_netstack::Incoming {
                len: m.len,
                from: m.from,
                segment: m.segment,
            };
        }
        Ok(n)
    }
}

type Task = Pin<Box<dyn Future<Output = String> + Send>>;

async fn serve(config: rwg_config::Config, args: ProxyArgs) -> Result<(), String> {
    // Endpoint host names are resolved again when their peer has been silent that long,
    // looked at every quarter of it (between 1 and 30 s).
    let reresolve = (args.reresolve_after > 0).then(|| {
        let after_silence = Duration::from_secs(args.reresolve_after);
        Reresolve {
            after_silence,
            check_every: (after_silence / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        }
    });
    let options = TunnelOptions {
        reresolve,
        datagram_io: datagram_io()?,
        ..TunnelOptions::default()
    };
    let (stack, tunnel) = Tunnel::start_with(&config, options)
        .await
        .map_err(|e| format!("cannot start the tunnel: {e}"))?;
    tracing::info!(
        udp = %tunnel.local_addr(),
        addresses = ?stack.addresses(),
        peers = config.peers.len(),
        "tunnel up"
    );
    let resolver: Arc<dyn Resolver> = match config.interface.dns_servers.first() {
        Some(dns) => Arc::new(DnsResolver::new(stack.clone(), SocketAddr::new(*dns, 53))),
        None => Arc::new(NoDns),
    };
    let metrics = ProxyMetrics::new();

    if let Some((host, port)) = &args.stdio {
        let stream = tokio::time::timeout(
            STDIO_CONNECT_TIMEOUT,
            connect_host(&stack, &*resolver, host, *port),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", STDIO_CONNECT_TIMEOUT.as_secs()),
            ))
        })
        .map_err(|e| format!("--stdio: cannot connect to {host}:{port}: {e}"))?;
        tracing::debug!("stdio connected to {host}:{port}");
        let _open = metrics.open(Service::Stdio);
        let result =
            rwg_netstack::stdio::splice(stream, tokio::io::stdin(), tokio::io::stdout()).await;
        tunnel.stop();
        return result
            .map(|_| ())
            .map_err(|e| format!("--stdio {host}:{port}: {e}"));
    }

    let limit = args
        .max_connections
        .map(|n| ConnectionLimit::new(usize::try_from(n).unwrap_or(usize::MAX)));
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let mut services: Vec<Task> = Vec::new();
    if let Some(addr) = args.socks5 {
        let mut socks = Socks5Server::new(
            stack.clone(),
            resolver.clone(),
            Socks5Config {
                credentials: args.socks5_auth.map(|c| (c.user, c.password)),
                idle_timeout: idle,
                ..Socks5Config::default()
            },
        )
        .with_metrics(metrics.clone());
        if let Some(limit) = &limit {
            socks = socks.with_limit(limit.clone());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for SOCKS5: {e}"))?;
        tracing::info!(%addr, "SOCKS5 server listening");
        services.push(Box::pin(async move {
            match socks.serve(listener).await {
                Ok(()) => "SOCKS5 server ended".to_owned(),
                Err(e) => format!("SOCKS5 server failed: {e}"),
            }
        }));
    }
    if let Some(addr) = args.http {
        let mut http = HttpProxy::new(
            stack.clone(),
            resolver.clone(),
            HttpProxyConfig {
                credentials: args.http_auth.map(|c| (c.user, c.password)),
                idle_timeout: idle,
                ..HttpProxyConfig::default()
            },
        )
        .with_metrics(metrics.clone());
        if let Some(limit) = &limit {
            http = http.with_limit(limit.clone());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for the HTTP proxy: {e}"))?;
        tracing::info!(%addr, "HTTP proxy listening");
        services.push(Box::pin(async move {
            match http.serve(listener).await {
                Ok(()) => "HTTP proxy ended".to_owned(),
                Err(e) => format!("HTTP proxy failed: {e}"),
            }
        }));
    }
    for spec in args.forward.into_iter().chain(args.reverse) {
        let mut forwarder = Forwarder::bind(&stack, spec)
            .await
            .map_err(|e| format!("forward {spec}: cannot listen: {e}"))?
            .with_metrics(metrics.clone())
            .with_idle_timeout(idle);
        if let Some(limit) = &limit {
            forwarder = forwarder.with_limit(limit.clone());
        }
        tracing::info!(%spec, "forward listening");
        services.push(Box::pin(async move {
            match forwarder.run().await {
                Ok(()) => format!("forward {spec} ended"),
                Err(e) => format!("forward {spec} failed: {e}"),
            }
        }));
    }
    // Stops with this function: the server's thread outlives nothing but the process.
    let _health = match args.health {
        None => None,
        Some(addr) => {
            let mut readiness = Readiness::new(tunnel.clone(), Duration::from_secs(args.ready_age));
            if let Some(probe) = args.ready_probe {
                readiness = readiness.with_probe(&stack, probe, PROBE_INTERVAL);
            }
            let (device, stack, tunnel, metrics) = (
                tunnel.device().clone(),
                stack.clone(),
                tunnel.clone(),
                metrics.clone(),
            );
            let render = move |out: &mut String| {
                rwg_driver::metrics::render(&device, out);
                render_stack(&stack.stats(), out);
                metrics.render(out);
                out.push_str(
                    "# HELP rwg_proxy_udp_tx_errors_total Datagrams the UDP socket refused.\n\
                     # TYPE rwg_proxy_udp_tx_errors_total counter\n",
                );
                out.push_str(&format!(
                    "rwg_proxy_udp_tx_errors_total {}\n",
                    tunnel.stats().tx_errors
                ));
            };
            let ready = move || readiness.check();
            let server = MetricsServer::spawn(addr, Arc::new(render), Some(Arc::new(ready)))
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            Some(StopOnDrop(server))
        }
    };
    tracing::info!("ready");
    // Every service runs forever; if one stops, the others go on.
    let count = services.len();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<String>(count.max(1));
    for service in services {
        let ended = ended_tx.clone();
        tokio::spawn(async move {
            let why = service.await;
            let _ = ended.send(why).await;
        });
    }
    drop(ended_tx);
    let mut last = String::from("no service");
    let services_ended = async {
        while let Some(why) = ended_rx.recv().await {
            tracing::error!("{why}");
            last = why;
        }
    };
    // A stack that stopped (its driver panicked) serves nothing any more: exit non-zero, so
    // that a service manager restarts the proxy, rather than stay up as a black hole.
    let result = tokio::select! {
        () = services_ended => Err(format!("every service stopped; last: {last}")),
        why = stack.failure() => Err(format!("the network stack stopped: {why}")),
    };
    tunnel.stop();
    result
}

/// Stops the metrics server when the proxy stops serving.
struct StopOnDrop(MetricsServer);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
