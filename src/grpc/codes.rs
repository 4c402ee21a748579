//! Two answers tonic gives before a call reaches the ingress, rewritten so
//! that every service of the sidecar speaks with the codes of [`super::status`]:
//! - a request over `--grpc-max-request-size` (tonic enforces it while
//!   reading, before a byte past it is buffered) is `OUT_OF_RANGE` from
//!   tonic, `RESOURCE_EXHAUSTED` here, the code the gRPC spec gives a message
//!   above the receiver's limit, with the setting named;
//! - a request that does not decode as the compiled request type is
//!   `INTERNAL` from tonic, `INVALID_ARGUMENT` here, as for topic services:
//!   the caller's bytes are wrong and retrying them cannot help.
//!
//! The ingress itself never answers `OUT_OF_RANGE`, nor `INTERNAL` with a
//! decode error's text, so nothing else is rewritten.

use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Wraps the whole server.
#[derive(Debug, Clone, Copy)]
pub struct CodesLayer {
    limit: usize,
}

impl CodesLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for CodesLayer {
    type Service = Codes<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Codes {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Codes<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for Codes<S>
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

/// Rewrites tonic's own answers to oversized and undecodable requests.
fn rewrite(headers: &mut http::HeaderMap, limit: usize, path: &str) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let rewritten = match status.code() {
        Code::OutOfRange if message.contains("too large") => {
            tracing::debug!(
                path,
                limit,
                "gRPC request over --grpc-max-request-size refused"
            );
            Status::resource_exhausted(format!(
                "the request is larger than the sidecar accepts (--grpc-max-request-size {limit} bytes): {message}"
            ))
        }
        Code::Internal if message.starts_with(DECODE_ERROR) => {
            tracing::debug!(path, error = message, "undecodable gRPC request refused");
            Status::invalid_argument(format!("the request does not decode: {message}"))
        }
        _ => return,
    };
    // Only fails for a message that cannot be a header value; the original
    // answer stands then.
    let _ = rewritten.add_header(headers);
}

/// How prost's decode errors begin (tonic-prost sends them as `INTERNAL`).
const DECODE_ERROR: &str = "failed to decode Protobuf message";

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &Status) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn only_the_too_large_and_undecodable_answers_are_rewritten() {
        let mut too_large = answer(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        ));
        rewrite(&mut too_large, 8, "/a.B/C");
        let status = Status::from_header_map(&too_large).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("--grpc-max-request-size 8 bytes"),
            "{status:?}"
        );
        assert!(status.message().contains("found 9 bytes"), "{status:?}");

        let mut undecodable = answer(&Status::internal(
            "failed to decode Protobuf message: PublishRequest.exchange: buffer underflow",
        ));
        rewrite(&mut undecodable, 8, "/a.B/C");
        let status = Status::from_header_map(&undecodable).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("PublishRequest.exchange"),
            "{status:?}"
        );

        for other in [
            Status::out_of_range("index 3"),
            Status::invalid_argument("too large"),
            Status::internal("the pool is closed"),
        ] {
            let mut headers = answer(&other);
            rewrite(&mut headers, 8, "/a.B/C");
            let kept = Status::from_header_map(&headers).unwrap();
            assert_eq!(
                (kept.code(), kept.message()),
                (other.code(), other.message())
            );
        }
        let mut ok = http::HeaderMap::new();
        rewrite(&mut ok, 8, "/a.B/C");
        assert!(ok.is_empty());
    }
}
