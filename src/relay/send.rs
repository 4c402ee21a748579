//! Sending a claimed batch, and settling it once its confirms are in.
//!
//! [`Relay::start_batch`] claims, checks and writes a batch to the channel
//! and returns it [`InFlight`], its confirms outstanding;
//! [`Relay::finish_batch`] waits for them and marks the batch in the
//! transaction that holds its claim (invariant 1). Between the two the
//! worker may start the next batch ([`super::Pipeline`]), so the broker
//! always has a batch to work on while the relay marks and claims.
//!
//! A row that cannot be sent (unreadable, unencodable, an exchange that is
//! missing or refused) fails before its batch is written; a channel closed
//! by the broker over one exchange fails the rows of that exchange (counted
//! toward dead-lettering) and only delays the others.

use super::{Fate, Marker, Outcome, Relay, RelayError, RowFailure, trace};
use crate::amqp::publish::{Outgoing, SentBatch, refused_exchange};
use crate::amqp::{
    Broker, BrokerError, Encoded, ExchangeState, Limits, PublishError, encode_traced,
};
use crate::destination::{Dispatch, Lane, Message};
use crate::outbox::{Claim, ClaimLimits, Claimed, OutboxRow};
use crate::telemetry::TraceContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{Instrument, Span};

/// The rows of a batch sent to one destination other than the broker.
struct Routed {
    lane: Arc<Lane>,
    /// Row indexes, in the order of the messages sent.
    slots: Vec<usize>,
    dispatch: Dispatch,
}

/// Rows of a batch bound for one destination, before they are sent.
struct Bound {
    lane: Arc<Lane>,
    slots: Vec<usize>,
    messages: Vec<Message>,
}

/// A claimed batch written to the channel, its confirms outstanding.
pub struct InFlight {
    claim: Claim,
    fates: Vec<Fate>,
    /// Row indexes of the messages in `sent`, in publish order.
    slots: Vec<usize>,
    sent: Option<SentBatch>,
    /// The channel `sent` went out on.
    generation: u64,
    /// Rows routed to other destinations, a send per destination.
    routed: Vec<Routed>,
    started: Instant,
    claimed: Instant,
    /// The publish span and the messages' spans: they end with the confirms.
    spans: (Span, Vec<Span>),
}

