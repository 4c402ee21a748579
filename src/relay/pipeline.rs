//! The worker's step, pipelined: while one batch's confirms are
//! outstanding, the next batch is claimed and written to the channel, so
//! the broker always has work and never waits for the relay to mark and
//! claim (a strict claim → publish → confirm → mark turn leaves it idle
//! between batches).
//!
//! Invariants kept:
//! - each batch is marked only after its own confirms, in the transaction
//!   of its own claim (invariant 1): batches overlap, their claims do not
//!   share anything;
//! - at most two claims per worker are open, both bounded by the worker's
//!   step timeout (invariant 4): a step settles the older batch before it
//!   returns, and a step that fails settles (or releases) the newer one
//!   too, so no claim waits through a backoff;
//! - shutdown settles what is in flight ([`Pipeline::drain`], invariant 6).

use super::send::settle_batch;
use super::{InFlight, Outcome, Relay, RelayError};

/// A relay whose step keeps one batch in flight ahead of the one it marks.
pub struct Pipeline {
    relay: Relay,
    ahead: Option<InFlight>,
}

impl Pipeline {
    pub fn new(relay: Relay) -> Self {
        Self { relay, ahead: None }
    }

    /// Claims and sends the next batch while it settles the previous one.
    /// `Relayed` reports the settled batch; `InFlight` says one was sent
    /// and nothing settled yet; `Empty` that nothing was due or in flight.
    ///
    /// The two run concurrently, not one after the other: the previous
    /// batch holds its claim's connection until it is marked, and through a
    /// pooler with fewer server connections than claims (PgBouncer in
    /// transaction mode), a next claim waiting for a connection must not
    /// keep that batch from being marked and letting its connection go.
    ///
    /// Behind a short batch (fewer rows than `--batch-size`: the backlog was
    /// empty when it was claimed) it only settles: a claim ahead would
    /// mostly come back empty, and an empty claim costs a transaction and
    /// the claim's plan (at 100 msg/s, 3.7 claims per message and 3 ms of
    /// PostgreSQL CPU per message). The worker then looks with the cheap
    /// existence check first ([`super::BatchReport::full`]).
    pub async fn step(&mut self) -> Result<Outcome, RelayError> {
        let (next, settled) = match self.ahead.take() {
            None => (self.relay.start_batch().await, None),
            Some(previous) if !self.relay.marker.settings.fills(previous.rows()) => {
                (Ok(None), Some(self.relay.finish_batch(previous).await))
            }
            Some(previous) => {
                let settling = settle_batch(
                    self.relay.broker.clone(),
                    self.relay.marker.clone(),
                    previous,
                );
                let (next, (settled, broke)) = tokio::join!(self.relay.start_batch(), settling);
                self.relay.forget_broken(broke);
                (next, Some(settled))
            }
        };
        // A failed claim: the settled batch's outcome is already recorded
        // (its metrics, its marks); the error is what the worker acts on.
        self.ahead = next?;
        let Some(settled) = settled else {
            return Ok(if self.ahead.is_some() {
                Outcome::InFlight
            } else {
                Outcome::Empty
            });
        };
        // A failed step, or a channel that broke under the settled batch:
        // the batch in flight cannot fare better, and its claim must not
        // wait through another step (a stalled broker would double it).
        if settled.is_err() || !self.relay.has_channel() {
            self.drain().await;
        }
        settled
    }

    /// Settles the batch in flight, if any (at shutdown, or before a
    /// backoff). Its failure is the next step's to report: the rows it
    /// could not mark are claimed again.
    pub async fn drain(&mut self) -> Option<Outcome> {
        let batch = self.ahead.take()?;
        match self.relay.finish_batch(batch).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::debug!(error = %e, "the batch in flight could not be settled; its rows stay pending");
                None
            }
        }
    }

    /// Forgets the batch in flight (its claim is released at once, its rows
    /// published again later) and the channel: after a step was abandoned at
    /// its deadline.
    pub fn abandon(&mut self) {
        self.ahead = None;
        self.relay.reset_channel();
    }

    /// Whether any row is due, without claiming (while idle). The channel
    /// is (re)opened first, as before a claim: an idle relay keeps its broker
    /// connection, and its health, current.
    pub async fn has_due(&mut self) -> Result<bool, RelayError> {
        self.relay.ensure_publisher().await?;
        Ok(self.relay.outbox.has_due().await?)
    }

    /// Closes the worker's channel.
    pub async fn close(&mut self) {
        self.relay.close().await;
    }
}
