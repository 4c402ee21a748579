//! `grpc.health.v1`: the ingress's services (`outbox.v1.Publisher`, the o5
//! bridge) are SERVING only while the database answers, the broker
//! connection is up and no relay worker is paused by a fault or down after a
//! panic; re-checked every few seconds and on every change logged.
//!
//! With `--worker-addr`, [`DELIVERY_SERVICE`] is SERVING only while
//! delivery to the worker application consumes (the rule of `/readyz`'s
//! `worker` check), and the server as a whole (the empty name) needs both:
//! as `/readyz` does, it fails while the worker cannot be delivered to.
//! Delivery's changes are reported at once, not at the next re-check.

use crate::amqp::Broker;
use crate::deliver::health::DeliveryState;
use crate::health::Health;
use crate::outbox::Outbox;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Bounds one database probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health service name of delivery to the worker application (no gRPC
/// service of that name is served: it is a name to check).
pub const DELIVERY_SERVICE: &str = "outbox.relay.Delivery";

/// One reading of what health depends on.
#[derive(Debug, PartialEq)]
struct Reading {
    database: bool,
    broker: bool,
    /// Faults and panics only: liveness is the HTTP probe's concern.
    workers: Vec<String>,
    /// Delivery's readiness, with `--worker-addr`.
    delivery: Option<Result<(), String>>,
}

impl Reading {
    fn ingress(&self) -> ServingStatus {
        serving(self.database && self.broker && self.workers.is_empty())
    }

    fn delivery(&self) -> Option<ServingStatus> {
        self.delivery.as_ref().map(|ready| serving(ready.is_ok()))
    }

    /// The server as a whole: the ingress's status, and delivery's too.
    fn overall(&self) -> ServingStatus {
        let delivering = self.delivery.as_ref().is_none_or(Result::is_ok);
        serving(self.ingress() == ServingStatus::Serving && delivering)
    }
}

fn serving(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps the health status of `services` (and of the server as a whole, the
/// empty name, and of delivery with `--worker-addr`) in step with their
/// dependencies until `stop`.
pub async fn report_health(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    outbox: Outbox,
    broker: Arc<Broker>,
    workers: Arc<Health>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut changes = workers.delivery().map(|d| d.subscribe());
    let mut last: Option<Reading> = None;
    loop {
        let reading = Reading {
            database: database_answers(&outbox).await,
            broker: broker.is_connected().await,
            workers: workers.problems(Duration::MAX),
            delivery: workers.delivery().map(|d| d.readiness()),
        };
        if last.as_ref() != Some(&reading) {
            log(&reading);
            for name in &services {
                reporter.set_service_status(name, reading.ingress()).await;
            }
            if let Some(status) = reading.delivery() {
                reporter.set_service_status(DELIVERY_SERVICE, status).await;
            }
            reporter.set_service_status("", reading.overall()).await;
            last = Some(reading);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
            () = changed(&mut changes) => {}
        }
    }
}

fn log(reading: &Reading) {
    if reading.overall() == ServingStatus::Serving {
        tracing::info!("gRPC health: SERVING");
    } else {
        tracing::warn!(
            database = reading.database,
            broker = reading.broker,
            workers = ?reading.workers,
            delivery = ?reading.delivery,
            "gRPC health: NOT_SERVING"
        );
    }
}

/// Resolves on delivery's next change; never without `--worker-addr` (or
/// once its writer is gone).
async fn changed(changes: &mut Option<watch::Receiver<DeliveryState>>) {
    let Some(receiver) = changes else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *changes = None;
        std::future::pending::<()>().await;
    }
}

async fn database_answers(outbox: &Outbox) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, outbox.ping()).await,
        Ok(Ok(()))
    )
}
