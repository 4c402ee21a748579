//! Wiring for `outbox-relay run`: builds the pool, the broker connection and
//! the workers, and runs them until a cancellation token fires. Used by
//! `main` and by the integration tests alike.
//!
//! Shutdown (invariant 6): cancelling the token stops new claims; every
//! worker finishes the batch it has in flight; `run_until_stopped` returns
//! once all have, or fails when `--shutdown-timeout` passes first. Delivery
//! to the worker application (`--worker-addr`) stops consuming and lets its
//! calls in flight finish within the same deadline.
//!
//! With `--table-format o5` the workers relay an o5 application's own
//! table ([`O5Relay`]); the gRPC ingress and the JSON API, which work on
//! the relay's own table format, are off (the API says so on `/api`).

use crate::amqp::Broker;
use crate::config::{GrpcListen, HttpListen, IngressMode, RunArgs, TableFormat, Wakeup};
use crate::deliver::Deliver;
use crate::deliver::health::DeliveryHealth;
use crate::destination::{Lane, Lanes};
use crate::grpc::Ingress;
use crate::grpc::o5::Bridge;
use crate::grpc::sink::SinkOptions;
use crate::health::Health;
use crate::http::api::ApiSettings;
use crate::http::{HttpPort, Probes};
use crate::metrics::{Metrics, TABLE_GAUGES_EVERY, run_table_gauges};
use crate::outbox::o5::O5Outbox;
use crate::outbox::{
    ConnectionCount, O5_CHANNEL, OnSent, Outbox, PoolOptions, WakeChannel, connect_counted_pool,
    connect_pool, run_listener,
};
use crate::relay::{
    Backoff, O5Relay, Pipeline, Relay, RelaySettings, Shared, Step, WorkerOptions, run_purger,
    supervise,
};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds connecting to, and waiting for, either service.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time the database allows a claiming session to sit idle in a
/// transaction beyond the relay's own step bound before killing it.
const IDLE_TX_MARGIN: Duration = Duration::from_secs(5);
/// Database connections of the gRPC ingress, apart from the workers' own so
/// that neither can starve the other: its group-commit writers (outbox
/// mode) and its health probes.
const INGRESS_CONNECTIONS: usize = 8;
/// Group-commit writers of the ingress (outbox mode): fewer than its
/// connections, so that under load calls queue into shared transactions
/// while the other connections serve direct mode and health probes.
const INGRESS_WRITERS: usize = 4;
/// Database connections of the HTTP port: its readiness checks and the
/// table gauges' refresh, apart from the workers' so that neither waits on
/// the other.
const MONITOR_CONNECTIONS: usize = 2;
/// Database connections of the JSON API (`/api`), apart from the probes'
/// so that browsing never makes the sidecar look unready. Created on first
/// use only.
const API_CONNECTIONS: usize = 2;
/// How long the HTTP port may take to close once the workers have drained.
const HTTP_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// What `/api/...` answers with `--table-format o5`.
const O5_API_REFUSAL: &str = "the JSON API and the console read the relay's own table format; this relay runs --table-format o5 (see the README's o5 section for an o5 table's dead rows)";

/// A configured relay, connected to its database, ready to run.
pub struct App {
    args: RunArgs,
    outbox: Outbox,
    broker: Arc<Broker>,
    wake: Arc<Notify>,
    health: Arc<Health>,
    /// One large payload in memory at a time across the workers.
    large_lane: Arc<Semaphore>,
    /// Destinations other than the broker (`--destination`, `--route`).
    lanes: Lanes,
    ingress: Option<Ingress>,
    /// Delivery to the worker application, with `--worker-addr`.
    deliver: Option<Deliver>,
    metrics: Arc<Metrics>,
    /// With `--table-format o5`: the o5 application's table, which the
    /// workers relay instead of `outbox`'s (whose pool they share).
    o5: Option<O5Outbox>,
    /// The HTTP port, bound, with the database connections it reads through.
    http: Option<(HttpPort, Outbox)>,
    /// Cancelled when shutdown begins (`/readyz` turns 503).
    stopping: CancellationToken,
}

