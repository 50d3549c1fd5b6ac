//! The command line, defined once: the parser, `--help`, the error messages, the shell
//! completions (`rwg completions SHELL`) and the manual pages (`rwg man`) all come from here.
//!
//! The daemon keeps wireguard-go's syntax, which `wg-quick` relies on: `rwg [-f|--foreground]
//! INTERFACE-NAME`, `rwg --version`, and the environment variables in [`ENVIRONMENT`] (read by
//! the daemon itself, with wireguard-go's meaning: `WG_PROCESS_FOREGROUND` is on only when it is
//! exactly `1`).

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::builder::styling::{AnsiColor, Styles};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};
use rwg_netstack::forward::ForwardSpec;

/// The environment variables of the daemon: what to set, what it does. Shown by `rwg --help`
/// and in the ENVIRONMENT section of rwg(8).
pub(crate) const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "WG_PROCESS_FOREGROUND=1",
        "Same as --foreground (any other value: ignored, as wireguard-go does).",
    ),
    (
        "WG_TUN_FD=N",
        "Serve the TUN device already open on descriptor N instead of creating INTERFACE-NAME.",
    ),
    (
        "WG_UAPI_FD=N",
        "Serve the configuration socket already listening on descriptor N instead of binding \
         /var/run/wireguard/INTERFACE-NAME.sock.",
    ),
    (
        "LOG_LEVEL=verbose|debug|error|silent",
        "How much to log to standard error (default: error for the daemon, info for rwg proxy). \
         Logs never contain key material. A daemon in the background discards its output unless \
         the level is verbose or debug.",
    ),
    (
        "RWG_DISABLE=LIST",
        "Switch data-plane offloads off: a comma-separated list of tun-offload (TUN TSO/USO and \
         coalescing), udp-gso, udp-gro, or all. Default: everything the kernel supports is on. \
         rwg proxy reads it too; there all means one system call per datagram.",
    ),
    (
        "RWG_WORKERS=N",
        "Threads that encrypt and decrypt (1: only the threads that read). Default: one per core.",
    ),
    (
        "RWG_METRICS=IP:PORT",
        "Same as --metrics IP:PORT (the option wins when both are given).",
    ),
    (
        "RWG_RERESOLVE=FILE|off",
        "Resolve the Endpoint host names of FILE (a wg-quick configuration) again when their \
         peer has had no handshake for 135 s, as reresolve-dns.sh does; re-read every round. \
         Default: /etc/wireguard/INTERFACE-NAME.conf if it exists.",
    ),
    (
        "RWG_RERESOLVE_INTERVAL=SECONDS",
        "How often silent peers are looked at for RWG_RERESOLVE (1 to 86400; default 30).",
    ),
];

const ABOUT: &str =
    "Userspace WireGuard: daemon for wg and wg-quick, proxy without root, key tools";

const LONG_ABOUT: &str = "\
Userspace WireGuard: a drop-in for wireguard-go under wg(8) and wg-quick(8), a SOCKS5 and \
port-forwarding proxy that needs no root, and the key tools.

rwg INTERFACE-NAME creates the TUN device INTERFACE-NAME and the configuration socket \
/var/run/wireguard/INTERFACE-NAME.sock, starts a copy of itself in the background and exits 0 \
once that copy serves (non-zero with the reason otherwise), as wireguard-go does; wg(8) then \
configures it through the socket. With -f it serves in the foreground instead. The daemon stops, \
removing its socket, on SIGINT or SIGTERM, when the interface is deleted (which is what \
wg-quick down does) and when its socket file is deleted. wg-quick(8) runs it when the kernel has \
no WireGuard module and WG_QUICK_USERSPACE_IMPLEMENTATION=rwg is set.";

/// The help styles: plain unless the terminal supports colours (clap decides).
fn styles() -> Styles {
    Styles::styled()
        .header(AnsiColor::Yellow.on_default())
        .usage(AnsiColor::Yellow.on_default())
        .literal(AnsiColor::Green.on_default())
        .placeholder(AnsiColor::Cyan.on_default())
}

/// `ENVIRONMENT` as the end of `rwg --help`.
fn environment_help() -> String {
    let mut text = String::from("Environment (daemon):\n");
    for (name, what) in ENVIRONMENT {
        text.push_str(&format!("  {name}\n          {what}\n"));
    }
    text.push_str(
        "\nAn interface named like a subcommand (genkey, proxy, ...) is given after --: \
         rwg -f -- proxy",
    );
    text
}

