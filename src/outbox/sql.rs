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
///
/// Ordering keys (migration 0007): a keyed row is claimed only when it is
/// its key's head, so one row per key is in flight across every worker and
/// relay (the head stays unsent, and so blocks its key, until it is marked
/// sent). `$5` bounds the keyed rows considered (the first ones at or after
/// `$4`); when it binds, the walk ends at the last of them and the last row
/// returned, the marker (id NULL), says where (`walked_to`). `$6` is
/// `--ordering-on-dead skip`: a dead row no longer holds its key back. Rows
/// without a key take the first arm of the OR: the walk and its cost are
/// the unordered claim's, plus one look at an index that holds no such row.
/// The same statement as the claim function of migration 0007.
const CLAIM: &str = "WITH window_rows AS MATERIALIZED (
    SELECT k.id, k.ordering_key, k.ordering_seq
    FROM {table} AS k
    WHERE k.ordering_key IS NOT NULL AND k.sent_at IS NULL AND k.dead_at IS NULL
      AND k.id >= $4
    ORDER BY k.id
    LIMIT $5
), candidates AS MATERIALIZED (
    SELECT min(w.ordering_seq) AS seq FROM window_rows AS w GROUP BY w.ordering_key
), bound AS MATERIALIZED (
    SELECT CASE WHEN count(*) >= $5 THEN max(w.id) END AS id FROM window_rows AS w
)
SELECT r.id, r.message_id, r.exchange, r.routing_key, r.payload, r.len,
       r.content_type, r.headers, r.attempts, r.created_epoch, r.keyed, r.walked_to
FROM (
    SELECT s.id, s.message_id, s.exchange, s.routing_key,
           CASE WHEN s.len <= $2 AND s.len <= $3 AND s.budget <= $3 THEN s.payload END AS payload,
           s.len, s.content_type, s.headers::text AS headers, s.attempts, s.created_epoch,
           s.keyed, NULL::bigint AS walked_to
    FROM (
        SELECT c.*, sum(CASE WHEN c.len <= $3 THEN c.len ELSE 0 END) OVER (ORDER BY c.id) AS budget
        FROM (
            SELECT o.id, o.message_id, o.exchange, o.routing_key, o.payload,
                   octet_length(o.payload)::bigint AS len, o.content_type, o.headers, o.attempts,
                   CASE WHEN isfinite(o.created_at)
                        THEN extract(epoch FROM o.created_at)::bigint END AS created_epoch,
                   o.ordering_key IS NOT NULL AS keyed
            FROM {table} AS o
            WHERE o.sent_at IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
              AND o.id >= $4
              AND o.id <= COALESCE((SELECT b.id FROM bound AS b), 9223372036854775807)
              AND (o.ordering_key IS NULL
                   OR (o.ordering_seq IN (SELECT cs.seq FROM candidates AS cs)
                       AND NOT EXISTS (
                           SELECT 1 FROM {table} AS p
                           WHERE p.ordering_key = o.ordering_key
                             AND p.ordering_seq < o.ordering_seq
                             AND p.sent_at IS NULL
                             AND (p.dead_at IS NULL OR NOT $6))))
            ORDER BY o.id
            LIMIT $1
            FOR UPDATE OF o SKIP LOCKED
        ) AS c
    ) AS s
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           (SELECT b.id FROM bound AS b)
) AS r
ORDER BY r.id";

/// [`CLAIM`] through the schema's function (migration 0007), which keeps
/// its plan for the session: the statement above is planned on every call.
const CLAIM_CALL: &str = "SELECT * FROM {table}_claim($1, $2, $3, $4, $5, $6)";

