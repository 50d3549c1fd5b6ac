//! An HTTP proxy: `CONNECT host:port` tunnels (what clients use for HTTPS) and plain
//! requests in absolute form (`GET http://host/path HTTP/1.1`), carried out inside the tunnel
//! through the stack, with optional basic authentication (RFC 7617, 407 +
//! `Proxy-Authenticate`).
//!
//! One request per client connection: a forwarded request goes upstream with
//! `Connection: close` and its response comes back with `Connection: close`, so neither side
//! waits for a keep-alive that will not come; clients open a new connection per request.
//! A CONNECT tunnel relays bytes until both sides are done.
//!
//! Bad input is answered with a status and ends only that client: a malformed request line
//! or header, or a client that hangs up or half-closes before its head is complete → 400; a
//! head over [`HttpProxyConfig::max_head_bytes`] → 431 (414 when the request line alone is
//! too long); a head not complete within [`HttpProxyConfig::head_timeout`] → 408; a target
//! that cannot be resolved, refuses or resets, or answers garbage → 502; a connection that
//! takes longer than [`HttpProxyConfig::connect_timeout`] → 504; over the connection cap → 503.
//! Host names are resolved by the given [`Resolver`] (in `rwg proxy`, the tunnel's DNS server),
//! never by the local system.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::{connect_host, split_host_port, Resolver};
use crate::metrics::{ProxyMetrics, Service};
use crate::relay::{relay, within, ConnectionLimit, IdleWatch};
use crate::socks5::ACCEPT_ERROR_PAUSE;
use crate::stack::NetStack;
use crate::tcp::TcpStream;

/// How the HTTP proxy behaves.
#[derive(Clone)]
pub struct HttpProxyConfig {
    /// Required user name and password (basic authentication); `None` accepts everyone.
    pub credentials: Option<(String, String)>,
    /// Time a client has to send its request line and headers (408 after it).
    pub head_timeout: Duration,
    /// Time a connection inside the tunnel may take, name resolution included (504 after it).
    pub connect_timeout: Duration,
    /// Largest request head (request line and headers) accepted (431 above it); also the
    /// largest response head accepted from upstream (502 above it).
    pub max_head_bytes: usize,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for HttpProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxyConfig")
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<hidden>")),
            )
            .field("head_timeout", &self.head_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_head_bytes", &self.max_head_bytes)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        HttpProxyConfig {
            credentials: None,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            max_head_bytes: 16 * 1024,
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// How one client's request ended: the status it was answered with (200 for an established
/// CONNECT tunnel or a forwarded response) and, for failures, why.
#[derive(Debug)]
pub struct Outcome {
    /// The status sent to the client, if any was (none when the client was gone).
    pub status: Option<u16>,
    /// What went wrong, for the log; `None` on success.
    pub error: Option<String>,
}

/// The HTTP proxy server. Cheap to clone.
#[derive(Clone)]
pub struct HttpProxy {
    stack: NetStack,
    resolver: Arc<dyn Resolver>,
    config: Arc<HttpProxyConfig>,
    limit: Option<ConnectionLimit>,
    metrics: Option<Arc<ProxyMetrics>>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

/// A failure answered with a status.
#[derive(Debug)]
struct Failure {
    status: u16,
    reason: String,
}

fn fail<T>(status: u16, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        status,
        reason: reason.into(),
    })
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The end of the head (index after the blank line) in `buf`, accepting bare LF line ends.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let line_end = i + pos + 1;
        let line = &buf[i..line_end];
        if line == b"\n" || line == b"\r\n" {
            return Some(line_end);
        }
        i = line_end;
    }
    None
}

