//! Per-destination series (the destinations configured with
//! `--destination`, so the label set is bounded by configuration):
//! `outbox_relay_destination_messages_total{destination,outcome}`
//! (`confirmed` or `failed`), `outbox_relay_destination_send_duration_seconds{destination}`
//! (one batch's call, until its last answer) and
//! `outbox_relay_destination_up{destination}` (0 while its breaker is open).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    destination: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    destination: String,
}

#[derive(Debug)]
pub(super) struct DestinationSeries {
    messages: Family<OutcomeLabel, Counter>,
    duration: Family<NameLabel, Histogram, fn() -> Histogram>,
    up: Family<NameLabel, Gauge>,
}

impl DestinationSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let messages = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "destination_messages",
            "Messages sent to a destination other than the default broker, by destination and outcome: confirmed (durably accepted) or failed (retried or dead-lettered)",
            messages.clone(),
        );
        let duration =
            Family::<NameLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            });
        registry.register_with_unit(
            "destination_send_duration",
            "One batch's send to a destination, until its last answer",
            Unit::Seconds,
            duration.clone(),
        );
        let up = Family::<NameLabel, Gauge>::default();
        registry.register(
            "destination_up",
            "1 while a destination takes calls, 0 while it is backed off after it was unreachable or timed out (its rows wait; the others flow)",
            up.clone(),
        );
        Self {
            messages,
            duration,
            up,
        }
    }

    /// The handles of one destination, resolved once.
    pub(super) fn handles(&self, name: &str) -> DestinationHandles {
        let outcome = |outcome| {
            self.messages.get_or_create_owned(&OutcomeLabel {
                destination: name.to_owned(),
                outcome,
            })
        };
        let label = NameLabel {
            destination: name.to_owned(),
        };
        let handles = DestinationHandles {
            confirmed: outcome("confirmed"),
            failed: outcome("failed"),
            duration: self.duration.get_or_create_owned(&label),
            up: self.up.get_or_create_owned(&label),
        };
        handles.up.set(1);
        handles
    }
}

/// What a destination's lane records, per batch.
#[derive(Debug, Clone)]
pub struct DestinationHandles {
    confirmed: Counter,
    failed: Counter,
    duration: Histogram,
    up: Gauge,
}

impl DestinationHandles {
    pub fn record(&self, confirmed: u64, failed: u64, elapsed: Duration) {
        self.confirmed.inc_by(confirmed);
        self.failed.inc_by(failed);
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }
}
