-- outbox-relay migration 0005: every route filter of the HTTP API through
-- an index, in every state.
--
-- Apply with `outbox-relay migrate`, or with psql like 0001 (same -v schema=).
--
-- 0003 indexed the backlog by route only. A route filter (or a `q` search)
-- on sent or dead rows then walked them newest first, so a route with few
-- sent rows among millions ran into the API's statement timeout. These two
-- partial indexes mirror `outbox_pending_route_idx` for the other states;
-- the API reads a route's newest rows from them, and finds the routes that
-- match a search by walking their distinct (exchange, routing_key) keys.
--
-- Their price: one index entry per mark (`--on-sent mark`, the mode that
-- keeps sent rows to browse; with `--on-sent delete` no row enters it) and
-- one per dead-lettering. The benchmark's drain reports the mark rate with
-- them (README, Performance).
--
-- Built without CONCURRENTLY, as 0003: on a large existing table, build
-- them beforehand with CREATE INDEX CONCURRENTLY under the same names.
\if :{?schema}
\else
\set schema public
\endif

CREATE INDEX IF NOT EXISTS outbox_sent_route_idx
    ON :"schema".outbox (exchange, routing_key, id)
    WHERE sent_at IS NOT NULL;

CREATE INDEX IF NOT EXISTS outbox_dead_route_idx
    ON :"schema".outbox (exchange, routing_key, id)
    WHERE dead_at IS NOT NULL;

INSERT INTO :"schema".outbox_migrations (version, name)
VALUES (5, '0005_route_indexes')
ON CONFLICT (version) DO NOTHING;
