-- outbox-relay o5 migration 0001: the relay's bookkeeping on an o5
-- application's outbox table (`outbox-relay run --table-format o5`).
--
-- Apply with `outbox-relay migrate --table-format o5 --schema <name>` or,
-- equally, with psql:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction \
--        -v schema=<name> -f sql/o5/0001_relay_columns.sql
-- The file is idempotent: applying it twice changes nothing.
--
-- The table is the application's: o5's sender library writes it with
--   INSERT INTO outbox (id, data, headers[, send_after]) VALUES (...)
-- from its own migrations' shape
--   CREATE TABLE outbox (id uuid PRIMARY KEY, data jsonb NOT NULL,
--                        headers text NOT NULL[, send_after timestamptz NOT NULL])
-- and that insert keeps working: every column added here has a default or
-- may be NULL. No row is rewritten (PostgreSQL 11+ stores a constant
-- default once; `now()` is evaluated once, at this ALTER, for the rows
-- already there) and the application's trigger (NOTIFY outboxmessage) stays.
--
-- The ALTER takes the table's ACCESS EXCLUSIVE lock for a moment, and the
-- index builds take a SHARE lock (inserts wait) for as long as they read the
-- table: an o5 outbox is drained, so small, while its sidecar runs. On a
-- large one, build the indexes beforehand with CREATE INDEX CONCURRENTLY
-- under the same names.
--
-- Recorded in outbox_relay_o5_migrations, apart from the relay's own
-- numbered migrations (sql/*.sql, outbox_migrations), which never run on an
-- o5 table, as these never run on the relay's own.
\if :{?schema}
\else
\set schema public
\endif

-- Only an o5 outbox: its data column says so.
SET outbox_relay.schema = :'schema';
DO $$
DECLARE
    s text := current_setting('outbox_relay.schema');
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = to_regclass(format('%I.outbox', s))
          AND attname = 'data' AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'table %.outbox is missing or is not an o5 outbox (no data column)', s;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS :"schema".outbox_relay_o5_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE :"schema".outbox
    -- Failed publish attempts; the row is dead-lettered at --max-attempts.
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error text,
    -- Set when the row is dead-lettered: kept, no longer relayed.
    ADD COLUMN IF NOT EXISTS dead_at timestamptz,
    -- When the row may be published: its insert, later after a failure
    -- (backoff). With send_after, the later of the two.
    ADD COLUMN IF NOT EXISTS available_at timestamptz NOT NULL DEFAULT now();

-- The claim's path: rows not dead, by when they are due. The delayed
-- variant (a send_after column) is due at the later of available_at and
-- send_after, and gets an index on that expression.
DO $$
DECLARE
    s text := current_setting('outbox_relay.schema');
BEGIN
    IF EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = format('%I.outbox', s)::regclass
          AND attname = 'send_after' AND NOT attisdropped
    ) THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS outbox_o5_due_after_idx
                        ON %I.outbox ((GREATEST(available_at, send_after)))
                        WHERE dead_at IS NULL', s);
    ELSE
        EXECUTE format('CREATE INDEX IF NOT EXISTS outbox_o5_due_idx
                        ON %I.outbox (available_at)
                        WHERE dead_at IS NULL', s);
    END IF;
END
$$;

-- Dead rows, for the dead count and an operator's look.
CREATE INDEX IF NOT EXISTS outbox_o5_dead_idx
    ON :"schema".outbox (dead_at)
    WHERE dead_at IS NOT NULL;

INSERT INTO :"schema".outbox_relay_o5_migrations (version, name)
VALUES (1, 'o5_0001_relay_columns')
ON CONFLICT (version) DO NOTHING;
