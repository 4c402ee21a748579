//! Every statement the relay runs against the outbox table.
//!
//! Statements are templates with a `{table}` placeholder, rendered once per
//! configured schema (a validated, quoted identifier, invariant 7) into
//! [`Statements`]; every value is a bind parameter. They run unnamed
//! ([`super::Unnamed`]), so that a pooler in transaction mode can serve them.

use super::Identifier;

/// Pending rows due now, oldest first, locked for this transaction only.
/// `SKIP LOCKED` lets several relays (or workers) claim disjoint batches
/// without waiting on each other (invariant 5).
///
/// It cannot fail on one row's values (invariant 8): headers come as text
/// (decoded per row by the relay), and an infinite `created_at` gives a
/// NULL timestamp instead of a failed cast. Payloads are loaded only while
/// they fit (invariant 10): `$2` is `--max-message-size`, `$3` the batch's
/// byte budget; a row above `$3` is loaded alone later, and rows past the
/// budget come without payload and stay pending for the next claim. `$4` is
/// where the claim starts (the relay's cursor, see `cursor.rs`; 0 rescans).
/// `octet_length` reads a TOASTed payload's size without detoasting it.
const CLAIM: &str = "SELECT id, message_id, exchange, routing_key,
       CASE WHEN len <= $2 AND len <= $3 AND budget <= $3 THEN payload END,
       len, content_type, headers::text, attempts, created_epoch
FROM (
    SELECT *, sum(CASE WHEN len <= $3 THEN len ELSE 0 END) OVER (ORDER BY id) AS budget
    FROM (
        SELECT id, message_id, exchange, routing_key, payload,
               octet_length(payload)::bigint AS len, content_type, headers, attempts,
               CASE WHEN isfinite(created_at)
                    THEN extract(epoch FROM created_at)::bigint END AS created_epoch
        FROM {table}
        WHERE sent_at IS NULL AND dead_at IS NULL AND available_at <= now()
          AND id >= $4
        ORDER BY id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) AS claimed
) AS sized
ORDER BY id";

/// [`CLAIM`] through the schema's function (migration 0006), which keeps
/// its plan for the session: the statement above is planned on every call.
const CLAIM_CALL: &str = "SELECT * FROM {table}_claim($1, $2, $3, $4)";

/// The claim function's signature, for `to_regprocedure`.
const CLAIM_FUNCTION: &str = "{table}_claim(bigint, bigint, bigint, bigint)";

/// One large payload, read under the claim that holds its row.
/// An idle worker's look: the first due row on the pending index.
const HAS_DUE: &str = "SELECT EXISTS (SELECT 1 FROM {table}
    WHERE sent_at IS NULL AND dead_at IS NULL AND available_at <= now())";

const LOAD_PAYLOAD: &str = "SELECT payload FROM {table} WHERE id = $1";

/// `--on-sent mark`: confirmed rows leave the pending set but stay visible.
/// `statement_timestamp()`, not `now()`: the claiming transaction began
/// before the publish, and `sent_at` records when the broker had confirmed.
const MARK_SENT: &str =
    "UPDATE {table} SET sent_at = statement_timestamp() WHERE id = ANY($1::bigint[])";

/// `--on-sent delete`: confirmed rows are removed.
const DELETE_SENT: &str = "DELETE FROM {table} WHERE id = ANY($1::bigint[])";

/// One statement for every failed row of a batch: attempts, error, backoff on
/// the database's clock, and the dead-letter decision made by the caller.
/// The backoff counts from `statement_timestamp()`, after the answer, not
/// from `now()` (the claim's start, before the send): a destination's
/// Retry-After is a pause from its answer.
const RECORD_FAILURES: &str = "UPDATE {table} AS o
SET attempts = COALESCE(o.attempts, 0) + 1,
    last_error = f.error,
    available_at = statement_timestamp() + f.delay_ms * interval '1 millisecond',
    dead_at = CASE WHEN f.dead THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[]) AS f(id, error, delay_ms, dead)
WHERE o.id = f.id";

/// Removes up to `$2` rows sent more than `$1` seconds ago.
const PURGE_SENT: &str = "DELETE FROM {table} WHERE id IN (
    SELECT id FROM {table}
    WHERE sent_at < now() - $1::float8 * interval '1 second'
    LIMIT $2
    FOR UPDATE SKIP LOCKED)";

/// Inserts one message; a repeated message_id is stored once. The id is
/// the caller's text (migration 0004), else a random UUID as text.
const INSERT: &str = "INSERT INTO {table}
    (message_id, exchange, routing_key, payload, content_type, headers, available_at)
VALUES (COALESCE($1::text, gen_random_uuid()::text), $2, $3, $4, $5, $6,
        now() + $7::float8 * interval '1 millisecond')
