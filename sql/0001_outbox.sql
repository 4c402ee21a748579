-- outbox-relay migration 0001: the outbox table.
--
-- Apply with `outbox-relay migrate --schema <name>` or, equally, with psql:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction \
--        -v schema=<name> -f sql/0001_outbox.sql
-- The file is idempotent: applying it twice changes nothing.
-- `:"schema"` is psql's quoted-identifier interpolation; the migration runner
-- substitutes the same token with its validated, quoted schema name and skips
-- the psql meta-commands (lines starting with a backslash).
\if :{?schema}
\else
\set schema public
\endif

CREATE SCHEMA IF NOT EXISTS :"schema";

CREATE TABLE IF NOT EXISTS :"schema".outbox_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS :"schema".outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stable across retries: becomes the AMQP message_id consumers de-duplicate on.
    message_id   uuid NOT NULL DEFAULT gen_random_uuid(),
    -- '' is the default exchange (routing key = queue name).
    exchange     text NOT NULL DEFAULT '',
    routing_key  text NOT NULL,
    payload      bytea NOT NULL,
    content_type text,
    -- A JSON object; becomes the AMQP headers field table.
    headers      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- A future value delays the message; the relay also uses it for backoff.
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    sent_at      timestamptz,
    dead_at      timestamptz
);

-- The claim query walks pending rows in id order; this partial index holds
-- only those, so it stays small however many sent or dead rows are kept.
CREATE INDEX IF NOT EXISTS outbox_pending_idx
    ON :"schema".outbox (id)
    WHERE sent_at IS NULL AND dead_at IS NULL;

-- Dead-lettered rows, for listing and replay.
CREATE INDEX IF NOT EXISTS outbox_dead_idx
    ON :"schema".outbox (dead_at)
    WHERE dead_at IS NOT NULL;

-- One row per message_id: a producer that retries with the same id (gRPC
-- ingress idempotency) stores the message once; lookups by id are indexed.
CREATE UNIQUE INDEX IF NOT EXISTS outbox_message_id_key
    ON :"schema".outbox (message_id);

-- A queue table churns: every row is inserted, updated or deleted once and
-- then removed. Vacuum it on absolute row counts rather than a fraction of
-- the table, and without cost-based throttling, so dead tuples stay bounded
-- under sustained load.
ALTER TABLE :"schema".outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (1, '0001_outbox')
ON CONFLICT (version) DO NOTHING;
