//! Bounded resources for the services (SOCKS5, HTTP proxy, forwards, stdio): a cap on
//! concurrent connections ([`ConnectionLimit`]) and a relay that gives up on a connection
//! idle in both directions for too long ([`relay`], built on [`IdleWatch`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A cap on concurrent connections, shared by every service that is given a clone of it.
///
/// Each connection holds a [`ConnectionPermit`] for its lifetime; when none is left the
/// service refuses the newcomer at once (HTTP: 503, SOCKS5: closed before the greeting, a
/// forward: closed) rather than queueing it, so a flood cannot pile up memory.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    semaphore: Arc<Semaphore>,
    max: usize,
}

/// One connection's share of a [`ConnectionLimit`]; released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    /// At most `max` connections at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit, or `None` if `max` connections are open.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        self.semaphore
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| ConnectionPermit { _permit: p })
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// Watches streams for traffic: [`watch`](Self::watch) wraps a stream (or one half of it) so
/// that every byte read or written through it counts, and [`run`](Self::run) gives up on a
/// piece of work once no byte has moved through any of its watched streams for too long.
/// "Moved" means accepted by the other end: a write that waits for room in a full socket is
/// not traffic, a slow reader's every read is.
pub(crate) struct IdleWatch {
    start: Instant,
    /// Time of the last transfer, in milliseconds since `start`.
    last_ms: AtomicU64,
}

impl IdleWatch {
    pub(crate) fn new() -> Self {
        IdleWatch {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// `stream`, with its traffic counted.
    pub(crate) fn watch<'a, S: ?Sized>(&'a self, stream: &'a mut S) -> Watched<'a, S> {
        Watched {
            inner: stream,
            watch: self,
        }
    }

    /// `work` to its end, or `TimedOut` once nothing moved for `idle` (counted from the
    /// watch's creation or its last traffic); without `idle`, simply `work`.
    pub(crate) async fn run<T>(
        &self,
        idle: Option<Duration>,
        work: impl Future<Output = T>,
    ) -> io::Result<T> {
        let Some(idle) = idle else {
            return Ok(work.await);
        };
        tokio::pin!(work);
        loop {
            let deadline = self.last() + idle;
            tokio::select! {
                result = &mut work => return Ok(result),
                () = tokio::time::sleep_until(deadline) => {
                    if self.last() + idle <= Instant::now() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
                    }
                }
            }
        }
    }
}

/// A stream that records when data last moved through it (see [`IdleWatch`]).
pub(crate) struct Watched<'a, S: ?Sized> {
    inner: &'a mut S,
    watch: &'a IdleWatch,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.watch.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copy both ways between `a` and `b` until both directions have ended (each end's EOF is
/// passed on as a shutdown of the other's write side), an error, or, with `idle`, until no
/// byte has moved either way for that long (`TimedOut`). Returns the bytes copied a→b and b→a.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let Some(idle) = idle else {
        return tokio::io::copy_bidirectional(a, b).await;
    };
    let watch = IdleWatch::new();
    let mut wa = watch.watch(a);
    let mut wb = watch.watch(b);
    watch
        .run(Some(idle), tokio::io::copy_bidirectional(&mut wa, &mut wb))
        .await?
}

/// Run `future` unless it takes longer than `limit`; `TimedOut` with `what` otherwise.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_relay_alive_and_silence_ends_it() {
        let (mut client, mut near) = tokio::io::duplex(64);
        let (mut far, mut server) = tokio::io::duplex(64);
        let start = Instant::now();
        let task =
            tokio::spawn(
                async move { relay(&mut near, &mut far, Some(Duration::from_secs(10))).await },
            );
        // A byte every 6 s, alternately each way, for 30 s: longer than the idle limit in all.
        for round in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut byte = [0u8; 1];
            if round % 2 == 0 {
                client.write_all(b"x").await.expect("write");
                server.read_exact(&mut byte).await.expect("relayed");
            } else {
                server.write_all(b"y").await.expect("write");
                client.read_exact(&mut byte).await.expect("relayed");
            }
        }
        let result = task.await.expect("task");
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        // Virtual time: the last byte at 30 s, then 10 s of silence.
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test]
    async fn without_idle_limit_it_runs_to_eof() {
        let (mut client, mut near) = tokio::io::duplex(64);
        let (mut far, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { relay(&mut near, &mut far, None).await });
        client.write_all(b"abc").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"abc");
        server.shutdown().await.expect("shutdown");
        assert_eq!(task.await.expect("task").expect("relay"), (3, 0));
    }

    #[test]
    fn limits_count_permits() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert_eq!(limit.in_use(), 1);
        assert!(limit.try_acquire().is_some());
        assert_eq!(ConnectionLimit::new(0).max(), 1);
    }
}
