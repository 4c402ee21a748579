//! Retention for `--on-sent mark`: sent rows older than the retention period
//! are deleted in small batches, each its own short transaction, so purging
//! never holds many locks or a long snapshot.

use crate::outbox::Outbox;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PURGE_BATCH: i64 = 1000;

/// Purges every `every` until `stop` is cancelled.
pub async fn run_purger(
    outbox: Outbox,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match purge_once(&outbox, retention, &stop).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged sent rows past retention"),
            Err(e) => tracing::warn!(error = %e, "purge of sent rows failed; will retry"),
        }
    }
}

/// Deletes every sent row older than `retention`, batch by batch.
pub async fn purge_once(
    outbox: &Outbox,
    retention: Duration,
    stop: &CancellationToken,
) -> Result<u64, crate::outbox::StoreError> {
    let mut total = 0;
    loop {
        let purged = outbox.purge_sent(retention, PURGE_BATCH).await?;
        total += purged;
        if purged < PURGE_BATCH as u64 || stop.is_cancelled() {
            return Ok(total);
        }
    }
}
