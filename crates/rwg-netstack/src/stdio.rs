//! One TCP connection through the tunnel joined to a pair of byte streams: in a program,
//! its stdin and stdout, so that it can serve as `ssh -o ProxyCommand=...`.
//!
//! End of input is passed on as a FIN (the remote side sees EOF and may still answer); the
//! remote's FIN ends the output (it is flushed and shut down). [`splice`] returns once both
//! directions have ended, or at once when the connection is reset.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tcp::TcpStream;

/// Bytes moved by [`splice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the input into the connection.
    pub sent: u64,
    /// From the connection to the output.
    pub received: u64,
}

/// Copy `input` into `stream` and `stream` into `output` until both directions are done.
///
/// `input` at EOF shuts down the stream's sending side; the stream at EOF flushes and shuts
/// down `output`. A reset, or a failed write to `output` (its reader went away), ends both
/// directions with the error: then there is nobody left to talk to.
pub async fn splice<R, W>(stream: TcpStream, mut input: R, mut output: W) -> io::Result<Spliced>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut from_remote, mut to_remote) = tokio::io::split(stream);
    let up = async {
        let mut sent = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                to_remote.shutdown().await?;
                return Ok::<u64, io::Error>(sent);
            }
            to_remote.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
    };
    let down = async {
        let mut received = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_remote.read(&mut buf).await?;
            if n == 0 {
                output.flush().await?;
                output.shutdown().await?;
                return Ok::<u64, io::Error>(received);
            }
            output.write_all(&buf[..n]).await?;
            // Interactive protocols (ssh) need each piece delivered now, not when a buffer fills.
            output.flush().await?;
            received += n as u64;
        }
    };
    let (sent, received) = tokio::try_join!(up, down)?;
    Ok(Spliced { sent, received })
}
