//! The relay step: claim → publish → await confirms → mark, in one database
//! transaction.
//!
//! Invariants owned here:
//! - a row is marked sent only after its own broker ack, inside the
//!   transaction that claimed it (invariant 1); if that transaction fails to
//!   commit, the rows stay pending and are published again (at-least-once);
//! - the broker is reached *before* rows are claimed, so an unreachable broker
//!   claims nothing;
//! - every failed row gets attempts + 1, `last_error` and a backoff; a row
//!   reaching `max_attempts` is dead-lettered, except for connection losses,
//!   which are the broker's fault and never dead-letter a message (invariant 3);
//! - the batch is bounded in time by the confirm timeout, and the database
//!   kills a session idle in transaction beyond the claim bound (invariant 4).

pub mod backoff;
mod purge;
mod worker;

pub use backoff::{Backoff, ErrorBackoff};
pub use purge::run_purger;
pub use worker::{WorkerOptions, run_worker};

use crate::amqp::publish::Outgoing;
use crate::amqp::{
    Broker, BrokerError, EncodeError, ExchangeState, PublishError, Publisher, encode,
};
use crate::outbox::{Failure, OnSent, Outbox, OutboxRow, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tunables of the relay step.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_size: usize,
    pub confirm_timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub on_sent: OnSent,
    /// Largest payload published; larger rows fail as unencodable.
    pub max_message_size: usize,
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

impl From<tokio_postgres::Error> for RelayError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for RelayError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Store(e.into())
    }
}

/// Why one row was not sent this time.
#[derive(Debug, thiserror::Error)]
enum RowFailure {
    #[error("cannot encode the row as an AMQP message: {0}")]
    Encode(#[from] EncodeError),
    #[error("exchange {0:?} does not exist")]
    ExchangeMissing(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl RowFailure {
    /// A lost connection says nothing about the message itself.
    fn counts_toward_dead_letter(&self) -> bool {
        !matches!(self, Self::Publish(PublishError::Connection(_)))
    }
}

/// One worker's relay: its own channel, sharing the pool and the connection.
pub struct Relay {
    outbox: Outbox,
    broker: Arc<Broker>,
    settings: RelaySettings,
    publisher: Option<Publisher>,
}

impl Relay {
    pub fn new(outbox: Outbox, broker: Arc<Broker>, settings: RelaySettings) -> Self {
        Self {
            outbox,
            broker,
            settings,
            publisher: None,
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// Runs one claim → publish → mark cycle.
    pub async fn relay_batch(&mut self) -> Result<Outcome, RelayError> {
        self.ensure_publisher().await?;
        let started = Instant::now();
        let mut client = self.outbox.pool().get().await?;
        let tx = client.transaction().await?;
        let rows = self
            .outbox
            .claim(&tx, self.settings.batch_size as i64)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Outcome::Empty);
        }
        kill_point!("relay_after_claim");
        let claimed = Instant::now();
        let results = self.publish(&rows).await?;
        kill_point!("relay_after_confirm");
        let published = Instant::now();
        let (sent, failures) = self.sort_results(&rows, results);
        self.outbox
            .complete(&tx, &sent, self.settings.on_sent)
            .await?;
        self.outbox.record_failures(&tx, &failures).await?;
        kill_point!("relay_before_commit");
        tx.commit().await?;
        let dead = failures.iter().filter(|f| f.dead).count();
        Ok(Outcome::Relayed(BatchReport {
            claimed: rows.len(),
            sent: sent.len(),
            retried: failures.len() - dead,
            dead,
            timings: [claimed - started, published - claimed, published.elapsed()],
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

    /// Encodes, checks exchanges, publishes; one result per row.
    async fn publish(
        &mut self,
        rows: &[OutboxRow],
    ) -> Result<Vec<Result<(), RowFailure>>, RelayError> {
        let mut results: Vec<Result<(), RowFailure>> = Vec::with_capacity(rows.len());
        let mut outgoing = Vec::with_capacity(rows.len());
        let mut slots = Vec::with_capacity(rows.len());
        let mut exchanges: HashMap<&str, ExchangeState> = HashMap::new();
        for (index, row) in rows.iter().enumerate() {
            results.push(Ok(()));
            let envelope = match encode(row, self.settings.max_message_size) {
                Ok(envelope) => envelope,
                Err(e) => {
                    results[index] = Err(e.into());
                    continue;
                }
            };
            let state = match exchanges.get(row.exchange.as_str()) {
                Some(state) => *state,
                None => {
                    let state = self.broker.exchange_state(&row.exchange).await?;
                    exchanges.insert(&row.exchange, state);
                    state
                }
            };
            if state == ExchangeState::Missing {
                results[index] = Err(RowFailure::ExchangeMissing(row.exchange.clone()));
                continue;
            }
            outgoing.push(Outgoing {
                payload: &row.payload,
                envelope,
            });
            slots.push(index);
        }
        if outgoing.is_empty() {
            return Ok(results);
        }
        let publisher = self.publisher.as_ref().expect("ensured before claiming");
        let confirms = publisher
            .publish_batch(outgoing, self.settings.confirm_timeout)
            .await;
        let mut broken = false;
        for (slot, confirm) in slots.into_iter().zip(confirms) {
            if let Err(e) = confirm {
                broken |= e.breaks_channel();
                results[slot] = Err(e.into());
            }
        }
        if broken {
            self.publisher = None;
            self.broker.forget_exchanges();
        }
        Ok(results)
    }

    /// Splits a batch into confirmed ids and failure records.
    fn sort_results(
        &self,
        rows: &[OutboxRow],
        results: Vec<Result<(), RowFailure>>,
    ) -> (Vec<i64>, Vec<Failure>) {
        let mut sent = Vec::with_capacity(rows.len());
        let mut failures = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            let Err(failure) = result else {
                sent.push(row.id.0);
                continue;
            };
            let attempt = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
            let dead = failure.counts_toward_dead_letter() && attempt >= self.settings.max_attempts;
            let error = failure.to_string();
            if dead {
                tracing::error!(id = %row.id, message_id = %row.message_id, attempt, error = %error,
                    "message dead-lettered: it stays in the table; `outbox-relay replay` retries it");
            } else {
                tracing::warn!(id = %row.id, message_id = %row.message_id, attempt, error = %error,
                    "message not confirmed; will retry");
            }
            failures.push(Failure {
                id: row.id,
                error,
                delay: self.settings.backoff.delay_random(attempt),
                dead,
            });
        }
        (sent, failures)
    }
}