impl InFlight {
    /// Rows claimed for this batch.
    pub fn rows(&self) -> usize {
        self.claim.rows.len()
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("rows", &self.claim.rows.len())
            .field("sent", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Claims due rows and writes them to the channel; `None` when nothing
    /// was due. The broker is reached before anything is claimed.
    pub async fn start_batch(&mut self) -> Result<Option<InFlight>, RelayError> {
        self.ensure_publisher().await?;
        let started = Instant::now();
        let claiming = trace::claiming();
        let claim = self
            .outbox
            .claim(&ClaimLimits {
                rows: self.marker.settings.batch_size,
                max_payload: self.marker.settings.max_message_size,
                batch_bytes: self.marker.settings.batch_bytes,
                idle_timeout: self.marker.settings.claim_idle_timeout,
            })
            .instrument(claiming.clone())
            .await?;
        claiming.record("messaging.batch.message_count", claim.rows.len());
        drop(claiming);
        if claim.is_empty() {
            claim.finish(&[], self.marker.settings.on_sent, &[]).await?;
            return Ok(None);
        }
        kill_point!("relay_after_claim");
        let claimed = Instant::now();
        let publishing = trace::publishing(&claim.rows);
        let mut batch = InFlight {
            fates: Vec::with_capacity(claim.rows.len()),
            slots: Vec::new(),
            sent: None,
            generation: self.channel_generation,
            routed: Vec::new(),
            started,
            claimed,
            spans: (publishing.clone(), Vec::new()),
            claim,
        };
        self.send(&mut batch).instrument(publishing).await?;
        Ok(Some(batch))
    }

    /// Waits for the batch's confirms, then marks and commits it.
    pub async fn finish_batch(&mut self, batch: InFlight) -> Result<Outcome, RelayError> {
        let (outcome, broke) = settle_batch(self.broker.clone(), self.marker.clone(), batch).await;
        self.forget_broken(broke);
        outcome
    }

    /// After [`settle_batch`]: forgets the channel the batch broke, unless
    /// it was replaced meanwhile (a later batch may be in flight on the new one).
    pub(super) fn forget_broken(&mut self, broke: Option<u64>) {
        if broke == Some(self.channel_generation) {
            self.publisher = None;
        }
    }

    /// Encodes and checks each row, writes the ready ones to the channel,
    /// and publishes rows too large for the claim's byte budget one at a
    /// time (confirmed before this returns).
    async fn send(&mut self, batch: &mut InFlight) -> Result<(), RelayError> {
        let limits = self.broker.limits(self.marker.settings.max_message_size);
        let claim = &batch.claim;
        let mut ready: Vec<(usize, &[u8], Encoded)> = Vec::with_capacity(claim.rows.len());
        let mut large = Vec::new();
        let mut exchanges: HashMap<&str, ExchangeState> = HashMap::new();
        let mut bound: Vec<Bound> = Vec::new();
        let mut large_routed = Vec::new();
        for (index, claimed) in claim.rows.iter().enumerate() {
            batch.fates.push(Fate::Sent);
            let row = match claimed {
                Claimed::Row(row) => row,
                Claimed::Defect(defect) => {
                    batch.fates[index] = Fate::Failed(RowFailure::Decode(defect.error.clone()));
                    continue;
                }
            };
            let traced = trace::message(row);
            let context = traced.as_ref().map(|(_, context)| context);
            if let Some(lane) = self.lanes.route(&row.exchange) {
                let fate = self.bind(index, row, lane, context, &mut bound, &mut large_routed);
                if let Some(fate) = fate {
                    batch.fates[index] = fate;
                } else {
                    batch.spans.1.extend(traced.map(|(span, _)| span));
                }
                continue;
            }
            let envelope = match self.check(row, limits, context, &mut exchanges).await? {
                Ok(envelope) => envelope,
                Err(failure) => {
                    batch.fates[index] = Fate::Failed(failure);
                    continue;
                }
            };
            batch.spans.1.extend(traced.map(|(span, _)| span));
            match &row.payload {
                Some(payload) => ready.push((index, payload.as_slice(), envelope)),
                None if row.payload_len > self.marker.settings.batch_bytes => {
                    large.push((index, row, envelope));
                }
                None => batch.fates[index] = Fate::Later,
            }
        }
        let (slots, outgoing): (Vec<usize>, Vec<Outgoing<'_>>) = ready
            .into_iter()
            .map(|(index, payload, envelope)| (index, Outgoing { payload, envelope }))
            .unzip();
        if let Some(publisher) = &self.publisher
            && !slots.is_empty()
        {
            batch.sent = Some(
                publisher
                    .send_batch(outgoing, self.marker.settings.confirm_timeout)
                    .await,
            );
            batch.slots = slots;
        } else {
            for index in slots {
                batch.fates[index] = Fate::Failed(PublishError::NotConfirmed.into());
            }
        }
        let timeout = self.marker.settings.confirm_timeout;
        batch.routed = bound
            .into_iter()
            .map(|b| Routed {
                dispatch: b.lane.dispatch(b.messages, timeout),
                lane: b.lane,
                slots: b.slots,
            })
            .collect();
        for (index, row, lane) in large_routed {
            let _lane = self.large_lane.clone().acquire_owned().await;
            let Some(payload) = claim.load_payload(row.id).await? else {
                batch.fates[index] = Fate::Later;
                continue;
            };
            let trace = trace::message(row);
            let context = trace.as_ref().map(|(_, context)| context);
            batch.fates[index] = match Message::of_row(row, payload.into(), context) {
                Ok(message) => {
                    let results = lane.dispatch(vec![message], timeout).results(1).await;
                    settle_routed(&lane, &[index], results, &mut batch.fates);
                    continue;
                }
                Err(e) => refused(&lane, e),
            };
        }
        for (index, row, envelope) in large {
            // One large payload in memory per relay at a time (invariant 10).
            let _lane = self.large_lane.clone().acquire_owned().await;
            let Some(payload) = claim.load_payload(row.id).await? else {
                batch.fates[index] = Fate::Later;
                continue;
            };
            self.ensure_publisher().await?;
            let Some(publisher) = &self.publisher else {
                continue;
            };
            let outgoing = vec![Outgoing {
                payload: &payload,
                envelope,
            }];
            let results = publisher
                .publish_batch(outgoing, self.marker.settings.confirm_timeout)
                .await;
            if settle(
                &self.broker,
                &claim.rows,
                &[index],
                results,
                &mut batch.fates,
            ) {
                self.publisher = None;
            }
        }
        Ok(())
    }

    /// Adds a row routed to `lane` to that destination's send; `Some` is
    /// the row's fate when it is not sent with this batch. A row whose
    /// payload the claim left for later (above the batch's byte budget) is
    /// sent alone, as the broker's large rows are.
    fn bind<'a>(
        &self,
        index: usize,
        row: &'a OutboxRow,
        lane: &Arc<Lane>,
        trace: Option<&TraceContext>,
        bound: &mut Vec<Bound>,
        large: &mut Vec<(usize, &'a OutboxRow, Arc<Lane>)>,
    ) -> Option<Fate> {
        let settings = &self.marker.settings;
        let Some(payload) = &row.payload else {
            return Some(if row.payload_len > settings.max_message_size {
                Fate::Failed(RowFailure::Encode(crate::amqp::EncodeError::TooLarge {
                    len: row.payload_len,
                    max: settings.max_message_size,
                }))
            } else if row.payload_len > settings.batch_bytes {
                large.push((index, row, lane.clone()));
                Fate::Later
            } else {
                Fate::Later
            });
        };
        let message = match Message::of_row(row, bytes::Bytes::copy_from_slice(payload), trace) {
            Ok(message) => message,
            Err(e) => return Some(refused(lane, e)),
        };
        let at = match bound.iter().position(|b| Arc::ptr_eq(&b.lane, lane)) {
            Some(at) => at,
            None => {
                bound.push(Bound {
                    lane: lane.clone(),
                    slots: Vec::new(),
                    messages: Vec::new(),
                });
                bound.len() - 1
            }
        };
        bound[at].slots.push(index);
        bound[at].messages.push(message);
        None
    }

    /// Everything that can fail a row before it is sent: its encoding and
    /// its exchange.
    async fn check<'a>(
        &self,
        row: &'a OutboxRow,
        limits: Limits,
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
}

/// Waits for `batch`'s confirms, records them, marks and commits it: all
/// that needs no channel, so that a worker can settle one batch while it
/// claims and sends the next. Also returns the generation of the channel
/// the batch broke, if it did.
pub(super) async fn settle_batch(
    broker: Arc<Broker>,
    marker: Arc<Marker>,
    batch: InFlight,
) -> (Result<Outcome, RelayError>, Option<u64>) {
    let InFlight {
        claim,
        mut fates,
        slots,
        sent,
        generation,
        routed,
        started,
        claimed,
        spans,
    } = batch;
    let mut broke = None;
    if let Some(sent) = sent {
        let results = sent.confirmed().await;
        if settle(&broker, &claim.rows, &slots, results, &mut fates) {
            broke = Some(generation);
        }
    }
    for routed in routed {
        let results = routed.dispatch.results(routed.slots.len()).await;
        settle_routed(&routed.lane, &routed.slots, results, &mut fates);
    }
    drop(spans);
    kill_point!("relay_after_confirm");
    let published = Instant::now();
    let outcome = marker
        .mark(claim, fates, [claimed - started, published - claimed])
        .await;
    (outcome, broke)
}

/// Records the broker's answers for the rows at `slots`; true when the
/// channel they went out on broke. A channel the broker closed over one
/// exchange blames that exchange's rows only.
fn settle(
    broker: &Broker,
    rows: &[Claimed],
    slots: &[usize],
    results: Vec<Result<(), PublishError>>,
    fates: &mut [Fate],
) -> bool {
    let mut broken = false;
    let mut refused: Option<(String, String)> = None;
    for (&index, confirm) in slots.iter().zip(results) {
        let Err(e) = confirm else { continue };
        broken |= e.breaks_channel();
        if refused.is_none() {
            refused = refused_exchange(&e);
        }
        let exchange = match &rows[index] {
            Claimed::Row(row) => Some(row.exchange.as_str()),
            Claimed::Defect(_) => None,
        };
        fates[index] = match &refused {
            Some((blamed, reason)) if Some(blamed.as_str()) == exchange => {
                Fate::Failed(RowFailure::ExchangeRefused {
                    exchange: blamed.clone(),
                    reason: reason.clone(),
                })
            }
            _ => Fate::Failed(e.into()),
        };
    }
    let broke = broken || refused.is_some();
    if broke {
        broker.forget_exchanges();
    }
    if let Some((exchange, reason)) = refused {
        tracing::warn!(
            exchange,
            reason,
            "the broker closed the channel over an exchange; its rows fail, the others retry"
        );
        broker.refuse_exchange(&exchange, &reason);
    }
    broke
}

/// Records a destination's answers for the rows at `slots`, with the wait
/// its breaker or its own advice asks for.
fn settle_routed(
    lane: &Lane,
    slots: &[usize],
    results: Vec<Result<(), crate::destination::SendError>>,
    fates: &mut [Fate],
) {
    let breaker = lane.retry_in();
    for (&index, result) in slots.iter().zip(results) {
        let Err(error) = result else { continue };
        let wait = error.retry_after().unwrap_or_default().max(breaker);
        fates[index] = Fate::Failed(RowFailure::Destination {
            name: lane.name().clone(),
            error,
            wait,
        });
    }
}

/// A row the destination could never take as it is.
fn refused(lane: &Lane, reason: String) -> Fate {
    Fate::Failed(RowFailure::Destination {
        name: lane.name().clone(),
        error: crate::destination::SendError::Refused(reason),
        wait: std::time::Duration::ZERO,
    })
}
