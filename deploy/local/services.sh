#!/usr/bin/env bash
# Makes PostgreSQL and RabbitMQ available on 127.0.0.1 for the relay, its tests
# and its benchmark, and nats-server (with JetStream) and redis-server for the
# NATS and Redis destinations, on a Debian or Ubuntu machine:
#   - installs the Debian packages when a server is missing (needs root),
#   - starts a server that is down, and leaves a running one alone,
#   - waits (with a deadline) until each one answers,
#   - makes sure the role `root` and the database `test` exist and that
#     postgres://root@127.0.0.1:5432/test connects (the relay's default URL),
#   - loads pg_stat_statements (the benchmark's statement report): one
#     restart of PostgreSQL the first time, none once it is loaded,
#   - installs PgBouncer (the pooler test runs its own instance) and
#     promtool (apt's prometheus package, for the metrics checks),
#   - installs headless Chromium and chromedriver (the console's browser test)
#     and groff (the man page test),
#   - prepares TLS on both services for the TLS tests (tls.sh).
# Idempotent: when everything is up it only checks, in well under a second.
set -euo pipefail

PG_PORT=${PGPORT:-5432}
PG_CLUSTER=${PG_CLUSTER:-main}
AMQP_PORT=5672
NATS_PORT=4222
REDIS_PORT=6379
DEADLINE_SECS=${SERVICES_DEADLINE_SECS:-120}

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "'$*' needs root; run this script as root or install sudo"; fi
}

# Runs a command as the postgres superuser (peer authentication on the socket).
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"
  elif command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  else as_root su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION COMMAND...: retries COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1; shift
  local until=$((SECONDS + DEADLINE_SECS))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || die "$what did not come up within ${DEADLINE_SECS}s"
    sleep 0.2
  done
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself (this script knows Debian and Ubuntu)"
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(pg_version)" ]; then
    apt_install postgresql postgresql-client
  fi
  local version; version=$(pg_version)
  [ -n "$version" ] || die "no PostgreSQL cluster under /etc/postgresql after installing postgresql"
  if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    if [ ! -d "/etc/postgresql/$version/$PG_CLUSTER" ]; then
      say "creating PostgreSQL $version cluster $PG_CLUSTER"
      as_root pg_createcluster "$version" "$PG_CLUSTER" --port "$PG_PORT" >/dev/null
    fi
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start
    wait_for "PostgreSQL on 127.0.0.1:$PG_PORT" pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  fi
  if ! psql_root_ok; then provision_postgres "$version"; fi
  psql_root_ok || die "postgres://root@127.0.0.1:$PG_PORT/test still does not connect; see the PostgreSQL log"
  ensure_pg_stat_statements "$version"
}

psql_root() {
  PGCONNECT_TIMEOUT=5 psql -X -q -w -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U root -d test "$@"
}

psql_root_ok() { psql_root -c 'select 1' >/dev/null 2>&1; }

# A fresh Debian install has neither the role nor the database, and asks TCP
# clients for a password: create both and trust local TCP connections from this
# host only (a development machine's PostgreSQL; say so in its pg_hba.conf).
provision_postgres() {
  local version=$1
  say "creating role root and database test"
  as_postgres psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE root SUPERUSER LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'root') \gexec
SELECT 'CREATE DATABASE test OWNER root'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'test') \gexec
SELECT 'CREATE DATABASE root OWNER root'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'root') \gexec
SQL
  psql_root_ok && return 0
  local hba="/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
  if ! as_root grep -q 'outbox-relay services.sh' "$hba"; then
    say "trusting 127.0.0.1 in $hba (a local development server)"
    as_root sed -i '1i # added by outbox-relay services.sh: local development access\nhost all all 127.0.0.1/32 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload
  fi
}

