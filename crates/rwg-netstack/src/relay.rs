//! Bounded resources for the services (SOCKS5, HTTP proxy, forwards, stdio): a cap on
//! concurrent connections ([`ConnectionLimit`]) and a relay that gives up on a connection
//! idle in both directions for too long ([`relay`]).

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

/// Time of the last transfer in either direction, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records when data last moved through it.
struct Watched<'a, S: ?Sized> {
    inner: &'a mut S,
    activity: &'a Activity,
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
            self.activity.touch();
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
            self.activity.touch();
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
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut wa = Watched {
        inner: a,
        activity: &activity,
    };
    let mut wb = Watched {
        inner: b,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional(&mut wa, &mut wb);
    tokio::pin!(copy);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            result = &mut copy => return result,
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
                }
            }
        }
    }
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