impl App {
    /// Validates `args`, connects to the database and checks that the outbox
    /// table exists. An unreachable broker is not an error: the workers keep
    /// retrying, and rows wait in the table meanwhile.
    pub async fn build(mut args: RunArgs) -> anyhow::Result<Self> {
        args.validate()?;
        let o5_format = args.db.table_format == TableFormat::O5;
        if o5_format {
            // Validated: --grpc-addr was left at its default.
            args.grpc.grpc_addr = GrpcListen::Off;
        }
        // Before connecting anywhere: a bad --worker-ca-file stops the start.
        let worker_tls = args.worker.tls()?;
        warn_on_default_urls(&args);
        let opened = ConnectionCount::default();
        let pool = connect_counted_pool(
            relay_pg_config(&args),
            args.db.database_url.tls(),
            PoolOptions {
                // Two claims per worker (one in flight, one marked), the wake-up listener, a spare.
                max_size: 2 * args.concurrency.get() + 2,
                timeout: SERVICE_TIMEOUT,
            },
            &opened,
        )
        .context("building the database pool")?;
        let outbox = Outbox::new(pool, args.db.schema.clone())
            .with_connection_count(opened)
            .with_ordering_on_dead(args.ordering_on_dead);
        let checking = || format!("checking the outbox table at {}", args.db.database_url);
        let o5 = if o5_format {
            let table = O5Outbox::open(outbox.pool().clone(), &args.db.schema)
                .await
                .with_context(checking)?;
            Some(table)
        } else {
            outbox.ensure_table().await.with_context(checking)?;
            None
        };
        let broker = Arc::new(Broker::new(args.amqp.amqp_url.clone(), SERVICE_TIMEOUT));
        let ingress_pool = connect_pool(
            relay_pg_config(&args),
            args.db.database_url.tls(),
            PoolOptions {
                max_size: INGRESS_CONNECTIONS,
                timeout: SERVICE_TIMEOUT,
            },
        )
        .context("building the ingress's database pool")?;
        let sink = SinkOptions {
            mode: args.grpc.ingress_mode,
            confirm_timeout: args.confirm_timeout,
            max_message_size: args.max_message_size,
            writers: INGRESS_WRITERS,
        };
        let wake = Arc::new(Notify::new());
        // Delivery's state, reported by the probes and gRPC health.
        let delivery = args
            .worker
            .worker_addr
            .as_ref()
            .map(|addr| Arc::new(DeliveryHealth::new(addr.0.clone())));
        let health = Arc::new(Health::new(args.concurrency.get()).with_delivery(delivery.clone()));
        let metrics = Metrics::for_process(health.clone(), broker.clone(), outbox.clone());
        let metrics = Arc::new(match args.http.http_addr {
            HttpListen::On(_) => metrics,
            HttpListen::Off => metrics.without_recording(),
        });
        let lanes = open_destinations(&args, &metrics)?;
        let ingress = Ingress::build(
            &args.grpc,
            Outbox::new(ingress_pool, args.db.schema.clone()),
            broker.clone(),
            sink,
            wake.clone(),
            health.clone(),
            metrics.clone(),
        )
        .await?;
        // A connection of its own: one throttled by the broker for
        // publishing would hold back the consumers' acks too.
        let deliver = Deliver::build(
            &args,
            Arc::new(Broker::new(args.amqp.amqp_url.clone(), SERVICE_TIMEOUT)),
            metrics.clone(),
            delivery,
            worker_tls,
        )?;
        let stopping = CancellationToken::new();
        let http = match args.http.http_addr {
            HttpListen::Off => None,
            HttpListen::On(addr) => {
                let monitor = http_outbox(&args, MONITOR_CONNECTIONS, "the HTTP port's")?;
                let probes = Probes {
                    metrics: metrics.clone(),
                    health: health.clone(),
                    liveness_window: args.http.liveness_window,
                    database: monitor.clone(),
                    broker: (args.grpc.ingress_mode == IngressMode::Direct).then(|| broker.clone()),
                    stopping: stopping.clone(),
                    destinations: lanes.clone(),
                };
                if o5_format {
                    let port = HttpPort::bind(addr, probes, None).await?;
                    Some((port.refusing_api(O5_API_REFUSAL), monitor))
                } else {
                    let api = ApiSettings {
                        outbox: http_outbox(&args, API_CONNECTIONS, "the JSON API's")?,
                        broker: broker.clone(),
                        wake: wake.clone(),
                        max_message_size: args.max_message_size,
                        token: args
                            .http
                            .admin_token
                            .as_ref()
                            .map(|t| t.expose().to_owned()),
                    };
                    Some((HttpPort::bind(addr, probes, Some(api)).await?, monitor))
                }
            }
        };
        Ok(Self {
            args,
            outbox,
            broker,
            wake,
            health,
            large_lane: Arc::new(Semaphore::new(1)),
            lanes,
            ingress,
            deliver,
            metrics,
            o5,
            http,
            stopping,
        })
    }

