//! What every gRPC call leaves behind: its count and duration by method and
//! status code, a span (exported when tracing export is on), and its W3C
//! trace context, handed to the services as a request extension
//! ([`CallTrace`]) so that the messages it stores carry it.
//!
//! The status code is read from the answer's headers: tonic sends an error
//! as a trailers-only answer (the code in the headers), and a unary call
//! that succeeded has no code there (its `OK` follows in the trailers). The
//! duration runs until the answer's headers, which for a unary call is when
//! the service has finished.

use crate::metrics::Metrics;
use crate::telemetry::{TraceContext, otel};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tonic::codegen::{BoxFuture, http};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context of the call that stores a message: the caller's
/// (verbatim) without export, the call's own span with export on.
#[derive(Debug, Clone, Default)]
pub struct CallTrace(pub Option<TraceContext>);

impl CallTrace {
    /// The call's context, from a request's extensions.
    pub fn of(extensions: &http::Extensions) -> Self {
        extensions.get::<Self>().cloned().unwrap_or_default()
    }

    /// Writes the context into a message's headers (unless it has its own).
    pub fn stamp(&self, headers: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(cx) = &self.0 {
            cx.stamp(headers);
        }
    }
}

/// Wraps the whole server.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Observe<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let incoming = TraceContext::read(|key| {
            request
                .headers()
                .get(key)
                .and_then(|value| value.to_str().ok())
        });
        // Named `package.Service/Method`, as OpenTelemetry's RPC conventions do.
        let span = tracing::info_span!("grpc.call", otel.name = %path.trim_start_matches('/'), otel.kind = "server",
            rpc.system = "grpc", rpc.method = %path, trace_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty, rpc.grpc.status_code = tracing::field::Empty,
            messaging.message.ids = tracing::field::Empty);
        let trace = if otel::enabled() {
            if let Some(incoming) = &incoming {
                let _ = span.set_parent(incoming.context());
            }
            TraceContext::of(&span.context())
        } else {
            incoming
        };
        if let Some(trace) = &trace {
            span.record("trace_id", trace.trace_id());
        }
        request.extensions_mut().insert(CallTrace(trace));
        let metrics = self.metrics.clone();
        let answer = self.inner.call(request);
        let traced = span.clone();
        Box::pin(
            async move {
                let answer = answer.await;
                let code = match &answer {
                    Ok(response) => tonic::Status::from_header_map(response.headers())
                        .map_or(Code::Ok, |status| status.code()),
                    Err(_) => Code::Internal,
                };
                traced.record("rpc.grpc.status_code", code as i32);
                if code != Code::Ok {
                    traced.record("otel.status_code", "ERROR");
                }
                metrics.record_grpc(&path, code, started.elapsed());
                answer
            }
            .instrument(span),
        )
    }
}
