//! `grpc.health.v1`: SERVING only while the database answers, the broker
//! connection is up and no relay worker is paused by a fault or down after a
//! panic; re-checked every few seconds and on every change logged.

use crate::amqp::Broker;
use crate::health::Health;
use crate::outbox::Outbox;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Bounds one database probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the health status of `services` (and of the server as a whole, the
/// empty name) in step with both dependencies until `stop`.
pub async fn report_health(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    outbox: Outbox,
    broker: Arc<Broker>,
    workers: Arc<Health>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last: Option<(bool, bool, Vec<String>)> = None;
    loop {
        let state = (
            database_answers(&outbox).await,
            broker.is_connected().await,
            // Faults and panics only: liveness is the HTTP probe's concern.
            workers.problems(Duration::MAX),
        );
        if last.as_ref() != Some(&state) {
            let status = if state.0 && state.1 && state.2.is_empty() {
                tracing::info!("gRPC health: SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!(
                    database = state.0,
                    broker = state.1,
                    workers = ?state.2,
                    "gRPC health: NOT_SERVING"
                );
                ServingStatus::NotServing
            };
            for name in std::iter::once("").chain(services.iter().copied()) {
                reporter.set_service_status(name, status).await;
            }
            last = Some(state);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn database_answers(outbox: &Outbox) -> bool {
    let probe = async {
        let client = outbox.pool().get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}
