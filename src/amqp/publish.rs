//! Publishing a batch on one confirm-mode channel and classifying confirms.
//!
//! All publishes of a batch are written before any confirm is awaited, and
//! the confirms are awaited together under one deadline: the broker sees a
//! full window at once instead of one round trip per message. A batch may be
//! sent before the previous one is confirmed ([`Publisher::send_batch`]), so
//! that the broker always has work while the relay marks and claims.

use super::Encoded;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation, PublisherConfirm};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// Why one message was not confirmed. Only `Ok(())` lets a row be marked sent.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `mandatory` and unroutable: RabbitMQ returns it, then acks it
    /// (lapin's `Confirmation::Ack(Some(returned))`).
    #[error("returned by the broker as unroutable ({code} {text})")]
    Returned { code: u16, text: String },
    #[error("negatively acknowledged by the broker (queue full, rejecting, or internal error)")]
    Nacked,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("channel or connection lost with the publish in flight: {0}")]
    Connection(#[source] lapin::Error),
    #[error("the channel was not in confirm mode")]
    NotConfirmed,
}

impl PublishError {
    /// The same message may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::NotConfirmed)
    }

    /// The `reason` label of `outbox_relay_messages_failed_total`.
    pub fn reason(&self) -> crate::metrics::FailReason {
        use crate::metrics::FailReason;
        match self {
            Self::Returned { .. } => FailReason::Returned,
            Self::Nacked => FailReason::Nack,
            Self::Timeout(_) => FailReason::Timeout,
            Self::Connection(_) => FailReason::Connection,
            Self::NotConfirmed => FailReason::NotConfirmed,
        }
    }

    /// The channel can no longer be trusted and must be replaced.
    pub fn breaks_channel(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Connection(_) | Self::NotConfirmed
        )
    }
}

/// One message of a batch: payload plus its encoded envelope.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub payload: &'a [u8],
    pub envelope: Encoded,
}

/// A confirm-mode channel owned by one worker.
#[derive(Debug)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub(super) fn new(channel: Channel) -> Self {
        Self { channel }
    }

    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes `batch` and returns one result per message, in order.
    /// Nothing here retries: the caller records failures and backs off.
    pub async fn publish_batch(
        &self,
        batch: Vec<Outgoing<'_>>,
        confirm_timeout: Duration,
    ) -> Vec<Result<(), PublishError>> {
        self.send_batch(batch, confirm_timeout)
            .await
            .confirmed()
            .await
    }

    /// Writes `batch` to the channel and returns without waiting for the
    /// broker's confirms, so that the next batch can follow while the
    /// broker works on this one (the confirm window never drains).
    /// [`SentBatch::confirmed`] waits for them, up to `confirm_timeout`
    /// after this call.
    pub async fn send_batch(
        &self,
        batch: Vec<Outgoing<'_>>,
        confirm_timeout: Duration,
    ) -> SentBatch {
        let deadline = Instant::now() + confirm_timeout;
        let count = batch.len();
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        // join_all polls in order, so frames (and delivery tags) follow row
        // order while the writes proceed concurrently.
        let sends = batch.into_iter().map(|out| {
            self.channel.basic_publish(
                out.envelope.exchange,
                out.envelope.routing_key,
                options,
                out.payload,
                out.envelope.properties,
            )
        });
        let timed_out = || {
            (0..count)
                .map(|_| Err(PublishError::Timeout(confirm_timeout)))
                .collect()
        };
        let Ok(sent) = timeout_at(deadline, join_all(sends)).await else {
            return SentBatch {
                results: timed_out(),
                confirms: Vec::new(),
                deadline,
            };
        };
        kill_point!("relay_after_publish");
        let mut results: Vec<Result<(), PublishError>> = Vec::with_capacity(sent.len());
        let mut confirms = Vec::with_capacity(sent.len());
        for (index, send) in sent.into_iter().enumerate() {
            results.push(Err(PublishError::Timeout(confirm_timeout)));
            match send {
                Ok(confirm) => confirms.push((index, confirm)),
                Err(e) => results[index] = Err(PublishError::Connection(e)),
            }
        }
        SentBatch {
            results,
            confirms,
            deadline,
        }
    }

    /// Closes the channel (best effort).
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.channel.close(200, "done".into()),
        )
        .await;
    }
}

/// A batch written to the channel, its confirms outstanding.
#[must_use = "the confirms decide whether the rows were sent"]
pub struct SentBatch {
    /// A timeout until a confirm says otherwise; a failed write at once.
    results: Vec<Result<(), PublishError>>,
    confirms: Vec<(usize, PublisherConfirm)>,
    deadline: Instant,
}

impl std::fmt::Debug for SentBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentBatch")
            .field("messages", &self.results.len())
            .field("awaiting", &self.confirms.len())
            .finish()
    }
}

impl SentBatch {
    /// One result per message, in order, once each is confirmed or the
    /// deadline has passed (then it stays a timeout).
    pub async fn confirmed(self) -> Vec<Result<(), PublishError>> {
        let Self {
            mut results,
            confirms,
            deadline,
        } = self;
        let mut pending: FuturesUnordered<_> = confirms
            .into_iter()
            .map(|(index, confirm)| async move { (index, confirm.await) })
            .collect();
        while let Ok(Some((index, confirmation))) = timeout_at(deadline, pending.next()).await {
            results[index] = classify(confirmation);
        }
        results
    }
}

/// The exchange a channel-level exception blames, with the broker's reason:
/// RabbitMQ closes a channel with 403 ACCESS_REFUSED for a publish to an
/// internal exchange or without write permission, and 404 NOT_FOUND for an
/// exchange deleted meanwhile, naming the exchange in its text (`... exchange
/// 'name' in vhost '/' ...`). Every publish in flight on that channel fails
/// with the same error; this finds the one destination to blame, so that
/// only its rows count toward dead-lettering.
pub fn refused_exchange(error: &PublishError) -> Option<(String, String)> {
    let PublishError::Connection(e) = error else {
        return None;
    };
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return None;
    };
    if !matches!(amqp.get_id(), 403 | 404) {
        return None;
    }
    let text = amqp.get_message().as_str();
    let start = text.find("exchange '")? + "exchange '".len();
    let len = text[start..].find("' in vhost")?;
    Some((text[start..start + len].to_owned(), text.to_owned()))
}

/// Maps lapin's confirm onto success or a [`PublishError`] (invariant 2).
pub fn classify(confirmation: lapin::Result<Confirmation>) -> Result<(), PublishError> {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(PublishError::Returned {
            code: returned.reply_code,
            text: returned.reply_text.to_string(),
        }),
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
        Ok(Confirmation::NotRequested) => Err(PublishError::NotConfirmed),
        Err(e) => Err(PublishError::Connection(e)),
    }
}
