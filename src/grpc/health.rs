//! `grpc.health.v1`: SERVING only while the database answers and the broker
//! connection is up, re-checked every few seconds and on every change logged.

use crate::amqp::Broker;
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
    every: Duration,
    stop: CancellationToken,
) {
    let mut last: Option<(bool, bool)> = None;
    loop {
        let state = (database_answers(&outbox).await, broker.is_connected().await);
        if last != Some(state) {
            let status = if state == (true, true) {
                tracing::info!("gRPC health: SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!(
                    database = state.0,
                    broker = state.1,
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
