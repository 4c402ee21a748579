#!/usr/bin/env bash
# Prepares real TLS on the local PostgreSQL and RabbitMQ (see services.sh) for
# the relay's TLS integration tests, on a Debian or Ubuntu machine (needs root).
# Tests find everything at the fixed path /etc/outbox-relay-test/tls/; nothing
# is exported. All certificates are made with openssl, signed by ca.pem unless
# said otherwise, valid 10 years; all keys are RSA 2048 in PKCS#8 PEM.
#
#   ca.pem, ca.key                  test CA "outbox-relay test CA" (trust anchor)
#   server.pem, server.key          CN=localhost, SAN DNS:localhost IP:127.0.0.1
#   pg-server.pem, pg-server.key    copy of server.* for PostgreSQL (postgres, 0600 key)
#   rabbit-server.pem, rabbit-server.key
#                                   copy of server.* for RabbitMQ (rabbitmq, 0600 key)
#   wronghost.pem, wronghost.key    CN/SAN wrong.example only: host-name mismatch
#                                   tests (served by the test's own listener)
#   expired.pem, expired.key        SAN localhost/127.0.0.1, valid 2020-01-01..02:
#                                   expired-certificate tests
#   other-ca.pem, other-ca.key      unrelated self-signed CA: "wrong CA" tests
#   client-pg.pem, client-pg.key    client cert CN=outbox_tls: PostgreSQL cert auth
#   client-amqp.pem, client-amqp.key
#                                   client cert CN=outbox_external: RabbitMQ EXTERNAL
# Certificates are 0644, keys 0600 root unless a service reads them.
#
# Ports (127.0.0.1 only):
#   5432  PostgreSQL, plain and TLS; ssl_cert_file/ssl_key_file/ssl_ca_file set to
#         the pg-server files and ca.pem. Role outbox_tls (no password, CREATE on
#         database test) may only log in over TLS with client-pg.* (pg_hba.conf:
#         hostssl ... cert clientcert=verify-full, plain host ... reject).
#   5672  RabbitMQ plain AMQP, unchanged (guest/guest).
#   5671  RabbitMQ AMQPS: verify_peer, fail_if_no_peer_cert=false; mechanisms
#         PLAIN, AMQPLAIN, EXTERNAL (user outbox_external, from the cert's CN).
#
# Idempotent: files are made only when missing (all of them when the CA is
# missing); PostgreSQL is reloaded (never restarted) and RabbitMQ restarted only
# when their configuration changed. When everything is in place it only checks.
set -euo pipefail

TLS_DIR=/etc/outbox-relay-test/tls
PG_PORT=${PGPORT:-5432}
AMQP_PORT=5672
AMQPS_PORT=5671
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
RABBIT_PLUGINS=/etc/rabbitmq/enabled_plugins
DAYS=3650
DEADLINE_SECS=${SERVICES_DEADLINE_SECS:-120}
MARK='outbox-relay tls.sh'

