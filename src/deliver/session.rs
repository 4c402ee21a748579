//! One consuming session: a channel with a consumer on every planned queue,
//! the calls of the worker in flight, and how the session ends.
//!
//! Invariants owned here:
//! - manual acks and a prefetch of `--worker-prefetch` per consumer, and
//!   never more than `--worker-prefetch` calls in flight in all (a delivery
//!   is taken from the consumers only when a call slot is free);
//! - a session ends when the relay stops, when the worker is unreachable
//!   (a call could not connect, or the probe repeated every
//!   [`PROBE_EVERY`] while consuming, with or without traffic, failed), or
//!   on a broker failure; it then
//!   cancels its consumers, gives back (nack, requeue) what it had received
//!   but not started, lets the calls in flight finish and settle until a
//!   deadline, and gives back the messages of calls still unfinished then.
//!   Nothing is acked on the way out that the worker did not answer OK.

use super::Shared;
use super::call::{Verdict, Worker, connect_failure};
use super::inbound::{self, Addressed};
use super::plan;
use super::settle::{Received, SettleError, Settler, requeue};
use crate::amqp::BrokerError;
use crate::metrics::DeliveryOutcome;
use futures::stream::{FuturesUnordered, SelectAll};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How often a consuming session checks that the worker still accepts a
/// connection: a worker gone while no message arrives is reported (and
/// consuming paused) within about this long, not at the next message.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The relay is stopping.
    Stopped,
    /// The worker could not be connected to (why): wait until it is back.
    WorkerDown(String),
    /// The broker failed (a consumer ended, a copy or an ack failed).
    Broker(String),
}

/// How a session went: how it ended, and whether the worker answered OK
/// at least once (which resets the backoffs).
#[derive(Debug)]
pub struct Report {
    pub end: End,
    pub delivered: bool,
}

type Consumed = (Arc<str>, lapin::Result<Delivery>);
type Stream = Pin<Box<dyn futures::Stream<Item = Consumed> + Send>>;
type Settling<'a> =
    Pin<Box<dyn Future<Output = (u64, Result<DeliveryOutcome, SettleError>)> + Send + 'a>>;

/// Consumes the plan's queues (declared) until an end, then winds down;
/// `drain_until` says how long calls in flight may take to finish when
/// stopping.
pub async fn run(
    shared: &Shared,
    plan: &plan::Plan,
    stop: &CancellationToken,
    drain_until: impl Fn() -> Instant,
) -> Result<Report, BrokerError> {
    let mut session = Session::open(shared, plan).await?;
    let end = session.consume(stop).await;
    Ok(session.wind_down(end, stop, drain_until).await)
}

/// A channel consuming the plan's queues, and the calls in flight.
struct Session<'a> {
    shared: &'a Shared,
    channel: lapin::Channel,
    settler: Arc<Settler>,
    consumers: SelectAll<Stream>,
    tags: Vec<lapin::types::ShortString>,
    inflight: FuturesUnordered<Settling<'a>>,
    /// Delivery tags of the calls in flight.
    pending: HashSet<u64>,
    /// The worker answered OK at least once.
    delivered: bool,
}

impl<'a> Session<'a> {
    /// Sets the prefetch and starts a consumer per queue of `plan`.
    async fn open(shared: &'a Shared, plan: &plan::Plan) -> Result<Self, BrokerError> {
        let channel = shared.broker.open_channel().await?;
        channel
            .basic_qos(shared.settings.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(BrokerError::Channel)?;
        let settler = Arc::new(Settler {
            publisher: shared.broker.publisher().await?,
            max_attempts: shared.settings.max_attempts,
            backoff: shared.settings.backoff,
            confirm_timeout: shared.settings.confirm_timeout,
        });
        let mut consumers: SelectAll<Stream> = SelectAll::new();
        let mut tags = Vec::new();
        for queue in &plan.queues {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::Channel)?;
            tags.push(consumer.tag());
            let queue: Arc<str> = queue.as_str().into();
            consumers.push(Box::pin(consumer.map(move |d| (queue.clone(), d))));
        }
        tracing::info!(queues = ?plan.queues, worker = %shared.worker.addr(), "delivering to the worker");
        shared.status.consuming(&plan.queues);
        Ok(Self {
            shared,
            channel,
            settler,
            consumers,
            tags,
            inflight: FuturesUnordered::new(),
            pending: HashSet::new(),
            delivered: false,
        })
    }

