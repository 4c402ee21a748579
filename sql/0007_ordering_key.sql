-- outbox-relay migration 0007: per-key ordered delivery (issue 24).
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
--
-- A row may carry an ordering key (`ordering_key`, 1 to 256 bytes, compared
-- byte for byte). Rows with the same key are published in the order their
-- inserting transactions committed, one at a time: a key's next row is
-- claimed only once the row before it is confirmed and marked sent. Rows
-- without a key (NULL, the default) are relayed as before, fully parallel.
--
-- "Commit order" is the order of a key's inserting transactions as a
-- per-key lock serialises them: the BEFORE INSERT trigger below takes
-- pg_advisory_xact_lock(1869767794, hashtext(key)) and only then draws the
-- row's `ordering_seq` from `outbox_ordering_seq`. The lock is held until
-- the inserting transaction ends, so of two transactions inserting the same
-- key, the one that took the lock first also commits (or aborts) before the
-- other gets its seq: per key, ordering_seq order is commit order, whatever
-- the ids (which are drawn before the trigger runs). Consequences, for the
-- application:
--   * producers inserting the same key wait for each other (until the first
--     commits), as they would on a row lock;
--   * two transactions that insert two keys in opposite orders can deadlock;
--     PostgreSQL aborts one of them (SQLSTATE 40P01). Insert the keys of one
--     transaction in a consistent order (the relay's own doors sort them);
--   * a transaction holds one lock per distinct key it inserts: a single
--     transaction inserting thousands of distinct keys can exhaust the lock
--     table ("out of shared memory", max_locks_per_transaction); split it;
--   * the key is taken at INSERT only: changing ordering_key of a stored row
--     is refused by the check below unless its seq is set, and is not
--     supported;
--   * the sequence must keep CACHE 1 (its default): a per-session cache
--     would hand out seqs out of lock order.
-- Rows without a key pay nothing: the trigger's WHEN is evaluated without
-- calling PL/pgSQL, and neither index below holds them.
--
-- What it costs to apply: adding two nullable columns without a default,
-- the check NOT VALID (no scan) and the trigger change the catalog only,
-- under a brief ACCESS EXCLUSIVE lock; nothing is rewritten. The two
-- indexes are built in the migration's transaction (plain CREATE INDEX,
-- migrations run in one transaction): each scans the table under a SHARE
-- lock, which blocks producers' inserts for the scan's duration (the new
-- columns are all NULL, so the indexes come out empty, but the scan reads
-- every row, sent rows kept for --retention included). On a large table,
-- build them beforehand without blocking writes, under the same names:
--   CREATE INDEX CONCURRENTLY outbox_ordering_idx ON <schema>.outbox
--       (ordering_key, ordering_seq) WHERE ordering_key IS NOT NULL AND sent_at IS NULL;
--   CREATE INDEX CONCURRENTLY outbox_ordering_pending_idx ON <schema>.outbox
--       (id) WHERE ordering_key IS NOT NULL AND sent_at IS NULL AND dead_at IS NULL;
-- (after adding the columns), and IF NOT EXISTS then leaves them alone.
\if :{?schema}
\else
\set schema public
\endif

ALTER TABLE :"schema".outbox
    ADD COLUMN IF NOT EXISTS ordering_key text COLLATE "C",
    ADD COLUMN IF NOT EXISTS ordering_seq bigint;

CREATE SEQUENCE IF NOT EXISTS :"schema".outbox_ordering_seq AS bigint;

-- Serialises a key's inserting transactions, then numbers the row. The
-- sequence comes as the trigger's argument (a regclass, so the function
-- needs no search_path of its own: setting one costs every call).
CREATE OR REPLACE FUNCTION :"schema".outbox_ordering() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1869767794, hashtext(NEW.ordering_key));
    NEW.ordering_seq := nextval(TG_ARGV[0]::regclass);
    RETURN NEW;
END
$$;

SET outbox_relay.schema = :'schema';
DO $$
DECLARE
    s text := current_setting('outbox_relay.schema');
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_trigger
        WHERE tgname = 'outbox_ordering'
          AND tgrelid = format('%I.outbox', s)::regclass
    ) THEN
        EXECUTE format('CREATE TRIGGER outbox_ordering BEFORE INSERT ON %I.outbox
                        FOR EACH ROW WHEN (NEW.ordering_key IS NOT NULL)
                        EXECUTE FUNCTION %I.outbox_ordering(%L)',
                       s, s, format('%I.outbox_ordering_seq', s));
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_constraint
        WHERE conname = 'outbox_ordering_key_check'
          AND conrelid = format('%I.outbox', s)::regclass
    ) THEN
        -- NOT VALID: checked for new and changed rows only, so adding it
        -- reads nothing (every existing row has no key).
        EXECUTE format($sql$
            ALTER TABLE %I.outbox ADD CONSTRAINT outbox_ordering_key_check
                CHECK (ordering_key IS NULL
                       OR (ordering_key <> '' AND octet_length(ordering_key) <= 256
                           AND ordering_seq IS NOT NULL)) NOT VALID
        $sql$, s);
    END IF;
END
$$;

-- A key's pending rows (dead ones too: a dead row still holds its key back
-- by default), in seq order: what tells a row whether it is its key's head.
CREATE INDEX IF NOT EXISTS outbox_ordering_idx
    ON :"schema".outbox (ordering_key, ordering_seq)
    WHERE ordering_key IS NOT NULL AND sent_at IS NULL;