say() { printf 'tls: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "needs root; run this script as root or install sudo"
  exec sudo -- "$0" "$@"
fi

# Runs a command as the postgres superuser (peer authentication on the socket).
as_postgres() { runuser -u postgres -- "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION COMMAND...: retries COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1; shift
  local until=$((SECONDS + DEADLINE_SECS))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || die "$what did not happen within ${DEADLINE_SECS}s"
    sleep 0.2
  done
}

# quiet WHAT COMMAND...: runs COMMAND and shows its output only when it fails.
quiet() {
  local what=$1; shift
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "$what failed"
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- test PKI --

cnf=$tmp/openssl.cnf
cat >"$cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[wronghost_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

serial() { printf '0x%s' "$(openssl rand -hex 16)"; }

# new_key NAME: a fresh RSA key in $tmp, converted to PKCS#8 PEM (rustls reads PKCS#8).
new_key() {
  quiet "openssl genpkey ($1)" openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/$1.raw"
  quiet "openssl pkcs8 ($1)" openssl pkcs8 -topk8 -nocrypt -in "$tmp/$1.raw" -out "$tmp/$1.key"
}

# install_pair NAME: moves $tmp/NAME.{key,pem} into place, the certificate last,
# so that a present certificate always has its key.
install_pair() {
  install -o root -g root -m 0600 "$tmp/$1.key" "$TLS_DIR/$1.key"
  install -o root -g root -m 0644 "$tmp/$1.pem" "$TLS_DIR/$1.pem"
}

# make_ca NAME CN: a self-signed CA.
make_ca() {
  say "making $1.pem ($2)"
  new_key "$1"
  quiet "openssl req ($1)" openssl req -x509 -new -key "$tmp/$1.key" -subj "/CN=$2" -days "$DAYS" \
    -set_serial "$(serial)" -config "$cnf" -extensions ca_ext -out "$tmp/$1.pem"
  install_pair "$1"
}

# make_leaf NAME CN EXTENSIONS: a certificate signed by ca.pem.
make_leaf() {
  say "making $1.pem (CN=$2)"
  new_key "$1"
  quiet "openssl req ($1)" openssl req -new -key "$tmp/$1.key" -subj "/CN=$2" -config "$cnf" -out "$tmp/$1.csr"
  quiet "openssl x509 ($1)" openssl x509 -req -in "$tmp/$1.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -set_serial "$(serial)" -days "$DAYS" -extfile "$cnf" -extensions "$3" -out "$tmp/$1.pem"
  install_pair "$1"
}

# make_expired: OpenSSL 3.0's x509 cannot backdate (no -not_before), so a
# throw-away `openssl ca` database signs it with fixed dates in the past.
make_expired() {
  say "making expired.pem (CN=localhost, expired 2020-01-02)"
  new_key expired
  quiet "openssl req (expired)" openssl req -new -key "$tmp/expired.key" -subj "/CN=localhost" -config "$cnf" -out "$tmp/expired.csr"
  mkdir "$tmp/ca" && : >"$tmp/ca/index.txt" && openssl rand -hex 16 >"$tmp/ca/serial"
  cat >"$tmp/ca.cnf" <<EOF
[ca]
default_ca = test_ca
[test_ca]
dir = $tmp/ca
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[policy_any]
commonName = supplied
EOF
  quiet "openssl ca (expired)" openssl ca -batch -notext -config "$tmp/ca.cnf" \
    -cert "$TLS_DIR/ca.pem" -keyfile "$TLS_DIR/ca.key" -in "$tmp/expired.csr" -out "$tmp/expired.pem" \
    -startdate 20200101000000Z -enddate 20200102000000Z -extfile "$cnf" -extensions server_ext
  install_pair expired
}

# missing NAME: NAME.pem or NAME.key is missing, or NAME.pem is not signed by ca.pem.
missing() {
  [ -s "$TLS_DIR/$1.pem" ] && [ -s "$TLS_DIR/$1.key" ] || return 0
  [ "${2:-}" = self ] && return 1
  ! openssl verify -no_check_time -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/$1.pem" >/dev/null 2>&1
}

# ensure_copy SRC DST OWNER MODE FLAG: DST is a copy of SRC with that owner and
# mode; sets the variable FLAG when it changed the file's content.
ensure_copy() {
  local src=$TLS_DIR/$1 dst=$TLS_DIR/$2
  if cmp -s "$src" "$dst"; then
    ensure_mode "$2" "$3" "$4"
  else
    install -o "$3" -g "$3" -m "$4" "$src" "$dst"
    printf -v "$5" 1
  fi
}

# ensure_mode FILE OWNER MODE: fixes owner and mode when they differ.
ensure_mode() {
  local f=$TLS_DIR/$1
  if [ "$(stat -c '%U:%G %a' "$f")" != "$2:$2 $3" ]; then
    say "fixing owner and mode of $f"
    chown "$2:$2" "$f"
    chmod "$3" "$f"
  fi
}

ca_changed=
pg_files_changed=
rabbit_files_changed=

ensure_pki() {
  command -v openssl >/dev/null 2>&1 || die "openssl not found"
  id postgres >/dev/null 2>&1 || die "no postgres user: run deploy/local/services.sh first"
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user: run deploy/local/services.sh first"
  if [ ! -d "$TLS_DIR" ]; then
    say "creating $TLS_DIR"
    install -d -o root -g root -m 0755 "${TLS_DIR%/*}" "$TLS_DIR"
  fi
  if missing ca self; then
    make_ca ca "outbox-relay test CA"
    ca_changed=1
  fi
  if [ -n "$ca_changed" ] || missing server; then make_leaf server localhost server_ext; fi
  if [ -n "$ca_changed" ] || missing wronghost; then make_leaf wronghost wrong.example wronghost_ext; fi
  if [ -n "$ca_changed" ] || missing expired; then make_expired; fi
  if [ -n "$ca_changed" ] || missing other-ca self; then make_ca other-ca "outbox-relay other test CA"; fi
  if [ -n "$ca_changed" ] || missing client-pg; then make_leaf client-pg outbox_tls client_ext; fi
  if [ -n "$ca_changed" ] || missing client-amqp; then make_leaf client-amqp outbox_external client_ext; fi
  local name
  for name in ca server wronghost expired other-ca client-pg client-amqp; do
    ensure_mode "$name.pem" root 644
    ensure_mode "$name.key" root 600
  done
  ensure_copy server.pem pg-server.pem postgres 644 pg_files_changed
  ensure_copy server.key pg-server.key postgres 600 pg_files_changed
  ensure_copy server.pem rabbit-server.pem rabbitmq 644 rabbit_files_changed
  ensure_copy server.key rabbit-server.key rabbitmq 600 rabbit_files_changed
  if [ -n "$ca_changed$pg_files_changed$rabbit_files_changed" ]; then say "test PKI ready in $TLS_DIR"; fi
}

# -------------------------------------------------------------- PostgreSQL --

pg() { PGCONNECT_TIMEOUT=5 psql -X -q -w -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres "$@"; }

HBA_LINES=(
  "# added by $MARK: role outbox_tls logs in only over TLS with a client certificate"
  "hostssl all outbox_tls 127.0.0.1/32 cert clientcert=verify-full"
  "host all outbox_tls 127.0.0.1/32 reject"
)

# Our lines are present, in order, and above every other host* line.
hba_ok() {
  awk -v l0="${HBA_LINES[0]}" -v l1="${HBA_LINES[1]}" -v l2="${HBA_LINES[2]}" '
    $0 == l0 { if (seen == 0) seen = 1; next }
    $0 == l1 { if (seen == 1 && !other) seen = 2; next }
    $0 == l2 { if (seen == 2 && !other) seen = 3; next }
    /^[ \t]*host/ { other = 1 }
    END { exit seen == 3 ? 0 : 1 }' "$1"
}

ensure_hba() {
  local hba; hba=$(pg -c 'show hba_file')
  [ -f "$hba" ] || die "pg_hba.conf not found at '$hba'"
  hba_ok "$hba" && return 0
  say "adding the outbox_tls lines to $hba"
  cp -p "$hba" "$tmp/hba.orig"
  awk -v l0="${HBA_LINES[0]}" -v l1="${HBA_LINES[1]}" -v l2="${HBA_LINES[2]}" '
    $0 == l0 || $0 == l1 || $0 == l2 { next }
    !done && /^[ \t]*host/ { print l0; print l1; print l2; done = 1 }
    { print }
    END { if (!done) { print l0; print l1; print l2 } }' "$tmp/hba.orig" >"$tmp/hba.new"
  cat "$tmp/hba.new" >"$hba"   # keeps the file's owner and mode
  if [ "$(pg -c 'select count(*) from pg_hba_file_rules where error is not null')" != 0 ]; then
    cat "$tmp/hba.orig" >"$hba"
    die "pg_hba.conf had errors after the edit; restored it"
  fi
  hba_changed=1
}

ensure_postgres() {
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL is not up on 127.0.0.1:$PG_PORT: run deploy/local/services.sh"
  local want="on|$TLS_DIR/pg-server.pem|$TLS_DIR/pg-server.key|$TLS_DIR/ca.pem|true|true"
  local state_sql="select concat_ws('|', current_setting('ssl'), current_setting('ssl_cert_file'),
      current_setting('ssl_key_file'), current_setting('ssl_ca_file'),
      coalesce((select rolcanlogin::text from pg_roles where rolname = 'outbox_tls'), 'none'),
      coalesce((select has_database_privilege(oid, 'test', 'CREATE')::text from pg_roles where rolname = 'outbox_tls'), 'none'))"
  local state; state=$(pg -c "$state_sql") || die "cannot query PostgreSQL as root over 127.0.0.1"
  local reload=
  if [ "${state%|*|*}" != "${want%|*|*}" ]; then
    say "setting ssl_cert_file, ssl_key_file, ssl_ca_file (ALTER SYSTEM)"
    pg <<SQL >/dev/null
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/pg-server.pem';
ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/pg-server.key';
ALTER SYSTEM SET ssl_ca_file = '$TLS_DIR/ca.pem';
SQL
    reload=1
  fi
  if [ "${state#*|*|*|*|}" != "true|true" ]; then
    say "creating role outbox_tls (login, CREATE on database test)"
    pg <<'SQL' >/dev/null
SELECT 'CREATE ROLE outbox_tls LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_tls') \gexec
ALTER ROLE outbox_tls LOGIN;
GRANT CREATE ON DATABASE test TO outbox_tls;
SQL
  fi
  local hba_changed=
  ensure_hba
  if [ -n "$reload$hba_changed$pg_files_changed$ca_changed" ]; then
    say "reloading PostgreSQL"
    pg -c 'select pg_reload_conf()' >/dev/null
    # The postmaster applies a reload asynchronously.
    DEADLINE_SECS=10 wait_for "PostgreSQL reload" pg_state_is "$state_sql" "${want%|*|*}"
  fi
}

