//! One consuming session: a channel with a consumer on every planned queue,
//! the calls of the worker in flight, and how the session ends.
//!
//! Invariants owned here:
//! - manual acks and a prefetch of `--worker-prefetch` per consumer, and
//!   never more than `--worker-prefetch` calls in flight in all (a delivery
//!   is taken from the consumers only when a call slot is free);
//! - a session ends when the relay stops, when the worker is unreachable
//!   (a call's connection was refused), or on a broker failure; it then
//!   cancels its consumers, gives back (nack, requeue) what it had received
//!   but not started, lets the calls in flight finish and settle until a
//!   deadline, and gives back the messages of calls still unfinished then.
//!   Nothing is acked on the way out that the worker did not answer OK.

use super::Shared;
use super::call::Verdict;
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
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The relay is stopping.
    Stopped,
    /// The worker refused a connection: wait until it is back.
    WorkerDown,
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

/// Declares the plan, consumes until an end, then winds down; `drain_until`
/// says how long calls in flight may take to finish when stopping.
pub async fn run(
    shared: &Shared,
    plan: &plan::Plan,
    stop: &CancellationToken,
    drain_until: impl Fn() -> Instant,
) -> Result<Report, BrokerError> {
    plan::declare(&shared.broker, plan).await?;
    let channel = shared.broker.open_channel().await?;
    channel
        .basic_qos(shared.settings.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(BrokerError::Channel)?;
    let settler = Settler {
        publisher: shared.broker.publisher().await?,
        max_attempts: shared.settings.max_attempts,
        backoff: shared.settings.backoff,
        confirm_timeout: shared.settings.confirm_timeout,
    };
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

    let limit = usize::from(shared.settings.prefetch);
    let mut inflight = FuturesUnordered::new();
    let mut pending: HashSet<u64> = HashSet::new();
    let mut delivered = false;
    let end = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break End::Stopped,
            Some((tag, settled)) = inflight.next(), if !inflight.is_empty() => {
                pending.remove(&tag);
                match record(shared, settled) {
                    Ok(DeliveryOutcome::Requeued) => break End::WorkerDown,
                    Ok(outcome) => delivered |= outcome == DeliveryOutcome::Ok,
                    Err(e) => break End::Broker(e.to_string()),
                }
            }
            next = consumers.next(), if inflight.len() < limit => match next {
                Some((queue, Ok(delivery))) => {
                    pending.insert(delivery.delivery_tag);
                    inflight.push(deliver(shared, &settler, queue, delivery));
                }
                Some((_, Err(e))) => break End::Broker(format!("consuming failed: {e}")),
                None => break End::Broker("the broker cancelled the consumers".into()),
            },
        }
    };

    // Wind down: no new deliveries; give back what was received but not started.
    for tag in tags {
        let _ = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }
    while let Some(Some((_, Ok(delivery)))) = consumers.next().now_or_never() {
        requeue(&delivery.acker).await;
        shared.metrics.record_delivery(DeliveryOutcome::Requeued);
    }
    // Calls in flight have their own deadline; a stop meanwhile shortens
    // the wait to the shutdown's.
    let deadline = match end {
        End::Stopped => drain_until(),
        _ => Instant::now() + shared.settings.call_timeout + shared.settings.confirm_timeout,
    };
    let drained = timeout_at(deadline, async {
        while let Some((tag, settled)) = inflight.next().await {
            pending.remove(&tag);
            if let Ok(DeliveryOutcome::Ok) = record(shared, settled) {
                delivered = true;
            }
        }
    });
    let stopped = async {
        stop.cancelled().await;
        sleep_until(drain_until()).await;
    };
    tokio::select! {
        _ = drained => {}
        () = stopped => {}
    }
    drop(inflight);
    if !pending.is_empty() {
        tracing::warn!(
            unfinished = pending.len(),
            "calls still in flight at the deadline: their messages go back to the queue"
        );
    }
    let give_back = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    for tag in pending {
        let _ = channel.basic_nack(tag, give_back).await;
        shared.metrics.record_delivery(DeliveryOutcome::Requeued);
    }
    settler.publisher.close().await;
    let _ = channel.close(200, "delivery session over".into()).await;
    Ok(Report { end, delivered })
}

/// Counts a settled message; passes on why settling failed.
fn record(
    shared: &Shared,
    settled: Result<DeliveryOutcome, SettleError>,
) -> Result<DeliveryOutcome, SettleError> {
    if let Ok(outcome) = &settled {
        shared.metrics.record_delivery(*outcome);
    }
    settled
}

/// Calls the worker for one message and settles it; gives its tag back.
#[tracing::instrument(name = "deliver", skip_all, fields(
    queue = %queue,
    message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str()),
))]
async fn deliver(
    shared: &Shared,
    settler: &Settler,
    queue: Arc<str>,
    delivery: Delivery,
) -> (u64, Result<DeliveryOutcome, SettleError>) {
    let verdict = match inbound::address(&delivery.properties, &delivery.data) {
        Err(e) => Verdict::Dead(Status::invalid_argument(e.to_string())),
        Ok(addressed) => call(shared, &delivery, addressed).await,
    };
    match &verdict {
        Verdict::Ok => {}
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