/// Read a head of at most `max` bytes from `r` into `buf`. Returns the head's length; bytes
/// after it (a request body, or data a client sent early) stay in `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, Failure> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(buf) {
            if end > max {
                break;
            }
            return Ok(end);
        }
        if buf.len() > max {
            break;
        }
        let n = match r.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => return fail(400, format!("reading the request: {e}")),
        };
        if n == 0 {
            return fail(
                400,
                if buf.is_empty() {
                    "connection closed before a request".to_owned()
                } else {
                    "connection closed in the middle of the request head".to_owned()
                },
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let first_line_done = buf[..max.min(buf.len())].contains(&b'\n');
    if first_line_done {
        fail(431, format!("request head over {max} bytes"))
    } else {
        fail(414, format!("request line over {max} bytes"))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse a request head (without the blank line check: `head` ends with it).
fn parse_request(head: &[u8]) -> Result<Request, Failure> {
    let text = std::str::from_utf8(head).map_err(|_| Failure {
        status: 400,
        reason: "request head is not UTF-8".to_owned(),
    })?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return fail(400, "malformed request line");
    };
    if !is_token(method) || target.is_empty() {
        return fail(400, "malformed request line");
    }
    if !version.starts_with("HTTP/") {
        return fail(400, "malformed request line");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return fail(505, format!("{version} is not supported"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return fail(400, "folded header line");
        }
        let Some((name, value)) = line.split_once(':') else {
            return fail(400, "header line without a colon");
        };
        if !is_token(name) {
            return fail(400, "malformed header name");
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return fail(400, "control character in a header value");
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
    })
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `http://authority/path?query` → (authority, path-and-query).
fn split_absolute(target: &str) -> Result<(&str, &str), Failure> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return fail(400, "the target is not an absolute URI (http://host/...)");
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return fail(
            400,
            format!("scheme {scheme:?} is not supported: use CONNECT for https"),
        );
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or_default();
    Ok((authority, if path.is_empty() { "/" } else { path }))
}

/// Constant-time comparison.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Hop-by-hop headers, which a proxy does not forward (RFC 9110 section 7.6.1), plus the
/// proxy's own.
fn is_hop_by_hop(name: &str, connection: &[String]) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection.iter().any(|c| name.eq_ignore_ascii_case(c))
}

async fn respond<W: AsyncWrite + Unpin>(w: &mut W, status: u16, extra: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status} {}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status_text(status),
        body.len()
    );
    // The client may be gone: nothing more to do then.
    let _ = w.write_all(text.as_bytes()).await;
    let _ = w.flush().await;
}

/// After an error reply: end our side, then read (and discard) what the client still sends
/// for a moment, so that closing with unread data does not reset the connection before the
/// client has read the reply.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) {
    let _ = client.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < 256 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

impl HttpProxy {
    /// A proxy that reaches targets through `stack` and resolves names with `resolver`.
    pub fn new(stack: NetStack, resolver: Arc<dyn Resolver>, config: HttpProxyConfig) -> Self {
        HttpProxy {
            stack,
            resolver,
            config: Arc::new(config),
            limit: None,
            metrics: None,
        }
    }