    /// Where the gRPC ingress listens (`None` with `--grpc-addr none`).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.ingress.as_ref().map(Ingress::local_addr)
    }

    /// Where the HTTP port listens (`None` with `--http-addr none`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(port, _)| port.local_addr())
    }

    /// The process's metrics, as `/metrics` serves them.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Wakes idle workers at once (e.g. after an in-process insert).
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The workers' health (faults, restarts, last iterations).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// One worker's relay step, for tests that drive it directly.
    pub fn relay(&self) -> Relay {
        Relay::new(
            self.outbox.clone(),
            self.broker.clone(),
            self.settings(),
            self.large_lane.clone(),
            self.metrics.clone(),
        )
        .with_destinations(self.lanes.clone())
    }

    /// The configured destinations besides the broker.
    pub fn destinations(&self) -> &Lanes {
        &self.lanes
    }

    fn settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.args.batch_size.get(),
            batch_bytes: self.args.batch_max_bytes,
            confirm_timeout: self.args.confirm_timeout,
            max_attempts: self.args.max_attempts.get(),
            backoff: Backoff {
                base: self.args.backoff_base,
                max: self.args.backoff_max,
            },
            on_sent: self.args.on_sent,
            max_message_size: self.args.max_message_size,
            claim_idle_timeout: step_timeout(&self.args) + IDLE_TX_MARGIN,
        }
    }

    /// Runs the workers (and the retention purger) until `stop` fires, then
    /// drains what is in flight within the shutdown timeout.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let http = self.start_http(&tracker, &stop);
        if let Some(ingress) = self.ingress.take() {
            let helpers = tracker.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                if let Err(e) = ingress.serve(&helpers, stop).await {
                    tracing::error!(error = format!("{e:#}"), "gRPC ingress stopped");
                }
            });
        }
        if let Some(deliver) = self.deliver.take() {
            tracker.spawn(deliver.run(stop.clone()));
        }
        let options = WorkerOptions {
            poll_interval: self.args.poll_interval,
            step_timeout: step_timeout(&self.args),
            error_backoff_max: Duration::from_secs(10),
        };
        tracing::info!(
            table = self.outbox.table(),
            table_format = ?self.args.db.table_format,
            database = %self.args.db.database_url,
            broker = %self.args.amqp.amqp_url,
            concurrency = self.args.concurrency.get(),
            batch_size = self.args.batch_size.get(),
            // An o5 table's confirmed rows are deleted, as o5's sidecar does.
            on_sent = ?self.o5.as_ref().map_or(self.args.on_sent, |_| OnSent::Delete),
            ordering_on_dead = ?self.args.ordering_on_dead,
            wakeup = ?self.args.wakeup,
            "relay started"
        );
        if self.args.wakeup == Wakeup::Listen {
            let channel = match self.o5 {
                Some(_) => WakeChannel::Named(O5_CHANNEL),
                None => WakeChannel::Table(self.args.db.schema.clone()),
            };
            tracker.spawn(run_listener(
                relay_pg_config(&self.args),
                self.args.db.database_url.tls(),
                channel,
                self.wake.clone(),
                stop.clone(),
            ));
        }
        let workers = Workers {
            count: self.args.concurrency.get(),
            options,
            shared: Shared::new(self.health.clone(), self.wake.clone()),
        };
        let (broker, settings, metrics) =
            (self.broker.clone(), self.settings(), self.metrics.clone());
        match &self.o5 {
            Some(table) => {
                let (table, bridge) = (table.clone(), Bridge::from_args(&self.args.grpc));
                workers.spawn(&tracker, &stop, move || {
                    O5Relay::new(
                        table.clone(),
                        broker.clone(),
                        bridge.clone(),
                        settings.clone(),
                        metrics.clone(),
                    )
                });
            }
            None => {
                let (outbox, lane) = (self.outbox.clone(), self.large_lane.clone());
                let lanes = self.lanes.clone();
                workers.spawn(&tracker, &stop, move || {
                    Pipeline::new(
                        Relay::new(
                            outbox.clone(),
                            broker.clone(),
                            settings.clone(),
                            lane.clone(),
                            metrics.clone(),
                        )
                        .with_destinations(lanes.clone()),
                    )
                });
            }
        }
        // An o5 table's confirmed rows are deleted: nothing to purge.
        if self.args.on_sent == OnSent::Mark && self.o5.is_none() {
            let every =
                (self.args.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            tracker.spawn(run_purger(
                self.outbox.clone(),
                self.args.retention,
                every,
                stop.clone(),
            ));
        }
        tracker.close();
        stop.cancelled().await;
        self.stopping.cancel();
        tracing::info!(deadline = ?self.args.shutdown_timeout, "stopping: finishing batches in flight");
        let drained = tokio::time::timeout(self.args.shutdown_timeout, tracker.wait()).await;
        if let Some((http_stop, served)) = http {
            http_stop.cancel();
            let _ = tokio::time::timeout(HTTP_CLOSE_TIMEOUT, served).await;
        }
        self.broker.close().await;
        self.lanes.close().await;
        match drained {
            Ok(()) => {
                tracing::info!("stopped cleanly");
                Ok(())
            }
            Err(_) => anyhow::bail!(
                "batches still in flight after --shutdown-timeout {:?}; their rows stay pending and will be relayed again",
                self.args.shutdown_timeout
            ),
        }
    }
}

