//! The API's one error shape, `{"error": "..."}` with its status, and the
//! one mapping onto HTTP statuses: the ingress's gRPC codes for a message
//! the API stores (as the gRPC Publisher would answer it), and the
//! database's failures for everything else.

use crate::grpc::status::IngressError;
use crate::outbox::{BROWSE_TIMEOUT, StoreError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_postgres::error::SqlState;
use tonic::Code;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(self, wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..self
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"outbox-relay\""),
            );
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The HTTP status of a gRPC code, as the ingress would have answered:
/// Google's mapping (`google/rpc/code.proto`), but RESOURCE_EXHAUSTED,
/// which the ingress gives only to a message too large, is 413.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<IngressError> for ApiError {
    fn from(e: IngressError) -> Self {
        let status = http_status(e.code());
        if status.is_server_error() {
            tracing::warn!(error = %e, %status, "API: message not stored; the caller may retry");
        }
        Self::new(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let cancelled =
            matches!(&e, StoreError::Db(db) if db.code() == Some(&SqlState::QUERY_CANCELED));
        if cancelled {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the query took longer than {BROWSE_TIMEOUT:?}; narrow it (state, exchange, routing_key, message_id, since, until)"
                ),
            );
        }
        let status = match &e {
            StoreError::Schema { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(error = %e, %status, "API: database request failed");
        Self::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::EncodeError;

    #[test]
    fn the_ingress_codes_map_to_the_statuses_the_api_documents() {
        let status = |e: IngressError| ApiError::from(e).status;
        assert_eq!(
            status(IngressError::MessageId(
                crate::outbox::MessageIdError::Empty
            )),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(IngressError::Encode(EncodeError::TooLarge {
                len: 2,
                max: 1
            })),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(IngressError::Store(StoreError::Closed)),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
