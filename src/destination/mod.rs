//! Destinations other than the default broker: NATS JetStream, Redis
//! Streams and HTTP webhooks, each behind [`Destination`], routed by a row's
//! `exchange` ([`Router`]).
//!
//! The contract is the AMQP path's (see [`crate::amqp::publish`]): a
//! destination takes a batch of messages and answers one result per
//! message, in order, `Ok(())` only once the message is durably accepted
//! (a JetStream publish ack, an `XADD` reply, a 2xx). Anything else is a
//! [`SendError`], and the relay treats it as it treats a nack: the row stays
//! pending with a backoff, or is dead-lettered (invariants 1-3). The relay's
//! claim, marks, retries, dead-lettering and metrics do not know which
//! destination a row went to; they see the row's fate.
//!
//! Isolation: each destination sits in a [`Lane`] with its own breaker. A
//! destination found unreachable (or timing out) is not called again until
//! its own backoff has passed; rows routed to it meanwhile fail at once,
//! without I/O, with a delay that ends when the breaker next lets a call
//! through, and never count toward dead-lettering. So a down destination
//! delays only its own rows; the other rows of the same batches are
//! published and marked as usual.

mod lane;
mod message;
pub mod nats;
mod params;
pub mod redis;
mod route;
pub mod webhook;

pub use lane::{Dispatch, Lane, LaneState, Lanes};
pub use message::Message;
pub use route::{DestinationName, RouteRule, Router};

use futures::future::BoxFuture;
use std::time::Duration;

/// Why one message was not accepted by a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The destination could not be reached (connection refused or lost,
    /// DNS, TLS): nothing is known about the message. Retried; never
    /// counts toward dead-lettering; opens the destination's breaker.
    #[error("destination unreachable: {0}")]
    Unreachable(String),
    /// No answer within the per-call timeout. Retried and counted (as an
    /// AMQP confirm timeout is); opens the breaker.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The destination answered but did not take the message this time
    /// (HTTP 5xx / 408 / 425 / 429, no JetStream stream for the subject,
    /// Redis out of memory): retried after `retry_after` when the
    /// destination said so, counted toward dead-lettering.
    #[error("{reason}")]
    Rejected {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The destination refused this message for good (HTTP 4xx, an invalid
    /// subject or key): dead-lettered at once.
    #[error("refused: {0}")]
    Refused(String),
}

impl SendError {
    /// A rejection without advice on when to retry.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::Rejected {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The destination itself is unwell: its breaker opens.
    pub fn opens_breaker(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }

    /// Counts as a failed attempt of the row (else it says nothing about
    /// the message, as an AMQP connection loss does not).
    pub fn counts_toward_dead_letter(&self) -> bool {
        !matches!(self, Self::Unreachable(_))
    }

    /// Dead-letter now, whatever the attempts so far.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// The destination's own advice on when to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `reason` label of `outbox_relay_messages_failed_total`.
    pub fn reason(&self) -> crate::metrics::FailReason {
        use crate::metrics::FailReason;
        match self {
            Self::Unreachable(_) => FailReason::Connection,
            Self::Timeout(_) => FailReason::Timeout,
            Self::Rejected { .. } => FailReason::Rejected,
            Self::Refused(_) => FailReason::Refused,
        }
    }
}

/// Where messages go, with the confirm guarantee.
///
/// `send` returns a future that owns what it needs (`'static`), so the
/// relay can keep it in flight while it claims the next batch. It resolves
/// to exactly one result per message, in order, within `timeout` (a
/// destination that cannot answer in time answers [`SendError::Timeout`]).
/// It never panics on message content: a message the destination cannot
/// express fails alone with [`SendError::Refused`].
pub trait Destination: Send + Sync + 'static {
    /// The destination's kind, for logs: `nats`, `redis`, `webhook`.
    fn kind(&self) -> &'static str;

    fn send(
        &self,
        messages: Vec<Message>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Result<(), SendError>>>;

    /// Closes connections at shutdown (best effort).
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The results of a batch that could not be sent at all (no connection):
/// every message prepared for sending fails with `error`, every one that
/// had already failed alone keeps its own reason.
pub(crate) fn fail_all<T>(
    prepared: Vec<Result<T, SendError>>,
    error: &SendError,
) -> Vec<Result<(), SendError>> {
    prepared
        .into_iter()
        .map(|p| match p {
            Ok(_) => Err(error.clone()),
            Err(own) => Err(own),
        })
        .collect()
}

/// Builds the destination of `spec`, without I/O: it connects on its first
/// send and reconnects after a failure, so an unreachable destination at
/// start delays only its rows. The error names what is wrong with the URL
/// (never its password).
pub fn open(
    spec: &crate::config::DestinationSpec,
) -> Result<std::sync::Arc<dyn Destination>, String> {
    let opened: Result<std::sync::Arc<dyn Destination>, String> = match spec.url.scheme() {
        "nats" | "tls" => nats::open(&spec.url).map(|d| std::sync::Arc::new(d) as _),
        "redis" | "rediss" => redis::open(&spec.url).map(|d| std::sync::Arc::new(d) as _),
        "http" | "https" => webhook::open(&spec.url).map(|d| std::sync::Arc::new(d) as _),
        other => Err(format!("no destination speaks {other}://")),
    };
    opened.map_err(|e| format!("destination {}: {e}", spec.name))
}
