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

fn usage() -> &'static str {
    "Usage: rwg proxy --config FILE [--socks5 ADDR [--socks5-auth USER:PASS]]\n\
     \x20                [--forward tcp:LOCAL:REMOTE]... [--forward udp:LOCAL:REMOTE]...\n\
     \x20                [--reverse tcp:TUNNEL_PORT:LOCAL]...\n\
     \n\
     Joins the WireGuard network described by FILE (wg-quick format: [Interface] with\n\
     PrivateKey and Address, [Peer] sections) with a userspace TCP/IP stack, without a TUN\n\
     device or root, and offers:\n\
     \x20 --socks5 ADDR               a SOCKS5 server on the local ADDR (e.g. 127.0.0.1:1080),\n\
     \x20                             CONNECT and UDP ASSOCIATE; host names are resolved by the\n\
     \x20                             config's DNS server through the tunnel\n\
     \x20 --socks5-auth USER:PASS     require this user name and password\n\
     \x20 --forward tcp:LOCAL:REMOTE  accept TCP on the local LOCAL, connect to REMOTE in the tunnel\n\
     \x20 --forward udp:LOCAL:REMOTE  the same for UDP datagrams\n\
     \x20 --reverse tcp:PORT:LOCAL    accept TCP on PORT of the tunnel address, connect to LOCAL\n\
     At least one of --socks5, --forward, --reverse is needed. Addresses are IPv4:port or\n\
     [IPv6]:port, e.g. --forward tcp:127.0.0.1:8080:10.0.0.1:80.\n\
     Logging goes to stderr; LOG_LEVEL=debug|verbose|error|silent (default: info).\n"
}

#[derive(Default)]
struct Args {
    config: Option<String>,
    socks5: Option<SocketAddr>,
    auth: Option<(String, String)>,
    forwards: Vec<ForwardSpec>,
}

enum Parsed {
    Run(Args),
    Help,
}

fn parse_args(args: &[&str]) -> Result<Parsed, String> {
    let mut parsed = Args::default();
    let mut rest = args.iter().copied();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(Parsed::Help);
        }
        let known = [
            "--config",
            "-c",
            "--socks5",
            "--socks5-auth",
            "--forward",
            "-L",
            "--reverse",
            "-R",
        ];
        if !known.contains(&flag) {
            return Err(format!("unknown option {flag:?}"));
        }
        let value = inline
            .or_else(|| rest.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--config" | "-c" => {
                if parsed.config.replace(value.to_owned()).is_some() {
                    return Err("--config given twice; one configuration file only".to_owned());
                }
            }
            "--socks5" => {
                let addr = value.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "--socks5 {value:?}: expected IP:PORT to listen on, e.g. 127.0.0.1:1080"
                    )
                })?;
                if parsed.socks5.replace(addr).is_some() {
                    return Err("--socks5 given twice".to_owned());
                }
            }
            "--socks5-auth" => {
                let (user, pass) = value.split_once(':').ok_or_else(|| {
                    "--socks5-auth: expected USER:PASS (a colon between user name and password)"
                        .to_owned()
                })?;
                if user.is_empty() || pass.is_empty() || user.len() > 255 || pass.len() > 255 {
                    return Err(
                        "--socks5-auth: user name and password must be 1 to 255 bytes each"
                            .to_owned(),
                    );
                }
                parsed.auth = Some((user.to_owned(), pass.to_owned()));
            }
            "--forward" | "-L" => {
                if !(value.starts_with("tcp:") || value.starts_with("udp:")) {
                    return Err(format!(
                        "--forward {value:?}: expected tcp:LOCAL:REMOTE or udp:LOCAL:REMOTE, \
                         e.g. tcp:127.0.0.1:8080:10.0.0.1:80"
                    ));
                }
                let spec = value
                    .parse::<ForwardSpec>()
                    .map_err(|e| format!("--forward: {e}"))?;
                parsed.forwards.push(spec);
            }
            _ => {
                let port_local = value.strip_prefix("tcp:").ok_or_else(|| {
                    format!(
                        "--reverse {value:?}: expected tcp:TUNNEL_PORT:LOCAL, e.g. tcp:8080:127.0.0.1:80"
                    )
                })?;
                let spec = format!("reverse tcp:{port_local}")
                    .parse::<ForwardSpec>()
                    .map_err(|e| format!("--reverse: {e}"))?;
                parsed.forwards.push(spec);
            }
        }
    }
    if parsed.config.is_none() {
        return Err("--config FILE is required (a wg-quick configuration file)".to_owned());
    }
    if parsed.auth.is_some() && parsed.socks5.is_none() {
        return Err("--socks5-auth needs --socks5 ADDR".to_owned());
    }
    if parsed.socks5.is_none() && parsed.forwards.is_empty() {
        return Err(
            "nothing to do: give at least one of --socks5, --forward, --reverse".to_owned(),
        );
    }
    Ok(Parsed::Run(parsed))
}

/// Entry point: `args` are the words after `proxy`.
pub(crate) fn main(args: &[&str]) -> ExitCode {
    let args = match parse_args(args) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rwg proxy: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    crate::init_logging(tracing::Level::INFO);
    let Some(path) = args.config.as_deref() else {
        return fail("--config FILE is required");
    };
    let config = match rwg_config::Config::from_file(path) {
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

async fn serve(config: rwg_config::Config, args: Args) -> Result<(), String> {
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
                credentials: args.auth,
                ..Socks5Config::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for SOCKS5: {e}"))?;
        tracing::info!(%addr, "SOCKS5 server listening");
        services.push(Box::pin(run_socks5(socks, listener)));
    }
    for spec in args.forwards {
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
