//! The step of an o5 application's outbox table (`--table-format o5`):
//! claim due rows → read each row's `data` as o5's sidecar reads it and
//! convert it as the o5 bridge does ([`Bridge::from_outbox_row`]: the row's
//! id is the message's id, stamped with `--o5-app` / `--o5-env`) → publish
//! the batch with confirms → delete the confirmed rows and record the
//! failures, in the claim's transaction.
//!
//! Invariants, as for the relay's own table (see [`super`]): a row is
//! deleted only after its own ack, in the transaction that claimed it; the
//! broker is reached before anything is claimed; a row is the unit of
//! failure. Where o5's sidecar stops its loop on a row it cannot parse, and
//! retries a failed publish forever, here:
//! - a row whose `data` is not a `Message` (or cannot be published as one:
//!   no service or method, too large) is dead-lettered at once with the
//!   reason: no retry can change it;
//! - a row the broker did not confirm gets attempts + 1, `last_error` and a
//!   backoff, and is dead-lettered at `--max-attempts` (a lost connection
//!   does not count, as on the relay's own table).
//!
//! The step is not pipelined: an o5 application writes its outbox a
//! message per business transaction, and the plain claim → publish →
//! confirm → delete turn drains that with room to spare.

use super::{BatchReport, Fate, Outcome, RelayError, RelaySettings, RowFailure, Step};
use crate::amqp::publish::{Outgoing, refused_exchange};
use crate::amqp::{Broker, BrokerError, EncodeError, Encoded, ExchangeState, Limits, Publisher};
use crate::amqp::{PublishError, encode_new};
use crate::grpc::o5::Bridge;
use crate::metrics::{Metrics, epoch_now};
use crate::outbox::ClaimLimits;
use crate::outbox::o5::{O5Failure, O5Outbox, O5Row};
use std::sync::Arc;
use std::time::Instant;

/// One worker's relay of an o5 outbox table, with its own channel.
pub struct O5Relay {
    table: O5Outbox,
    broker: Arc<Broker>,
    bridge: Bridge,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    publisher: Option<Publisher>,
}

/// A row ready to publish.
struct Ready {
    index: usize,
    payload: Vec<u8>,
    envelope: Encoded,
}

