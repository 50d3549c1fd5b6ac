//! `rwg demo`: two WireGuard peers in one process, no root and no setup. Each peer is a
//! userspace TCP/IP stack behind its own WireGuard device and loopback UDP socket; they
//! complete a real handshake and move a TCP stream through the tunnel, checksummed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rwg_config::{Config, Endpoint, Interface, IpNet, Peer};
use rwg_netstack::{NetStack, TcpListener, TcpStream, Tunnel, TunnelHandle, TunnelOptions};
use rwg_proto::crypto::{PrivateKey, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::DemoArgs;

const ADDRESS_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ADDRESS_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 5001;
/// The whole demo, handshake included, must finish within this.
const DEADLINE: Duration = Duration::from_secs(120);
/// The pattern the sender repeats: random-looking, so nothing compresses or hides errors.
const PATTERN_LEN: usize = 1 << 20;
const CHUNK: usize = 64 << 10;

/// Entry point: the arguments after `demo`, parsed.
pub(crate) fn main(args: &DemoArgs) -> ExitCode {
    let bytes = args.bytes;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match tokio::time::timeout(DEADLINE, run(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "did not finish within {} s (is the machine overloaded?)",
                DEADLINE.as_secs()
            )),
        }
    });
    // Tasks of the stacks are still alive; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("rwg demo: FAILED: {message}");
    ExitCode::FAILURE
}

fn config(
    own: &PrivateKey,
    address: Ipv4Addr,
    peer: PublicKey,
    peer_address: Ipv4Addr,
    endpoint: Option<SocketAddr>,
) -> Config {
    Config {
        interface: Interface {
            private_key: own.clone(),
            addresses: vec![IpNet {
                addr: IpAddr::V4(address),
                prefix_len: 32,
            }],
            dns_servers: Vec::new(),
            dns_search: Vec::new(),
            mtu: None,
            listen_port: None,
            fwmark: None,
            table: None,
            pre_up: Vec::new(),
            post_up: Vec::new(),
            pre_down: Vec::new(),
            post_down: Vec::new(),
            save_config: None,
        },
        peers: vec![Peer {
            public_key: peer,
            preshared_key: None,
            endpoint: endpoint.map(Endpoint::Addr),
            allowed_ips: vec![IpNet {
                addr: IpAddr::V4(peer_address),
                prefix_len: 32,
            }],
            persistent_keepalive: None,
        }],
    }
}

