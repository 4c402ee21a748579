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

use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};
use tower::util::MapResponseLayer;

/// The layer that wraps the whole server (answers only: requests pass
/// untouched, and nothing is allocated per call).
pub fn layer(
    limit: usize,
) -> MapResponseLayer<impl Fn(http::Response<Body>) -> http::Response<Body> + Clone> {
    MapResponseLayer::new(move |mut response: http::Response<Body>| {
        rewrite(response.headers_mut(), limit);
        response
    })
}

/// Rewrites tonic's own answers to oversized and undecodable requests.
fn rewrite(headers: &mut http::HeaderMap, limit: usize) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let rewritten = match status.code() {
        Code::OutOfRange if message.contains("too large") => {
            tracing::debug!(limit, "gRPC request over --grpc-max-request-size refused");
            Status::resource_exhausted(format!(
                "the request is larger than the sidecar accepts (--grpc-max-request-size {limit} bytes): {message}"
            ))
        }
        Code::Internal if message.starts_with(DECODE_ERROR) => {
            tracing::debug!(error = message, "undecodable gRPC request refused");
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
        rewrite(&mut too_large, 8);
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
        rewrite(&mut undecodable, 8);
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
            rewrite(&mut headers, 8);
            let kept = Status::from_header_map(&headers).unwrap();
            assert_eq!(
                (kept.code(), kept.message()),
                (other.code(), other.message())
            );
        }
        let mut ok = http::HeaderMap::new();
        rewrite(&mut ok, 8);
        assert!(ok.is_empty());
    }
}
