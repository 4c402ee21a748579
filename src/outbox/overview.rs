//! The table at a glance for operators (`GET /api/stats`): the backlog, the
//! sent and dead counts, the busiest routes of the backlog and the send
//! rates, read in one snapshot.
//!
//! Every figure has an index path (migrations 0001 and 0003): the backlog
//! through the pending indexes (its cost follows the backlog), the rates
//! and their per-minute series through one range of `outbox_sent_at_idx`
//! (the rows of the last hour, grouped into at most 60 minutes), the
//! sent count through an index-only scan of it, stopping at a million (the rows kept sent: with
//! `--on-sent delete` none, and the rates are 0 as well; `/metrics` counts
//! publishes either way). Bounded by [`super::browse::BROWSE_TIMEOUT`].

use super::browse::BROWSE_TIMEOUT;
use super::{BlockedKeys, Outbox, StoreError, row::typed};
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::Type;

/// The backlog: due now, due later, and the age of its oldest row
/// (`created_at`; an infinite one is left out).
const BACKLOG: &str = "SELECT
    count(*) FILTER (WHERE available_at <= now()),
    count(*) FILTER (WHERE available_at > now()),
    COALESCE(GREATEST(EXTRACT(epoch FROM now() - min(created_at)
        FILTER (WHERE isfinite(created_at)))::float8, 0), 0)
FROM {table}
WHERE sent_at IS NULL AND dead_at IS NULL";

/// The sent rows kept, counted up to [`SENT_COUNT_CAP`] + 1: an exact count
/// of ten million kept rows took 1.6 s (the API benchmark), and the
/// console asks every few seconds.
const SENT: &str = "SELECT count(*) FROM (
    SELECT 1 FROM {table} WHERE sent_at IS NOT NULL LIMIT $1) AS kept";

/// Past this many sent rows, `sent` says "at least" (`sent_at_least`).
pub const SENT_COUNT_CAP: i64 = 1_000_000;

/// Rows sent within the last hour, by minutes ago: bucket 0 holds the
/// last 60 seconds, 59 the oldest minute. One range of the sent_at index,
/// at most [`MINUTES`] groups: the per-minute chart costs what the two
/// totals cost, which are its sums.
const RATES: &str = "SELECT
    LEAST(GREATEST(floor(EXTRACT(epoch FROM now() - sent_at) / 60), 0), 59)::int4,
    count(*)
FROM {table}
WHERE sent_at >= now() - interval '1 hour'
GROUP BY 1";

/// The buckets of [`Rates::sent_per_minute`].
pub const MINUTES: usize = 60;

const DEAD: &str = "SELECT count(*) FROM {table} WHERE dead_at IS NOT NULL AND sent_at IS NULL";

/// The routes holding the most pending rows (`$1` of them), through the
/// index-only scan of `outbox_pending_route_idx`.
const TOP_ROUTES: &str = "SELECT exchange, routing_key, count(*)
FROM {table}
WHERE sent_at IS NULL AND dead_at IS NULL
GROUP BY exchange, routing_key
ORDER BY count(*) DESC, exchange, routing_key
LIMIT $1";

/// What `GET /api/stats` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Overview {
    pub pending: Backlog,
    pub sent: i64,
    /// True when there are more sent rows than `sent` (the count stops at
    /// [`SENT_COUNT_CAP`]).
    pub sent_at_least: bool,
    pub dead: i64,
    /// The routes with the most pending rows, most first.
    pub top_pending: Vec<RouteCount>,
    pub rates: Rates,
    /// Ordering keys held back by a failed or dead head.
    pub ordering: BlockedKeys,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Backlog {
    pub total: i64,
    /// Due now.
    pub due: i64,
    /// Due later: delayed, or backing off after a failure.
    pub delayed: i64,
    /// Age of the oldest pending row, due or not; 0 when none.
    pub oldest_age_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteCount {
    pub exchange: String,
    pub routing_key: String,
    pub count: i64,
}

/// Messages confirmed within the window (`sent_at`, so only while sent
/// rows are kept: `--on-sent mark`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rates {
    pub sent_last_minute: i64,
    pub sent_last_hour: i64,
    /// The last hour minute by minute, oldest first: the last element is
    /// `sent_last_minute`, the sum is `sent_last_hour`.
    pub sent_per_minute: Vec<i64>,
}