    /// Share `limit` (a cap on concurrent connections) with other services.
    pub fn with_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Count connections and results in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Accept clients forever, each in its own task. Accept errors only pause the loop.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> io::Result<()> {
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let _ = client.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move {
                let outcome = proxy.handle_client(client).await;
                if let Some(e) = outcome.error {
                    tracing::debug!(client = %peer, status = ?outcome.status, "HTTP proxy: {e}");
                }
            });
        }
    }

    fn count(&self, status: u16) {
        if let Some(m) = &self.metrics {
            m.count_http(status);
        }
    }

    /// Serve one client connection: one request (or one CONNECT tunnel).
    pub async fn handle_client<S>(&self, mut client: S) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _permit = match &self.limit {
            Some(limit) => match limit.try_acquire() {
                Some(p) => Some(p),
                None => {
                    if let Some(m) = &self.metrics {
                        m.count_refused(Service::Http);
                    }
                    self.count(503);
                    respond(&mut client, 503, "", "too many connections\n").await;
                    return Outcome {
                        status: Some(503),
                        error: Some("connection cap reached".to_owned()),
                    };
                }
            },
            None => None,
        };
        let _open = self.metrics.as_ref().map(|m| m.open(Service::Http));
        match self.serve_request(&mut client).await {
            Ok(()) => Outcome {
                status: Some(200),
                error: None,
            },
            Err((Some(failure), sent)) => {
                if !sent {
                    self.count(failure.status);
                    let extra = if failure.status == 407 {
                        "Proxy-Authenticate: Basic realm=\"rwg\"\r\n"
                    } else {
                        ""
                    };
                    respond(
                        &mut client,
                        failure.status,
                        extra,
                        &format!("{}\n", failure.reason),
                    )
                    .await;
                    linger(&mut client).await;
                }
                Outcome {
                    status: Some(failure.status),
                    error: Some(failure.reason),
                }
            }
            Err((None, _)) => Outcome {
                status: Some(200),
                error: None,
            },
        }
    }

    /// The request. Errors carry the failure and whether a status was already sent (then the
    /// failure is only for the log).
    async fn serve_request<S>(&self, client: &mut S) -> Result<(), (Option<Failure>, bool)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let max = self.config.max_head_bytes;
        let mut buf = Vec::with_capacity(1024);
        let head_len =
            match tokio::time::timeout(self.config.head_timeout, read_head(client, &mut buf, max))
                .await
            {
                Ok(result) => result.map_err(|f| (Some(f), false))?,
                Err(_) => {
                    return Err((
                        Some(Failure {
                            status: 408,
                            reason: "request head not received in time".to_owned(),
                        }),
                        false,
                    ))
                }
            };
        let request = parse_request(&buf[..head_len]).map_err(|f| (Some(f), false))?;
        let early = buf.split_off(head_len);
        self.authorize(&request).map_err(|f| (Some(f), false))?;
        if request.method.eq_ignore_ascii_case("CONNECT") {
            self.connect(client, &request, &early).await
        } else {
            self.forward(client, &request, &early).await
        }
    }

    fn authorize(&self, request: &Request) -> Result<(), Failure> {
        let Some((user, password)) = &self.config.credentials else {
            return Ok(());
        };
        let given = request
            .header("Proxy-Authorization")
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("basic")
                    .then(|| base64_decode(token.trim()))?
            })
            .unwrap_or_default();
        let mut expected = Vec::with_capacity(user.len() + 1 + password.len());
        expected.extend_from_slice(user.as_bytes());
        expected.push(b':');
        expected.extend_from_slice(password.as_bytes());
        if same_secret(&given, &expected) {
            Ok(())
        } else {
            fail(407, "proxy authentication required")
        }
    }

    /// Resolve and connect to `host:port` inside the tunnel within the connect timeout.
    async fn open(&self, host: &str, port: u16) -> Result<TcpStream, Failure> {
        let attempt = connect_host(&self.stack, &*self.resolver, host, port);
        match within(self.config.connect_timeout, "connecting", attempt).await {
            Ok(stream) => Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                fail(504, format!("{host}:{port}: {e}"))
            }
            Err(e) => fail(502, format!("{host}:{port}: {e}")),
        }
    }

    async fn connect<S>(
        &self,
        client: &mut S,
        request: &Request,
        early: &[u8],
    ) -> Result<(), (Option<Failure>, bool)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some((host, port)) = split_host_port(&request.target, None) else {
            return Err((
                Some(Failure {
                    status: 400,
                    reason: "CONNECT needs host:port".to_owned(),
                }),
                false,
            ));
        };
        let mut upstream = self.open(&host, port).await.map_err(|f| (Some(f), false))?;
        let ok = format!("{} 200 Connection established\r\n\r\n", request.version);
        client
            .write_all(ok.as_bytes())
            .await
            .map_err(|_| (None, true))?;
        self.count(200);
        if !early.is_empty() {
            upstream.write_all(early).await.map_err(|_| (None, true))?;
        }
        let _ = relay(client, &mut upstream, self.config.idle_timeout).await;
        Ok(())
    }

    async fn forward<S>(
        &self,
        client: &mut S,
        request: &Request,
        early: &[u8],
    ) -> Result<(), (Option<Failure>, bool)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let no_send = |f: Failure| (Some(f), false);
        let (authority, path) = split_absolute(&request.target).map_err(no_send)?;
        let Some((host, port)) = split_host_port(authority, Some(80)) else {
            return Err(no_send(Failure {
                status: 400,
                reason: format!("bad host in {:?}", request.target),
            }));
        };
        if request.header("Transfer-Encoding").is_some()
            && request.header("Content-Length").is_some()
        {
            return Err(no_send(Failure {
                status: 400,
                reason: "both Transfer-Encoding and Content-Length".to_owned(),
            }));
        }
        let connection: Vec<String> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_owned()))
            .collect();
        let mut head = format!("{} {path} {}\r\n", request.method, request.version);
        if request.header("Host").is_none() {
            head.push_str(&format!("Host: {authority}\r\n"));
        }
        for (name, value) in &request.headers {
            if !is_hop_by_hop(name, &connection) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("Connection: close\r\n\r\n");

        let mut upstream = self.open(&host, port).await.map_err(no_send)?;
        let bad_gateway = |e: io::Error| {
            no_send(Failure {
                status: 502,
                reason: format!("{host}:{port}: {e}"),
            })
        };
        upstream
            .write_all(head.as_bytes())
            .await
            .map_err(bad_gateway)?;
        if !early.is_empty() {
            upstream.write_all(early).await.map_err(bad_gateway)?;
        }
        // The request body (if any) goes up while the response head comes down. The exchange
        // ends when no byte has moved either way for the idle timeout (not when it has lasted
        // that long: a big download to a slow client is not idle).
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut up_read, mut up_write) = tokio::io::split(upstream);
        let watch = IdleWatch::new();
        let mut client_read = watch.watch(&mut client_read);
        let mut client_write = watch.watch(&mut client_write);
        let mut up_read = watch.watch(&mut up_read);
        let mut up_write = watch.watch(&mut up_write);
        let body_up = async {
            let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
            let _ = up_write.shutdown().await;
        };
        let response = async {
            let mut buf = Vec::with_capacity(1024);
            let max = self.config.max_head_bytes;
            let head_len = match read_head(&mut up_read, &mut buf, max).await {
                Ok(n) => n,
                Err(f) if f.status == 400 => {
                    return Err(no_send(Failure {
                        status: 502,
                        reason: format!("{host}:{port}: {}", f.reason),
                    }))
                }
                Err(f) => {
                    return Err(no_send(Failure {
                        status: 502,
                        reason: format!("{host}:{port}: response {}", f.reason),
                    }))
                }
            };
            let head = rewrite_response_head(&buf[..head_len]).ok_or_else(|| {
                no_send(Failure {
                    status: 502,
                    reason: format!("{host}:{port}: malformed response head"),
                })
            })?;
            self.count(200);
            client_write
                .write_all(head.as_bytes())
                .await
                .map_err(|_| (None, true))?;
            client_write
                .write_all(&buf[head_len..])
                .await
                .map_err(|_| (None, true))?;
            if let Err(e) = tokio::io::copy(&mut up_read, &mut client_write).await {
                // The response is cut short (the client sees the connection close early).
                tracing::debug!("HTTP proxy: {host}:{port}: response body: {e}");
            }
            let _ = client_write.shutdown().await;
            Ok(())
        };
        let exchange = async {
            tokio::pin!(body_up);
            tokio::pin!(response);
            // The response decides: when it is done (or failed), the request side is abandoned.
            tokio::select! {
                result = &mut response => result,
                () = &mut body_up => response.await,
            }
        };
        watch
            .run(self.config.idle_timeout, exchange)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("HTTP proxy: {host}:{port}: {e}");
                Err((None, true))
            })
    }
}