# pg_stat_statements must be in shared_preload_libraries, which only a
# restart applies: done once (ALTER SYSTEM keeps it), checked by one query
# afterwards. Whatever else is preloaded stays. Each library is its own
# quoted item: one 'a,b' string would name a single library "a,b".
ensure_pg_stat_statements() {
  local version=$1 loaded lib list=""
  loaded=$(psql_root -Atc 'SHOW shared_preload_libraries')
  case ",${loaded// /}," in *,pg_stat_statements,*) return 0 ;; esac
  IFS=, read -ra libs <<<"$loaded"
  for lib in "${libs[@]}" pg_stat_statements; do
    lib=$(printf '%s' "$lib" | tr -d ' "')
    if [ -n "$lib" ]; then list+="${list:+, }'$lib'"; fi
  done
  say "preloading pg_stat_statements (shared_preload_libraries = $list): restarting PostgreSQL $version once"
  psql_root -c "ALTER SYSTEM SET shared_preload_libraries = $list" >/dev/null
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" restart
  wait_for "PostgreSQL on 127.0.0.1:$PG_PORT" psql_root_ok
  loaded=$(psql_root -Atc 'SHOW shared_preload_libraries')
  case ",${loaded// /}," in *,pg_stat_statements,*) ;;
    *) die "pg_stat_statements is still not preloaded ($loaded); see the PostgreSQL log" ;;
  esac
}

ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
  fi
  if ! port_open "$AMQP_PORT"; then
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached
    wait_for "RabbitMQ on 127.0.0.1:$AMQP_PORT" port_open "$AMQP_PORT"
  fi
  # The port opens before the broker accepts work; await_startup blocks until it does.
  as_root timeout "$DEADLINE_SECS" rabbitmqctl -q await_startup >/dev/null \
    || die "RabbitMQ is not ready; see /var/log/rabbitmq"
}

# nats-server with JetStream (the NATS destination's tests and benchmark;
# the restart tests run their own on free ports). Its INFO line says whether
# JetStream is on: a server without it cannot take the relay's publishes.
nats_info() {
  ( exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" && IFS= read -r -t 5 line <&3 && printf '%s' "$line" ) 2>/dev/null
}

nats_jetstream() { case "$(nats_info)" in *'"jetstream":true'*) return 0 ;; *) return 1 ;; esac; }

ensure_nats() {
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  local bin; bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if ! port_open "$NATS_PORT"; then
    say "starting nats-server with JetStream"
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- \
      -a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for "nats-server on 127.0.0.1:$NATS_PORT" nats_jetstream
  fi
  nats_jetstream || die "the nats-server on 127.0.0.1:$NATS_PORT answers without JetStream: restart it with -js"
}

# redis-server (the Redis destination's tests and benchmark; the restart
# tests run their own on free ports with appendfsync always).
redis_pong() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
  fi
  if ! port_open "$REDIS_PORT"; then
    say "starting redis-server"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
      --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for "redis-server on 127.0.0.1:$REDIS_PORT" redis_pong
  fi
  redis_pong || die "redis-server on 127.0.0.1:$REDIS_PORT does not answer PING; see /var/log/redis/ci.log"
}

# PgBouncer for the pooler test (the test starts its own on a free port).
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
}

# promtool checks the alerting rules and the live /metrics (apt's
# prometheus package; its server is not started here).
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
}

# groff renders the man pages in their test (`outbox-relay man`).
ensure_groff() {
  command -v groff >/dev/null 2>&1 || apt_install groff-base
}

# Chromium and its WebDriver for the console's test in a real browser
# (tests/console/: the test starts /usr/bin/chromedriver itself).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
  fi
}

ensure_postgres
ensure_rabbitmq
ensure_nats
ensure_redis
ensure_pgbouncer
ensure_promtool
ensure_groff
ensure_chromium
# Real TLS for both services (test CA, certificates, listeners): tls.sh.
"$(dirname "$0")/tls.sh"
say "PostgreSQL on 127.0.0.1:$PG_PORT, RabbitMQ on 127.0.0.1:$AMQP_PORT (TLS 5671), nats-server (JetStream) on 127.0.0.1:$NATS_PORT and redis-server on 127.0.0.1:$REDIS_PORT are up"
