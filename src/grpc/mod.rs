//! The gRPC ingress: senders without a database publish through the sidecar.
//!
//! Served on `--grpc-addr`:
//! - `outbox.v1.Publisher` (generic: exchange, routing key, payload, ...);
//! - every application service carrying a messaging option ([`options`]:
//!   ours, `(outbox.messaging.v1.config)`, or an o5 form, served as o5
//!   serves it), at its real path, from `--descriptor-set` files or the
//!   application's reflection (`--descriptor-reflection`);
//! - `o5.messaging.v1.topic.MessageBridgeTopic/Send`;
//! - `grpc.health.v1.Health` (with `--worker-addr` also for
//!   [`DELIVERY_SERVICE`], delivery to the worker application) and server
//!   reflection.
//!
//! Invariant: a call answers OK only once its message is safe — committed
//! to the outbox (outbox mode) or acked by the broker (direct mode); see
//! [`sink`]. Every failure maps to a status code in one place, [`status`].

mod auth;
pub mod codec;
mod codes;
pub mod descriptors;
pub mod group;
mod health;
mod listener;
pub mod o5;
pub mod observe;
pub mod options;
pub mod publisher;
pub mod raw;
pub mod sink;
pub mod status;
pub mod topology;

pub use health::DELIVERY_SERVICE;
pub use raw::MESSAGE_ID_METADATA;
pub use topology::{Catalog, TopologyError, method_route};