impl App {
    /// Serves the HTTP port, outside `tracker` so that it still answers
    /// while the workers drain, and refreshes the table gauges it shows.
    /// Returns what stops it and its task.
    fn start_http(
        &mut self,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Option<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let (port, monitor) = self.http.take()?;
        let (metrics, stop_gauges) = (self.metrics.clone(), stop.clone());
        match &self.o5 {
            Some(table) => tracker.spawn(run_table_gauges(
                table.with_pool(monitor.pool().clone()),
                metrics,
                TABLE_GAUGES_EVERY,
                stop_gauges,
            )),
            None => tracker.spawn(run_table_gauges(
                monitor,
                metrics,
                TABLE_GAUGES_EVERY,
                stop_gauges,
            )),
        };
        let http_stop = CancellationToken::new();
        let served = tokio::spawn({
            let http_stop = http_stop.clone();
            async move {
                if let Err(e) = port.serve(http_stop).await {
                    tracing::error!(error = %e, "HTTP port stopped");
                }
            }
        });
        Some((http_stop, served))
    }
}

/// The relay's workers, before they start.
struct Workers {
    count: usize,
    options: WorkerOptions,
    shared: Shared,
}

impl Workers {
    /// Starts the workers, each supervised, each with a step from `make`.
    fn spawn<S: Step>(
        self,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        make: impl Fn() -> S + Clone + Send + 'static,
    ) {
        for worker in 0..self.count {
            tracker.spawn(supervise(
                make.clone(),
                worker,
                self.options.clone(),
                self.shared.clone(),
                stop.clone(),
            ));
        }
    }
}

/// Connections of the HTTP port (its probes, or its API) to the table.
fn http_outbox(args: &RunArgs, connections: usize, whose: &str) -> anyhow::Result<Outbox> {
    let pool = connect_pool(
        relay_pg_config(args),
        args.db.database_url.tls(),
        PoolOptions {
            max_size: connections,
            timeout: SERVICE_TIMEOUT,
        },
    )
    .with_context(|| format!("building {whose} database pool"))?;
    Ok(Outbox::new(pool, args.db.schema.clone()).with_ordering_on_dead(args.ordering_on_dead))
}

/// The longest one claim → mark cycle may take before it is abandoned.
pub fn step_timeout(args: &RunArgs) -> Duration {
    args.confirm_timeout + 2 * SERVICE_TIMEOUT
}

/// The built-in URLs (root@127.0.0.1, guest:guest) are a local quickstart:
/// a relay that serves beyond loopback, or runs in Kubernetes, with one of
/// them was most likely deployed without its Secret.
fn warn_on_default_urls(args: &RunArgs) {
    let beyond_loopback = match args.grpc.grpc_addr {
        crate::config::GrpcListen::On(addr) => !addr.ip().is_loopback(),
        crate::config::GrpcListen::Off => false,
    };
    if !(beyond_loopback || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()) {
        return;
    }
    for (used, url, fix) in [
        (
            args.db.url_is_default(),
            args.db.database_url.to_string(),
            "OUTBOX_DATABASE_URL_FILE or OUTBOX_DATABASE_URL",
        ),
        (
            args.amqp.url_is_default(),
            args.amqp.amqp_url.to_string(),
            "OUTBOX_AMQP_URL_FILE or OUTBOX_AMQP_URL",
        ),
    ] {
        if used {
            tracing::warn!(
                url,
                fix,
                "using the built-in local quickstart URL outside a local setup; set the real one"
            );
        }
    }
}

/// The relay's connection settings: bounded connects and TCP keepalives.
/// Nothing is set at connect time (`options=-c ...`), which PgBouncer
/// refuses: the claim sets what it needs with `SET LOCAL` in its own
/// transaction (see `Outbox::claim`).
fn relay_pg_config(args: &RunArgs) -> tokio_postgres::Config {
    let mut pg = args.db.database_url.config().clone();
    pg.connect_timeout(SERVICE_TIMEOUT);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("outbox-relay");
    }
    pg
}

/// Builds the destinations of `--destination` (no I/O: each connects on its
/// first send) and the rules that route rows to them.
fn open_destinations(args: &RunArgs, metrics: &Metrics) -> anyhow::Result<Lanes> {
    if !args.destinations.is_configured() {
        return Ok(Lanes::default());
    }
    let routing = args
        .destinations
        .resolve()
        .map_err(crate::config::ConfigError::Destinations)?;
    let lanes = routing
        .destinations
        .iter()
        .map(|spec| {
            let destination =
                crate::destination::open(spec).map_err(crate::config::ConfigError::Destinations)?;
            Ok(Lane::new(spec.name.clone(), destination, metrics))
        })
        .collect::<Result<Vec<_>, crate::config::ConfigError>>()?;
    Ok(Lanes::new(routing.router, lanes))
}
