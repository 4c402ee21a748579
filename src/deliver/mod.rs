//! The receiving side: messages on RabbitMQ delivered to the worker
//! application's own gRPC endpoints (`--worker-addr`).
//!
//! The relay consumes the queues of the services the worker implements
//! ([`plan`]), finds the method each message names ([`inbound`]), calls it
//! with the message body as the request ([`call`]), and settles the message
//! by the answer ([`settle`]): OK acks it; a transient failure moves it to
//! `<queue>.retry`, whence it returns after a backoff, until
//! `--max-attempts`; a permanent one moves it to `<queue>.dead`.
//! [`dead_queue`] is the operator's side of `<queue>.dead`.
//!
//! Invariants (the design's invariant 11 and its neighbours):
//! - a message is acked only after the worker answered OK, or after its copy
//!   to the retry or dead-letter queue was confirmed; whatever dies (the
//!   worker, the relay, the broker connection) the message stays in a
//!   durable queue, to be delivered again (at least once, never lost);
//! - the worker is never flooded: at most `--worker-prefetch` calls in
//!   flight; when it cannot be connected to, consuming stops ([`session`] ends)
//!   and resumes only once a probe connects, probes backing off (no tight
//!   loop), messages waiting in their queues meanwhile;
//! - SIGTERM: consuming stops, calls in flight finish within
//!   `--shutdown-timeout`, the unfinished go back to their queues.

pub mod call;
pub mod dead_queue;
pub mod inbound;
pub mod plan;
mod session;
pub mod settle;

pub use plan::PlanError;

use crate::amqp::Broker;
use crate::config::RunArgs;
use crate::grpc::Catalog;
use crate::grpc::descriptors;
use crate::metrics::Metrics;
use crate::relay::{Backoff, ErrorBackoff};
use call::Worker;
use plan::Plan;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds one attempt to read the worker's reflection.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Part of `--shutdown-timeout` kept for giving back unfinished messages
/// and closing, after the calls in flight had their time.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// How hard the worker is driven, and how failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub prefetch: u16,
    pub call_timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub confirm_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// What every session uses.
pub struct Shared {
    pub worker: Worker,
    pub catalog: Arc<Catalog>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// `<--o5-env>/<--o5-app>`, when both are set: an o5 reply addressed to
    /// anyone else is not this worker's (o5 replies share a routing key).
    pub identity: Option<String>,
}

/// Where the worker's services come from.
enum Services {
    Known(Arc<Catalog>, Plan),
    /// Its reflection, read at start (retried until it answers), over the
    /// descriptor sets given as well.
    Reflection {
        url: String,
        sets: Vec<std::path::PathBuf>,
    },
}