/// rwg's command line.
#[derive(Debug, Parser)]
#[command(
    name = "rwg",
    version = concat!("v", env!("CARGO_PKG_VERSION")),
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = environment_help(),
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true,
    disable_version_flag = true,
    styles = styles(),
)]
pub(crate) struct Cli {
    /// Serve in the foreground instead of starting a background copy (also
    /// WG_PROCESS_FOREGROUND=1)
    #[arg(short = 'f', long, requires = "interface")]
    pub(crate) foreground: bool,

    /// Serve Prometheus metrics at http://IP:PORT/metrics: drops by reason, handshakes, per-peer
    /// bytes and last handshake; never a key (also RWG_METRICS)
    #[arg(long, value_name = "IP:PORT", value_parser = parse_metrics_addr, requires = "interface")]
    pub(crate) metrics: Option<SocketAddr>,

    /// The WireGuard interface to create (a TUN device) and serve
    #[arg(value_name = "INTERFACE-NAME", value_hint = ValueHint::Other)]
    pub(crate) interface: Option<String>,

    /// Words after INTERFACE-NAME: there must be none (collected so that the error names them
    /// instead of calling them unknown subcommands)
    #[arg(hide = true, value_name = "EXTRA")]
    pub(crate) extra: Vec<String>,

    /// Print the version
    #[arg(short = 'V', long, short_alias = 'v', action = ArgAction::Version)]
    version: Option<bool>,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

impl Cli {
    /// What clap cannot say declaratively: one interface, not several.
    pub(crate) fn check(&self) -> Result<(), clap::Error> {
        match self.extra.first() {
            None => Ok(()),
            Some(word) => Err(Cli::command().error(
                clap::error::ErrorKind::UnknownArgument,
                format!(
                    "unexpected argument '{word}' after the interface name: rwg serves one \
                     INTERFACE-NAME per process (start one rwg per interface)"
                ),
            )),
        }
    }
}

/// What rwg does besides serving an interface.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a new private key in base64, as `wg genkey` does
    Genkey,
    /// Read a private key on standard input and print its public key, as `wg pubkey` does
    Pubkey,
    /// Print a new preshared key in base64, as `wg genpsk` does
    Genpsk,
    /// Two WireGuard peers in this process over loopback UDP: a real handshake, then a
    /// checksummed TCP transfer inside the tunnel (no root, no setup)
    Demo(DemoArgs),
    /// SOCKS5 and port forwards into a WireGuard tunnel through a userspace TCP/IP stack (no TUN
    /// device, no root)
    #[command(long_about = PROXY_LONG_ABOUT)]
    Proxy(Box<ProxyArgs>),
    /// Print the completion script of SHELL to standard output (see rwg completions --help)
    #[command(long_about = COMPLETIONS_ABOUT)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page rwg(8) in roff, or write every page into DIR
    #[command(hide = true)]
    Man {
        /// Write rwg.8 and one page per subcommand (rwg-proxy.8, ...) into this directory
        #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
        dir: Option<PathBuf>,
    },
    /// Print the version (as --version)
    #[command(hide = true)]
    Version,
}

const COMPLETIONS_ABOUT: &str = "\
Print the completion script of SHELL to standard output. Installed by the .deb; by hand:
  rwg completions bash > /usr/share/bash-completion/completions/rwg
  rwg completions zsh  > /usr/share/zsh/vendor-completions/_rwg
  rwg completions fish > /usr/share/fish/vendor_completions.d/rwg.fish
(packaging/install.sh does this, with the manual page.)";

/// Shells with a completion script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Shell {
    /// GNU Bash
    Bash,
    /// Z shell
    Zsh,
    /// fish
    Fish,
    /// Elvish
    Elvish,
    /// PowerShell
    Powershell,
}

/// `rwg demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Bytes to move through the tunnel; suffixes K, M, G for KiB, MiB, GiB
    #[arg(long, value_name = "N", default_value = "64M", value_parser = parse_size)]
    pub(crate) bytes: u64,
}

/// A SOCKS5 user name and password. Debug output hides the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