use crate::amqp::{Broker, declare::declare};
use crate::config::{GrpcArgs, GrpcListen};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::proto::outbox::v1::publisher_server::PublisherServer;
use crate::relay::ErrorBackoff;
use anyhow::Context;
use raw::{CatalogSlot, TopicIngress};
use sink::{Sink, SinkOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How often health is re-checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Pings a connection that sent nothing for this long, and closes it when
/// the ping is not answered within [`KEEPALIVE_TIMEOUT`] (a dead peer).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections are closed gracefully (GOAWAY, calls in flight finish within
/// [`CONNECTION_AGE_GRACE`]) after this long, so idle ones do not pile up;
/// clients reconnect transparently.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// HTTP/2's own header-list limit: above the door's metadata limit, so an
/// oversized call gets `RESOURCE_EXHAUSTED` instead of a closed connection.
const HTTP2_MAX_HEADER_LIST: u32 = 1 << 20;
/// Bounds one attempt to read the application's reflection.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound, configured ingress, ready to serve.
pub struct Ingress {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    sink: Arc<Sink>,
    broker: Arc<Broker>,
    health: Arc<Health>,
    catalog: CatalogSlot,
    /// Descriptor files as read, for server reflection.
    descriptor_sets: Vec<Vec<u8>>,
    tls: Option<ServerTlsConfig>,
    args: GrpcArgs,
    metrics: Arc<Metrics>,
}

impl Ingress {
    /// Loads the descriptors (refusing invalid topologies) and binds the
    /// address; `None` with `--grpc-addr none`.
    pub async fn build(
        args: &GrpcArgs,
        outbox: Outbox,
        broker: Arc<Broker>,
        sink: SinkOptions,
        wake: Arc<Notify>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let GrpcListen::On(addr) = args.grpc_addr else {
            return Ok(None);
        };
        let pool = descriptors::pool_from_files(&args.descriptor_sets)?;
        let catalog = Catalog::from_pool(&pool)?;
        let catalog = if args.descriptor_reflection.is_some() {
            CatalogSlot::pending()
        } else {
            CatalogSlot::ready(catalog)
        };
        let descriptor_sets = args
            .descriptor_sets
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()
            .context("reading --descriptor-set")?;
        let tls = tls_config(args)?;
        if let Some(tls) = &tls {
            // Refuse a bad certificate or key now, not at the first call.
            Server::builder()
                .tls_config(tls.clone())
                .context("--grpc-tls-cert / --grpc-tls-key / --grpc-tls-client-ca")?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for gRPC: set --grpc-addr to a free address, or `none`"
            )
        })?;
        let addr = listener.local_addr()?;
        Ok(Some(Self {
            listener,
            addr,
            sink: Arc::new(Sink::new(
                outbox,
                broker.clone(),
                sink,
                wake,
                metrics.clone(),
            )),
            broker,
            health,
            catalog,
            descriptor_sets,
            tls,
            args: args.clone(),
            metrics,
        }))
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop`; helper tasks (health, reflection, declarations)
    /// run on `tracker`. In-flight calls finish before this returns.
    pub async fn serve(self, tracker: &TaskTracker, stop: CancellationToken) -> anyhow::Result<()> {
        let reporter = HealthReporter::new();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        tracker.spawn(health::report_health(
            reporter,
            vec![
                "outbox.v1.Publisher",
                "o5.messaging.v1.topic.MessageBridgeTopic",
            ],
            self.sink.outbox().clone(),
            self.broker.clone(),
            self.health.clone(),
            HEALTH_EVERY,
            stop.clone(),
        ));
        self.start_catalog_tasks(tracker, &stop);
        let routes = self.routes(health)?;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_connection_age(MAX_CONNECTION_AGE)
            .max_connection_age_grace(CONNECTION_AGE_GRACE)
            .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST);
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).context("TLS configuration")?;
        }
        let token = self.args.grpc_token.as_ref().map(|t| t.expose());
        tracing::info!(addr = %self.addr, mode = ?self.args.ingress_mode,
            tls = self.args.grpc_tls_cert.is_some(), token = token.is_some(), "gRPC ingress listening");
        if self.args.o5_app.is_none() || self.args.o5_env.is_none() {
            tracing::warn!(o5_app = ?self.args.o5_app, o5_env = ?self.args.o5_env,
                "o5 workers expect --o5-app and --o5-env: without them the o5 bridge keeps the sender's source_app, source_env and request reply_to");
        }
        if token.is_none() && !self.addr.ip().is_loopback() {
            tracing::warn!(addr = %self.addr, "gRPC ingress listens beyond loopback with no --grpc-token or mTLS");
        }
        server
            .layer(observe::ObserveLayer::new(self.metrics.clone()))
            .layer(auth::TokenLayer::new(token))
            .layer(codes::layer(self.args.grpc_max_request_size))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                listener::incoming(self.listener, self.args.grpc_max_connections.get()),
                stop.cancelled_owned(),
            )
            .await
            .context("gRPC server failed")
    }

    fn routes(&self, health: HealthServer<HealthService>) -> anyhow::Result<Routes> {
        let max = self.args.grpc_max_request_size;
        let mut builder = RoutesBuilder::default();
        builder
            .add_service(health)
            .add_service(
                PublisherServer::new(publisher::PublisherService::new(self.sink.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(self.reflection().build_v1().context("server reflection")?)
            .add_service(
                self.reflection()
                    .build_v1alpha()
                    .context("server reflection")?,
            );
        let topics = TopicIngress::new(
            self.sink.clone(),
            self.catalog.clone(),
            o5::Bridge::from_args(&self.args),
            max,
        );
        let router = builder.routes().into_axum_router().fallback_service(topics);
        Ok(Routes::from(router))
    }

    /// Server reflection of the contract, health, and the descriptor files.
    fn reflection(&self) -> tonic_reflection::server::Builder<'_> {
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &self.descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
        }
        reflection
    }

    fn start_catalog_tasks(&self, tracker: &TaskTracker, stop: &CancellationToken) {
        let declare = self.args.declare_topology.then(|| self.args.o5_exchange());
        match &self.args.descriptor_reflection {
            Some(url) => {
                tracker.spawn(load_from_reflection(
                    url.0.clone(),
                    self.args.descriptor_sets.clone(),
                    self.catalog.clone(),
                    self.broker.clone(),
                    declare,
                    stop.clone(),
                ));
            }
            None => {
                let catalog = self.catalog.get().unwrap_or_default();
                log_catalog(&catalog);
                if let Some(o5) = declare {
                    tracker.spawn(declare_until_done(
                        self.broker.clone(),
                        catalog,
                        o5,
                        stop.clone(),
                    ));
                }
            }
        }
    }
}

fn log_catalog(catalog: &Catalog) {
    if catalog.is_empty() {
        tracing::info!("no topic services configured (--descriptor-set, --descriptor-reflection)");
    } else {
        tracing::info!(paths = ?catalog.paths(), "serving topic services");
    }
}

fn tls_config(args: &GrpcArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.grpc_tls_cert, &args.grpc_tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.grpc_tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Reads the application's reflection until it answers (the sidecar starts
/// before the application), then serves its topic services.
async fn load_from_reflection(
    url: String,
    files: Vec<std::path::PathBuf>,
    slot: CatalogSlot,
    broker: Arc<Broker>,
    declare: Option<String>,
    stop: CancellationToken,
) {
    let mut backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempts = 0u32;
    let pool = loop {
        let base = match descriptors::pool_from_files(&files) {
            Ok(base) => base,
            Err(e) => return tracing::error!(error = %e, "cannot load --descriptor-set"),
        };
        match descriptors::pool_from_reflection(&url, REFLECTION_TIMEOUT, base).await {
            Ok(pool) => break pool,
            Err(e) => {
                attempts += 1;
                let retry_in = backoff.next_delay();
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(url, error = %e, attempts, ?retry_in,
                        "the application's gRPC reflection does not answer yet; topic calls get UNAVAILABLE meanwhile");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    };
    match Catalog::from_pool(&pool) {
        Ok(catalog) => {
            log_catalog(&catalog);
            let catalog = Arc::new(catalog);
            slot.set(catalog.clone());
            if let Some(o5) = declare {
                declare_until_done(broker, catalog, o5, stop).await;
            }
        }
        Err(e) => tracing::error!(url, error = %e,
            "the application's services cannot be served; fix the proto and restart"),
    }
}

/// Declares the catalog's exchanges and queues and the o5 exchange,
/// retrying while the broker is unreachable.
async fn declare_until_done(
    broker: Arc<Broker>,
    catalog: Arc<Catalog>,
    o5: String,
    stop: CancellationToken,
) {
    let wanted = catalog.declarations();
    let exchanges: Vec<String> = wanted.topic_exchanges.into_iter().chain([o5]).collect();
    let queues: Vec<String> = wanted.queues.into_iter().collect();
    let mut backoff = ErrorBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match declare(&broker, &exchanges, &queues).await {
            Ok(()) => {
                tracing::info!(?exchanges, ?queues, "topology declared");
                return;
            }
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %e, ?retry_in, "cannot declare the topology yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}