    /// Takes deliveries while a call slot is free and settles the calls as
    /// they end, until something ends the session.
    async fn consume(&mut self, stop: &CancellationToken) -> End {
        let limit = usize::from(self.shared.settings.prefetch);
        let watched = watch(&self.shared.worker);
        tokio::pin!(watched);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return End::Stopped,
                error = &mut watched => return End::WorkerDown(error),
                Some((tag, settled)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    match self.settled(tag, settled) {
                        Ok(DeliveryOutcome::Requeued) => {
                            return End::WorkerDown("a call could not connect to the worker".into());
                        }
                        Ok(_) => {}
                        Err(e) => return End::Broker(e.to_string()),
                    }
                }
                next = self.consumers.next(), if self.inflight.len() < limit => match next {
                    Some((queue, Ok(delivery))) => {
                        self.pending.insert(delivery.delivery_tag);
                        let settler = self.settler.clone();
                        self.inflight.push(Box::pin(deliver(self.shared, settler, queue, delivery)));
                    }
                    Some((_, Err(e))) => return End::Broker(format!("consuming failed: {e}")),
                    None => return End::Broker("the broker cancelled the consumers".into()),
                },
            }
        }
    }

    /// Records a call's end; passes on why settling failed.
    fn settled(
        &mut self,
        tag: u64,
        settled: Result<DeliveryOutcome, SettleError>,
    ) -> Result<DeliveryOutcome, SettleError> {
        self.pending.remove(&tag);
        if let Ok(outcome) = &settled {
            self.shared.metrics.record_delivery(*outcome);
            self.delivered |= *outcome == DeliveryOutcome::Ok;
        }
        settled
    }

    /// Stops consuming, gives back what was received but not started, lets
    /// the calls in flight end (their own deadline; a stop's when stopping),
    /// gives back the unfinished and closes.
    async fn wind_down(
        mut self,
        end: End,
        stop: &CancellationToken,
        drain_until: impl Fn() -> Instant,
    ) -> Report {
        for tag in std::mem::take(&mut self.tags) {
            let _ = self
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
        }
        while let Some(Some((_, Ok(delivery)))) = self.consumers.next().now_or_never() {
            requeue(&delivery.acker).await;
            self.shared
                .metrics
                .record_delivery(DeliveryOutcome::Requeued);
        }
        let deadline = match end {
            End::Stopped => drain_until(),
            _ => {
                let settings = &self.shared.settings;
                Instant::now() + settings.call_timeout + settings.confirm_timeout
            }
        };
        let stopped = async {
            stop.cancelled().await;
            sleep_until(drain_until()).await;
        };
        let drained = timeout_at(deadline, async {
            while let Some((tag, settled)) = self.inflight.next().await {
                let _ = self.settled(tag, settled);
            }
        });
        tokio::select! {
            _ = drained => {}
            () = stopped => {}
        }
        self.give_back_unfinished().await;
        if let Ok(settler) = Arc::try_unwrap(self.settler) {
            settler.publisher.close().await;
        }
        let _ = self
            .channel
            .close(200, "delivery session over".into())
            .await;
        Report {
            end,
            delivered: self.delivered,
        }
    }

    /// Drops the calls still in flight and gives their messages back.
    async fn give_back_unfinished(&mut self) {
        self.inflight = FuturesUnordered::new();
        if self.pending.is_empty() {
            return;
        }
        tracing::warn!(
            unfinished = self.pending.len(),
            "calls still in flight at the deadline: their messages go back to the queue"
        );
        let give_back = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        for tag in std::mem::take(&mut self.pending) {
            let _ = self.channel.basic_nack(tag, give_back).await;
            self.shared
                .metrics
                .record_delivery(DeliveryOutcome::Requeued);
        }
    }
}

/// Probes the worker every [`PROBE_EVERY`]; returns why once it fails.
async fn watch(worker: &Worker) -> String {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if let Err(e) = worker.probe().await {
            return connect_failure(&e);
        }
    }
}

/// Calls the worker for one message and settles it; gives its tag back.
#[tracing::instrument(name = "deliver", skip_all, fields(
    queue = %queue,
    message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str()),
))]
async fn deliver(
    shared: &Shared,
    settler: Arc<Settler>,
    queue: Arc<str>,
    delivery: Delivery,
) -> (u64, Result<DeliveryOutcome, SettleError>) {
    let verdict = match inbound::address(&delivery.properties, &delivery.data) {
        Err(e) => Verdict::Dead(Status::invalid_argument(e.to_string())),
        Ok(addressed) => call(shared, &delivery, addressed).await,
    };
    match &verdict {
        Verdict::Ok => {}
        Verdict::NotOurs => {
            tracing::debug!("an o5 reply to another application: acked, not delivered")
        }
        Verdict::Retry(status) | Verdict::Dead(status) => tracing::warn!(
            code = crate::metrics::code_name(status.code()),
            error = status.message(),
            permanent = matches!(verdict, Verdict::Dead(_)),
            "the worker did not take the message"
        ),
        Verdict::Unreachable(status) => {
            tracing::warn!(error = %status, "the worker is unreachable; the message goes back to its queue")
        }
    }
    let received = Received {
        queue: &queue,
        properties: &delivery.properties,
        data: &delivery.data,
        acker: &delivery.acker,
    };
    let settled = settler.settle(&received, verdict).await;
    if let Err(e) = &settled {
        tracing::warn!(error = %e, "settling failed; the message goes back to its queue");
    }
    (delivery.delivery_tag, settled)
}

/// Calls the method `addressed` names, if the worker implements it.
async fn call(shared: &Shared, delivery: &Delivery, addressed: Addressed) -> Verdict {
    if let (Some(me), Some(to)) = (&shared.identity, &addressed.reply_to)
        && me != to
    {
        return Verdict::NotOurs;
    }
    let path = addressed.path();
    if shared.catalog.lookup(&path).is_none() {
        return Verdict::Dead(Status::unimplemented(format!(
            "the worker does not implement {path}"
        )));
    }
    let metadata = inbound::metadata(&delivery.properties);
    let (result, took) = shared.worker.call(&path, addressed.body, metadata).await;
    shared.metrics.record_worker_call(took);
    Verdict::of(result)
}