impl O5Relay {
    /// `settings.on_sent` does not apply: confirmed rows are deleted.
    pub fn new(
        table: O5Outbox,
        broker: Arc<Broker>,
        bridge: Bridge,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            table,
            broker,
            bridge,
            settings,
            metrics,
            publisher: None,
        }
    }

    /// Runs one claim → publish → confirm → delete cycle.
    pub async fn relay_batch(&mut self) -> Result<Outcome, RelayError> {
        self.ensure_publisher().await?;
        let started = Instant::now();
        let claim = self
            .table
            .claim(&ClaimLimits {
                rows: self.settings.batch_size,
                max_payload: self.settings.max_message_size,
                batch_bytes: self.settings.batch_bytes,
                idle_timeout: self.settings.claim_idle_timeout,
            })
            .await?;
        if claim.is_empty() {
            claim.finish(&[], &[]).await?;
            return Ok(Outcome::Empty);
        }
        let claimed = Instant::now();
        let fates = self.publish(&claim.rows).await?;
        let published = Instant::now();
        let mut sent = Vec::with_capacity(claim.rows.len());
        let mut failures = Vec::new();
        let mut later = 0;
        for (row, fate) in claim.rows.iter().zip(fates) {
            match fate {
                Fate::Sent => sent.push(row.id.clone()),
                Fate::Failed(failure) => failures.push(self.failure(row, &failure)),
                Fate::Later => later += 1,
            }
        }
        let count = claim.rows.len() - later;
        let full = self.settings.fills(claim.rows.len());
        self.metrics
            .record_published(&self.bridge.exchange, sent.len() as u64);
        claim.finish(&sent, &failures).await?;
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
            full,
        }))
    }

    async fn ensure_publisher(&mut self) -> Result<(), BrokerError> {
        if !self.publisher.as_ref().is_some_and(Publisher::is_usable) {
            self.publisher = Some(self.broker.publisher().await?);
        }
        Ok(())
    }

    /// Converts the rows, publishes those that convert, and gives each
    /// row's fate, in order.
    async fn publish(&mut self, rows: &[O5Row]) -> Result<Vec<Fate>, BrokerError> {
        let limits = self.broker.limits(self.settings.max_message_size);
        let mut fates = Vec::with_capacity(rows.len());
        let mut ready = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            match self.prepare(row, limits) {
                Ok(Some((payload, envelope))) => {
                    fates.push(Fate::Sent);
                    ready.push(Ready {
                        index,
                        payload,
                        envelope,
                    });
                }
                Ok(None) => fates.push(Fate::Later),
                Err(failure) => fates.push(Fate::Failed(failure)),
            }
        }
        if ready.is_empty() {
            return Ok(fates);
        }
        let exchange = &self.bridge.exchange;
        let state = self.broker.exchange_state(exchange).await?;
        let refusal = || match &state {
            ExchangeState::Exists => None,
            ExchangeState::Missing => Some(RowFailure::ExchangeMissing(exchange.clone())),
            ExchangeState::Refused(reason) => Some(RowFailure::ExchangeRefused {
                exchange: exchange.clone(),
                reason: reason.to_string(),
            }),
        };
        let (Some(publisher), None) = (&self.publisher, refusal()) else {
            for r in &ready {
                let failure = refusal().unwrap_or_else(|| PublishError::NotConfirmed.into());
                fates[r.index] = Fate::Failed(failure);
            }
            return Ok(fates);
        };
        let mut slots = Vec::with_capacity(ready.len());
        let mut envelopes = Vec::with_capacity(ready.len());
        let mut payloads = Vec::with_capacity(ready.len());
        for r in ready {
            slots.push(r.index);
            envelopes.push(r.envelope);
            payloads.push(r.payload);
        }
        let outgoing = payloads
            .iter()
            .zip(envelopes)
            .map(|(payload, envelope)| Outgoing { payload, envelope })
            .collect();
        let results = publisher
            .publish_batch(outgoing, self.settings.confirm_timeout)
            .await;
        self.settle(&slots, results, &mut fates);
        Ok(fates)
    }

    /// Records the broker's answers for the rows at `slots`. A channel the
    /// broker closed over the o5 exchange blames it; a broken channel is
    /// replaced by the next step.
    fn settle(
        &mut self,
        slots: &[usize],
        results: Vec<Result<(), PublishError>>,
        fates: &mut [Fate],
    ) {
        let mut broke = false;
        let mut refused = None;
        for (&index, result) in slots.iter().zip(results) {
            let Err(e) = result else { continue };
            broke |= e.breaks_channel();
            if refused.is_none() {
                refused = refused_exchange(&e);
            }
            fates[index] = Fate::Failed(match &refused {
                Some((blamed, reason)) if *blamed == self.bridge.exchange => {
                    RowFailure::ExchangeRefused {
                        exchange: blamed.clone(),
                        reason: reason.clone(),
                    }
                }
                _ => e.into(),
            });
        }
        if broke || refused.is_some() {
            self.publisher = None;
            self.broker.forget_exchanges();
        }
        if let Some((exchange, reason)) = refused {
            tracing::warn!(
                exchange,
                reason,
                "the broker closed the channel over the o5 exchange"
            );
            self.broker.refuse_exchange(&exchange, &reason);
        }
    }

    /// The row's message, encoded; `None` for a row left for the next
    /// claim; or why it can never be published.
    fn prepare(
        &self,
        row: &O5Row,
        limits: Limits,
    ) -> Result<Option<(Vec<u8>, Encoded)>, RowFailure> {
        let len = usize::try_from(row.data_len).unwrap_or(usize::MAX);
        let Some(data) = &row.data else {
            if len <= self.settings.max_message_size {
                return Ok(None);
            }
            let max = self.settings.max_message_size;
            return Err(EncodeError::TooLarge { len, max }.into());
        };
        let new = self
            .bridge
            .from_outbox_row(&row.id, data.as_bytes())
            .map_err(|e| RowFailure::Decode(e.to_string()))?;
        let Some(message_id) = &new.message_id else {
            return Err(RowFailure::Decode("the row has no id".to_owned()));
        };
        // The table keeps no insert time: the message is stamped as sent.
        let envelope = encode_new(&new, message_id, epoch_now() as i64, limits)?;
        Ok(Some((new.payload, envelope)))
    }

    /// The record of one failed row, logged.
    fn failure(&self, row: &O5Row, failure: &RowFailure) -> O5Failure {
        self.metrics.record_failure(failure.reason());
        let attempt = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        // Nothing about the row changes by trying again.
        let hopeless = matches!(failure, RowFailure::Decode(_) | RowFailure::Encode(_));
        let dead = hopeless
            || (failure.counts_toward_dead_letter() && attempt >= self.settings.max_attempts);
        let error = failure.to_string();
        if dead {
            tracing::error!(id = row.id, attempt, error = %error,
                "o5 outbox row dead-lettered: it stays in the table with dead_at and last_error");
        } else {
            tracing::warn!(id = row.id, attempt, error = %error,
                "o5 outbox row not confirmed; will retry");
        }
        O5Failure {
            id: row.id.clone(),
            error,
            delay: self.settings.backoff.delay_random(attempt),
            dead,
        }
    }
}

impl Step for O5Relay {
    fn step(&mut self) -> impl Future<Output = Result<Outcome, RelayError>> + Send {
        self.relay_batch()
    }

    /// The channel is (re)opened first, as before a claim: an idle relay
    /// keeps its broker connection, and its health, current.
    async fn has_due(&mut self) -> Result<bool, RelayError> {
        self.ensure_publisher().await?;
        Ok(self.table.has_due().await?)
    }

    /// Nothing is in flight between steps.
    async fn drain(&mut self) {}

    fn abandon(&mut self) {
        self.publisher = None;
    }

    async fn close(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
    }
}
