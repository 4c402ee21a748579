//! The Prometheus metrics of the relay (issue 11: the names are the
//! contract, documented in the README's Monitoring section), all prefixed
//! `outbox_relay_`, in base units.
//!
//! Invariants owned here:
//! - recording is cheap on the hot path: label handles are resolved once
//!   (failure reasons, batch phases) or cached (exchanges), and the relay
//!   records per batch, one atomic add per exchange, not per message, except
//!   the delivery latency, which is one uncontended lock per message;
//! - label sets are bounded (invariant 10): the first [`EXCHANGE_LABELS`]
//!   exchanges get their own series, every later one counts as `other`;
//! - what other parts already count (worker restarts, faults, dropped log
//!   lines, broker reconnects) is read from them at scrape time, not copied;
//! - the table's gauges are refreshed by one background task with indexed
//!   queries ([`run_table_gauges`]), never by a scrape.

mod deliver;
mod destination;
mod grpc;
mod sources;
mod table;

pub use deliver::DeliveryOutcome;
pub use destination::DestinationHandles;
pub use table::run_table_gauges;

use crate::amqp::Broker;
use crate::health::Health;
use crate::outbox::{Outbox, TableGauges};
pub use grpc::code_name;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sources::Sources;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use table::TableSeries;

/// Exchanges that get their own `exchange` label; later ones are `other`.
pub const EXCHANGE_LABELS: usize = 100;
/// The label of every exchange past the first [`EXCHANGE_LABELS`].
pub const OTHER_EXCHANGE: &str = "other";
/// The label of the default exchange (`''`): an empty label value would
/// read as no label at all; RabbitMQ's own name for it cannot clash with a
/// declared exchange (the `amq.` prefix is reserved).
pub const DEFAULT_EXCHANGE: &str = "amq.default";
/// How often the table's gauges are refreshed.
pub const TABLE_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// The commit the binary was built from (`build.rs`: git, else the
/// build's `OUTBOX_RELAY_COMMIT`, else `unknown`).
const COMMIT: &str = env!("OUTBOX_RELAY_BUILD_COMMIT");

/// Why a message was not confirmed: the `reason` label of
/// `outbox_relay_messages_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Nack,
    Returned,
    Timeout,
    Connection,
    Encode,
    ExchangeMissing,
    ExchangeRefused,
    FrameTooLarge,
    TooLarge,
    Decode,
    NotConfirmed,
    /// A destination other than the broker did not take it this time.
    Rejected,
    /// A destination other than the broker refused it for good.
    Refused,
}

impl FailReason {
    pub const ALL: [Self; 13] = [
        Self::Nack,
        Self::Returned,
        Self::Timeout,
        Self::Connection,
        Self::Encode,
        Self::ExchangeMissing,
        Self::ExchangeRefused,
        Self::FrameTooLarge,
        Self::TooLarge,
        Self::Decode,
        Self::NotConfirmed,
        Self::Rejected,
        Self::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nack => "nack",
            Self::Returned => "returned",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Encode => "encode",
            Self::ExchangeMissing => "exchange_missing",
            Self::ExchangeRefused => "exchange_refused",
            Self::FrameTooLarge => "frame_too_large",
            Self::TooLarge => "too_large",
            Self::Decode => "decode",
            Self::NotConfirmed => "not_confirmed",
            Self::Rejected => "rejected",
            Self::Refused => "refused",
        }
    }
}