/// Delivery to the worker, configured, not yet running.
pub struct Deliver {
    worker: Worker,
    services: Services,
    queue: Option<String>,
    o5_exchange: String,
    identity: Option<String>,
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Deliver {
    /// `None` unless `--worker-addr` is set. With descriptor sets, the
    /// services are read (and refused) now; `broker` should be a connection
    /// of its own (a publisher-throttled connection also throttles acks).
    pub fn build(
        args: &RunArgs,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let worker_args = &args.worker;
        let Some(addr) = &worker_args.worker_addr else {
            return Ok(None);
        };
        let worker = Worker::new(&addr.0, worker_args.worker_timeout)?;
        let queue = worker_args.queue(args.grpc.o5_app.as_deref());
        let o5_exchange = args.grpc.o5_exchange();
        let services = if worker_args.worker_reflection {
            Services::Reflection {
                url: addr.0.clone(),
                sets: worker_args.worker_descriptor_sets.clone(),
            }
        } else {
            let pool = descriptors::pool_from_files(&worker_args.worker_descriptor_sets)
                .map_err(PlanError::from)?;
            let catalog = Catalog::from_pool(&pool).map_err(PlanError::from)?;
            let plan = Plan::of(&catalog, queue.as_deref(), &o5_exchange)?;
            Services::Known(Arc::new(catalog), plan)
        };
        let settings = Settings {
            prefetch: worker_args.worker_prefetch.get(),
            call_timeout: worker_args.worker_timeout,
            max_attempts: args.max_attempts.get(),
            backoff: Backoff {
                base: args.backoff_base,
                max: args.backoff_max,
            },
            confirm_timeout: args.confirm_timeout,
            shutdown_timeout: args.shutdown_timeout,
        };
        let identity = match (&args.grpc.o5_env, &args.grpc.o5_app) {
            (Some(env), Some(app)) => Some(format!("{env}/{app}")),
            _ => None,
        };
        Ok(Some(Self {
            worker,
            services,
            queue,
            o5_exchange,
            identity,
            broker,
            metrics,
            settings,
        }))
    }

    /// Delivers until `stop`, then winds down within `--shutdown-timeout`.
    pub async fn run(self, stop: CancellationToken) {
        let (catalog, plan) = match self.services {
            Services::Known(catalog, plan) => (catalog, plan),
            Services::Reflection { url, sets } => {
                let Some(found) =
                    reflected(&url, &sets, self.queue.as_deref(), &self.o5_exchange, &stop).await
                else {
                    return;
                };
                found
            }
        };
        let shared = Shared {
            worker: self.worker,
            catalog,
            broker: self.broker,
            metrics: self.metrics,
            settings: self.settings,
            identity: self.identity,
        };
        supervise(&shared, &plan, &stop).await;
        shared.broker.close().await;
    }
}

/// Runs sessions until `stop`: after a broker failure it backs off, after
/// the worker could not be connected to it probes until the worker is back.
async fn supervise(shared: &Shared, plan: &Plan, stop: &CancellationToken) {
    let mut broker_backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut probe_backoff = ErrorBackoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let shutdown = shared.settings.shutdown_timeout;
    let drain = shutdown.saturating_sub(SHUTDOWN_MARGIN.min(shutdown / 2));
    while !stop.is_cancelled() {
        let report = session::run(shared, plan, stop, || Instant::now() + drain).await;
        let end = match report {
            Ok(report) => {
                if report.delivered {
                    broker_backoff.reset();
                    probe_backoff.reset();
                }
                report.end
            }
            Err(e) => session::End::Broker(e.to_string()),
        };
        match end {
            session::End::Stopped => break,
            session::End::WorkerDown => wait_for_worker(shared, &mut probe_backoff, stop).await,
            session::End::Broker(error) => {
                let retry_in = broker_backoff.next_delay();
                tracing::warn!(error, ?retry_in, "delivery paused by a broker failure");
                sleep_unless_stopped(retry_in, stop).await;
            }
        }
    }
}

/// Probes the worker, backing off, until it accepts a connection.
async fn wait_for_worker(shared: &Shared, backoff: &mut ErrorBackoff, stop: &CancellationToken) {
    tracing::warn!(worker = %shared.worker.addr(), "the worker cannot be connected to: consuming paused until it is back");
    loop {
        sleep_unless_stopped(backoff.next_delay(), stop).await;
        if stop.is_cancelled() {
            return;
        }
        match shared.worker.probe().await {
            Ok(()) => {
                tracing::info!(worker = %shared.worker.addr(), "the worker is back: consuming resumed");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "the worker is still unreachable"),
        }
    }
}

async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// Reads the worker's services from its reflection, retrying until it
/// answers; `None` when stopped first or when they cannot be delivered to.
async fn reflected(
    url: &str,
    sets: &[std::path::PathBuf],
    queue: Option<&str>,
    o5_exchange: &str,
    stop: &CancellationToken,
) -> Option<(Arc<Catalog>, Plan)> {
    let mut backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempts = 0u32;
    let pool = loop {
        let base = match descriptors::pool_from_files(sets) {
            Ok(base) => base,
            Err(e) => {
                tracing::error!(error = %e, "cannot load --worker-descriptor-set");
                return None;
            }
        };
        match descriptors::pool_from_reflection(url, REFLECTION_TIMEOUT, base).await {
            Ok(pool) => break pool,
            Err(e) => {
                attempts += 1;
                let retry_in = backoff.next_delay();
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(url, error = %e, attempts, ?retry_in,
                        "the worker's gRPC reflection does not answer yet; nothing is delivered meanwhile");
                }
                sleep_unless_stopped(retry_in, stop).await;
                if stop.is_cancelled() {
                    return None;
                }
            }
        }
    };
    let planned = Catalog::from_pool(&pool)
        .map_err(PlanError::from)
        .and_then(|catalog| Ok((Plan::of(&catalog, queue, o5_exchange)?, catalog)));
    match planned {
        Ok((plan, catalog)) => Some((Arc::new(catalog), plan)),
        Err(e) => {
            tracing::error!(url, error = %e, "the worker's services cannot be delivered to; fix them and restart");
            None
        }
    }
}
