//! The table's gauges: the backlog, dead rows and vacuum state, refreshed
//! in the background by one task ([`run_table_gauges`]) with indexed
//! queries, never by a scrape (a scrape must not load the database).

use super::{DueLabel, FloatGauge, Metrics};
use crate::outbox::o5::O5Outbox;
use crate::outbox::{Outbox, StoreError, TableGauges};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The gauges of the table's state.
pub(super) struct TableSeries {
    pub(super) pending_due: Gauge,
    pub(super) pending_not_due: Gauge,
    pub(super) oldest_pending_age: FloatGauge,
    pub(super) dead_messages: Gauge,
    pub(super) dead_tuples: Gauge,
    pub(super) last_autovacuum: FloatGauge,
    pub(super) ordering_keys_blocked: Gauge,
    pub(super) ordering_blocked_since: FloatGauge,
}

impl TableSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let pending = Family::<DueLabel, Gauge>::default();
        registry.register(
            "pending_messages",
            "Rows neither sent nor dead: due now (`due=\"true\"`) or later (delayed, backing off)",
            pending.clone(),
        );
        let series = Self {
            pending_due: pending.get_or_create_owned(&DueLabel { due: "true" }),
            pending_not_due: pending.get_or_create_owned(&DueLabel { due: "false" }),
            oldest_pending_age: FloatGauge::default(),
            dead_messages: Gauge::default(),
            dead_tuples: Gauge::default(),
            last_autovacuum: FloatGauge::default(),
            ordering_keys_blocked: Gauge::default(),
            ordering_blocked_since: FloatGauge::default(),
        };
        registry.register_with_unit(
            "oldest_pending_age",
            "Age of the oldest due row (0 when none is due): the relay's lag",
            Unit::Seconds,
            series.oldest_pending_age.clone(),
        );
        registry.register(
            "dead_messages",
            "Dead-lettered rows awaiting replay",
            series.dead_messages.clone(),
        );
        registry.register(
            "table_dead_tuples",
            "Dead tuples of the outbox table (pg_stat_user_tables.n_dead_tup)",
            series.dead_tuples.clone(),
        );
        registry.register(
            "table_last_autovacuum_timestamp_seconds",
            "When autovacuum last finished on the outbox table, in seconds since the Unix epoch (0: never)",
            series.last_autovacuum.clone(),
        );
        registry.register(
            "ordering_keys_blocked",
            "Ordering keys held back by their head: it failed and waits for its retry, or is dead (with --ordering-on-dead block)",
            series.ordering_keys_blocked.clone(),
        );
        registry.register_with_unit(
            "ordering_blocked_since",
            "Age of the oldest head holding its key back (created_at; 0 when no key is held back)",
            Unit::Seconds,
            series.ordering_blocked_since.clone(),
        );
        series
    }
}

/// A table whose gauges can be read: the relay's own, or an o5 one.
pub trait GaugedTable: Send + Sync + 'static {
    fn table_gauges(&self) -> impl Future<Output = Result<TableGauges, StoreError>> + Send;
}

impl GaugedTable for Outbox {
    fn table_gauges(&self) -> impl Future<Output = Result<TableGauges, StoreError>> + Send {
        Outbox::table_gauges(self)
    }
}

impl GaugedTable for O5Outbox {
    fn table_gauges(&self) -> impl Future<Output = Result<TableGauges, StoreError>> + Send {
        O5Outbox::table_gauges(self)
    }
}

/// Refreshes the table's gauges every `every` until `stop`. A failed
/// refresh leaves the last values and is logged when it starts failing.
pub async fn run_table_gauges(
    outbox: impl GaugedTable,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let started = std::time::Instant::now();
        match outbox.table_gauges().await {
            Ok(gauges) => {
                metrics.set_table(&gauges);
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot refresh the outbox table's gauges; they keep their last values");
                failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "table gauges still failing"),
        }
        // Counting a backlog of millions takes the database a while: wait
        // long enough that the refresh never takes more than a hundredth of
        // one backend's time, however large the backlog grows.
        let wait = every.max(started.elapsed() * REFRESH_DUTY_INVERSE);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The refresh waits at least this many times as long as it took.
const REFRESH_DUTY_INVERSE: u32 = 100;
