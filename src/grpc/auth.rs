//! Admission at the door, before a call reaches a service:
//! - metadata above [`MAX_METADATA`] bytes is `RESOURCE_EXHAUSTED` (HTTP/2
//!   would otherwise answer a header list over its limit by closing the
//!   connection, which clients read as a retryable `UNAVAILABLE`; the
//!   server's HTTP/2 limit is set well above this one, see `super::serve`);
//! - the optional bearer token: every call but health checks (which kubelet
//!   probes make without credentials) must carry `authorization: Bearer
//!   <token>`. The comparison takes the same time whatever the bytes.

use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tower_layer::Layer;
use tower_service::Service;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Largest metadata (all header names and values) a call may carry.
pub const MAX_METADATA: usize = 64 * 1024;

/// Wraps the whole server; without a token it lets everything through.
#[derive(Debug, Clone)]
pub struct TokenLayer {
    expected: Option<Arc<[u8]>>,
}

impl TokenLayer {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes().into()),
        }
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = RequireToken<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            expected: self.expected.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    expected: Option<Arc<[u8]>>,
}

impl<S> RequireToken<S> {
    fn allows(&self, req: &http::Request<impl Sized>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return true;
        }
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map_or(&[][..], |v| v.as_bytes());
        given.ct_eq(expected).into()
    }
}

impl<S, B> Service<http::Request<B>> for RequireToken<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let metadata: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if metadata > MAX_METADATA {
            tracing::debug!(metadata, "gRPC call with oversized metadata refused");
            let refused = Status::resource_exhausted(format!(
                "the call's metadata is {metadata} bytes, above the sidecar's limit of {MAX_METADATA}"
            ));
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        if self.allows(&req) {
            return Box::pin(self.inner.call(req));
        }
        tracing::debug!(
            path = req.uri().path(),
            "gRPC call without the right bearer token"
        );
        let refused = Status::unauthenticated(
            "missing or wrong bearer token (authorization: Bearer <token>)",
        );
        Box::pin(async move { Ok(refused.into_http()) })
    }
}