pg_state_is() { local s; s=$(pg -c "$1") && [ "${s%|*|*}" = "$2" ]; }

pg_tls_conn() { printf 'host=%s port=%s dbname=test sslmode=verify-full sslrootcert=%s %s' "$1" "$PG_PORT" "$TLS_DIR/ca.pem" "$2"; }
pg_try() { PGCONNECT_TIMEOUT=5 psql -X -q -w -At -c 'select current_user' "$1" 2>&1; }

verify_postgres() {
  local client="user=outbox_tls sslcert=$TLS_DIR/client-pg.pem sslkey=$TLS_DIR/client-pg.key"
  local out
  # hba changes apply to new connections once the postmaster has reloaded.
  DEADLINE_SECS=10 wait_for "outbox_tls login with client-pg.pem" pg_try "$(pg_tls_conn 127.0.0.1 "$client")"
  out=$(pg_try "$(pg_tls_conn 127.0.0.1 "$client")") && [ "$out" = outbox_tls ] \
    || die "outbox_tls with client-pg.pem over verify-full TLS does not connect: $out"
  out=$(pg_try "$(pg_tls_conn localhost user=root)") && [ "$out" = root ] \
    || die "root over verify-full TLS to localhost does not connect: $out"
  if pg_try "$(pg_tls_conn 127.0.0.1 user=outbox_tls)" >/dev/null; then
    die "outbox_tls connects over TLS without a client certificate; check pg_hba.conf"
  fi
  if pg_try "host=127.0.0.1 port=$PG_PORT dbname=test user=outbox_tls sslmode=disable" >/dev/null; then
    die "outbox_tls connects without TLS; check pg_hba.conf"
  fi
}

