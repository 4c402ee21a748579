-- outbox-relay migration 0004: message_id becomes text.
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
--
-- A message_id is now any text of 1 to 255 bytes (the AMQP `message_id` is a
-- short string of at most 255 bytes), as o5 senders make them, not only a
-- UUID. Every row keeps its id: a UUID becomes its canonical text (lowercase,
-- hyphenated, e.g. 0b9d6f3e-4a7c-4d0e-9a51-3f2c8e7b1d20), which is what the
-- relay already published as its AMQP message_id. The default stays a random
-- UUID (as text), and the unique index stays: a repeated id is stored once.
-- Ids are compared byte for byte (COLLATE "C"): `Order-1` and `order-1` are
-- two messages, and the unique index compares without the locale's rules.
--
-- What it costs: changing the column's type rewrites the table and rebuilds
-- every index under an ACCESS EXCLUSIVE lock, so nothing reads or writes the
-- outbox (producers' inserts included) until the transaction commits. On the
-- 2-core test machine (PostgreSQL 15, default settings, other builds
-- running) 1,000,000 rows of 100-byte payloads (266 MB with its indexes)
-- took 3.7 s and 6.8 s in two runs: 4 to 7 us a row. Plan it like any table
-- rewrite: run it when producers can wait that long, or empty the table of
-- sent rows first (`--on-sent delete`, or a shorter `--retention`), since
-- its duration follows the table's size.
--
-- Applications that insert into the table themselves keep working if they
-- bind message_id as text (or leave it to the default). One that binds a
-- value of type uuid in a binary protocol (e.g. a Rust `uuid::Uuid` with
-- tokio-postgres) is refused after this migration: bind its text instead
-- (`id.to_string()`), or write `$1::uuid::text` in the statement.
--
-- Applying it again changes nothing: the rewrite runs only while the column
-- is still a uuid.
\if :{?schema}
\else
\set schema public
\endif

SET outbox_relay.schema = :'schema';
DO $$
DECLARE
    s text := current_setting('outbox_relay.schema');
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = format('%I.outbox', s)::regclass
          AND attname = 'message_id' AND NOT attisdropped) = 'uuid'::regtype THEN
        -- One statement, so the table is rewritten once and the new check
        -- is validated during that same pass.
        EXECUTE format($sql$
            ALTER TABLE %I.outbox
                ALTER COLUMN message_id DROP DEFAULT,
                ALTER COLUMN message_id TYPE text COLLATE "C" USING message_id::text,
                ALTER COLUMN message_id SET DEFAULT gen_random_uuid()::text,
                ADD CONSTRAINT outbox_message_id_check
                    CHECK (message_id <> '' AND octet_length(message_id) <= 255)
        $sql$, s);
    END IF;
END
$$;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (4, '0004_text_message_id')
ON CONFLICT (version) DO NOTHING;