ON CONFLICT (message_id) DO NOTHING
RETURNING id, message_id";

/// Counts by state, for `stats` and health reporting.
const STATS: &str = "SELECT
    count(*) FILTER (WHERE sent_at IS NULL AND dead_at IS NULL),
    count(*) FILTER (WHERE sent_at IS NULL AND dead_at IS NULL AND available_at <= now()),
    count(*) FILTER (WHERE sent_at IS NOT NULL),
    count(*) FILTER (WHERE dead_at IS NOT NULL),
    COALESCE(EXTRACT(epoch FROM now() - min(created_at)
        FILTER (WHERE sent_at IS NULL AND dead_at IS NULL))::float8, 0)
FROM {table}";

/// The backlog for the metrics: pending rows due now, pending rows due
/// later, and the age of the oldest due row. Reads only pending rows, through
/// the partial index `outbox_pending_idx` (the relay's connections forbid
/// sequential scans): its cost follows the backlog, not the rows kept sent.
/// An infinite `created_at` is left out of the age instead of failing it.
const BACKLOG: &str = "SELECT
    count(*) FILTER (WHERE available_at <= now()),
    count(*) FILTER (WHERE available_at > now()),
    COALESCE(GREATEST(EXTRACT(epoch FROM now() - min(created_at)
        FILTER (WHERE available_at <= now() AND isfinite(created_at)))::float8, 0), 0)
FROM {table}
WHERE sent_at IS NULL AND dead_at IS NULL";

/// Dead rows awaiting replay (what `dead` lists), through `outbox_dead_idx`.
const DEAD_COUNT: &str =
    "SELECT count(*) FROM {table} WHERE dead_at IS NOT NULL AND sent_at IS NULL";

/// The table's vacuum health from the statistics collector, for the
/// metrics: no table access at all. `$1` is the quoted table name; no row
/// (or NULLs) before the collector has seen the table.
pub(super) const TABLE_STATS: &str = "SELECT COALESCE(n_dead_tup, 0)::bigint,
       COALESCE(EXTRACT(epoch FROM last_autovacuum)::float8, 0)
FROM pg_stat_user_tables
WHERE relid = to_regclass($1)";

/// Rows for `show` / `dead`: timestamps rendered by the database.
const DESCRIBE_COLUMNS: &str = "id, message_id, exchange, routing_key, content_type, headers,
    length(payload)::bigint, attempts, last_error,
    created_at::text, available_at::text, sent_at::text, dead_at::text";

/// Dead-lettered rows become pending again with a fresh attempt budget. A
/// row that was sent (a dead row sent by hand, or marked by an operator) is
/// not replayed and not listed.
const REPLAY: &str = "UPDATE {table}
SET dead_at = NULL, attempts = 0, available_at = now()
WHERE dead_at IS NOT NULL AND sent_at IS NULL
  AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
RETURNING id";

/// The rendered statements for one outbox table.
#[derive(Debug, Clone)]
pub struct Statements {
    pub table: String,
    pub claim: String,
    pub claim_call: String,
    pub claim_function: String,
    pub has_due: String,
    pub load_payload: String,
    pub mark_sent: String,
    pub delete_sent: String,
    pub record_failures: String,
    pub purge_sent: String,
    pub insert: String,
    pub stats: String,
    pub backlog: String,
    pub dead_count: String,
    pub table_stats: String,
    pub find: String,
    pub list_dead: String,
    pub replay: String,
}

impl Statements {
    pub fn new(schema: &Identifier) -> Self {
        let table = format!("{}.outbox", schema.quoted());
        let render = |template: &str| template.replace("{table}", &table);
        Self {
            claim: render(CLAIM),
            claim_call: render(CLAIM_CALL),
            claim_function: render(CLAIM_FUNCTION),
            has_due: render(HAS_DUE),
            load_payload: render(LOAD_PAYLOAD),
            mark_sent: render(MARK_SENT),
            delete_sent: render(DELETE_SENT),
            record_failures: render(RECORD_FAILURES),
            purge_sent: render(PURGE_SENT),
            insert: render(INSERT),
            stats: render(STATS),
            backlog: render(BACKLOG),
            dead_count: render(DEAD_COUNT),
            table_stats: TABLE_STATS.to_owned(),
            find: format!(
                "SELECT {DESCRIBE_COLUMNS} FROM {table} WHERE message_id = $1 OR id = $2"
            ),
            list_dead: format!(
                "SELECT {DESCRIBE_COLUMNS} FROM {table} WHERE dead_at IS NOT NULL AND sent_at IS NULL ORDER BY id LIMIT $1"
            ),
            replay: render(REPLAY),
            table,
        }
    }
}
