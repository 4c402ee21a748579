//! The loop around [`Relay::relay_batch`]: adaptive polling, wake-ups,
//! backoff after infrastructure errors, and cooperative shutdown.
//!
//! Cancellation is checked between batches only (invariant 6): a batch that
//! has started is finished — published, confirmed and marked — before the
//! worker exits. Each step is bounded by `step_timeout` so that a hung
//! dependency cannot hold a claim forever (invariant 4).

use super::{ErrorBackoff, Outcome, Relay};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Timing of one worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Idle wait when nothing is due (a wake-up cuts it short).
    pub poll_interval: Duration,
    /// Upper bound on one claim → mark cycle.
    pub step_timeout: Duration,
    /// Backoff after infrastructure errors.
    pub error_backoff_max: Duration,
}

/// Runs `relay` until `stop` is cancelled.
pub async fn run_worker(
    mut relay: Relay,
    worker: usize,
    options: WorkerOptions,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut errors = ErrorBackoff::new(Duration::from_millis(100), options.error_backoff_max);
    let mut healthy = true;
    while !stop.is_cancelled() {
        let step = tokio::time::timeout(options.step_timeout, relay.relay_batch()).await;
        let pause = match step {
            Ok(Ok(Outcome::Relayed(report))) => {
                recovered(&mut healthy, &mut errors, worker);
                tracing::debug!(
                    worker,
                    claimed = report.claimed,
                    sent = report.sent,
                    retried = report.retried,
                    dead = report.dead,
                    claim = ?report.timings[0],
                    publish = ?report.timings[1],
                    mark = ?report.timings[2],
                    "batch relayed"
                );
                // More may be due: claim again at once.
                continue;
            }
            Ok(Ok(Outcome::Empty)) => {
                recovered(&mut healthy, &mut errors, worker);
                idle_wait(options.poll_interval)
            }
            Ok(Err(e)) => {
                let delay = errors.next_delay();
                if healthy {
                    tracing::warn!(worker, error = %e, retry_in = ?delay, "relay step failed; backing off");
                } else {
                    tracing::debug!(worker, error = %e, retry_in = ?delay, "relay step failed again");
                }
                healthy = false;
                delay
            }
            Err(_) => {
                relay.reset_channel();
                let delay = errors.next_delay();
                tracing::warn!(worker, bound = ?options.step_timeout, retry_in = ?delay,
                    "relay step exceeded its time bound and was abandoned; its claims were released");
                healthy = false;
                delay
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
            () = wake.notified() => {}
        }
    }
    relay.close().await;
    tracing::debug!(worker, "worker stopped");
}

/// A random 50-100% of the poll interval: the workers' idle polls drift
/// apart instead of firing together, so a new row waits for the next poll of
/// any worker (about `poll / concurrency`), never longer than `poll`.
fn idle_wait(poll: Duration) -> Duration {
    poll.mul_f64(0.5 + 0.5 * fastrand::f64())
}

fn recovered(healthy: &mut bool, errors: &mut ErrorBackoff, worker: usize) {
    if !*healthy {
        tracing::info!(worker, "relay step succeeded again");
        *healthy = true;
    }
    errors.reset();
}
