//! Where accepted messages go, and the moment a call may answer OK.
//!
//! Invariants owned here:
//! - every message is checked with the relay's own encoding rules before it
//!   is stored, so the door refuses what the relay could never publish;
//! - outbox mode answers only after the insert (all of a batch, in one
//!   transaction) has committed; a broker outage does not fail the call;
//! - direct mode answers only after the broker acked every message (a
//!   returned, nacked or unconfirmed message fails the call); messages with a
//!   delay go through the outbox in either mode, since only it can delay;
//! - a repeated message_id is stored once (outbox mode);
//! - after a commit of messages that are due now, the relay's workers are
//!   woken in-process, so an ingress message does not wait for the next poll
//!   (nor for the database wake-up trigger).

use super::group::GroupCommit;
use super::observe::CallTrace;
use super::status::IngressError;
use crate::amqp::publish::Outgoing;
use crate::amqp::{Broker, Encoded, ExchangeState, Limits, Publisher, encode_new};
use crate::config::IngressMode;
use crate::metrics::Metrics;
use crate::outbox::{MessageId, NewMessage, Outbox};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Notify};

/// Stores what the ingress accepts.
pub struct Sink {
    mode: IngressMode,
    outbox: Outbox,
    /// Outbox mode's group commit.
    writer: GroupCommit,
    broker: Arc<Broker>,
    /// Direct mode's confirm channel, shared by all calls and replaced when
    /// it breaks.
    publisher: Mutex<Option<Arc<Publisher>>>,
    confirm_timeout: Duration,
    max_message_size: usize,
    /// The relay workers' wake-up, coalesced.
    wake: Wake,
    /// Direct mode's publishes count as the relay's do.
    metrics: Arc<Metrics>,
}

/// The sink's settings.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    pub mode: IngressMode,
    pub confirm_timeout: Duration,
    pub max_message_size: usize,
    /// Outbox mode's writer tasks (each holds at most one connection).
    pub writers: usize,
}

impl Sink {
    pub fn new(
        outbox: Outbox,
        broker: Arc<Broker>,
        options: SinkOptions,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            metrics,
            mode: options.mode,
            writer: GroupCommit::start(outbox.clone(), options.writers),
            outbox,
            broker,
            publisher: Mutex::new(None),
            confirm_timeout: options.confirm_timeout,
            max_message_size: options.max_message_size,
            wake: Wake {
                notify: wake,
                scheduled: Arc::new(AtomicBool::new(false)),
            },
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Stores `messages`, all or none; returns once they are safe.
    pub async fn accept(
        &self,
        mut messages: Vec<NewMessage>,
        trace: &CallTrace,
    ) -> Result<(), IngressError> {
        if messages.is_empty() {
            return Err(IngressError::EmptyBatch);
        }
        let limits = self.broker.limits(self.max_message_size);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let mut envelopes = Vec::with_capacity(messages.len());
        for message in &mut messages {
            trace.stamp(&mut message.headers);
            envelopes.push(admit(message, limits, created)?);
        }
        if crate::telemetry::otel::enabled() {
            // The call's span (grpc::observe) names what it stores.
            let ids = MessageId::join(messages.iter().filter_map(|m| m.message_id.as_ref()));
            tracing::Span::current().record("messaging.message.ids", ids);
        }
        let direct = self.mode == IngressMode::Direct && messages.iter().all(|m| m.delay.is_zero());
        if direct {
            self.publish(&messages, envelopes).await
        } else {
            self.store(messages).await
        }
    }

    /// Outbox mode: the call's messages in one transaction (which may hold
    /// other calls' too, see [`GroupCommit`]); committed before OK.
    async fn store(&self, messages: Vec<NewMessage>) -> Result<(), IngressError> {
        let due_now = messages.iter().any(|m| m.delay.is_zero());
        self.writer.store(messages).await?;
        if due_now {
            self.wake.soon();
        }
        Ok(())
    }

    /// Direct mode: publish with confirms, OK only on every ack. Each
    /// message goes out in the envelope [`admit`] encoded.
    async fn publish(
        &self,
        messages: &[NewMessage],
        envelopes: Vec<Encoded>,
    ) -> Result<(), IngressError> {
        let mut batch = Vec::with_capacity(messages.len());
        for (message, envelope) in messages.iter().zip(envelopes) {
            let state = self.broker.exchange_state(&message.exchange).await?;
            if state == ExchangeState::Missing {
                return Err(IngressError::ExchangeMissing(message.exchange.clone()));
            }
            batch.push(Outgoing {
                payload: &message.payload,
                envelope,
            });
        }
        let publisher = self.publisher().await?;
        let results = publisher.publish_batch(batch, self.confirm_timeout).await;
        let mut first_error = None;
        for (message, result) in messages.iter().zip(results) {
            match result {
                Ok(()) => self.metrics.record_published(&message.exchange, 1),
                Err(e) => {
                    self.metrics.record_failure(e.reason());
                    if e.breaks_channel() {
                        self.drop_publisher(&publisher).await;
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }

    async fn publisher(&self) -> Result<Arc<Publisher>, IngressError> {
        let mut slot = self.publisher.lock().await;
        if let Some(publisher) = slot.as_ref().filter(|p| p.is_usable()) {
            return Ok(publisher.clone());
        }
        let publisher = Arc::new(self.broker.publisher().await?);
        *slot = Some(publisher.clone());
        Ok(publisher)
    }

    /// Forgets `broken` unless another call has already replaced it.
    async fn drop_publisher(&self, broken: &Arc<Publisher>) {
        let mut slot = self.publisher.lock().await;
        if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, broken)) {
            *slot = None;
            self.broker.forget_exchanges();
        }
    }
}

/// Checks `message` with the relay's own encoding rules (what the relay
/// could never publish is refused at the door), fixes its message_id and
/// returns its envelope (`created_epoch` its AMQP timestamp): direct mode
/// publishes that envelope, outbox mode drops it (the relay encodes the
/// stored row when it sends it). Shared with the HTTP API
/// (`POST /api/messages`).
pub fn admit(
    message: &mut NewMessage,
    limits: Limits,
    created_epoch: i64,
) -> Result<Encoded, IngressError> {
    // Fixing the id here keeps it stable across the check and the store,
    // and lets direct mode publish what outbox mode would.
    message.message_id.get_or_insert_with(MessageId::generate);
    let id = message.message_id.as_ref().expect("set above");
    Ok(encode_new(message, id, created_epoch, limits)?)
}

/// How long a wake-up waits for company: calls committed meanwhile ride on
/// it, so under load the workers claim one batch per linger instead of one
/// row per call (each claim is a transaction of its own).
const WAKE_LINGER: Duration = Duration::from_millis(5);

/// Wakes one idle relay worker [`WAKE_LINGER`] after the first commit that
/// asks for it; commits until then share that wake-up.
struct Wake {
    notify: Arc<Notify>,
    scheduled: Arc<AtomicBool>,
}

impl Wake {
    fn soon(&self) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (notify, scheduled) = (self.notify.clone(), self.scheduled.clone());
        tokio::spawn(async move {
            tokio::time::sleep(WAKE_LINGER).await;
            // Cleared first: a commit from now on schedules its own wake-up,
            // and one just before rides on this one (it committed already).
            scheduled.store(false, Ordering::Release);
            notify.notify_one();
        });
    }
}
