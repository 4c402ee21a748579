#!/usr/bin/env bash
# Runs the relay against local services: services up, migrate, relay in the
# foreground (Ctrl-C stops it cleanly). Configuration comes from OUTBOX_* env.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
cargo build --release --locked --quiet --bin outbox-relay
relay=target/release/outbox-relay
"$relay" migrate >/dev/null
# The demo queue, so that a message routed to it has somewhere to go.
"$relay" tail --queue outbox-demo --declare --idle-timeout 1ms >/dev/null
cat <<'MSG'

  outbox-relay is starting. In another terminal, send a message and watch it arrive:

      deploy/local/demo.sh "hello, outbox"

MSG
exec "$relay" run
