//! Oversized requests get `RESOURCE_EXHAUSTED`, the code the gRPC spec
//! gives a message above the receiver's limit. Tonic enforces
//! `--grpc-max-request-size` while reading (before a byte is buffered past
//! it) but answers `OUT_OF_RANGE`; this layer rewrites that one answer and
//! names the setting. The ingress itself never answers `OUT_OF_RANGE`.

use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Wraps the whole server.
#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer {
    limit: usize,
}

impl OversizeLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Oversize {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for Oversize<S>
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
        let limit = self.limit;
        let path = req.uri().path().to_owned();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            rewrite(response.headers_mut(), limit, &path);
            Ok(response)
        })
    }
}

/// Turns tonic's "message too large" `OUT_OF_RANGE` into `RESOURCE_EXHAUSTED`.
fn rewrite(headers: &mut http::HeaderMap, limit: usize, path: &str) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange || !status.message().contains("too large") {
        return;
    }
    tracing::debug!(path, limit, "gRPC request over --grpc-max-request-size refused");
    let exhausted = Status::resource_exhausted(format!(
        "the request is larger than the sidecar accepts (--grpc-max-request-size {limit} bytes): {}",
        status.message()
    ));
    // Only fails for a message that cannot be a header value, which this
    // one, built from ASCII, never is; the original answer stands then.
    let _ = exhausted.add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &Status) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn only_the_too_large_answer_is_rewritten() {
        let mut too_large = answer(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        ));
        rewrite(&mut too_large, 8, "/a.B/C");
        let status = Status::from_header_map(&too_large).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("--grpc-max-request-size 8 bytes"), "{status:?}");
        assert!(status.message().contains("found 9 bytes"), "{status:?}");

        for other in [Status::out_of_range("index 3"), Status::invalid_argument("too large")] {
            let mut headers = answer(&other);
            rewrite(&mut headers, 8, "/a.B/C");
            let kept = Status::from_header_map(&headers).unwrap();
            assert_eq!((kept.code(), kept.message()), (other.code(), other.message()));
        }
        let mut ok = http::HeaderMap::new();
        rewrite(&mut ok, 8, "/a.B/C");
        assert!(ok.is_empty());
    }
}
