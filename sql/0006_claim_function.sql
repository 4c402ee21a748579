-- outbox-relay migration 0006: the relay's claim as a function.
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
--
-- The relay sends its statements unnamed, so that a pooler in transaction
-- mode (PgBouncer before 1.21 keeps no prepared statements) can serve
-- them; PostgreSQL then plans the claim on every call. At low rates that
-- plan is most of a claim's cost (0.3-0.8 ms against 0.03 ms to run it for
-- a batch of a few rows). A PL/pgSQL function keeps its plan for the
-- session, whichever client the pooler lends the session to, so the relay
-- calls this function when it exists (and the statement it replaces when
-- it does not: a relay upgraded before this migration keeps working).
--
-- The function is the relay's claim statement (src/outbox/sql.rs, CLAIM),
-- unchanged: pending rows due now, oldest first from p_from, locked FOR
-- UPDATE SKIP LOCKED in the caller's transaction; payloads loaded while they
-- fit p_max_payload and the batch's byte budget p_budget; headers as text
-- and an infinite created_at as NULL, so that one row's values cannot fail
-- the claim. Its search_path is fixed to the schema, so that it reads this
-- schema's outbox whatever the caller's search_path.
\if :{?schema}
\else
\set schema public
\endif

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
    SELECT s.id, s.message_id, s.exchange, s.routing_key,
           CASE WHEN s.len <= p_max_payload AND s.len <= p_budget AND s.budget <= p_budget
                THEN s.payload END,
           s.len, s.content_type, s.headers::text, s.attempts, s.created_epoch
    FROM (
        SELECT c.*, sum(CASE WHEN c.len <= p_budget THEN c.len ELSE 0 END)
                        OVER (ORDER BY c.id) AS budget
        FROM (
            SELECT o.id, o.message_id, o.exchange, o.routing_key, o.payload,
                   octet_length(o.payload)::bigint AS len, o.content_type, o.headers,
                   o.attempts,
                   CASE WHEN isfinite(o.created_at)
                        THEN extract(epoch FROM o.created_at)::bigint END AS created_epoch
            FROM outbox AS o
            WHERE o.sent_at IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
              AND o.id >= p_from
            ORDER BY o.id
            LIMIT p_limit
            FOR UPDATE OF o SKIP LOCKED
        ) AS c
    ) AS s
    ORDER BY s.id;
END
$$;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (6, '0006_claim_function')
ON CONFLICT (version) DO NOTHING;
