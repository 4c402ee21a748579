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
//!   flight; consuming starts only once a probe connected to the worker, and
//!   when it cannot be connected to (a call's connect fails, or the probe
//!   repeated while consuming does), consuming stops ([`session`] ends) and
//!   resumes only once a probe connects, probes backing off (no tight
//!   loop), messages waiting in their queues meanwhile;
//! - what it is doing (starting, consuming, the worker unreachable, the
//!   broker down) is always in [`health`], for `/readyz`, `/api/health`
//!   and gRPC health;
//! - SIGTERM: consuming stops, calls in flight finish within
//!   `--shutdown-timeout`, the unfinished go back to their queues.

pub mod call;
pub mod dead_queue;
pub mod health;
pub mod inbound;
pub mod plan;
mod session;
pub mod settle;

pub use plan::PlanError;

use crate::amqp::Broker;
use crate::config::{ConfigError, RunArgs};
use crate::grpc::Catalog;
use crate::grpc::descriptors;
use crate::metrics::Metrics;
use crate::relay::{Backoff, ErrorBackoff};
use call::Worker;
use health::{DeliveryHealth, Phase, describe};
use plan::Plan;
use rustls::client::danger::ServerCertVerifier;
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
    /// What the health endpoints report.
    pub status: Arc<DeliveryHealth>,
}

/// Where the worker's services come from.
enum Services {
    Known(Arc<Catalog>, Plan),
    /// Its reflection, read at start (retried until it answers), over the
    /// descriptor sets given as well.
    Reflection {
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
    status: Arc<DeliveryHealth>,
}

impl Deliver {
    /// `None` unless `--worker-addr` is set. With descriptor sets, the
    /// services are read (and refused) now; `broker` should be a connection
    /// of its own (a publisher-throttled connection also throttles acks).
    /// `status` is where it reports its state (a fresh one when `None`);
    /// `tls` checks the certificate of an https:// worker
    /// (`WorkerArgs::tls`).
    pub fn build(
        args: &RunArgs,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        status: Option<Arc<DeliveryHealth>>,
        tls: Option<Arc<dyn ServerCertVerifier>>,
    ) -> anyhow::Result<Option<Self>> {
        let worker_args = &args.worker;
        let Some(addr) = &worker_args.worker_addr else {
            return Ok(None);
        };
        let status = status.unwrap_or_else(|| Arc::new(DeliveryHealth::new(addr.0.clone())));
        let worker = Worker::new(&addr.0, worker_args.worker_timeout, tls)
            .map_err(|e| ConfigError::WorkerTls(describe(&e)))?;
        let queue = worker_args.queue(args.grpc.o5_app.as_deref());
        let o5_exchange = args.grpc.o5_exchange();
        let services = if worker_args.worker_reflection {
            Services::Reflection {
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
            status,
        }))
    }

