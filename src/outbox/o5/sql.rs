//! Every statement the relay runs against an o5 application's outbox
//! table, rendered once for its schema and shape ([`O5Statements::new`]):
//! a validated, quoted table name, the id column's type as found, and the
//! expression of when a row is due. Every value is a bind parameter.

use super::Shape;

/// Rows not dead and due, locked for this transaction only, in the order
/// they became due (their insert's time, or send_after). `SKIP LOCKED`: two
/// relays claim disjoint rows (invariant 5). It cannot fail on one row's
/// values (invariant 8): `data` comes as text, decoded per row by the
/// relay. Memory is bounded (invariant 10): `data` is loaded only up to
/// `$2` bytes (`--max-message-size`), and only while the claim's rows add
/// up to `$3` bytes (`--batch-max-bytes`), the first loadable row always:
/// rows past the budget come without it and stay for the next claim. A row
/// above `$2` is never loaded (it is dead-lettered), so it takes nothing
/// from the budget.
const CLAIM: &str =
    "SELECT id, CASE WHEN len <= $2 AND (budget <= $3 OR budget = len) THEN body END,
       len, attempts
FROM (
    SELECT *, sum(CASE WHEN len <= $2 THEN len ELSE 0 END) OVER (ORDER BY due, id) AS budget
    FROM (
        SELECT id::text AS id, data::text AS body, octet_length(data::text)::bigint AS len,
               COALESCE(attempts, 0) AS attempts, {due} AS due
        FROM {table}
        WHERE dead_at IS NULL AND {due} <= now()
        ORDER BY {due}
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) AS claimed
) AS sized
ORDER BY due, id";

/// An idle worker's look: the first due row on the due index.
const HAS_DUE: &str =
    "SELECT EXISTS (SELECT 1 FROM {table} WHERE dead_at IS NULL AND {due} <= now())";

/// Confirmed rows are deleted, as o5's sidecar deletes them.
const DELETE_SENT: &str = "DELETE FROM {table} WHERE id = ANY($1::text[]::{id_type}[])";

/// One statement for every failed row of a batch: attempts, error, backoff
/// on the database's clock, and the dead-letter decision made by the caller.
const RECORD_FAILURES: &str = "UPDATE {table} AS o
SET attempts = COALESCE(o.attempts, 0) + 1,
    last_error = f.error,
    available_at = now() + f.delay_ms * interval '1 millisecond',
    dead_at = CASE WHEN f.dead THEN now() END
FROM unnest($1::text[], $2::text[], $3::float8[], $4::bool[]) AS f(id, error, delay_ms, dead)
WHERE o.id = f.id::{id_type}";

/// The backlog for the metrics: due rows, rows due later, and how long the
/// oldest due row has been due (the table has no insert time of its own).
const BACKLOG: &str = "SELECT
    count(*) FILTER (WHERE {due} <= now()),
    count(*) FILTER (WHERE {due} > now()),
    COALESCE(GREATEST(EXTRACT(epoch FROM now() - min({due})
        FILTER (WHERE {due} <= now() AND isfinite({due})))::float8, 0), 0)
FROM {table}
WHERE dead_at IS NULL";

/// Dead rows, through `outbox_o5_dead_idx`.
const DEAD_COUNT: &str = "SELECT count(*) FROM {table} WHERE dead_at IS NOT NULL";

/// The rendered statements for one o5 outbox table.
#[derive(Debug, Clone)]
pub struct O5Statements {
    pub table: String,
    pub claim: String,
    pub has_due: String,
    pub delete_sent: String,
    pub record_failures: String,
    pub backlog: String,
    pub dead_count: String,
}

impl O5Statements {
    pub fn new(table: &str, shape: &Shape) -> Self {
        // The claim's index: on available_at, or on the later of it and
        // send_after (migration o5_0001); the expression must match it.
        let due = if shape.delayed {
            "GREATEST(available_at, send_after)"
        } else {
            "available_at"
        };
        let render = |template: &str| {
            template
                .replace("{table}", table)
                .replace("{due}", due)
                .replace("{id_type}", shape.id_type.sql())
        };
        Self {
            table: table.to_owned(),
            claim: render(CLAIM),
            has_due: render(HAS_DUE),
            delete_sent: render(DELETE_SENT),
            record_failures: render(RECORD_FAILURES),
            backlog: render(BACKLOG),
            dead_count: render(DEAD_COUNT),
        }
    }
}