/// The claim function's signature, for `to_regprocedure`.
const CLAIM_FUNCTION: &str = "{table}_claim(bigint, bigint, bigint, bigint, bigint, boolean)";

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
/// A failure that says nothing about the message (`counts` false: its
/// destination was unreachable) records its error and backoff but not an
/// attempt, so an outage never uses up a row's `--max-attempts`.
/// The backoff counts from `statement_timestamp()`, after the answer, not
/// from `now()` (the claim's start, before the send): a destination's
/// Retry-After is a pause from its answer.
const RECORD_FAILURES: &str = "UPDATE {table} AS o
SET attempts = COALESCE(o.attempts, 0) + CASE WHEN f.counts THEN 1 ELSE 0 END,
    last_error = f.error,
    available_at = statement_timestamp() + f.delay_ms * interval '1 millisecond',
    dead_at = CASE WHEN f.dead THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[], $5::bool[])
     AS f(id, error, delay_ms, dead, counts)
WHERE o.id = f.id";

/// Removes up to `$2` rows sent more than `$1` seconds ago.
const PURGE_SENT: &str = "DELETE FROM {table} WHERE id IN (
    SELECT id FROM {table}
    WHERE sent_at < now() - $1::float8 * interval '1 second'
    LIMIT $2
    FOR UPDATE SKIP LOCKED)";

/// Inserts one message; a repeated message_id is stored once. The id is
/// the caller's text (migration 0004), else a random UUID as text. `$8` is
/// the ordering key or NULL (the trigger of migration 0007 numbers a keyed
/// row, and makes its key's later inserts wait for this transaction).
const INSERT: &str = "INSERT INTO {table}
    (message_id, exchange, routing_key, payload, content_type, headers, available_at,
     ordering_key)
VALUES (COALESCE($1::text, gen_random_uuid()::text), $2, $3, $4, $5, $6,
        now() + $7::float8 * interval '1 millisecond', $8)
ON CONFLICT (message_id) DO NOTHING
RETURNING id, message_id";

/// Inserts a group of messages in one statement, atomic on its own (no
/// BEGIN / COMMIT round trips): the ingress's group commit. Same rules as
/// [`INSERT`]; a message_id repeated within the group or already stored
/// is stored once. Rows are inserted in the arrays' order (`ORDER BY n`):
/// a key's messages get their seqs (migration 0007) in that order.
const INSERT_MANY: &str = "INSERT INTO {table}
    (message_id, exchange, routing_key, payload, content_type, headers, available_at,
     ordering_key)
SELECT COALESCE(m, gen_random_uuid()::text), e, r, p, c, h,
       now() + d * interval '1 millisecond', k
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::jsonb[],
            $7::float8[], $8::text[]) WITH ORDINALITY AS u(m, e, r, p, c, h, d, k, n)
ORDER BY n
ON CONFLICT (message_id) DO NOTHING";

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

/// Ordering keys held back by their head: the lowest-seq pending row of
/// the key has failed at least once and is waiting for its retry, or is
/// dead (a dead row does not hold its key back with `$1`,
/// `--ordering-on-dead skip`). Counts them and gives the age of the oldest
/// such head (`created_at`; an infinite one is left out). Reads keyed
/// pending rows only, through `outbox_ordering_idx` (migration 0007): its
/// cost follows the keyed backlog, and is nothing without keys.
const ORDERING_BLOCKED: &str = "SELECT count(*),
    COALESCE(GREATEST(EXTRACT(epoch FROM now() - min(o.created_at)
        FILTER (WHERE isfinite(o.created_at)))::float8, 0), 0)
FROM {table} AS o
WHERE o.ordering_key IS NOT NULL AND o.sent_at IS NULL
  AND ((o.dead_at IS NOT NULL AND NOT $1)
       OR (o.dead_at IS NULL AND (o.attempts > 0 OR o.last_error IS NOT NULL)))
  AND NOT EXISTS (
      SELECT 1 FROM {table} AS p
      WHERE p.ordering_key = o.ordering_key AND p.ordering_seq < o.ordering_seq
        AND p.sent_at IS NULL AND (p.dead_at IS NULL OR NOT $1))";

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
    pub insert_many: String,
    pub stats: String,
    pub backlog: String,
    pub dead_count: String,
    pub ordering_blocked: String,
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
            insert_many: render(INSERT_MANY),
            stats: render(STATS),
            backlog: render(BACKLOG),
            dead_count: render(DEAD_COUNT),
            ordering_blocked: render(ORDERING_BLOCKED),
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
