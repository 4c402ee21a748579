#!/usr/bin/env bash
# Inserts one message into the outbox and prints it as it arrives on the demo
# queue (start deploy/local/run.sh first).
set -euo pipefail
cd "$(dirname "$0")/../.."
relay=target/release/outbox-relay
[ -x "$relay" ] || cargo build --release --locked --quiet --bin outbox-relay
"$relay" send --routing-key outbox-demo --content-type text/plain -H source=demo "${1:-hello, outbox}"
"$relay" tail --queue outbox-demo --count 1 --idle-timeout 10s