impl Rates {
    /// The rates of `(minutes ago, count)` buckets.
    fn of_buckets(buckets: impl IntoIterator<Item = (i32, i64)>) -> Self {
        let mut per_minute = vec![0; MINUTES];
        for (ago, count) in buckets {
            let ago = usize::try_from(ago).unwrap_or(0).min(MINUTES - 1);
            per_minute[MINUTES - 1 - ago] += count;
        }
        Self {
            sent_last_minute: per_minute[MINUTES - 1],
            sent_last_hour: per_minute.iter().sum(),
            sent_per_minute: per_minute,
        }
    }
}

impl Outbox {
    /// Every figure of [`Overview`], from one snapshot of the table.
    pub async fn overview(&self, top: i64) -> Result<Overview, StoreError> {
        let render = |sql: &str| sql.replace("{table}", self.table());
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            BROWSE_TIMEOUT.as_millis()
        ))
        .await?;
        let backlog = tx.query_typed_one(&render(BACKLOG), &[]).await?;
        let sent = tx
            .query_typed_one(&render(SENT), &[(&(SENT_COUNT_CAP + 1), Type::INT8)])
            .await?;
        let rates = tx.query_typed(&render(RATES), &[]).await?;
        let dead = tx.query_typed_one(&render(DEAD), &[]).await?;
        let routes = tx
            .query_typed(&render(TOP_ROUTES), &[(&top, Type::INT8)])
            .await?;
        let blocked = tx
            .query_typed_one(
                &self.sql.ordering_blocked,
                &[(&self.skips_dead(), Type::BOOL)],
            )
            .await?;
        tx.commit().await?;
        let (due, delayed): (i64, i64) = (
            typed(&backlog, 0, "available_at", "timestamptz")?,
            typed(&backlog, 1, "available_at", "timestamptz")?,
        );
        let sent_count: i64 = typed(&sent, 0, "sent_at", "timestamptz")?;
        Ok(Overview {
            pending: Backlog {
                total: due + delayed,
                due,
                delayed,
                oldest_age_seconds: typed(&backlog, 2, "created_at", "timestamptz")?,
            },
            sent: sent_count.min(SENT_COUNT_CAP),
            sent_at_least: sent_count > SENT_COUNT_CAP,
            dead: typed(&dead, 0, "dead_at", "timestamptz")?,
            ordering: BlockedKeys::from_row(&blocked)?,
            top_pending: routes
                .iter()
                .map(|r| {
                    Ok(RouteCount {
                        exchange: typed(r, 0, "exchange", "text")?,
                        routing_key: typed(r, 1, "routing_key", "text")?,
                        count: typed(r, 2, "exchange", "text")?,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            rates: Rates::of_buckets(
                rates
                    .iter()
                    .map(|r| {
                        Ok((
                            typed(r, 0, "sent_at", "timestamptz")?,
                            typed(r, 1, "sent_at", "timestamptz")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minutes_of_the_last_hour_run_oldest_first_and_sum_to_the_totals() {
        let rates = Rates::of_buckets([(0, 2), (1, 5), (59, 7), (60, 1), (-1, 1)]);
        assert_eq!(rates.sent_per_minute.len(), MINUTES);
        assert_eq!(rates.sent_per_minute[0], 8, "60 is clamped to the oldest");
        assert_eq!(rates.sent_per_minute[MINUTES - 2], 5);
        assert_eq!(
            rates.sent_per_minute[MINUTES - 1],
            3,
            "-1 is the last minute"
        );
        assert_eq!(rates.sent_last_minute, 3);
        assert_eq!(rates.sent_last_hour, 16);
        assert_eq!(Rates::of_buckets([]).sent_per_minute, vec![0; MINUTES]);
    }
}