const PROXY_LONG_ABOUT: &str = "\
Joins the WireGuard network described by a wg-quick configuration file with a userspace TCP/IP \
stack, without a TUN device or root, and offers SOCKS5, an HTTP proxy, port forwards, or one \
connection on standard input and output into it. At least one of --socks5, --http, --forward, \
--reverse, --stdio is needed; --forward and --reverse may repeat; --stdio goes alone. Addresses \
are IPv4:PORT or [IPv6]:PORT. Several [Peer] sections are routed by their AllowedIPs. Endpoint \
host names are resolved again when a peer has had no handshake for 135 s (--reresolve-after), as \
reresolve-dns.sh does. A bad configuration file is reported as file:line: problem; --check reports every problem \
of the file that way and starts nothing. Logging goes to standard error (LOG_LEVEL, default \
info; error with --stdio).

Examples:
  rwg proxy --config wg0.conf --socks5 127.0.0.1:1080 --http 127.0.0.1:8080
  ssh -o ProxyCommand='rwg proxy --config wg0.conf --stdio %h:%p' user@10.0.0.1
  rwg proxy --config wg0.conf --check";

/// `rwg proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The WireGuard configuration, in wg-quick's format ([Interface] with PrivateKey and
    /// Address, [Peer] sections)
    #[arg(short = 'c', long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) config: PathBuf,

    /// Check FILE: print every problem as file:line: problem and exit 1 if there is one, 0
    /// if there is none; starts nothing
    #[arg(long)]
    pub(crate) check: bool,

    /// Serve SOCKS5 (CONNECT and UDP ASSOCIATE) on the local ADDR, e.g. 127.0.0.1:1080; host
    /// names are resolved by the configuration's DNS server, through the tunnel
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub(crate) socks5: Option<SocketAddr>,

    /// Require this user name and password from SOCKS5 clients (RFC 1929)
    #[arg(long, value_name = "USER:PASS", requires = "socks5", value_parser = parse_credentials)]
    pub(crate) socks5_auth: Option<Credentials>,

    /// Serve an HTTP proxy on the local ADDR, e.g. 127.0.0.1:8080: CONNECT (HTTPS and any TCP)
    /// and plain requests with an absolute URI; host names as for --socks5
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub(crate) http: Option<SocketAddr>,

    /// Require this user name and password from HTTP proxy clients (Basic authentication;
    /// others get 407)
    #[arg(long, value_name = "USER:PASS", requires = "http", value_parser = parse_credentials)]
    pub(crate) http_auth: Option<Credentials>,

    /// Accept connections on the local LOCAL and connect to REMOTE in the tunnel:
    /// tcp:LOCAL:REMOTE or udp:LOCAL:REMOTE, e.g. tcp:127.0.0.1:8080:10.0.0.1:80
    #[arg(short = 'L', long, value_name = "SPEC", value_parser = parse_forward)]
    pub(crate) forward: Vec<ForwardSpec>,

    /// Accept TCP on PORT of the tunnel address and connect to the local LOCAL:
    /// tcp:PORT:LOCAL, e.g. tcp:2222:127.0.0.1:22
    #[arg(short = 'R', long, value_name = "SPEC", value_parser = parse_reverse)]
    pub(crate) reverse: Vec<ForwardSpec>,

    /// Connect standard input and output to one TCP connection to HOST:PORT in the tunnel and
    /// exit when it ends (for ssh's ProxyCommand: --stdio %h:%p); HOST may be a name
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_parser = parse_host_port,
        conflicts_with_all = ["socks5", "http", "forward", "reverse", "health"],
    )]
    pub(crate) stdio: Option<(String, u16)>,

    /// Serve http://IP:PORT/metrics (Prometheus: per-peer bytes, handshakes, drops by reason,
    /// open connections, SOCKS5 and HTTP requests by result) and /readyz (200 when every peer
    /// had a recent handshake or the --ready-probe address answers, 503 otherwise); --metrics
    /// IP:PORT is the same option
    #[arg(long, alias = "metrics", value_name = "IP:PORT", value_parser = parse_metrics_addr)]
    pub(crate) health: Option<SocketAddr>,

    /// For /readyz: the oldest handshake that counts as recent, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 180, requires = "health",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) ready_age: u64,

    /// For /readyz: also ready while a TCP connection to IP:PORT through the tunnel succeeds
    /// (tried every 10 s)
    #[arg(long, value_name = "IP:PORT", requires = "health", value_parser = parse_listen_addr)]
    pub(crate) ready_probe: Option<SocketAddr>,

    /// Serve at most N client connections at once, over all services; more are refused (HTTP
    /// 503, SOCKS5 failure, forwards closed)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_connections: Option<u64>,

    /// Resolve Endpoint host names again when their peer has had no handshake for SECS
    /// seconds, and move the endpoint if the name moved, as reresolve-dns.sh does (0: only at
    /// the start)
    #[arg(long, value_name = "SECS", default_value_t = 135,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub(crate) reresolve_after: u64,

    /// Close a connection after SECS seconds in which no byte moved either way (0: never)
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub(crate) idle_timeout: u64,
}

