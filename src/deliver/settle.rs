//! Settling one delivered message once the worker has answered: ack it,
//! move it to its queue's retry or dead-letter queue, or give it back.
//!
//! Invariant 11, as kept here: a message is acked only after the worker
//! answered OK, or after its copy in `<queue>.retry` / `<queue>.dead` was
//! confirmed by the broker (published `mandatory` and persistent on a
//! confirm-mode channel, so a missing queue is a failure too). When the copy
//! fails the original is given back (nack, requeue) and the error returned,
//! so that nothing is lost: at worst a message is delivered twice.
//!
//! The attempt count travels with the message in the header
//! `x-outbox-attempts` (failed calls so far). A retried copy carries
//! `expiration` = the backoff of its attempt: when it runs out, RabbitMQ
//! dead-letters it from `<queue>.retry` back to `<queue>`. Copies also
//! carry `x-outbox-status` (the gRPC code's name) and `x-outbox-error` (its
//! message) of the last failure.

use super::call::Verdict;
use super::plan::{dead_queue, retry_queue};
use crate::amqp::publish::Outgoing;
use crate::amqp::{Encoded, PublishError, Publisher};
use crate::metrics::{DeliveryOutcome, code_name};
use crate::relay::Backoff;
use lapin::Acker;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Status;

/// Failed calls so far.
pub const ATTEMPTS_HEADER: &str = "x-outbox-attempts";
/// The last failure's gRPC status code name, e.g. `INVALID_ARGUMENT`.
pub const STATUS_HEADER: &str = "x-outbox-status";
/// The last failure's message.
pub const ERROR_HEADER: &str = "x-outbox-error";
/// AMQP delivery mode 2: written to disk.
const PERSISTENT: u8 = 2;
/// An error message longer than this is cut (headers must fit a frame).
const MAX_ERROR_LEN: usize = 1024;

/// Why a message could not be settled; it was given back to its queue.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("the copy to {queue} was not confirmed: {source}")]
    Copy {
        queue: String,
        #[source]
        source: PublishError,
    },
    #[error("acknowledging failed (the broker gives the message back): {0}")]
    Ack(#[source] lapin::Error),
}

/// What settling needs, shared by the calls of one consuming session.
pub struct Settler {
    pub publisher: Publisher,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub confirm_timeout: Duration,
}

/// One delivered message, as far as settling is concerned.
pub struct Received<'a> {
    pub queue: &'a str,
    pub properties: &'a BasicProperties,
    pub data: &'a [u8],
    pub acker: &'a Acker,
}

impl Settler {
    /// Settles `message` as `verdict` says.
    pub async fn settle(
        &self,
        message: &Received<'_>,
        verdict: Verdict,
    ) -> Result<DeliveryOutcome, SettleError> {
        // This failure's number, should the call have failed.
        let attempt = attempts(message.properties).saturating_add(1);
        match verdict {
            Verdict::Ok => ack(message.acker).await.map(|()| DeliveryOutcome::Ok),
            Verdict::NotOurs => ack(message.acker).await.map(|()| DeliveryOutcome::Skipped),
            Verdict::Unreachable(_) => {
                requeue(message.acker).await;
                Ok(DeliveryOutcome::Requeued)
            }
            Verdict::Retry(status) if attempt < self.max_attempts => {
                let delay = self
                    .backoff
                    .delay_random(attempt)
                    .max(Duration::from_millis(1));
                let target = retry_queue(message.queue);
                self.copy(message, &target, attempt, &status, Some(delay))
                    .await?;
                Ok(DeliveryOutcome::Retry)
            }
            Verdict::Retry(status) | Verdict::Dead(status) => {
                let target = dead_queue(message.queue);
                self.copy(message, &target, attempt, &status, None).await?;
                Ok(DeliveryOutcome::Dead)
            }
        }
    }

    /// Publishes a copy of `message` to `target` and, once confirmed, acks
    /// the original; gives the original back when the copy fails.
    async fn copy(
        &self,
        message: &Received<'_>,
        target: &str,
        attempt: u32,
        status: &Status,
        expiration: Option<Duration>,
    ) -> Result<(), SettleError> {
        let mut properties = carried(message.properties, attempt, status);
        if let Some(delay) = expiration {
            properties = properties.with_expiration(delay.as_millis().to_string().into());
        }
        let outgoing = Outgoing {
            payload: message.data,
            envelope: Encoded {
                exchange: ShortString::from(""),
                routing_key: ShortString::from(target),
                properties,
            },
        };
        let confirmed = self
            .publisher
            .publish_batch(vec![outgoing], self.confirm_timeout)
            .await
            .pop()
            .unwrap_or(Err(PublishError::NotConfirmed));
        if let Err(source) = confirmed {
            requeue(message.acker).await;
            return Err(SettleError::Copy {
                queue: target.to_owned(),
                source,
            });
        }
        ack(message.acker).await
    }
}