/// The response head with hop-by-hop headers removed and `Connection: close` added, or `None`
/// if it is not an HTTP/1.x response.
fn rewrite_response_head(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 || code.parse::<u16>().is_err() {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name, value.trim()));
    }
    let connection: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_owned()))
        .collect();
    let mut out = format!("{status_line}\r\n");
    for (name, value) in headers {
        if !is_hop_by_hop(name, &connection) || name.eq_ignore_ascii_case("upgrade") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    Some(out)
}

/// The parsers the proxy runs on what a client or a server sends it, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// A request head as [`parse_request`](super::parse_request) reads it.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Request {
        /// The method, as written.
        pub method: String,
        /// The request target, as written.
        pub target: String,
        /// `HTTP/1.0` or `HTTP/1.1`.
        pub version: String,
        /// Names and values (trimmed), in order.
        pub headers: Vec<(String, String)>,
    }

    /// Where the head ends in `buf` (after its blank line), if it does.
    pub fn head_end(buf: &[u8]) -> Option<usize> {
        super::head_end(buf)
    }

    /// A request head parsed, or the status the proxy answers it with.
    pub fn parse_request(head: &[u8]) -> Result<Request, u16> {
        super::parse_request(head)
            .map(|r| Request {
                method: r.method,
                target: r.target,
                version: r.version,
                headers: r.headers,
            })
            .map_err(|f| f.status)
    }

    /// An absolute `http://` target split into authority and path, or the status.
    pub fn split_absolute(target: &str) -> Result<(&str, &str), u16> {
        super::split_absolute(target).map_err(|f| f.status)
    }

    /// Basic credentials decoded.
    pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
        super::base64_decode(s)
    }

    /// A server's response head as the proxy forwards it.
    pub fn rewrite_response_head(head: &[u8]) -> Option<String> {
        super::rewrite_response_head(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn parses_requests() {
        let r = parse_request(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-A:  b \r\n\r\n")
            .expect("valid");
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "http://a.test/x");
        assert_eq!(r.header("host"), Some("a.test"));
        assert_eq!(r.header("x-a"), Some("b"));
        for (bad, status) in [
            (&b"GET http://a/ HTTP/1.1 extra\r\n\r\n"[..], 400),
            (b"GET\r\n\r\n", 400),
            (b"G(T http://a/ HTTP/1.1\r\n\r\n", 400),
            (b"GET http://a/ FTP/1.1\r\n\r\n", 400),
            (b"GET http://a/ HTTP/2.0\r\n\r\n", 505),
            (b"GET http://a/ HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET http://a/ HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
            (b"GET http://a/ HTTP/1.1\r\nA b: c\r\n\r\n", 400),
            (b"GET http://a/ HTTP/1.1\r\nA: b\x01\r\n\r\n", 400),
            (b"GET http://a/ HTTP/1.1\r\nA: \xff\r\n\r\n", 400),
        ] {
            let e = parse_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(e.status, status, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn splits_hosts_and_uris() {
        assert_eq!(
            split_host_port("a.test:443", None),
            Some(("a.test".into(), 443))
        );
        assert_eq!(
            split_host_port("[fd00::1]:22", None),
            Some(("fd00::1".into(), 22))
        );
        assert_eq!(
            split_host_port("[fd00::1]", Some(80)),
            Some(("fd00::1".into(), 80))
        );
        assert_eq!(
            split_host_port("a.test", Some(80)),
            Some(("a.test".into(), 80))
        );
        for bad in [
            "a.test",
            "a.test:0",
            "a.test:65536",
            "a.test:+1",
            ":80",
            "u@a.test:80",
            "a b:80",
            "[fd00::1:80",
            "[nothex]:80",
            "fd00::1:80",
        ] {
            assert_eq!(split_host_port(bad, None), None, "{bad}");
        }
        assert_eq!(
            split_absolute("http://a.test:8080/p?q#f")
                .map_err(|f| f.status)
                .ok(),
            Some(("a.test:8080", "/p?q"))
        );
        assert_eq!(
            split_absolute("HTTP://a.test").map_err(|f| f.status).ok(),
            Some(("a.test", "/"))
        );
        assert_eq!(
            split_absolute("/relative").err().map(|f| f.status),
            Some(400)
        );
        assert_eq!(
            split_absolute("https://a.test/").err().map(|f| f.status),
            Some(400)
        );
    }

    #[test]
    fn base64_and_hop_by_hop() {
        assert_eq!(
            base64_decode("dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("a*b"), None);
        assert!(is_hop_by_hop("Proxy-Authorization", &[]));
        assert!(is_hop_by_hop("x-drop", &["X-Drop".to_owned()]));
        assert!(!is_hop_by_hop("Accept", &[]));
        let head = rewrite_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(rewrite_response_head(b"SSH-2.0-x\r\n\r\n"), None);
        assert_eq!(rewrite_response_head(b"HTTP/1.1 2000 OK\r\n\r\n"), None);
    }
}