-- Keyed rows the claim may walk, in id order: the claim reads a bounded
-- window of them, so that a key with a long backlog behind a failing head
-- costs each claim O(batch), not O(backlog).
CREATE INDEX IF NOT EXISTS outbox_ordering_pending_idx
    ON :"schema".outbox (id)
    WHERE ordering_key IS NOT NULL AND sent_at IS NULL AND dead_at IS NULL;

-- The claim, ordering-aware (src/outbox/sql.rs, CLAIM, is the same
-- statement for a relay that finds no function). As 0006's, plus:
--   * p_window: at most this many keyed rows are considered, the first
--     ones at or after p_from in id order; when there are that many, the
--     walk stops at the last of them, and the marker row (id NULL, last)
--     says where (walked_to), so that the relay's next claim goes on from
--     there instead of walking the same blocked rows again;
--   * a keyed row is claimed only if it is its key's head: the lowest seq
--     of its key among the window's rows (a hashed set, one per key, so a
--     key's blocked rows cost no index probe each), and no pending row of
--     its key with a lower seq exists anywhere (one probe of
--     outbox_ordering_idx, for those candidates the walk reaches). A dead
--     row counts as pending unless p_skip_dead (--ordering-on-dead skip).
--     The head is locked FOR UPDATE SKIP LOCKED and stays unsent while it
--     is in flight, so no other claim (worker or relay) can take the key's
--     next row: at most one row per key is in flight, and one per batch.
--   * `keyed`: whether the row has a key.
CREATE OR REPLACE FUNCTION :"schema".outbox_claim(
    p_limit bigint, p_max_payload bigint, p_budget bigint, p_from bigint,
    p_window bigint, p_skip_dead boolean)
RETURNS TABLE (id bigint, message_id text, exchange text, routing_key text,
               payload bytea, len bigint, content_type text, headers text,
               attempts integer, created_epoch bigint, keyed boolean, walked_to bigint)
LANGUAGE plpgsql
SET search_path = :"schema", pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH window_rows AS MATERIALIZED (
        SELECT k.id, k.ordering_key, k.ordering_seq
        FROM outbox AS k
        WHERE k.ordering_key IS NOT NULL AND k.sent_at IS NULL AND k.dead_at IS NULL
          AND k.id >= p_from
        ORDER BY k.id
        LIMIT p_window
    ), candidates AS MATERIALIZED (
        SELECT min(w.ordering_seq) AS seq FROM window_rows AS w GROUP BY w.ordering_key
    ), bound AS MATERIALIZED (
        SELECT CASE WHEN count(*) >= p_window THEN max(w.id) END AS id FROM window_rows AS w
    )
    SELECT r.id, r.message_id, r.exchange, r.routing_key, r.payload, r.len,
           r.content_type, r.headers, r.attempts, r.created_epoch, r.keyed, r.walked_to
    FROM (
        SELECT s.id, s.message_id, s.exchange, s.routing_key,
               CASE WHEN s.len <= p_max_payload AND s.len <= p_budget AND s.budget <= p_budget
                    THEN s.payload END AS payload,
               s.len, s.content_type, s.headers::text AS headers, s.attempts, s.created_epoch,
               s.keyed, NULL::bigint AS walked_to
        FROM (
            SELECT c.*, sum(CASE WHEN c.len <= p_budget THEN c.len ELSE 0 END)
                            OVER (ORDER BY c.id) AS budget
            FROM (
                SELECT o.id, o.message_id, o.exchange, o.routing_key, o.payload,
                       octet_length(o.payload)::bigint AS len, o.content_type, o.headers,
                       o.attempts,
                       CASE WHEN isfinite(o.created_at)
                            THEN extract(epoch FROM o.created_at)::bigint END AS created_epoch,
                       o.ordering_key IS NOT NULL AS keyed
                FROM outbox AS o
                WHERE o.sent_at IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
                  AND o.id >= p_from
                  AND o.id <= COALESCE((SELECT b.id FROM bound AS b), 9223372036854775807)
                  AND (o.ordering_key IS NULL
                       OR (o.ordering_seq IN (SELECT cs.seq FROM candidates AS cs)
                           AND NOT EXISTS (
                               SELECT 1 FROM outbox AS p
                               WHERE p.ordering_key = o.ordering_key
                                 AND p.ordering_seq < o.ordering_seq
                                 AND p.sent_at IS NULL
                                 AND (p.dead_at IS NULL OR NOT p_skip_dead))))
                ORDER BY o.id
                LIMIT p_limit
                FOR UPDATE OF o SKIP LOCKED
            ) AS c
        ) AS s
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               (SELECT b.id FROM bound AS b)
    ) AS r
    ORDER BY r.id;
END
$$;

-- 0006's claim, for a relay of an earlier version still running: the same
-- ordering-aware claim (a window of twice the batch, dead rows blocking
-- their key), without the marker row it would not read.
CREATE OR REPLACE FUNCTION :"schema".outbox_claim(
    p_limit bigint, p_max_payload bigint, p_budget bigint, p_from bigint)
RETURNS TABLE (id bigint, message_id text, exchange text, routing_key text,
               payload bytea, len bigint, content_type text, headers text,
               attempts integer, created_epoch bigint)
LANGUAGE plpgsql
SET search_path = :"schema", pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT c.id, c.message_id, c.exchange, c.routing_key, c.payload, c.len,
           c.content_type, c.headers, c.attempts, c.created_epoch
    FROM outbox_claim(p_limit, p_max_payload, p_budget, p_from, 2 * p_limit, false) AS c
    WHERE c.id IS NOT NULL;
END
$$;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (7, '0007_ordering_key')
ON CONFLICT (version) DO NOTHING;
