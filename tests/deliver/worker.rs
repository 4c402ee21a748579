//! A worker application for the delivery tests: a real tonic server that
//! takes every unary call as raw bytes (so a test sees exactly what the
//! relay sent), records it with its metadata, counts the calls in flight,
//! and answers as the test's script says; in plaintext, or over TLS with a
//! certificate the test made.

use bytes::Bytes;
use outbox_relay::grpc::codec::BytesIn;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};

/// One call the worker received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Bytes,
    pub metadata: MetadataMap,
}

impl Call {
    /// A metadata value, as text.
    pub fn meta(&self, key: &str) -> Option<String> {
        self.metadata
            .get(key)
            .map(|v| v.to_str().expect("ASCII metadata").to_owned())
    }
}

/// How the worker answers: given the call and how many calls with the same
/// body came before it.
pub type Script = Arc<dyn Fn(&Call, usize) -> Result<(), Status> + Send + Sync>;

/// What the worker does and has seen.
pub struct State {
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    script: Mutex<Script>,
    /// How long each call works before answering.
    work: Duration,
    /// Calls never answer (until the worker stops).
    hang: bool,
}

impl State {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Calls whose body is `body`.
    pub fn calls_with(&self, body: &[u8]) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.body.as_ref() == body)
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Answers from now on as `script` says.
    pub fn answer(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }
}

/// Options of a test worker.
#[derive(Clone)]
pub struct Options {
    pub script: Script,
    pub work: Duration,
    pub hang: bool,
    /// Serve server reflection of this FileDescriptorSet.
    pub reflection: Option<Vec<u8>>,
    /// Serve TLS with this certificate (PEM) and key (PEM).
    pub tls: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            script: ok(),
            work: Duration::ZERO,
            hang: false,
            reflection: None,
            tls: None,
        }
    }
}

/// A script that always answers OK.
pub fn ok() -> Script {
    Arc::new(|_, _| Ok(()))
}

/// A worker serving on a port of its own until dropped or stopped.
pub struct TestWorker {
    pub addr: SocketAddr,
    tls: bool,
    pub state: Arc<State>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    pub async fn start(options: Options) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, options)
    }

    /// Serves on `addr` (a port chosen earlier, while the worker was "down").
    pub async fn start_at(addr: SocketAddr, options: Options) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        Self::serve(listener, options)
    }

    fn serve(listener: tokio::net::TcpListener, options: Options) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            script: Mutex::new(options.script),
            work: options.work,
            hang: options.hang,
        });
        let mut builder = tonic::service::RoutesBuilder::default();
        if let Some(set) = &options.reflection {
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(set)
                .build_v1()
                .unwrap();
            builder.add_service(reflection);
        }
        let router = builder
            .routes()
            .into_axum_router()
            .fallback_service(Service {
                state: state.clone(),
            });
        let mut server = tonic::transport::Server::builder();
        let tls = options.tls.is_some();
        if let Some((cert, key)) = &options.tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("a TLS configuration");
        }
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = server
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
            tls,
            state,
            stop,
            served,
        }
    }

    /// `http://<addr>`, or `https://<addr>` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving: the port refuses connections from then on.
    pub async fn stop(self) {
        self.stop.cancel();
        self.served.abort();
        let _ = self.served.await;
    }
}

#[derive(Clone)]
struct Service {
    state: Arc<State>,
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
            state: self.state.clone(),
            path: req.uri().path().to_owned(),
        };
        Box::pin(async move { Ok(Grpc::new(BytesIn).unary(handler, req).await) })
    }
}

struct Handler {
    state: Arc<State>,
    path: String,
}

impl UnaryService<Bytes> for Handler {
    type Response = ();
    type Future = BoxFuture<Response<()>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.state.clone();
        let call = Call {
            path: std::mem::take(&mut self.path),
            metadata: request.metadata().clone(),
            body: request.into_inner(),
        };
        Box::pin(async move {
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let earlier = {
                let mut calls = state.calls.lock().unwrap();
                let earlier = calls.iter().filter(|c| c.body == call.body).count();
                calls.push(call.clone());
                earlier
            };
            if state.hang {
                std::future::pending::<()>().await;
            }
            if !state.work.is_zero() {
                tokio::time::sleep(state.work).await;
            }
            let script = state.script.lock().unwrap().clone();
            let answer = script(&call, earlier);
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer.map(|()| Response::new(()))
        })
    }
}
