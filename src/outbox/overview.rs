//! The table at a glance for operators (`GET /api/stats`): the backlog, the
//! sent and dead counts, the busiest routes of the backlog and the send
//! rates, read in one snapshot.
//!
//! Every figure has an index path (migrations 0001 and 0003): the backlog
//! through the pending indexes (its cost follows the backlog), the rates
//! through a range of `outbox_sent_at_idx` (the rows of the last hour), the
//! sent count through an index-only scan of it (the rows kept sent: with
//! `--on-sent delete` none, and the rates are 0 as well; `/metrics` counts
//! publishes either way). Bounded by [`super::browse::BROWSE_TIMEOUT`].

use super::browse::BROWSE_TIMEOUT;
use super::{Outbox, StoreError, row::typed};
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

const SENT: &str = "SELECT count(*) FROM {table} WHERE sent_at IS NOT NULL";

/// Rows sent within the last minute and the last hour.
const RATES: &str = "SELECT
    count(*) FILTER (WHERE sent_at >= now() - interval '1 minute'),
    count(*)
FROM {table}
WHERE sent_at >= now() - interval '1 hour'";

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
    pub dead: i64,
    /// The routes with the most pending rows, most first.
    pub top_pending: Vec<RouteCount>,
    pub rates: Rates,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rates {
    pub sent_last_minute: i64,
    pub sent_last_hour: i64,
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
        let sent = tx.query_typed_one(&render(SENT), &[]).await?;
        let rates = tx.query_typed_one(&render(RATES), &[]).await?;
        let dead = tx.query_typed_one(&render(DEAD), &[]).await?;
        let routes = tx
            .query_typed(&render(TOP_ROUTES), &[(&top, Type::INT8)])
            .await?;
        tx.commit().await?;
        let (due, delayed): (i64, i64) = (
            typed(&backlog, 0, "available_at", "timestamptz")?,
            typed(&backlog, 1, "available_at", "timestamptz")?,
        );
        Ok(Overview {
            pending: Backlog {
                total: due + delayed,
                due,
                delayed,
                oldest_age_seconds: typed(&backlog, 2, "created_at", "timestamptz")?,
            },
            sent: typed(&sent, 0, "sent_at", "timestamptz")?,
            dead: typed(&dead, 0, "dead_at", "timestamptz")?,
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
            rates: Rates {
                sent_last_minute: typed(&rates, 0, "sent_at", "timestamptz")?,
                sent_last_hour: typed(&rates, 1, "sent_at", "timestamptz")?,
            },
        })
    }
}
