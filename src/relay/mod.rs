//! The relay step: claim → publish → await confirms → mark, in one database
//! transaction.
//!
//! Invariants owned here:
//! - a row is marked sent only after its own broker ack, inside the
//!   transaction that claimed it (invariant 1); if that transaction fails to
//!   commit, the rows stay pending and are published again (at-least-once);
//! - the broker is reached *before* rows are claimed, so an unreachable broker
//!   claims nothing;
//! - a row is the unit of failure (invariants 3 and 8): whatever it holds
//!   (unreadable values, a payload or headers too big for the broker, an
//!   exchange that is missing or refuses it) fails alone with attempts + 1,
//!   `last_error` and a backoff, and is dead-lettered at `max_attempts`;
//!   connection losses are the broker's fault and never dead-letter;
//! - memory is bounded by configuration (invariant 10): the claim loads at
//!   most `batch_bytes` of payload, and a larger row is loaded alone, one at
//!   a time per relay (the large-message lane);
//! - the batch is bounded in time by the confirm timeout, and the database
//!   kills a session idle in transaction beyond the claim bound (invariant 4).

pub mod backoff;
mod purge;
mod trace;
mod worker;

pub use backoff::{Backoff, ErrorBackoff};
pub use purge::run_purger;
pub use worker::{Shared, WorkerOptions, run_worker, supervise};

use crate::amqp::publish::{Outgoing, refused_exchange};
use crate::amqp::{
    Broker, BrokerError, EncodeError, Encoded, ExchangeState, PublishError, Publisher,
    encode_traced,
};
use crate::metrics::{FailReason, Metrics, epoch_now};
use crate::outbox::{Claim, ClaimLimits, Claimed, Failure, OnSent, Outbox, OutboxRow, StoreError};
use crate::telemetry::TraceContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Tunables of the relay step.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_size: usize,
    /// Payload bytes one claim loads (`--batch-max-bytes`).
    pub batch_bytes: usize,
    pub confirm_timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub on_sent: OnSent,
    /// Largest payload published; larger rows fail without being loaded.
    pub max_message_size: usize,
    /// How long the database lets a claim's session sit idle in its
    /// transaction before ending it (beyond the whole step's own bound).
    pub claim_idle_timeout: Duration,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was due.
    Empty,
    Relayed(BatchReport),
}

/// Counts of one non-empty batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub dead: usize,
    /// Time spent claiming, publishing until the last confirm, and marking
    /// and committing: where a slow batch spent its time.
    pub timings: [Duration; 3],
}

/// A step that could not run; nothing was marked, every claim was released.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl RelayError {
    /// See [`StoreError::is_systemic`].
    pub fn is_systemic(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_systemic())
    }
}