# ---------------------------------------------------------------- RabbitMQ --

rabbit_block() {
  cat <<EOF
# begin $MARK
# TLS listener for the relay's integration tests; certificates in $TLS_DIR.
listeners.ssl.local = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/rabbit-server.pem
ssl_options.keyfile = $TLS_DIR/rabbit-server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
# end $MARK
EOF
}

# Writes our block into rabbitmq.conf, keeping its other lines; sets conf_changed when it changed.
ensure_rabbit_conf() {
  local current=
  if [ -f "$RABBIT_CONF" ]; then
    current=$(awk -v b="# begin $MARK" -v e="# end $MARK" '$0 == b {f = 1} f {print} $0 == e {f = 0}' "$RABBIT_CONF")
    local clash
    clash=$(awk -v b="# begin $MARK" -v e="# end $MARK" '$0 == b {f = 1} !f {print} $0 == e {f = 0}' "$RABBIT_CONF" \
      | grep -E '^[[:space:]]*(listeners\.ssl\.|ssl_options\.|auth_mechanisms\.|ssl_cert_login_from)' || true)
    [ -z "$clash" ] || die "$RABBIT_CONF already sets TLS options outside the $MARK block: $clash"
  fi
  [ "$current" = "$(rabbit_block)" ] && return 0
  say "writing the TLS block into $RABBIT_CONF"
  {
    if [ -f "$RABBIT_CONF" ]; then
      awk -v b="# begin $MARK" -v e="# end $MARK" '$0 == b {f = 1} !f {print} $0 == e {f = 0}' "$RABBIT_CONF"
    fi
    rabbit_block
  } >"$tmp/rabbitmq.conf"
  if [ -f "$RABBIT_CONF" ]; then
    cat "$tmp/rabbitmq.conf" >"$RABBIT_CONF"
  else
    install -o rabbitmq -g rabbitmq -m 0644 "$tmp/rabbitmq.conf" "$RABBIT_CONF"
  fi
  conf_changed=1
}

