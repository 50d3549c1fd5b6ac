//! `rwg_netstack::socks5::negotiate`: the server's side of a SOCKS5 handshake (method
//! selection, username/password authentication, the request), which reads what a client on
//! the local port sends before anything reaches the tunnel. The first input byte's bit 0
//! says whether the server asks for credentials (`user`/`pass`); the rest is what the client
//! sends, after which it closes the stream. Checked against a model written from RFC 1928
//! §3–§5 and RFC 1929, which reads the same bytes without async or buffers:
//! - nothing panics, and the handshake finishes within one poll (the stream never waits);
//! - the outcome agrees with the model: the same command and target for a request, the same
//!   kind of refusal otherwise (a truncated handshake is an I/O error, an unknown address type
//!   is refused with "address type not supported");
//! - the server wrote exactly the replies the model expects (method choice or "no acceptable
//!   method", the authentication verdict), in order, and nothing else;
//! - it read exactly the handshake's bytes: what follows the request is left in the stream.
#![no_main]

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use rwg_netstack::socks5::{negotiate, ClientError, Reply, TargetAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client that has sent `input` and then closed its side; records what the server writes.
struct Client<'a> {
    input: &'a [u8],
    read: usize,
    written: Vec<u8>,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.input[self.read..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the model expects of a handshake.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Request(u8, TargetAddr),
    /// The client's bytes ended early.
    Truncated,
    /// A protocol error (wrong version, no acceptable method, a bad name).
    Protocol,
    AuthFailed,
    AddressTypeNotSupported,
}

/// The model: RFC 1928 and RFC 1929 read straight off the bytes. Returns the outcome, the
/// replies the server must have written and how many bytes it must have read.
fn model(input: &[u8], credentials: Option<(&[u8], &[u8])>) -> (Outcome, Vec<u8>, usize) {
    let mut at = 0;
    let mut replies = Vec::new();
    macro_rules! take {
        ($n:expr) => {{
            let n: usize = $n;
            if input.len() - at < n {
                return (Outcome::Truncated, replies, input.len());
            }
            at += n;
            &input[at - n..at]
        }};
    }
    if take!(1)[0] != 5 {
        return (Outcome::Protocol, replies, at);
    }
    let count = usize::from(take!(1)[0]);
    let methods = take!(count);
    let wanted = if credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        replies.extend_from_slice(&[5, 0xff]);
        return (Outcome::Protocol, replies, at);
    }
    replies.extend_from_slice(&[5, wanted]);
    if let Some((user, password)) = credentials {
        if take!(1)[0] != 1 {
            return (Outcome::Protocol, replies, at);
        }
        let len = usize::from(take!(1)[0]);
        let given_user = take!(len);
        let len = usize::from(take!(1)[0]);
        let given_password = take!(len);
        if given_user != user || given_password != password {
            replies.extend_from_slice(&[1, 1]);
            return (Outcome::AuthFailed, replies, at);
        }
        replies.extend_from_slice(&[1, 0]);
    }
    let head = take!(4);
    let (version, command, atyp) = (head[0], head[1], head[3]);
    if version != 5 {
        return (Outcome::Protocol, replies, at);
    }
    let target = match atyp {
        1 => {
            let b = take!(6);
            let ip = IpAddr::from(<[u8; 4]>::try_from(&b[..4]).unwrap());
            TargetAddr::Ip(SocketAddr::new(ip, u16::from_be_bytes([b[4], b[5]])))
        }
        4 => {
            let b = take!(18);
            let ip = IpAddr::from(<[u8; 16]>::try_from(&b[..16]).unwrap());
            TargetAddr::Ip(SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]])))
        }
        3 => {
            let len = usize::from(take!(1)[0]);
            let name = take!(len).to_vec();
            let port = take!(2);
            let port = u16::from_be_bytes([port[0], port[1]]);
            match String::from_utf8(name) {
                Ok(name) if !name.is_empty() => TargetAddr::Domain(name, port),
                _ => return (Outcome::Protocol, replies, at),
            }
        }
        _ => return (Outcome::AddressTypeNotSupported, replies, at),
    };
    (Outcome::Request(command, target), replies, at)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let credentials = (flags & 1 != 0).then(|| ("user".to_string(), "pass".to_string()));
    let mut client = Client {
        input,
        read: 0,
        written: Vec::new(),
    };
    let result = {
        let future = pin!(negotiate(&mut client, credentials.as_ref()));
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("the handshake waited on a stream that never waits"),
        }
    };
    let got = match result {
        Ok((command, target)) => Outcome::Request(command, target),
        Err(ClientError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            Outcome::Truncated
        }
        Err(ClientError::Protocol(_)) => Outcome::Protocol,
        Err(ClientError::AuthFailed) => Outcome::AuthFailed,
        Err(ClientError::Refused(Reply::AddressTypeNotSupported)) => {
            Outcome::AddressTypeNotSupported
        }
        Err(e) => panic!("an outcome the handshake cannot have: {e}"),
    };
    let creds = credentials
        .as_ref()
        .map(|(u, p)| (u.as_bytes(), p.as_bytes()));
    let (expected, replies, read) = model(input, creds);
    assert_eq!(got, expected, "the outcome differs from the model's");
    assert_eq!(
        client.written, replies,
        "the replies differ from the model's"
    );
    assert_eq!(
        client.read, read,
        "read {} bytes, the handshake has {read}",
        client.read
    );
});