async fn ack(acker: &Acker) -> Result<(), SettleError> {
    acker
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(SettleError::Ack)
}

/// Gives a message back to the head of its queue (best effort: when the
/// channel is gone the broker does so anyway).
pub async fn requeue(acker: &Acker) {
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    if let Err(e) = acker.nack(requeue).await {
        tracing::debug!(error = %e, "nack failed; the broker requeues the message with its channel");
    }
}

/// The failed calls a message has had, from its `x-outbox-attempts`.
pub fn attempts(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS_HEADER));
    let n: i128 = match value {
        Some(AMQPValue::ShortShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortShortUInt(n)) => (*n).into(),
        Some(AMQPValue::ShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortUInt(n)) => (*n).into(),
        Some(AMQPValue::LongInt(n)) => (*n).into(),
        Some(AMQPValue::LongUInt(n)) => (*n).into(),
        Some(AMQPValue::LongLongInt(n)) => (*n).into(),
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// The properties of a copy: the original's (but `user_id`, which the
/// broker checks against the publishing connection, and `expiration`),
/// persistent, with the attempt and the failure in its headers, and without
/// RabbitMQ's own dead-lettering bookkeeping.
pub fn carried(original: &BasicProperties, attempt: u32, status: &Status) -> BasicProperties {
    let mut headers = without_bookkeeping(original.headers().as_ref());
    headers.insert(
        ShortString::from(ATTEMPTS_HEADER),
        AMQPValue::LongLongInt(attempt.into()),
    );
    headers.insert(
        ShortString::from(STATUS_HEADER),
        long_string(code_name(status.code())),
    );
    let mut error = status.message().to_owned();
    if error.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    headers.insert(ShortString::from(ERROR_HEADER), long_string(&error));
    rebuilt(original, headers)
}

/// `original`'s properties with `headers`, persistent, without `user_id`
/// and `expiration`.
pub fn rebuilt(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

/// Whether RabbitMQ added the header on dead-lettering (`x-death`,
/// `x-first-death-*`, `x-last-death-*`): bookkeeping of a message's past
/// life, not the sender's.
pub fn is_bookkeeping(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// The headers without RabbitMQ's dead-lettering bookkeeping: a copy is a
/// new message.
pub fn without_bookkeeping(headers: Option<&FieldTable>) -> FieldTable {
    let kept: BTreeMap<ShortString, AMQPValue> = headers
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !is_bookkeeping(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    FieldTable::from(kept)
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_read_from_any_integer_header_and_default_to_zero() {
        assert_eq!(attempts(&BasicProperties::default()), 0);
        for value in [
            AMQPValue::LongLongInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::ShortShortUInt(3),
        ] {
            let mut h = FieldTable::default();
            h.insert(ATTEMPTS_HEADER.into(), value);
            assert_eq!(attempts(&BasicProperties::default().with_headers(h)), 3);
        }
        let mut h = FieldTable::default();
        h.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(-4));
        assert_eq!(attempts(&BasicProperties::default().with_headers(h)), 0);
    }

    #[test]
    fn a_copy_keeps_the_message_but_not_the_user_expiration_or_death_bookkeeping() {
        let mut h = FieldTable::default();
        h.insert("tenant".into(), long_string("acme"));
        h.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        h.insert("x-first-death-queue".into(), long_string("q.retry"));
        let original = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("application/protobuf".into())
            .with_user_id("someone".into())
            .with_expiration("60000".into())
            .with_headers(h);
        let copy = carried(&original, 2, &Status::unavailable("busy"));
        assert_eq!(copy.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(
            copy.content_type().as_ref().unwrap().as_str(),
            "application/protobuf"
        );
        assert_eq!(*copy.delivery_mode(), Some(PERSISTENT));
        assert!(copy.user_id().is_none() && copy.expiration().is_none());
        let headers = copy.headers().as_ref().unwrap().inner();
        assert!(headers.contains_key("tenant"));
        assert!(!headers.contains_key("x-death"));
        assert!(!headers.contains_key("x-first-death-queue"));
        assert_eq!(attempts(&copy), 2);
        assert_eq!(headers[STATUS_HEADER], long_string("UNAVAILABLE"));
        assert_eq!(headers[ERROR_HEADER], long_string("busy"));
    }
}