rabbit_ready() { timeout 10 rabbitmqctl -q await_startup >/dev/null 2>&1; }

restart_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    say "stopping RabbitMQ"
    local pid; pid=$(rabbitmqctl -q eval 'os:getpid().' | tr -dc 0-9)
    quiet "rabbitmqctl stop" rabbitmqctl -q stop
    [ -z "$pid" ] || wait_for "RabbitMQ (pid $pid) exit" test ! -e "/proc/$pid"
  fi
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1
  wait_for "RabbitMQ startup (see /var/log/rabbitmq)" rabbit_ready
  wait_for "RabbitMQ on 127.0.0.1:$AMQP_PORT" port_open "$AMQP_PORT"
  wait_for "RabbitMQ TLS on 127.0.0.1:$AMQPS_PORT (see /var/log/rabbitmq)" port_open "$AMQPS_PORT"
}

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server not found: run deploy/local/services.sh"
  local restart= conf_changed=
  ensure_rabbit_conf
  if [ -n "$conf_changed$ca_changed$rabbit_files_changed" ] || ! port_open "$AMQPS_PORT"; then restart=1; fi
  if ! grep -qs rabbitmq_auth_mechanism_ssl "$RABBIT_PLUGINS"; then
    say "enabling plugin rabbitmq_auth_mechanism_ssl"
    if [ -n "$restart" ] || ! port_open "$AMQP_PORT"; then
      quiet "rabbitmq-plugins enable --offline" rabbitmq-plugins -q enable --offline rabbitmq_auth_mechanism_ssl
    else
      quiet "rabbitmq-plugins enable" rabbitmq-plugins -q enable rabbitmq_auth_mechanism_ssl
    fi
  fi
  if [ -n "$restart" ]; then restart_rabbitmq; fi
  local perms
  if ! perms=$(rabbitmqctl -q list_user_permissions --no-table-headers outbox_external 2>/dev/null); then
    say "creating RabbitMQ user outbox_external (EXTERNAL login only)"
    quiet "rabbitmqctl add_user" rabbitmqctl -q add_user outbox_external "$(openssl rand -hex 24)"
    quiet "rabbitmqctl clear_password" rabbitmqctl -q clear_password outbox_external
    perms=
  fi
  if ! printf '%s\n' "$perms" | grep -qxF "$(printf '/\t.*\t.*\t.*')"; then
    say "granting outbox_external full permissions on vhost /"
    quiet "rabbitmqctl set_permissions" rabbitmqctl -q set_permissions -p / outbox_external '.*' '.*' '.*'
  fi
}

