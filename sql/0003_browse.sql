-- outbox-relay migration 0003: indexes for the HTTP API (browsing, stats).
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
--
-- Every filter of `GET /api/messages` and every figure of `GET /api/stats`
-- is read through an index, so that their cost follows what they return,
-- not how many sent rows the table keeps. The indexes are partial: each
-- holds one state's rows only, and a row enters an index only when it
-- enters that state. Their price is paid on the write path: one more entry
-- per insert (pending by route) and one per mark (sent_at); dead rows cost
-- nothing until a row is dead-lettered. Sent rows are deliberately not
-- indexed by route: the mark is the relay's hottest write (an index entry
-- there costs ~3 us a row), so route filters on sent rows walk them newest
-- first, bounded by the API's statement timeout.
--
-- Built without CONCURRENTLY (migrations run in one transaction): on a
-- large existing table the build blocks writes for its duration. Build them
-- beforehand with CREATE INDEX CONCURRENTLY under the same names to avoid
-- that; IF NOT EXISTS then leaves them alone.
\if :{?schema}
\else
\set schema public
\endif

-- Sent rows by when they were sent: the send rates (last minute, last
-- hour), the sent count, `since` / `until` on sent rows, and the retention
-- purge (`sent_at < now() - retention`).
CREATE INDEX IF NOT EXISTS outbox_sent_at_idx
    ON :"schema".outbox (sent_at)
    WHERE sent_at IS NOT NULL;

-- Pending rows by route, newest last: `exchange` / `routing_key` filters on
-- the backlog in id order, and the stats' top routes (an index-only scan).
CREATE INDEX IF NOT EXISTS outbox_pending_route_idx
    ON :"schema".outbox (exchange, routing_key, id)
    WHERE sent_at IS NULL AND dead_at IS NULL;

-- Dead rows in id order, newest first with a cursor (the dead rows' other
-- index, outbox_dead_idx, is by dead_at: `since` / `until` on dead rows).
CREATE INDEX IF NOT EXISTS outbox_dead_id_idx
    ON :"schema".outbox (id)
    WHERE dead_at IS NOT NULL;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (3, '0003_browse')
ON CONFLICT (version) DO NOTHING;
