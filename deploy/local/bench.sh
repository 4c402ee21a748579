#!/usr/bin/env bash
# The benchmark: services up, then `cargo bench --bench relay` with any
# options given here (e.g. --quick, --messages 50000, --queue classic).
# Run it on an otherwise idle machine: every figure is a ratio against a
# baseline measured in the same run, but other load skews both sides.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
exec cargo bench --locked --bench relay -- "$@"