# An AMQP 0-9-1 handshake over TLS with client-amqp.pem and mechanism EXTERNAL,
# up to connection.open-ok on vhost / and a clean connection.close.
AMQP_EXTERNAL_CHECK=$(cat <<'PY'
import socket, ssl, struct, sys
d, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/client-amqp.pem", d + "/client-amqp.key")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: sys.exit("the broker closed the connection")
        b += c
    return b
def method():
    kind, _, size = struct.unpack(">BHI", recv(7))
    p = recv(size + 1)[:-1]
    m = struct.unpack(">HH", p[:4])
    if m == (10, 50):
        sys.exit("the broker refused: %d %s" % (struct.unpack(">H", p[4:6])[0], p[7:7 + p[6]].decode()))
    return m, p[4:]
def send(cls, meth, args):
    p = struct.pack(">HH", cls, meth) + args
    s.sendall(struct.pack(">BHI", 1, 0, len(p)) + p + b"\xce")
def sstr(x): return bytes([len(x)]) + x
s.sendall(b"AMQP\x00\x00\x09\x01")
m, a = method()
if m != (10, 10) or b"EXTERNAL" not in a: sys.exit("the broker does not offer EXTERNAL")
caps = sstr(b"authentication_failure_close") + b"t\x01"
props = sstr(b"capabilities") + b"F" + struct.pack(">I", len(caps)) + caps
send(10, 11, struct.pack(">I", len(props)) + props + sstr(b"EXTERNAL") + struct.pack(">I", 0) + sstr(b"en_US"))
m, a = method()
if m != (10, 30): sys.exit("expected connection.tune, got %r" % (m,))
send(10, 31, a[:8])
send(10, 40, sstr(b"/") + sstr(b"") + b"\x00")
m, a = method()
if m != (10, 41): sys.exit("expected connection.open-ok, got %r" % (m,))
send(10, 50, struct.pack(">H", 200) + sstr(b"bye") + struct.pack(">HH", 0, 0))
m, a = method()
s.close()
PY
)

verify_rabbitmq() {
  local out
  out=$(timeout 10 openssl s_client -connect "127.0.0.1:$AMQPS_PORT" -CAfile "$TLS_DIR/ca.pem" \
        -verify_return_error -verify_ip 127.0.0.1 </dev/null 2>&1) \
    && grep -q 'Verify return code: 0 (ok)' <<<"$out" \
    || { printf '%s\n' "$out" | tail -n 5 >&2; die "TLS handshake with 127.0.0.1:$AMQPS_PORT failed"; }
  if command -v python3 >/dev/null 2>&1; then
    out=$(timeout 20 python3 -c "$AMQP_EXTERNAL_CHECK" "$TLS_DIR" "$AMQPS_PORT" 2>&1) \
      || die "EXTERNAL login as outbox_external on 127.0.0.1:$AMQPS_PORT failed: $out"
  else
    say "python3 not found: skipped the EXTERNAL login check"
  fi
}

ensure_pki
ensure_postgres
verify_postgres
ensure_rabbitmq
verify_rabbitmq
say "TLS ready: PostgreSQL 127.0.0.1:$PG_PORT, RabbitMQ 127.0.0.1:$AMQPS_PORT, files in $TLS_DIR"
