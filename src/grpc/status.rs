//! Every ingress failure, and its one mapping onto a gRPC status code.
//!
//! Callers branch on the code: `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED` and
//! `FAILED_PRECONDITION` say "this message will never be accepted as it is";
//! `UNAVAILABLE` and `DEADLINE_EXCEEDED` say "try again, with the same
//! message_id". Nothing that failed was acknowledged as stored.

use crate::amqp::{BrokerError, EncodeError, PublishError};
use crate::outbox::{MessageIdError, OrderingKeyError, StoreError};
use std::time::Duration;
use tonic::{Code, Status};

/// Why a call did not store its message(s).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("invalid message: {0}")]
    Encode(#[from] EncodeError),
    #[error("{0}")]
    MessageId(#[from] MessageIdError),
    #[error("the message-id metadata is not UTF-8 text")]
    MessageIdNotText,
    #[error("{0}")]
    OrderingKey(#[from] OrderingKeyError),
    #[error("the ordering-key metadata is not UTF-8 text")]
    OrderingKeyNotText,
    #[error("delay {0} is outside 0 to 900 seconds")]
    DelayOutOfRange(i64),
    #[error("a negative delay")]
    NegativeDelay,
    #[error("the batch holds no message")]
    EmptyBatch,
    #[error("request does not decode as {type_name}: {reason}")]
    Undecodable { type_name: String, reason: String },
    #[error("the o5 message cannot be written as J5 JSON: {0}")]
    O5Json(#[source] super::o5::j5json::J5Error),
    #[error("{field} is required")]
    Missing { field: String },
    #[error("reply-to field {path:?} names no requester (empty or over 255 bytes)")]
    NoRequester { path: String },
    #[error("the outbox cannot store the message: {0}")]
    Store(#[from] StoreError),
    #[error("the broker is unreachable: {0}")]
    Broker(#[from] BrokerError),
    #[error("the broker did not accept the message: {0}")]
    Publish(#[from] PublishError),
    #[error("exchange {0:?} does not exist")]
    ExchangeMissing(String),
    #[error("the caller's deadline ({0:?}) passed before the message was stored")]
    Deadline(Duration),
    #[error("no topic service is served at {0}")]
    Unimplemented(String),
    #[error("topic services are not known yet: the application's reflection has not answered")]
    CatalogPending,
}

impl IngressError {
    pub fn code(&self) -> Code {
        match self {
            Self::Encode(EncodeError::TooLarge { .. }) => Code::ResourceExhausted,
            Self::Encode(_)
            | Self::MessageId(_)
            | Self::MessageIdNotText
            | Self::OrderingKey(_)
            | Self::OrderingKeyNotText
            | Self::DelayOutOfRange(_)
            | Self::NegativeDelay
            | Self::EmptyBatch
            | Self::Undecodable { .. }
            | Self::Missing { .. }
            | Self::O5Json(_)
            | Self::NoRequester { .. } => Code::InvalidArgument,
            Self::Publish(PublishError::Returned { .. }) | Self::ExchangeMissing(_) => {
                Code::FailedPrecondition
            }
            Self::Store(StoreError::TableMissing { .. }) => Code::FailedPrecondition,
            Self::Store(StoreError::Db(e)) if is_data_exception(e) => Code::InvalidArgument,
            Self::Store(_) | Self::Broker(_) | Self::Publish(_) | Self::CatalogPending => {
                Code::Unavailable
            }
            Self::Deadline(_) => Code::DeadlineExceeded,
            Self::Unimplemented(_) => Code::Unimplemented,
        }
    }
}

impl From<IngressError> for Status {
    fn from(e: IngressError) -> Self {
        let code = e.code();
        match code {
            Code::Unavailable | Code::DeadlineExceeded => {
                tracing::warn!(error = %e, code = ?code, "ingress call not stored; the caller may retry");
            }
            _ => tracing::debug!(error = %e, code = ?code, "ingress call refused"),
        }
        Status::new(code, e.to_string())
    }
}

/// PostgreSQL refused the values themselves (SQLSTATE class 22, e.g. a NUL
/// character, which neither text nor jsonb can hold): retrying cannot help.
fn is_data_exception(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|state| state.code().starts_with("22"))
}

/// The time the caller allows, from its `grpc-timeout` header: digits and a
/// unit (H, M, S, m, u, n), as the gRPC wire protocol defines it.
pub fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `work` within the caller's deadline. The server's own timeout fires
/// at the deadline too (as CANCELLED); ending a little earlier lets the
/// caller see DEADLINE_EXCEEDED. A store cut off here may still commit: the
/// caller retries with the same message_id, which is stored once.
pub async fn within_deadline<T>(
    timeout: Option<Duration>,
    work: impl Future<Output = Result<T, IngressError>>,
) -> Result<T, IngressError> {
    let Some(timeout) = timeout else {
        return work.await;
    };
    let margin = (timeout / 10).min(Duration::from_millis(50));
    tokio::time::timeout(timeout - margin, work)
        .await
        .map_err(|_| IngressError::Deadline(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", value.parse().unwrap());
        h
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_is_ignored() {
        assert_eq!(
            caller_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(caller_timeout(&headers("3S")), Some(Duration::from_secs(3)));
        assert_eq!(
            caller_timeout(&headers("2M")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            caller_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            caller_timeout(&headers("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            caller_timeout(&headers("9n")),
            Some(Duration::from_nanos(9))
        );
        for bad in ["", "S", "12", "123456789S", "-1S", "1x", "1.5S"] {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = bad.parse() {
                h.insert("grpc-timeout", v);
            }
            assert_eq!(caller_timeout(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn retryable_failures_and_final_refusals_get_distinct_codes() {
        assert_eq!(
            IngressError::MessageId(MessageIdError::TooLong(256)).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            IngressError::Encode(EncodeError::TooLarge { len: 2, max: 1 }).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            IngressError::Publish(PublishError::Nacked).code(),
            Code::Unavailable
        );
        assert_eq!(
            IngressError::Publish(PublishError::Returned {
                code: 312,
                text: "NO_ROUTE".into()
            })
            .code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            IngressError::Deadline(Duration::from_secs(1)).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            IngressError::Unimplemented("/a.B/C".into()).code(),
            Code::Unimplemented
        );
    }
}