/// Which format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabel {
    exchange: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DueLabel {
    due: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
    commit: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The registry and a handle on every series the relay records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    published: Family<ExchangeLabel, Counter>,
    /// Resolved `published` handles of the first [`EXCHANGE_LABELS`] exchanges.
    exchanges: RwLock<HashMap<String, Counter>>,
    failed: [Counter; FailReason::ALL.len()],
    dead_lettered: Counter,
    /// Claim, publish, mark.
    batch_duration: [Histogram; 3],
    batch_size: Histogram,
    delivery_latency: Histogram,
    pending_due: Gauge,
    pending_not_due: Gauge,
    oldest_pending_age: FloatGauge,
    dead_messages: Gauge,
    table_dead_tuples: Gauge,
    table_last_autovacuum: FloatGauge,
    ordering_keys_blocked: Gauge,
    ordering_blocked_since: FloatGauge,
    grpc: grpc::GrpcSeries,
    deliver: deliver::DeliverSeries,
    destinations: destination::DestinationSeries,
    /// False when nothing serves the registry (`--http-addr none`): then
    /// nothing is recorded, and the hot path pays one branch.
    recording: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry of the relay's own series (and dropped log lines): what a
    /// test driving a [`crate::relay::Relay`] needs.
    pub fn new() -> Self {
        Self::build(Sources::default())
    }

    /// A process's registry: also reads worker health and the broker's and
    /// the relay pool's reconnects.
    pub fn for_process(health: Arc<Health>, broker: Arc<Broker>, database: Outbox) -> Self {
        Self::build(Sources {
            health: Some(health),
            broker: Some(broker),
            database: Some(database),
        })
    }

    fn build(sources: Sources) -> Self {
        let mut registry = Registry::with_prefix("outbox_relay");
        let published = Family::<ExchangeLabel, Counter>::default();
        registry.register(
            "messages_published",
            "Messages the broker confirmed, by exchange (the first 100, then `other`; `amq.default` is the default exchange)",
            published.clone(),
        );
        let failed_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_failed",
            "Publish attempts that did not end in a confirm, by reason; the row is retried or dead-lettered",
            failed_family.clone(),
        );
        let failed = FailReason::ALL
            .map(|r| failed_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        let dead_lettered = Counter::default();
        registry.register(
            "messages_dead_lettered",
            "Rows dead-lettered after --max-attempts failures",
            dead_lettered.clone(),
        );
        let durations =
            Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            });
        registry.register_with_unit(
            "batch_duration",
            "Time one batch spent claiming, publishing until its last confirm, and marking",
            Unit::Seconds,
            durations.clone(),
        );
        let batch_duration = ["claim", "publish", "mark"]
            .map(|phase| durations.get_or_create_owned(&PhaseLabel { phase }));
        let batch_size = Histogram::new([
            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        ]);
        registry.register(
            "batch_size",
            "Rows claimed per non-empty batch",
            batch_size.clone(),
        );
        let delivery_latency = Histogram::new([
            0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0,
        ]);
        registry.register_with_unit(
            "delivery_latency",
            "From a row's created_at (whole seconds) to its broker ack",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        registry.register(
            "build_info",
            "Version and commit of this binary; always 1",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                commit: COMMIT,
            })
            .set(1);
        let table = TableSeries::register(&mut registry);
        let grpc = grpc::GrpcSeries::register(&mut registry);
        let deliver = deliver::DeliverSeries::register(&mut registry);
        let destinations = destination::DestinationSeries::register(&mut registry);
        registry.register_collector(Box::new(sources));
        Self {
            registry,
            published,
            exchanges: RwLock::new(HashMap::new()),
            failed,
            dead_lettered,
            batch_duration,
            batch_size,
            delivery_latency,
            pending_due: table.pending_due,
            pending_not_due: table.pending_not_due,
            oldest_pending_age: table.oldest_pending_age,
            dead_messages: table.dead_messages,
            table_dead_tuples: table.dead_tuples,
            table_last_autovacuum: table.last_autovacuum,
            ordering_keys_blocked: table.ordering_keys_blocked,
            ordering_blocked_since: table.ordering_blocked_since,
            grpc,
            deliver,
            destinations,
            recording: true,
        }
    }

    /// Records nothing from now on: for a process that serves no metrics.
    pub fn without_recording(mut self) -> Self {
        self.recording = false;
        self
    }

    /// The exposition of every series, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut text = String::new();
        let encoded = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        };
        // Writing to a String fails only if a metric's own encoder does,
        // which ours do not; a scrape then gets what was written.
        if let Err(e) = encoded {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        text
    }

    /// `count` messages to `exchange` were confirmed.
    pub fn record_published(&self, exchange: &str, count: u64) {
        if !self.recording {
            return;
        }
        let exchange = if exchange.is_empty() {
            DEFAULT_EXCHANGE
        } else {
            exchange
        };
        {
            let known = self.exchanges.read().expect("poisoned");
            if let Some(counter) = known.get(exchange) {
                counter.inc_by(count);
                return;
            }
            if known.len() >= EXCHANGE_LABELS {
                drop(known);
                self.published
                    .get_or_create(&ExchangeLabel {
                        exchange: OTHER_EXCHANGE.to_owned(),
                    })
                    .inc_by(count);
                return;
            }
        }
        let mut known = self.exchanges.write().expect("poisoned");
        let label = if known.len() < EXCHANGE_LABELS {
            exchange
        } else {
            OTHER_EXCHANGE
        };
        let counter = self.published.get_or_create_owned(&ExchangeLabel {
            exchange: label.to_owned(),
        });
        counter.inc_by(count);
        if label == exchange {
            known.insert(exchange.to_owned(), counter);
        }
    }

    /// The series of destination `name` (one of `--destination`'s).
    pub fn destination(&self, name: &str) -> DestinationHandles {
        self.destinations.handles(name)
    }

    /// One message failed for `reason`.
    pub fn record_failure(&self, reason: FailReason) {
        if !self.recording {
            return;
        }
        let index = FailReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.failed[index].inc();
    }

    /// `count` rows were dead-lettered (committed).
    pub fn record_dead_lettered(&self, count: u64) {
        if self.recording && count > 0 {
            self.dead_lettered.inc_by(count);
        }
    }

    /// A batch of `size` rows and where its time went: claim, publish, mark.
    pub fn record_batch(&self, size: usize, timings: [Duration; 3]) {
        if !self.recording {
            return;
        }
        self.batch_size.observe(size as f64);
        for (histogram, time) in self.batch_duration.iter().zip(timings) {
            histogram.observe(time.as_secs_f64());
        }
    }

    /// Latency of messages acked at `acked_at` (seconds since the Unix
    /// epoch) that were created at each of `created` (whole seconds).
    pub fn record_deliveries(&self, acked_at: f64, created: impl Iterator<Item = i64>) {
        if !self.recording {
            return;
        }
        for epoch in created {
            // Clocks of two machines: a little skew must not go negative.
            self.delivery_latency
                .observe((acked_at - epoch as f64).max(0.0));
        }
    }

    /// One gRPC call to `path` answered `code` after `elapsed`.
    pub fn record_grpc(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        if !self.recording {
            return;
        }
        self.grpc.record(path, code, elapsed);
    }

    /// One message delivered to the worker was settled as `outcome`.
    pub fn record_delivery(&self, outcome: DeliveryOutcome) {
        if self.recording {
            self.deliver.record_outcome(outcome);
        }
    }

    /// One call of the worker took `elapsed`.
    pub fn record_worker_call(&self, elapsed: Duration) {
        if self.recording {
            self.deliver.record_call(elapsed);
        }
    }

    /// The table's state, from [`Outbox::table_gauges`].
    pub fn set_table(&self, table: &TableGauges) {
        self.pending_due.set(table.due);
        self.pending_not_due.set(table.not_due);
        self.oldest_pending_age.set(table.oldest_due_seconds);
        self.dead_messages.set(table.dead);
        self.table_dead_tuples.set(table.dead_tuples);
        self.table_last_autovacuum.set(table.last_autovacuum_epoch);
        self.ordering_keys_blocked.set(table.blocked_keys.keys);
        self.ordering_blocked_since
            .set(table.blocked_keys.oldest_seconds);
    }
}

/// Seconds since the Unix epoch, now (for [`Metrics::record_deliveries`]).
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_past_the_label_limit_count_as_other() {
        let metrics = Metrics::new();
        for n in 0..EXCHANGE_LABELS + 5 {
            metrics.record_published(&format!("ex{n}"), 1);
        }
        metrics.record_published("ex0", 2);
        let text = metrics.encode(Format::Prometheus);
        assert!(
            text.contains("outbox_relay_messages_published_total{exchange=\"ex0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("outbox_relay_messages_published_total{exchange=\"other\"} 5"),
            "{text}"
        );
        assert!(!text.contains("exchange=\"ex100\""), "{text}");
    }

    #[test]
    fn every_failure_reason_is_exposed_from_the_start() {
        let text = Metrics::new().encode(Format::Prometheus);
        for reason in FailReason::ALL {
            let series = format!(
                "outbox_relay_messages_failed_total{{reason=\"{}\"}} 0",
                reason.as_str()
            );
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn openmetrics_ends_with_eof_and_prometheus_text_does_not() {
        let metrics = Metrics::new();
        assert!(metrics.encode(Format::OpenMetrics).ends_with("# EOF\n"));
        assert!(!metrics.encode(Format::Prometheus).contains("# EOF"));
    }
}