impl ProxyArgs {
    /// What clap cannot say declaratively: is there anything to serve? The error is clap's,
    /// formatted like the others, with `rwg proxy`'s usage.
    pub(crate) fn check(&self) -> Result<(), clap::Error> {
        let nothing = self.socks5.is_none()
            && self.http.is_none()
            && self.stdio.is_none()
            && self.forward.is_empty()
            && self.reverse.is_empty();
        if nothing && !self.check {
            let mut cmd = Cli::command();
            cmd.build();
            let mut proxy = cmd
                .find_subcommand_mut("proxy")
                .map(std::mem::take)
                .unwrap_or_default();
            return Err(proxy.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "nothing to do: give at least one of --socks5, --http, --forward, --reverse, \
                 --stdio (or --check)",
            ));
        }
        Ok(())
    }
}

/// The daemon's and the proxy's `--metrics`, and `RWG_METRICS`.
pub(crate) fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected IP:PORT to serve metrics on, e.g. 127.0.0.1:9586".to_owned())
}

fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected IP:PORT or [IPv6]:PORT, e.g. 127.0.0.1:1080".to_owned())
}

/// `--stdio`: a host name or address and a port (`[IPv6]:PORT` for IPv6).
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    match rwg_netstack::dns::split_host_port(text, None) {
        Some((host, port)) if !host.is_empty() && port != 0 => Ok((host, port)),
        _ => Err("expected HOST:PORT or [IPv6]:PORT, e.g. 10.0.0.1:22".to_owned()),
    }
}

fn parse_credentials(text: &str) -> Result<Credentials, String> {
    let (user, password) = text
        .split_once(':')
        .ok_or("expected USER:PASS (a colon between user name and password)")?;
    if user.is_empty() || password.is_empty() || user.len() > 255 || password.len() > 255 {
        return Err("user name and password must be 1 to 255 bytes each".to_owned());
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

fn parse_forward(text: &str) -> Result<ForwardSpec, String> {
    if !(text.starts_with("tcp:") || text.starts_with("udp:")) {
        return Err("expected tcp:LOCAL:REMOTE or udp:LOCAL:REMOTE, \
                    e.g. tcp:127.0.0.1:8080:10.0.0.1:80"
            .to_owned());
    }
    text.parse::<ForwardSpec>().map_err(|e| e.to_string())
}

fn parse_reverse(text: &str) -> Result<ForwardSpec, String> {
    let port_local = text
        .strip_prefix("tcp:")
        .ok_or("expected tcp:TUNNEL_PORT:LOCAL, e.g. tcp:8080:127.0.0.1:80")?;
    format!("reverse tcp:{port_local}")
        .parse::<ForwardSpec>()
        .map_err(|e| e.to_string())
}

/// A positive byte count with an optional K, M or G suffix (binary multiples).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || "not a positive size (examples: 1048576, 512K, 64M, 1G)".to_owned();
    let (digits, shift) = match text.as_bytes().last().ok_or_else(bad)? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(n) if n > 0 => Ok(n),
        _ => Err(bad()),
    }
}

/// Writes the completion script for `shell`.
pub(crate) fn completions(shell: Shell, out: &mut dyn Write) {
    use clap_complete::Shell as S;
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
        Shell::Elvish => S::Elvish,
        Shell::Powershell => S::PowerShell,
    };
    clap_complete::generate(shell, &mut Cli::command(), "rwg", out);
}

/// The manual section of every page: system administration commands.
const MAN_SECTION: &str = "8";

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section(MAN_SECTION)
        .manual("System Manager's Manual")
        .source(concat!("rwg ", env!("CARGO_PKG_VERSION")))
}

