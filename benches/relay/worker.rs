//! The worker application of the `deliver` group: a tonic server in this
//! process that answers every unary call with `google.protobuf.Empty` at
//! once, reading the request as bytes and nothing more. It counts the calls
//! and notes when the first arrived and when the expected number was
//! reached, so that the relay's rate is timed from its first call to its
//! last, without its start-up.

use bytes::Bytes;
use outbox_relay::grpc::codec::BytesIn;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};

/// What the worker has seen.
#[derive(Debug)]
pub struct Calls {
    count: AtomicUsize,
    expected: usize,
    first: OnceLock<Instant>,
    /// When the `expected`-th call arrived (and was answered).
    reached: OnceLock<Instant>,
}

impl Calls {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// From the first call to the `expected`-th, once there were that many.
    pub fn span(&self) -> Option<std::time::Duration> {
        Some(self.reached.get()?.duration_since(*self.first.get()?))
    }

    fn record(&self) {
        let now = Instant::now();
        self.first.get_or_init(|| now);
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.expected {
            let _ = self.reached.set(now);
        }
    }
}

/// The worker, serving on a port of its own until stopped.
pub struct BenchWorker {
    pub addr: SocketAddr,
    pub calls: Arc<Calls>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl BenchWorker {
    /// Serves; `expected` calls make a complete run.
    pub async fn start(expected: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Calls {
            count: AtomicUsize::new(0),
            expected,
            first: OnceLock::new(),
            reached: OnceLock::new(),
        });
        let router = axum::Router::new().fallback_service(Service {
            calls: calls.clone(),
        });
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = tonic::transport::Server::builder()
                    .add_routes(tonic::service::Routes::from(router))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await;
            }
        });
        Self {
            addr,
            calls,
            stop,
            served,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.served.abort();
        let _ = self.served.await;
    }
}

#[derive(Clone)]
struct Service {
    calls: Arc<Calls>,
}

impl<B> tonic::codegen::Service<http::Request<B>> for Service
where
    B: tonic::codegen::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let handler = Handler {
            calls: self.calls.clone(),
        };
        Box::pin(async move { Ok(Grpc::new(BytesIn).unary(handler, req).await) })
    }
}

struct Handler {
    calls: Arc<Calls>,
}

impl UnaryService<Bytes> for Handler {
    type Response = ();
    type Future = BoxFuture<Response<()>, Status>;

    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        self.calls.record();
        Box::pin(async { Ok(Response::new(())) })
    }
}
