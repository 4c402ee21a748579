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
mod o5;
mod pipeline;
mod purge;
mod send;
mod trace;
mod worker;

pub use backoff::{Backoff, ErrorBackoff};
pub use o5::O5Relay;
pub use pipeline::Pipeline;
pub use purge::run_purger;
pub use send::InFlight;
pub use worker::{Shared, Step, WorkerOptions, run_worker, supervise};

use crate::amqp::{Broker, BrokerError, EncodeError, PublishError, Publisher};
use crate::destination::{DestinationName, Lanes, SendError};
use crate::metrics::{FailReason, Metrics, epoch_now};
use crate::outbox::{Claim, Claimed, Failure, OnSent, Outbox, StoreError};
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

impl RelaySettings {
    /// A claim of `rows` was full: more rows are probably due
    /// ([`BatchReport::full`]).
    pub fn fills(&self, rows: usize) -> bool {
        rows >= self.batch_size
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was due.
    Empty,
    Relayed(BatchReport),
    /// A batch was sent and awaits its confirms; the next step settles it
    /// ([`Pipeline`] only).
    InFlight,
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
    /// The claim was full (`--batch-size` rows): more are probably due, so
    /// the worker claims again at once. After a short claim it first looks
    /// with the cheap existence check: a claim costs a transaction and a
    /// plan, and most of those after a short one would come back empty.
    pub full: bool,
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
    #[error("destination {name}: {error}")]
    Destination {
        name: DestinationName,
        error: SendError,
        /// At least this long before the row is tried again: the
        /// destination's own advice (Retry-After) or its breaker.
        wait: Duration,
    },
}

impl RowFailure {
    /// A lost connection says nothing about the message itself.
    fn counts_toward_dead_letter(&self) -> bool {
        match self {
            Self::Publish(PublishError::Connection(_)) => false,
            Self::Destination { error, .. } => error.counts_toward_dead_letter(),
            _ => true,
        }
    }

    /// Dead-letter at once: the destination refused the message for good.
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Destination { error, .. } if error.is_permanent())
    }

    /// The least delay before the next attempt, beyond the row's backoff.
    fn wait(&self) -> Duration {
        match self {
            Self::Destination { wait, .. } => *wait,
            _ => Duration::ZERO,
        }
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
            Self::Destination { error, .. } => error.reason(),
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
    /// What marking a batch needs, apart from the channel: a batch is marked
    /// while the next one is claimed and sent ([`Pipeline`]).
    marker: Arc<Marker>,
    publisher: Option<Publisher>,
    /// Counts the channels this relay opened: a batch settled after its
    /// channel was replaced must not drop the new one.
    channel_generation: u64,
    /// Shared by a relay's workers: one large payload loaded at a time.
    large_lane: Arc<Semaphore>,
    /// Destinations other than the broker, and the rules routing rows there.
    lanes: Lanes,
}

/// Records what the broker said about a batch and marks it.
struct Marker {
    settings: RelaySettings,
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
            marker: Arc::new(Marker { settings, metrics }),
            publisher: None,
            channel_generation: 0,
            large_lane,
            lanes: Lanes::default(),
        }
    }

    /// Routes rows to `lanes` (destinations other than the broker) as their
    /// rules say; the others go to the broker.
    pub fn with_destinations(mut self, lanes: Lanes) -> Self {
        self.lanes = lanes;
        self
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.marker.settings
    }

    /// Runs one claim → publish → confirm → mark cycle.
    pub async fn relay_batch(&mut self) -> Result<Outcome, RelayError> {
        match self.start_batch().await? {
            None => Ok(Outcome::Empty),
            Some(batch) => self.finish_batch(batch).await,
        }
    }

    /// Closes this worker's channel.
    pub async fn close(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
    }

    /// False once the channel broke (until the next step opens another).
    pub fn has_channel(&self) -> bool {
        self.publisher.is_some()
    }

    /// Forgets the channel, e.g. after a step was abandoned at its deadline.
    pub fn reset_channel(&mut self) {
        self.publisher = None;
    }

    async fn ensure_publisher(&mut self) -> Result<(), BrokerError> {
        if !self.publisher.as_ref().is_some_and(Publisher::is_usable) {
            self.publisher = Some(self.broker.publisher().await?);
            self.channel_generation += 1;
        }
        Ok(())
    }
}

impl Marker {
    /// Counts what the broker said, then marks and commits the batch in the
    /// transaction of its claim.
    async fn mark(
        &self,
        claim: Claim,
        fates: Vec<Fate>,
        [claiming, publishing]: [Duration; 2],
    ) -> Result<Outcome, RelayError> {
        let marking_started = Instant::now();
        self.record_fates(&claim.rows, &fates);
        let (sent, failures) = self.sort_results(&claim.rows, fates);
        let count = claim.rows.len();
        let marking = trace::marking(&claim.rows);
        claim
            .finish(&sent, self.settings.on_sent, &failures)
            .instrument(marking)
            .await?;
        let dead = failures.iter().filter(|f| f.dead).count();
        let timings = [claiming, publishing, marking_started.elapsed()];
        self.metrics.record_dead_lettered(dead as u64);
        self.metrics.record_batch(count, timings);
        Ok(Outcome::Relayed(BatchReport {
            claimed: count,
            sent: sent.len(),
            retried: failures.len() - dead,
            dead,
            timings,
            full: self.settings.fills(count),
        }))
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
                Claimed::Row(row) => (row.id, row.attempts, Some(&row.message_id)),
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
            let counts = failure.counts_toward_dead_letter();
            let dead = counts && (attempt >= self.settings.max_attempts || failure.is_permanent());
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
                delay: self
                    .settings
                    .backoff
                    .delay_random(attempt)
                    .max(failure.wait()),
                dead,
                counts,
            });
        }
        (sent, failures)
    }
}