/// rwg(8): clap's sections, then the environment, the files and where to read on.
pub(crate) fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let page = man(Cli::command());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    let mut roff = roff::Roff::new();
    roff.control("SH", ["SUBCOMMANDS"]);
    let mut cmd = Cli::command();
    cmd.build();
    for sub in visible_subcommands(&cmd) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        roff.control("TP", []);
        roff.text([
            roff::bold(format!("rwg {}", sub.get_name())),
            roff::roman(format!(" (see rwg-{}(8))", sub.get_name())),
        ]);
        roff.text([roff::roman(about)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, what) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([roff::bold(*name)]);
        roff.text([roff::roman(*what)]);
    }
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([roff::bold("/var/run/wireguard/INTERFACE-NAME.sock")]);
    roff.text([roff::roman(
        "The configuration socket that wg(8) talks to; removed when the daemon stops.",
    )]);
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roff::roman(
        "0 when the daemon serves (or, in the foreground, stopped cleanly) and when a \
         subcommand succeeded; 1 when something failed, with the reason on standard error; 2 \
         for a command line that could not be parsed.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roff::roman(
        "wg(8), wg-quick(8), and the page of each subcommand above.",
    )]);
    roff.to_writer(out)
}

/// The subcommands with a page of their own: not the hidden ones, not `help`.
fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

/// Writes rwg.8 and a page for every visible subcommand into `dir`; returns the files.
pub(crate) fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut file = Vec::new();
    man_page(&mut file)?;
    let path = dir.join(format!("rwg.{MAN_SECTION}"));
    std::fs::write(&path, &file)?;
    written.push(path);
    let mut cmd = Cli::command();
    cmd.build();
    for sub in visible_subcommands(&cmd) {
        let name = format!("rwg-{}", sub.get_name());
        let mut file = Vec::new();
        man(sub.clone().name(name.clone())).render(&mut file)?;
        let path = dir.join(format!("{name}.{MAN_SECTION}"));
        std::fs::write(&path, &file)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        // clap's own checks: conflicting names, requires on missing args, and so on.
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "0", "K", "lots", "-1", "99999999999999999999G", "1T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_are_checked_and_the_password_never_printed() {
        let c = parse_credentials("alice:s3cret:with:colons").expect("valid");
        assert_eq!(c.user, "alice");
        assert_eq!(c.password, "s3cret:with:colons");
        assert!(!format!("{c:?}").contains("s3cret"));
        for bad in ["alice", ":pw", "alice:", &format!("{}:pw", "u".repeat(256))] {
            assert!(parse_credentials(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_daemon_keeps_wireguard_go_syntax() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&["rwg", "wg0"]).expect("rwg IFACE");
        assert_eq!(
            (cli.interface.as_deref(), cli.foreground),
            (Some("wg0"), false)
        );
        for flag in ["-f", "--foreground"] {
            let cli = parse(&["rwg", flag, "wg0"]).expect("rwg -f IFACE");
            assert_eq!(
                (cli.interface.as_deref(), cli.foreground),
                (Some("wg0"), true)
            );
            assert!(cli.command.is_none());
        }
        let cli = parse(&["rwg", "--metrics", "127.0.0.1:9586", "wg0"]).expect("--metrics");
        assert_eq!(cli.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 9586))));
        // A subcommand's name as an interface: after --.
        let cli = parse(&["rwg", "-f", "--", "proxy"]).expect("rwg -f -- proxy");
        assert_eq!(cli.interface.as_deref(), Some("proxy"));
        assert!(cli.command.is_none());
        // Subcommands are subcommands, not interface names.
        assert!(matches!(
            parse(&["rwg", "genkey"]).expect("genkey").command,
            Some(Command::Genkey)
        ));
        // Daemon options do not mix with subcommands, nor stand alone.
        assert!(parse(&["rwg", "-f", "genkey"]).is_ok_and(|c| c.command.is_none()));
        assert!(parse(&["rwg", "-f"]).is_err());
        let two = parse(&["rwg", "wg0", "wg1"]).expect("parsed, then checked");
        let e = two.check().expect_err("one interface only").to_string();
        assert!(e.contains("'wg1'") && e.contains("one"), "{e}");
        assert!(parse(&["rwg", "wg0"]).expect("one").check().is_ok());
        assert!(parse(&["rwg", "--metrics", "9586", "wg0"]).is_err());
    }
}
