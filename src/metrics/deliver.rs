//! The receiving side's series: `outbox_relay_deliveries_total{outcome}`
//! (how each delivered message was settled) and
//! `outbox_relay_delivery_call_duration_seconds` (one call of the worker,
//! whatever it answered). Every outcome is exposed from the start, at 0.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// How one delivered message was settled: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The worker answered OK; the message was acked.
    Ok,
    /// A copy went to `<queue>.retry` (confirmed), then it was acked.
    Retry,
    /// A copy went to `<queue>.dead` (confirmed), then it was acked.
    Dead,
    /// Given back to its queue unchanged (the worker was unreachable, or the
    /// relay stopped with the call unfinished).
    Requeued,
    /// Acked without a call: not for this worker (an o5 reply addressed to
    /// another application).
    Skipped,
}

impl DeliveryOutcome {
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::Retry,
        Self::Dead,
        Self::Requeued,
        Self::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retry => "retry",
            Self::Dead => "dead",
            Self::Requeued => "requeued",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug)]
pub(super) struct DeliverSeries {
    outcomes: [Counter; DeliveryOutcome::ALL.len()],
    call_duration: Histogram,
}

impl DeliverSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Messages delivered to the worker application, by how they were settled: ok (acked after OK), retry (to <queue>.retry), dead (to <queue>.dead), requeued, skipped (not for this worker)",
            family.clone(),
        );
        let outcomes = DeliveryOutcome::ALL.map(|o| {
            family.get_or_create_owned(&OutcomeLabel {
                outcome: o.as_str(),
            })
        });
        let call_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        registry.register_with_unit(
            "delivery_call_duration",
            "One gRPC call of the worker application, from sending to its answer (any status)",
            Unit::Seconds,
            call_duration.clone(),
        );
        Self {
            outcomes,
            call_duration,
        }
    }

    pub(super) fn record_outcome(&self, outcome: DeliveryOutcome) {
        let index = DeliveryOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.outcomes[index].inc();
    }

    pub(super) fn record_call(&self, elapsed: Duration) {
        self.call_duration.observe(elapsed.as_secs_f64());
    }
}
