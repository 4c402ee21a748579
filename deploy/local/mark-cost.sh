#!/usr/bin/env bash
# What marking a row sent costs PostgreSQL, against the alternatives: the
# relay's `UPDATE … SET sent_at` on the outbox table as migrated (every
# migration in sql/), the same with fewer indexes, moving the row to an
# append-only sent log (4 B-tree indexes, or 2 and a BRIN on sent_at), and
# the `DELETE` of `--on-sent delete`. Each variant claims 500 rows (FOR
# UPDATE SKIP LOCKED) and settles them in one transaction, 200 times, on a
# fresh 100,000-row table after a CHECKPOINT, through pgbench with one
# client; it prints the settling statement's latency per row, then one
# mark's and one delete's WAL from EXPLAIN (ANALYZE, WAL).
#
# Usage: deploy/local/mark-cost.sh [rounds]   (default 2). Brings the
# services up first; uses the scratch schema outbox_mark_cost in the
# database `test` and drops it at the end. Run it on an otherwise idle
# machine: it measures wall time with one client.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
export PGOPTIONS="-c client_min_messages=warning"
rounds=${1:-2}
db=(-h 127.0.0.1 -U postgres -d test)
schema=outbox_mark_cost
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -q "${db[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true' EXIT

claim="SELECT array_agg(id) AS ids FROM (SELECT id FROM $schema.outbox WHERE sent_at IS NULL AND dead_at IS NULL ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED) c \\gset"
columns="id, message_id, exchange, routing_key, payload, content_type, headers, created_at, available_at, attempts, last_error"
declare -A settle=(
  [mark]="UPDATE $schema.outbox SET sent_at = statement_timestamp() WHERE id = ANY(:ids::bigint[]);"
  [move]="WITH moved AS (DELETE FROM $schema.outbox WHERE id = ANY(:ids::bigint[]) RETURNING *) INSERT INTO $schema.outbox_sent ($columns, sent_at) SELECT $columns, statement_timestamp() FROM moved;"
  [delete]="DELETE FROM $schema.outbox WHERE id = ANY(:ids::bigint[]);"
)
for kind in mark move delete; do
  printf 'BEGIN;\n%s\n%s\nCOMMIT;\n' "$claim" "${settle[$kind]}" > "$work/$kind.sql"
done

# The table as migrated, filled with 100,000 rows (256-byte payloads, 100
# routes), and a sent log like it; then the variant's index changes; then
# a checkpoint.
fresh() {
  psql -q "${db[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  for migration in sql/0*.sql; do
    psql -q -v ON_ERROR_STOP=1 "${db[@]}" -v schema=$schema -f "$migration" >/dev/null
  done
  psql -q -v ON_ERROR_STOP=1 "${db[@]}" >/dev/null <<SQL
INSERT INTO $schema.outbox (routing_key, payload)
SELECT 'route.' || (g % 100), convert_to(repeat('x', 256), 'UTF8') FROM generate_series(1, 100000) g;
DROP TABLE IF EXISTS $schema.outbox_sent;
CREATE TABLE $schema.outbox_sent (LIKE $schema.outbox INCLUDING DEFAULTS);
ALTER TABLE $schema.outbox_sent ALTER COLUMN id DROP IDENTITY IF EXISTS;
ALTER TABLE $schema.outbox_sent ADD PRIMARY KEY (id);
CREATE INDEX outbox_sent_message_id ON $schema.outbox_sent (message_id);
CREATE INDEX outbox_sent_sent_at ON $schema.outbox_sent (sent_at);
CREATE INDEX outbox_sent_route ON $schema.outbox_sent (exchange, routing_key, id);
$1
VACUUM ANALYZE $schema.outbox;
CHECKPOINT;
SQL
}

run() { # name, settle kind, extra SQL
  fresh "$3"
  pgbench -M extended -n -t 200 -c 1 -r -f "$work/$2.sql" "${db[@]}" 2>/dev/null |
    awk -v name="$1" '$3 ~ /^(UPDATE|WITH|DELETE)$/ { printf "%-52s %6.1f µs per row\n", name, $1 * 1000 / 500 }'
}

drop_sent_indexes="DROP INDEX $schema.outbox_sent_route_idx; DROP INDEX $schema.outbox_sent_at_idx;"
for round in $(seq "$rounds"); do
  echo "round $round"
  run "mark (the relay's UPDATE, every index)" mark ""
  run "mark without the sent-row indexes" mark "$drop_sent_indexes"
  run "mark with the primary key only" mark "$drop_sent_indexes DROP INDEX $schema.outbox_message_id_key;"
  run "move to a sent log (4 B-tree indexes)" move ""
  run "move to a sent log (id, message_id, BRIN sent_at)" move \
    "DROP INDEX $schema.outbox_sent_sent_at; DROP INDEX $schema.outbox_sent_route; CREATE INDEX ON $schema.outbox_sent USING brin (sent_at);"
  run "delete (--on-sent delete)" delete ""
done

echo "WAL of one 500-row settle right after a checkpoint (EXPLAIN ANALYZE, rolled back):"
fresh ""
for kind in mark delete; do
  case $kind in
    mark) statement="UPDATE $schema.outbox SET sent_at = statement_timestamp()" ;;
    delete) statement="DELETE FROM $schema.outbox" ;;
  esac
  psql -q "${db[@]}" -At <<SQL | grep -E "WAL:" | sed "s/^ */$kind: /"
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF)
$statement WHERE id IN (SELECT id FROM $schema.outbox ORDER BY id LIMIT 500);
ROLLBACK;
SQL
done
