-- outbox-relay migration 0002: the wake-up trigger.
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
-- A statement-level trigger that sends NOTIFY on channel `outbox_<table oid>`
-- after each INSERT into the outbox, so that an idle relay (which LISTENs on
-- that channel) claims the new rows at once instead of at its next poll.
-- It is a hint only: the relay polls as well, so nothing depends on it.
--
-- The trigger is created DISABLED. NOTIFY makes committing transactions take
-- a database-wide lock in turn, and the benchmark (`cargo bench --bench relay`,
-- "producer impact") measured it costing a large share of single-row insert
-- throughput with many concurrent producers. Enable it where latency matters
-- more than peak insert rate:
--   outbox-relay migrate --wakeup-trigger enable
--   (or: ALTER TABLE <schema>.outbox ENABLE TRIGGER outbox_wakeup;)
\if :{?schema}
\else
\set schema public
\endif

CREATE OR REPLACE FUNCTION :"schema".outbox_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Identical notifications within one transaction are folded into one.
    PERFORM pg_notify('outbox_' || TG_RELID::text, '');
    RETURN NULL;
END
$$;

-- Create the trigger only once, so that re-applying this file keeps the
-- enabled/disabled state an operator chose.
SET outbox_relay.schema = :'schema';
DO $$
DECLARE
    s text := current_setting('outbox_relay.schema');
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_trigger
        WHERE tgname = 'outbox_wakeup'
          AND tgrelid = format('%I.outbox', s)::regclass
    ) THEN
        EXECUTE format('CREATE TRIGGER outbox_wakeup AFTER INSERT ON %I.outbox
                        FOR EACH STATEMENT EXECUTE FUNCTION %I.outbox_wakeup()', s, s);
        EXECUTE format('ALTER TABLE %I.outbox DISABLE TRIGGER outbox_wakeup', s);
    END IF;
END
$$;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (2, '0002_wakeup')
ON CONFLICT (version) DO NOTHING;