    /// Delivers until `stop`, then winds down within `--shutdown-timeout`.
    pub async fn run(self, stop: CancellationToken) {
        let status = self.status.clone();
        let (catalog, plan) = match self.services {
            Services::Known(catalog, plan) => (catalog, plan),
            Services::Reflection { sets } => {
                let found = reflected(
                    &self.worker,
                    &sets,
                    (self.queue.as_deref(), &self.o5_exchange),
                    &status,
                    &stop,
                )
                .await;
                let Some(found) = found else {
                    if stop.is_cancelled() {
                        status.set(Phase::Stopped, None);
                    }
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
            status,
        };
        supervise(&shared, &plan, &stop).await;
        shared.status.set(Phase::Stopped, None);
        shared.broker.close().await;
    }
}

/// Runs sessions until `stop`: declares the queues (so that messages for
/// the worker are kept even before it is ever up), waits until the worker
/// accepts a connection, consumes. After a broker failure it backs off,
/// after the worker could not be connected to it probes until it is back.
async fn supervise(shared: &Shared, plan: &Plan, stop: &CancellationToken) {
    let mut broker_backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut probe_backoff = ErrorBackoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let shutdown = shared.settings.shutdown_timeout;
    let drain = shutdown.saturating_sub(SHUTDOWN_MARGIN.min(shutdown / 2));
    // After a session ended by the worker, wait a backoff before probing:
    // a probe that connects while calls cannot must not loop tightly.
    let mut worker_failed = false;
    // A failure's state stays (with its `since`) until consuming resumes.
    let step = "declaring the queues";
    shared.status.set(Phase::Starting { step }, None);
    shared.status.planned(&plan.queues);
    while !stop.is_cancelled() {
        let report = match plan::declare(&shared.broker, plan).await {
            Err(e) => Err(e),
            Ok(()) => {
                if !reach_worker(shared, &mut probe_backoff, worker_failed, stop).await {
                    break;
                }
                let step = "starting the consumers";
                shared.status.set(Phase::Starting { step }, None);
                session::run(shared, plan, stop, || Instant::now() + drain).await
            }
        };
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
        worker_failed = false;
        match end {
            session::End::Stopped => break,
            session::End::WorkerDown(error) => {
                shared.status.set(Phase::WorkerUnreachable, Some(error));
                worker_failed = true;
            }
            session::End::Broker(error) => {
                let retry_in = broker_backoff.next_delay();
                tracing::warn!(error, ?retry_in, "delivery paused by a broker failure");
                shared.status.set(Phase::BrokerDown, Some(error));
                sleep_unless_stopped(retry_in, stop).await;
            }
        }
    }
}

/// Probes the worker, backing off, until it accepts a connection (first
/// waiting a backoff when `after_failure`); false when stopped first.
async fn reach_worker(
    shared: &Shared,
    backoff: &mut ErrorBackoff,
    after_failure: bool,
    stop: &CancellationToken,
) -> bool {
    let worker = shared.worker.addr();
    let mut failures = 0u32;
    if after_failure {
        tracing::warn!(%worker, "the worker cannot be connected to: consuming paused until it is back");
        sleep_unless_stopped(backoff.next_delay(), stop).await;
    }
    loop {
        if stop.is_cancelled() {
            return false;
        }
        match shared.worker.probe().await {
            Ok(()) => {
                if after_failure || failures > 0 {
                    tracing::info!(%worker, "the worker is back: consuming resumed");
                }
                return true;
            }
            Err(e) => {
                let error = call::connect_failure(&e);
                failures += 1;
                if failures == 1 && !after_failure {
                    tracing::warn!(%worker, error, "the worker cannot be connected to: nothing is consumed until it can");
                } else {
                    tracing::debug!(error, "the worker is still unreachable");
                }
                shared.status.set(Phase::WorkerUnreachable, Some(error));
            }
        }
        sleep_unless_stopped(backoff.next_delay(), stop).await;
    }
}

async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// Reads the worker's services from its reflection, retrying until it
/// answers; `None` when stopped first or when they cannot be delivered to
/// (`status` then says why). `target` is the worker's queue and the o5
/// exchange.
async fn reflected(
    worker: &Worker,
    sets: &[std::path::PathBuf],
    target: (Option<&str>, &str),
    status: &DeliveryHealth,
    stop: &CancellationToken,
) -> Option<(Arc<Catalog>, Plan)> {
    let url = worker.addr();
    let halt = |error: String| {
        tracing::error!(
            url,
            error,
            "the worker's services cannot be delivered to; fix them and restart"
        );
        status.set(Phase::Halted, Some(error));
        None
    };
    let step = "reading the worker's services from its reflection";
    status.set(Phase::Starting { step }, None);
    let mut backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempts = 0u32;
    let pool = loop {
        let base = match descriptors::pool_from_files(sets) {
            Ok(base) => base,
            Err(e) => return halt(format!("cannot load --worker-descriptor-set: {e}")),
        };
        let endpoint = worker.endpoint().clone();
        match descriptors::pool_from_endpoint(endpoint, REFLECTION_TIMEOUT, base).await {
            Ok(pool) => break pool,
            Err(e) => {
                attempts += 1;
                let retry_in = backoff.next_delay();
                // A connection that fails is the worker unreachable; any
                // other failure is its reflection's.
                let (phase, error) = match &e {
                    descriptors::ReflectionError::Connect(c) => {
                        (Phase::WorkerUnreachable, call::connect_failure(c))
                    }
                    _ => (Phase::Starting { step }, describe(&e)),
                };
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(
                        url,
                        error,
                        attempts,
                        ?retry_in,
                        "the worker's gRPC reflection does not answer yet; nothing is delivered meanwhile"
                    );
                }
                status.set(phase, Some(format!("reading its reflection: {error}")));
                sleep_unless_stopped(retry_in, stop).await;
                if stop.is_cancelled() {
                    return None;
                }
            }
        }
    };
    let (queue, o5_exchange) = target;
    let planned = Catalog::from_pool(&pool)
        .map_err(PlanError::from)
        .and_then(|catalog| Ok((Plan::of(&catalog, queue, o5_exchange)?, catalog)));
    match planned {
        Ok((plan, catalog)) => Some((Arc::new(catalog), plan)),
        Err(e) => halt(e.to_string()),
    }
}
