//! The ingress's listener: at most `--grpc-max-connections` connections at
//! once. Each connection holds a file descriptor; past the limit a new one
//! is closed at once (logged at most once a minute) instead of exhausting
//! the process's descriptors silently, and a failing `accept` (out of
//! descriptors) backs off instead of spinning. Idle connections are closed
//! by the server's keepalive and connection-age settings (see `super`).

use futures::Stream;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often a refusal or accept failure is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Pause after `accept` failed (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An accepted connection that counts toward the limit while it lives.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// Accepted connections from `listener`, at most `max` alive at once.
pub fn incoming(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<Limited>> {
    let slots = Arc::new(Semaphore::new(max));
    futures::stream::unfold(
        (listener, slots, None::<Instant>),
        move |(listener, slots, mut logged)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        if due(&mut logged) {
                            tracing::error!(error = %e, "gRPC ingress cannot accept connections");
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    if due(&mut logged) {
                        tracing::warn!(%peer, max,
                            "gRPC ingress refused a connection: --grpc-max-connections reached");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Limited {
                    stream,
                    _permit: permit,
                };
                return Some((Ok(conn), (listener, slots, logged)));
            }
        },
    )
}

fn due(logged: &mut Option<Instant>) -> bool {
    if logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
        return false;
    }
    *logged = Some(Instant::now());
    true
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
