//! What other parts of the process already count (worker restarts and
//! faults, dropped log lines, broker and database reconnects), read at each
//! scrape instead of being copied into the registry.

use super::ServiceLabel;
use crate::amqp::Broker;
use crate::health::Health;
use crate::outbox::Outbox;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

/// What other parts of the process count, read at each scrape.
#[derive(Debug, Default)]
pub(super) struct Sources {
    pub(super) health: Option<Arc<Health>>,
    pub(super) broker: Option<Arc<Broker>>,
    /// The relay workers' pool.
    pub(super) database: Option<Outbox>,
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = ConstCounter::new(crate::telemetry::log_lines_dropped());
        let help = "Log lines lost to a full queue or a failed write to stderr";
        dropped.encode(encoder.encode_descriptor(
            "log_lines_dropped",
            help,
            None,
            dropped.metric_type(),
        )?)?;
        if let Some(health) = &self.health {
            let restarts = ConstCounter::new(health.restarts());
            let help = "Relay workers restarted after a panic";
            restarts.encode(encoder.encode_descriptor(
                "worker_restarts",
                help,
                None,
                restarts.metric_type(),
            )?)?;
            let faulted = ConstGauge::new(health.faulted() as i64);
            let help = "Relay workers paused by a systemic fault (a missing privilege, a read-only database)";
            faulted.encode(encoder.encode_descriptor(
                "workers_faulted",
                help,
                None,
                faulted.metric_type(),
            )?)?;
        }
        let services = [
            ("broker", self.broker.as_ref().map(|b| b.reconnects())),
            ("database", self.database.as_ref().map(Outbox::reconnects)),
        ];
        if services.iter().any(|(_, count)| count.is_some()) {
            let help = "Connections re-established after the first, by service (database: connections of the relay's pool opened to replace one that was lost or closed)";
            let mut family = encoder.encode_descriptor(
                "reconnects",
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (service, count) in services {
                if let Some(count) = count {
                    ConstCounter::new(count)
                        .encode(family.encode_family(&ServiceLabel { service })?)?;
                }
            }
        }
        Ok(())
    }
}
