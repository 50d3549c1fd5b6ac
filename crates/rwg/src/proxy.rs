//! `rwg proxy`: a SOCKS5 server and port forwards into a WireGuard tunnel, through a userspace
//! TCP/IP stack: no TUN device, no root.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rwg_netstack::dns::{DnsResolver, Resolver};
use rwg_netstack::forward::{ForwardSpec, Forwarder};
use rwg_netstack::socks5::{Socks5Config, Socks5Server};
use rwg_netstack::{NetStack, TcpStream, Tunnel};

use crate::cli::ProxyArgs;

/// Entry point: the arguments after `proxy`, parsed.
pub(crate) fn main(args: ProxyArgs) -> ExitCode {
    if let Err(e) = args.check() {
        e.exit();
    }
    crate::init_logging(tracing::Level::INFO);
    let config = match rwg_config::Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(serve(config, args));
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

/// Used when the configuration has no `DNS`: host names are refused rather than leaked to
/// the local resolver.
struct NoDns;

impl Resolver for NoDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send + 'a>> {
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

type Service = Pin<Box<dyn Future<Output = String> + Send>>;

async fn serve(config: rwg_config::Config, args: ProxyArgs) -> Result<(), String> {
    let (stack, tunnel) = Tunnel::start(&config)
        .await
        .map_err(|e| format!("cannot start the tunnel: {e}"))?;
    tracing::info!(
        udp = %tunnel.local_addr(),
        addresses = ?stack.addresses(),
        peers = config.peers.len(),
        "tunnel up"
    );
    let mut services: Vec<Service> = Vec::new();
    if let Some(addr) = args.socks5 {
        let resolver: Arc<dyn Resolver> = match config.interface.dns_servers.first() {
            Some(dns) => Arc::new(DnsResolver::new(stack.clone(), SocketAddr::new(*dns, 53))),
            None => Arc::new(NoDns),
        };
        let socks = Socks5Server::new(
            stack.clone(),
            resolver,
            Socks5Config {
                credentials: args.socks5_auth.map(|c| (c.user, c.password)),
                ..Socks5Config::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for SOCKS5: {e}"))?;
        tracing::info!(%addr, "SOCKS5 server listening");
        services.push(Box::pin(run_socks5(socks, listener)));
    }
    // Stops with this function: the server's thread outlives nothing but the process.
    let _metrics = match args.metrics {
        None => None,
        Some(addr) => {
            let device = tunnel.device().clone();
            let render = move |out: &mut String| rwg_driver::metrics::render(&device, out);
            let server = rwg_driver::metrics::MetricsServer::spawn(addr, Arc::new(render), None)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            Some(StopOnDrop(server))
        }
    };
    for spec in args.forward.into_iter().chain(args.reverse) {
        match spec {
            ForwardSpec::Tcp { local, remote } => {
                let listener = tokio::net::TcpListener::bind(local)
                    .await
                    .map_err(|e| format!("forward {spec}: cannot listen on {local}: {e}"))?;
                tracing::info!(%local, %remote, "TCP forward listening");
                services.push(Box::pin(run_tcp_forward(stack.clone(), listener, remote)));
            }
            ForwardSpec::ReverseTcp { tunnel_port, local } => {
                let listener =
                    rwg_netstack::TcpListener::bind(&stack, tunnel_port).map_err(|e| {
                        format!("forward {spec}: cannot listen on tunnel port {tunnel_port}: {e}")
                    })?;
                tracing::info!(tunnel_port, %local, "reverse TCP forward listening");
                services.push(Box::pin(run_reverse(listener, local)));
            }
            ForwardSpec::Udp { local, .. } => {
                let forwarder = Forwarder::bind(&stack, spec)
                    .await
                    .map_err(|e| format!("forward {spec}: cannot listen on {local}: {e}"))?;
                tracing::info!(%spec, "UDP forward listening");
                services.push(Box::pin(async move {
                    match forwarder.run().await {
                        Ok(()) => format!("forward {spec} ended"),
                        Err(e) => format!("forward {spec} failed: {e}"),
                    }
                }));
            }
        }
    }
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
    while let Some(why) = ended_rx.recv().await {
        tracing::error!("{why}");
        last = why;
    }
    drop(tunnel);
    Err(format!("every service stopped; last: {last}"))
}

/// Stops the metrics server when the proxy stops serving.
struct StopOnDrop(rwg_driver::metrics::MetricsServer);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

async fn run_socks5(server: Socks5Server, listener: tokio::net::TcpListener) -> String {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SOCKS5 accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = server.handle_client(client).await {
                tracing::debug!(client = %peer, "SOCKS5 client: {e}");
            }
        });
    }
}

async fn run_tcp_forward(
    stack: NetStack,
    listener: tokio::net::TcpListener,
    remote: SocketAddr,
) -> String {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("forward accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stack = stack.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&stack, remote).await {
                Ok(mut tunnel) => {
                    let _ = client.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await {
                        tracing::debug!(client = %peer, %remote, "forward ended: {e}");
                    }
                }
                Err(e) => {
                    // The client sees its connection closed; the reason goes to the log.
                    tracing::warn!(client = %peer, %remote, "forward: cannot connect to {remote} through the tunnel: {e}");
                }
            }
        });
    }
}

async fn run_reverse(listener: rwg_netstack::TcpListener, local: SocketAddr) -> String {
    loop {
        let (mut tunnel, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => return format!("reverse forward to {local}: tunnel listener failed: {e}"),
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(local).await {
                Ok(mut client) => {
                    let _ = client.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut tunnel, &mut client).await {
                        tracing::debug!(peer = %peer, %local, "reverse forward ended: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, %local, "reverse forward: cannot connect to {local}: {e}");
                }
            }
        });
    }
}