/// FNV-1a, 64 bits: order-sensitive, so a reordered, lost or corrupted byte changes it.
fn checksum(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
const CHECKSUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;

fn pattern() -> Vec<u8> {
    // xorshift64*, seeded from the clock: different data on every run.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = (clock ^ u64::from(std::process::id())) | 1;
    let mut out = Vec::with_capacity(PATTERN_LEN);
    while out.len() < PATTERN_LEN {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out
}

/// The chunks the sender writes, in order.
fn chunks(pattern: &[u8], total: u64) -> impl Iterator<Item = &[u8]> {
    let mut sent = 0u64;
    std::iter::from_fn(move || {
        if sent >= total {
            return None;
        }
        let offset = (sent % pattern.len() as u64) as usize;
        let len = (pattern.len() - offset)
            .min(CHUNK)
            .min(usize::try_from(total - sent).unwrap_or(usize::MAX));
        sent += len as u64;
        Some(&pattern[offset..offset + len])
    })
}

fn b64(key: &PublicKey) -> String {
    rwg_config::key::encode_key(key.as_bytes())
}

async fn start(config: &Config, name: &str) -> Result<(NetStack, TunnelHandle), String> {
    let options = TunnelOptions {
        bind: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        ..TunnelOptions::default()
    };
    Tunnel::start_with(config, options)
        .await
        .map_err(|e| format!("cannot start peer {name}: {e}"))
}

/// Receives `total` bytes, then answers with their checksum.
async fn serve(listener: TcpListener, total: u64) -> Result<(), String> {
    let (mut stream, _) = listener
        .accept()
        .await
        .map_err(|e| format!("peer B: accept failed: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut sum = CHECKSUM_INIT;
    while received < total {
        let want = usize::try_from(total - received)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(|e| format!("peer B: read failed after {received} bytes: {e}"))?;
        if n == 0 {
            return Err(format!(
                "peer B: connection closed after {received} of {total} bytes"
            ));
        }
        sum = checksum(sum, &buf[..n]);
        received += n as u64;
    }
    stream
        .write_all(&sum.to_be_bytes())
        .await
        .map_err(|e| format!("peer B: cannot send the checksum: {e}"))?;
    stream
        .shutdown()
        .await
        .map_err(|e| format!("peer B: cannot close: {e}"))?;
    Ok(())
}

async fn run(total: u64) -> Result<(), String> {
    let mut rng = rand_core::OsRng;
    let key_a = PrivateKey::generate(&mut rng);
    let key_b = PrivateKey::generate(&mut rng);
    let (pub_a, pub_b) = (key_a.public_key(), key_b.public_key());

    // B first: A needs B's port as its endpoint; B learns A's from the handshake.
    let (stack_b, tunnel_b) =
        start(&config(&key_b, ADDRESS_B, pub_a, ADDRESS_A, None), "B").await?;
    let endpoint_b = tunnel_b.local_addr();
    let (stack_a, tunnel_a) = start(
        &config(&key_a, ADDRESS_A, pub_b, ADDRESS_B, Some(endpoint_b)),
        "A",
    )
    .await?;
    drop((key_a, key_b));

    println!("rwg demo: two WireGuard peers in one process, over loopback UDP");
    println!(
        "  peer A  public key {}  udp {}  tunnel address {ADDRESS_A}",
        b64(&pub_a),
        tunnel_a.local_addr()
    );
    println!(
        "  peer B  public key {}  udp {}  tunnel address {ADDRESS_B}",
        b64(&pub_b),
        endpoint_b
    );

    let pattern = pattern();
    let expected = chunks(&pattern, total).fold(CHECKSUM_INIT, checksum);

    let listener =
        TcpListener::bind(&stack_b, PORT).map_err(|e| format!("peer B: cannot listen: {e}"))?;
    let server = tokio::spawn(serve(listener, total));

    // The first packet (A's SYN) starts the handshake.
    let started = Instant::now();
    let target = SocketAddr::from((ADDRESS_B, PORT));
    let handshake = async {
        tunnel_a.handshake_completed().await;
        started.elapsed()
    };
    let (stream, handshake_time) = tokio::join!(TcpStream::connect(&stack_a, target), handshake);
    let mut stream = stream
        .map_err(|e| format!("peer A: cannot connect to {target} through the tunnel: {e}"))?;
    println!(
        "handshake completed in {:.2} ms",
        handshake_time.as_secs_f64() * 1000.0
    );

    let transfer = Instant::now();
    for chunk in chunks(&pattern, total) {
        stream
            .write_all(chunk)
            .await
            .map_err(|e| format!("peer A: write failed: {e}"))?;
    }
    let mut answer = [0u8; 8];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| format!("peer A: no checksum from peer B: {e}"))?;
    let seconds = transfer.elapsed().as_secs_f64();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(format!("peer B's task failed: {e}")),
    }
    let got = u64::from_be_bytes(answer);
    if got != expected {
        return Err(format!(
            "checksum mismatch: sent {expected:#018x}, peer B received {got:#018x}"
        ));
    }
    let mib = total as f64 / f64::from(1 << 20);
    println!(
        "TCP {} -> {target}: {total} bytes in {seconds:.3} s = {:.1} MiB/s ({:.1} Mbit/s), checksum {expected:#018x} verified",
        stream.local_addr(),
        mib / seconds,
        total as f64 * 8.0 / 1e6 / seconds
    );
    println!("WireGuard counters:");
    for (name, tunnel) in [("A", &tunnel_a), ("B", &tunnel_b)] {
        let s = tunnel.stats();
        println!(
            "  peer {name}: sent {} datagrams ({} bytes), received {} datagrams ({} bytes), handshakes {}, dropped {} packets / {} datagrams, send errors {}",
            s.tx_datagrams, s.tx_bytes, s.rx_datagrams, s.rx_bytes, s.handshakes, s.packets_dropped, s.datagrams_dropped, s.tx_errors
        );
    }
    drop(stack_b);
    Ok(())
}