/// Why one row was not sent this time.
#[derive(Debug, thiserror::Error)]
pub enum RowFailure {
    #[error("the row cannot be read: {0}")]
    Decode(String),
    #[error("cannot encode the row as an AMQP message: {0}")]
    Encode(#[from] EncodeError),
    #[error("exchange {0:?} does not exist")]
    ExchangeMissing(String),
    #[error("the broker refuses messages for exchange {exchange:?}: {reason}")]
    ExchangeRefused { exchange: String, reason: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl RowFailure {
    /// A lost connection says nothing about the message itself.
    fn counts_toward_dead_letter(&self) -> bool {
        !matches!(self, Self::Publish(PublishError::Connection(_)))
    }

    /// The `reason` label of `outbox_relay_messages_failed_total`.
    pub fn reason(&self) -> FailReason {
        match self {
            Self::Decode(_) => FailReason::Decode,
            Self::Encode(EncodeError::TooLarge { .. }) => FailReason::TooLarge,
            Self::Encode(EncodeError::HeaderTooLarge { .. }) => FailReason::FrameTooLarge,
            Self::Encode(_) => FailReason::Encode,
            Self::ExchangeMissing(_) => FailReason::ExchangeMissing,
            Self::ExchangeRefused { .. } => FailReason::ExchangeRefused,
            Self::Publish(e) => e.reason(),
        }
    }
}

/// What became of one claimed row.
enum Fate {
    Sent,
    Failed(RowFailure),
    /// Beyond the claim's byte budget: left pending, untouched, for the next.
    Later,
}

/// One worker's relay: its own channel, sharing the pool and the connection.
pub struct Relay {
    outbox: Outbox,
    broker: Arc<Broker>,
    settings: RelaySettings,
    publisher: Option<Publisher>,
    /// Shared by a relay's workers: one large payload loaded at a time.
    large_lane: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Relay {
    /// `metrics` may be a fresh [`Metrics::new`] where nobody reads them.
    pub fn new(
        outbox: Outbox,
        broker: Arc<Broker>,
        settings: RelaySettings,
        large_lane: Arc<Semaphore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            outbox,
            broker,
            settings,
            publisher: None,
            large_lane,
            metrics,
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// Runs one claim → publish → mark cycle.
    pub async fn relay_batch(&mut self) -> Result<Outcome, RelayError> {
        self.ensure_publisher().await?;
        let started = Instant::now();
        let claiming = trace::claiming();
        let claim = self
            .outbox
            .claim(&ClaimLimits {
                rows: self.settings.batch_size,
                max_payload: self.settings.max_message_size,
                batch_bytes: self.settings.batch_bytes,
                idle_timeout: self.settings.claim_idle_timeout,
            })
            .instrument(claiming.clone())
            .await?;
        claiming.record("messaging.batch.message_count", claim.rows.len());
        drop(claiming);
        if claim.is_empty() {
            claim.finish(&[], self.settings.on_sent, &[]).await?;
            return Ok(Outcome::Empty);
        }
        kill_point!("relay_after_claim");
        let claimed = Instant::now();
        let fates = self
            .publish(&claim)
            .instrument(trace::publishing(&claim.rows))
            .await?;
        kill_point!("relay_after_confirm");
        let published = Instant::now();
        self.record_fates(&claim.rows, &fates);
        let (sent, failures) = self.sort_results(&claim.rows, fates);
        let count = claim.rows.len();
        let marking = trace::marking(&claim.rows);
        claim
            .finish(&sent, self.settings.on_sent, &failures)
            .instrument(marking)
            .await?;
        let dead = failures.iter().filter(|f| f.dead).count();
        let timings = [claimed - started, published - claimed, published.elapsed()];
        self.metrics.record_dead_lettered(dead as u64);
        self.metrics.record_batch(count, timings);
        Ok(Outcome::Relayed(BatchReport {
            claimed: count,
            sent: sent.len(),
            retried: failures.len() - dead,
            dead,
            timings,
        }))
    }

    /// Closes this worker's channel.
    pub async fn close(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
    }

    /// Forgets the channel, e.g. after a step was abandoned at its deadline.
    pub fn reset_channel(&mut self) {
        self.publisher = None;
    }

    async fn ensure_publisher(&mut self) -> Result<(), BrokerError> {
        if !self.publisher.as_ref().is_some_and(Publisher::is_usable) {
            self.publisher = Some(self.broker.publisher().await?);
        }
        Ok(())
    }

    /// Encodes, checks exchanges, publishes; one fate per claimed row.
    async fn publish(&mut self, claim: &Claim) -> Result<Vec<Fate>, RelayError> {
        let limits = self.broker.limits(self.settings.max_message_size);
        let mut fates: Vec<Fate> = Vec::with_capacity(claim.rows.len());
        let mut ready = Vec::with_capacity(claim.rows.len());
        let mut large = Vec::new();
        let mut exchanges: HashMap<&str, ExchangeState> = HashMap::new();
        // Each message's span lasts until its batch's confirms are in.
        let mut spans = Vec::new();
        for (index, claimed) in claim.rows.iter().enumerate() {
            fates.push(Fate::Sent);
            let row = match claimed {
                Claimed::Row(row) => row,
                Claimed::Defect(defect) => {
                    fates[index] = Fate::Failed(RowFailure::Decode(defect.error.clone()));
                    continue;
                }
            };
            let traced = trace::message(row);
            let context = traced.as_ref().map(|(_, context)| context);
            let envelope = match self.check(row, limits, context, &mut exchanges).await? {
                Ok(envelope) => envelope,
                Err(failure) => {
                    fates[index] = Fate::Failed(failure);
                    continue;
                }
            };
            spans.extend(traced.map(|(span, _)| span));
            match &row.payload {
                Some(payload) => ready.push((index, payload.as_slice(), row, envelope)),
                None if row.payload_len > self.settings.batch_bytes => {
                    large.push((index, row, envelope));
                }
                None => fates[index] = Fate::Later,
            }
        }
        self.publish_rows(ready, &mut fates).await;
        for (index, row, envelope) in large {
            // One large payload in memory per relay at a time (invariant 10).
            let _lane = self.large_lane.clone().acquire_owned().await;
            let Some(payload) = claim.load_payload(row.id).await? else {
                fates[index] = Fate::Later;
                continue;
            };
            self.ensure_publisher().await?;
            self.publish_rows(vec![(index, &payload, row, envelope)], &mut fates)
                .await;
        }
        drop(spans);
        Ok(fates)
    }

    /// Everything that can fail a row before it is sent: its encoding and
    /// its exchange.
    async fn check<'a>(
        &self,
        row: &'a OutboxRow,
        limits: crate::amqp::Limits,
        trace: Option<&TraceContext>,
        exchanges: &mut HashMap<&'a str, ExchangeState>,
    ) -> Result<Result<Encoded, RowFailure>, BrokerError> {
        let envelope = match encode_traced(row, limits, trace) {
            Ok(envelope) => envelope,
            Err(e) => return Ok(Err(e.into())),
        };
        let state = match exchanges.get(row.exchange.as_str()) {
            Some(state) => state.clone(),
            None => {
                let state = self.broker.exchange_state(&row.exchange).await?;
                exchanges.insert(&row.exchange, state.clone());
                state
            }
        };
        Ok(match state {
            ExchangeState::Exists => Ok(envelope),
            ExchangeState::Missing => Err(RowFailure::ExchangeMissing(row.exchange.clone())),
            ExchangeState::Refused(reason) => Err(RowFailure::ExchangeRefused {
                exchange: row.exchange.clone(),
                reason: reason.to_string(),
            }),
        })
    }

    /// Publishes `rows` on this worker's channel and records each fate. A
    /// channel closed by the broker over one exchange fails the rows of that
    /// exchange (counted toward dead-lettering) and only delays the others.
    async fn publish_rows(
        &mut self,
        rows: Vec<(usize, &[u8], &OutboxRow, Encoded)>,
        fates: &mut [Fate],
    ) {
        if rows.is_empty() {
            return;
        }
        let Some(publisher) = self.publisher.as_ref() else {
            for (index, ..) in rows {
                fates[index] = Fate::Failed(RowFailure::Publish(PublishError::NotConfirmed));
            }
            return;
        };
        let mut slots = Vec::with_capacity(rows.len());
        let mut outgoing = Vec::with_capacity(rows.len());
        for (index, payload, row, envelope) in rows {
            slots.push((index, row));
            outgoing.push(Outgoing { payload, envelope });
        }
        let confirms = publisher
            .publish_batch(outgoing, self.settings.confirm_timeout)
            .await;
        let mut broken = false;
        let mut refused: Option<(String, String)> = None;
        for ((index, row), confirm) in slots.into_iter().zip(confirms) {
            let Err(e) = confirm else { continue };
            broken |= e.breaks_channel();
            if refused.is_none() {
                refused = refused_exchange(&e);
            }
            fates[index] = match &refused {
                Some((exchange, reason)) if *exchange == row.exchange => {
                    Fate::Failed(RowFailure::ExchangeRefused {
                        exchange: exchange.clone(),
                        reason: reason.clone(),
                    })
                }
                _ => Fate::Failed(e.into()),
            };
        }
        if broken || refused.is_some() {
            self.publisher = None;
            self.broker.forget_exchanges();
        }
        if let Some((exchange, reason)) = refused {
            tracing::warn!(
                exchange,
                reason,
                "the broker closed the channel over an exchange; its rows fail, the others retry"
            );
            self.broker.refuse_exchange(&exchange, &reason);
        }
    }

    /// Counts what the broker said about a batch, as it said it (a batch
    /// whose mark then fails is published, and counted, again): one add per
    /// exchange and per failed row, one latency per acked row.
    fn record_fates(&self, rows: &[Claimed], fates: &[Fate]) {
        let acked_at = epoch_now();
        let mut by_exchange: HashMap<&str, u64> = HashMap::new();
        for (claimed, fate) in rows.iter().zip(fates) {
            match (claimed, fate) {
                (Claimed::Row(row), Fate::Sent) => {
                    *by_exchange.entry(row.exchange.as_str()).or_default() += 1;
                }
                (_, Fate::Failed(failure)) => self.metrics.record_failure(failure.reason()),
                _ => {}
            }
        }
        for (exchange, count) in by_exchange {
            self.metrics.record_published(exchange, count);
        }
        let created = rows.iter().zip(fates).filter_map(|pair| match pair {
            (Claimed::Row(row), Fate::Sent) => row.created_epoch,
            _ => None,
        });
        self.metrics.record_deliveries(acked_at, created);
    }

    /// Splits a batch into confirmed ids and failure records.
    fn sort_results(&self, rows: &[Claimed], fates: Vec<Fate>) -> (Vec<i64>, Vec<Failure>) {
        let mut sent = Vec::with_capacity(rows.len());
        let mut failures = Vec::new();
        for (claimed, fate) in rows.iter().zip(fates) {
            let (id, attempts, message_id) = match claimed {
                Claimed::Row(row) => (row.id, row.attempts, Some(row.message_id)),
                Claimed::Defect(d) => (d.id, d.attempts, None),
            };
            let failure = match fate {
                Fate::Sent => {
                    sent.push(id.0);
                    continue;
                }
                Fate::Later => continue,
                Fate::Failed(failure) => failure,
            };
            let attempt = u32::try_from(attempts).unwrap_or(0).saturating_add(1);
            let dead = failure.counts_toward_dead_letter() && attempt >= self.settings.max_attempts;
            let error = failure.to_string();
            let message_id = message_id.map(|m| m.to_string());
            let trace_id = trace::trace_id(claimed);
            if dead {
                tracing::error!(%id, message_id, trace_id, attempt, error = %error,
                    "message dead-lettered: it stays in the table; `outbox-relay replay` retries it");
            } else {
                tracing::warn!(%id, message_id, trace_id, attempt, error = %error,
                    "message not confirmed; will retry");
            }
            failures.push(Failure {
                id,
                error,
                delay: self.settings.backoff.delay_random(attempt),
                dead,
            });
        }
        (sent, failures)
    }
}
